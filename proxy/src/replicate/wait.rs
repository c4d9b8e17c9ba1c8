//! The `WAIT` that makes writes synchronous, as a link carries it. A link
//! stages batches into one backend write; the synchronous ones in a row
//! form a [`Run`], closed by one `WAIT` after them (group commit: one
//! round trip to the replicas for every write in it). The link writes the
//! request [`Run`] gives it and hands the reply to the [`PendingWait`] it
//! got with it, which says what the held writes' clients hear. The link
//! knows nothing of quorums, shortfalls or coordination windows.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use super::{
    fail_writes, parse_wait_reply, shortfall_error, wait_request, Durability, Requirement,
};

/// The synchronous batches staged in a row on a link, not yet closed.
#[derive(Default)]
pub struct Run(Option<Arc<Durability>>);

/// A `WAIT` to write, and what its reply will be judged by.
pub struct Wait {
    pub request: Bytes,
    pub pending: PendingWait,
}

impl Run {
    /// A batch is staged: a synchronous one (`durable`) joins the run; any
    /// other ends it first (its reply must not wait for the replicas),
    /// returning the `WAIT` to write before it.
    pub fn stage(&mut self, durable: Option<&Arc<Durability>>) -> Option<Wait> {
        match durable {
            Some(durability) => {
                self.0.get_or_insert_with(|| durability.clone());
                None
            }
            None => self.close(),
        }
    }

    /// Ends the run: the `WAIT` to write after its batches. The quorum is
    /// read now, not when the batches were made, so a changed quorum
    /// applies to everything not yet written; at none, no `WAIT`.
    pub fn close(&mut self) -> Option<Wait> {
        let durability = self.0.take()?;
        let req = durability.requirement();
        if req.acks == 0 {
            return None;
        }
        durability.waits.fetch_add(1, Relaxed);
        Some(Wait {
            request: wait_request(req),
            pending: PendingWait { req, durability },
        })
    }
}

/// A `WAIT` written and not answered yet.
pub struct PendingWait {
    req: Requirement,
    durability: Arc<Durability>,
}

impl PendingWait {
    /// Judges the `WAIT`'s reply: `None` when the writes it covers are
    /// answered as they are (enough replicas acknowledged, or the policy
    /// accepts fewer); otherwise the error every successful one becomes.
    pub fn verdict(&self, wait_reply: &[u8]) -> Option<String> {
        let acks = parse_wait_reply(wait_reply);
        let short = acks < self.req.acks;
        if short {
            self.durability.shortfalls.fetch_add(1, Relaxed);
        }
        // Acknowledged only while this instance may still acknowledge: a
        // `WAIT` answered after its coordination view expired may count a
        // replica that another instance has since repointed.
        if self.durability.window.admits() == super::window::Admit::Closed {
            return Some(super::VIEW_EXPIRED.to_string());
        }
        (short && self.req.fail_on_shortfall).then(|| shortfall_error(acks, self.req))
    }

    /// A held batch's replies with each successful write turned into
    /// `error` (see [`PendingWait::verdict`]).
    pub fn fail(&self, replies: &Bytes, error: &str, max_depth: usize) -> Bytes {
        let (data, failed) = fail_writes(replies, error, max_depth);
        self.durability.failed_writes.fetch_add(failed, Relaxed);
        data
    }
}
