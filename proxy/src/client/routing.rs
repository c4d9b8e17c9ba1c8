//! The slot maps a client holds (see `moving.rs` for why and when).

use std::sync::Arc;

use crate::shard::slots::SlotMap;

/// The maps a client holds.
#[derive(Default)]
pub(super) struct Routing {
    /// The map it routes by now.
    pub(super) current: Option<Arc<SlotMap>>,
    /// Maps it routed by before, each until the reply queue's completed
    /// count reaches the position of the last request it routed.
    pub(super) earlier: Vec<(Arc<SlotMap>, u64)>,
}

impl Routing {
    /// Lets go of what is answered (everything, when the client is idle).
    pub(super) fn release(&mut self, completed: u64, idle: bool) {
        self.earlier.retain(|(_, position)| *position > completed);
        if idle {
            self.current = None;
        }
    }

    /// The map routed by now. Only valid after [`Connection::route_map`].
    pub(super) fn map(&self) -> &SlotMap {
        match &self.current {
            Some(map) => map,
            None => unreachable_map(),
        }
    }
}

/// A map of no move, for a caller that did not take one first (never, by
/// construction; a map rather than a panic all the same).
fn unreachable_map() -> &'static SlotMap {
    static SINGLE: std::sync::OnceLock<SlotMap> = std::sync::OnceLock::new();
    SINGLE.get_or_init(SlotMap::single)
}
