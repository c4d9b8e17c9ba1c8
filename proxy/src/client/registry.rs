//! Every client connected to this Rampart, as `CLIENT LIST`, `CLIENT INFO`,
//! `CLIENT KILL` and `CLIENT UNBLOCK` see them.
//!
//! Through a proxy the nodes only know Rampart's own connections, so these
//! commands are answered here, about Rampart's clients, in Redis's own
//! format. Each connection publishes what the others may ask about it (name,
//! user, database, last command ...) into its entry once per read, and takes
//! orders (close, unblock) on a channel of its own, so acting on another
//! client never reaches into its task.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::resp::request::CommandName;
use crate::resp::Request;

/// What one connection is asked to do by another.
pub enum Order {
    /// Close the connection (`CLIENT KILL`).
    Kill,
    /// `CLIENT UNBLOCK`: stop the blocking command in progress, if any,
    /// as if it timed out or (`error`) with an error; answers whether one was.
    Unblock {
        error: bool,
        done: oneshot::Sender<bool>,
    },
    /// Another client names this one as the target of its tracking
    /// `REDIRECT`: answers the node's id of this client's connection to
    /// `node`, opened now if need be (see [`super::redirect`]).
    Reserve {
        node: Arc<crate::topology::Node>,
        done: oneshot::Sender<Option<i64>>,
    },
    /// Another client's tracking over several shards redirects its
    /// invalidations here: they arrive on this inbox from now on (see
    /// [`Entry::invalidate`]).
    Inbox(mpsc::Receiver<Bytes>),
}

/// Invalidations waiting for a redirect target to take them; past this it
/// is disconnected (its cache flushed), not grown without bound.
const INBOX: usize = 1024;

/// The parts of a client's state `CLIENT LIST` shows, compared to skip
/// publishing what did not change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub cmd: Option<LastCommand>,
    pub db: i64,
    pub resp: i64,
    /// Where the name's bytes are: a new name is a new buffer.
    pub name: usize,
    pub flags: u8,
}

/// What a connection last published about itself.
#[derive(Clone)]
pub struct Snapshot {
    pub name: Option<Bytes>,
    pub user: String,
    pub db: i64,
    /// The last command (`cmd=` in `CLIENT LIST`).
    pub cmd: Option<LastCommand>,
    /// Redis's flag letters: `N` (none), `b` (blocked), `x` (MULTI), `P`
    /// (subscribed), `t` (tracking).
    pub flags: String,
    /// Commands queued in MULTI, or -1.
    pub multi: i64,
    pub subscribed: bool,
    pub resp: i64,
    /// Once the client is piped to a connection of its own (SUBSCRIBE ...):
    /// that connection's node and `CLIENT ID` there.
    pub pipe: Option<(String, i64)>,
}

/// A command as `CLIENT LIST` names it: lower case, with the subcommand of
/// a container command (`get`, `client|list`, `config|get`). Kept as two
/// inline names so that publishing it per read allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LastCommand {
    name: CommandName,
    sub: Option<CommandName>,
}

impl LastCommand {
    pub fn of(req: &Request) -> LastCommand {
        let name = req.name();
        let container = matches!(
            name.as_bytes(),
            b"CLIENT"
                | b"CONFIG"
                | b"SCRIPT"
                | b"FUNCTION"
                | b"ACL"
                | b"OBJECT"
                | b"XINFO"
                | b"XGROUP"
                | b"MEMORY"
                | b"COMMAND"
                | b"SLOWLOG"
                | b"PUBSUB"
                | b"MODULE"
                | b"LATENCY"
                | b"CLUSTER"
        );
        LastCommand {
            name,
            sub: if container { req.arg_upper(1) } else { None },
        }
    }

    /// `CLIENT <sub>`, for a client describing itself.
    pub fn client(sub: &str) -> LastCommand {
        LastCommand {
            name: CommandName::new(b"CLIENT"),
            sub: Some(CommandName::new(sub.as_bytes())),
        }
    }

    fn label(&self) -> String {
        let mut label = self.name.as_str().to_ascii_lowercase();
        if let Some(sub) = &self.sub {
            label.push('|');
            label.push_str(&sub.as_str().to_ascii_lowercase());
        }
        label
    }
}

pub struct Entry {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    created: Instant,
    /// When the client last ran a command, in ms after `created`: updated
    /// on every read, so it is an atomic rather than part of the snapshot.
    last_active_ms: AtomicU64,
    snapshot: Mutex<Snapshot>,
    orders: mpsc::Sender<Order>,
    /// Where other clients' tracking redirects invalidations to, made when
    /// the first one does (most clients are never a target).
    inbox: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// The inbox overflowed: the client is to be disconnected.
    inbox_lost: std::sync::atomic::AtomicBool,
    /// Woken when the shutdown begins (see [`Registry::wake_all`]): one
    /// waiter, the client's own task, which registers with it on every
    /// wake: cheaper than a `watch` receiver's `Notify`.
    closing: atomic_waker::AtomicWaker,
}

