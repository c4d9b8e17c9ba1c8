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
//!
//! Plugins get no WASI: no files, clock, randomness, environment, stdout
//! or stderr (a call to any of them traps, and Rampart's error names the
//! import and the Rust that usually calls it: `println!`, `std::time`,
//! std's randomly seeded `HashMap` ...). Use [`router::log`] and
//! [`router::now_ms`] (each world has them). The `export_*!` macros
//! install a panic hook, so a panic is reported by Rampart with its
//! message and place (`panicked at src/lib.rs:21:5: ...`), not as a bare
//! trap. Keep names in release builds (do not `strip`): a trap's backtrace
//! then names your functions, for a few kilobytes more.

pub mod algorithms;

/// The plugin contract, as WIT text.
pub const WIT: &str = include_str!("../wit/policy.wit");

/// Reports panics through the host's `log` (Rust's default hook would
/// write to stderr and read the environment, neither of which a plugin
/// has). Called by the `export_*!` macros before the plugin's
/// `configure`; `log` is the world's own.
pub fn install_panic_hook(log: fn(&str)) {
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let message = match info.location() {
            Some(at) => format!(
                "panicked at {}:{}:{}: {payload}",
                at.file(),
                at.line(),
                at.column()
            ),
            None => format!("panicked: {payload}"),
        };
        log(&message);
    }));
}

/// Exports a router: `rampart_sdk::router::export_router!(MyRouter)`,
/// with [`install_panic_hook`] run before its `configure`.
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        const _: () = {
            struct RampartRouter;
            impl $crate::router::Guest for RampartRouter {
                fn configure(config: String) -> Result<(), String> {
                    $crate::install_panic_hook(|m| {
                        $crate::router::log($crate::router::Level::Error, m)
                    });
                    <$ty as $crate::router::Guest>::configure(config)
                }
                fn update(
                    nodes: Vec<$crate::router::Node>,
                    local_zone: u32,
                ) -> $crate::router::Plan {
                    <$ty as $crate::router::Guest>::update(nodes, local_zone)
                }
                fn route(req: $crate::router::Request) -> Option<u32> {
                    <$ty as $crate::router::Guest>::route(req)
                }
            }
            $crate::router::__export_router!(RampartRouter);
        };
    };
}

/// Exports a quorum policy, as [`export_router!`] does a router.
#[macro_export]
macro_rules! export_quorum {
    ($ty:ty) => {
        const _: () = {
            struct RampartQuorum;
            impl $crate::quorum::Guest for RampartQuorum {
                fn configure(config: String) -> Result<(), String> {
                    $crate::install_panic_hook(|m| {
                        $crate::quorum::log($crate::quorum::Level::Error, m)
                    });
                    <$ty as $crate::quorum::Guest>::configure(config)
                }
                fn requirement(replicas: u32) -> $crate::quorum::Requirement {
                    <$ty as $crate::quorum::Guest>::requirement(replicas)
                }
                fn elect(candidates: Vec<$crate::quorum::Candidate>) -> Option<u32> {
                    <$ty as $crate::quorum::Guest>::elect(candidates)
                }
            }
            $crate::quorum::__export_quorum!(RampartQuorum);
        };
    };
}

/// Exports a detector, as [`export_router!`] does a router.
#[macro_export]
macro_rules! export_detector {
    ($ty:ty) => {
        const _: () = {
            struct RampartDetector;
            impl $crate::detector::Guest for RampartDetector {
                fn configure(config: String) -> Result<(), String> {
                    $crate::install_panic_hook(|m| {
                        $crate::detector::log($crate::detector::Level::Error, m)
                    });
                    <$ty as $crate::detector::Guest>::configure(config)
                }
                fn observe(node: u32, at_ms: u64, ok: bool) {
                    <$ty as $crate::detector::Guest>::observe(node, at_ms, ok)
                }
                fn assess(node: u32, now_ms: u64) -> $crate::detector::Health {
                    <$ty as $crate::detector::Guest>::assess(node, now_ms)
                }
            }
            $crate::detector::__export_detector!(RampartDetector);
        };
    };
}

/// Bindings for the `router` world: implement [`router::Guest`] and export
/// it with [`export_router!`].
pub mod router {
    wit_bindgen::generate!({
        path: "wit",
        world: "router",
        pub_export_macro: true,
        export_macro_name: "__export_router",
        default_bindings_module: "rampart_sdk::router",
    });

    pub use self::rampart::policy::host::{inflight, log, now_ms, Level};
    pub use self::rampart::policy::types::{CommandClass, Health, Role};
    pub use crate::export_router;
}

/// Bindings for the `quorum` world: implement [`quorum::Guest`] and export
/// it with [`export_quorum!`].
pub mod quorum {
    wit_bindgen::generate!({
        path: "wit",
        world: "quorum",
        pub_export_macro: true,
        export_macro_name: "__export_quorum",
        default_bindings_module: "rampart_sdk::quorum",
    });

    // `Candidate` and `Requirement` are generated here by the world's `use`.
    pub use self::rampart::policy::host::{log, now_ms, Level};
    pub use crate::export_quorum;
}

/// Bindings for the `detector` world: implement [`detector::Guest`] and
/// export it with [`export_detector!`].
pub mod detector {
    wit_bindgen::generate!({
        path: "wit",
        world: "detector",
        pub_export_macro: true,
        export_macro_name: "__export_detector",
        default_bindings_module: "rampart_sdk::detector",
    });

    // `Health` is generated here by the world's `use`.
    pub use self::rampart::policy::host::{log, now_ms, Level};
    pub use crate::export_detector;
}
