//! A pipelined connection to one node.
//!
//! Clients hand a link *batches*: the requests a client sent in one read that
//! go to the same place, with one channel for all their replies. The link
//! writes every batch waiting for it in one system call and reads replies in
//! the order it wrote requests (Redis answers in order), cutting them out of
//! its read buffer without copying. So fifty clients sending one command each
//! cost one write and one read on the backend, and a client pipelining sixteen
//! commands costs one channel message, not sixteen.
//!
//! Shared links are supervised: when the connection fails, everything in
//! flight on it fails with an error saying the command may or may not have run
//! (Redis cannot tell us), batches arriving while it is down fail at once, and
//! it reconnects with backoff. Dedicated links (one client's transaction or
//! blocking command) carry connection state that a reconnect would lose, so
//! they live exactly as long as their connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::connect::{connect, connect_with_id, ConnectOptions, Session};
use super::cutter::ReplyCutter;
use super::reader::{watchdog, InFlight, Progress, Reader, Window};
use super::reply::{BatchReply, ReplyTo};
use super::stats::LinkStats;
use super::LinkError;
use crate::net::{Stream, WriteHalf};
use crate::replicate::wait::{Run, Wait};
use crate::replicate::Durability;

/// Requests for one link and where their replies go.
pub struct Batch {
    /// Encoded requests, written back to back.
    pub requests: Vec<Bytes>,
    /// How many replies the requests produce.
    pub replies: usize,
    /// Where the replies go, and whose account they are charged to.
    pub reply: ReplyTo,
    /// Set for synchronous writes: the replies are held until a `WAIT`
    /// shows the shard's quorum of replicas has the writes.
    pub durable: Option<Arc<Durability>>,
    /// The replies carry what the node took out (a blocking pop): on a
    /// quorum shortfall they are passed on as they are, not turned into
    /// `-NOQUORUM`, or the client could never learn what was taken.
    pub keep_on_shortfall: bool,
}

impl Batch {
    /// Requests whose replies go to `reply` as they are: not held for a
    /// quorum.
    pub fn plain(requests: Vec<Bytes>, reply: oneshot::Sender<BatchReply>) -> Batch {
        Batch {
            replies: requests.len(),
            requests,
            reply: reply.into(),
            durable: None,
            keep_on_shortfall: false,
        }
    }
}

/// Fails a batch that could not be sent at all.
fn refuse(batch: Batch, error: Arc<str>, stats: &LinkStats) {
    stats.failed(batch.replies);
    stats.count_answered(1);
    let _ = batch.reply.send(BatchReply::failed(error));
}

/// Tunables shared by every link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub connect: ConnectOptions,
    pub max_reply_depth: usize,
    /// `None` for links that run blocking commands.
    pub reply_timeout: Option<Duration>,
    /// Most replies a shared link waits for at once (0: no bound). See
    /// [`Window`].
    pub window: u32,
    /// Counters of the node these links go to (one per node: the pool
    /// sets it).
    pub stats: Arc<LinkStats>,
}

/// Called when a shared link loses its connection or cannot connect: a
/// passive health signal for the node.
pub type OnFailure = Arc<dyn Fn(&str) + Send + Sync>;

/// What a shared link is told by its node's pool: when it fails, and
/// when to stop waiting out its backoff (the node answered a probe again).
#[derive(Clone)]
pub struct Supervision {
    pub on_failure: OnFailure,
    pub retry: Arc<tokio::sync::Notify>,
}

struct State {
    addr: String,
    stats: Arc<LinkStats>,
    /// False once a dedicated link's connection is gone, or while a shared
    /// link is reconnecting.
    up: AtomicBool,
    /// Woken when a shared link connects: requests held for it go on.
    connected: tokio::sync::Notify,
    /// A dedicated link's `CLIENT ID` on the node, so that another
    /// connection can `CLIENT UNBLOCK` it.
    backend_id: Option<i64>,
    /// The client's ACL user it logged in as, rather than with Rampart's
    /// own credentials: such a link serves only clients logged in as the
    /// same user.
    user: Option<Arc<super::Credentials>>,
}

/// Handle to a link; cheap to clone.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<Batch>,
    state: Arc<State>,
}

/// Batches queued for a link before senders wait: with the per-client
/// in-flight bound this keeps memory bounded under overload.
const QUEUE: usize = 1024;
/// Batches smaller than this wait one pass of the event loop for company.
const GATHER_BELOW: usize = 4;
/// Stop gathering batches for one write past this many bytes.
const WRITE_CHUNK: usize = 256 * 1024;

