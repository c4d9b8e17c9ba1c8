//! What a piped client's commands go through. A subscribed, `MONITOR` or
//! `CLIENT TRACKING` client has a node connection of its own and its bytes
//! are passed straight on, but it is still a client of Rampart: the
//! commands Rampart refuses on any connection (`SHUTDOWN`, `REPLICAOF`,
//! `proxy.deny_commands`, managed `CONFIG SET` parameters ...) are refused
//! here too, and a write on a shard whose writes wait for a quorum is
//! answered only once the quorum has it. Otherwise turning tracking on
//! would be a way around both: a node shut down or repointed behind
//! Rampart's back, a write acknowledged that no replica holds.
//!
//! Both answers must come in their place among the node's replies, so both
//! use the marker of `interpose.rs`: a refused command is replaced by the
//! marker sent as a command, which the node refuses as unknown in every
//! mode (dooming a transaction, as Redis's own refusal while queueing
//! does); a write is followed by `PING <marker>`, and when the echo
//! arrives the write's reply has too, and Rampart confirms it as it
//! confirms an ACL user's writes (`durable.rs`): a marker write of its own
//! on its link to the primary, whose `WAIT` covers everything before it.

use bytes::{Bytes, BytesMut};

use super::connection::Connection;
use super::piped::{Amend, Interposed, Interposer};
use super::session::Session;
use crate::backend::Link;
use crate::replicate::fanout::Verdict;
use crate::replicate::Durability;
use crate::resp::command::{Class, Tx, NOT_IN_MULTI, NOT_THROUGH_RAMPART};
use crate::resp::{Proto, Request, Value};

/// Why a piped client's write is refused on a fan-out shard.
const FANOUT_PIPED: &str = "ERR rampart: writes on a connection in CLIENT TRACKING or subscribed mode are not supported in fan-out mode (they would reach one node); write on another connection";

impl Connection {
    /// What to send the node in place of `req` (of `class`) when Rampart
    /// refuses it.
    pub(super) async fn refuse_piped(&mut self, class: Class, req: &Request) -> Option<Bytes> {
        let error = self.piped_refusal(class, req).await?;
        Some(self.interposer.refuse(&self.session, error))
    }

    /// What to send the node in place of `req` (of `class`) when it is a
    /// write to confirm (see [`Interposer::confirm`]).
    pub(super) fn confirm_piped(&mut self, class: Class, req: &Request) -> Option<Bytes> {
        let write = match class {
            Class::Transaction(Tx::Exec) => true,
            _ => !self.interposer.multi && writes_data(class, req),
        };
        let topology = &self.shard.topology;
        // A MONITOR connection is a replica to Redis, which refuses it
        // every command on keys.
        if !write || self.session.monitor || !topology.durability.is_sync() || topology.is_fanout()
        {
            return None;
        }
        let node = self.session.pipe_node.as_ref()?;
        let own = node
            .pool
            .writer(self.session.proto, self.session.id)
            .clone();
        let durability = topology.durability.clone();
        self.interposer.confirm(req, &self.session, durability, own)
    }

    /// Rampart's refusal of `req`, as on a connection of its own.
    async fn piped_refusal(&self, class: Class, req: &Request) -> Option<String> {
        if let Class::Refused(text) = class {
            let text = match self.interposer.multi && text == NOT_THROUGH_RAMPART {
                true => NOT_IN_MULTI,
                false => text,
            };
            return Some(text.to_string());
        }
        // In fan-out mode every write goes through the shard's log to every
        // node; one sent down this connection would reach one node alone.
        if let (Some(fanout), true) = (self.fanout(), writes_data(class, req)) {
            match fanout.rewriter.judge(req.clone()) {
                Verdict::Primary(_) => {}
                Verdict::Refused(error) => return Some(error),
                Verdict::Fanout(_) => return Some(FANOUT_PIPED.to_string()),
            }
        }
        if let Some(error) = self.other_shards_keys(req) {
            return Some(error);
        }
        let refusal = self.ctx.guard.check(req)?;
        if !refusal.unless_unchanged.is_empty() && refusal.unchanged_on(&self.shard.topology).await
        {
            return None;
        }
        Some(refusal.error)
    }

    /// With several shards a piped connection is on one shard's primary
    /// (see `pipe.rs`): a command on keys another shard holds (or that are
    /// moving away), or about the whole data set, would run on the wrong
    /// node, and its write be lost to every other client.
    fn other_shards_keys(&self, req: &Request) -> Option<String> {
        use crate::shard::locate::{locate, Place};
        use crate::shard::slots::{slot, Residence};
        if self.ctx.shards.len() < 2 {
            return None;
        }
        let map = self.ctx.slots.load();
        let here = self.ctx.shards.index_of(&self.shard);
        let elsewhere = match locate(req, &map, self.ctx.shards.len()) {
            Place::Any => false,
            Place::Every(_) => true,
            Place::One(_) | Place::Split(_) | Place::CrossSlot => crate::resp::keyspecs::keys(req)
                .is_some_and(|keys| {
                    keys.iter()
                        .any(|key| map.residence(slot(key)) != Residence::Owned(here))
                }),
        };
        elsewhere.then(|| {
            format!(
                "ERR rampart: this connection is piped to shard '{}' (subscribed or monitoring), and '{}' reaches beyond it: use another connection",
                self.shard.name(),
                req.name().as_str().to_lowercase()
            )
        })
    }
}

