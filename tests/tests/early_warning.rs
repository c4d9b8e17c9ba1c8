//! Early warning from real causes: a replica paused while the primary
//! writes comes close to falling out of the primary's replication backlog
//! (it would need a full resynchronisation), and with it gone the shard
//! is one replica failure away from refusing synchronous writes. Each is a
//! metric and an event before anything fails, and the events say when the
//! risk is over.

use std::time::Duration;

use rampart_tests::{wait_until, Cluster, Proxy, Setup};

#[test]
fn a_paused_replica_is_seen_coming_before_it_needs_a_full_resync() {
    let cluster = Cluster::start(2);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"primary\"\n[shards.main.replication]\nquorum = \"one\"\ntimeout_ms = 1000",
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 60000\n",
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    // The smallest backlog Redis allows, so that a few writes fill it.
    assert_eq!(
        cluster.nodes[0]
            .cli(&["CONFIG", "SET", "repl-backlog-size", "16384"])
            .trim(),
        "OK"
    );
    let paused = cluster.nodes[2].addr();
    let headroom_series =
        format!("rampart_node_backlog_headroom_bytes{{shard=\"main\",node=\"{paused}\"}}");
    wait_until("the backlog to be known", Duration::from_secs(10), || {
        proxy.metric("rampart_shard_backlog_bytes{shard=\"main\"}") == Some(16384.0)
            && proxy.metric(&headroom_series).is_some_and(|h| h > 12000.0)
    });
    assert_eq!(
        proxy.metric("rampart_shard_spare_replicas{shard=\"main\"}"),
        Some(1.0)
    );

    cluster.nodes[2].signal("STOP");
    let mut conn = proxy.conn();
    let value = "x".repeat(1000);
    for i in 0..14 {
        let _: () = redis::Commands::set(&mut conn, format!("k{i}"), &value).unwrap();
    }
    wait_until("the backlog warning", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "risk-backlog-overflow")
    });
    let headroom = proxy.metric(&headroom_series).unwrap();
    assert!(headroom < 16384.0 * 0.25, "{headroom}");
    wait_until("the quorum warning", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "risk-one-failure-from-refusing-writes")
    });
    assert_eq!(
        proxy.metric("rampart_shard_spare_replicas{shard=\"main\"}"),
        Some(0.0)
    );
    // Warned, not failed: writes go on, and the paused replica, resumed
    // in time, catches up from the backlog without a full resync.
    let _: () = redis::Commands::set(&mut conn, "during", 1).unwrap();
    let full_syncs = || {
        cluster.nodes[0]
            .info_field("stats", "sync_full")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = full_syncs();
    cluster.nodes[2].signal("CONT");
    wait_until("both risks to be over", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .filter(|k| *k == "risk-cleared")
            .count()
            >= 2
    });
    assert_eq!(
        full_syncs(),
        before,
        "the replica caught up from the backlog"
    );
    let (_, metrics) = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics");
    assert!(
        metrics.contains("kind=\"risk-backlog-overflow\"}"),
        "counted by kind"
    );
}

#[test]
fn a_node_filling_up_to_its_maxmemory_is_seen_coming() {
    let cluster = Cluster::start(0);
    let node = &cluster.nodes[0];
    let used: u64 = node
        .info_field("memory", "used_memory")
        .and_then(|v| v.parse().ok())
        .expect("used_memory");
    // Room for about 4 MB more; writes are refused past it.
    let max = used + 4 * 1024 * 1024;
    node.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    node.cli(&["CONFIG", "SET", "maxmemory", &max.to_string()]);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\n",
            ..Setup::default()
        },
    );
    let addr = node.addr();
    let series = |name: &str| format!("{name}{{shard=\"main\",node=\"{addr}\"}}");
    wait_until("the memory to be sampled", Duration::from_secs(10), || {
        proxy.metric(&series("rampart_node_memory_max_bytes")) == Some(max as f64)
    });
    assert!(!proxy
        .event_kinds()
        .iter()
        .any(|k| k == "risk-memory-full-soon"));

    // Fill it to about 93%: warned before any write is refused.
    let mut conn = proxy.conn();
    let value = "x".repeat(10_000);
    for i in 0..380 {
        let _: () = redis::Commands::set(&mut conn, format!("m{i}"), &value).unwrap();
    }
    wait_until("the memory warning", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "risk-memory-full-soon")
    });
    // (Raised by the growth alone already, while the writes went on: at
    // that rate it would be full within minutes.) The next samples see it
    // over nine tenths full.
    wait_until(
        "the memory to be sampled full",
        Duration::from_secs(10),
        || {
            proxy
                .metric(&series("rampart_node_memory_used_bytes"))
                .is_some_and(|used| used > 0.9 * max as f64)
        },
    );
    let risks = proxy.admin_json("/v1/risks");
    let memory = &risks["shards"][0]["memory"][0];
    assert_eq!(memory["addr"], addr.as_str());
    assert!(memory["headroom_share"].as_f64().unwrap() < 0.1, "{risks}");

    // Room again: the risk is over.
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    wait_until("the all-clear", Duration::from_secs(40), || {
        proxy
            .events()
            .iter()
            .any(|e| e["kind"] == "risk-cleared" && e["detail"] == "risk-memory-full-soon: over")
    });
}
