//! With `[coordination]`: this instance's view of etcd in `/metrics` (its
//! age, the leases it holds, the live instances).

use super::prom::family;
use crate::context::Context;

pub(super) fn render(o: &mut String, ctx: &Context) {
    if let Some(coordination) = &ctx.coordination {
        let view = coordination.snapshot();
        family(
            o,
            "rampart_coordination_view_age_seconds",
            "gauge",
            "Since the last successful read of etcd was sent (-1: never).",
            [(
                String::new(),
                view.view_age_ms.map_or(-1.0, |ms| ms as f64 / 1000.0),
            )],
        );
        family(
            o,
            "rampart_coordination_lease_held",
            "gauge",
            "1 for each shard whose failover lease this instance holds.",
            ctx.topology.shards().iter().map(|s| {
                let held = view.lease_holders.get(&s.name) == Some(&view.instance);
                (format!("shard=\"{}\"", s.name), held as u8 as f64)
            }),
        );
        family(
            o,
            "rampart_coordination_instances",
            "gauge",
            "Live instances sharing the shards (each one's key in etcd).",
            [(String::new(), view.instances.len() as f64)],
        );
    }
}
