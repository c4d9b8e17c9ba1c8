//! `rampart-sdk`: what a Rampart policy plugin author needs.
//!
//! A policy is an ordinary Rust crate (`crate-type = ["cdylib"]`) built with
//! `cargo build --target wasm32-wasip2 --release`; the result is a
//! WebAssembly component Rampart loads. The contract is `wit/policy.wit`.
//!
//! Status: the `router` world is implemented on both sides; `quorum` and
//! `detector` are drafted in the WIT and not yet hosted.
//!
//! ```ignore
//! use rampart_sdk::router::{Guest, Node, Request};
//!
//! struct HighestId;
//!
//! impl Guest for HighestId {
//!     fn configure(_config: String) -> Result<(), String> { Ok(()) }
//!     fn update(nodes: Vec<Node>) { /* remember the nodes */ }
//!     fn route(_req: Request) -> Option<u32> { None /* None = the primary */ }
//! }
//!
//! rampart_sdk::router::export_router!(HighestId);
//! ```

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

    pub use self::rampart::policy::host::{log, now_ms, Level};
    pub use self::rampart::policy::types::{CommandClass, Health, Role};
}
