//! `CLIENT TRACKING ON REDIRECT <id>`: `<id>` is a Rampart client, and the
//! node must be given a connection of that client's to it instead.
//!
//! A target already piped to the node (subscribed to
//! `__redis__:invalidate`, say) is given its pipe's id. Any other
//! connected client is, as on Redis, a valid target too: it is asked to
//! open a connection to the node (in its own protocol) and keep it in
//! reserve, and that connection's id is given. A RESP3 target gets the
//! node's invalidation pushes from it at once, written between its
//! replies; for a RESP2 target that has not subscribed to
//! `__redis__:invalidate` the node drops them, as Redis does. When the
//! target subscribes, the reserved connection becomes its pipe, and the
//! messages flow there.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::connection::Connection;
use super::piped::Reserved;
use super::registry::Order;
use crate::net::Stream;
use crate::resp::{ReplyScanner, Request, Value};
use crate::topology::Node;

const NO_SUCH_CLIENT: &str = "ERR The client ID you want redirect to does not exist";

/// How long a redirect waits for its target to open its connection.
const RESERVE_WITHIN: Duration = Duration::from_secs(2);

impl Connection {
    /// `req` with a `REDIRECT <Rampart id>` turned into the node's id of
    /// that client's connection to `node`; other requests as they are.
    pub(super) async fn redirect_tracking(
        &mut self,
        req: Request,
        node: &Arc<Node>,
    ) -> Result<Request, Value> {
        let is_tracking = req.name().as_bytes() == b"CLIENT"
            && req
                .arg_upper(1)
                .is_some_and(|s| s.as_bytes() == b"TRACKING");
        let Some(at) = (2..req.argc()).find(|&i| {
            is_tracking
                && req
                    .arg_upper(i)
                    .is_some_and(|a| a.as_bytes() == b"REDIRECT")
        }) else {
            return Ok(req);
        };
        let client = req
            .arg(at + 1)
            .and_then(crate::resp::request::parse_i64)
            .and_then(|id| u64::try_from(id).ok())
            .ok_or_else(|| Value::err(NO_SUCH_CLIENT))?;
        let node_id = if client == self.session.id {
            self.pipe_id_on(node)
        } else {
            self.target_on(client, node).await
        }
        .ok_or_else(|| Value::err(NO_SUCH_CLIENT))?;
        self.interposer.redirected(node_id, client);
        let mut args = req.args();
        args[at + 1] = Bytes::from(node_id.to_string());
        Ok(Request::from_args(&args))
    }

    /// The node's id of client `client`'s connection to `node`: its pipe,
    /// or one it opens now and keeps in reserve.
    async fn target_on(&self, client: u64, node: &Arc<Node>) -> Option<i64> {
        let target = self.ctx.registry.get(client)?;
        if let Some((addr, id)) = target.snapshot().pipe {
            return (addr == node.addr).then_some(id);
        }
        let (done, answer) = oneshot::channel();
        if !target.order(Order::Reserve {
            node: node.clone(),
            done,
        }) {
            return None;
        }
        tokio::time::timeout(RESERVE_WITHIN, answer)
            .await
            .ok()?
            .ok()
            .flatten()
    }

    /// Another client names this one as its redirect target on `node`:
    /// the node's id of this client's connection there, opened now if
    /// need be. None if this client is piped to another node, or the
    /// connection cannot be opened.
    pub(super) async fn reserve(&mut self, node: &Arc<Node>) -> Option<i64> {
        if let Some(id) = self.pipe_id_on(node) {
            return Some(id);
        }
        if let Some(reserved) = &self.reserved {
            return (reserved.node == node.addr).then_some(reserved.id);
        }
        let session = self.session.link_session();
        let (proto, db, user) = (session.proto, session.db, session.user.clone());
        let (stream, id) = node.pool.raw(session).await.ok()?;
        let id = id?;
        let addr = node.addr.clone();
        self.registration
            .entry
            .publish(|snap| snap.pipe = Some((addr, id)));
        self.reserved = Some(Reserved {
            node: node.addr.clone(),
            stream,
            id,
            proto,
            db,
            user,
            buf: BytesMut::with_capacity(4096),
            scanner: ReplyScanner::new(self.ctx.config.limits.max_reply_depth),
        });
        Some(id)
    }

    /// The node sent something on the reserved connection: its pushes
    /// (invalidations for a RESP3 client) are written to the client
    /// between its replies; nothing else is expected. Returns false when
    /// the client's connection is gone. A reserved connection the node
    /// closed or that makes no sense is dropped: the redirecting client
    /// learns of it from the node (`tracking-redir-broken`).
    pub(super) async fn reserved_sent(&mut self, read: std::io::Result<usize>) -> bool {
        let Some(reserved) = self.reserved.as_mut() else {
            return true;
        };
        let mut pushes = BytesMut::new();
        let mut broken = !matches!(read, Ok(n) if n > 0);
        while !broken {
            match reserved.scanner.scan(&reserved.buf) {
                Ok(Some(len)) => {
                    let frame = reserved.buf.split_to(len);
                    if frame.first() == Some(&b'>') {
                        pushes.unsplit(frame);
                    }
                }
                Ok(None) => break,
                Err(_) => broken = true,
            }
        }
        if reserved.buf.len() > crate::backend::cutter::RETURN_ABOVE {
            broken = true;
        }
        if broken {
            self.reserved = None;
            self.registration.entry.publish(|snap| snap.pipe = None);
        }
        pushes.is_empty() || self.replies.write_raw(&pushes).await.is_ok()
    }

    /// The node's id of this client's pipe to `node`, if it is piped there.
    pub(super) fn pipe_id_on(&self, node: &Node) -> Option<i64> {
        let (addr, id) = self.registration.entry.snapshot().pipe?;
        (self.session.pipe.is_some() && addr == node.addr).then_some(id)
    }

    /// The connection kept in reserve, when it can become this client's
    /// pipe to `node`: opened to that node, for the session the client
    /// has now, with nothing half received on it.
    pub(super) fn take_reserved(&mut self, node: &Node) -> Option<(Stream, i64)> {
        let reserved = self.reserved.take()?;
        let session = self.session.link_session();
        let same = reserved.proto == session.proto
            && reserved.db == session.db
            && match (&reserved.user, &session.user) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
        if !same || reserved.node != node.addr || !reserved.buf.is_empty() {
            return None;
        }
        Some((reserved.stream, reserved.id))
    }
}
