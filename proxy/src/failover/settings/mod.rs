//! Changes the nodes do not replicate, kept the same on every node so that
//! a failover keeps them. `ACL SETUSER | DELUSER` and `CONFIG SET` take
//! effect on the node that runs them only; through Rampart they run on the
//! primary (every shard's, for `CONFIG SET`) with the client's own rights,
//! and what the primaries accepted is copied to every other node.
//!
//! Each node takes its copies in order, from one queue: `ACL SETUSER
//! default off` then `on`, copied side by side, could otherwise land the
//! other way round and leave the node refusing everyone.
//!
//! An ACL change is copied as the primary lists the user once it took
//! it (`ACL SETUSER <user> reset <rules>`, or `ACL DELUSER`): the same
//! whatever the node had before, and with the password hashed.
//!
//! A copy can miss a node: the node was down, or it restarted since (a
//! node forgets both kinds of change unless its own files hold them), or
//! it joined the shard later. So the ledger keeps the last word on every
//! user and parameter changed through this instance, and [`catch_up`]
//! applies all of it to such a node as soon as it answers, before any
//! later copy. With `failover.state_dir` the ledger outlives a restart of
//! Rampart ([`saved`]).
mod catch_up;
mod ledger;
mod saved;
mod worker;

pub use catch_up::catch_up;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::observe::events::Events;
use crate::topology::{Node, ReplicaSet, Topology};
use ledger::{named_users, Ledger};
use worker::Worker;

/// How long a node may take to apply one change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes waiting for one node: past this (a node down for a long time
/// while changes keep coming) further ones are dropped and logged, and the
/// node is caught up once it answers.
const QUEUE: usize = 256;
/// Users the ledger remembers; changes to further ones are still copied.
const MAX_USERS: usize = 10_000;
/// A node that could not be caught up is tried again after this.
const RETRY: Duration = Duration::from_secs(5);
/// What a node's queue does next.
enum Change {
    /// Runs a client's change as the primary took it.
    Copy {
        args: Vec<Bytes>,
        what: &'static str,
    },
    /// On the primary that just took an ACL change: records the rules it
    /// now lists for the users it names (none: deleted) in the ledger, and
    /// copies them to `others`.
    Capture {
        change: Vec<Bytes>,
        others: Vec<Target>,
    },
    /// On the primary that ran a transaction holding ACL changes or
    /// `CONFIG SET`s: records what it now has for these users and
    /// parameters, whichever of the transaction's commands took, and
    /// copies it to `others`.
    Reread {
        users: Vec<Bytes>,
        params: Vec<Bytes>,
        others: Vec<Target>,
    },
    /// Applies the whole ledger to the node (recorded as an event: `why`
    /// it was needed).
    CatchUp { why: &'static str },
}

/// A node, and the shard it is in (whose name and epoch its events carry).
type Target = (Arc<ReplicaSet>, Arc<Node>);

/// Every node's queue, and what their workers share.
pub struct Settings {
    queues: Arc<Queues>,
    shared: Arc<Shared>,
}

/// What every node's worker shares.
struct Shared {
    ledger: Mutex<Ledger>,
    /// Nodes that missed a change, and when to try catching them up.
    behind: DashMap<usize, Instant>,
    /// Changes queued for each node and not yet done: a node with any
    /// does not hold the whole ledger yet.
    pending: DashMap<usize, usize>,
    /// Where the ledger is kept (nothing without a `state_dir`), and the
    /// nodes that held it when it was last kept, for the catch-up service
    /// to start from.
    store: saved::Store,
    saved_nodes: Mutex<BTreeMap<String, String>>,
    /// The ledger changed: the catch-up service keeps it at once.
    changed: tokio::sync::Notify,
    events: Arc<Events>,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One change for `node` done (applied, refused or missed).
    fn done(&self, node: usize) {
        if let Some(mut n) = self.pending.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Every node of every shard but those `done` (which took the change).
fn others(topology: &Topology, done: impl Fn(&Arc<Node>) -> bool) -> Vec<Target> {
    let nodes = topology.nodes().into_iter();
    nodes.filter(|(_, node)| !done(node)).collect()
}

/// `node` with its shard, if it is still in one.
fn target(topology: &Topology, node: &Arc<Node>) -> Option<Target> {
    let mut nodes = topology.nodes().into_iter();
    nodes.find(|(_, n)| Arc::ptr_eq(n, node))
}

fn key(node: &Arc<Node>) -> usize {
    Arc::as_ptr(node) as usize
}

/// Each node's queue, by the node's address in memory: ids are numbered
/// per instance, and several instances may share a process (the tests run
/// them so). The queue's task holds the node, so the address is never
/// another node's while the entry lives.
#[derive(Default)]
struct Queues(DashMap<usize, mpsc::Sender<Change>>);

impl Queues {
    fn enqueue(self: &Arc<Self>, target: &Target, change: Change, shared: &Arc<Shared>) {
        let node = &target.1;
        let queue = self
            .0
            .entry(key(node))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let worker = Worker::new(target.clone(), shared.clone(), Arc::downgrade(self));
                tokio::spawn(worker.run(rx));
                tx
            })
            .clone();
        // Counted before it is sent, so the worker cannot be done with it
        // first.
        *shared.pending.entry(key(node)).or_default() += 1;
        if queue.try_send(change).is_err() {
            shared.done(key(node));
            tracing::warn!(node = %node.addr, "too many changes waiting for this node: it is caught up once it answers");
            shared.behind.insert(key(node), Instant::now());
        }
    }
}

impl Settings {
    /// The copier, with the ledger kept in `state_dir` if given (read
    /// from it now).
    pub fn new(events: Arc<Events>, state_dir: Option<&str>) -> Settings {
        let store = saved::Store::new(state_dir);
        let (ledger, saved_nodes) = store.load();
        let shared = Shared {
            ledger: Mutex::new(ledger),
            behind: DashMap::new(),
            pending: DashMap::new(),
            store,
            saved_nodes: Mutex::new(saved_nodes),
            changed: tokio::sync::Notify::new(),
            events,
        };
        Settings {
            queues: Arc::default(),
            shared: Arc::new(shared),
        }
    }

