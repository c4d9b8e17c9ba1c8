//! The control loop: probes observe every node and feed the topology.
//! (Failure detection policies, promotion and fencing build on this.)

pub mod probe;
