//! Routing decided by Wasm components built from plugins/.
//!
//! The shards here read with `read_consistency = "eventual"`, so that the
//! router decides every read; under `session` a connection that keeps
//! reading stays on one replica (tests/tests/consistency.rs).

use std::time::Duration;

use rampart_tests::{plugin, wait_until, Cluster, Monitor, Proxy, Setup};
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
    proxy_with_router_n(cluster, name, 2)
}

/// With `replicas` replicas expected to serve reads.
fn proxy_with_router_n(cluster: &Cluster, name: &str, replicas: usize) -> Proxy {
    let path = plugin(name);
    let shard = format!(
        "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"",
        path.display()
    );
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: &shard,
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(replicas, Duration::from_secs(5));
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

/// Round robin goes round by burst: the reads a client pipelined in one
/// write go to one replica, as one batch, and its next burst to the other.
#[test]
fn round_robin_keeps_a_pipeline_on_one_replica_and_turns_per_burst() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(2);
    let proxy = proxy_with_router(&cluster, "router-round-robin");
    served_by(&cluster, &proxy, 2);
    let mut raw = std::net::TcpStream::connect(proxy.addr).unwrap();
    let pipeline = b"*2\r\n$3\r\nGET\r\n$1\r\np\r\n".repeat(20);
    let reply = b"$1\r\nv\r\n".repeat(20);
    let mut per_burst = Vec::new();
    for _ in 0..2 {
        let before: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
        raw.write_all(&pipeline).unwrap();
        let mut got = vec![0u8; reply.len()];
        raw.read_exact(&mut got).unwrap();
        assert_eq!(got, reply);
        let served: Vec<u64> = cluster
            .nodes
            .iter()
            .zip(before)
            .map(|(n, b)| n.calls("get") - b)
            .collect();
        per_burst.push(served);
    }
    let (first, second) = (&per_burst[0], &per_burst[1]);
    assert!(
        first[0] == 0 && second[0] == 0,
        "the primary served reads: {per_burst:?}"
    );
    assert!(
        (first[1] == 20 && second[2] == 20) || (first[2] == 20 && second[1] == 20),
        "each burst on one replica, the next on the other: {per_burst:?}"
    );
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
        "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"\nrouter_config = \"{mode}\"",
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
    json["router"][0][1]["active"].clone()
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
    // A loop in configure runs out of its wall-clock or instruction
    // budget, and the error says which.
    assert!(
        refused.contains("in configure")
            && (refused.contains("wall-clock budget") || refused.contains("fuel exhausted")),
        "{refused}"
    );
    // An answer naming a node that does not exist fails the self-check,
    // and the refusal quotes it.
    let refused = start_hostile(&cluster, "pick:9").err().expect("refused");
    assert!(
        refused.contains("self-check") && refused.contains("route returned unknown node 9"),
        "{refused}"
    );
}

