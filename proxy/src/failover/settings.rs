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
//! later copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::mpsc;

use crate::backend::control::{frame_text, Control};
use crate::observe::events::Events;
use crate::topology::{Health, Node, Topology};

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
        others: Vec<Arc<Node>>,
    },
    /// On the primary that ran a transaction holding ACL changes or
    /// `CONFIG SET`s: records what it now has for these users and
    /// parameters, whichever of the transaction's commands took, and
    /// copies it to `others`.
    Reread {
        users: Vec<Bytes>,
        params: Vec<Bytes>,
        others: Vec<Arc<Node>>,
    },
    /// Applies the whole ledger to a node of `shard` (recorded as an
    /// event: `why` it was needed).
    CatchUp {
        shard: String,
        epoch: u64,
        why: &'static str,
    },
}

/// The last word on each user and parameter changed through Rampart.
#[derive(Default)]
struct Ledger {
    /// A user's rules as `ACL LIST` writes them, or `None`: deleted.
    users: BTreeMap<Bytes, Option<Vec<Bytes>>>,
    /// A parameter's value, by its name in lower case.
    params: BTreeMap<Bytes, Bytes>,
}

impl Ledger {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.params.is_empty()
    }

    /// The commands that bring a node to the ledger's word.
    fn commands(&self) -> Vec<Vec<Bytes>> {
        let mut commands = Vec::with_capacity(self.users.len() + self.params.len());
        for (user, rules) in &self.users {
            commands.push(user_command(user, rules.as_deref()));
        }
        for (param, value) in &self.params {
            commands.push(vec![
                Bytes::from_static(b"CONFIG"),
                Bytes::from_static(b"SET"),
                param.clone(),
                value.clone(),
            ]);
        }
        commands
    }
}

/// The command that makes a node's `user` what `rules` say (`None`:
/// deleted).
fn user_command(user: &Bytes, rules: Option<&[Bytes]>) -> Vec<Bytes> {
    let word = Bytes::from_static;
    let mut args = match rules {
        None => vec![word(b"ACL"), word(b"DELUSER"), user.clone()],
        Some(_) => vec![word(b"ACL"), word(b"SETUSER"), user.clone(), word(b"reset")],
    };
    args.extend(rules.into_iter().flatten().cloned());
    args
}

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
    events: Arc<Events>,
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
    fn enqueue(self: &Arc<Self>, node: &Arc<Node>, change: Change, shared: &Arc<Shared>) {
        let queue = self
            .0
            .entry(key(node))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let worker = Worker {
                    node: node.clone(),
                    shared: shared.clone(),
                    queues: Arc::downgrade(self),
                    control: None,
                };
                tokio::spawn(worker.run(rx));
                tx
            })
            .clone();
        if queue.try_send(change).is_err() {
            tracing::warn!(node = %node.addr, "too many changes waiting for this node: it is caught up once it answers");
            shared.behind.insert(key(node), Instant::now());
        }
    }
}

impl Settings {
    pub fn new(events: Arc<Events>) -> Settings {
        let shared = Shared {
            ledger: Mutex::default(),
            behind: DashMap::new(),
            events,
        };
        Settings {
            queues: Arc::default(),
            shared: Arc::new(shared),
        }
    }

    /// An ACL change `primary` took: recorded and copied to every other
    /// node as `primary` lists the users once it took it.
    pub fn acl_changed(&self, primary: &Arc<Node>, nodes: Vec<Arc<Node>>, change: Vec<Bytes>) {
        let others = nodes
            .into_iter()
            .filter(|n| !Arc::ptr_eq(n, primary))
            .collect();
        self.enqueue(primary, Change::Capture { change, others });
    }

