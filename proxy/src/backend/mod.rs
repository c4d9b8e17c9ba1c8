//! Connections to the nodes: opening them, pipelining over them, pooling them.

pub mod budget;
pub mod connect;
pub mod control;
pub mod cutter;
pub mod error;
pub mod frame;
pub mod link;
pub mod own;
pub mod pool;
mod reader;
pub mod reply;
pub mod signal;
pub mod stats;

pub use connect::{ConnectOptions, Credentials, Session};
pub use error::LinkError;
pub use link::{Batch, Link, LinkOptions};
pub use pool::NodePool;
pub use reply::BatchReply;
