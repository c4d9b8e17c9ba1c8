//! The write path after routing: how durable a write must be before its
//! client hears about it.
//!
//! In native mode the nodes replicate with Redis's own replication, and a
//! synchronous write is one whose reply is held until `WAIT` shows enough
//! replicas have it. The link that carries the write sends the `WAIT` right
//! after it, as [`wait`] tells it, and one `WAIT` covers every write in the
//! same backend write: pipelined and concurrent writes share one round trip
//! to the replicas (group commit).
//!
//! In fan-out mode ([`fanout`]) the nodes are independent and Rampart sends
//! every write to each of them in one order itself.
//!
//! How many acknowledgements a write needs comes from the shard's quorum
//! policy ([`quorum`]); this module keeps the shard's current answer where
//! the links can read it without a lock, and counts what happened.

pub mod fanout;
pub mod lag;
pub mod quorum;
pub mod wait;
pub mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::resp::ReplyScanner;
use serde::Serialize;

pub use quorum::{QuorumPolicy, Requirement};

/// A shard's write durability: the requirement in force and what it led to.
#[derive(Default)]
pub struct Durability {
    acks: AtomicU32,
    timeout_ms: AtomicU32,
    fail_on_shortfall: AtomicBool,
    /// `WAIT`s sent.
    pub waits: AtomicU64,
    /// `WAIT`s that came back with fewer acknowledgements than required.
    pub shortfalls: AtomicU64,
    /// Writes answered with `-NOQUORUM`.
    pub failed_writes: AtomicU64,
    /// With `[coordination]`: until when this instance may acknowledge
    /// writes to the shard.
    pub window: window::WriteWindow,
    /// Bytes of the replication stream, acknowledged to clients as
    /// asynchronous writes, that a promoted replica lacked.
    pub lost_bytes: AtomicU64,
}

impl Durability {
    pub fn set(&self, req: Requirement) {
        self.timeout_ms.store(req.timeout_ms, Ordering::Relaxed);
        self.fail_on_shortfall
            .store(req.fail_on_shortfall, Ordering::Relaxed);
        self.acks.store(req.acks, Ordering::Release);
    }

    pub fn requirement(&self) -> Requirement {
        Requirement {
            acks: self.acks.load(Ordering::Acquire),
            timeout_ms: self.timeout_ms.load(Ordering::Relaxed),
            fail_on_shortfall: self.fail_on_shortfall.load(Ordering::Relaxed),
        }
    }

    /// Whether writes wait for replicas at all (the quorum is not `none`).
    pub fn is_sync(&self) -> bool {
        self.acks.load(Ordering::Acquire) > 0
    }

    pub fn view(&self) -> DurabilityView {
        let req = self.requirement();
        DurabilityView {
            mode: if req.acks > 0 { "sync" } else { "async" },
            acks: req.acks,
            timeout_ms: req.timeout_ms,
            on_shortfall: if req.fail_on_shortfall {
                "fail"
            } else {
                "accept"
            },
            waits: self.waits.load(Ordering::Relaxed),
            shortfalls: self.shortfalls.load(Ordering::Relaxed),
            failed_writes: self.failed_writes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DurabilityView {
    pub mode: &'static str,
    pub acks: u32,
    pub timeout_ms: u32,
    pub on_shortfall: &'static str,
    pub waits: u64,
    pub shortfalls: u64,
    pub failed_writes: u64,
}

/// `WAIT <acks> <timeout>` as a RESP request.
fn wait_request(req: Requirement) -> Bytes {
    let acks = req.acks.to_string();
    let timeout = req.timeout_ms.to_string();
    crate::resp::Request::from_args(&["WAIT", &acks, &timeout]).raw
}

/// The acknowledgement count in a `WAIT` reply (`:n`); an error reply or
/// anything else counts as none.
fn parse_wait_reply(reply: &[u8]) -> u32 {
    reply
        .strip_prefix(b":")
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<i64>().ok())
        .map_or(0, |n| n.clamp(0, u32::MAX as i64) as u32)
}

/// What a synchronous write is answered with when its `WAIT` came back
/// after this instance's view of the coordination store expired: another
/// instance may have named a new primary meanwhile, so the replica that
/// acknowledged it may be repointed and lose it.
pub const VIEW_EXPIRED: &str = "TRYAGAIN this Rampart instance's view of the coordination store expired before the write was confirmed; it was applied on the primary and may or may not survive a failover";

/// What a write that did not reach its quorum is answered with. Redis cannot
/// roll a write back, so the client must be told it may still be there.
pub fn shortfall_error(got: u32, req: Requirement) -> String {
    format!(
        "NOQUORUM the write reached {got} of the {} replicas required within {} ms; it was applied on the primary and may still be replicated (Redis cannot roll it back)",
        req.acks, req.timeout_ms
    )
}

/// A durable batch's replies with each successful one replaced by `error`
/// (replies that are errors already stay: those writes did not happen), and
/// how many were replaced.
pub fn fail_writes(data: &Bytes, error: &str, max_depth: usize) -> (Bytes, u64) {
    let mut scanner = ReplyScanner::new(max_depth);
    let mut out = BytesMut::with_capacity(data.len() + 64);
    let mut failed = 0;
    let mut rest = &data[..];
    while let Ok(Some(len)) = scanner.scan(rest) {
        if rest[0] == b'-' {
            out.extend_from_slice(&rest[..len]);
        } else {
            out.extend_from_slice(b"-");
            out.extend_from_slice(error.as_bytes());
            out.extend_from_slice(b"\r\n");
            failed += 1;
        }
        rest = &rest[len..];
    }
    (out.freeze(), failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_replies() {
        assert_eq!(parse_wait_reply(b":2\r\n"), 2);
        assert_eq!(parse_wait_reply(b":0\r\n"), 0);
        assert_eq!(parse_wait_reply(b":-1\r\n"), 0);
        assert_eq!(
            parse_wait_reply(b"-ERR WAIT cannot be used with replica instances\r\n"),
            0
        );
        assert_eq!(parse_wait_reply(b""), 0);
    }

    #[test]
    fn wait_request_encodes() {
        let req = Requirement {
            acks: 2,
            timeout_ms: 500,
            fail_on_shortfall: true,
        };
        assert_eq!(
            &wait_request(req)[..],
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n500\r\n"
        );
    }
}