#[test]
fn hostile_plugins_never_cost_a_request() {
    let cluster = Cluster::start(2);
    // Each behaves long enough to pass the self-check at startup, then
    // misbehaves on every call.
    // What each failure is called, in words (`/v1/policies`' last error).
    for (mode, reason) in [
        ("loop-after:40", "fuel exhausted after"),
        ("bomb-after:40", "memory limit 16 MiB exceeded in route"),
        ("trap-after:40", "trap on call 41 (in route)"),
        ("read-file-after:40", "which Rampart does not provide"),
    ] {
        let proxy = start_hostile(&cluster, mode).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let mut c = proxy.conn();
        let _: () = c.set("h", mode).unwrap();
        for _ in 0..80 {
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
        let last = counters["last_error"].as_str().unwrap_or_default();
        assert!(last.contains(reason), "{mode}: {last}");
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

/// Readers that GET until stopped; returns (ok, failed).
fn readers(
    proxy: &Proxy,
    n: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<(u64, u64)>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = (0..n)
        .map(|_| {
            let client = proxy.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.get::<_, String>("p") {
                        Ok(v) if v == "v" => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    (stop, threads)
}

/// `RAMPART POLICY <action> router <plugin> <config>`; the reply.
fn policy_command(proxy: &Proxy, action: &str, plugin: &std::path::Path, config: &str) -> String {
    let plugin = rampart_tests::plugin_name(plugin);
    let mut args = vec!["RAMPART", "POLICY", action, "router", &plugin];
    if !config.is_empty() {
        args.push(config);
    }
    proxy.cli(&args)
}

fn generation(proxy: &Proxy) -> u64 {
    let json: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "POLICY", "LIST"])).unwrap();
    json["router"][0][1]["active"]["generation"]
        .as_u64()
        .unwrap()
}

#[test]
fn routers_are_swapped_under_load_without_dropping_a_request() {
    let cluster = Cluster::start(2);
    let proxy = proxy_with_router(&cluster, "router-round-robin");
    assert_eq!(
        served_by(&cluster, &proxy, 50)[0],
        0,
        "reads start on the replicas"
    );
    let (stop, threads) = readers(&proxy, 4);

    // By RESP: the primary-only plugin.
    let path = plugin("router-primary-only");
    let answer = policy_command(&proxy, "LOAD", &path, "");
    assert_eq!(answer.trim(), "OK generation 2");
    std::thread::sleep(Duration::from_millis(200));
    let served = served_by(&cluster, &proxy, 50);
    assert_eq!(
        served[1] + served[2],
        0,
        "replicas served reads: {served:?}"
    );

    // By HTTP: the round-robin plugin's bytes.
    let bytes = std::fs::read(plugin("router-round-robin")).unwrap();
    let (status, body) = rampart_tests::http(
        proxy.admin.unwrap(),
        "PUT",
        "/v1/policies/router?name=spread",
        &bytes,
    );
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["generation"], 3);
    assert!(
        view["source"].as_str().unwrap().starts_with("spread@"),
        "{view}"
    );
    assert_eq!(view["sha256"].as_str().unwrap().len(), 64);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(served_by(&cluster, &proxy, 50)[0], 0);

    // Back to the previous generation.
    assert_eq!(
        proxy
            .cli(&["RAMPART", "POLICY", "ROLLBACK", "router"])
            .trim(),
        "OK generation 2"
    );
    let served = served_by(&cluster, &proxy, 50);
    assert_eq!(
        served[1] + served[2],
        0,
        "replicas served reads: {served:?}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    assert_eq!(
        failed, 0,
        "{failed} reads failed across three swaps ({ok} succeeded)"
    );
    assert!(ok > 100);
    let (status, body) = rampart_tests::http_get(proxy.admin.unwrap(), "/v1/policies");
    assert_eq!(status, 200);
    assert!(body.contains("\"previous\""), "{body}");
}

#[test]
fn a_plugin_that_fails_to_load_leaves_the_active_one_in_place() {
    let cluster = Cluster::start(1);
    let proxy = proxy_with_router_n(&cluster, "router-round-robin", 1);
    let hostile = rampart_tests::test_plugin("router-hostile");
    let error = policy_command(&proxy, "LOAD", &hostile, "fail-configure");
    assert!(
        error.contains("configure") && error.contains("refuses"),
        "{error}"
    );
    let error = policy_command(&proxy, "LOAD", &hostile, "loop-in-configure");
    assert!(error.contains("configure"), "{error}");
    let (status, body) = rampart_tests::http(
        proxy.admin.unwrap(),
        "PUT",
        "/v1/policies/router",
        b"\0asm\x01\0\0\0garbage",
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("compile"), "{body}");
    assert_eq!(generation(&proxy), 1);
    assert!(
        proxy
            .event_kinds()
            .iter()
            .filter(|k| *k == "policy-rejected")
            .count()
            >= 3
    );
    let error = policy_command(&proxy, "LOAD", &hostile, "loop-in-update");
    assert!(
        error.contains("self-check") && error.contains("fuel exhausted after"),
        "{error}"
    );
    let error = proxy.cli(&["RAMPART", "POLICY", "LOAD", "quorum", "x.wasm"]);
    assert!(
        error.contains("cannot read plugin x.wasm: no such file"),
        "{error}"
    );
    assert_eq!(generation(&proxy), 1);
}

/// A router whose `update` returns a plan: the host carries it out per
/// read without calling the plugin; a plan naming unknown nodes is refused.
#[test]
fn a_plan_is_carried_out_without_calling_the_plugin() {
    let cluster = Cluster::start(2);
    let start = |config: &str| {
        let shard = format!(
            "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"\nrouter_config = \"{config}\"",
            rampart_tests::test_plugin("router-hostile").display()
        );
        let proxy = Proxy::start(
            &cluster.addrs(),
            Setup {
                shard: &shard,
                ..Setup::default()
            },
        );
        proxy.wait_serving_replicas(2, Duration::from_secs(5));
        proxy
    };
    // Node ids follow the configuration's order: 3 is the second replica.
    let proxy = start("plan:3");
    let calls_before = policy_counters(&proxy)["calls"].as_u64().unwrap();
    assert_eq!(served_by(&cluster, &proxy, 200), [0, 0, 200]);
    let calls = policy_counters(&proxy)["calls"].as_u64().unwrap() - calls_before;
    assert!(
        calls < 50,
        "{calls} plugin calls for 200 reads: the plan was not used"
    );

    // A plan naming a node that does not exist fails the self-check.
    let hostile = rampart_tests::test_plugin("router-hostile");
    let error = policy_command(&proxy, "LOAD", &hostile, "plan:99");
    assert!(error.contains("self-check"), "{error}");
    assert_eq!(served_by(&cluster, &proxy, 20), [0, 0, 20]);
}

#[test]
fn a_plugin_that_keeps_trapping_is_rolled_back() {
    let cluster = Cluster::start(1);
    let proxy = proxy_with_router_n(&cluster, "router-round-robin", 1);
    let hostile = rampart_tests::test_plugin("router-hostile");
    // It passes the self-check (32 calls), then traps every 40th call.
    let answer = policy_command(&proxy, "LOAD", &hostile, "trap-after:40");
    assert_eq!(answer.trim(), "OK generation 2");
    let mut c = proxy.conn();
    let _: () = c.set("p", "v").unwrap();
    wait_until("replication", Duration::from_secs(5), || {
        cluster.nodes[1].cli(&["GET", "p"]).trim() == "v"
    });
    for _ in 0..300 {
        // Reads keep working: a trap falls back to the primary.
        let v: String = c.get("p").unwrap();
        assert_eq!(v, "v");
    }
    wait_until("the rollback", Duration::from_secs(5), || {
        generation(&proxy) == 1
    });
    assert!(proxy
        .event_kinds()
        .iter()
        .any(|k| k == "policy-rolled-back"));
    // Why it left stays visible after it is gone: its generation, traps
    // and last error, in RAMPART POLICY LIST (and so /v1/policies) ...
    let json: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "POLICY", "LIST"])).unwrap();
    let retired = &json["router"][0][1]["retired"][0];
    assert_eq!(retired["generation"], 2, "{json:#}");
    assert!(retired["traps"].as_u64().unwrap_or(0) >= 3, "{retired}");
    assert!(
        retired["reason"]
            .as_str()
            .is_some_and(|r| r.contains("automatically")),
        "{retired}"
    );
    assert!(retired["last_error"].is_string(), "{retired}");
    // ... and in the CLI's table.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args([
            "policy",
            "list",
            "--admin",
            &proxy.admin.unwrap().to_string(),
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("retired")
            && listed.contains("router generation 2 of main: rolled back automatically"),
        "{listed}"
    );
}

