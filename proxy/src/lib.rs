//! Rampart: a Redis-protocol proxy for primaries and their replicas.
//!
//! The request path, folder by folder: `client` (read, parse, reply in
//! order) -> `shard` (which shard owns the keys; `reshard` while slots
//! move) -> `route` (which node) -> `backend` (pipelined links, dedicated
//! connections) -> `replicate` (the quorum a write waits for) -> reply.
//! The control loop: `failover` (probe -> detect -> failover, nodes
//! joining and leaving) -> `topology` (roles and health). `resp` (its own
//! crate) is the protocol at the edges, `operate` what operators ask,
//! `admin` the HTTP side door, `services` the background tasks by name.

pub mod admin;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod context;
pub mod coord;
pub mod failover;
pub mod net;
pub mod observe;
pub mod operate;
pub mod policy;
pub mod reload;
pub mod replicate;
pub mod reshard;
pub use rampart_resp as resp;
pub mod route;
pub mod secrets;
pub mod server;
pub mod services;
pub mod shard;
pub mod topology;
pub mod worker;

pub use config::Config;
pub use server::Server;
