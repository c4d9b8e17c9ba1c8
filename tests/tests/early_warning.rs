//! Early warning from real causes: a replica paused while the primary
//! writes comes close to falling out of the primary's replication backlog
//! (it would need a full resynchronisation), and with it gone the shard
//! is one replica failure away from refusing synchronous writes. Each is a
//! metric and an event before anything fails, and the events say when the
//! risk is over. So do a node that stalls now and then (probes missed
//! before it is judged down) and one whose answers slow down against its
//! own usual.

use std::time::Duration;

use rampart_tests::forwarder::{Fault, Forwarder};
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

#[test]
fn a_node_that_stalls_now_and_then_is_suspected_before_it_fails() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 100\ndown_after_ms = 60000\n",
            ..Setup::default()
        },
    );
    let node = &cluster.nodes[0];
    let series = |name: &str| format!("{name}{{shard=\"main\",node=\"{}\"}}", node.addr());
    wait_until("probes answered", Duration::from_secs(10), || {
        proxy.metric(&series("rampart_node_probes_missed")) == Some(0.0)
    });
    // Stalls of a third of a second (as a fork on a big data set, or
    // swapping, makes): each costs a probe or two, none is long enough
    // to be judged down.
    for _ in 0..3 {
        node.signal("STOP");
        std::thread::sleep(Duration::from_millis(350));
        node.signal("CONT");
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("the suspicion warning", Duration::from_secs(5), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "risk-node-suspected")
    });
    assert!(proxy.metric(&series("rampart_node_probes_missed")).unwrap() >= 3.0);
    assert_eq!(proxy.metric(&series("rampart_node_up")), Some(1.0));
    let risks = proxy.admin_json("/v1/risks");
    assert!(
        risks["shards"][0]["probes"][0]["missed"].as_u64().unwrap() >= 3,
        "{risks}"
    );
    let _: () = redis::Commands::set(&mut proxy.conn(), "k", 1).unwrap();
    // Sixty clean probes later (3 s here, a minute by default): over.
    wait_until("the all-clear", Duration::from_secs(10), || {
        proxy
            .events()
            .iter()
            .any(|e| e["kind"] == "risk-cleared" && e["detail"] == "risk-node-suspected: over")
    });
    assert_eq!(
        proxy.metric(&series("rampart_node_probes_missed")),
        Some(0.0)
    );
    assert!(
        !proxy.event_kinds().iter().any(|k| k == "primary-lost"),
        "warned, never judged down"
    );
}

#[test]
fn a_node_answering_slower_than_its_own_usual_is_seen_drifting() {
    let cluster = Cluster::start(0);
    // Rampart reaches the node through a forwarder that can delay it, as
    // a congested network or a busy host would.
    let forwarder = Forwarder::start(cluster.nodes[0].port);
    let proxy = Proxy::start(
        &[forwarder.addr()],
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 1000\n",
            ..Setup::default()
        },
    );
    let series = |name: &str| format!("{name}{{shard=\"main\",node=\"{}\"}}", forwarder.addr());
    wait_until("the baseline", Duration::from_secs(15), || {
        proxy
            .metric(&series("rampart_node_latency_baseline_seconds"))
            .is_some()
    });
    let baseline = proxy
        .metric(&series("rampart_node_latency_baseline_seconds"))
        .unwrap();
    assert!(baseline < 0.005, "{baseline}");
    assert!(!proxy
        .event_kinds()
        .iter()
        .any(|k| k == "risk-latency-drift"));

    // 10 ms each way: about 20 ms a round trip.
    forwarder.set_delay(Duration::from_millis(10));
    wait_until("the drift warning", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "risk-latency-drift")
    });
    let latency = proxy
        .metric(&series("rampart_node_latency_seconds"))
        .unwrap();
    assert!(latency > 0.015, "{latency}");
    // Served all along, only slower.
    let _: () = redis::Commands::set(&mut proxy.conn(), "k", 1).unwrap();

    forwarder.set(Fault::Pass);
    wait_until("the all-clear", Duration::from_secs(10), || {
        proxy
            .events()
            .iter()
            .any(|e| e["kind"] == "risk-cleared" && e["detail"] == "risk-latency-drift: over")
    });
    let (_, metrics) = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics");
    assert!(
        metrics.contains("kind=\"risk-latency-drift\"}"),
        "counted by kind"
    );
}
