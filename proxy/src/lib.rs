//! Rampart: a Redis-protocol proxy for a primary and its replicas.
//!
//! The request path, folder by folder: `client` (read, parse, reply in
//! order) -> `route` (which node) -> `backend` (pipelined links, dedicated
//! connections) -> reply. The control loop: `failover` (probes) ->
//! `topology` (roles and health). `resp` is the protocol at the edges,
//! `admin` the HTTP side door.

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
pub mod shard;
pub mod topology;
pub mod worker;

pub use config::Config;
pub use server::Server;
