//! Keyspace notifications from every shard, where subscribers hear them.
//!
//! A subscribed client is piped to the first shard's primary, where
//! `PUBLISH` goes. Redis raises `__keyspace@<db>__:<key>` and
//! `__keyevent@<db>__:<event>` on the node that holds the key, so with
//! several shards a subscriber would hear only the first shard's keys
//! and miss every other key's events without a sign (Redis Cluster leaves
//! it to the client to subscribe on every node). So, for every other shard,
//! a relay subscribes to both families on its primary and publishes each
//! event on the first shard's primary: a subscriber hears every key's
//! events, each shard's in the order that shard raised them.
//!
//! Like Redis's own pub/sub, delivery is at most once: events raised while
//! a relay reconnects (a primary changed, a node restarted), or past what
//! the node buffers for a subscriber that cannot keep up
//! (`client-output-buffer-limit pubsub`), are not heard. Only the
//! instance that runs a shard's failover relays it, so several instances
//! do not publish one event several times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp3::types::OwnedFrame;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Shards;
use crate::topology::Node;

/// The two channel families Redis raises notifications on.
const PATTERNS: [&str; 2] = ["__keyspace@*__:*", "__keyevent@*__:*"];
/// How often the relays are checked against the shards' primaries: a
/// relay follows a new primary within this.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Before connecting again after a relay's connection failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Before trying again after a node refused the subscription or a
/// `PUBLISH` (Rampart's user lacks the right, say): it will not change
/// soon, and each try is logged.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Most events published in one round trip.
const BATCH: usize = 512;
/// How long the first shard's primary may take to answer a batch.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this instance relays the events of the shard named: the one
/// that runs its failover.
pub type Leads = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One shard's relay as it runs: from its primary to the first shard's.
struct Relay {
    from: Arc<Node>,
    to: Arc<Node>,
    task: JoinHandle<()>,
}

/// Keeps one relay per shard but the first, each from the shard's
/// primary to the first shard's, until `shutdown`. Relays nothing with
/// one shard.
pub async fn relay_keyspace_events(
    shards: Arc<Shards>,
    leads: Leads,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, Relay> = HashMap::new();
    loop {
        let mut wanted = wanted(&shards, &leads);
        running.retain(|shard, relay| {
            let keep = wanted.get(shard).is_some_and(|(from, to)| {
                Arc::ptr_eq(from, &relay.from) && Arc::ptr_eq(to, &relay.to)
            });
            if keep {
                wanted.remove(shard);
            } else {
                relay.task.abort();
            }
            keep
        });
        for (shard, (from, to)) in wanted {
            tracing::debug!(%shard, from = %from.addr, to = %to.addr, "relaying keyspace notifications");
            let task = tokio::spawn(relay(from.clone(), to.clone()));
            running.insert(shard, Relay { from, to, task });
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => break,
        }
    }
    for relay in running.values() {
        relay.task.abort();
    }
}

/// The relays there should be: for each shard in service but the first
/// that this instance leads, its primary and the first shard's. The
/// epoch's primary is taken whatever its health: while it is down the
/// relay cannot connect and retries, and the moment a failover names
/// another, the relay moves to it.
fn wanted(shards: &Shards, leads: &Leads) -> HashMap<String, (Arc<Node>, Arc<Node>)> {
    let serving = shards.all_serving();
    let Some((first, others)) = serving.split_first() else {
        return HashMap::new();
    };
    let Some(to) = first.topology.primary_node() else {
        return HashMap::new();
    };
    others
        .iter()
        .filter(|shard| leads(shard.name()))
        .filter_map(|shard| {
            let from = shard.topology.primary_node()?;
            Some((shard.name().to_string(), (from.clone(), to.clone())))
        })
        .collect()
}

/// Relays from `from` to `to` until aborted, connecting again after a
/// failure.
async fn relay(from: Arc<Node>, to: Arc<Node>) {
    loop {
        let pause = match pass_on(&from, &to).await {
            Ok(()) => RETRY_AFTER,
            Err(Failure::Io(e)) => {
                tracing::debug!(from = %from.addr, to = %to.addr, error = %e, "keyspace notification relay failed");
                RETRY_AFTER
            }
            Err(Failure::Refused(why)) => {
                tracing::warn!(from = %from.addr, to = %to.addr, %why, "keyspace notifications of this shard cannot be relayed");
                REFUSED_RETRY_AFTER
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Why a relay's connection ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A node answered with an error: no use trying again at once.
    #[error("{0}")]
    Refused(String),
}

/// One connection's worth of relaying: subscribes on `from` and publishes
/// each event on `to`, until either connection fails.
async fn pass_on(from: &Node, to: &Node) -> Result<(), Failure> {
    let mut source = from.pool.control().await?;
    source
        .send(&["PSUBSCRIBE", PATTERNS[0], PATTERNS[1]])
        .await?;
    let mut target = to.pool.control().await?;
    loop {
        let mut publishes = Vec::new();
        for frame in source.pushes(BATCH).await? {
            match frame {
                OwnedFrame::SimpleError { data, .. } => return Err(Failure::Refused(data)),
                frame => publishes.extend(event(frame)),
            }
        }
        if publishes.is_empty() {
            continue;
        }
        for reply in target.pipeline(&publishes, PUBLISH_TIMEOUT).await? {
            if let OwnedFrame::SimpleError { data, .. } = reply {
                return Err(Failure::Refused(data));
            }
        }
    }
}

/// The `PUBLISH` that passes on a `pmessage` push; nothing for anything
/// else (the subscriptions' confirmations).
fn event(frame: OwnedFrame) -> Option<Vec<Vec<u8>>> {
    let OwnedFrame::Push { data, .. } = frame else {
        return None;
    };
    let [kind, _pattern, channel, message] = <[OwnedFrame; 4]>::try_from(data).ok()?;
    if blob(kind)? != b"pmessage" {
        return None;
    }
    Some(vec![b"PUBLISH".to_vec(), blob(channel)?, blob(message)?])
}

fn blob(frame: OwnedFrame) -> Option<Vec<u8>> {
    match frame {
        OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_frame(s: &str) -> OwnedFrame {
        OwnedFrame::BlobString {
            data: s.as_bytes().to_vec(),
            attributes: None,
        }
    }

    fn push(parts: &[&str]) -> OwnedFrame {
        OwnedFrame::Push {
            data: parts.iter().map(|p| blob_frame(p)).collect(),
            attributes: None,
        }
    }

    #[test]
    fn a_pmessage_becomes_a_publish_of_its_channel_and_message() {
        let publish = event(push(&[
            "pmessage",
            "__keyspace@*__:*",
            "__keyspace@0__:user:7",
            "set",
        ]));
        assert_eq!(
            publish,
            Some(vec![
                b"PUBLISH".to_vec(),
                b"__keyspace@0__:user:7".to_vec(),
                b"set".to_vec()
            ])
        );
    }

    #[test]
    fn confirmations_and_other_frames_pass_on_nothing() {
        let confirmation = OwnedFrame::Push {
            data: vec![
                blob_frame("psubscribe"),
                blob_frame("__keyspace@*__:*"),
                OwnedFrame::Number {
                    data: 1,
                    attributes: None,
                },
            ],
            attributes: None,
        };
        assert_eq!(event(confirmation), None);
        assert_eq!(event(push(&["message", "a", "b", "c"])), None);
        assert_eq!(event(blob_frame("pmessage")), None);
    }
}
