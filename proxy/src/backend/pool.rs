//! Every connection Rampart holds to one node.
//!
//! - Shared links, a few per protocol version, carry stateless commands from
//!   all clients. A client always uses the same one (by client id), so its
//!   own commands reach the node in the order it sent them.
//! - Dedicated links are lent to one client for a transaction, a blocking
//!   command or a non-default database, and taken back only when the session
//!   left them clean (otherwise they are closed). Those logged in as a
//!   client's ACL user are kept apart, for clients logged in as that user.
//! - Raw connections are handed over for good to sessions that become a
//!   stream of pushed messages (SUBSCRIBE, MONITOR).

use std::sync::{Arc, Mutex, OnceLock};

use super::connect::{connect_with_id, Session};
use super::link::{Link, LinkOptions, OnFailure, Supervision};
use super::stats::LinkStats;
use crate::resp::Proto;

thread_local! {
    /// The worker the calling thread is (see `crate::worker`), if it is one.
    /// Per-worker state (shared links) is indexed by it; other threads use
    /// the slot after the last worker.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as worker `index`: its clients use the shared
/// links of that worker's slot.
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

pub struct NodePool {
    addr: String,
    opts: LinkOptions,
    links_per_node: usize,
    max_idle: usize,
    supervision: Supervision,
    /// Per worker thread (plus one slot for other threads): shared links,
    /// RESP2 and RESP3, for reads and for writes, opened on first use by
    /// that thread so their tasks run on its event loop. Writes have links
    /// of their own because synchronous writes are followed by a `WAIT`,
    /// and reads must not queue behind it.
    shared: Vec<[OnceLock<Vec<Link>>; 4]>,
    /// Per worker thread: clean dedicated links (database 0, no
    /// transaction), per protocol.
    idle: Arc<Vec<[Mutex<Vec<Link>>; 2]>>,
    /// Clean dedicated links logged in as clients' ACL users, with their
    /// protocol, oldest first (at most `max_idle`).
    users_idle: Mutex<std::collections::VecDeque<(Proto, Link)>>,
}

/// Clean dedicated links kept open ahead of need, per worker and protocol.
/// A blocking command sent on a link that is already open reaches the node
/// about as fast as another client's write on a shared link; one that must
/// wait for a new connection arrives after writes its client sent it
/// ahead of (a BLPOP would miss the LPUSH that was meant to wake it).
const SPARE: usize = 2;

/// The window of a link carrying synchronous writes: half the configured
/// one. The node holds such a link during each `WAIT`, so its writes go in
/// bursts of a window each, and one `WAIT` covers a burst; a smaller burst
/// is on the replicas sooner, and the two writer links take turns more
/// finely. Measured (SET -P 16, 50 clients, quorum one, two replicas on
/// the same two cores): 128 beat 256 by about a fifth, 96 and 192 came
/// in between, 64, 1,024 and no bound were worse.
fn writer_window(window: u32) -> u32 {
    match window {
        0 => 0,
        w => (w / 2).max(1),
    }
}

/// Where the writer links start in a worker's shared links (reads' links
/// first, one per protocol, then writes').
const WRITERS: usize = 2;

fn slot(proto: Proto) -> usize {
    match proto {
        Proto::Resp2 => 0,
        Proto::Resp3 => 1,
    }
}

impl NodePool {
    /// A pool for a node that is described rather than reached (policy
    /// test scenarios, benchmarks, unit tests): it connects only if a link
    /// is asked of it, and nothing here asks.
    pub fn unconnected(addr: String) -> NodePool {
        let opts = LinkOptions {
            connect: super::ConnectOptions {
                username: None,
                password: None,
                timeout: std::time::Duration::from_secs(1),
                tls: None,
            },
            max_reply_depth: 64,
            reply_timeout: None,
            window: 0,
            stats: Default::default(),
        };
        NodePool::new(addr, opts, 1, 0, 1, Arc::new(|_: &str| {}))
    }

    pub fn new(
        addr: String,
        mut opts: LinkOptions,
        links_per_node: usize,
        max_idle: usize,
        workers: usize,
        on_failure: OnFailure,
    ) -> NodePool {
        // Every link to this node counts into the node's own counters.
        opts.stats = Arc::new(LinkStats::default());
        NodePool {
            addr,
            opts,
            links_per_node,
            max_idle,
            supervision: Supervision {
                on_failure,
                retry: Arc::default(),
            },
            shared: (0..=workers)
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
            idle: Arc::new(
                (0..=workers)
                    .map(|_| [Mutex::new(Vec::new()), Mutex::new(Vec::new())])
                    .collect(),
            ),
            users_idle: Mutex::default(),
        }
    }

    /// This thread's slot in the per-worker vectors.
    fn here(&self) -> usize {
        WORKER
            .with(|w| w.get())
            .unwrap_or(usize::MAX)
            .min(self.shared.len() - 1)
    }

    /// The shared link a client uses for this node.
    pub fn shared(&self, proto: Proto, client_id: u64) -> &Link {
        self.shared_in(slot(proto), proto, client_id)
    }

    /// The shared link a client uses for synchronous writes to this node.
    pub fn writer(&self, proto: Proto, client_id: u64) -> &Link {
        self.shared_in(WRITERS + slot(proto), proto, client_id)
    }

    fn shared_in(&self, kind: usize, proto: Proto, client_id: u64) -> &Link {
        let links = self.shared[self.here()][kind].get_or_init(|| {
            let mut opts = self.opts.clone();
            if kind >= WRITERS {
                opts.window = writer_window(opts.window);
            }
            (0..self.links_per_node)
                .map(|_| {
                    Link::shared(
                        self.addr.clone(),
                        opts.clone(),
                        Session {
                            proto,
                            db: 0,
                            user: None,
                        },
                        self.supervision.clone(),
                    )
                })
                .collect()
        });
        &links[(client_id % links.len() as u64) as usize]
    }

    /// Has every shared link that is waiting out its reconnect backoff
    /// connect now: the node answered again.
    pub fn reconnect_now(&self) {
        self.supervision.retry.notify_waiters();
    }

    /// Opens the RESP2 shared links now rather than on the first command.
    pub fn warm_up(&self) {
        let _ = self.shared(Proto::Resp2, 0);
    }

    /// A dedicated link in the given session state.
    pub async fn dedicated(&self, session: Session) -> std::io::Result<Link> {
        let opts = LinkOptions {
            reply_timeout: None,
            // One client's session: nothing to share.
            window: 0,
            ..self.opts.clone()
        };
        if session.db != 0 {
            return Link::dedicated(&self.addr, opts, session).await;
        }
        if let Some(user) = &session.user {
            let spare = {
                let mut idle = self.users_idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|(_, link)| link.is_up());
                let same = |(proto, link): &(Proto, Link)| {
                    *proto == session.proto && link.user().is_some_and(|u| **u == **user)
                };
                idle.iter().rposition(same).and_then(|i| idle.remove(i))
            };
            return match spare {
                Some((_, link)) => Ok(link),
                None => Link::dedicated(&self.addr, opts, session).await,
            };
        }
        let here = self.here();
        let proto = slot(session.proto);
        let spare = {
            let mut idle = self.idle[here][proto]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            idle.retain(Link::is_up);
            idle.pop()
        };
        self.refill(here, session.clone(), opts.clone());
        match spare {
            Some(link) => Ok(link),
            None => Link::dedicated(&self.addr, opts, session).await,
        }
    }

    /// Opens clean dedicated links in the background until this worker
    /// has [`SPARE`] of them for the protocol.
    fn refill(&self, here: usize, session: Session, opts: LinkOptions) {
        let idle = self.idle.clone();
        let addr = self.addr.clone();
        let proto = slot(session.proto);
        let missing = {
            let idle = idle[here][proto].lock().unwrap_or_else(|p| p.into_inner());
            SPARE.min(self.max_idle).saturating_sub(idle.len())
        };
        if missing == 0 {
            return;
        }
        tokio::spawn(async move {
            for _ in 0..missing {
                let Ok(link) = Link::dedicated(&addr, opts.clone(), session.clone()).await else {
                    return;
                };
                let mut idle = idle[here][proto].lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() >= SPARE {
                    return;
                }
                idle.push(link);
            }
        });
    }

    /// Takes back a dedicated link for the next client that needs one. The
    /// caller knows it holds no transaction or watch and owes no reply;
    /// `now` is the session it is in. Only a link in database 0 is kept,
    /// and one logged in as a client's ACL user only for clients logged
    /// in as that user: any other would give the next client someone
    /// else's rights or data. The rest are closed.
    pub fn give_back(&self, link: Link, now: &Session) {
        if !link.is_up() || now.db != 0 || link.user() != now.user.as_ref() {
            return;
        }
        if link.user().is_some() {
            let mut idle = self.users_idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push_back((now.proto, link));
            if idle.len() > self.max_idle {
                idle.pop_front();
            }
            return;
        }
        let mut idle = self.idle[self.here()][slot(now.proto)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(link);
        }
    }

    /// A raw connection for a session that will receive pushed messages,
    /// and its `CLIENT ID` on the node (`CLIENT TRACKING ... REDIRECT` to
    /// it needs that id).
    pub async fn raw(
        &self,
        session: Session,
    ) -> std::io::Result<(crate::net::Stream, Option<i64>)> {
        connect_with_id(&self.addr, &self.opts.connect, session).await
    }

    /// A control connection to this node, with Rampart's own credentials.
    pub async fn control(&self) -> std::io::Result<super::control::Control> {
        super::control::Control::connect(&self.addr, &self.opts.connect).await
    }

    /// Runs one command on a control connection of its own: for commands
    /// that must reach the node now, not queue behind a client's on a
    /// shared link (SCRIPT KILL, CLIENT UNPAUSE, PING while busy ...).
    pub async fn call_once<A: AsRef<[u8]>>(
        &self,
        args: &[A],
        timeout: std::time::Duration,
    ) -> std::io::Result<redis_protocol::resp3::types::OwnedFrame> {
        self.control().await?.call(args, timeout).await
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn stats(&self) -> &LinkStats {
        &self.opts.stats
    }
}
