//! The built-in policies, compiled from `plugins/` by the build script and
//! embedded in the binary. They run through the same host as any plugin a
//! user loads: the defaults are not a privileged path.

macro_rules! component {
    ($file:literal) => {
        include_bytes!(concat!(env!("RAMPART_BUILTINS"), "/", $file))
    };
}

/// Routers by the name `builtin:<name>` selects.
pub const ROUTERS: &[(&str, &[u8])] = &[
    ("primary-only", component!("router_primary_only.wasm")),
    ("round-robin", component!("router_round_robin.wasm")),
    ("least-latency", component!("router_least_latency.wasm")),
    ("key-affinity", component!("router_key_affinity.wasm")),
    ("zone-affinity", component!("router_zone_affinity.wasm")),
];

/// The standard quorum: none / one / majority / all, election by offset.
pub const QUORUM: &[u8] = component!("quorum_standard.wasm");

/// Detectors by the name `probe.detector` gives.
pub const DETECTORS: &[(&str, &[u8])] = &[
    ("fixed-timeout", component!("detector_fixed_timeout.wasm")),
    ("phi-accrual", component!("detector_phi_accrual.wasm")),
];

/// The router `builtin:<name>` names.
pub fn router(name: &str) -> Option<&'static [u8]> {
    ROUTERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names, for error messages.
pub fn router_names() -> String {
    ROUTERS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn detector(name: &str) -> Option<&'static [u8]> {
    DETECTORS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}