#[test]
fn a_shadow_router_is_compared_then_activated() {
    let cluster = Cluster::start(2);
    let proxy = proxy_with_router(&cluster, "router-round-robin");
    let path = plugin("router-primary-only");
    let answer = policy_command(&proxy, "SHADOW", &path, "");
    assert_eq!(answer.trim(), "OK generation 2");
    // The shadow decides nothing: reads still go to the replicas.
    assert_eq!(served_by(&cluster, &proxy, 100)[0], 0);
    let json: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "POLICY", "LIST"])).unwrap();
    let counts = json["router"][0][1]["shadow"]["by_active_choice"]
        .as_array()
        .unwrap()
        .clone();
    let disagree: u64 = counts.iter().map(|c| c["disagree"].as_u64().unwrap()).sum();
    let agree: u64 = counts.iter().map(|c| c["agree"].as_u64().unwrap()).sum();
    assert!(disagree >= 100 && agree == 0, "{counts:?}");
    // What the candidate would have done: everything to the primary.
    let chosen = &json["router"][0][1]["shadow"]["by_shadow_choice"];
    assert_eq!(chosen[0][0], "primary", "{chosen}");
    assert!(chosen[0][1].as_u64().unwrap() >= 100, "{chosen}");
    assert_eq!(chosen[1][1], 0, "{chosen}");

    assert_eq!(
        proxy
            .cli(&["RAMPART", "POLICY", "ACTIVATE", "router"])
            .trim(),
        "OK generation 2"
    );
    assert_eq!(served_by(&cluster, &proxy, 50), [50, 0, 0]);
}

