//! Routing by the records: each read of etcd taken in, the shards this
//! instance does not hold routed by their records, and writes held when the
//! view is too old, unless every known instance confirms directly that
//! nobody can read etcd (failsafe).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::etcd::Kv;
use super::{policies, Coordination, Holder, InstanceView, ShardSeen};
use crate::failover::state::ShardState;
use crate::topology::Shard;

/// What an instance answers a peer asking, in failsafe, whether anyone
/// can still read etcd (`GET /v1/coordination/peer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub instance: String,
    /// It read etcd within `max_view_age_ms` and holds a valid lease.
    pub fresh: bool,
    pub shards: BTreeMap<String, ShardSeen>,
}

impl Coordination {
    /// Takes in a read of the whole prefix, sent at `sent`, taken at the
    /// store's `revision`.
    pub(super) fn absorb(&self, sent: Instant, revision: i64, kvs: Vec<Kv>) {
        let shards_prefix = format!("{}/shards/", self.prefix);
        let instances_prefix = format!("{}/instances/", self.prefix);
        let policies_prefix = format!("{}/policies/", self.prefix);
        let mut policies = HashMap::new();
        let mut records = HashMap::new();
        let mut holders = HashMap::new();
        let mut instances = BTreeMap::new();
        for kv in kvs {
            if let Some(rest) = kv.key.strip_prefix(&shards_prefix) {
                if let Some(shard) = rest.strip_suffix("/record") {
                    match serde_json::from_slice::<ShardState>(&kv.value) {
                        Ok(record) => {
                            records.insert(shard.to_string(), (record, kv.mod_revision));
                        }
                        Err(e) => {
                            tracing::error!(key = %kv.key, error = %e, "unreadable shard record")
                        }
                    }
                } else if let Some(shard) = rest.strip_suffix("/lease") {
                    holders.insert(
                        shard.to_string(),
                        Holder {
                            instance: String::from_utf8_lossy(&kv.value).into_owned(),
                            create_revision: kv.create_revision,
                            lease: kv.lease,
                        },
                    );
                }
            } else if let Some(scope) = kv.key.strip_prefix(&policies_prefix) {
                match serde_json::from_slice::<policies::PolicyRecord>(&kv.value) {
                    Ok(record) => {
                        policies.insert(scope.to_string(), (record, kv.mod_revision));
                    }
                    Err(e) => {
                        tracing::error!(key = %kv.key, error = %e, "unreadable policy record")
                    }
                }
            } else if kv.key.starts_with(&instances_prefix) {
                if let Ok(view) = serde_json::from_slice::<InstanceView>(&kv.value) {
                    instances.insert(view.instance.clone(), view);
                }
            }
        }
        let mut view = self.view();
        // A record this instance wrote after the read was taken (the
        // controller writes while the loop reads) is newer than the read:
        // keep it, or the next write would compare against a revision
        // that is already gone and fail for nothing.
        for (shard, (record, written)) in &view.records {
            let read = records.get(shard).map_or(0, |(_, r)| *r);
            if *written > revision && *written > read {
                records.insert(shard.clone(), (record.clone(), *written));
            }
        }
        // A key on this instance's own lease is its own, whatever this
        // instance believed: a decision that failed its comparison (a stale
        // read) gave up the hold, and nothing else would give it back.
        let lease = view.lease.map(|l| l.id);
        let mine: Vec<(String, i64)> = holders
            .iter()
            .filter(|(shard, h)| {
                h.instance == self.instance
                    && Some(h.lease) == lease
                    && !view.held.contains_key(*shard)
            })
            .map(|(shard, h)| (shard.clone(), h.create_revision))
            .collect();
        view.held.extend(mine);
        // A lease key that is no longer this instance's (expired, taken
        // by another) ends its hold on the shard.
        let lost: Vec<String> = view
            .held
            .iter()
            .filter(|(shard, created)| {
                holders
                    .get(*shard)
                    .is_none_or(|h| h.instance != self.instance || h.create_revision != **created)
            })
            .map(|(shard, _)| shard.clone())
            .collect();
        for shard in &lost {
            view.held.remove(shard);
        }
        view.read_at = Some(sent);
        view.records = records;
        view.holders = holders;
        view.instances = instances;
        let pending = policies.iter().any(|(scope, (_, revision))| {
            view.policies_applied
                .get(scope)
                .is_none_or(|applied| applied < revision)
        });
        view.policies = policies;
        drop(view);
        if pending {
            self.policy_changed.send_modify(|n| *n += 1);
        }
        for shard in lost {
            self.events.record(
                &shard,
                "lease-lost",
                None,
                0,
                format!(
                    "{} no longer holds the shard's failover lease",
                    self.instance
                ),
            );
        }
    }

