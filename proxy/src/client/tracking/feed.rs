//! The feeds: one connection per shard's primary asking it for every
//! invalidation (`BCAST`), and the messages they bring.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::{mpsc, oneshot};

use super::options::Mode;
use crate::backend::Session;
use crate::client::primary_feed::PrimaryFeed;
use crate::resp::{Proto, ReplyScanner, Request, Value};
use crate::shard::Shard;

/// Invalidations waiting to be queued for the client: past it the feeds
/// stop reading their nodes.
const FEED_QUEUE: usize = 64;
/// How long `CLIENT TRACKING ON` waits for every feed to start.
const START_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest message a feed takes (a flush of many keys is one).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Nesting of an invalidation message (a push of a string and an array).
const DEPTH: usize = 4;

/// The keys an invalidation names; `None` for a flush (every key).
pub(super) fn invalidated(message: &[u8]) -> Option<Vec<Bytes>> {
    let decoded = redis_protocol::resp3::decode::complete::decode(message);
    let Ok(Some((OwnedFrame::Push { data, .. }, _))) = decoded else {
        return None;
    };
    match data.get(1) {
        Some(OwnedFrame::Array { data, .. }) => Some(
            data.iter()
                .filter_map(|k| match k {
                    OwnedFrame::BlobString { data, .. } => Some(Bytes::from(data.clone())),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// An invalidation of `keys`, as Redis sends it.
pub(super) fn invalidation(keys: &[Bytes]) -> Bytes {
    let keys = keys.iter().map(|k| Value::Bulk(k.clone())).collect();
    let push = Value::Push(vec![
        Value::Bulk(Bytes::from_static(b"invalidate")),
        Value::Array(keys),
    ]);
    push.encode(Proto::Resp3)
}

/// One feed per shard, merged.
pub(super) struct Feeds {
    pub(super) messages: mpsc::Receiver<Option<Bytes>>,
    /// Dropped with the client (or its tracking): the feeds end with it.
    _tasks: tokio::task::JoinSet<()>,
}

impl Feeds {
    /// Starts a feed on every shard's primary; the first refusal (or a
    /// primary that cannot be reached) is the error, and none is kept.
    pub(super) async fn start(
        shards: Vec<Arc<Shard>>,
        session: Session,
        mode: &Mode,
    ) -> Result<Feeds, String> {
        // RESP3 whatever the client speaks: a node pushes invalidations to
        // a RESP3 connection only (a RESP2 client's are encoded for it or
        // its redirect target here).
        let session = Session {
            proto: Proto::Resp3,
            ..session
        };
        let (tx, messages) = mpsc::channel(FEED_QUEUE);
        let mut tasks = tokio::task::JoinSet::new();
        let mut starting = Vec::with_capacity(shards.len());
        let command = feed_command(mode);
        for shard in shards {
            let (tx, session, command) = (tx.clone(), session.clone(), command.clone());
            let (started, started_rx) = oneshot::channel();
            starting.push(started_rx);
            tasks.spawn(async move {
                feed(&shard, session, &command, &tx, started).await;
                let _ = tx.send(None).await;
            });
        }
        for started in starting {
            match tokio::time::timeout(START_WITHIN, started).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => return Err(error),
                _ => {
                    return Err(
                        "ERR rampart: a shard's primary did not start tracking in time".into(),
                    )
                }
            }
        }
        Ok(Feeds {
            messages,
            _tasks: tasks,
        })
    }
}

/// What a feed asks its node for: every invalidation in the client's
/// prefixes (every key outside `BCAST` mode).
fn feed_command(mode: &Mode) -> Bytes {
    let mut args = vec![
        Bytes::from_static(b"CLIENT"),
        Bytes::from_static(b"TRACKING"),
        Bytes::from_static(b"ON"),
        Bytes::from_static(b"BCAST"),
    ];
    // `""` among the prefixes (`BCAST` without `PREFIX`) is every key.
    if mode.bcast && !mode.prefixes.iter().any(|p| p.is_empty()) {
        for prefix in &mode.prefixes {
            args.push(Bytes::from_static(b"PREFIX"));
            args.push(prefix.clone());
        }
    }
    Request::from_args(&args).raw
}

/// One shard's feed, until its primary changes, its connection breaks or
/// the client's tracking ends.
async fn feed(
    shard: &Arc<Shard>,
    session: Session,
    command: &[u8],
    tx: &mpsc::Sender<Option<Bytes>>,
    started: oneshot::Sender<Result<(), String>>,
) {
    let mut node = match PrimaryFeed::open(shard, session, command).await {
        Ok(node) => node,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let mut started = Some(started);
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::new(DEPTH);
    while node.read(&mut buf).await {
        loop {
            let len = match scanner.scan(&buf) {
                Ok(Some(len)) => len,
                Ok(None) if buf.len() <= MAX_MESSAGE => break,
                // Past any invalidation's size, or not RESP.
                _ => return,
            };
            let frame = buf.split_to(len).freeze();
            match started.take() {
                // The answer to the feed's own command.
                Some(started) => {
                    let answer = match frame.first() {
                        Some(b'+') => Ok(()),
                        _ => Err(String::from_utf8_lossy(
                            frame.get(1..len.saturating_sub(2)).unwrap_or_default(),
                        )
                        .into_owned()),
                    };
                    let refused = answer.is_err();
                    let _ = started.send(answer);
                    if refused {
                        return;
                    }
                }
                None if frame.first() == Some(&b'>') => {
                    if tx.send(Some(frame)).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_is_cut_to_the_keys_read() {
        let message = invalidation(&[Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(
            &message[..],
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert_eq!(
            invalidated(&message).unwrap(),
            [Bytes::from("a"), Bytes::from("b")]
        );
        assert!(invalidated(b">2\r\n$10\r\ninvalidate\r\n_\r\n").is_none());
    }
}