impl Interposer {
    /// The marker to send in place of a refused command; its echo (the
    /// node's refusal) becomes `error`.
    fn refuse(&mut self, session: &Session, error: String) -> Bytes {
        let marker = self.next_marker(session);
        // Muted, the node answers nothing, and neither does Redis.
        if !self.muted() {
            self.queue.push_back(Interposed::Refused {
                marker: marker.clone(),
                error,
            });
        }
        Request::from_args(&[marker]).raw
    }

    /// A write (or `EXEC`) followed by `PING <marker>`, its reply to be
    /// confirmed; `None` when the client will not hear the reply: nothing
    /// is promised then.
    fn confirm(
        &mut self,
        req: &Request,
        session: &Session,
        durability: std::sync::Arc<Durability>,
        own: Link,
    ) -> Option<Bytes> {
        if self.muted() {
            return None;
        }
        let marker = self.next_marker(session);
        let ping = Request::from_args(&[Bytes::from_static(b"PING"), marker.clone()]);
        let mut out = BytesMut::with_capacity(req.raw.len() + ping.raw.len());
        out.extend_from_slice(&req.raw);
        out.extend_from_slice(&ping.raw);
        self.queue.push_back(Interposed::Amend {
            marker,
            how: Amend::Confirm { durability, own },
        });
        Some(out.freeze())
    }

    /// Follows what the client's command, now sent, changes on the node
    /// connection: a transaction, muted replies, subscribed mode.
    pub(super) fn note(&mut self, req: &Request) {
        self.skip_next = false;
        let name = req.name();
        match name.as_bytes() {
            b"MULTI" => self.multi = true,
            b"EXEC" | b"DISCARD" => self.multi = false,
            b"RESET" => {
                self.multi = false;
                self.replies_off = false;
            }
            b"CLIENT" if req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"REPLY") => {
                match req.arg_upper(2).as_ref().map(|m| m.as_bytes()) {
                    Some(b"ON") => self.replies_off = false,
                    Some(b"OFF") => self.replies_off = true,
                    Some(b"SKIP") => self.skip_next = true,
                    _ => {}
                }
            }
            _ => {}
        }
        let subscriber = matches!(
            name.as_bytes(),
            b"SUBSCRIBE"
                | b"PSUBSCRIBE"
                | b"SSUBSCRIBE"
                | b"UNSUBSCRIBE"
                | b"PUNSUBSCRIBE"
                | b"SUNSUBSCRIBE"
                | b"PING"
                | b"QUIT"
        );
        self.beyond_subscribe |= !subscriber;
    }

    /// A MONITOR feed's lines with the echo of each refused command
    /// replaced by Rampart's refusal (nothing else is interposed there).
    pub(super) fn refusals_in_lines(&mut self, lines: BytesMut, proto: Proto) -> BytesMut {
        if self.queue.is_empty() {
            return lines;
        }
        let mut out = BytesMut::with_capacity(lines.len());
        for line in lines.split_inclusive(|&b| b == b'\n') {
            match self.refusal_for(line) {
                Some(error) => out.extend_from_slice(&Value::err(error).encode(proto)),
                None => out.extend_from_slice(line),
            }
        }
        out
    }

    /// Rampart's refusal, if `frame` is the node's refusal of the marker
    /// at the front of the queue (which it takes off the queue).
    pub(super) fn refusal_for(&mut self, frame: &[u8]) -> Option<String> {
        let Some(Interposed::Refused { marker, .. }) = self.queue.front() else {
            return None;
        };
        let echoed = frame
            .strip_prefix(b"-ERR unknown command '".as_slice())
            .is_some_and(|rest| rest.starts_with(marker) && rest.get(marker.len()) == Some(&b'\''));
        if !echoed {
            return None;
        }
        match self.queue.pop_front() {
            Some(Interposed::Refused { error, .. }) => Some(error),
            _ => None,
        }
    }
}

/// Whether a command of `class` writes data: Rampart counts more as
/// writes than can enter the replication stream. `XREAD BLOCK` (blocking,
/// but a read), server settings and introspection never do, and a marker
/// after one would be a command of the client's own for nothing (with
/// `CLIENT TRACKING ... NOLOOP`, a tracking-table eviction it triggers
/// would not be reported to the client).
fn writes_data(class: Class, req: &Request) -> bool {
    matches!(class, Class::Write | Class::Blocking)
        && !matches!(
            req.name().as_bytes(),
            b"XREAD"
                | b"CONFIG"
                | b"CLIENT"
                | b"ACL"
                | b"SLOWLOG"
                | b"LATENCY"
                | b"MEMORY"
                | b"COMMAND"
                | b"OBJECT"
                | b"MODULE"
                | b"SAVE"
                | b"BGSAVE"
                | b"BGREWRITEAOF"
        )
}

/// A confirmed write's reply: as it is when the quorum has it (or the
/// write failed on its own), else the shortfall's error.
pub(super) async fn confirmed(
    reply: BytesMut,
    durability: std::sync::Arc<Durability>,
    own: &Link,
    max_depth: usize,
) -> BytesMut {
    if reply.first() == Some(&b'-') {
        return reply;
    }
    match super::durable::confirm(own, durability).await {
        Some(error) => {
            let (data, _) = crate::replicate::fail_writes(&reply.freeze(), &error, max_depth);
            BytesMut::from(&data[..])
        }
        None => reply,
    }
}
