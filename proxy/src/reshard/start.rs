//! Why a move could not start, and how long its pause may last.

use std::time::Duration;

/// How long the pause at the start of a move may last: requests for the
/// moving slots wait this long at most. Past it the move is called off
/// (a client sat in a transaction on one of the slots, or did not read
/// its replies) and may be asked for again.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(5);

/// Why a move could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("requests routed before the move were still unanswered after {} s (a client in MULTI on one of the slots, or one not reading its replies); nothing moved, ask again", PAUSE_LIMIT.as_secs())]
    Busy,
    #[error("the slot map could not be saved: {0}")]
    Save(String),
    /// With `[coordination]`: members that did not acknowledge the pause.
    #[error("instances {} did not acknowledge the pause within {} s (cut off from etcd, stopped, or holding requests); nothing moved. An instance stopped for good is forgotten with `rampart forget NAME`", .0.join(", "), PAUSE_LIMIT.as_secs() + 1)]
    Unacknowledged(Vec<String>),
    /// With `[coordination]`: the shared map changed meanwhile.
    #[error("the slot map in etcd changed meanwhile (another instance moved slots); ask again")]
    Changed,
    /// With `[coordination]`: etcd not read yet as a member.
    #[error("this instance has not read the slot map from etcd yet")]
    NotRead,
}
