//! The slot map and slot moves in `/metrics`.

use crate::context::Context;

use super::prom::family;

pub(super) fn render(o: &mut String, ctx: &Context) {
    let map = ctx.slots.load();
    family(
        o,
        "rampart_shard_slots",
        "gauge",
        "Hash slots the shard owns.",
        ctx.shards
            .all()
            .iter()
            .enumerate()
            .filter(|(_, shard)| !shard.topology.is_retired())
            .map(|(index, shard)| {
                (
                    format!("shard=\"{}\"", shard.name()),
                    map.count_of(index) as f64,
                )
            }),
    );
    family(
        o,
        "rampart_slots_moving",
        "gauge",
        "Hash slots being moved to another shard (0: no move in progress).",
        [(String::new(), map.moving().map_or(0, |m| m.count()) as f64)],
    );
    family(
        o,
        "rampart_slot_keys_moved_total",
        "counter",
        "Keys moved between shards by slot moves, by the walk and by commands touching them.",
        [(String::new(), ctx.slots.moved_total() as f64)],
    );
}
