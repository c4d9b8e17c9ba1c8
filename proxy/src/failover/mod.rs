//! The control loop: probes observe every node ([`probe`]), a detector
//! judges each one ([`detect`]), and the controller ([`controller`]) acts on
//! the verdicts: it promotes a replica when the primary is down, repoints
//! and fences the others, and records every step ([`events`]). Nodes join
//! and leave running shards through [`members`].

pub mod controller;
pub mod detect;
pub mod members;
pub mod probe;
pub mod request;
pub mod settings;
pub mod state;