impl Link {
    /// A shared link, connecting in the background and reconnecting forever.
    pub fn shared(
        addr: String,
        opts: LinkOptions,
        session: Session,
        supervision: Supervision,
    ) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        let state = Arc::new(State {
            addr: addr.clone(),
            stats: opts.stats.clone(),
            up: AtomicBool::new(false),
            connected: tokio::sync::Notify::new(),
            backend_id: None,
            user: session.user.clone(),
        });
        let span = tracing::info_span!("link", node = %addr, proto = session.proto.number());
        tokio::spawn(supervise(rx, state.clone(), opts, session, supervision).instrument(span));
        Link { tx, state }
    }

    /// A dedicated link on a fresh connection, for one client's session.
    pub async fn dedicated(
        addr: &str,
        opts: LinkOptions,
        session: Session,
    ) -> std::io::Result<Link> {
        let user = session.user.clone();
        let (stream, backend_id) = connect_with_id(addr, &opts.connect, session).await?;
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let state = Arc::new(State {
            addr: addr.to_string(),
            stats: opts.stats.clone(),
            up: AtomicBool::new(true),
            connected: tokio::sync::Notify::new(),
            backend_id,
            user,
        });
        let task_state = state.clone();
        let span = tracing::debug_span!("dedicated", node = %addr);
        tokio::spawn(
            async move {
                let kind = super::own::Kind::Dedicated;
                let reason = serve(stream, &mut rx, &opts, &task_state.addr, kind).await;
                task_state.up.store(false, Ordering::Release);
                tracing::debug!(%reason, "dedicated link closed");
                rx.close();
                let error = lost(&task_state.addr, &reason);
                while let Ok(batch) = rx.try_recv() {
                    refuse(batch, error.clone(), &opts.stats);
                }
            }
            .instrument(span),
        );
        Ok(Link { tx, state })
    }

    /// Queues a batch; waits while the link's queue is full (backpressure).
    pub async fn send(&self, batch: Batch) {
        self.state
            .stats
            .sent_batches
            .fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch).await {
            refuse(
                batch,
                lost(&self.state.addr, "link closed"),
                &self.state.stats,
            );
        }
    }

    /// Whether both handles are to the same link.
    pub fn same(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The client's ACL user the link is logged in as (`None`: Rampart's
    /// own credentials).
    pub fn user(&self) -> Option<&Arc<super::Credentials>> {
        self.state.user.as_ref()
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    /// Resolves once the link is connected (at once if it is).
    pub async fn connected(&self) {
        let notified = self.state.connected.notified();
        if self.is_up() {
            return;
        }
        notified.await
    }

    pub fn addr(&self) -> &str {
        &self.state.addr
    }

    /// The connection's `CLIENT ID` on the node (dedicated links only).
    pub fn backend_id(&self) -> Option<i64> {
        self.state.backend_id
    }
}

fn lost(addr: &str, reason: &(impl std::fmt::Display + ?Sized)) -> Arc<str> {
    format!(
        "ERR rampart: connection to {addr} lost ({reason}); the command may or may not have run"
    )
    .into()
}

fn unavailable(addr: &str, reason: &(impl std::fmt::Display + ?Sized)) -> Arc<str> {
    format!("ERR rampart: {addr} unavailable ({reason})").into()
}

async fn supervise(
    mut rx: mpsc::Receiver<Batch>,
    state: Arc<State>,
    opts: LinkOptions,
    session: Session,
    supervision: Supervision,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let reason = match connect(&state.addr, &opts.connect, session.clone()).await {
            Ok(stream) => {
                tracing::debug!("connected");
                state.up.store(true, Ordering::Release);
                state.connected.notify_waiters();
                backoff = Duration::from_millis(10);
                let kind = super::own::Kind::Shared;
                let reason = serve(stream, &mut rx, &opts, &state.addr, kind).await;
                state.up.store(false, Ordering::Release);
                if rx.is_closed() {
                    return;
                }
                tracing::warn!(%reason, "backend connection lost");
                reason
            }
            Err(e) => {
                tracing::debug!(error = %e, "connect failed");
                LinkError::Io(e)
            }
        };
        (supervision.on_failure)(&reason.to_string());
        // While down, fail new requests at once rather than let them wait
        // for a node that may not come back.
        let error = unavailable(&state.addr, &reason);
        let retry_at = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at) => break,
                // The node answers again (a restart, say): connect now
                // rather than at the end of a backoff of up to a second,
                // during which every request for it would fail.
                _ = supervision.retry.notified() => break,
                batch = rx.recv() => match batch {
                    Some(batch) => refuse(batch, error.clone(), &opts.stats),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Runs one connection until it fails or every handle is dropped; returns
/// why it ended. Everything in flight has been answered when it returns.
async fn serve(
    stream: Stream,
    rx: &mut mpsc::Receiver<Batch>,
    opts: &LinkOptions,
    addr: &str,
    kind: super::own::Kind,
) -> LinkError {
    let _mark = super::own::Mark::new(&stream, kind);
    opts.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = stream.into_split();
    let (inflight_tx, mut inflight_rx) = mpsc::unbounded_channel();
    let window = Window::new(opts.window);
    let mut reader = Reader {
        window: window.as_ref(),
        cut: ReplyCutter::new(opts.max_reply_depth),
        current: None,
        held: Vec::new(),
        stats: opts.stats.clone(),
        charge: None,
    };
    let progress = Progress::default();
    let mut held_back = None;
    let reason = tokio::select! {
        r = write_loop(wr, rx, inflight_tx, window.as_ref(), &mut held_back) => r,
        r = reader.run(rd, &mut inflight_rx, &progress) => r,
        r = watchdog(&progress, opts.reply_timeout, &opts.stats) => r,
    };
    let reason = reason.err().unwrap_or(LinkError::Unwanted);
    let failed = reader.fail(&mut inflight_rx, lost(addr, &reason));
    opts.stats.failed(failed);
    if let Some(batch) = held_back {
        refuse(batch, unavailable(addr, &reason), &opts.stats);
    }
    opts.stats.connections.fetch_sub(1, Ordering::Relaxed);
    reason
}

async fn write_loop(
    mut wr: WriteHalf,
    rx: &mut mpsc::Receiver<Batch>,
    inflight: mpsc::UnboundedSender<InFlight>,
    window: Option<&Window>,
    next: &mut Option<Batch>,
) -> Result<(), LinkError> {
    let mut out = BytesMut::with_capacity(16 * 1024);
    // `next`: a batch taken from the queue when the window was full. It goes
    // first in the next write; it lives with the caller so that, if this
    // future is dropped while it waits, the batch is still answered.
    loop {
        if next.is_none() {
            *next = rx.recv().await;
        }
        let Some(replies) = next.as_ref().map(|batch| batch.replies) else {
            break;
        };
        let cost = Window::enter(window, replies).await;
        let Some(first) = next.take() else {
            break;
        };
        out.clear();
        // A lone small batch: before writing it, let the event loop take in
        // everything else that is ready (other clients' requests for this
        // link), so one write carries many. With 50 clients sending one
        // request at a time this doubled the requests per backend write
        // (~5 to ~10), roughly halving the node's system calls. Pipelined
        // clients already send big batches; for them the extra pass of the
        // event loop only cost throughput, so they skip it.
        let gather = first.requests.len() < GATHER_BELOW && rx.is_empty();
        // Every batch taken from the queue is registered at once: this
        // future may be dropped at any await (when the reader fails first),
        // and a registered batch is then answered by `Reader::fail`, while
        // one held in a local variable would vanish without a reply.
        let mut run = Run::default();
        stage(&mut out, &inflight, first, cost, &mut run);
        if gather {
            tokio::task::yield_now().await;
        }
        while out.len() < WRITE_CHUNK {
            let Ok(batch) = rx.try_recv() else {
                break;
            };
            let Some(cost) = Window::try_enter(window, batch.replies) else {
                *next = Some(batch);
                break;
            };
            stage(&mut out, &inflight, batch, cost, &mut run);
        }
        write_wait(&mut out, &inflight, run.close());
        wr.write_all(&out).await?;
        // TLS keeps what a full socket did not take; plain TCP has nothing.
        wr.flush().await?;
    }
    Ok(())
}

/// Appends a batch's requests to the outgoing bytes and registers it as in
/// flight (before the bytes go out, so the reader always knows what a reply
/// belongs to).
///
/// `run` holds the synchronous batches staged just before: their `WAIT`
/// goes after the last of them, so it covers all of them (group commit)
/// and never lands in the middle of what follows (a client's `MULTI` on a
/// dedicated link, say, where it would be queued).
fn stage(
    out: &mut BytesMut,
    inflight: &mpsc::UnboundedSender<InFlight>,
    batch: Batch,
    cost: u32,
    run: &mut Run,
) {
    write_wait(out, inflight, run.stage(batch.durable.as_ref()));
    for request in &batch.requests {
        out.extend_from_slice(request);
    }
    let _ = inflight.send(InFlight::Batch {
        replies: batch.replies,
        reply: batch.reply,
        durable: batch.durable,
        keep_on_shortfall: batch.keep_on_shortfall,
        cost,
    });
}

/// Writes a `WAIT` that closes a run of synchronous batches; its reply is
/// read as one more in flight.
fn write_wait(out: &mut BytesMut, inflight: &mpsc::UnboundedSender<InFlight>, wait: Option<Wait>) {
    if let Some(Wait { request, pending }) = wait {
        out.extend_from_slice(&request);
        let _ = inflight.send(InFlight::Wait(pending));
    }
}
