//! `rampart-sdk`: what a Rampart policy plugin author needs.
//!
//! A policy is an ordinary Rust crate (`crate-type = ["cdylib"]`) built with
//! `cargo build --target wasm32-wasip2 --release`; the result is a
//! WebAssembly component Rampart loads. The contract is `wit/policy.wit`.
//!
//! Three worlds, one module each: [`router`] (which node serves a read),
//! [`quorum`] (how many replica acks a write needs, whom to promote) and
//! [`detector`] (is a node up, suspect or down).
//!
//! ```ignore
//! use rampart_sdk::router::{Guest, Node, Plan, Request};
//!
//! struct FirstReplica;
//!
//! impl Guest for FirstReplica {
//!     fn configure(_config: String) -> Result<(), String> { Ok(()) }
//!     // On every topology change: a plan the host carries out per read.
//!     fn update(nodes: Vec<Node>, _local_zone: u32) -> Plan {
//!         match nodes.iter().find(|n| n.serves_reads) {
//!             Some(n) => Plan::Rotate(vec![n.id]),
//!             None => Plan::Primary,
//!         }
//!     }
//!     // Only called when `update` returned `Plan::PerRead`.
//!     fn route(_req: Request) -> Option<u32> { None /* None = the primary */ }
//! }
//!
//! rampart_sdk::router::export_router!(FirstReplica);
//! ```

pub mod algorithms;

/// The plugin contract, as WIT text.
pub const WIT: &str = include_str!("../wit/policy.wit");

/// Bindings for the `router` world: implement [`router::Guest`] and export
/// it with [`export_router!`].
pub mod router {
    wit_bindgen::generate!({
        path: "wit",
        world: "router",
        pub_export_macro: true,
        export_macro_name: "export_router",
        default_bindings_module: "rampart_sdk::router",
    });

    pub use self::rampart::policy::host::{inflight, log, now_ms, Level};
    pub use self::rampart::policy::types::{CommandClass, Health, Role};
}

/// Bindings for the `quorum` world: implement [`quorum::Guest`] and export
/// it with [`export_quorum!`].
pub mod quorum {
    wit_bindgen::generate!({
        path: "wit",
        world: "quorum",
        pub_export_macro: true,
        export_macro_name: "export_quorum",
        default_bindings_module: "rampart_sdk::quorum",
    });

    // `Candidate` and `Requirement` are generated here by the world's `use`.
    pub use self::rampart::policy::host::{log, now_ms, Level};
}

/// Bindings for the `detector` world: implement [`detector::Guest`] and
/// export it with [`export_detector!`].
pub mod detector {
    wit_bindgen::generate!({
        path: "wit",
        world: "detector",
        pub_export_macro: true,
        export_macro_name: "export_detector",
        default_bindings_module: "rampart_sdk::detector",
    });

    // `Health` is generated here by the world's `use`.
    pub use self::rampart::policy::host::{log, now_ms, Level};
}
