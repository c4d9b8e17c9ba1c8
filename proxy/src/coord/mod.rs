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

mod events;
mod instances;
mod lease;
mod routing;
mod slot_record;
mod watchdog;

pub mod etcd;
pub mod policies;

pub use lease::SaveError;
pub use routing::{follow, PeerStatus};
pub use slot_record::ForgetError;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::CoordinationConfig;
use crate::failover::state::ShardState;
use crate::observe::events::Events;
use crate::topology::ReplicaSet;
use etcd::{Etcd, EtcdError};

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
    /// The revision of the slot map record it routes by, with nothing
    /// routed by an earlier map still unanswered (see `slot_record`).
    #[serde(default)]
    pub slots_acked: i64,
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
    /// Replicas this instance detached from a primary that was down
    /// while it could not read etcd: candidates for promotion though they
    /// claim to be primaries (see `failover::controller`).
    #[serde(default)]
    pub detached: Vec<String>,
    /// The highest replication offset its probes saw on each node (at
    /// most a second old): what the lease holder needs to tell a replica
    /// that kept everything from one that came back with less.
    #[serde(default)]
    pub offsets: BTreeMap<String, u64>,
}

/// A shard's lease key as read from etcd.
#[derive(Debug, Clone)]
struct Holder {
    instance: String,
    /// Tells this key from one deleted and created again.
    create_revision: i64,
    /// The etcd lease the key is attached to.
    lease: i64,
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
    /// The last question to the other instances found none can read etcd.
    nobody_reads_etcd: bool,
    /// When this instance last told a peer asking for failsafe that it
    /// cannot read etcd either: that peer may write on the strength of
    /// the answer for up to `max_view_age_ms`, so a fence this instance
    /// writes waits that long after it (see [`Coordination::wait_confirmed`]).
    answered_unfresh_at: Option<Instant>,
    /// Keys found malformed (written by hand?), warned about once each.
    warned: std::collections::HashSet<String>,
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
    /// The slot map's record and its `mod_revision` (see `slot_record`).
    slot_record: Option<(Vec<u8>, i64)>,
    /// The instances registered as members.
    members: std::collections::BTreeSet<String>,
    /// The slot map record this instance acknowledged.
    slots_acked: i64,
    /// The store's revision at the last read.
    read_revision: i64,
}

pub struct Coordination {
    pub instance: String,
    /// When this process started (ms since the Unix epoch): tells its
    /// published events from those of the same instance before a restart.
    life: u64,
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
    /// The shards, one added by a reload at the end; retired ones are
    /// left out by [`Coordination::shards`].
    shards: arc_swap::ArcSwap<Vec<Arc<ReplicaSet>>>,
    events: Arc<Events>,
    /// Bumped when records were read that are not applied here.
    policy_changed: watch::Sender<u64>,
    /// Bumped when the slot map's record (or membership) changed.
    slot_changed: watch::Sender<u64>,
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
    /// Every registered member, live or not: slot moves wait for each.
    pub members: Vec<String>,
}
impl Coordination {
    pub fn new(
        config: &CoordinationConfig,
        tls: Option<Arc<crate::net::tls::Connector>>,
        campaign: bool,
        listen: String,
        admin: Option<String>,
        shards: Vec<Arc<ReplicaSet>>,
        events: Arc<Events>,
    ) -> Coordination {
        // Nothing is written before etcd was read once.
        for shard in &shards {
            shard.durability.window.close();
        }
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
            life: now_ms(),
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
            // A fence written soon after a restart waits as if this
            // instance had just answered a failsafe question: the process
            // before it may have.
            view: Mutex::new(View {
                answered_unfresh_at: Some(Instant::now()),
                ..View::default()
            }),
            shards: arc_swap::ArcSwap::from_pointee(shards),
            events,
            policy_changed: watch::channel(0).0,
            slot_changed: watch::channel(0).0,
        }
    }

    /// The shards in service.
    fn shards(&self) -> Vec<Arc<ReplicaSet>> {
        self.shards
            .load()
            .iter()
            .filter(|s| !s.is_retired())
            .cloned()
            .collect()
    }

    /// A shard added by a reload: its writes wait for the next read of
    /// etcd (its record, if another instance has one), as at start.
    pub fn add_shard(&self, shard: Arc<ReplicaSet>) {
        shard.durability.window.close();
        self.shards.rcu(|shards| {
            let mut shards = Vec::clone(shards);
            shards.push(shard.clone());
            shards
        });
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
            members: view.members.iter().cloned().collect(),
        }
    }

    /// The loop: until `shutdown`, then gives the lease back so another
    /// instance takes over at once rather than after the TTL.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.clone().watchdog(shutdown.clone()));
        let (paused, mut pauses) = tokio::sync::mpsc::channel(1);
        tokio::spawn(lease::watch_pauses(
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

    async fn round(&self) -> Result<(), EtcdError> {
        let tilted = self.view().tilt_until.is_some_and(|t| Instant::now() < t);
        self.keep_lease().await?;
        let sent = Instant::now();
        // Everything but the plugin blobs (`~` sorts after the rest).
        let (revision, kvs) = self
            .etcd
            .range(&format!("{}/", self.prefix), &format!("{}/~", self.prefix))
            .await?;
        self.absorb(sent, revision, kvs);
        self.follow_records();
        self.publish().await?;
        self.register().await?;
        self.publish_events().await?;
        self.give_back_retired().await;
        if self.campaign && !tilted {
            self.campaign().await?;
        }
        self.view().last_error = None;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
