//! `[shards.<name>]`: a shard's nodes and slots, where its reads go and
//! what they see, and how its writes are replicated.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One primary and its replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// `host:port` of every node. Which one is primary is discovered from
    /// the nodes themselves (`INFO replication`), never trusted from this list.
    pub nodes: Vec<String>,
    /// The hash slots this shard owns (`"0-8191"`, `"0-5000,10000-16383"`),
    /// as in Redis Cluster: CRC16 of the key (or of its `{hash tag}`)
    /// modulo 16384. Needed when there are several shards; every slot must
    /// be owned by exactly one. One shard owns every slot.
    #[serde(default)]
    pub slots: Option<String>,
    /// Where read-only commands go.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// What a read served by a replica may miss (see [`ReadConsistency`]).
    #[serde(default)]
    pub read_consistency: ReadConsistency,
    /// A router plugin (a `.wasm` component built with rampart-sdk) that
    /// picks the node for each read instead of `read_from`.
    #[serde(default)]
    pub router: Option<String>,
    /// Text handed to the router plugin's `configure`.
    #[serde(default)]
    pub router_config: String,
    /// Each node's zone, by address (`"10.0.0.1:6379" = "eu-west-1a"`), for
    /// zone-aware routers; nodes not listed have none.
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    #[serde(default)]
    pub replication: ReplicationConfig,
}

impl ShardConfig {
    /// The router the shard asks for: its plugin, or the built-in that
    /// `read_from` names.
    pub fn router_source(&self) -> String {
        match (&self.router, self.read_from) {
            (Some(path), _) => path.clone(),
            (None, ReadFrom::Primary) => "builtin:primary-only".into(),
            (None, ReadFrom::Replicas) => "builtin:round-robin".into(),
        }
    }
}

/// How durable a write is before its client is answered (native mode: the
/// nodes replicate with Redis replication).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// `native`: the nodes are Redis replicas of one primary. `fanout`:
    /// the nodes are independent (managed services, other vendors, another
    /// region) and Rampart sends every write to each of them, in one order.
    pub mode: Mode,
    /// Fan-out: memory for writes some node has not run yet (a node that is
    /// down, or slow). A node that is down when the backlog would pass this
    /// is marked stale, serves no reads and is copied afresh (SCAN + DUMP /
    /// RESTORE) when it returns.
    pub backlog_mb: u32,
    /// Replica acknowledgements a write needs: `none` (asynchronous), `one`,
    /// `majority` (of all the shard's nodes, the primary counting as one) or
    /// `all`, of the replicas configured.
    pub quorum: Quorum,
    /// How long a write waits for its acknowledgements (`WAIT`'s timeout).
    pub timeout_ms: u32,
    /// Too few acknowledgements in time: `fail` answers `-NOQUORUM` (the
    /// write stays applied on the primary; Redis cannot roll back), `accept`
    /// answers the write's own reply.
    pub on_shortfall: Shortfall,
    /// Let Rampart set replication up: `REPLICAOF` on nodes that do not
    /// follow the primary, and `min-replicas-to-write` on the primary so an
    /// isolated primary refuses writes even from clients that bypass Rampart.
    pub manage_replication: bool,
    /// With `manage_replication`, the `min-replicas-max-lag` set on the
    /// primary (seconds).
    pub min_replicas_max_lag_s: u32,
    /// A replica further behind than this serves no reads.
    pub max_read_lag_ms: u64,
    /// A quorum plugin (a `.wasm` component, world `quorum`) that decides
    /// the acknowledgements and the election instead of `quorum`; the
    /// built-in settings above remain its fallback if it traps.
    pub quorum_plugin: Option<String>,
    /// Text handed to the quorum plugin's `configure`.
    pub quorum_config: String,
}

impl Default for ReplicationConfig {
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            mode: Mode::Native,
            backlog_mb: 64,
            quorum: Quorum::None,
            timeout_ms: 1000,
            on_shortfall: Shortfall::Fail,
            manage_replication: false,
            min_replicas_max_lag_s: 10,
            max_read_lag_ms: 10_000,
            quorum_plugin: None,
            quorum_config: String::new(),
        }
    }
}

/// How a shard's nodes get the writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Redis replication, from the primary to its replicas.
    #[default]
    Native,
    /// Rampart sends each write to every node itself.
    Fanout,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Shortfall {
    Fail,
    Accept,
}

/// The built-in quorums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    /// Asynchronous: answered once the primary has the write.
    #[default]
    None,
    /// One replica.
    One,
    /// A majority of the shard's nodes, the primary included.
    Majority,
    /// Every replica.
    All,
}

impl Quorum {
    /// As written in the configuration.
    pub fn parse(name: &str) -> Option<Quorum> {
        [Quorum::None, Quorum::One, Quorum::Majority, Quorum::All]
            .into_iter()
            .find(|q| q.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Quorum::None => "none",
            Quorum::One => "one",
            Quorum::Majority => "majority",
            Quorum::All => "all",
        }
    }

    /// Replica acknowledgements for a shard with `replicas` replicas.
    pub fn acks(self, replicas: u32) -> u32 {
        rampart_sdk::algorithms::quorum_acks(self.name(), replicas).unwrap_or(replicas)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Every command to the primary: reads see every acknowledged write.
    #[default]
    Primary,
    /// Reads round-robin over healthy, connected replicas, falling back to
    /// the primary when there are none. Reads may be slightly stale.
    Replicas,
}

/// What a read served by a replica is guaranteed to see. Replicas that
/// cannot give the guarantee are skipped for that read (the primary serves
/// it when none can), whichever router chose them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// A connection's reads see every write it made before them and never
    /// go back to an older state than one it has read (read-your-writes and
    /// monotonic reads).
    #[default]
    Session,
    /// Any replica that serves reads, however far behind (within
    /// `max_read_lag_ms`).
    Eventual,
    /// A read sees every write acknowledged to any client before it
    /// arrived, and everything `session` promises.
    Global,
}

impl ReadConsistency {
    pub fn name(self) -> &'static str {
        match self {
            ReadConsistency::Session => "session",
            ReadConsistency::Eventual => "eventual",
            ReadConsistency::Global => "global",
        }
    }
}