    /// An ACL change `primary` took: recorded and copied to every other
    /// node as `primary` lists the users once it took it.
    pub fn acl_changed(&self, primary: &Arc<Node>, topology: &Topology, change: Vec<Bytes>) {
        let others = others(topology, |n| Arc::ptr_eq(n, primary));
        if let Some(primary) = target(topology, primary) {
            self.enqueue(&primary, Change::Capture { change, others });
        }
    }

    /// A transaction `primary` ran, holding ACL changes and `CONFIG SET`s
    /// (`changes`): what it now has for the users and parameters they
    /// name is recorded and copied to every other node.
    pub fn transaction_ran(
        &self,
        primary: &Arc<Node>,
        topology: &Topology,
        changes: &[Vec<Bytes>],
    ) {
        let (mut users, mut params) = (Vec::new(), Vec::new());
        for change in changes {
            match change.first().map(|c| c.to_ascii_uppercase()) {
                Some(c) if c == b"ACL" => users.extend(named_users(change)),
                _ => params.extend(change.iter().skip(2).step_by(2).cloned()),
            }
        }
        let others = others(topology, |n| Arc::ptr_eq(n, primary));
        let change = Change::Reread {
            users,
            params,
            others,
        };
        if let Some(primary) = target(topology, primary) {
            self.enqueue(&primary, change);
        }
    }

    /// A `CONFIG SET` the primaries `done` took: recorded, and copied to
    /// every other node.
    pub fn config_set(&self, done: &[u32], topology: &Topology, args: Vec<Bytes>) {
        let mut ledger = self.shared.ledger();
        for pair in args.get(2..).unwrap_or_default().chunks_exact(2) {
            let name = Bytes::from(pair[0].to_ascii_lowercase());
            ledger.params.insert(name, pair[1].clone());
        }
        ledger.changes += 1;
        // Queued while the ledger is held, as a capture's copies are: the
        // service keeps no node as holding this word before its copy.
        for other in &others(topology, |n| done.contains(&n.id)) {
            let change = Change::Copy {
                args: args.clone(),
                what: "CONFIG SET",
            };
            self.enqueue(other, change);
        }
        drop(ledger);
        self.shared.changed.notify_one();
    }

    fn enqueue(&self, target: &Target, change: Change) {
        self.queues.enqueue(target, change, &self.shared);
    }

    fn ledger_is_empty(&self) -> bool {
        self.shared.ledger().is_empty()
    }
}
