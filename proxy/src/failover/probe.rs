//! Probes: every node is asked `INFO replication` on a fixed interval over a
//! connection of its own. The answer says whether the node is alive, what it
//! thinks it is (primary or replica), whom a replica follows and whether its
//! link is up, how far its replication has got, and its priority for
//! promotion. Roles are always learnt this way, never trusted from the
//! configuration file. Whether a silent node is down is the detector's call
//! ([`super::detect`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::detect::DetectorSource;
use crate::observe::events::Events;
pub use crate::topology::Report;
use redis_protocol::resp3::types::OwnedFrame;

use crate::backend::control::{frame_text, Control};
use crate::backend::ConnectOptions;
use crate::config::ProbeConfig;
use crate::topology::{Health, Node, ReplicaSet, Role};

/// Parses an `INFO replication` reply.
pub fn parse_replication(info: &str) -> Option<Report> {
    let field = |name: &str| info_field(info, name);
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    let replid = field("master_replid").unwrap_or_default();
    let replid2 = field("master_replid2").unwrap_or_default();
    let backlog = match field("repl_backlog_active").as_deref() {
        Some("1") => number("repl_backlog_size").unwrap_or(0),
        _ => 0,
    };
    let priority = number("slave_priority")
        .or_else(|| number("replica_priority"))
        .unwrap_or(100) as u32;
    match field("role")?.as_str() {
        "master" => Some(Report {
            role: Role::Primary,
            offset: number("master_repl_offset")?,
            connected: false,
            master: None,
            priority,
            replicas: number("min_slaves_good_slaves")
                .or_else(|| number("connected_slaves"))
                .unwrap_or(0) as u32,
            replid,
            replid2,
            backlog,
        }),
        "slave" | "replica" => Some(Report {
            role: Role::Replica,
            offset: number("slave_repl_offset")
                .or_else(|| number("master_repl_offset"))
                .unwrap_or(0),
            connected: field("master_link_status").as_deref() == Some("up"),
            master: Some(format!(
                "{}:{}",
                field("master_host")?,
                field("master_port")?
            )),
            priority,
            replicas: 0,
            replid,
            replid2,
            backlog: 0,
        }),
        _ => None,
    }
}

/// Asks a node for its replication state over `control`.
pub async fn replication(control: &mut Control, timeout: Duration) -> std::io::Result<Report> {
    let reply = control.call(&["INFO", "replication"], timeout).await?;
    parse_reply(&reply)
}

fn parse_reply(reply: &OwnedFrame) -> std::io::Result<Report> {
    frame_text(reply)
        .and_then(|text| parse_replication(&text))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected INFO replication reply: {reply:?}"),
            )
        })
}

/// What one probe learnt.
#[derive(Debug)]
enum Answer {
    /// The node's replication state.
    Report(Report),
    /// Alive, but not running commands now: `-BUSY` (a script or function
    /// running past `busy-reply-threshold`) or `-LOADING` (loading its
    /// data set). Either way the node is not down, and failing it over
    /// would promote a replica under a healthy primary.
    Busy(String),
}

/// A node answering `-BUSY`, as the probe follows it.
#[derive(Default)]
struct Busy {
    since: Option<Instant>,
    kill_sent: bool,
    /// The script wrote and cannot be killed: the node will not serve
    /// again until it ends by itself, so it counts as not answering.
    unkillable: bool,
}

/// The probe timings in force (`probe.interval_ms`, `timeout_ms`,
/// `busy_kill_after_ms`): read by every probe and failover controller at
/// each round, so a reload changes them without a restart.
pub struct Timings(arc_swap::ArcSwap<ProbeConfig>);

impl Timings {
    pub fn new(config: &ProbeConfig) -> Timings {
        Timings(arc_swap::ArcSwap::from_pointee(config.clone()))
    }

    pub fn set(&self, config: &ProbeConfig) {
        self.0.store(Arc::new(config.clone()));
    }

    /// How often each node is probed (and each controller looks).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.0.load().interval_ms)
    }

    /// How long a node has to answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.0.load().timeout_ms)
    }

    /// How long a node may answer -BUSY before its script is killed.
    pub fn kill_after(&self) -> Duration {
        Duration::from_millis(self.0.load().busy_kill_after_ms)
    }
}

