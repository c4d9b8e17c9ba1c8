//! Probes: every node is asked `ROLE` on a fixed interval over a connection
//! of its own. The answer says whether the node is alive, what it thinks it
//! is (primary or replica), how far its replication has got, and whether a
//! replica is following its primary. Roles are always learnt this way, never
//! trusted from the configuration file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::backend::control::{frame_int, frame_text, Control};
use crate::backend::ConnectOptions;
use crate::config::ProbeConfig;
use crate::topology::{Health, Node, Role, Shard};

/// What one `ROLE` reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleReport {
    pub role: Role,
    pub offset: u64,
    /// For a replica: its link to the primary is up.
    pub connected: bool,
}

/// Parses `ROLE`: `[master, offset, [...]]` or `[slave, host, port, state, offset]`.
pub fn parse_role(frame: &OwnedFrame) -> Option<RoleReport> {
    let OwnedFrame::Array { data, .. } = frame else {
        return None;
    };
    let kind = frame_text(data.first()?)?;
    match kind.as_str() {
        "master" => Some(RoleReport {
            role: Role::Primary,
            offset: frame_int(data.get(1)?)?.max(0) as u64,
            connected: false,
        }),
        "slave" | "replica" => Some(RoleReport {
            role: Role::Replica,
            offset: frame_int(data.get(4)?)?.max(0) as u64,
            connected: frame_text(data.get(3)?)? == "connected",
        }),
        _ => None,
    }
}

/// Starts the probe of one node. `first_round` gets a permit once the node
/// has been probed (successfully or not) for the first time.
pub fn spawn(
    shard: Arc<Shard>,
    node: Arc<Node>,
    config: ProbeConfig,
    opts: ConnectOptions,
    first_round: Arc<Semaphore>,
) {
    let span = tracing::info_span!("probe", shard = %shard.name, node = %node.addr);
    tokio::spawn(
        async move {
            let interval = Duration::from_millis(config.interval_ms);
            let timeout = Duration::from_millis(config.timeout_ms);
            let down_after = Duration::from_millis(config.down_after_ms);
            let mut control: Option<Control> = None;
            let mut last_ok: Option<Instant> = None;
            let mut first = true;
            loop {
                let started = Instant::now();
                match probe_once(&node, &mut control, &opts, timeout).await {
                    Ok(report) => {
                        if node.health() != Health::Up {
                            tracing::info!(role = ?report.role, "node up");
                        }
                        node.observe(report.role, report.offset, report.connected);
                        node.set_health(Health::Up);
                        last_ok = Some(started);
                    }
                    Err(e) => {
                        control = None;
                        let down = last_ok.is_none_or(|t| t.elapsed() >= down_after);
                        let health = if down { Health::Down } else { Health::Suspect };
                        if node.health() != health {
                            tracing::warn!(error = %e, ?health, "probe failed");
                        }
                        node.set_health(health);
                    }
                }
                shard.refresh_primary();
                if first {
                    first = false;
                    first_round.add_permits(1);
                }
                tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
            }
        }
        .instrument(span),
    );
}

async fn probe_once(
    node: &Node,
    control: &mut Option<Control>,
    opts: &ConnectOptions,
    timeout: Duration,
) -> std::io::Result<RoleReport> {
    if control.is_none() {
        let mut fresh = Control::connect(&node.addr, opts).await?;
        if let Ok(info) = fresh.call(&["INFO", "server"], timeout).await {
            if let Some(version) =
                frame_text(&info).and_then(|text| info_field(&text, "redis_version"))
            {
                *node.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
            }
        }
        *control = Some(fresh);
    }
    let Some(conn) = control.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    let reply = conn.call(&["ROLE"], timeout).await?;
    parse_role(&reply).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected ROLE reply: {reply:?}"),
        )
    })
}

/// One `field:value` line of an INFO reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}
