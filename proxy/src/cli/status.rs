//! `rampart status` and `rampart events`: the admin API's JSON as text.

use std::time::Duration;

use serde_json::Value;

use super::admin::Admin;
use super::Failure;

pub fn status(admin: &Admin, json: bool) -> Result<(), Failure> {
    if json {
        print!("{}", admin.get("/v1/topology")?);
        return Ok(());
    }
    let topology = admin.get_json("/v1/topology")?;
    print!("{}", render_topology(&topology));
    Ok(())
}

/// The instances that share the shards through etcd: who holds each
/// shard's failover lease, and how fresh each one's view is.
fn render_coordination(coordination: &Value) -> String {
    if coordination.is_null() {
        return String::new();
    }
    let mut out = format!(
        "instance {}  etcd view {} ms old (writes held past {} ms){}\n",
        str(&coordination["instance"]),
        coordination["view_age_ms"]
            .as_u64()
            .map_or("never read".into(), |ms| ms.to_string()),
        coordination["max_view_age_ms"],
        if coordination["tilted"] == true {
            "  TILT: paused, deciding nothing"
        } else {
            ""
        }
    );
    if let Some(error) = coordination["last_error"].as_str() {
        out.push_str(&format!("  etcd: {error}\n"));
    }
    let holders = &coordination["lease_holders"];
    let mut rows = vec![cells(&[
        "INSTANCE", "LISTEN", "ADMIN", "HOLDS", "VIEW AGE", "EPOCHS",
    ])];
    for instance in coordination["instances"].as_array().into_iter().flatten() {
        let name = str(&instance["instance"]);
        let holds: Vec<&str> = holders
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, h)| h.as_str() == Some(name.as_str()))
            .map(|(shard, _)| shard.as_str())
            .collect();
        let epochs: Vec<String> = instance["shards"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(shard, seen)| {
                let fenced = if seen["fenced"] == true {
                    " fenced"
                } else {
                    ""
                };
                format!("{shard}:{}{fenced}", seen["epoch"])
            })
            .collect();
        rows.push(vec![
            name,
            str(&instance["listen"]),
            instance["admin"].as_str().unwrap_or("-").to_string(),
            if holds.is_empty() {
                "-".into()
            } else {
                holds.join(",")
            },
            format!("{} ms", instance["view_age_ms"]),
            epochs.join(" "),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    out
}

/// Each shard: a summary line, then one row per node; with
/// `[coordination]`, the instances first.
pub fn render_topology(topology: &Value) -> String {
    let mut out = render_coordination(&topology["coordination"]);
    for shard in topology["shards"].as_array().into_iter().flatten() {
        let durability = &shard["durability"];
        let mut writes = if durability["mode"] == "async" {
            "async".to_string()
        } else {
            format!(
                "sync, {} ack(s) within {} ms, {} on shortfall",
                durability["acks"],
                durability["timeout_ms"],
                str(&durability["on_shortfall"])
            )
        };
        if shard["mode"] == "fanout" {
            writes = format!("fan-out, {writes}");
        }
        let slots = match shard["slots"].as_str() {
            Some(slots) if slots != "0-16383" => format!("  slots {slots}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "shard {}{slots}  epoch {}  primary {}  reads from {}  writes {}\n",
            str(&shard["name"]),
            shard["epoch"],
            shard["primary"].as_str().unwrap_or("NONE"),
            str(&shard["read_from"]),
            writes,
        ));
        if shard["failing_over"] == true {
            out.push_str(&format!(
                "  FAILING OVER: {} client(s) holding writes\n",
                shard["held_clients"]
            ));
        }
        if let Some(why) = shard["awaiting_operator"].as_str() {
            out.push_str(&format!(
                "  WAITING FOR AN OPERATOR: {why}\n  (rampart promote {} <node> --force chooses a node, accepting what it may lack)\n",
                str(&shard["name"])
            ));
        }
        let mut rows = vec![cells(&[
            "NODE", "ROLE", "HEALTH", "SERVES", "OFFSET", "LAG", "RTT", "REQUESTS", "ERRORS",
        ])];
        // A primary whose writes are held (a failover, an operator's
        // decision awaited, a stale view of etcd) or that does not answer
        // is not serving writes, whatever its role.
        let writes_held = shard["failing_over"] == true
            || shard["awaiting_operator"].is_string()
            || shard["view_stale"] == true;
        for node in shard["nodes"].as_array().into_iter().flatten() {
            let primary = node["primary"] == true;
            // Fan-out nodes: a node not in sync says where it stands.
            let sync = node["sync"].as_str().filter(|s| *s != "in-sync");
            rows.push(vec![
                str(&node["addr"]),
                if primary {
                    "primary".into()
                } else {
                    str(&node["role"])
                },
                str(&node["health"]),
                if let Some(sync) = sync {
                    sync.to_string()
                } else if primary && (writes_held || node["health"] != "up") {
                    "held".into()
                } else if primary {
                    "writes".into()
                } else if node["serves_reads"] == true {
                    "reads".into()
                } else {
                    "-".into()
                },
                node["offset"].to_string(),
                if primary && node["sync"].is_null() {
                    "-".into()
                } else {
                    format!("{} B / {} ms", node["lag_bytes"], node["lag_ms"])
                },
                format!("{:.2} ms", node["rtt_us"].as_f64().unwrap_or(0.0) / 1000.0),
                node["requests"].to_string(),
                node["errors"].to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        out.push('\n');
    }
    out
}

pub fn events(admin: &Admin, follow: bool, all: bool) -> Result<(), Failure> {
    let mut after = 0;
    loop {
        let path = if all {
            "/v1/events?instances=all".to_string()
        } else {
            format!("/v1/events?after={after}")
        };
        let events = admin.get_json(&path)?;
        for event in events.as_array().into_iter().flatten() {
            after = after.max(event["seq"].as_u64().unwrap_or(0));
            let instance = match event["instance"].as_str() {
                Some(name) => format!("{name}  "),
                None => String::new(),
            };
            println!(
                "{}  {instance}{}  {:<20} {}  {} (epoch {})",
                clock(event["at_ms"].as_u64().unwrap_or(0)),
                str(&event["shard"]),
                str(&event["kind"]),
                event["node"].as_str().unwrap_or("-"),
                str(&event["detail"]),
                event["epoch"],
            );
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `HH:MM:SS.mmm` UTC, enough to line events up with logs.
fn clock(at_ms: u64) -> String {
    let ms = at_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A JSON string without its quotes; anything else as JSON.
pub fn str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn cells(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

/// Left-aligned columns, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `rampart doctor`: each pitfall found, with its fix.
pub fn doctor(admin: &Admin, json: bool) -> Result<(), Failure> {
    let report = admin.get_json("/v1/doctor")?;
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{report}");
    } else {
        let checks = report["checks"].as_array().map_or(0, |c| c.len());
        println!("{checks} checks, {} finding(s)", findings.len());
        for finding in &findings {
            let place: Vec<String> = ["shard", "node"]
                .iter()
                .filter_map(|k| finding[*k].as_str().map(String::from))
                .collect();
            println!(
                "\n[{}]{} {}\n  fix: {}",
                str(&finding["check"]),
                if place.is_empty() {
                    String::new()
                } else {
                    format!(" {}:", place.join(" "))
                },
                str(&finding["finding"]),
                str(&finding["fix"])
            );
        }
    }
    match findings.len() {
        0 => Ok(()),
        n => Err(Failure::Failed(format!("{n} pitfall(s) found"))),
    }
}

/// `rampart slots`: each shard's hash slots, as a table, as the
/// configuration's `slots` lines (`--toml`), or as JSON.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_whose_writes_are_held_is_not_shown_serving_them() {
        let node = |addr: &str, health: &str| {
            serde_json::json!({"addr": addr, "primary": true, "role": "primary", "health": health,
                "serves_reads": false, "offset": 10, "lag_bytes": 0, "lag_ms": 0, "rtt_us": 100,
                "requests": 0, "errors": 0})
        };
        let shard = |awaiting: serde_json::Value, health: &str| {
            serde_json::json!({"shards": [{"name": "main", "epoch": 3, "primary": "a:1",
                "read_from": "primary", "durability": {"mode": "async"}, "mode": "native",
                "failing_over": false, "held_clients": 0, "awaiting_operator": awaiting,
                "nodes": [node("a:1", health)]}]})
        };
        let serving = render_topology(&shard(serde_json::Value::Null, "up"));
        assert!(serving.contains("primary  up      writes"), "{serving}");
        let waiting = render_topology(&shard("no node holds every write".into(), "up"));
        assert!(waiting.contains("WAITING FOR AN OPERATOR"), "{waiting}");
        assert!(
            waiting.contains("held") && !waiting.contains("writes  "),
            "{waiting}"
        );
        let down = render_topology(&shard(serde_json::Value::Null, "down"));
        assert!(down.contains("held"), "{down}");
    }

    #[test]
    fn instances_show_leases_view_ages_and_epochs() {
        let topology = serde_json::json!({
            "coordination": {
                "instance": "a:6380", "view_age_ms": 12, "max_view_age_ms": 3000,
                "tilted": false, "failsafe": false, "last_error": null,
                "lease_holders": {"main": "b:6380"},
                "instances": [
                    {"instance": "a:6380", "listen": "10.0.0.1:6380", "admin": null,
                     "shards": {"main": {"epoch": 4, "fenced": false}}, "view_age_ms": 90},
                    {"instance": "b:6380", "listen": "10.0.0.2:6380", "admin": "10.0.0.2:6381",
                     "shards": {"main": {"epoch": 5, "fenced": true}}, "view_age_ms": 310}
                ]
            },
            "shards": []
        });
        let text = render_topology(&topology);
        assert!(
            text.starts_with("instance a:6380  etcd view 12 ms old (writes held past 3000 ms)\n"),
            "{text}"
        );
        let b = text
            .lines()
            .find(|l| l.starts_with("b:6380"))
            .unwrap_or_default();
        for part in ["10.0.0.2:6381", "main", "310 ms", "main:5 fenced"] {
            assert!(b.contains(part), "{b}");
        }
        let a = text
            .lines()
            .find(|l| l.starts_with("a:6380"))
            .unwrap_or_default();
        assert!(a.contains(" - ") && a.contains("main:4"), "{a}");
        assert!(render_topology(&serde_json::json!({"shards": []})).is_empty());
    }
}
