//! One step of a move on one node: the connection a gate keeps to it, a
//! pipelined call with its timeout, the `WAIT` that confirms a step on a
//! synchronous shard, and a node's error reply as a [`MoveError`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;

use crate::backend::control::{frame_int, Control};
use crate::backend::own::WAIT_MARKER;
use crate::shard::Shard;
use crate::topology::Node;

/// Why keys could not be moved; they are where they were (on the source)
/// unless the error says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("shard '{0}' has no reachable primary")]
    NoPrimary(String),
    /// The connection failed or timed out.
    #[error("{0}")]
    Unreachable(String),
    /// A node answered with an error.
    #[error("{addr} refused {command}: {error}")]
    Refused {
        addr: String,
        command: &'static str,
        error: String,
    },
    /// The copies or the deletion reached fewer replicas than the shard's
    /// quorum within its timeout.
    #[error("{step} on shard '{shard}' reached {got} of the {need} replicas it requires")]
    Shortfall {
        step: &'static str,
        shard: String,
        got: i64,
        need: u32,
    },
}

impl MoveError {
    /// Whether trying again later may succeed (a failover, a replica
    /// catching up), as opposed to a node refusing the command.
    pub fn may_pass(&self) -> bool {
        !matches!(self, MoveError::Refused { .. })
    }
}

/// A connection as the node knows it (`CLIENT INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub(super) id: i64,
    pub(super) addr: String,
}

/// A gate's connection to a primary.
pub(super) struct Cached {
    pub(super) addr: String,
    pub(super) control: Control,
    pub(super) known: Option<Known>,
}

/// How long a node may take over one step that waits for no replica.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `WAIT` after a step, when the shard's writes are synchronous.
pub(super) struct Confirmation {
    /// The index of the `WAIT`'s reply, and the acknowledgements needed.
    wait: Option<(usize, u32, bool)>,
    pub(super) timeout: Duration,
}

/// Adds a marker write and a `WAIT` for the shard's quorum to `commands`
/// when its writes are synchronous (the marker makes the `WAIT` cover the
/// step's commands on this connection, as for clients' writes).
pub(super) fn confirmation(shard: &Shard, commands: &mut Vec<Vec<Bytes>>) -> Confirmation {
    let durability = &shard.topology.durability;
    if !durability.is_sync() {
        return Confirmation {
            wait: None,
            timeout: CALL_TIMEOUT,
        };
    }
    let req = durability.requirement();
    commands.push(vec![
        Bytes::from_static(b"PUBLISH"),
        Bytes::from_static(WAIT_MARKER.as_bytes()),
        Bytes::new(),
    ]);
    commands.push(vec![
        Bytes::from_static(b"WAIT"),
        Bytes::from(req.acks.to_string()),
        Bytes::from(req.timeout_ms.to_string()),
    ]);
    Confirmation {
        wait: Some((commands.len() - 1, req.acks, req.fail_on_shortfall)),
        timeout: CALL_TIMEOUT + Duration::from_millis(u64::from(req.timeout_ms)),
    }
}

impl Confirmation {
    pub(super) fn check(
        &self,
        step: &'static str,
        shard: &Shard,
        replies: &[OwnedFrame],
    ) -> Result<(), MoveError> {
        let Some((at, need, fail)) = self.wait else {
            return Ok(());
        };
        let got = replies.get(at).and_then(frame_int).unwrap_or(0);
        if got < i64::from(need) && fail {
            return Err(MoveError::Shortfall {
                step,
                shard: shard.name().to_string(),
                got,
                need,
            });
        }
        Ok(())
    }
}

/// The shard's primary, waiting up to `hold` for one.
pub async fn primary(shard: &Shard, hold: Duration) -> Result<Arc<Node>, MoveError> {
    let topology = &shard.topology;
    let mut changed = topology.watch();
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        if let Some(node) = topology.primary() {
            return Ok(node.clone());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(MoveError::NoPrimary(shard.name().to_string()))
            }
            result = changed.changed() => if result.is_err() {
                return Err(MoveError::NoPrimary(shard.name().to_string()));
            },
        }
    }
}

/// Runs `commands` on `node` over the cached connection (opened, or
/// reopened for another primary, as needed; dropped on failure).
pub(super) async fn call(
    cached: &mut Option<Cached>,
    node: &Node,
    commands: &[Vec<Bytes>],
    timeout: Duration,
) -> Result<Vec<OwnedFrame>, Failed> {
    let unreachable = |why: String| Failed {
        error: MoveError::Unreachable(why),
        sent_on: None,
    };
    if cached.as_ref().is_none_or(|c| c.addr != node.addr) {
        *cached = None;
        let mut control = tokio::time::timeout(CALL_TIMEOUT, node.pool.control())
            .await
            .map_err(|_| unreachable(format!("{}: connect timed out", node.addr)))?
            .map_err(|e| unreachable(format!("{}: {e}", node.addr)))?;
        let known = control
            .call(&["CLIENT", "INFO"], CALL_TIMEOUT)
            .await
            .ok()
            .as_ref()
            .and_then(crate::backend::control::frame_text)
            .and_then(|line| known(&line));
        *cached = Some(Cached {
            addr: node.addr.clone(),
            control,
            known,
        });
    }
    let Some(conn) = cached.as_mut() else {
        return Err(unreachable(node.addr.clone()));
    };
    match conn.control.pipeline(commands, timeout).await {
        Ok(replies) => Ok(replies),
        Err(e) => {
            let sent_on = cached.take().and_then(|c| c.known);
            Err(Failed {
                error: MoveError::Unreachable(format!("{}: {e}", node.addr)),
                sent_on: sent_on.map(|known| (node.addr.clone(), known)),
            })
        }
    }
}

/// A call that failed: why, and the connection its commands may still be
/// on their way on (unknown when the node did not say who it was).
pub(super) struct Failed {
    pub(super) error: MoveError,
    pub(super) sent_on: Option<(String, Known)>,
}

impl Failed {
    pub(super) fn error(self) -> MoveError {
        self.error
    }
}

/// A field of a `CLIENT INFO` or `CLIENT LIST` line (`id=7 addr=... `).
pub(super) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// The id and address in a `CLIENT INFO` line (`id=7 addr=127.0.0.1:5 ...`).
pub(super) fn known(line: &str) -> Option<Known> {
    Some(Known {
        id: field(line, "id")?.parse().ok()?,
        addr: field(line, "addr")?.to_string(),
    })
}

/// An error reply as a [`MoveError::Refused`].
pub(super) fn refused(
    reply: &OwnedFrame,
    addr: &str,
    command: &'static str,
) -> Result<(), MoveError> {
    let error = match reply {
        OwnedFrame::SimpleError { data, .. } => data.clone(),
        OwnedFrame::BlobError { data, .. } => String::from_utf8_lossy(data).into_owned(),
        _ => return Ok(()),
    };
    Err(MoveError::Refused {
        addr: addr.to_string(),
        command,
        error,
    })
}
