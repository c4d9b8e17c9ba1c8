//! Why a connection to a node ended: typed here, worded only where it
//! reaches a client (`-ERR rampart: connection to ... lost (<why>)`), a log
//! line or a node's health.

use std::time::Duration;

use crate::resp::reply::ReplyError;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("closed by the server")]
    Closed,
    #[error("{0}")]
    Reply(#[from] ReplyError),
    /// Replies were owed and none came for this long.
    #[error("no reply within {} ms", .0.as_millis())]
    Silent(Duration),
    #[error("reply without a request")]
    Unsolicited,
    /// Every handle was dropped: the link is no longer wanted.
    #[error("closed")]
    Unwanted,
}
