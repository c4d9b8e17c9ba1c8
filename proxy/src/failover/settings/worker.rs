//! One node's worker: its changes applied one after the other.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::mpsc;

use super::ledger::{named_users, rules_of, user_command};
use super::{key, Change, Queues, Shared, Target, APPLY_TIMEOUT, MAX_USERS, RETRY};
use crate::backend::control::{frame_text, Control};
use crate::topology::{Node, ReplicaSet};

/// Applies one node's changes one after the other, on one connection
/// (made again after a failure).
pub(super) struct Worker {
    node: Arc<Node>,
    /// The node's shard, named by its events.
    shard: Arc<ReplicaSet>,
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
    pub(super) fn new(
        (shard, node): Target,
        shared: Arc<Shared>,
        queues: std::sync::Weak<Queues>,
    ) -> Worker {
        Worker {
            node,
            shard,
            shared,
            queues,
            control: None,
        }
    }

    pub(super) async fn run(mut self, mut changes: mpsc::Receiver<Change>) {
        while let Some(change) = changes.recv().await {
            match change {
                Change::Copy { args, what } => match self.call(&args).await {
                    Outcome::Done(_) => {}
                    Outcome::Refused(error) => {
                        tracing::warn!(node = %self.node.addr, %error, "{what} refused by this node; apply it there by hand");
                        self.record("settings-refused", format!("{what} refused: {error}"));
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
                Change::CatchUp { why } => self.catch_up(why).await,
            }
            self.shared.done(key(&self.node));
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
    async fn reread(&mut self, users: Vec<Bytes>, params: Vec<Bytes>, others: &[Target]) -> bool {
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
        let mut ledger = self.shared.ledger();
        ledger.changes += 1;
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
        drop(ledger);
        self.shared.changed.notify_one();
        true
    }

    fn copy_to(&self, others: &[Target], args: Vec<Bytes>, what: &'static str) {
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
    async fn catch_up(&mut self, why: &'static str) {
        let commands = self.shared.ledger().commands();
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
        let detail =
            format!("{count} ACL users and settings changed through Rampart applied ({why})");
        self.record("settings-caught-up", detail);
        if !refused.is_empty() {
            let detail = format!("the node refused: {}", refused.join("; "));
            self.record("settings-refused", detail);
        }
    }

    fn record(&self, kind: &'static str, detail: String) {
        let (shard, node) = (&self.shard.name, Some(self.node.addr.as_str()));
        let events = &self.shared.events;
        events.record(shard, kind, node, self.shard.epoch(), detail);
    }
}
