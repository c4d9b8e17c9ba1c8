//! Routing by the records: each read of etcd taken in, the shards this
//! instance does not hold routed by their records, and writes held when the
//! view is too old, unless every known instance confirms directly that
//! nobody can read etcd (failsafe).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::etcd::Kv;
use super::{policies, Coordination, Holder, InstanceView, ShardSeen};
use crate::failover::state::ShardState;
use crate::topology::ReplicaSet;

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
    /// The prefix's keys sorted by what they are; one that does not read
    /// is warned about once and skipped.
    fn sort(&self, kvs: Vec<Kv>) -> Read {
        let shards_prefix = format!("{}/shards/", self.prefix);
        let instances_prefix = format!("{}/instances/", self.prefix);
        let policies_prefix = format!("{}/policies/", self.prefix);
        let members_prefix = format!("{}/members/", self.prefix);
        let slot_map_key = self.slot_map_key();
        let mut slot_record = None;
        let mut members = std::collections::BTreeSet::new();
        let mut policies = HashMap::new();
        let mut records = HashMap::new();
        let mut holders = HashMap::new();
        let mut instances = BTreeMap::new();
        for kv in kvs {
            if kv.key == slot_map_key {
                slot_record = Some((kv.value, kv.mod_revision));
                continue;
            }
            if let Some(name) = kv.key.strip_prefix(&members_prefix) {
                members.insert(name.to_string());
                continue;
            }
            if let Some(rest) = kv.key.strip_prefix(&shards_prefix) {
                if let Some(shard) = rest.strip_suffix("/record") {
                    match serde_json::from_slice::<ShardState>(&kv.value) {
                        Ok(record) => {
                            records.insert(shard.to_string(), (record, kv.mod_revision));
                        }
                        Err(e) => self.warn_once(&kv.key, &format!("unreadable shard record: {e}")),
                    }
                } else if let Some(shard) = rest.strip_suffix("/lease") {
                    if kv.lease == 0 {
                        // Not taken by a campaign (written by hand?): it
                        // would never expire and block every takeover.
                        self.warn_once(&kv.key, "a shard lease key without an etcd lease is ignored (written by hand?); delete it");
                        continue;
                    }
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
                    Err(e) => self.warn_once(&kv.key, &format!("unreadable policy record: {e}")),
                }
            } else if let Some(name) = kv.key.strip_prefix(&instances_prefix) {
                match serde_json::from_slice::<InstanceView>(&kv.value) {
                    Ok(view) if kv.lease != 0 && view.instance == name => {
                        instances.insert(view.instance.clone(), view);
                    }
                    Ok(_) => self.warn_once(&kv.key, "an instance key without an etcd lease, or naming another instance, is ignored (written by hand?)"),
                    Err(e) => self.warn_once(&kv.key, &format!("unreadable instance view: {e}")),
                }
            }
        }
        Read {
            policies,
            records,
            holders,
            instances,
            slot_record,
            members,
        }
    }

    /// Takes in a read of the whole prefix, sent at `sent`, taken at the
    /// store's `revision`.
    pub(super) fn absorb(&self, sent: Instant, revision: i64, kvs: Vec<Kv>) {
        let Read {
            policies,
            mut records,
            holders,
            instances,
            slot_record,
            members,
        } = self.sort(kvs);
        self.absorb_slots(revision, slot_record, members);
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
        self.open_windows();
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
        let records: Vec<(Arc<ReplicaSet>, ShardState)> = {
            let view = self.view();
            self.shards()
                .into_iter()
                .filter(|shard| !view.held.contains_key(&shard.name))
                .filter_map(|shard| {
                    let record = view.records.get(&shard.name)?.0.clone();
                    Some((shard, record))
                })
                .collect()
        };
        for (shard, record) in records {
            let shard = &shard;
            match implausible(shard, &record) {
                Some(why) => self.warn_once(
                    &format!("{}@{}", self.record_key(&shard.name), record.epoch),
                    &format!("shard record refused: {why}; routing stays as it was"),
                ),
                None => follow(shard, &record),
            }
        }
    }

    /// Logs `what` about `key` once, and records it as an event: keys
    /// written by hand are read every poll, and one line ten times a
    /// second would bury everything else.
    pub(super) fn warn_once(&self, key: &str, what: &str) {
        if !self.view().warned.insert(key.to_string()) {
            return;
        }
        tracing::warn!(key, "{what}");
        self.events.record(
            "-",
            "coordination-key-refused",
            None,
            0,
            format!("{key}: {what}"),
        );
    }

    /// Opens every shard's write window until this instance's view may
    /// be too old: `max_view_age_ms` after the last successful read was
    /// sent, and no later than its own lease may run out (its key gone, a
    /// holder fencing an epoch would not wait for it).
    pub(super) fn open_windows(&self) {
        let until = {
            let view = self.view();
            let (Some(read), Some(lease)) = (view.read_at, view.lease) else {
                return;
            };
            (read + self.max_view_age).min(lease.valid_until)
        };
        for shard in &self.shards() {
            shard.durability.window.open_until(until);
        }
    }

    /// Why this instance's view may be too old to write by, or None.
    pub(super) fn stale_reason(&self) -> Option<String> {
        let now = Instant::now();
        let view = self.view();
        let Some(read) = view.read_at else {
            return Some("etcd not read yet".into());
        };
        let age = now.duration_since(read);
        if age > self.max_view_age {
            return Some(format!(
                "etcd not read for {} ms (max_view_age_ms = {})",
                age.as_millis(),
                self.max_view_age.as_millis()
            ));
        }
        match view.lease {
            Some(lease) if now < lease.valid_until => None,
            Some(_) => Some(format!(
                "its etcd lease may have run out (lease_ttl_s = {}, counted from the last renewal sent)",
                self.ttl.as_secs()
            )),
            None => Some("it holds no etcd lease".into()),
        }
    }

    /// Read etcd within `max_view_age_ms`, and the lease valid.
    pub(super) fn is_fresh(&self) -> bool {
        self.stale_reason().is_none()
    }

    /// What `GET /v1/coordination/peer` answers.
    ///
    /// An answer that it cannot read etcd lets the asker write for up to
    /// `max_view_age_ms`: remembered, so that a fence this instance writes
    /// soon after waits for that to end.
    pub fn peer_status(&self) -> PeerStatus {
        let fresh = self.is_fresh();
        if !fresh {
            self.view().answered_unfresh_at = Some(Instant::now());
        }
        PeerStatus {
            instance: self.instance.clone(),
            fresh,
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
    pub(super) async fn failsafe(&self) -> Option<Vec<String>> {
        // Never read etcd: it does not know whom to ask.
        self.view().read_at?;
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
            let admin = admin?;
            let timeout = self.poll.max(Duration::from_millis(200));
            match tokio::time::timeout(timeout, peer_get(&admin)).await {
                Ok(Some(status)) if status.instance == instance && !status.fresh => {
                    answers.push(status)
                }
                _ => return None,
            }
        }
        Some(
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
                .collect(),
        )
    }

    /// Whether the last failsafe question found that no known instance can
    /// read etcd: then nobody can decide a failover for now.
    pub fn nobody_reads_etcd(&self) -> bool {
        self.view().nobody_reads_etcd
    }
}

/// Why a record cannot be followed: it names a node the shard does not
/// have, or an epoch older than the one already routed by (epochs only
/// grow; a record going back was written by hand or restored from a
/// backup, and following it could name a primary that was replaced).
fn implausible(shard: &ReplicaSet, record: &ShardState) -> Option<String> {
    if shard.node_by_addr(&record.primary).is_none() {
        return Some(format!(
            "it names {}, which is not a node of shard '{}'",
            record.primary, shard.name
        ));
    }
    if record.epoch < shard.epoch() {
        return Some(format!(
            "its epoch {} is older than the epoch {} routed by",
            record.epoch,
            shard.epoch()
        ));
    }
    None
}

/// Routes `shard` by `record`: its primary at its epoch, writes held while
/// it is fenced.
pub fn follow(shard: &ReplicaSet, record: &ShardState) {
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

/// One read of the prefix, sorted.
struct Read {
    policies: HashMap<String, (policies::PolicyRecord, i64)>,
    records: HashMap<String, (ShardState, i64)>,
    holders: HashMap<String, Holder>,
    instances: BTreeMap<String, InstanceView>,
    slot_record: Option<(Vec<u8>, i64)>,
    members: std::collections::BTreeSet<String>,
}
