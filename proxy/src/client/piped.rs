//! What a client piped to a node connection of its own keeps besides the
//! connection: the commands whose answers Rampart makes or amends in the
//! node's stream (see `interpose.rs`), and a connection opened ahead for
//! another client's tracking redirect (see `redirect.rs`). Kept apart from
//! the code that uses them so that `connection.rs` can hold them without
//! depending on that code.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::net::Stream;
use crate::resp::command::Answer;
use crate::resp::{Proto, ReplyScanner, Request};

/// A piped client's command whose answer Rampart makes or amends.
pub(super) enum Interposed {
    /// Answered by Rampart where the node echoes the marker.
    Answer {
        marker: Bytes,
        local: Answer,
        req: Request,
    },
    /// Run by the node too, which must know of it; its reply, the last
    /// before the marker's echo, is amended.
    Amend { marker: Bytes, how: Amend },
    /// Refused by Rampart. The node is sent the marker as a command: it
    /// refuses that (unknown) command in every mode, and inside `MULTI`
    /// dooms the transaction as Redis's own refusal while queueing does;
    /// its error is replaced by Rampart's.
    Refused { marker: Bytes, error: String },
}

/// How a node's reply is amended.
pub(super) enum Amend {
    /// `CLIENT GETREDIR`, `TRACKINGINFO`: the node's id of the redirect
    /// target is turned back into that target's Rampart id.
    RedirectId,
    /// `HELLO`: the node's connection switches protocol with the client,
    /// but the reply is Rampart's (its client id, its checks), unless the
    /// node refused the command (RESP2 subscribed mode).
    Replace { local: Answer, req: Request },
    /// A write on a shard whose writes wait for a quorum: its reply is
    /// held until Rampart's own marker write after it is confirmed (see
    /// `pipe_guard.rs`), and turned into the shortfall's error if it fell
    /// short.
    Confirm {
        durability: Arc<crate::replicate::Durability>,
        own: crate::backend::Link,
    },
}

impl Interposed {
    pub(super) fn marker(&self) -> &[u8] {
        match self {
            Interposed::Answer { marker, .. }
            | Interposed::Amend { marker, .. }
            | Interposed::Refused { marker, .. } => marker,
        }
    }
}

/// What a piped connection keeps to interpose: the commands sent and not
/// answered yet, in order; the node's replies held back while a reply to
/// amend is awaited; and the redirect targets given to `TRACKING`.
#[derive(Default)]
pub(super) struct Interposer {
    pub(super) queue: std::collections::VecDeque<Interposed>,
    pub(super) held: Vec<BytesMut>,
    pub(super) sent: u64,
    /// `(node connection id, Rampart client id)` of each redirect target
    /// named, the latest last (a few: a client names one at a time).
    redirects: Vec<(i64, u64)>,
    /// Between `MULTI` and `EXEC`/`DISCARD` on the node: a marker `PING`
    /// would be queued, not echoed, so nothing is interposed but refusals.
    pub(super) multi: bool,
    /// `CLIENT REPLY OFF`, or `SKIP` for the next command: the node will
    /// not echo a marker, so nothing waits for one.
    pub(super) replies_off: bool,
    pub(super) skip_next: bool,
    /// The client sent a command a RESP2 subscriber may not: it has left
    /// subscribed mode, and can read and write (see `pipe_demoted`).
    pub(super) beyond_subscribe: bool,
}

impl Interposer {
    /// Remembers that the node knows Rampart client `client` as `node_id`.
    pub fn redirected(&mut self, node_id: i64, client: u64) {
        self.redirects.retain(|(n, _)| *n != node_id);
        if self.redirects.len() >= 8 {
            self.redirects.remove(0);
        }
        self.redirects.push((node_id, client));
    }

    pub(super) fn client_of(&self, node_id: i64) -> Option<u64> {
        self.redirects
            .iter()
            .find(|(n, _)| *n == node_id)
            .map(|(_, c)| *c)
    }
}

/// A connection to a node kept for the client that owns it, named as a
/// redirect target before it was piped anywhere.
pub(super) struct Reserved {
    pub(super) node: String,
    pub(super) stream: Stream,
    pub(super) id: i64,
    /// What the connection was opened as: it can become the client's pipe
    /// only while the client's session is the same.
    pub(super) proto: Proto,
    pub(super) db: i64,
    pub(super) user: Option<Arc<crate::backend::Credentials>>,
    /// What the node sent on it, cut into frames.
    pub(super) buf: BytesMut,
    pub(super) scanner: ReplyScanner,
}

impl Reserved {
    /// Reads what the node sends on the reserved connection (never
    /// resolves without one).
    pub(super) async fn read(reserved: Option<&mut Reserved>) -> std::io::Result<usize> {
        match reserved {
            Some(r) => r.stream.read_buf(&mut r.buf).await,
            None => std::future::pending().await,
        }
    }
}
