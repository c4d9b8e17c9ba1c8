//! `rampart doctor` (`GET /v1/doctor`): the running deployment checked
//! against the pitfalls that turn a failure into a loss or an outage, each
//! finding with its fix. Rampart runs the checks itself: it reaches the
//! nodes, knows its configuration and reads its own container's memory
//! limit.

use std::time::Duration;

use redis_protocol::resp3::types::OwnedFrame;
use serde::Serialize;

use crate::backend::control::frame_text;
use crate::context::Context;
use crate::failover::probe::info_field;
use crate::topology::{Health, Node, Role};

/// One pitfall found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check found it.
    pub check: &'static str,
    pub shard: Option<String>,
    pub node: Option<String>,
    /// What is wrong, and what it leads to.
    pub finding: String,
    /// What to do about it.
    pub fix: String,
}

/// Every check that ran and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<&'static str>,
    pub findings: Vec<Finding>,
}

const CHECKS: &[&str] = &[
    "persistence",
    "replication-backlog",
    "stale-reads",
    "lease-timing",
    "memory-limit",
];

/// How long write rates are measured for the backlog check.
const SAMPLE: Duration = Duration::from_secs(1);

/// A backlog should hold at least this long of writes: a replica away for
/// a restart or a network blip then resumes without a full resync.
const BACKLOG_SECONDS: u64 = 60;

impl Context {
    pub async fn doctor(&self) -> Report {
        let mut findings = Vec::new();
        for shard in self.topology.shards().iter() {
            let timeout = self.probe_timings.timeout().max(Duration::from_millis(500));
            let mut before = None;
            for node in shard.nodes.iter().filter(|n| n.health() == Health::Up) {
                let Some(config) = node_config(node, timeout).await else {
                    continue;
                };
                findings.extend(self.persistence(&shard.name, node, &config));
                if shard.primary_node().is_some_and(|p| p.id == node.id) {
                    before = info(node, timeout).await.map(|i| (node.clone(), i));
                } else if node.role() == Role::Replica {
                    findings.extend(stale_reads(self, &shard.name, node, &config));
                }
            }
            if let Some((primary, first)) = before {
                tokio::time::sleep(SAMPLE).await;
                if let Some(second) = info(&primary, timeout).await {
                    findings.extend(backlog(&shard.name, &primary, &first, &second));
                }
            }
        }
        findings.extend(self.lease_timing());
        findings.extend(self.memory_limit());
        Report {
            checks: CHECKS.to_vec(),
            findings,
        }
    }

    /// A node with no persistence comes back empty when it restarts; as a
    /// primary, with replicas quick to resynchronise, that can take every
    /// copy of the acknowledged writes with it (docs/failover.md).
    fn persistence(&self, shard: &str, node: &Node, config: &NodeConfig) -> Option<Finding> {
        let persists = config.appendonly == "yes" || !config.save.trim().is_empty();
        if persists {
            return None;
        }
        let interval = self.probe_timings.interval().as_millis() as u64;
        let delay_ms = config.diskless_sync_delay_s.saturating_mul(1000);
        let race = if delay_ms <= interval {
            format!(
                " Its repl-diskless-sync-delay ({} s) is not above probe.interval_ms ({interval} ms): replicas can resynchronise from it restarted empty before Rampart sees the restart.",
                config.diskless_sync_delay_s
            )
        } else {
            String::new()
        };
        Some(Finding {
            check: "persistence",
            shard: Some(shard.into()),
            node: Some(node.addr.clone()),
            finding: format!(
                "no persistence (save \"\" and appendonly no): restarted, it comes back empty. Rampart then replaces it, but if its replicas resynchronise from it first, every copy of the acknowledged writes is gone.{race}"
            ),
            fix: "turn on appendonly (or RDB snapshots), or make sure nothing restarts the node automatically; keep repl-diskless-sync-delay above probe.interval_ms".into(),
        })
    }

    /// With several instances, a dead lease holder delays failovers by up
    /// to the lease's TTL: far beyond the detection time, that dominates.
    fn lease_timing(&self) -> Option<Finding> {
        let coordination = self.config.coordination.as_ref()?;
        let ttl_ms = coordination.lease_ttl_s.saturating_mul(1000);
        let down_after = self.config.probe.down_after_ms;
        (ttl_ms > 5 * down_after.max(1)).then(|| Finding {
            check: "lease-timing",
            shard: None,
            node: None,
            finding: format!(
                "coordination.lease_ttl_s ({} s) is more than five times probe.down_after_ms ({down_after} ms): when the instance holding a shard's lease dies with the primary, the failover waits for the lease to run out",
                coordination.lease_ttl_s
            ),
            fix: "lower coordination.lease_ttl_s toward a few times probe.down_after_ms (etcd renews it every third of the TTL)".into(),
        })
    }