    /// A transaction `primary` ran, holding ACL changes and `CONFIG SET`s
    /// (`changes`): what it now has for the users and parameters they
    /// name is recorded and copied to every other node.
    pub fn transaction_ran(
        &self,
        primary: &Arc<Node>,
        nodes: Vec<Arc<Node>>,
        changes: &[Vec<Bytes>],
    ) {
        let (mut users, mut params) = (Vec::new(), Vec::new());
        for change in changes {
            match change.first().map(|c| c.to_ascii_uppercase()) {
                Some(c) if c == b"ACL" => users.extend(named_users(change)),
                _ => params.extend(change.iter().skip(2).step_by(2).cloned()),
            }
        }
        let others = nodes
            .into_iter()
            .filter(|n| !Arc::ptr_eq(n, primary))
            .collect();
        let change = Change::Reread {
            users,
            params,
            others,
        };
        self.enqueue(primary, change);
    }

    /// A `CONFIG SET` the primaries `done` took: recorded, and copied to
    /// every other node.
    pub fn config_set(&self, done: &[u32], nodes: Vec<Arc<Node>>, args: Vec<Bytes>) {
        {
            let mut ledger = self.shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for pair in args.get(2..).unwrap_or_default().chunks_exact(2) {
                let name = Bytes::from(pair[0].to_ascii_lowercase());
                ledger.params.insert(name, pair[1].clone());
            }
        }
        for node in nodes.iter().filter(|n| !done.contains(&n.id)) {
            let change = Change::Copy {
                args: args.clone(),
                what: "CONFIG SET",
            };
            self.enqueue(node, change);
        }
    }

    fn enqueue(&self, node: &Arc<Node>, change: Change) {
        self.queues.enqueue(node, change, &self.shared);
    }

