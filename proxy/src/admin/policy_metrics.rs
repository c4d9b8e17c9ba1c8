//! Every policy in force in `/metrics`: each shard's router and quorum, the
//! detector: calls, traps, fallbacks and generations.

use super::prom::family;
use crate::context::Context;
use crate::observe::policy_view::PolicyView;

pub(super) fn render(o: &mut String, ctx: &Context) {
    // Every policy in force: each shard's router and quorum, the detector.
    let views = ctx.policies();
    let mut policies: Vec<(String, PolicyView)> = Vec::new();
    for (shard, slot) in &views.router {
        policies.push((
            format!("shard=\"{shard}\",kind=\"router\""),
            slot.active.policy.clone(),
        ));
    }
    for (shard, quorum) in &views.quorum {
        policies.push((
            format!("shard=\"{shard}\",kind=\"quorum\""),
            quorum.policy.clone(),
        ));
    }
    policies.push((
        "shard=\"*\",kind=\"detector\"".to_string(),
        views.detector.policy.clone(),
    ));
    type PolicyMetric = (&'static str, &'static str, fn(&PolicyView) -> u64);
    const POLICY_METRICS: &[PolicyMetric] = &[
        (
            "rampart_policy_calls_total",
            "Calls into the policy.",
            |p| p.calls,
        ),
        (
            "rampart_policy_traps_total",
            "Calls that trapped (or ran out of time or memory).",
            |p| p.traps,
        ),
        (
            "rampart_policy_fallbacks_total",
            "Decisions made by the fallback because the policy failed.",
            |p| p.fallbacks,
        ),
    ];
    for (name, text, value) in POLICY_METRICS {
        family(
            o,
            name,
            "counter",
            text,
            policies
                .iter()
                .map(|(l, p)| (format!("{l},name=\"{}\"", p.name), value(p) as f64)),
        );
    }
    family(
        o,
        "rampart_policy_generation",
        "gauge",
        "The active router generation.",
        views.router.iter().map(|(shard, slot)| {
            (
                format!("shard=\"{shard}\",kind=\"router\""),
                slot.active.generation as f64,
            )
        }),
    );
}