impl Entry {
    pub fn publish(&self, update: impl FnOnce(&mut Snapshot)) {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut snapshot);
    }

    /// The client ran a command just now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// The client ran a command at `at` (the time its bytes were read,
    /// which the caller already has: no clock read per request).
    pub fn touch_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.created).as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once `shutdown` says the shutdown began (or its sender is
    /// gone). The client's task waits on this rather than on the receiver
    /// itself, which would register with a mutex-guarded `Notify` each
    /// time; [`Registry::wake_all`] wakes it after the shutdown is sent.
    pub async fn closing(&self, shutdown: &tokio::sync::watch::Receiver<bool>) {
        // The receiver is a clone of the context's, which never marks a
        // value seen: it shows a change once the shutdown was sent.
        let begun = || !matches!(shutdown.has_changed(), Ok(false));
        crate::backend::signal::until(&self.closing, begun).await
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `CLIENT LIST` line, in Redis 7.0's field order. `qbuf`: bytes of
    /// the command being run (the client asking about itself), else 0.
    pub fn line(&self, now: Instant, qbuf: usize) -> String {
        let s = self.snapshot();
        let mut out = String::with_capacity(256);
        let name = s
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let _ = write!(
            out,
            "id={} addr={} laddr={} fd=8 name={} age={} idle={} flags={} db={} sub={} psub=0 ssub=0 multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={}",
            self.id,
            self.addr,
            self.laddr,
            name,
            now.saturating_duration_since(self.created).as_secs(),
            now.saturating_duration_since(
                self.created + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
            )
            .as_secs(),
            s.flags,
            s.db,
            u8::from(s.subscribed),
            s.multi,
            qbuf,
            s.cmd.map_or_else(|| "NULL".to_string(), |c| c.label()),
            s.user,
            s.resp,
        );
        out
    }

    /// Sends an order; false when the connection is already gone.
    pub fn order(&self, order: Order) -> bool {
        self.orders.try_send(order).is_ok()
    }

    /// Hands an invalidation (encoded as a RESP3 push) to this client, the
    /// target of another's tracking redirect; false when it is gone. A
    /// target that does not take them fast enough loses the overflow and
    /// is disconnected (a cache that missed an invalidation must be
    /// flushed, and losing the connection is what flushes it).
    pub fn invalidate(&self, message: Bytes) -> bool {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if inbox.is_none() {
            let (tx, rx) = mpsc::channel(INBOX);
            if !self.order(Order::Inbox(rx)) {
                return false;
            }
            *inbox = Some(tx);
        }
        match inbox.as_ref().map(|tx| tx.try_send(message)) {
            Some(Ok(())) => true,
            Some(Err(mpsc::error::TrySendError::Full(_))) => {
                self.inbox_lost.store(true, Ordering::Relaxed);
                let _ = self.order(Order::Kill);
                true
            }
            _ => false,
        }
    }

    /// Whether invalidations for this client were lost (see
    /// [`Entry::invalidate`]).
    pub fn lost_invalidations(&self) -> bool {
        self.inbox_lost.load(Ordering::Relaxed)
    }
}

/// All connected clients.
#[derive(Default)]
pub struct Registry {
    clients: DashMap<u64, Arc<Entry>>,
}

/// Removes its client from the registry when the connection ends.
pub struct Registration {
    pub entry: Arc<Entry>,
    registry: Arc<Registry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.entry.id);
    }
}

impl Registry {
    /// Adds a client; its orders arrive on the returned receiver.
    pub fn register(
        self: &Arc<Registry>,
        id: u64,
        addr: SocketAddr,
        laddr: SocketAddr,
        user: &str,
    ) -> (Registration, mpsc::Receiver<Order>) {
        let (tx, rx) = mpsc::channel(8);
        let now = Instant::now();
        let entry = Arc::new(Entry {
            id,
            addr,
            laddr,
            created: now,
            last_active_ms: AtomicU64::new(0),
            snapshot: Mutex::new(Snapshot {
                name: None,
                user: user.to_string(),
                db: 0,
                cmd: None,
                flags: "N".into(),
                multi: -1,
                subscribed: false,
                resp: 2,
                pipe: None,
            }),
            orders: tx,
            inbox: Mutex::new(None),
            inbox_lost: Default::default(),
            closing: atomic_waker::AtomicWaker::new(),
        });
        self.clients.insert(id, entry.clone());
        (
            Registration {
                entry,
                registry: self.clone(),
            },
            rx,
        )
    }

    pub fn get(&self, id: u64) -> Option<Arc<Entry>> {
        self.clients.get(&id).map(|e| e.clone())
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|e| e.id);
        all
    }

    /// Wakes every client waiting in [`Entry::closing`]: called once the
    /// shutdown has been sent. A client registered after this looks at the
    /// shutdown before it first waits, so none is missed.
    pub fn wake_all(&self) {
        for entry in self.clients.iter() {
            entry.closing.wake();
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}
