//! Connections to the nodes: opening them, pipelining over them, pooling them.

pub mod charge;
pub mod connect;
pub mod control;
pub mod frame;
pub mod link;
pub mod own;
pub mod pool;
pub mod reply;

pub use connect::{ConnectOptions, Credentials, Session};
pub use link::{Batch, Link, LinkOptions};
pub use pool::NodePool;
pub use reply::BatchReply;
