//! Command -> node. Writes, transactions and anything unknown go to the
//! primary; read-only commands go where the shard's read policy says.
//!
//! One small trait per decision: [`ReadPolicy`] picks a replica for a read,
//! and the algorithms sit side by side in `policies.rs`.

mod policies;

use std::sync::Arc;

pub use policies::{PrimaryOnly, RoundRobinReplicas};

use crate::resp::Class;
use crate::topology::{Node, Shard};

/// What a read policy knows about the read it places.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    pub client_id: u64,
    /// The command's first argument: the key, for nearly every read
    /// (empty when there is none).
    pub key: &'a [u8],
}

/// Chooses the node for a read-only command. `None` means "the primary".
pub trait ReadPolicy: Send + Sync {
    fn pick<'s>(&self, shard: &'s Shard, read: &Read) -> Option<&'s Arc<Node>>;

    /// What is deciding, for the admin views.
    fn describe(&self) -> PolicyView;
}

/// A read policy as the admin views show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyView {
    pub name: String,
    /// `native` (built into the binary) or `wasm`.
    pub kind: &'static str,
    pub calls: u64,
    pub traps: u64,
    pub fallbacks: u64,
    /// Why the last trap or fallback happened, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PolicyView {
    pub fn native(name: &str) -> PolicyView {
        PolicyView {
            name: name.to_string(),
            kind: "native",
            calls: 0,
            traps: 0,
            fallbacks: 0,
            last_error: None,
        }
    }
}

/// Where a command goes; `Err` when the shard has no primary to send it to.
pub fn route<'s>(
    shard: &'s Shard,
    router: &dyn ReadPolicy,
    class: Class,
    read: &Read,
) -> Result<&'s Arc<Node>, NoPrimary> {
    if class == Class::Read {
        if let Some(node) = router.pick(shard, read) {
            return Ok(node);
        }
    }
    shard.primary().ok_or(NoPrimary)
}

/// The shard has no reachable primary right now.
#[derive(Debug, Clone, Copy)]
pub struct NoPrimary;
