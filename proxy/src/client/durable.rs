//! Synchronous writes of a client logged in as an ACL user.
//!
//! A synchronous write is normally followed, on the same connection, by the
//! `WAIT` that proves the quorum has it. A connection logged in as the
//! client's user may not be allowed `WAIT`, and Rampart must not give the
//! user rights it lacks. So the write goes out alone on the user's
//! connection, and once it is answered, Rampart writes a marker of its own
//! (`PUBLISH __rampart__:confirm ""`) as a synchronous write on its own link
//! to the primary. Replication is ordered: a quorum that has the marker has
//! the client's write too. A shortfall turns the client's replies into
//! `-NOQUORUM` exactly as it would on Rampart's own links.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{Batch, BatchReply, Link};
use crate::replicate::Durability;
use crate::resp::Request;

/// Sends `requests` on the user's `link` and, once answered, confirms them
/// through `own` (Rampart's write link to the same primary); the client's
/// replies arrive on `reply`.
pub(super) async fn send_confirmed(
    link: &Link,
    own: Link,
    durability: Arc<Durability>,
    requests: Vec<Bytes>,
    reply: oneshot::Sender<BatchReply>,
    max_depth: usize,
) {
    let (tx, rx) = oneshot::channel();
    link.send(Batch::plain(requests, tx)).await;
    tokio::spawn(async move {
        let Ok(mut answer) = rx.await else {
            return;
        };
        if answer.error.is_none() {
            if let Some(error) = confirm(&own, durability).await {
                let (data, _) = crate::replicate::fail_writes(&answer.data, &error, max_depth);
                answer.data = data;
            }
        }
        let _ = reply.send(answer);
    });
}

/// Writes the marker on Rampart's own link as a synchronous write; the
/// error to answer the client's writes with when the quorum fell short.
pub(super) async fn confirm(own: &Link, durability: Arc<Durability>) -> Option<String> {
    let marker = Request::from_args(&["PUBLISH", crate::backend::own::CONFIRM_MARKER, ""]);
    let (tx, rx) = oneshot::channel();
    own.send(Batch {
        requests: vec![marker.raw],
        replies: 1,
        reply: tx.into(),
        durable: Some(durability),
        keep_on_shortfall: false,
    })
    .await;
    let answer = rx.await.ok()?;
    if let Some(error) = answer.error {
        return Some(error.to_string());
    }
    crate::resp::reply::error_text(&answer.data)
}
