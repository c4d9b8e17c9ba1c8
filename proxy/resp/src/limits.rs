//! Bounds on what a client may send, matching Redis's own defaults.

use serde::Deserialize;

/// Request size limits. Defaults are Redis's: `proto-max-bulk-len` 512 MiB,
/// 64 KiB inline requests, and a multibulk count of at most 1,048,576 (Redis
/// 6's bound; Redis 7 allows more but never needs it for a real command).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest bulk string in a request, in bytes.
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_multibulk_len: usize,
    /// Longest inline request line (and longest length header), in bytes.
    pub max_inline_len: usize,
    /// Most distinct nesting levels accepted in a backend reply (RESP3
    /// maps in arrays ...). Levels in a row with the same element count
    /// (Redis nests a Lua table's reply one single-element array inside
    /// the next, as deep as Lua allows) count once; the scanner keeps 24
    /// bytes per distinct level while it walks a reply.
    pub max_reply_depth: usize,
    /// Most requests a client may have in flight before Rampart stops reading
    /// from it: a client that writes faster than it reads is held back by TCP,
    /// not buffered without bound.
    pub max_pipeline: usize,
    /// Replies buffered for one client that has not read them, in MiB:
    /// past it the client is disconnected (Redis's
    /// `client-output-buffer-limit` hard limit). 0: no limit.
    pub client_output_hard_mb: usize,
    /// The soft limit, in MiB: a client may stay over it for at most
    /// `client_output_soft_seconds`. 0: no limit.
    pub client_output_soft_mb: usize,
    pub client_output_soft_seconds: u64,
    /// Replies buffered for all clients together, in MiB: past it the
    /// client holding the most is disconnected (Redis's
    /// `maxmemory-clients`). 0: no limit.
    pub clients_output_total_mb: usize,
    /// Partly received requests across all clients, in MiB: a client whose
    /// unfinished request would take the total past it is disconnected (a
    /// thousand connections each sending most of a large value would
    /// otherwise hold it all). 0: no limit.
    pub partial_requests_total_mb: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_reply_depth: 10_000,
            max_pipeline: 4096,
            client_output_hard_mb: 256,
            client_output_soft_mb: 64,
            client_output_soft_seconds: 60,
            clients_output_total_mb: 384,
            partial_requests_total_mb: 512,
        }
    }
}
