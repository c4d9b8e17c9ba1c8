//! Moving keys from one shard's primary to another's, as `MIGRATE` would
//! but through Rampart's own connections (so TLS, ACL users and networks
//! where the nodes cannot reach each other work as they do for clients):
//! `DUMP` and `PTTL` on the source, `RESTORE ... REPLACE` on the target,
//! then `DEL` on the source.
//!
//! Each side's quorum is honoured: the target's copies are confirmed by a
//! `WAIT` before the source's are deleted, and the deletion by one on the
//! source before the move counts as done. Until the deletion, the source's
//! copy is the key (a failed move leaves it there and the next attempt
//! copies it again); after it, the target's. Callers hold the slot's gate,
//! so nothing else changes the key meanwhile.
//!
//! A step given up on (timed out) may still be on its way: a `RESTORE`
//! delayed in the network could reach the target after a later attempt
//! succeeded and a client wrote the key anew there, and put the old value
//! back. So the target's connection of a step given up on is killed on
//! the target (`CLIENT KILL ID .. ADDR ..`) before anything else is moved
//! there: once the target has run the kill, whatever that connection
//! sent has either run already or never will.

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

/// The connections a gate keeps to the primaries it moved keys between.
pub struct Conns {
    source: Option<Cached>,
    target: Option<Cached>,
    /// Shared by every gate: a key is moved through any of them.
    doubtful: Doubtful,
}

/// Connections to targets given up on with commands perhaps still on
/// their way: the node's address, and the connection as the node knows it
/// (its id and address, which together name it even across a restart of
/// the node, where ids start again).
pub type Doubtful = Arc<std::sync::Mutex<Vec<(String, Known)>>>;

/// A connection as the node knows it (`CLIENT INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    id: i64,
    addr: String,
}

/// At most this many connections in doubt are remembered. Never reached
/// in practice: nothing more is sent to a target before its doubts are
/// settled, so each target has at most one, and only primaries that
/// timed out a `RESTORE` have any.
const MAX_DOUBTFUL: usize = 1024;

struct Cached {
    addr: String,
    control: Control,
    known: Option<Known>,
}

/// A key on the source when it was read.
struct Found {
    key: Bytes,
    payload: Vec<u8>,
    ttl_ms: i64,
}

impl Conns {
    pub fn new(doubtful: Doubtful) -> Conns {
        Conns {
            source: None,
            target: None,
            doubtful,
        }
    }

    /// Moves those of `keys` that `from` has to `to`; returns how many it
    /// moved. `hold` bounds the wait for a primary on either side (a
    /// failover in progress).
    pub async fn move_keys(
        &mut self,
        from: &Shard,
        to: &Shard,
        keys: &[Bytes],
        hold: Duration,
    ) -> Result<usize, MoveError> {
        let source = primary(from, hold).await?;
        let found = self.read(&source, keys).await?;
        if found.is_empty() {
            return Ok(0);
        }
        let target = primary(to, hold).await?;
        self.settle(&target).await?;
        let mut restore: Vec<Vec<Bytes>> = found
            .iter()
            .map(|f| {
                vec![
                    Bytes::from_static(b"RESTORE"),
                    f.key.clone(),
                    Bytes::from(f.ttl_ms.to_string()),
                    Bytes::from(f.payload.clone()),
                    Bytes::from_static(b"REPLACE"),
                ]
            })
            .collect();
        let confirm = confirmation(to, &mut restore);
        let replies = call(&mut self.target, &target, &restore, confirm.timeout)
            .await
            .map_err(|failed| failed.doubt(&self.doubtful))?;
        for reply in &replies[..found.len()] {
            refused(reply, &target.addr, "RESTORE")?;
        }
        confirm.check("copying", to, &replies)?;

        let mut delete = vec![std::iter::once(Bytes::from_static(b"DEL"))
            .chain(found.iter().map(|f| f.key.clone()))
            .collect::<Vec<_>>()];
        let confirm = confirmation(from, &mut delete);
        let replies = call(&mut self.source, &source, &delete, confirm.timeout)
            .await
            .map_err(Failed::error)?;
        refused(&replies[0], &source.addr, "DEL")?;
        confirm.check("deleting the moved keys", from, &replies)?;
        Ok(found.len())
    }

