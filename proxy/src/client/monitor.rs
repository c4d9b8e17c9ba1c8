//! `MONITOR` through Rampart: the node's feed of commands, less those
//! Rampart sends for itself (probes, role changes, the `WAIT` after
//! synchronous writes, its links' handshakes), which a client watching for
//! its own commands would otherwise see first. See [`crate::backend::own`].

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::primary_feed::PrimaryFeed;
use crate::backend::own;
use crate::backend::Session;
use crate::shard::Shard;

#[derive(Default)]
pub struct MonitorFilter {
    /// An incomplete line from the last read.
    partial: BytesMut,
    attribution: own::Attribution,
}

impl MonitorFilter {
    /// Takes bytes from the node; returns the complete lines the client
    /// should see.
    pub fn feed(&mut self, data: &[u8]) -> BytesMut {
        self.partial.extend_from_slice(data);
        let mut out = BytesMut::with_capacity(self.partial.len());
        while let Some(end) = memchr_crlf(&self.partial) {
            let line = &self.partial[..end + 2];
            if keep(line, &mut self.attribution) {
                out.extend_from_slice(line);
            }
            self.partial.advance(end + 2);
        }
        out
    }
}

/// With several shards, the feeds of every shard but the one the client's
/// `MONITOR` is piped to, merged into its stream as their lines arrive.
/// Each feed is a `MONITOR` on its shard's primary, logged in as the
/// client, filtered as the pipe's own. A feed that ends (its primary
/// changed, or its connection broke) ends the client's `MONITOR`, as the
/// pipe's own does, so the client connects again and watches every
/// shard's new primary.
pub(super) struct OtherFeeds {
    lines: mpsc::Receiver<Option<BytesMut>>,
    /// Keeps the channel open when every feed has ended quietly (the
    /// nodes refused `MONITOR`, as the pipe's node did): the client stays,
    /// as it would after that refusal over one shard.
    _open: mpsc::Sender<Option<BytesMut>>,
    /// Dropped with the client: the feeds' tasks end with it.
    _tasks: tokio::task::JoinSet<()>,
}

/// Lines waiting to be written to the client, per feed: past it a feed
/// stops reading its node, as the pipe's own stops when the client reads
/// slowly.
const FEED_QUEUE: usize = 64;
/// How long the client's `+OK` waits for a feed to start watching (a
/// node that cannot be reached fails sooner, at its connect timeout).
const START_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

impl OtherFeeds {
    /// Starts a feed per shard, once each watches (or could not).
    pub(super) async fn start(shards: Vec<Arc<Shard>>, session: Session) -> OtherFeeds {
        let (tx, lines) = mpsc::channel(FEED_QUEUE);
        let mut tasks = tokio::task::JoinSet::new();
        let mut watching = Vec::with_capacity(shards.len());
        for shard in shards {
            let tx = tx.clone();
            let session = session.clone();
            let (started, started_rx) = oneshot::channel();
            watching.push(started_rx);
            tasks.spawn(async move {
                if feed(&shard, session, &tx, started).await == Ended::Lost {
                    let _ = tx.send(None).await;
                }
            });
        }
        for started in watching {
            let _ = tokio::time::timeout(START_WITHIN, started).await;
        }
        OtherFeeds {
            lines,
            _open: tx,
            _tasks: tasks,
        }
    }

    /// The next lines from any feed; `None` once one has ended.
    pub(super) async fn next(feeds: Option<&mut OtherFeeds>) -> Option<BytesMut> {
        match feeds {
            Some(feeds) => feeds.lines.recv().await.flatten(),
            None => std::future::pending().await,
        }
    }
}

/// How a feed ended.
#[derive(PartialEq)]
enum Ended {
    /// The client left.
    Left,
    /// The node refused `MONITOR` (as the pipe's node did: the client
    /// heard that refusal).
    Refused,
    /// Its primary changed, or the connection broke.
    Lost,
}

/// One shard's feed, until its primary changes or its connection breaks.
async fn feed(
    shard: &Arc<Shard>,
    session: Session,
    tx: &mpsc::Sender<Option<BytesMut>>,
    started: oneshot::Sender<()>,
) -> Ended {
    let mut started = Some(started);
    let command = b"*1\r\n$7\r\nMONITOR\r\n";
    let Ok(mut node) = PrimaryFeed::open(shard, session, command).await else {
        return Ended::Lost;
    };
    let mut filter = MonitorFilter::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The client hears `+OK` from the pipe's node: this one's is dropped.
    while node.read(&mut buf).await {
        let mut lines = filter.feed(&buf);
        buf.clear();
        if started.is_some() && !lines.is_empty() {
            if !lines.starts_with(b"+OK\r\n") {
                return Ended::Refused;
            }
            lines.advance(5);
            if let Some(started) = started.take() {
                let _ = started.send(());
            }
        }
        if !lines.is_empty() && tx.send(Some(lines)).await.is_err() {
            return Ended::Left;
        }
    }
    Ended::Lost
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Whether a MONITOR line is a client's command (or not a command at all,
/// like the `+OK` that starts the feed).
fn keep(line: &[u8], attribution: &mut own::Attribution) -> bool {
    let text = String::from_utf8_lossy(line);
    let (Some(open), Some(close)) = (text.find('['), text.find("] ")) else {
        return true;
    };
    let Some((_db, addr)) = text[open + 1..close].split_once(' ') else {
        return true;
    };
    let mut args = quoted(&text[close + 2..]);
    let command = args.next().unwrap_or_default();
    let first = args.next().unwrap_or_default();
    !attribution.is_internal(addr, &command, &first)
}

/// The quoted arguments of a MONITOR line, unescaped just enough to compare.
fn quoted(rest: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = rest.chars().peekable();
    std::iter::from_fn(move || {
        while chars.peek().is_some_and(|c| *c != '"') {
            chars.next();
        }
        chars.next()?;
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => arg.extend(chars.next()),
                '"' => return Some(arg),
                c => arg.push(c),
            }
        }
        Some(arg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_client_lines_and_splits_across_reads() {
        let mut f = MonitorFilter::default();
        let a = f.feed(b"+OK\r\n+1.0 [0 127.0.0.1:1] \"SET\" \"k");
        assert_eq!(&a[..], b"+OK\r\n");
        let b = f.feed(b"\" \"v\"\r\n");
        assert_eq!(&b[..], b"+1.0 [0 127.0.0.1:1] \"SET\" \"k\" \"v\"\r\n");
        let args: Vec<String> = quoted("\"a\\\"b\" \"c\"").collect();
        assert_eq!(args, ["a\"b", "c"]);
    }
}