    /// Routes every shard this instance does not decide for by its record.
    pub(super) fn follow_records(&self) {
        let view = self.view();
        for shard in &self.shards {
            if view.held.contains_key(&shard.name) {
                continue;
            }
            let Some((record, _)) = view.records.get(&shard.name) else {
                continue;
            };
            follow(shard, record);
        }
    }

    /// Past `max_view_age_ms` without a successful read, or once its own
    /// lease may have expired (its key gone, so a holder fencing an epoch
    /// would not wait for it), every shard holds its writes: a failover
    /// may have named another primary meanwhile.
    pub(super) async fn hold_if_stale(&self) {
        let stale = !self.is_fresh();
        let safe = if stale && self.failsafe {
            self.failsafe().await
        } else {
            Vec::new()
        };
        let was_failsafe = std::mem::replace(&mut self.view().failsafe_active, !safe.is_empty());
        if !safe.is_empty() && !was_failsafe {
            self.events.record(
                "-",
                "failsafe",
                None,
                0,
                "etcd cannot be read, but every known instance answers that it cannot read it either and routes by the same epochs: nobody can decide a failover, so writes go on",
            );
        }
        for shard in &self.shards {
            let stale = stale && !safe.contains(&shard.name);
            if shard.set_view_stale(stale) {
                self.events.record(
                    &shard.name,
                    if stale { "view-stale" } else { "view-fresh" },
                    None,
                    shard.epoch(),
                    if stale {
                        format!(
                            "etcd not read for over {} ms: writes are held until it is",
                            self.max_view_age.as_millis()
                        )
                    } else {
                        "etcd read again: writes flow".to_string()
                    },
                );
            }
        }
    }

    /// Read etcd within `max_view_age_ms`, and the lease valid.
    pub(super) fn is_fresh(&self) -> bool {
        let now = Instant::now();
        let view = self.view();
        view.read_at
            .is_some_and(|t| now.duration_since(t) <= self.max_view_age)
            && view.lease.is_some_and(|l| now < l.valid_until)
    }

    /// What `GET /v1/coordination/peer` answers.
    pub fn peer_status(&self) -> PeerStatus {
        PeerStatus {
            instance: self.instance.clone(),
            fresh: self.is_fresh(),
            shards: self.seen(),
        }
    }

    /// Patroni's failsafe mode: with etcd unreadable, the shards that may
    /// keep their writes flowing. A failover needs etcd, and an instance
    /// that can read it would be deciding; so when every instance last
    /// seen live answers over its admin listener that it cannot read etcd
    /// either, and routes a shard by the same unfenced epoch as this one,
    /// nobody can be naming another primary for it. Any silence or
    /// disagreement: hold.
    pub(super) async fn failsafe(&self) -> Vec<String> {
        let peers: Vec<(String, Option<String>)> = self
            .view()
            .instances
            .values()
            .filter(|i| i.instance != self.instance)
            .map(|i| (i.instance.clone(), i.admin.clone()))
            .collect();
        let mine = self.seen();
        let mut answers = Vec::new();
        for (instance, admin) in peers {
            let Some(admin) = admin else {
                return Vec::new();
            };
            let timeout = self.poll.max(Duration::from_millis(200));
            match tokio::time::timeout(timeout, peer_get(&admin)).await {
                Ok(Some(status)) if status.instance == instance && !status.fresh => {
                    answers.push(status)
                }
                _ => return Vec::new(),
            }
        }
        mine.iter()
            .filter(|(name, seen)| {
                !seen.fenced
                    && answers.iter().all(|a| {
                        a.shards
                            .get(*name)
                            .is_some_and(|s| s.epoch == seen.epoch && !s.fenced)
                    })
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Routes `shard` by `record`: its primary at its epoch, writes held while
/// it is fenced.
pub fn follow(shard: &Shard, record: &ShardState) {
    if let Some(node) = shard.node_by_addr(&record.primary) {
        let same = shard.primary_node().is_some_and(|p| p.id == node.id);
        if !same || shard.epoch() != record.epoch {
            shard.set_primary(node, record.epoch);
        }
    }
    if shard.is_failing_over() != record.fenced {
        shard.set_failing_over(record.fenced);
    }
    if shard.awaiting_operator() != record.waiting {
        shard.set_awaiting_operator(record.waiting.clone());
    }
}

/// `GET /v1/coordination/peer` from another instance's admin listener
/// (plain HTTP: with `[admin.tls]` the answer is None, and failsafe
/// never applies).
async fn peer_get(admin: &str) -> Option<PeerStatus> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let request =
        format!("GET /v1/coordination/peer HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    (&mut stream)
        .take(64 * 1024)
        .read_to_end(&mut response)
        .await
        .ok()?;
    let text = std::str::from_utf8(&response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}
