//! Routing decided by Wasm components built from plugins/.

use std::time::Duration;

use rampart_tests::{plugin, wait_until, Cluster, Proxy, Setup};
use redis::Commands;

/// Reads served by each node while `reads` GETs go through the proxy.
fn served_by(cluster: &Cluster, proxy: &Proxy, reads: usize) -> Vec<u64> {
    let mut c = proxy.conn();
    let _: () = c.set("p", "v").unwrap();
    wait_until("replication", Duration::from_secs(5), || {
        cluster.nodes[1..]
            .iter()
            .all(|n| n.cli(&["GET", "p"]).trim() == "v")
    });
    let before: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    for _ in 0..reads {
        let v: String = c.get("p").unwrap();
        assert_eq!(v, "v");
    }
    cluster
        .nodes
        .iter()
        .zip(before)
        .map(|(n, b)| n.calls("get") - b)
        .collect()
}

fn proxy_with_router(cluster: &Cluster, name: &str) -> Proxy {
    let path = plugin(name);
    let shard = format!("read_from = \"replicas\"\nrouter = \"{}\"", path.display());
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: &shard,
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(5));
    proxy
}

#[test]
fn a_wasm_round_robin_router_spreads_reads_over_replicas() {
    let cluster = Cluster::start(2);
    let proxy = proxy_with_router(&cluster, "router-round-robin");
    let served = served_by(&cluster, &proxy, 200);
    assert_eq!(served[0], 0, "the primary served reads: {served:?}");
    assert_eq!(served[1] + served[2], 200);
    assert!(served[1] >= 60 && served[2] >= 60, "not spread: {served:?}");
}

#[test]
fn a_wasm_primary_only_router_overrides_read_from() {
    let cluster = Cluster::start(2);
    // read_from says replicas; the plugin says primary, and the plugin decides.
    let proxy = proxy_with_router(&cluster, "router-primary-only");
    let served = served_by(&cluster, &proxy, 100);
    assert_eq!(served, [100, 0, 0]);
}

#[test]
fn a_plugin_that_is_not_a_component_is_refused_at_startup() {
    let cluster = Cluster::start(0);
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0garbage").unwrap();
    let config = rampart_tests::config_for(
        &cluster.addrs(),
        Setup {
            shard: &format!("router = \"{}\"", bogus.display()),
            ..Setup::default()
        },
    );
    let config = rampart_tests::rampart::Config::parse(&config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = match runtime.block_on(rampart_tests::rampart::Server::start(config)) {
        Ok(_) => panic!("a bogus plugin was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("compile") && error.contains("bogus.wasm"),
        "{error}"
    );
}

/// Starts Rampart with the hostile router in `mode`; the error if it refuses.
fn start_hostile(cluster: &Cluster, mode: &str) -> Result<Proxy, String> {
    let path = rampart_tests::test_plugin("router-hostile");
    let shard = format!(
        "read_from = \"replicas\"\nrouter = \"{}\"\nrouter_config = \"{mode}\"",
        path.display()
    );
    let config = rampart_tests::config_for(
        &cluster.addrs(),
        Setup {
            shard: &shard,
            ..Setup::default()
        },
    );
    std::panic::catch_unwind(|| Proxy::start_with(&config)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "refused".into())
    })
}

/// The router's counters from `RAMPART POLICIES`.
fn policy_counters(proxy: &Proxy) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "POLICIES"])).unwrap();
    json[0][1].clone()
}

#[test]
fn plugins_that_fail_to_configure_are_refused_at_startup() {
    let cluster = Cluster::start(0);
    let refused = start_hostile(&cluster, "fail-configure")
        .err()
        .expect("refused");
    assert!(
        refused.contains("configure") && refused.contains("refuses every configuration"),
        "{refused}"
    );
    let refused = start_hostile(&cluster, "loop-in-configure")
        .err()
        .expect("refused");
    assert!(
        refused.contains("configure") && refused.contains("trapped"),
        "{refused}"
    );
}

#[test]
fn hostile_plugins_never_cost_a_request() {
    let cluster = Cluster::start(2);
    for mode in ["loop", "bomb", "trap-after:5", "read-file"] {
        let proxy = start_hostile(&cluster, mode).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let mut c = proxy.conn();
        let _: () = c.set("h", mode).unwrap();
        for _ in 0..30 {
            // Every read is answered, by the primary when the plugin fails.
            let v: String = c.get("h").unwrap();
            assert_eq!(v, mode);
        }
        let counters = policy_counters(&proxy);
        assert_eq!(counters["kind"], "wasm", "{mode}: {counters}");
        assert!(
            counters["traps"].as_u64().unwrap() > 0,
            "{mode}: {counters}"
        );
        assert!(
            counters["fallbacks"].as_u64().unwrap() > 0,
            "{mode}: {counters}"
        );
    }
}

#[test]
fn plugin_configuration_reaches_the_plugin() {
    let cluster = Cluster::start(2);
    // Node ids follow the order of the configured nodes, from 1.
    let proxy = start_hostile(&cluster, "pick:3").unwrap();
    proxy.wait_serving_replicas(2, Duration::from_secs(5));
    let served = served_by(&cluster, &proxy, 50);
    assert_eq!(served, [0, 0, 50]);
    let counters = policy_counters(&proxy);
    assert_eq!(counters["traps"], 0);
    assert!(counters["calls"].as_u64().unwrap() >= 50);
}
