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
//!
//! With `[coordination]`, several instances may move the same key at
//! once (each before running a command on it), and two copies made from
//! one reading could land one after the other, the second over a write
//! made after the first. So keys move with `MIGRATE ... COPY REPLACE`,
//! which the source runs whole, copy included, one at a time: a copy is
//! made only while the source still has the key, that is before any
//! instance deleted it there, and so before anyone wrote it on the
//! target. The nodes must reach each other at the addresses Rampart
//! knows them by. A `MIGRATE` the source gave up on (its connection to
//! the target timed out) may still deliver its copy: the target's
//! connections that carry no name and whose last command was a `RESTORE`
//! (or the `AUTH` or `SELECT` a `MIGRATE` connection opens with) are
//! killed before anything else moves there. Rampart cannot name the
//! source's connection, so this may also close a link of its own that
//! last carried such a command, failing what was in flight on it as any
//! lost connection does; it happens only after a `MIGRATE` failed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp3::types::OwnedFrame;

use super::step::{
    call, confirmation, field, known, primary, refused, Cached, Failed, Known, MoveError,
    CALL_TIMEOUT,
};
use crate::backend::control::frame_int;
use crate::shard::Shard;
use crate::topology::Node;

/// How keys get from the source to the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// `DUMP` on the source, `RESTORE` on the target through Rampart's
    /// own connections: one Rampart moves keys.
    Copy,
    /// `MIGRATE ... COPY REPLACE` run by the source: several instances
    /// may move keys (see the module's doc). `auth`: the backend user and
    /// password the source logs into the target with.
    Migrate {
        auth: Option<(Option<String>, String)>,
    },
}

/// The connections a gate keeps to the primaries it moved keys between.
pub struct Conns {
    source: Option<Cached>,
    target: Option<Cached>,
    /// Shared by every gate: a key is moved through any of them.
    doubtful: Doubtful,
    transfer: Transfer,
}

/// Targets with copies perhaps still on their way: the node's address,
/// and what to cut there.
pub type Doubtful = Arc<std::sync::Mutex<Vec<(String, Suspect)>>>;

/// What may still deliver a copy to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspect {
    /// A connection of Rampart's own, as the node knows it (its id and
    /// address, which together name it even across a restart of the
    /// node, where ids start again).
    Connection(Known),
    /// A source's `MIGRATE` connection, which Rampart cannot name.
    Migrations,
}

/// At most this many connections in doubt are remembered. Never reached
/// in practice: nothing more is sent to a target before its doubts are
/// settled, so each target has at most one, and only primaries that
/// timed out a `RESTORE` have any.
const MAX_DOUBTFUL: usize = 1024;

/// A key on the source when it was read.
struct Found {
    key: Bytes,
    payload: Vec<u8>,
    ttl_ms: i64,
}

