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
    /// Deepest nesting accepted in a backend reply (RESP3 maps in arrays ...).
    /// Redis itself nests a Lua script's reply as deep as Lua's stack
    /// allows (a few thousand levels), so the bound sits above that; the
    /// scanner keeps 16 bytes a level while it walks such a reply.
    pub max_reply_depth: usize,
    /// Most requests a client may have in flight before Rampart stops reading
    /// from it: a client that writes faster than it reads is held back by TCP,
    /// not buffered without bound.
    pub max_pipeline: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_reply_depth: 10_000,
            max_pipeline: 4096,
        }
    }
}
