//! What an operator asks of a running Rampart: move or force a shard's
//! primary, copy a fan-out node afresh (`primary`), load, shadow, activate
//! and roll back policies (`policy`). The admin API, `RAMPART ...` over
//! RESP and config reloads all come here; each answers with an
//! [`OpError`], which `admin/` turns into an HTTP status and `client/`
//! into a Redis error, so neither edge reads meaning out of message text.

mod doctor;
pub mod error;
pub mod file;
mod nodes;
mod policy;
mod primary;
mod shards;
mod shared;
mod slots;

pub use policy::roll_back_failing_routers;
pub use shared::follow_shared_policies;

pub use doctor::{Finding, Report as DoctorReport};
pub use error::OpError;
pub use policy::PoliciesView;

use std::sync::Arc;

use crate::context::Context;
use crate::shard::Shard;

impl Context {
    /// The shard named `name`, in service.
    pub fn shard(&self, name: &str) -> Result<Arc<Shard>, OpError> {
        self.serving_named(name).map(|(_, shard)| shard)
    }

    /// The shard in service named `name`, with its index.
    pub fn serving_named(&self, name: &str) -> Result<(usize, Arc<Shard>), OpError> {
        self.shards
            .serving_named(name)
            .ok_or_else(|| OpError::NotFound(format!("no shard named '{name}'")))
    }
}