    fn ledger_is_empty(&self) -> bool {
        self.shared
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Applies one node's changes one after the other, on one connection
/// (made again after a failure).
struct Worker {
    node: Arc<Node>,
    shared: Arc<Shared>,
    /// To copy what a capture read to the other nodes (weak: the queues
    /// hold this worker's sender).
    queues: std::sync::Weak<Queues>,
    control: Option<Control>,
}

/// How one command went.
enum Outcome {
    Done(OwnedFrame),
    /// The node refused it: its answer.
    Refused(String),
    /// The node could not be reached.
    Unreachable(String),
}

impl Worker {
    async fn run(mut self, mut changes: mpsc::Receiver<Change>) {
        while let Some(change) = changes.recv().await {
            match change {
                Change::Copy { args, what } => match self.call(&args).await {
                    Outcome::Done(_) => {}
                    Outcome::Refused(error) => {
                        tracing::warn!(node = %self.node.addr, %error, "{what} refused by this node; apply it there by hand");
                    }
                    Outcome::Unreachable(error) => {
                        tracing::warn!(node = %self.node.addr, %error, "{what} not applied on this node yet: it is caught up once it answers");
                        self.missed();
                    }
                },
                Change::Capture { change, others } => {
                    if !self.reread(named_users(&change), Vec::new(), &others).await {
                        tracing::warn!(node = %self.node.addr, "ACL LIST failed after an ACL change: copied as it was, and not caught up later");
                        self.copy_to(&others, change, "ACL change");
                    }
                }
                Change::Reread {
                    users,
                    params,
                    others,
                } => {
                    if !self.reread(users, params, &others).await {
                        tracing::warn!(node = %self.node.addr, "the changes a transaction made to ACL users or settings could not be read back: apply them to the other nodes by hand");
                    }
                }
                Change::CatchUp { shard, epoch, why } => self.catch_up(&shard, epoch, why).await,
            }
        }
    }

    /// Runs one command. A connection kept from an earlier change may
    /// be to a process since gone (a restart is why a catch-up is due):
    /// then once more on a new one (every change here may run twice).
    async fn call(&mut self, args: &[Bytes]) -> Outcome {
        let kept = self.control.is_some();
        match self.call_once(args).await {
            Outcome::Unreachable(_) if kept => self.call_once(args).await,
            outcome => outcome,
        }
    }

    async fn call_once(&mut self, args: &[Bytes]) -> Outcome {
        let mut control = match self.control.take() {
            Some(c) => c,
            None => match self.node.pool.control().await {
                Ok(c) => c,
                Err(e) => return Outcome::Unreachable(e.to_string()),
            },
        };
        match control.call(args, APPLY_TIMEOUT).await {
            Ok(OwnedFrame::SimpleError { data, .. }) => {
                self.control = Some(control);
                Outcome::Refused(data)
            }
            Ok(frame) => {
                self.control = Some(control);
                Outcome::Done(frame)
            }
            Err(e) => Outcome::Unreachable(e.to_string()),
        }
    }

    fn missed(&self) {
        self.shared
            .behind
            .insert(key(&self.node), Instant::now() + RETRY);
    }

    /// Reads what the node (the primary that took a change) now has for
    /// `users` (their rules as `ACL LIST` writes them, or none: deleted)
    /// and `params` into the ledger, and queues it for `others` while the
    /// ledger is held, so that no catch-up can read an older word after a
    /// newer one is queued. False: it could not be read (the node went
    /// away meanwhile); nothing is recorded.
    async fn reread(
        &mut self,
        users: Vec<Bytes>,
        params: Vec<Bytes>,
        others: &[Arc<Node>],
    ) -> bool {
        let word = Bytes::from_static;
        let mut lines = Vec::new();
        if !users.is_empty() {
            match self.call(&[word(b"ACL"), word(b"LIST")]).await {
                Outcome::Done(OwnedFrame::Array { data, .. }) => {
                    lines = data.iter().filter_map(frame_text).collect();
                }
                _ => return false,
            }
        }
        let mut values = Vec::with_capacity(params.len());
        for param in params {
            let get = [word(b"CONFIG"), word(b"GET"), param.clone()];
            let value = match self.call(&get).await {
                Outcome::Done(OwnedFrame::Map { data, .. }) => {
                    data.values().next().and_then(frame_text)
                }
                _ => None,
            };
            let Some(value) = value else {
                return false;
            };
            values.push((Bytes::from(param.to_ascii_lowercase()), Bytes::from(value)));
        }
        let mut ledger = self.shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        for user in users {
            let rules = lines.iter().find_map(|line| rules_of(line, &user));
            let command = user_command(&user, rules.as_deref());
            if ledger.users.len() < MAX_USERS || ledger.users.contains_key(&user) {
                ledger.users.insert(user, rules);
            } else {
                tracing::warn!(
                    max = MAX_USERS,
                    "too many users changed through Rampart to remember more"
                );
            }
            self.copy_to(others, command, "ACL change");
        }
        for (param, value) in values {
            let command = vec![word(b"CONFIG"), word(b"SET"), param.clone(), value.clone()];
            ledger.params.insert(param, value);
            self.copy_to(others, command, "CONFIG SET");
        }
        true
    }

    fn copy_to(&self, others: &[Arc<Node>], args: Vec<Bytes>, what: &'static str) {
        let Some(queues) = self.queues.upgrade() else {
            return;
        };
        for node in others {
            let copy = Change::Copy {
                args: args.clone(),
                what,
            };
            queues.enqueue(node, copy, &self.shared);
        }
    }

    /// Applies the whole ledger. A node that cannot be reached is tried
    /// again once it answers; what it refuses is recorded.
    async fn catch_up(&mut self, shard: &str, epoch: u64, why: &'static str) {
        let commands = self
            .shared
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commands();
        let count = commands.len();
        let mut refused = Vec::new();
        for command in commands {
            match self.call(&command).await {
                Outcome::Done(_) => {}
                Outcome::Refused(error) => {
                    let what = String::from_utf8_lossy(&command[..3].join(&b" "[..])).into_owned();
                    refused.push(format!("{what}: {error}"));
                }
                Outcome::Unreachable(error) => {
                    tracing::debug!(node = %self.node.addr, %error, "catching up: the node did not answer");
                    self.missed();
                    return;
                }
            }
        }
        let node = Some(self.node.addr.as_str());
        let detail =
            format!("{count} ACL users and settings changed through Rampart applied ({why})");
        let events = &self.shared.events;
        events.record(shard, "settings-caught-up", node, epoch, detail);
        if !refused.is_empty() {
            let detail = format!("the node refused: {}", refused.join("; "));
            events.record(shard, "settings-refused", node, epoch, detail);
        }
    }
}

/// The users an `ACL SETUSER <user> ...` or `ACL DELUSER <user>...` names.
fn named_users(change: &[Bytes]) -> Vec<Bytes> {
    match change.get(1).map(|a| a.to_ascii_uppercase()) {
        Some(sub) if sub == b"SETUSER" => change.get(2).into_iter().cloned().collect(),
        _ => change.iter().skip(2).cloned().collect(),
    }
}

/// A user's rules in an `ACL LIST` line (`user <name> <rules>`), a
/// selector in parentheses kept as one rule as `ACL SETUSER` takes it.
fn rules_of(line: &str, user: &[u8]) -> Option<Vec<Bytes>> {
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    if words.next() != Some("user") || words.next()?.as_bytes() != user {
        return None;
    }
    let mut rules = Vec::new();
    let mut selector: Option<String> = None;
    for word in words {
        match selector.as_mut() {
            Some(open) => {
                open.push(' ');
                open.push_str(word);
            }
            None if word.starts_with('(') => selector = Some(word.to_string()),
            None => rules.push(Bytes::copy_from_slice(word.as_bytes())),
        }
        if selector.as_ref().is_some_and(|s| s.ends_with(')')) {
            rules.extend(selector.take().map(Bytes::from));
        }
    }
    Some(rules)
}

/// The catch-up service: a node that joined after a change, restarted
/// since one (its `run_id` changed), or missed one is given the whole
/// ledger through its queue, so nothing copied later overtakes it.
pub async fn catch_up(
    settings: Arc<Settings>,
    topology: Arc<Topology>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen: HashMap<usize, Option<String>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let empty = settings.ledger_is_empty();
        for (shard, node) in topology.nodes() {
            if node.is_retired() {
                continue;
            }
            let run_id = node.run_id();
            let before = seen.insert(key(&node), run_id.clone());
            if empty {
                continue;
            }
            let restarted =
                matches!((before.clone().flatten(), &run_id), (Some(a), Some(b)) if &a != b);
            let due = settings
                .shared
                .behind
                .get(&key(&node))
                .is_some_and(|at| Instant::now() >= *at && node.health() == Health::Up);
            let why = match (before.is_none(), restarted, due) {
                (true, _, _) => "it joined after them",
                (_, true, _) => "it restarted",
                (_, _, true) => "it missed a copy",
                _ => continue,
            };
            settings.shared.behind.remove(&key(&node));
            let (epoch, shard) = (shard.epoch(), shard.name.clone());
            settings.enqueue(&node, Change::CatchUp { shard, epoch, why });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_from_the_users_line_selectors_whole() {
        let line = "user bob on #abc ~x* resetchannels -@all +set (+get ~y*) (~z* %R~w +hget)";
        let rules = rules_of(line, b"bob").unwrap();
        let rules: Vec<&[u8]> = rules.iter().map(|r| &r[..]).collect();
        assert_eq!(
            rules,
            [
                b"on".as_ref(),
                b"#abc",
                b"~x*",
                b"resetchannels",
                b"-@all",
                b"+set",
                b"(+get ~y*)",
                b"(~z* %R~w +hget)",
            ]
        );
        assert!(rules_of(line, b"bo").is_none());
        assert!(rules_of("user alice on nopass", b"bob").is_none());
    }

    #[test]
    fn the_ledger_deletes_sets_and_configures() {
        let mut ledger = Ledger::default();
        ledger.users.insert(Bytes::from("gone"), None);
        ledger.users.insert(
            Bytes::from("app"),
            Some(vec![Bytes::from("on"), Bytes::from("~app:*")]),
        );
        ledger
            .params
            .insert(Bytes::from("maxmemory-policy"), Bytes::from("allkeys-lru"));
        let commands: Vec<String> = ledger
            .commands()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.join(&b" "[..])).into_owned())
            .collect();
        assert_eq!(
            commands,
            [
                "ACL SETUSER app reset on ~app:*",
                "ACL DELUSER gone",
                "CONFIG SET maxmemory-policy allkeys-lru",
            ]
        );
    }
}
