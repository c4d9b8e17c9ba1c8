//! Several Rampart instances that agree through etcd (`[coordination]`).
//!
//! Every instance runs the same loop ([`Coordination::run`]) every
//! `poll_ms`:
//!
//! 1. keep its lease alive (one etcd lease per instance; its validity is
//!    counted from when the keep-alive was *sent*, never from the answer);
//! 2. read everything under the prefix: each shard's **record** (epoch,
//!    primary, fenced), who holds each shard's **failover lease**, and
//!    every live instance's published view;
//! 3. route by the records of the shards it does not hold: the newest
//!    epoch's primary, and no writes while a record is fenced;
//! 4. publish its own view (the epoch it routes by and the nodes its
//!    probes judge down), and campaign for shards nobody holds.
//!
//! Only the holder of a shard's lease runs that shard's failover
//! controller, and every decision it writes is one transaction comparing
//! the lease key (value and creation revision: this very lease, not one
//! taken again later) and the record's `mod_revision` (the record it
//! replaces): a holder that lost its lease without knowing it, or woke
//! from a pause, cannot write a decision (Patroni #2787).
//!
//! An instance that cannot read etcd keeps routing by the records it has
//! until its view is older than `max_view_age_ms`, then holds writes:
//! the holder fences an epoch, waits until every live instance has
//! reported it (or `max_view_age_ms`, after which the silent ones hold
//! writes by themselves), and only then names the new primary. A lease
//! is not a fence (etcd's own docs); the fence is the epoch every
//! instance routes by, plus the nodes' `min-replicas-to-write`.
//!
//! An instance whose loop finds its own clock jumped (a pause, a stopped
//! VM) gives its lease back and stays out for one lease TTL (Sentinel's
//! TILT).

pub mod etcd;
pub mod policies;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::CoordinationConfig;
use crate::failover::state::ShardState;
use crate::observe::events::Events;
use crate::topology::{Health, Shard};
use etcd::{Compare, Etcd, EtcdError, Kv, Op};

/// What an instance publishes about itself, for the others and the views.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub instance: String,
    /// The client listener.
    pub listen: String,
    /// The admin listener, if any.
    #[serde(default)]
    pub admin: Option<String>,
    /// Per shard: what it routes by and what its probes see.
    #[serde(default)]
    pub shards: BTreeMap<String, ShardSeen>,
    /// When it was published (milliseconds since the Unix epoch, its
    /// clock): instances publish at least once a second while they read
    /// etcd, and their key expires with their lease when they cannot.
    #[serde(default)]
    pub published_ms: u64,
    /// How long ago that was, by this instance's clock (set in views, not
    /// stored).
    #[serde(default, skip_deserializing)]
    pub view_age_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSeen {
    /// The epoch it routes by.
    pub epoch: u64,
    /// Whether it holds the shard's writes for a failover.
    #[serde(default)]
    pub fenced: bool,
    /// Nodes its probes judge down.
    #[serde(default)]
    pub down: Vec<String>,
    /// The highest replication offset its probes saw on each node (at
    /// most a second old): what the lease holder needs to tell a replica
    /// that kept everything from one that came back with less.
    #[serde(default)]
    pub offsets: BTreeMap<String, u64>,
}

/// A shard's lease as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub instance: String,
    #[serde(skip)]
    create_revision: i64,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// When the last successful grant or keep-alive was sent, plus the TTL.
    valid_until: Instant,
    renew_at: Instant,
}

/// The instance's view of etcd, refreshed every poll.
#[derive(Default)]
struct View {
    lease: Option<Lease>,
    /// Shards whose lease this instance holds: the creation revision of
    /// its lease key.
    held: HashMap<String, i64>,
    tilt_until: Option<Instant>,
    /// When the last successful read was sent.
    read_at: Option<Instant>,
    records: HashMap<String, (ShardState, i64)>,
    holders: HashMap<String, Holder>,
    instances: BTreeMap<String, InstanceView>,
    published: Option<(InstanceView, Instant)>,
    last_error: Option<String>,
    /// Routing goes on with a stale view because every known instance
    /// said it cannot read etcd either (see [`Coordination::failsafe`]).
    failsafe_active: bool,
    /// The last event published for the other instances, and when.
    events_published: (u64, Option<Instant>),
    /// The lease the published events live on, and when it was granted.
    events_lease: Option<(i64, Instant)>,
    /// Each policy slot's shared record, and its `mod_revision`.
    policies: HashMap<String, (policies::PolicyRecord, i64)>,
    /// The revision of each slot's record in force here.
    policies_applied: HashMap<String, i64>,
    /// How each generation this instance runs can be loaded elsewhere.
    sources: HashMap<(String, u64), policies::Shared>,
}

