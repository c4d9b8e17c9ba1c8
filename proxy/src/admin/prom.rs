//! Prometheus's text format: a family's HELP and TYPE lines and its
//! samples.

use std::fmt::Write;

/// One metric: its HELP and TYPE, then every sample (`labels` without
/// braces, empty for none).
pub(super) fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    text: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) {
    help(out, name, kind, text);
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

pub(super) fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// What `sample` says of every node in service, each with its `shard` and
/// `node` labels: families render one metric at a time from these rows.
pub(super) fn per_node<T>(
    ctx: &crate::context::Context,
    sample: impl Fn(&crate::topology::Node) -> T,
) -> Vec<(String, T)> {
    let mut rows = Vec::new();
    for shard in ctx.topology.shards().iter() {
        for node in shard.nodes.iter().filter(|n| !n.is_retired()) {
            let labels = format!("shard=\"{}\",node=\"{}\"", shard.name, node.addr);
            rows.push((labels, sample(node)));
        }
    }
    rows
}
