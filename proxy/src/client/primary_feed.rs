//! A connection of a client's own to a shard's primary that only the node
//! writes to after one command (`MONITOR`, `CLIENT TRACKING ... BCAST`):
//! over several shards, one per shard beside the client's pipe or links.
//! It ends when its primary stops being the shard's primary (a failover, a
//! switchover) or the connection breaks: what it shows is that node's,
//! and a new primary's is another feed.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::Session;
use crate::net::{ReadHalf, WriteHalf};
use crate::shard::Shard;
use crate::topology::Node;

pub(super) struct PrimaryFeed {
    rd: ReadHalf,
    /// Kept open: the node closes a connection whose writing half is shut.
    _wr: WriteHalf,
    primary: Arc<Node>,
    shard: Arc<Shard>,
    changed: tokio::sync::watch::Receiver<u64>,
}

impl PrimaryFeed {
    /// Connects to `shard`'s primary as `session` and sends `command`;
    /// the error says why it could not.
    pub(super) async fn open(
        shard: &Arc<Shard>,
        session: Session,
        command: &[u8],
    ) -> Result<PrimaryFeed, String> {
        let changed = shard.topology.watch();
        let Some(primary) = shard.topology.primary_node().cloned() else {
            return Err(format!(
                "ERR rampart: shard '{}' has no primary",
                shard.name()
            ));
        };
        let unavailable =
            |e: std::io::Error| format!("ERR rampart: {} unavailable ({e})", primary.addr);
        let (stream, _) = primary.pool.raw(session).await.map_err(unavailable)?;
        let (rd, mut wr) = stream.into_split();
        wr.write_all(command).await.map_err(unavailable)?;
        Ok(PrimaryFeed {
            rd,
            _wr: wr,
            primary,
            shard: shard.clone(),
            changed,
        })
    }

    /// Reads what the node sends next into `buf`; false once the node is
    /// no longer the primary or the connection ended.
    pub(super) async fn read(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            tokio::select! {
                change = self.changed.changed() => {
                    let topology = &self.shard.topology;
                    let same = topology.primary_node().is_some_and(|p| Arc::ptr_eq(p, &self.primary));
                    if change.is_err() || !same {
                        return false;
                    }
                }
                read = self.rd.read_buf(buf) => return matches!(read, Ok(n) if n > 0),
            }
        }
    }
}