impl Conns {
    pub fn new(doubtful: Doubtful, transfer: Transfer) -> Conns {
        Conns {
            source: None,
            target: None,
            doubtful,
            transfer,
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
        if let Transfer::Migrate { auth } = &self.transfer {
            let auth = auth.clone();
            return self.migrate(from, to, keys, hold, auth.as_ref()).await;
        }
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
            .map_err(|failed| doubt(failed, &self.doubtful))?;
        for reply in &replies[..found.len()] {
            refused(reply, &target.addr, "RESTORE")?;
        }
        confirm.check("copying", to, &replies)?;
        let keys: Vec<Bytes> = found.iter().map(|f| f.key.clone()).collect();
        self.delete(from, &source, &keys).await?;
        Ok(found.len())
    }

    /// Moves `keys` with `MIGRATE ... COPY REPLACE` run by the source
    /// (see the module's doc), then deletes them there.
    async fn migrate(
        &mut self,
        from: &Shard,
        to: &Shard,
        keys: &[Bytes],
        hold: Duration,
        auth: Option<&(Option<String>, String)>,
    ) -> Result<usize, MoveError> {
        let source = primary(from, hold).await?;
        let target = primary(to, hold).await?;
        self.settle(&target).await?;
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let (host, port) = host_port(&target.addr)
            .ok_or_else(|| MoveError::Unreachable(format!("{}: no port", target.addr)))?;
        let exists: Vec<Bytes> = std::iter::once(Bytes::from_static(b"EXISTS"))
            .chain(keys.iter().cloned())
            .collect();
        let mut migrate: Vec<Bytes> = [
            "MIGRATE",
            host,
            port,
            "",
            "0",
            &MIGRATE_TIMEOUT.as_millis().to_string(),
            "COPY",
            "REPLACE",
        ]
        .iter()
        .map(|a| Bytes::from(a.to_string()))
        .collect();
        match auth {
            Some((Some(user), password)) => {
                migrate.extend(["AUTH2", user, password].map(|a| Bytes::from(a.to_string())))
            }
            Some((None, password)) => {
                migrate.extend(["AUTH", password].map(|a| Bytes::from(a.to_string())))
            }
            None => {}
        }
        migrate.push(Bytes::from_static(b"KEYS"));
        migrate.extend(keys.iter().cloned());
        let doubt = |doubtful: &Doubtful| {
            remember(doubtful, (target.addr.clone(), Suspect::Migrations));
        };
        let replies = match call(
            &mut self.source,
            &source,
            &[exists, migrate],
            CALL_TIMEOUT + MIGRATE_TIMEOUT,
        )
        .await
        {
            Ok(replies) => replies,
            Err(failed) => {
                doubt(&self.doubtful);
                return Err(failed.error);
            }
        };
        refused(&replies[0], &source.addr, "EXISTS")?;
        if let Err(error) = refused(&replies[1], &source.addr, "MIGRATE") {
            // IOERR: the source gave up on the target, perhaps with the
            // copy sent.
            doubt(&self.doubtful);
            return Err(error);
        }
        let present = frame_int(&replies[0]).unwrap_or(0).max(0) as usize;
        if present == 0 {
            return Ok(0);
        }
        // The target's quorum has the copies before the source's go.
        let mut wait = Vec::new();
        let confirm = confirmation(to, &mut wait);
        if !wait.is_empty() {
            let replies = call(&mut self.target, &target, &wait, confirm.timeout)
                .await
                .map_err(Failed::error)?;
            confirm.check("copying", to, &replies)?;
        }
        self.delete(from, &source, &keys).await?;
        Ok(present)
    }

    /// Deletes the moved `keys` on the source, within its quorum.
    async fn delete(
        &mut self,
        from: &Shard,
        source: &Node,
        keys: &[Bytes],
    ) -> Result<(), MoveError> {
        let mut delete = vec![std::iter::once(Bytes::from_static(b"DEL"))
            .chain(keys.iter().cloned())
            .collect::<Vec<_>>()];
        let confirm = confirmation(from, &mut delete);
        let replies = call(&mut self.source, source, &delete, confirm.timeout)
            .await
            .map_err(Failed::error)?;
        refused(&replies[0], &source.addr, "DEL")?;
        confirm.check("deleting the moved keys", from, &replies)
    }

    /// Kills, on `target`, the connections that may still deliver a copy
    /// (see the module's doc), so that nothing they sent can run after
    /// what is sent now.
    async fn settle(&mut self, target: &Node) -> Result<(), MoveError> {
        let pending: Vec<Suspect> = lock(&self.doubtful)
            .iter()
            .filter(|(addr, _)| *addr == target.addr)
            .map(|(_, suspect)| suspect.clone())
            .collect();
        for suspect in pending {
            let known = match &suspect {
                Suspect::Connection(known) => vec![known.clone()],
                Suspect::Migrations => self.migrations(target).await?,
            };
            for known in known {
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
            }
            lock(&self.doubtful).retain(|(addr, s)| !(*addr == target.addr && *s == suspect));
        }
        Ok(())
    }

    /// The target's connections that may be a source's `MIGRATE`: no
    /// name, last command a `RESTORE` (or the `AUTH` or `SELECT` sent
    /// before it).
    async fn migrations(&mut self, target: &Node) -> Result<Vec<Known>, MoveError> {
        let list = vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"LIST"),
            Bytes::from_static(b"TYPE"),
            Bytes::from_static(b"NORMAL"),
        ];
        let replies = call(&mut self.target, target, &[list], CALL_TIMEOUT)
            .await
            .map_err(Failed::error)?;
        refused(&replies[0], &target.addr, "CLIENT LIST")?;
        let text = crate::backend::control::frame_text(&replies[0]).unwrap_or_default();
        let own = self.target.as_ref().and_then(|c| c.known.clone());
        Ok(text
            .lines()
            .filter(|line| {
                let field = |name: &str| field(line, name).unwrap_or_default();
                field("name").is_empty()
                    && matches!(
                        field("cmd"),
                        "restore" | "restore-asking" | "auth" | "select"
                    )
            })
            .filter_map(known)
            .filter(|k| Some(k) != own.as_ref())
            .collect())
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

/// `MIGRATE`'s own timeout, for the source's exchange with the target.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(5);

fn remember(doubtful: &Doubtful, suspect: (String, Suspect)) {
    let mut list = lock(doubtful);
    if list.contains(&suspect) {
        return;
    }
    if list.len() >= MAX_DOUBTFUL {
        list.remove(0);
    }
    list.push(suspect);
}

fn lock(doubtful: &Doubtful) -> std::sync::MutexGuard<'_, Vec<(String, Suspect)>> {
    doubtful.lock().unwrap_or_else(|p| p.into_inner())
}

/// `host` and `port` of `host:port` or `[v6]:port`.
fn host_port(addr: &str) -> Option<(&str, &str)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// A failed call's error, its connection remembered as in doubt (see
/// [`Conns::settle`]).
fn doubt(failed: Failed, doubtful: &Doubtful) -> MoveError {
    if let Some((addr, known)) = failed.sent_on {
        remember(doubtful, (addr, Suspect::Connection(known)));
    }
    failed.error
}
