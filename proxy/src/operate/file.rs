//! Reading the configuration file again when an operator asks (`POST
//! /v1/reload`, `rampart reload`): the same reload as SIGHUP, answered
//! with what it changed.

use super::OpError;
use crate::context::{Context, Reloaded};

impl Context {
    /// Reloads the configuration file now; says which changed fields
    /// applied at once and which wait for a restart.
    pub async fn reload_file(&self) -> Result<String, OpError> {
        let Some(reloads) = self.reloads.get() else {
            return Err(OpError::Unavailable(
                "this Rampart does not run from a configuration file (rampart run --config)".into(),
            ));
        };
        let (ask, answer) = tokio::sync::oneshot::channel();
        let gone = || OpError::Unavailable("Rampart is shutting down".into());
        reloads.send(ask).await.map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())? {
            Reloaded::Done { now, later } => Ok(format!(
                "applied at once: {}\nat the next start: {}",
                list(&now),
                list(&later)
            )),
            Reloaded::Invalid(why) => Err(OpError::Rejected(format!(
                "the configuration is invalid; nothing changed: {why}"
            ))),
        }
    }
}

/// Changed fields as a reload names them (`nothing` for none).
pub fn list(fields: &[String]) -> String {
    if fields.is_empty() {
        "nothing".into()
    } else {
        fields.join(", ")
    }
}
