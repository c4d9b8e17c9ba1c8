//! What Rampart remembers about one client connection.

use crate::resp::{Request, Value};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Credentials, Link, Session as LinkSession};
use crate::resp::Proto;
use crate::topology::Node;

pub struct Session {
    pub id: u64,
    pub proto: Proto,
    pub db: i64,
    pub name: Option<Bytes>,
    pub authed: bool,
    /// The nodes' ACL user the client authenticated as (`AUTH user pass`
    /// checked by a node): its commands run on connections of its own,
    /// logged in as that user. `None`: Rampart's own backend user.
    pub user: Option<Arc<Credentials>>,
    /// `RAMPART AUTH <admin.token>` succeeded on this connection.
    pub admin: bool,
    /// Wrong passwords this connection has sent (each one after the third
    /// is answered more slowly).
    pub auth_failures: u32,
    /// Between MULTI and EXEC/DISCARD.
    pub in_multi: bool,
    /// With several shards, MULTI is answered by Rampart and sent to a
    /// node with the transaction's first command, once that command says
    /// which shard the transaction runs on: the client's MULTI, as it sent
    /// it (MONITOR shows it so), until then.
    pub multi_deferred: Option<bytes::Bytes>,
    /// WATCH is in force.
    pub watching: bool,
    /// The dedicated connection holding this client's transaction or WATCH
    /// was lost: the transaction must fail, never run half or unwatched.
    pub tx_lost: bool,
    /// Rampart refused a command queued in the current MULTI: EXEC must
    /// answer EXECABORT, as Redis does after an error while queueing.
    pub tx_refused: bool,
    /// With several shards: the slots of the keys queued in the current
    /// MULTI, and whether each was moving then; checked at EXEC against
    /// slot moves (see `moving.rs`).
    pub tx_slots: Vec<(u16, bool)>,
    /// ACL changes and `CONFIG SET`s queued in the current MULTI: once
    /// EXEC runs them, their effect is copied to the other nodes.
    pub tx_settings: Vec<Vec<bytes::Bytes>>,
    /// A CLIENT option changed the dedicated connection: keep it until RESET.
    pub sticky: bool,
    /// `CLIENT NO-EVICT` and `NO-TOUCH` as the client last sent them: sent
    /// again on a new dedicated connection when the one they were set on
    /// is gone (a failover, a switchover, another user), so they stay in
    /// force until RESET, as on one Redis.
    pub client_options: Vec<(&'static str, Bytes)>,
    /// The dedicated connection the client is pinned to, and its node.
    pub pinned: Option<(Arc<Node>, Link)>,
    /// Set once the session is a raw pipe to a backend (SUBSCRIBE, MONITOR).
    pub pipe: Option<crate::net::WriteHalf>,
    /// The node the pipe goes to.
    pub pipe_node: Option<Arc<Node>>,
    /// Fan-out mode, between MULTI and EXEC: the transaction is queued here
    /// and sent to every node whole at EXEC.
    pub fanout_tx: Option<FanoutTx>,
    /// The pipe carries a MONITOR feed, filtered of Rampart's own commands.
    pub monitor: bool,
    /// The pipe began with a subscription (`CLIENT KILL TYPE pubsub` finds
    /// it; a MONITOR or tracking client is `normal`, as in Redis).
    pub pubsub: bool,
    /// The hash slots of the shard channels subscribed on the pipe
    /// (`SSUBSCRIBE`): when one starts moving to another shard, where
    /// `SPUBLISH` will go, the client is disconnected to subscribe again
    /// there (see `pipe.rs`).
    pub shard_channel_slots: Vec<u16>,
    /// The pipe began with `CLIENT TRACKING`: the node it goes to tracks
    /// only its own shard's keys, so when slots move to another shard the
    /// client is disconnected (its cache flushed), see `pipe.rs`.
    pub piped_tracking: bool,
    /// `CLIENT REPLY OFF`: no reply is written until `CLIENT REPLY ON`.
    pub replies_off: bool,
    /// `CLIENT REPLY SKIP`: the next command's reply is dropped.
    pub skip_next_reply: bool,
}

#[derive(Default)]
pub struct FanoutTx {
    pub queued: Vec<Bytes>,
    /// A command was refused while queueing: EXEC answers EXECABORT, as
    /// Redis does after an error at queueing time.
    pub failed: bool,
}

impl Session {
    pub fn new(id: u64, authed: bool) -> Session {
        Session {
            id,
            proto: Proto::Resp2,
            db: 0,
            name: None,
            authed,
            user: None,
            admin: false,
            auth_failures: 0,
            in_multi: false,
            multi_deferred: None,
            watching: false,
            tx_lost: false,
            tx_refused: false,
            tx_slots: Vec::new(),
            tx_settings: Vec::new(),
            sticky: false,
            client_options: Vec::new(),
            pinned: None,
            pipe_node: None,
            pipe: None,
            fanout_tx: None,
            monitor: false,
            piped_tracking: false,
            pubsub: false,
            shard_channel_slots: Vec::new(),
            replies_off: false,
            skip_next_reply: false,
        }
    }

    /// No state that ties the client to its dedicated connection.
    pub fn is_clean(&self) -> bool {
        !self.in_multi
            && !self.watching
            && !self.sticky
            && self.client_options.is_empty()
            && !self.tx_lost
            && self.db == 0
            && self.user.is_none()
    }

    /// The state a new dedicated connection for this client must start in.
    pub fn link_session(&self) -> LinkSession {
        LinkSession {
            proto: self.proto,
            db: self.db,
            user: self.user.clone(),
        }
    }

    /// Remembers a `CLIENT NO-EVICT | NO-TOUCH` sent to the dedicated
    /// connection (see [`Session::client_options`]; one the node refused
    /// is refused again, to no effect).
    pub fn remember_option(&mut self, req: &Request) {
        let option = match req.arg_upper(1).as_ref().map(|s| s.as_bytes()) {
            Some(b"NO-EVICT") => "NO-EVICT",
            Some(b"NO-TOUCH") => "NO-TOUCH",
            _ => return,
        };
        self.client_options.retain(|(o, _)| *o != option);
        self.client_options.push((option, req.raw.clone()));
    }

    /// Forgets the dedicated connection after it died: anything that only
    /// existed on it is gone. A transaction whose `MULTI` is still deferred
    /// (several shards, nothing queued yet) had nothing there, and goes on
    /// on a new connection.
    pub fn lose_pinned(&mut self) {
        self.pinned = None;
        if (self.in_multi && self.multi_deferred.is_none()) || self.watching {
            self.tx_lost = true;
        }
        self.watching = false;
        self.sticky = false;
    }
}

/// A client name as `CLIENT SETNAME` and `HELLO ... SETNAME` accept it.
pub(super) fn check_client_name(name: &[u8]) -> Result<(), Value> {
    if printable(name) {
        Ok(())
    } else {
        Err(Value::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

/// Every byte from `!` to `~`: what Redis allows in client names and
/// client attributes.
pub(super) fn printable(value: &[u8]) -> bool {
    value.iter().all(|c| (b'!'..=b'~').contains(c))
}

/// A client asking something of Rampart about clients (its own entry or
/// others'): who it is, its entry among all clients, and the context.
pub(super) struct Asker<'a> {
    pub ctx: &'a crate::context::Context,
    pub session: &'a Session,
    pub registration: &'a super::registry::Registration,
}