/// What an instance answers a peer asking, in failsafe, whether anyone
/// can still read etcd (`GET /v1/coordination/peer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub instance: String,
    /// It read etcd within `max_view_age_ms` and holds a valid lease.
    pub fresh: bool,
    pub shards: BTreeMap<String, ShardSeen>,
}

pub struct Coordination {
    pub instance: String,
    listen: String,
    admin: Option<String>,
    etcd: Etcd,
    prefix: String,
    ttl: Duration,
    poll: Duration,
    max_view_age: Duration,
    down_quorum: u32,
    /// False for `failover.role = "follower"`: never takes a lease.
    campaign: bool,
    /// `failsafe`: with a stale view, keep routing while every known
    /// instance answers directly that it cannot read etcd either.
    failsafe: bool,
    view: Mutex<View>,
    shards: Vec<Arc<Shard>>,
    events: Arc<Events>,
    /// Bumped when records were read that are not applied here.
    policy_changed: watch::Sender<u64>,
}

/// A shard as `/v1/topology` shows its coordination.
#[derive(Debug, Clone, Serialize)]
pub struct CoordinationView {
    pub backend: &'static str,
    pub instance: String,
    pub prefix: String,
    /// Milliseconds since the last successful read was sent (null: never).
    pub view_age_ms: Option<u64>,
    pub max_view_age_ms: u64,
    pub tilted: bool,
    /// Writes go on with a stale view because every known instance
    /// confirmed it cannot read etcd either.
    pub failsafe: bool,
    pub last_error: Option<String>,
    /// Shard name -> the instance holding its failover lease.
    pub lease_holders: BTreeMap<String, String>,
    pub instances: Vec<InstanceView>,
}