    /// What clients may make Rampart hold, against the memory its
    /// container may use: over the limit, the OOM killer acts before the
    /// caps do.
    fn memory_limit(&self) -> Option<Finding> {
        let limit = cgroup_memory_limit()?;
        let limits = **self.limits.load();
        let mib = 1024 * 1024;
        let (replies, partial) = (
            limits.clients_output_total_mb,
            limits.partial_requests_total_mb,
        );
        let unbounded = replies == 0 || partial == 0;
        let needed = (64 + replies + partial) as u64 * mib as u64;
        (unbounded || needed > limit).then(|| Finding {
            check: "memory-limit",
            shard: None,
            node: None,
            finding: if unbounded {
                format!(
                    "the container may use {} MiB, but limits.clients_output_total_mb or partial_requests_total_mb is 0 (no cap): clients can push Rampart into the OOM killer",
                    limit / mib as u64
                )
            } else {
                format!(
                    "the container may use {} MiB, less than the {} MiB Rampart may hold: about 64 MiB of its own plus clients_output_total_mb ({replies}) and partial_requests_total_mb ({partial})",
                    limit / mib as u64,
                    needed / mib as u64
                )
            },
            fix: "lower the [limits] caps or raise the container's memory limit (docs/deployment.md)".into(),
        })
    }
}

/// A replica that serves data while its link to the primary is down
/// (`replica-serve-stale-data yes`, Redis's default) answers clients that
/// bypass Rampart with old data; Rampart itself reads only from replicas
/// following the primary over a live link.
fn stale_reads(ctx: &Context, shard: &str, node: &Node, config: &NodeConfig) -> Option<Finding> {
    let replicas_read = ctx
        .config
        .shards
        .get(shard)
        .is_some_and(|s| s.read_from != crate::config::ReadFrom::Primary);
    (replicas_read && config.serve_stale == "yes").then(|| Finding {
        check: "stale-reads",
        shard: Some(shard.into()),
        node: Some(node.addr.clone()),
        finding: "replica-serve-stale-data yes: while its link to the primary is down it answers reads with old data. Rampart never sends it reads then, but clients connected to it directly get them".into(),
        fix: "CONFIG SET replica-serve-stale-data no (and in its redis.conf), unless clients reading it directly accept old data".into(),
    })
}

/// Whether the primary's backlog holds a minute of writes at the rate
/// measured.
fn backlog(shard: &str, primary: &Node, first: &str, second: &str) -> Option<Finding> {
    let offset = |info: &str| info_field(info, "master_repl_offset")?.parse::<u64>().ok();
    let rate = offset(second)?.saturating_sub(offset(first)?) / SAMPLE.as_secs().max(1);
    let size: u64 = info_field(second, "repl_backlog_size")?.parse().ok()?;
    let holds = size.checked_div(rate).unwrap_or(u64::MAX);
    (holds < BACKLOG_SECONDS).then(|| Finding {
        check: "replication-backlog",
        shard: Some(shard.into()),
        node: Some(primary.addr.clone()),
        finding: format!(
            "repl-backlog-size is {size} bytes and writes run at {rate} bytes/s: the backlog holds {holds} s of writes, so a replica away longer (a restart, a network blip) needs a full resynchronisation"
        ),
        fix: format!(
            "raise repl-backlog-size to at least {} bytes ({BACKLOG_SECONDS} s of writes at this rate)",
            rate.saturating_mul(BACKLOG_SECONDS)
        ),
    })
}

/// The node settings the checks read.
struct NodeConfig {
    save: String,
    appendonly: String,
    diskless_sync_delay_s: u64,
    serve_stale: String,
}

async fn node_config(node: &Node, timeout: Duration) -> Option<NodeConfig> {
    let mut control = node.pool.control().await.ok()?;
    let mut get = async |name: &str| -> Option<String> {
        match control.call(&["CONFIG", "GET", name], timeout).await.ok()? {
            OwnedFrame::Array { data, .. } => data.get(1).and_then(frame_text),
            OwnedFrame::Map { data, .. } => data.values().next().and_then(frame_text),
            _ => None,
        }
    };
    Some(NodeConfig {
        save: get("save").await?,
        appendonly: get("appendonly").await?,
        diskless_sync_delay_s: get("repl-diskless-sync-delay")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
        serve_stale: get("replica-serve-stale-data")
            .await
            .unwrap_or_else(|| "yes".into()),
    })
}

async fn info(node: &Node, timeout: Duration) -> Option<String> {
    let mut control = node.pool.control().await.ok()?;
    let reply = control.call(&["INFO", "replication"], timeout).await.ok()?;
    frame_text(&reply)
}

/// This process's memory limit (cgroup v2, else v1), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    })
    // v1 says "no limit" with a number near 2^63.
    .filter(|&limit| limit < 1 << 60)
}