#[test]
fn editing_the_config_file_reloads_the_router() {
    let cluster = Cluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let write_with = |router: &str, sections: &str| {
        let shard = format!(
            "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"",
            plugin(router).display()
        );
        let text = rampart_tests::config_for(
            &cluster.addrs(),
            Setup {
                shard: &shard,
                sections,
                ..Setup::default()
            },
        );
        std::fs::write(&file, text).unwrap();
    };
    let write = |router: &str| write_with(router, "");
    write("router-round-robin");
    let proxy = Proxy::start_with(&std::fs::read_to_string(&file).unwrap());
    proxy.wait_serving_replicas(2, Duration::from_secs(5));
    proxy.watch_config(&file);
    assert_eq!(served_by(&cluster, &proxy, 50)[0], 0);

    // A broken file changes nothing.
    std::fs::write(&file, "[proxy]\nlisten = 12\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(generation(&proxy), 1);

    write("router-primary-only");
    wait_until("the reload", Duration::from_secs(10), || {
        generation(&proxy) == 2
    });
    assert_eq!(served_by(&cluster, &proxy, 50), [50, 0, 0]);

    // A setting that cannot change live is named, not silently ignored.
    write_with(
        "router-primary-only",
        "[probe]\ninterval_ms = 70\n[backend]\nconnect_timeout_ms = 900\n[log]\nlevel = \"debug\"\n[shards.main.replication]\nquorum = \"one\"\n",
    );
    wait_until("the reload event", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .filter(|k| *k == "config-reloaded")
            .count()
            == 2
    });
    assert_eq!(
        proxy.last_event_detail("config-reloaded").as_deref(),
        Some("applied now: log.level, probe.interval_ms, shards.main.replication.quorum; at the next start: backend.connect_timeout_ms")
    );
    assert_eq!(
        proxy.shard()["durability"]["acks"],
        1,
        "the quorum applies live"
    );
    assert_eq!(generation(&proxy), 2, "an unchanged router is not reloaded");
}

/// A proxy whose sections (after `[shards.main]`) are `extra`.
fn proxy_with(cluster: &Cluster, sections: &str, extra: &str) -> Proxy {
    let config = format!(
        "{}{extra}",
        rampart_tests::config_for(
            &cluster.addrs(),
            Setup {
                sections,
                ..Setup::default()
            }
        )
    );
    Proxy::start_with(&config)
}

#[test]
fn a_quorum_plugin_decides_acknowledgements_and_the_election() {
    let mut cluster = Cluster::start(2);
    let quorum = format!(
        "[shards.main.replication]\nquorum_plugin = \"{}\"\nquorum_config = \"quorum=all timeout_ms=500 on_shortfall=fail\"\n",
        plugin("quorum-standard").display()
    );
    let proxy = proxy_with(
        &cluster,
        "[probe]\ninterval_ms = 50\ndown_after_ms = 400\n",
        &quorum,
    );
    let durability = &proxy.shard()["durability"];
    assert_eq!(durability["acks"], 2, "{durability}");
    assert_eq!(durability["timeout_ms"], 500);
    let mut c = proxy.conn();
    wait_until(
        "a first acknowledged write",
        Duration::from_secs(10),
        || c.set::<_, _, ()>("q", "1").is_ok(),
    );

    // One replica paused: "all" cannot be met.
    cluster.nodes[2].signal("STOP");
    let err = c.set::<_, _, ()>("q", "2").unwrap_err();
    assert_eq!(err.code(), Some("NOQUORUM"), "{err}");
    cluster.nodes[2].signal("CONT");

    // The plugin's election picks the new primary.
    cluster.nodes[0].kill();
    wait_until("a promotion", Duration::from_secs(10), || {
        proxy.shard()["epoch"] == 2
    });
    let json: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "POLICY", "LIST"])).unwrap();
    let view = &json["quorum"][0][1];
    assert_eq!(view["kind"], "wasm", "{json}");
    assert!(
        view["calls"].as_u64().unwrap() >= 2,
        "requirement and elect: {view}"
    );
    assert_eq!(view["traps"], 0);
}

