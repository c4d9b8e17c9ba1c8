//! What comes back for a batch, and where it goes: a batch's replies as
//! the node wrote them, and the client's channel with the account they are
//! charged to (see [`super::charge`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::budget::{Account, Charge};

/// The replies to a batch.
#[derive(Debug, Default)]
pub struct BatchReply {
    /// The replies that arrived, exactly as the backend wrote them.
    pub data: Bytes,
    /// How many replies `data` holds.
    pub got: usize,
    /// Why the remaining replies will never come, as an error reply text.
    pub error: Option<Arc<str>>,
    /// `data` as charged to the client it is for (see [`super::charge`]).
    pub charge: Option<Charge>,
}

impl BatchReply {
    pub(super) fn failed(error: Arc<str>) -> BatchReply {
        BatchReply {
            data: Bytes::new(),
            got: 0,
            error: Some(error),
            charge: None,
        }
    }
}

/// Where a batch's replies go: the client's channel, and the account they
/// are charged to (none for Rampart's own requests).
pub struct ReplyTo {
    tx: oneshot::Sender<BatchReply>,
    account: Option<Arc<Account>>,
}

impl ReplyTo {
    pub fn charged(tx: oneshot::Sender<BatchReply>, account: Arc<Account>) -> ReplyTo {
        ReplyTo {
            tx,
            account: Some(account),
        }
    }

    /// A charge of `bytes` to the client's account, if it has one: for
    /// replies still arriving, which the link holds for the client.
    pub fn charge(&self, bytes: usize) -> Option<Charge> {
        self.account.as_ref().map(|account| account.charge(bytes))
    }

    /// Nobody will read the replies: the client was evicted, or dropped
    /// the receiving end (it left, and nothing needs what it was owed).
    /// The link can drop them as they arrive instead of holding them.
    pub fn is_unwanted(&self) -> bool {
        self.tx.is_closed() || self.account.as_ref().is_some_and(|a| a.is_evicted())
    }

    /// Delivers the replies, charged to the client's account for exactly
    /// the bytes they hold.
    pub fn send(self, mut reply: BatchReply) -> Result<(), BatchReply> {
        let bytes = reply.data.len();
        match (&mut reply.charge, &self.account) {
            (Some(charge), _) => charge.resize(bytes),
            (None, Some(account)) if bytes > 0 => reply.charge = Some(account.charge(bytes)),
            (None, _) => {}
        }
        self.tx.send(reply)
    }
}

impl From<oneshot::Sender<BatchReply>> for ReplyTo {
    fn from(tx: oneshot::Sender<BatchReply>) -> ReplyTo {
        ReplyTo { tx, account: None }
    }
}
