//! `rampart-sdk`: what a Rampart policy plugin author needs.
//!
//! Status: only the contract exists so far. [`WIT`] is the draft WIT
//! package (`rampart:policy`) that routing, quorum and detection plugins
//! will implement as WebAssembly components; the generated bindings and the
//! export macro come with the Wasm policy host.

/// The draft plugin contract, as WIT text.
pub const WIT: &str = include_str!("../wit/policy.wit");

#[cfg(test)]
mod tests {
    #[test]
    fn the_contract_names_its_three_worlds() {
        for world in ["world router", "world quorum", "world detector"] {
            assert!(super::WIT.contains(world), "missing {world}");
        }
    }
}
