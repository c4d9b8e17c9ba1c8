//! One node's connection in fan-out mode: it runs the shard's log in
//! sequence order, and reports each node reply to the write it answers.
//!
//! One connection per node, never more: Redis runs a connection's commands
//! in the order they arrive, which is what makes the order the same on
//! every node. The writer takes entries from the log and writes them back
//! to back; the reader matches replies to them in order (as a backend
//! link does) and moves the node's place in the log.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::copy::{first_error, parse_dumps, restore};
use super::log::{Entry, Kind};
use super::{resync, Fanout, Start};
use crate::backend::connect::{connect, Session};
use crate::backend::cutter::{idle_read, Idle, ReplyCutter};
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::resp::encode::multibulk;
use crate::resp::{Proto, ReplyScanner};
use crate::topology::SyncState;

/// Stop gathering entries for one write past this many bytes.
const WRITE_CHUNK: usize = 256 * 1024;

pub fn spawn(fanout: Arc<Fanout>, index: usize) {
    let span = tracing::info_span!("fanout", shard = %fanout.shard.name, node = %fanout.shard.nodes[index].addr);
    tokio::spawn(run(fanout, index).instrument(span));
}

async fn run(fanout: Arc<Fanout>, index: usize) {
    let node = fanout.shard.nodes[index].clone();
    let mut backoff = Duration::from_millis(10);
    // Between failed resyncs: a resync that cannot succeed (no node in
    // sync to copy from, a payload the node refuses) is not retried in a
    // tight loop.
    let mut resync_backoff = Duration::from_secs(1);
    // Runs until the log is closed, shutdown included: clients that are
    // draining wait for their writes' replies.
    let mut closed = fanout.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        match open(&node.addr, &fanout).await {
            Ok((stream, run_id)) => {
                backoff = Duration::from_millis(10);
                let start = fanout.connected(index, run_id);
                if start == Start::Resync {
                    tokio::spawn(resync::run(fanout.clone(), index).in_current_span());
                } else {
                    resync_backoff = Duration::from_secs(1);
                }
                tracing::debug!(?start, "fan-out stream connected");
                let ended = serve(&fanout, index, stream).await;
                tracing::warn!(reason = %ended.reason, unanswered = ended.unanswered, "fan-out stream lost");
                fanout.disconnected(index, ended.unanswered, &ended.reason);
                if start == Start::Resync && node.sync() == SyncState::Stale {
                    tokio::select! {
                        _ = tokio::time::sleep(resync_backoff) => {}
                        _ = fanout.in_sync.notified() => {}
                    }
                    resync_backoff = (resync_backoff * 2).min(Duration::from_secs(30));
                }
            }
            Err(Refusal::Unreachable(e)) => {
                if fanout.may_answer(index) {
                    fanout.disconnected(index, false, &e);
                }
                tracing::debug!(error = %e, "fan-out connect failed");
            }
            Err(Refusal::Unfit(why)) => {
                fanout.unfit(index, &why);
                backoff = Duration::from_secs(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closed.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Why a node's connection could not be used.
enum Refusal {
    /// Not reachable (or not answering): it may come back as it was.
    Unreachable(String),
    /// Reachable but unfit for fan-out (a Redis replica): what it holds
    /// follows someone else, so it must be copied once it is fit.
    Unfit(String),
}

/// Connects and asks the node who it is (`run_id`) and whether it follows
/// a primary, on the very connection the writes will use: asked on
/// another, the node could restart in between unnoticed.
async fn open(addr: &str, fanout: &Fanout) -> Result<(Stream, String), Refusal> {
    let unreachable = |e: String| Refusal::Unreachable(e);
    let mut stream = connect(addr, &fanout.opts, Session::DEFAULT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut out = BytesMut::new();
    // Default INFO: the server and replication sections among others.
    multibulk(&mut out, &["INFO"]);
    let exchange = async {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(8192);
        let mut scanner = ReplyScanner::new(4);
        loop {
            if let Some(len) = scanner.scan(&buf).map_err(|e| e.to_string())? {
                return Ok(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed by the server".to_string());
            }
        }
    };
    let info = tokio::time::timeout(fanout.reply_timeout, exchange)
        .await
        .map_err(|_| unreachable("no reply to INFO".into()))?
        .map_err(unreachable)?;
    let field = |name| crate::failover::probe::info_field(&info, name);
    if matches!(field("role").as_deref(), Some("slave" | "replica")) {
        let primary = format!(
            "{}:{}",
            field("master_host").unwrap_or_default(),
            field("master_port").unwrap_or_default()
        );
        return Err(Refusal::Unfit(format!(
            "it is a Redis replica of {primary}: fan-out nodes must be independent (REPLICAOF NO ONE)"
        )));
    }
    let run_id =
        field("run_id").ok_or_else(|| unreachable(format!("no run_id in INFO: {info:.80}")))?;
    Ok((stream, run_id))
}

/// Something written and awaiting its replies.
enum Item {
    /// `HELLO 2|3`, switching the protocol for the entries that follow.
    Hello,
    Write(Arc<Entry>),
    /// DUMP + PEXPIRETIME of a snapshot's keys, on its source.
    Dump(Arc<Entry>),
    /// RESTORE or DEL of each key, on a snapshot's target.
    Restore(Arc<Entry>, usize),
    /// Nothing to send: an entry for other nodes, or the end of a resync.
    Pass(Arc<Entry>),
}

impl Item {
    fn replies(&self) -> usize {
        match self {
            Item::Hello => 1,
            Item::Write(entry) => entry.write().map_or(0, |w| w.replies),
            Item::Dump(entry) => match &entry.kind {
                Kind::Snapshot(s) => 2 * s.keys.len(),
                _ => 0,
            },
            Item::Restore(_, n) => *n,
            Item::Pass(_) => 0,
        }
    }

    /// Whether the node may have changed data for it: unanswered, nobody
    /// knows whether it ran.
    fn changes_data(&self) -> bool {
        matches!(self, Item::Write(_) | Item::Restore(..))
    }
}

struct Ended {
    reason: String,
    unanswered: bool,
}

/// Why a node's stream ended (before it is reconnected).
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("the node was marked stale; reconnecting to resync it")]
    Stale,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0} ms")]
    NoReply(u128),
    #[error("closed by the server")]
    ClosedByServer,
    /// A resync step on this stream failed.
    #[error("resync: {0}")]
    Resync(String),
    #[error("{0}")]
    Reply(#[from] crate::backend::LinkError),
}

async fn serve(fanout: &Fanout, index: usize, stream: Stream) -> Ended {
    let (rd, wr) = stream.into_split();
    let (items_tx, mut items) = mpsc::unbounded_channel();
    let mut reader = Reader {
        cut: ReplyCutter::new(fanout.max_reply_depth),
        current: None,
        acked: None,
    };
    let result = tokio::select! {
        r = write_loop(fanout, index, wr, &items_tx) => r,
        r = reader.run(fanout, index, rd, &mut items) => r,
    };
    let reason = match result {
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let unanswered = reader.fail(&mut items);
    Ended { reason, unanswered }
}

fn hello(out: &mut BytesMut, proto: Proto) {
    let version = proto.number().to_string();
    multibulk(out, &["HELLO", &version]);
}

async fn write_loop(
    fanout: &Fanout,
    index: usize,
    mut wr: WriteHalf,
    items: &mpsc::UnboundedSender<Item>,
) -> Result<(), StreamEnd> {
    let node = &fanout.shard.nodes[index];
    let mut proto = Proto::Resp2;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let switch = |out: &mut BytesMut, proto: &mut Proto, to: Proto| {
        if *proto != to {
            hello(out, to);
            let _ = items.send(Item::Hello);
            *proto = to;
        }
    };
    loop {
        if node.sync() == SyncState::Stale {
            return Err(StreamEnd::Stale);
        }
        let entries = fanout.take(index, WRITE_CHUNK);
        if entries.is_empty() {
            fanout.wake[index].notified().await;
            continue;
        }
        out.clear();
        for entry in entries {
            match &entry.kind {
                Kind::Write(write) => {
                    node.count_requests(write.replies as u64);
                    switch(&mut out, &mut proto, write.proto);
                    out.extend_from_slice(&write.payload);
                    let _ = items.send(Item::Write(entry.clone()));
                }
                Kind::Snapshot(snap) if snap.source == index => {
                    switch(&mut out, &mut proto, Proto::Resp2);
                    for key in &snap.keys {
                        multibulk(&mut out, &[&b"DUMP"[..], key]);
                        multibulk(&mut out, &[&b"PEXPIRETIME"[..], key]);
                    }
                    let _ = items.send(Item::Dump(entry.clone()));
                }
                Kind::Snapshot(snap) if snap.target == index => {
                    // Everything before this point goes out first; then the
                    // source's read of these keys is written here.
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    out.clear();
                    let wait = fanout.reply_timeout * 2;
                    let dumped = tokio::time::timeout(wait, snap.wait())
                        .await
                        .map_err(|_| {
                            StreamEnd::Resync("the source did not read its keys in time".into())
                        })?
                        .map_err(StreamEnd::Resync)?;
                    switch(&mut out, &mut proto, Proto::Resp2);
                    for key in dumped.iter() {
                        restore(&mut out, key);
                    }
                    let _ = items.send(Item::Restore(entry.clone(), dumped.len()));
                }
                _ => {
                    let _ = items.send(Item::Pass(entry.clone()));
                }
            }
        }
        wr.write_all(&out).await?;
        wr.flush().await?;
    }
}

struct Reader {
    cut: ReplyCutter,
    current: Option<Item>,
    /// The node has answered every entry below this (not yet reported).
    acked: Option<u64>,
}

impl Reader {
    async fn run(
        &mut self,
        fanout: &Fanout,
        index: usize,
        mut rd: ReadHalf,
        items: &mut mpsc::UnboundedReceiver<Item>,
    ) -> Result<(), StreamEnd> {
        loop {
            self.deliver(fanout, index, items)?;
            if let Some(upto) = self.acked.take() {
                fanout.acked(index, upto);
            }
            if self.current.is_none() {
                match idle_read(items, &mut rd, &mut self.cut.buf).await? {
                    Idle::Next(next) => self.current = Some(next),
                    Idle::Done => return Ok(()),
                    Idle::Read => {}
                }
                continue;
            }
            self.cut.make_room();
            let read = tokio::time::timeout(fanout.reply_timeout, rd.read_buf(&mut self.cut.buf))
                .await
                .map_err(|_| StreamEnd::NoReply(fanout.reply_timeout.as_millis()))?;
            if read? == 0 {
                return Err(StreamEnd::ClosedByServer);
            }
        }
    }

    /// Completes every item whose replies are all in.
    fn deliver(
        &mut self,
        fanout: &Fanout,
        index: usize,
        items: &mut mpsc::UnboundedReceiver<Item>,
    ) -> Result<(), StreamEnd> {
        loop {
            let Some(current) = &self.current else {
                match items.try_recv() {
                    Ok(next) => self.current = Some(next),
                    Err(_) => return Ok(()),
                }
                continue;
            };
            if self.cut.done == current.replies() {
                let (data, _) = self.cut.take();
                if let Some(item) = self.current.take() {
                    self.complete(item, data, fanout, index)?;
                }
                continue;
            }
            if !self.cut.advance()? {
                return Ok(());
            }
        }
    }

    fn complete(
        &mut self,
        item: Item,
        data: Bytes,
        fanout: &Fanout,
        index: usize,
    ) -> Result<(), StreamEnd> {
        let entry = match item {
            Item::Hello => return Ok(()),
            Item::Write(entry) => {
                if let Some(write) = entry.write() {
                    let counts = fanout.may_answer(index);
                    for node in write.answered(index, data, counts, |i| fanout.may_answer(i)) {
                        fanout.diverged(node);
                    }
                }
                entry
            }
            Item::Dump(entry) => {
                if let Kind::Snapshot(snap) = &entry.kind {
                    snap.fill(parse_dumps(&snap.keys, &data));
                }
                entry
            }
            Item::Restore(entry, _) => {
                if let Some(error) = first_error(&data) {
                    return Err(StreamEnd::Resync(format!(
                        "the node refused a key: {error}"
                    )));
                }
                entry
            }
            Item::Pass(entry) => {
                if matches!(entry.kind, Kind::Synced { target } if target == index) {
                    fanout.synced(index);
                }
                entry
            }
        };
        self.acked = Some(entry.seq + 1);
        Ok(())
    }

    /// After the connection ended: whether anything that changes data went
    /// unanswered. Reads a snapshot's target was waiting for fail.
    fn fail(&mut self, items: &mut mpsc::UnboundedReceiver<Item>) -> bool {
        items.close();
        let mut unanswered = false;
        let mut pending: Vec<Item> = self.current.take().into_iter().collect();
        while let Ok(item) = items.try_recv() {
            pending.push(item);
        }
        for item in pending {
            unanswered |= item.changes_data();
            if let Item::Dump(entry) = item {
                if let Kind::Snapshot(snap) = &entry.kind {
                    snap.fill(Err("the source's connection was lost".into()));
                }
            }
        }
        unanswered
    }
}

#[cfg(test)]
mod tests;
