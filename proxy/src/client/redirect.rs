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

use super::piped::{Interposer, Reserved};
use super::registry::{Order, Registration};
use super::session::{Asker, Session};
use crate::context::Context;
use crate::net::Stream;
use crate::resp::{ReplyScanner, Request, Value};
use crate::topology::Node;

const NO_SUCH_CLIENT: &str = "ERR The client ID you want redirect to does not exist";

/// How long a redirect waits for its target to open its connection.
const RESERVE_WITHIN: Duration = Duration::from_secs(2);

/// `req` with a `REDIRECT <Rampart id>` turned into the node's id of that
/// client's connection to `node` (noted in `interposer`, to translate
/// the node's answers back); other requests as they are.
pub(super) async fn redirect_tracking(
    asker: Asker<'_>,
    interposer: &mut Interposer,
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
    let node_id = if client == asker.session.id {
        pipe_id_on(asker.session, asker.registration, node)
    } else {
        target_on(asker.ctx, client, node).await
    }
    .ok_or_else(|| Value::err(NO_SUCH_CLIENT))?;
    interposer.redirected(node_id, client);
    let mut args = req.args();
    args[at + 1] = Bytes::from(node_id.to_string());
    Ok(Request::from_args(&args))
}

/// The node's id of client `client`'s connection to `node`: its pipe, or
/// one it opens now and keeps in reserve.
async fn target_on(ctx: &Context, client: u64, node: &Arc<Node>) -> Option<i64> {
    let target = ctx.registry.get(client)?;
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

/// Another client names this one (`me`) as its redirect target on
/// `node`: the node's id of this client's connection there, opened now
/// and kept in `reserved` if need be. None if this client is piped to
/// another node, or the connection cannot be opened.
pub(super) async fn reserve(
    me: Asker<'_>,
    reserved: &mut Option<Reserved>,
    node: &Arc<Node>,
) -> Option<i64> {
    if let Some(id) = pipe_id_on(me.session, me.registration, node) {
        return Some(id);
    }
    if let Some(reserved) = reserved {
        return (reserved.node == node.addr).then_some(reserved.id);
    }
    let session = me.session.link_session();
    let (proto, db, user) = (session.proto, session.db, session.user.clone());
    let (stream, id) = node.pool.raw(session).await.ok()?;
    let id = id?;
    let addr = node.addr.clone();
    me.registration
        .entry
        .publish(|snap| snap.pipe = Some((addr, id)));
    *reserved = Some(Reserved {
        node: node.addr.clone(),
        stream,
        id,
        proto,
        db,
        user,
        buf: BytesMut::with_capacity(4096),
        scanner: ReplyScanner::new(me.ctx.config.limits.max_reply_depth),
    });
    Some(id)
}

/// The node sent something on the reserved connection: its pushes
/// (invalidations for a RESP3 client), to be written to the client
/// between its replies; nothing else is expected. A reserved connection
/// the node closed or that makes no sense is dropped: the redirecting
/// client learns of it from the node (`tracking-redir-broken`).
pub(super) fn pushes(
    slot: &mut Option<Reserved>,
    registration: &Registration,
    read: std::io::Result<usize>,
) -> BytesMut {
    let mut pushes = BytesMut::new();
    let Some(reserved) = slot.as_mut() else {
        return pushes;
    };
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
        *slot = None;
        registration.entry.publish(|snap| snap.pipe = None);
    }
    pushes
}

/// The node's id of this client's pipe to `node`, if it is piped there.
pub(super) fn pipe_id_on(
    session: &Session,
    registration: &Registration,
    node: &Node,
) -> Option<i64> {
    let (addr, id) = registration.entry.snapshot().pipe?;
    (session.pipe.is_some() && addr == node.addr).then_some(id)
}

/// The connection kept in reserve, when it can become this client's pipe
/// to `node`: opened to that node, for the session the client has now,
/// with nothing half received on it.
pub(super) fn take_reserved(
    slot: &mut Option<Reserved>,
    session: &Session,
    node: &Node,
) -> Option<(Stream, i64)> {
    let reserved = slot.take()?;
    let session = session.link_session();
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