#[test]
fn detector_plugins_judge_the_nodes() {
    for (name, config) in [
        ("detector-fixed-timeout", "down_after_ms=400"),
        ("detector-phi-accrual", "threshold=8 min_std_ms=100"),
    ] {
        let mut cluster = Cluster::start(1);
        let sections = format!(
            "[probe]\ninterval_ms = 50\ndetector_plugin = \"{}\"\ndetector_config = \"{config}\"\n",
            plugin(name).display()
        );
        let proxy = proxy_with(&cluster, &sections, "");
        let mut c = proxy.conn();
        let _: () = c.set("d", "1").unwrap();
        cluster.nodes[0].kill();
        wait_until("a promotion", Duration::from_secs(10), || {
            proxy.shard()["epoch"] == 2
        });
        let json: serde_json::Value =
            serde_json::from_str(&proxy.cli(&["RAMPART", "POLICY", "LIST"])).unwrap();
        assert_eq!(json["detector"]["kind"], "wasm", "{name}: {json}");
        assert!(
            json["detector"]["calls"].as_u64().unwrap() > 10,
            "{name}: {json}"
        );
        assert_eq!(json["detector"]["traps"], 0, "{name}: {json}");
        // Nodes that answer stay up under the plugin's judgement.
        let up = proxy.shard()["nodes"][1]["health"].clone();
        assert_eq!(up, "up", "{name}");
    }
}

#[test]
fn the_example_plugin_routes_by_prefix() {
    let cluster = Cluster::start(2);
    let proxy = proxy_with_router(&cluster, "router-round-robin");
    let path = rampart_tests::example_plugin();
    let answer = policy_command(&proxy, "LOAD", &path, "prefix=session:");
    assert_eq!(answer.trim(), "OK generation 2");
    let mut c = proxy.conn();
    let _: () = c.set("session:1", "s").unwrap();
    let _: () = c.set("user:1", "u").unwrap();
    wait_until("replication", Duration::from_secs(5), || {
        cluster.nodes[1..]
            .iter()
            .all(|n| n.cli(&["GET", "user:1"]).trim() == "u")
    });

    let before: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    for _ in 0..40 {
        let v: String = c.get("session:1").unwrap();
        assert_eq!(v, "s");
    }
    let after: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    assert_eq!(
        after[0] - before[0],
        40,
        "prefixed keys are read from the primary"
    );

    for _ in 0..40 {
        let v: String = c.get("user:1").unwrap();
        assert_eq!(v, "u");
    }
    let last: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    let replica_reads: Vec<u64> = (1..3).map(|i| last[i] - after[i]).collect();
    assert_eq!(
        last[0], after[0],
        "other keys are not read from the primary"
    );
    assert!(
        replica_reads.contains(&40) && replica_reads.contains(&0),
        "one replica, the nearest: {replica_reads:?}"
    );

    // A bad configuration is refused with the plugin's own words.
    let error = policy_command(&proxy, "LOAD", &path, "prefix");
    assert!(error.contains("expected prefix="), "{error}");
}

/// GETs `keys` through the proxy; returns, per replica (monitored), the
/// keys it served.
fn serve_keys(proxy: &Proxy, monitors: &[Monitor], keys: &[String]) -> Vec<Vec<String>> {
    let mut conn = proxy.conn();
    for key in keys {
        let _: Option<String> = conn.get(key).unwrap();
    }
    let mut served: Vec<Vec<String>> = vec![Vec::new(); monitors.len()];
    wait_until(
        "MONITOR to show every read",
        Duration::from_secs(10),
        || {
            for (i, monitor) in monitors.iter().enumerate() {
                served[i].extend(monitor.take("GET"));
            }
            served.iter().map(Vec::len).sum::<usize>() >= keys.len()
        },
    );
    served
}

