//! Why an operation was not done, as a type: the edges choose the HTTP
//! status or the Redis error from the variant, never from the text.

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

impl From<crate::policy::error::PolicyError> for OpError {
    fn from(e: crate::policy::error::PolicyError) -> Self {
        use crate::policy::error::PolicyError;
        match e {
            PolicyError::NotFound(why) => OpError::NotFound(why),
            PolicyError::Refused(why) | PolicyError::Broken(why) => OpError::Rejected(why),
        }
    }
}
