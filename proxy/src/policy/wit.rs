//! The plugins' interface, generated from `sdk/wit`: the router world, and
//! with it the `types` and `host` interfaces every kind of plugin shares
//! (the quorum and detector worlds reuse these rather than generating
//! their own copies).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "router",
    // Arguments to the plugin borrow: the key is lowered straight from
    // the request buffer, not copied into a Vec first.
    ownership: Borrowing { duplicate_if_necessary: false },
});