#[test]
fn the_key_affinity_router_keeps_each_key_on_one_replica() {
    let mut cluster = Cluster::start(3);
    let proxy = proxy_with_router_n(&cluster, "router-key-affinity", 3);
    let monitors: Vec<Monitor> = cluster.nodes[1..].iter().map(Monitor::start).collect();
    let keys: Vec<String> = (0..300).map(|i| format!("user:{i}")).collect();
    let twice: Vec<String> = keys.iter().chain(&keys).cloned().collect();

    let served = serve_keys(&proxy, &monitors, &twice);
    let owner = |served: &[Vec<String>], key: &String| -> Vec<usize> {
        (0..served.len())
            .filter(|&r| served[r].contains(key))
            .collect()
    };
    let mut owners = std::collections::HashMap::new();
    for key in &keys {
        let on = owner(&served, key);
        assert_eq!(on.len(), 1, "{key} was read from replicas {on:?}");
        assert_eq!(served[on[0]].iter().filter(|k| *k == key).count(), 2);
        owners.insert(key.clone(), on[0]);
    }
    for (r, keys_on) in served.iter().enumerate() {
        assert!(
            keys_on.len() >= 2 * 45,
            "replica {r} served only {} reads",
            keys_on.len()
        );
    }

    // A replica leaves: its keys move, nobody else's do.
    cluster.nodes[3].kill();
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let served = serve_keys(&proxy, &monitors[..2], &keys);
    for key in &keys {
        let now = owner(&served, key);
        assert_eq!(now.len(), 1, "{key} was read from replicas {now:?}");
        if owners[key] != 2 {
            assert_eq!(now[0], owners[key], "{key} moved though its replica stayed");
        }
    }
}

#[test]
fn the_least_latency_router_prefers_the_fast_replica_and_spreads_load() {
    let cluster = rampart_tests::FaultyCluster::start(2);
    let shard = format!(
        "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"",
        plugin("router-least-latency").display()
    );
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: &shard,
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let gets = |node: usize| cluster.nodes[node].calls("get");

    // Equal replicas under concurrent load: both get a share.
    let before = [gets(1), gets(2)];
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                let mut conn = proxy.conn();
                for i in 0..300 {
                    let _: Option<String> = conn.get(format!("k{i}")).unwrap();
                }
            });
        }
    });
    let shares = [gets(1) - before[0], gets(2) - before[1]];
    assert!(shares.iter().all(|&n| n >= 1800 / 10), "{shares:?}");

    // One replica 20 ms away: once probes see it, reads avoid it.
    let slow = cluster.node_at(&cluster.addrs()[2]);
    cluster.forwarders[slow].set_delay(Duration::from_millis(20));
    wait_until(
        "the probe to see the slow replica",
        Duration::from_secs(10),
        || proxy.shard()["nodes"][2]["rtt_us"].as_u64().unwrap_or(0) > 20_000,
    );
    let before = [gets(1), gets(2)];
    let mut conn = proxy.conn();
    for i in 0..200 {
        let _: Option<String> = conn.get(format!("k{i}")).unwrap();
    }
    let (fast, slow) = (gets(1) - before[0], gets(2) - before[1]);
    assert!(fast >= 190 && slow <= 10, "fast {fast}, slow {slow}");
}

