//! What an operator asks of a running Rampart: move or force a shard's
//! primary, copy a fan-out node afresh (`primary`), load, shadow, activate
//! and roll back policies (`policy`). The admin API, `RAMPART ...` over
//! RESP and config reloads all come here; each answers with an
//! [`OpError`], which `admin/` turns into an HTTP status and `client/`
//! into a Redis error, so neither edge reads meaning out of message text.

mod policy;
mod primary;

pub use policy::PoliciesView;

use std::sync::Arc;

use crate::server::Context;
use crate::shard::Shard;

/// Why an operation was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No shard, node or policy by that name (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// Asked again too soon (HTTP 429).
    #[error("{0}")]
    TooSoon(String),
    /// Not possible in the state things are in: a switchover that could
    /// not catch up, no shadow to activate, a follower asked to promote
    /// (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// What was given is unusable: a plugin that does not load, a path
    /// where a name belongs (HTTP 422).
    #[error("{0}")]
    Rejected(String),
    /// The part of Rampart that would do it is not running (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

impl OpError {
    /// The error as a Redis error reply's text.
    pub fn resp(&self) -> String {
        format!("ERR rampart: {self}")
    }
}

impl Context {
    /// The shard that owns `key`'s hash slot.
    pub fn shard_of(&self, key: &[u8]) -> &Arc<Shard> {
        &self.shards[self.slots.shard_of(key)]
    }

    /// The shard named `name`.
    pub fn shard(&self, name: &str) -> Result<&Arc<Shard>, OpError> {
        self.shards
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| OpError::NotFound(format!("no shard named '{name}'")))
    }
}