impl Coordination {
    pub fn new(
        config: &CoordinationConfig,
        tls: Option<Arc<crate::net::tls::Connector>>,
        campaign: bool,
        listen: String,
        admin: Option<String>,
        shards: Vec<Arc<Shard>>,
        events: Arc<Events>,
    ) -> Coordination {
        let etcd = Etcd::new(etcd::Endpoints {
            addrs: config.endpoints.clone(),
            tls,
            credentials: config
                .username
                .clone()
                .map(|u| (u, config.password.clone().unwrap_or_default())),
            timeout: Duration::from_millis(config.request_timeout_ms),
        });
        Coordination {
            instance: config.instance_id(&listen),
            listen,
            admin,
            etcd,
            prefix: config.prefix.trim_end_matches('/').to_string(),
            ttl: Duration::from_secs(config.lease_ttl_s),
            poll: Duration::from_millis(config.poll_ms),
            max_view_age: Duration::from_millis(config.max_view_age_ms),
            down_quorum: config.down_quorum,
            campaign,
            failsafe: config.failsafe,
            view: Mutex::new(View::default()),
            shards,
            events,
            policy_changed: watch::channel(0).0,
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_key(&self, shard: &str) -> String {
        format!("{}/shards/{shard}/lease", self.prefix)
    }

    fn record_key(&self, shard: &str) -> String {
        format!("{}/shards/{shard}/record", self.prefix)
    }

    fn instance_key(&self, instance: &str) -> String {
        format!("{}/instances/{instance}", self.prefix)
    }

    /// Whether this instance may act on `shard` now: it holds the lease,
    /// the lease is valid for at least a third of its TTL more (counted
    /// from the keep-alive's sending), and it is not in TILT.
    pub fn holds(&self, shard: &str) -> bool {
        let view = self.view();
        let now = Instant::now();
        view.held.contains_key(shard)
            && view.tilt_until.is_none_or(|t| now >= t)
            && view
                .lease
                .is_some_and(|l| l.valid_until > now + self.ttl / 3)
    }

    /// Who holds `shard`'s lease, as last read.
    pub fn holder(&self, shard: &str) -> Option<String> {
        self.view().holders.get(shard).map(|h| h.instance.clone())
    }

    /// The shard's record as last read (or written by this instance).
    pub fn record(&self, shard: &str) -> Option<ShardState> {
        self.view().records.get(shard).map(|(r, _)| r.clone())
    }

    /// Writes the shard's record, on condition that this instance still
    /// holds the lease it acquired and the record is the one it last saw.
    pub async fn save(&self, shard: &str, record: &ShardState) -> Result<(), String> {
        let (created, seen) = {
            let view = self.view();
            let Some(&created) = view.held.get(shard) else {
                return Err(format!(
                    "this instance does not hold shard '{shard}''s failover lease"
                ));
            };
            (created, view.records.get(shard).map_or(0, |(_, rev)| *rev))
        };
        if !self.holds(shard) {
            return Err("the failover lease is about to expire or the instance is in TILT".into());
        }
        let lease_key = self.lease_key(shard);
        let record_key = self.record_key(shard);
        let value = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let compare = [
            Compare::Value(lease_key.clone(), self.instance.as_bytes().to_vec()),
            Compare::Created(lease_key, created),
            Compare::Modified(record_key.clone(), seen),
        ];
        let put = Op::Put {
            key: record_key,
            value,
            lease: 0,
        };
        match self.etcd.txn(&compare, &[put]).await {
            Ok((true, revision)) => {
                self.view()
                    .records
                    .insert(shard.to_string(), (record.clone(), revision));
                Ok(())
            }
            Ok((false, _)) => {
                // Someone else holds the lease now, or wrote the record:
                // this instance no longer decides for the shard.
                self.view().held.remove(shard);
                Err("the failover lease or the shard record changed under this instance; it steps back".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits until every other live instance routes `shard` by `epoch` or
    /// a newer one, or `max_view_age_ms` passed (an instance that has not
    /// read etcd for that long holds writes by itself). Returns the
    /// instances that did not confirm.
    ///
    /// The instances waited for are those live when the wait begins: one
    /// whose key expires meanwhile is still waited for, since it may
    /// route by its old view until its own bound. One whose key had
    /// expired already holds writes: its lease ran out by its own count
    /// (from the keep-alive's sending) no later than etcd's.
    pub async fn wait_confirmed(&self, shard: &str, epoch: u64) -> Vec<String> {
        let deadline = Instant::now() + self.max_view_age;
        let mut silent: Vec<String> = self
            .view()
            .instances
            .keys()
            .filter(|i| **i != self.instance)
            .cloned()
            .collect();
        loop {
            {
                let view = self.view();
                silent.retain(|i| {
                    view.instances
                        .get(i)
                        .and_then(|v| v.shards.get(shard))
                        .is_none_or(|s| s.epoch < epoch)
                });
            }
            if silent.is_empty() || Instant::now() >= deadline {
                return silent;
            }
            tokio::time::sleep(self.poll / 4).await;
        }
    }

    /// Whether enough live instances judge `addr` down: `down_quorum` of
    /// them, or (0) a majority. This instance counts with its own probes.
    pub fn agreed_down(&self, shard: &str, addr: &str) -> (bool, String) {
        let view = self.view();
        let others: Vec<&InstanceView> = view
            .instances
            .values()
            .filter(|i| i.instance != self.instance)
            .collect();
        let live = others.len() as u32 + 1;
        let down = 1 + others
            .iter()
            .filter(|i| {
                i.shards
                    .get(shard)
                    .is_some_and(|s| s.down.iter().any(|d| d == addr))
            })
            .count() as u32;
        let needed = match self.down_quorum {
            0 => live / 2 + 1,
            n => n.min(live),
        };
        (
            down >= needed,
            format!("{down} of {live} live instances judge it down ({needed} needed)"),
        )
    }

    /// The highest offset any live instance's probes saw on `addr`: a
    /// replica with less has lost writes, even if this instance (started
    /// later, say) never saw it hold more.
    pub fn seen_offset(&self, shard: &str, addr: &str) -> u64 {
        self.view()
            .instances
            .values()
            .filter_map(|i| i.shards.get(shard)?.offsets.get(addr).copied())
            .max()
            .unwrap_or(0)
    }

    /// For `/v1/topology` and `rampart status`.
    pub fn snapshot(&self) -> CoordinationView {
        let view = self.view();
        let now = Instant::now();
        CoordinationView {
            backend: "etcd",
            instance: self.instance.clone(),
            prefix: self.prefix.clone(),
            view_age_ms: view
                .read_at
                .map(|t| now.duration_since(t).as_millis() as u64),
            max_view_age_ms: self.max_view_age.as_millis() as u64,
            tilted: view.tilt_until.is_some_and(|t| now < t),
            failsafe: view.failsafe_active,
            last_error: view.last_error.clone(),
            lease_holders: view
                .holders
                .iter()
                .map(|(s, h)| (s.clone(), h.instance.clone()))
                .collect(),
            instances: view
                .instances
                .values()
                .map(|i| InstanceView {
                    view_age_ms: now_ms().saturating_sub(i.published_ms),
                    ..i.clone()
                })
                .collect(),
        }
    }

    /// The loop: until `shutdown`, then gives the lease back so another
    /// instance takes over at once rather than after the TTL.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (paused, mut pauses) = tokio::sync::mpsc::channel(1);
        tokio::spawn(watch_pauses(
            self.poll,
            self.poll + self.ttl / 2,
            paused,
            shutdown.clone(),
        ));
        loop {
            if let Ok(gap) = pauses.try_recv() {
                self.tilt(gap).await;
            }
            if let Err(e) = self.round().await {
                let mut view = self.view();
                if view.last_error.as_deref() != Some(e.to_string().as_str()) {
                    tracing::warn!(error = %e, "coordination round failed");
                }
                view.last_error = Some(e.to_string());
            }
            self.hold_if_stale().await;
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = shutdown.changed() => break,
            }
        }
        let lease = self.view().lease.take();
        if let Some(lease) = lease {
            let _ = self.etcd.revoke(lease.id).await;
        }
    }

    /// TILT: the process was paused or starved (see [`watch_pauses`]);
    /// whatever it believed about its leases may be stale. It gives its
    /// shards' leases back (so another instance takes over at once) and
    /// decides nothing for one TTL. Its own lease stays: it still serves
    /// clients and confirms fences.
    async fn tilt(&self, gap: Duration) {
        let held: Vec<(String, i64)> = {
            let mut view = self.view();
            view.tilt_until = Some(Instant::now() + self.ttl);
            view.held.drain().collect()
        };
        self.events.record(
            "-",
            "tilt",
            None,
            0,
            format!(
                "this instance did not run for {} ms (paused or starved): it gives its failover leases back and decides nothing for {} s",
                gap.as_millis(),
                self.ttl.as_secs()
            ),
        );
        for (shard, created) in held {
            let key = self.lease_key(&shard);
            let mine = [
                Compare::Value(key.clone(), self.instance.as_bytes().to_vec()),
                Compare::Created(key.clone(), created),
            ];
            let _ = self.etcd.txn(&mine, &[Op::Delete(key)]).await;
        }
    }

    async fn round(&self) -> Result<(), EtcdError> {
        let tilted = self.view().tilt_until.is_some_and(|t| Instant::now() < t);
        self.keep_lease().await?;
        let sent = Instant::now();
        // Everything but the plugin blobs (`~` sorts after the rest).
        let (_, kvs) = self
            .etcd
            .range(&format!("{}/", self.prefix), &format!("{}/~", self.prefix))
            .await?;
        self.absorb(sent, kvs);
        self.follow_records();
        self.publish().await?;
        self.publish_events().await?;
        if self.campaign && !tilted {
            self.campaign().await?;
        }
        self.view().last_error = None;
        Ok(())
    }

    /// Renews the lease every third of its TTL. A lease this instance
    /// counts as run out is still renewed if etcd has kept it (etcd
    /// extends leases across its own leader changes): the keys on it are
    /// still this instance's. Only a lease etcd no longer knows is
    /// replaced, and the shards held on it are lost with it.
    async fn keep_lease(&self) -> Result<(), EtcdError> {
        let now = Instant::now();
        let lease = self.view().lease;
        if let Some(lease) = lease {
            if now < lease.renew_at {
                return Ok(());
            }
            let ttl = self.etcd.keep_alive(lease.id).await?;
            let mut view = self.view();
            if ttl > 0 {
                view.lease = Some(Lease {
                    id: lease.id,
                    valid_until: now + Duration::from_secs(ttl).min(self.ttl),
                    renew_at: now + self.ttl / 3,
                });
                return Ok(());
            }
            view.lease = None;
            view.held.clear();
        }
        let (id, ttl) = self.etcd.grant(self.ttl.as_secs().max(1)).await?;
        let mut view = self.view();
        view.held.clear();
        view.published = None;
        view.lease = Some(Lease {
            id,
            valid_until: now + Duration::from_secs(ttl).min(self.ttl),
            renew_at: now + self.ttl / 3,
        });
        Ok(())
    }

    /// Takes in a read of the whole prefix, sent at `sent`.
    fn absorb(&self, sent: Instant, kvs: Vec<Kv>) {
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
    fn follow_records(&self) {
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
    async fn hold_if_stale(&self) {
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
    fn is_fresh(&self) -> bool {
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
    async fn failsafe(&self) -> Vec<String> {
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

    /// Per shard: the epoch this instance routes by, and what its probes
    /// see.
    fn seen(&self) -> BTreeMap<String, ShardSeen> {
        self.shards
            .iter()
            .map(|s| {
                let seen = ShardSeen {
                    epoch: s.epoch(),
                    fenced: s.is_failing_over(),
                    down: s
                        .nodes
                        .iter()
                        .filter(|n| n.health() == Health::Down)
                        .map(|n| n.addr.clone())
                        .collect(),
                    offsets: BTreeMap::new(),
                };
                (s.name.clone(), seen)
            })
            .collect()
    }

    /// Publishes this instance's view when it changed, and every second.
    async fn publish(&self) -> Result<(), EtcdError> {
        let mine = InstanceView {
            instance: self.instance.clone(),
            listen: self.listen.clone(),
            admin: self.admin.clone(),
            shards: self.seen(),
            published_ms: 0,
            view_age_ms: 0,
        };
        let (lease, due) = {
            let view = self.view();
            let due = match &view.published {
                Some((last, at)) => *last != mine || at.elapsed() >= Duration::from_secs(1),
                None => true,
            };
            (view.lease, due)
        };
        let Some(lease) = lease else {
            return Ok(());
        };
        if !due {
            return Ok(());
        }
        // Offsets move with every write: they go out with the changes
        // and the once-a-second refresh, not as changes of their own.
        let mut stamped = InstanceView {
            published_ms: now_ms(),
            ..mine.clone()
        };
        for shard in &self.shards {
            if let Some(seen) = stamped.shards.get_mut(&shard.name) {
                seen.offsets = shard
                    .nodes
                    .iter()
                    .map(|n| (n.addr.clone(), n.max_offset()))
                    .collect();
            }
        }
        let value = serde_json::to_vec(&stamped).unwrap_or_default();
        let put = Op::Put {
            key: self.instance_key(&self.instance),
            value,
            lease: lease.id,
        };
        self.etcd.txn(&[], &[put]).await?;
        let mut view = self.view();
        view.instances.insert(self.instance.clone(), stamped);
        view.published = Some((mine, Instant::now()));
        Ok(())
    }

    /// Publishes this instance's latest events (at most once a second),
    /// so that any instance can show what every instance did. They are
    /// kept after the instance dies: its last words are the interesting
    /// ones.
    async fn publish_events(&self) -> Result<(), EtcdError> {
        let (last, at) = self.view().events_published;
        if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        let recent = self.events.since(last);
        let Some(newest) = recent.last().map(|e| e.seq) else {
            return Ok(());
        };
        let all = self.events.since(0);
        let kept = &all[all.len().saturating_sub(PUBLISHED_EVENTS)..];
        // On a lease of their own, an hour long and replaced every half
        // hour: a dead instance's last words stay that long, and instances
        // that come and go (pods get new names) leave nothing behind.
        let current = self.view().events_lease;
        let lease = match current {
            Some((id, granted)) if granted.elapsed() < EVENTS_KEPT / 2 => id,
            _ => {
                let (id, _) = self.etcd.grant(EVENTS_KEPT.as_secs()).await?;
                self.view().events_lease = Some((id, Instant::now()));
                id
            }
        };
        let put = Op::Put {
            key: format!("{}/~events/{}", self.prefix, self.instance),
            value: serde_json::to_vec(kept).unwrap_or_default(),
            lease,
        };
        self.etcd.txn(&[], &[put]).await?;
        self.view().events_published = (newest, Some(Instant::now()));
        Ok(())
    }

    /// Every other instance's published events, each with its
    /// `instance`, and this instance's own, oldest first.
    pub async fn all_events(&self) -> Result<Vec<serde_json::Value>, String> {
        let (_, kvs) = self
            .etcd
            .range_prefix(&format!("{}/~events/", self.prefix))
            .await
            .map_err(|e| e.to_string())?;
        let mut all: Vec<serde_json::Value> = Vec::new();
        for kv in kvs {
            let instance = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            if instance == self.instance {
                continue;
            }
            let events: Vec<serde_json::Value> =
                serde_json::from_slice(&kv.value).unwrap_or_default();
            all.extend(events.into_iter().map(|mut e| {
                e["instance"] = serde_json::Value::String(instance.clone());
                e
            }));
        }
        all.extend(self.events.since(0).into_iter().map(|e| {
            let mut e = serde_json::to_value(e).unwrap_or_default();
            e["instance"] = serde_json::Value::String(self.instance.clone());
            e
        }));
        all.sort_by_key(|e| e["at_ms"].as_u64().unwrap_or(0));
        Ok(all)
    }

    /// Takes the lease of every shard nobody holds (Patroni's rule: a
    /// transaction on the key not existing).
    async fn campaign(&self) -> Result<(), EtcdError> {
        let (lease, free): (Option<Lease>, Vec<String>) = {
            let view = self.view();
            (
                view.lease,
                self.shards
                    .iter()
                    .filter(|s| !view.holders.contains_key(&s.name))
                    .map(|s| s.name.clone())
                    .collect(),
            )
        };
        let Some(lease) = lease else {
            return Ok(());
        };
        for shard in free {
            let key = self.lease_key(&shard);
            let put = Op::Put {
                key: key.clone(),
                value: self.instance.as_bytes().to_vec(),
                lease: lease.id,
            };
            let (won, revision) = self.etcd.txn(&[Compare::Absent(key)], &[put]).await?;
            if won {
                {
                    let mut view = self.view();
                    view.held.insert(shard.clone(), revision);
                    view.holders.insert(
                        shard.clone(),
                        Holder {
                            instance: self.instance.clone(),
                            create_revision: revision,
                        },
                    );
                }
                self.events.record(
                    &shard,
                    "lease-acquired",
                    None,
                    0,
                    format!("{} holds the shard's failover lease", self.instance),
                );
            }
        }
        Ok(())
    }
}

/// Sentinel's TILT check, kept apart from the loop so that a slow etcd
/// (a round waiting on its requests) is not taken for a pause: a timer that
/// wakes `beyond` later than asked means the whole process stood still.
async fn watch_pauses(
    every: Duration,
    beyond: Duration,
    paused: tokio::sync::mpsc::Sender<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let asleep = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let gap = asleep.elapsed();
        if gap > beyond {
            let _ = paused.try_send(gap);
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Events each instance keeps in etcd for the others to show.
const PUBLISHED_EVENTS: usize = 100;

/// How long an instance's published events outlive it.
const EVENTS_KEPT: Duration = Duration::from_secs(3600);

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