/// What every node's probe shares.
pub struct Probing {
    pub timings: Arc<Timings>,
    pub detectors: Arc<DetectorSource>,
    pub opts: ConnectOptions,
    /// Gets a permit once each node has been probed for the first time.
    pub first_round: Arc<Semaphore>,
    pub events: Arc<Events>,
    /// Probes stop when Rampart shuts down (so does the controller that
    /// acts on what they see).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Starts the probe of one node. `first_round` gets a permit once the node
/// has been probed (successfully or not) for the first time.
pub fn spawn(shard: Arc<ReplicaSet>, node: Arc<Node>, probing: Arc<Probing>) {
    // One probe per node, however often it is retired and added back.
    if !node.start_probing() {
        return;
    }
    let span = tracing::info_span!("probe", shard = %shard.name, node = %node.addr);
    let (generation, detector) = probing.detectors.for_node(node.id);
    let probe = Probe {
        shard,
        node,
        probing,
        control: None,
        memory_sampled: None,
        busy: Busy::default(),
        generation,
        detector,
    };
    tokio::spawn(probe.run().instrument(span));
}

/// One node's probe, as its task keeps it between rounds.
struct Probe {
    shard: Arc<ReplicaSet>,
    node: Arc<Node>,
    probing: Arc<Probing>,
    control: Option<Control>,
    memory_sampled: Option<Instant>,
    busy: Busy,
    generation: u64,
    detector: Box<dyn super::detect::Detector>,
}

impl Probe {
    async fn run(mut self) {
        let mut shutdown = self.probing.shutdown.clone();
        let mut first = true;
        loop {
            // Removed from the configuration: no longer probed (re-added, a
            // new probe starts).
            if self.node.is_retired() {
                self.node.stop_probing();
                // Re-added in the meantime, by a reload that saw this probe
                // still running: it goes on.
                if self.node.is_retired() || !self.node.start_probing() {
                    return;
                }
            }
            let detectors = &self.probing.detectors;
            if detectors.generation() != self.generation {
                (self.generation, self.detector) = detectors.for_node(self.node.id);
            }
            let started = Instant::now();
            self.round(started).await;
            if first {
                first = false;
                self.probing.first_round.add_permits(1);
            }
            let interval = self.probing.timings.interval();
            tokio::select! {
                _ = tokio::time::sleep(interval.saturating_sub(started.elapsed())) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One probe: ask, judge, record.
    async fn round(&mut self, started: Instant) {
        let timeout = self.probing.timings.timeout();
        let (node, shard) = (self.node.clone(), self.shard.clone());
        // Before the probe is sent: see `topology::position`.
        let answered = node.pool.stats().answered();
        let reads = node.pool.stats().reads();
        let result = probe_once(&node, &mut self.control, &self.probing.opts, timeout).await;
        let answered_in = started.elapsed();
        // Memory changes slowly: sampled about once a second, on the
        // probe's connection, for the early warning.
        if matches!(result, Ok(Answer::Report(_)))
            && self
                .memory_sampled
                .is_none_or(|at| at.elapsed() >= MEMORY_EVERY)
        {
            self.memory_sampled = Some(Instant::now());
            sample_memory(&node, &mut self.control, timeout).await;
        }
        // A probe that timed out while the node kept sending Rampart
        // replies on its links met a node busy with Rampart's own traffic
        // (a client's huge pipeline, say): alive, not dead.
        let streaming = matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
            && node.pool.stats().reads() > reads;
        let alive = match &result {
            Ok(Answer::Report(_)) => true,
            Ok(Answer::Busy(_)) => !self.busy.unkillable,
            Err(_) => streaming,
        };
        self.detector.observe(started, alive);
        let health = self.detector.verdict(Instant::now());
        // For the early warning: answers that stop coming or come slower
        // than the node's usual, before it is judged down.
        let rtt = matches!(result, Ok(Answer::Report(_))).then_some(answered_in);
        node.observe_probe(!alive, self.detector.suspicion(Instant::now()), rtt);
        match result {
            Ok(Answer::Busy(text)) => {
                node.set_rtt(answered_in);
                self.on_busy(&text, started, timeout).await;
            }
            Ok(Answer::Report(report)) => {
                if self.busy.since.take().is_some() {
                    tracing::info!("node no longer busy");
                    self.busy = Busy::default();
                    node.pool.stats().set_busy(false);
                }
                if node.health() != Health::Up {
                    tracing::info!(role = ?report.role, "node up");
                    node.pool.reconnect_now();
                }
                node.set_rtt(answered_in);
                shard.observe(&node, &report, started, Some(answered));
            }
            Err(e) if streaming => {
                self.control = None;
                tracing::debug!(error = %e, "probe late while the node streams replies; alive");
            }
            Err(e) => {
                self.control = None;
                if self.busy.since.take().is_some() {
                    self.busy = Busy::default();
                    node.pool.stats().set_busy(false);
                }
                if node.health() != health {
                    tracing::warn!(error = %e, ?health, "probe failed");
                }
            }
        }
        node.set_health(health);
        shard.refresh();
    }

    /// The node answered `-BUSY` or `-LOADING`: alive; a script busy past
    /// `busy_kill_after_ms` is killed, once.
    async fn on_busy(&mut self, text: &str, started: Instant, timeout: Duration) {
        let kill_after = self.probing.timings.kill_after();
        self.node.pool.stats().set_busy(true);
        let since = *self.busy.since.get_or_insert_with(|| {
            tracing::info!(reply = %text, "node busy");
            started
        });
        let killable = text.starts_with("BUSY") && !kill_after.is_zero();
        if !killable || self.busy.kill_sent || since.elapsed() < kill_after {
            return;
        }
        self.busy.kill_sent = true;
        if let Some(conn) = self.control.as_mut() {
            let (kind, detail) = kill_script(conn, timeout).await;
            self.busy.unkillable = kind == "script-unkillable";
            let shard = &self.shard;
            self.probing.events.record(
                &shard.name,
                kind,
                Some(&self.node.addr),
                shard.epoch(),
                detail,
            );
        }
    }
}

/// Stops the script or function that keeps a node busy, as Sentinel does:
/// `SCRIPT KILL`, then `FUNCTION KILL` when no script runs. The event kind
/// and detail to record.
async fn kill_script(conn: &mut Control, timeout: Duration) -> (&'static str, String) {
    let mut last = String::new();
    for command in [["SCRIPT", "KILL"], ["FUNCTION", "KILL"]] {
        match conn.call(&command, timeout).await {
            Ok(OwnedFrame::SimpleString { .. }) => {
                return (
                    "script-killed",
                    format!("busy past probe.busy_kill_after_ms: {} sent", command.join(" ")),
                )
            }
            Ok(OwnedFrame::SimpleError { data, .. }) if data.starts_with("UNKILLABLE") => {
                return (
                    "script-unkillable",
                    format!("a script that wrote keeps the node busy ({data}); it is judged down and failed over unless it ends first"),
                )
            }
            Ok(OwnedFrame::SimpleError { data, .. }) => last = data,
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
    }
    (
        "script-kill-failed",
        format!("SCRIPT KILL / FUNCTION KILL: {last}"),
    )
}

/// How often a node's memory is sampled.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// `INFO memory`: `used_memory` and `maxmemory`, kept on the node. On a
/// failure the connection is dropped (a late reply must not be read as
/// the next probe's), and the next probe connects afresh.
async fn sample_memory(node: &Node, control: &mut Option<Control>, timeout: Duration) {
    let Some(conn) = control.as_mut() else {
        return;
    };
    let reply = match conn.call(&["INFO", "memory"], timeout).await {
        Ok(reply) => reply,
        Err(_) => {
            *control = None;
            return;
        }
    };
    let Some(info) = frame_text(&reply) else {
        return;
    };
    let number = |field: &str| info_field(&info, field).and_then(|v| v.parse::<u64>().ok());
    if let (Some(used), Some(max)) = (number("used_memory"), number("maxmemory")) {
        node.observe_memory(used, max);
    }
}

/// The largest reply a probe accepts.
const PROBE_MAX_REPLY: usize = 1024 * 1024;

async fn probe_once(
    node: &Node,
    control: &mut Option<Control>,
    opts: &ConnectOptions,
    timeout: Duration,
) -> std::io::Result<Answer> {
    if control.is_none() {
        // A probe's replies are small: a node answering with a gigabyte
        // is dropped, not buffered.
        let mut fresh = tokio::time::timeout(timeout, Control::connect(&node.addr, opts))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
            .limit_replies(PROBE_MAX_REPLY);
        if let Some(info) = fresh
            .call(&["INFO", "server"], timeout)
            .await
            .ok()
            .as_ref()
            .and_then(frame_text)
        {
            if let Some(version) = info_field(&info, "redis_version") {
                *node.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
            }
            if let Some(run_id) = info_field(&info, "run_id") {
                if node.note_run_id(&run_id) {
                    tracing::warn!(%run_id, "node restarted: its data is not trusted until it resyncs");
                }
            }
        }
        *control = Some(fresh);
    }
    let Some(conn) = control.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    let reply = conn.call(&["INFO", "replication"], timeout).await?;
    if let OwnedFrame::SimpleError { data, .. } = &reply {
        if data.starts_with("BUSY") || data.starts_with("LOADING") {
            return Ok(Answer::Busy(data.clone()));
        }
    }
    parse_reply(&reply).map(Answer::Report)
}

/// One `field:value` line of an INFO reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_primary_and_replica() {
        let primary =
            "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_repl_offset:1234\r\n";
        let r = parse_replication(primary).unwrap();
        assert_eq!((r.role, r.offset, r.master), (Role::Primary, 1234, None));

        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7001\r\nmaster_link_status:up\r\nslave_repl_offset:99\r\nslave_priority:10\r\nmaster_repl_offset:99\r\n";
        let r = parse_replication(replica).unwrap();
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.offset, 99);
        assert!(r.connected);
        assert_eq!(r.master.as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(r.priority, 10);

        assert!(parse_replication("garbage").is_none());
    }
}