    /// Kills, on `target`, its connections given up on (see the module's
    /// doc), so that nothing they sent can run after what is sent now.
    async fn settle(&mut self, target: &Node) -> Result<(), MoveError> {
        let pending: Vec<Known> = lock(&self.doubtful)
            .iter()
            .filter(|(addr, _)| *addr == target.addr)
            .map(|(_, known)| known.clone())
            .collect();
        for known in pending {
            let kill = vec![
                Bytes::from_static(b"CLIENT"),
                Bytes::from_static(b"KILL"),
                Bytes::from_static(b"ID"),
                Bytes::from(known.id.to_string()),
                Bytes::from_static(b"ADDR"),
                Bytes::from(known.addr.clone()),
            ];
            // A kill that arrives late only kills: not itself in doubt.
            let replies = call(&mut self.target, target, &[kill], CALL_TIMEOUT)
                .await
                .map_err(Failed::error)?;
            // 1: killed now; 0: gone already (its bytes with it).
            refused(&replies[0], &target.addr, "CLIENT KILL")?;
            lock(&self.doubtful).retain(|(addr, k)| !(*addr == target.addr && *k == known));
        }
        Ok(())
    }

    /// `DUMP` and `PTTL` of each key on the source: those it has.
    async fn read(&mut self, source: &Arc<Node>, keys: &[Bytes]) -> Result<Vec<Found>, MoveError> {
        let commands: Vec<Vec<Bytes>> = keys
            .iter()
            .flat_map(|key| {
                [
                    vec![Bytes::from_static(b"DUMP"), key.clone()],
                    vec![Bytes::from_static(b"PTTL"), key.clone()],
                ]
            })
            .collect();
        let replies = call(&mut self.source, source, &commands, CALL_TIMEOUT)
            .await
            .map_err(Failed::error)?;
        let mut found = Vec::new();
        for (key, pair) in keys.iter().zip(replies.chunks(2)) {
            let [dump, ttl] = pair else { continue };
            refused(dump, &source.addr, "DUMP")?;
            let OwnedFrame::BlobString { data, .. } = dump else {
                continue;
            };
            match frame_int(ttl) {
                // Expired between the two: gone.
                Some(-2) => continue,
                Some(ms) => found.push(Found {
                    key: key.clone(),
                    payload: data.clone(),
                    ttl_ms: ms.max(0),
                }),
                None => {
                    return Err(MoveError::Unreachable(format!(
                        "{}: PTTL answered {ttl:?}",
                        source.addr
                    )))
                }
            }
        }
        Ok(found)
    }
}

/// How long a node may take over one step that waits for no replica.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `WAIT` after a step, when the shard's writes are synchronous.
struct Confirmation {
    /// The index of the `WAIT`'s reply, and the acknowledgements needed.
    wait: Option<(usize, u32, bool)>,
    timeout: Duration,
}

/// Adds a marker write and a `WAIT` for the shard's quorum to `commands`
/// when its writes are synchronous (the marker makes the `WAIT` cover the
/// step's commands on this connection, as for clients' writes).
fn confirmation(shard: &Shard, commands: &mut Vec<Vec<Bytes>>) -> Confirmation {
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
    fn check(
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
async fn call(
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
struct Failed {
    error: MoveError,
    sent_on: Option<(String, Known)>,
}

impl Failed {
    fn error(self) -> MoveError {
        self.error
    }

    /// The error, the connection remembered as in doubt (see
    /// [`Conns::settle`]).
    fn doubt(self, doubtful: &Doubtful) -> MoveError {
        if let Some(sent_on) = self.sent_on {
            let mut list = lock(doubtful);
            if list.len() >= MAX_DOUBTFUL {
                list.remove(0);
            }
            list.push(sent_on);
        }
        self.error
    }
}

fn lock(doubtful: &Doubtful) -> std::sync::MutexGuard<'_, Vec<(String, Known)>> {
    doubtful.lock().unwrap_or_else(|p| p.into_inner())
}

/// The id and address in a `CLIENT INFO` line (`id=7 addr=127.0.0.1:5 ...`).
fn known(line: &str) -> Option<Known> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Known {
        id: field("id")?.parse().ok()?,
        addr: field("addr")?.to_string(),
    })
}

/// An error reply as a [`MoveError::Refused`].
fn refused(reply: &OwnedFrame, addr: &str, command: &'static str) -> Result<(), MoveError> {
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