#[test]
fn the_zone_affinity_router_keeps_reads_in_the_zone() {
    let mut cluster = Cluster::start(2);
    let addrs = cluster.addrs();
    let shard = format!(
        "read_from = \"replicas\"\nread_consistency = \"eventual\"\nrouter = \"{}\"\nzones = {{ \"{}\" = \"zone-a\", \"{}\" = \"zone-b\" }}",
        plugin("router-zone-affinity").display(),
        addrs[1],
        addrs[2]
    );
    let proxy = Proxy::start(
        &addrs,
        Setup {
            proxy: "zone = \"zone-b\"",
            shard: &shard,
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    assert_eq!(served_by(&cluster, &proxy, 100), [0, 0, 100]);

    // No replica left in the zone: the others serve (fallback=replicas).
    cluster.nodes[2].kill();
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let before = cluster.nodes[1].calls("get");
    let mut conn = proxy.conn();
    for _ in 0..50 {
        let _: Option<String> = conn.get("p").unwrap();
    }
    assert_eq!(cluster.nodes[1].calls("get") - before, 50);
}

#[test]
fn quorum_and_detector_policies_are_swapped_at_runtime() {
    use rampart_tests::{http, http_get};
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let admin = proxy.admin.unwrap();
    let acks = |proxy: &Proxy| proxy.shard()["durability"]["acks"].as_u64();
    let mut conn = proxy.conn();
    let _: () = conn.set("q", 1).unwrap();
    assert_eq!(acks(&proxy), Some(0), "asynchronous to begin with");

    // A quorum plugin over RAMPART POLICY: writes now wait for the replica.
    let quorum = plugin("quorum-standard");
    let loaded = proxy.cli(&[
        "RAMPART",
        "POLICY",
        "LOAD",
        "quorum",
        &rampart_tests::plugin_name(&quorum),
        "quorum=all timeout_ms=300 on_shortfall=fail",
    ]);
    assert!(loaded.starts_with("OK"), "{loaded}");
    assert_eq!(acks(&proxy), Some(1));
    cluster.nodes[1].signal("STOP");
    let refused = conn.set::<_, _, ()>("q", 2).unwrap_err().to_string();
    assert!(refused.contains("NOQUORUM"), "{refused}");

    // Back to the built-in over HTTP: answered at once again.
    let (status, body) = http(admin, "PUT", "/v1/policies/quorum?builtin=none", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(acks(&proxy), Some(0));
    let _: () = conn.set("q", 3).unwrap();
    cluster.nodes[1].signal("CONT");

    // Refusals leave the policy in force.
    let (status, body) = http(admin, "PUT", "/v1/policies/quorum?builtin=most", b"");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown built-in quorum"), "{body}");
    let router = std::fs::read(plugin("router-round-robin")).unwrap();
    let (status, body) = http(admin, "PUT", "/v1/policies/detector", &router);
    assert_eq!(status, 422, "a router is not a detector: {body}");
    assert_eq!(
        http(admin, "POST", "/v1/policies/quorum/rollback", b"").0,
        404
    );

    // A detector plugin, uploaded: every probe now asks it.
    let detector = std::fs::read(plugin("detector-fixed-timeout")).unwrap();
    let (status, body) = http(
        admin,
        "PUT",
        "/v1/policies/detector?config=down_after_ms%3D300",
        &detector,
    );
    assert_eq!(status, 200, "{body}");
    let detector_calls = || {
        let (_, body) = http_get(admin, "/v1/policies");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["detector"]["kind"], "wasm");
        view["detector"]["calls"].as_u64().unwrap_or(0)
    };
    wait_until("probes to call the plugin", Duration::from_secs(5), || {
        detector_calls() > 20
    });
    cluster.nodes[1].signal("STOP");
    wait_until(
        "the plugin to judge the replica down",
        Duration::from_secs(5),
        || proxy.shard()["nodes"][1]["health"] == "down",
    );
    cluster.nodes[1].signal("CONT");
    wait_until("the replica up again", Duration::from_secs(5), || {
        proxy.shard()["nodes"][1]["health"] == "up"
    });
    assert!(
        proxy
            .event_kinds()
            .iter()
            .filter(|k| *k == "policy-activated")
            .count()
            >= 3
    );
}

/// `[plugins]` limits apply to every plugin: too little memory and even
/// the built-in router cannot start, and the error says where.
#[test]
fn plugin_limits_come_from_the_configuration() {
    let cluster = Cluster::start(1);
    let text = rampart_tests::config_for(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\n[plugins]\nmemory_limit_mb = 1\n",
            ..Setup::default()
        },
    );
    let config = rampart_tests::rampart::Config::parse(&text).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = match runtime.block_on(rampart_tests::rampart::Server::start(config)) {
        Ok(_) => panic!("a 1 MiB sandbox should not fit the built-in router"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("shards.main.router"), "{error}");
}
