//! Fault injection under load: concurrent clients write unique keys through
//! Rampart while a nemesis kills, pauses and partitions the primary. Every
//! write is recorded as acknowledged, failed or unknown (the error says it
//! may have run). In synchronous mode no acknowledged write may be lost;
//! in asynchronous mode losses are counted and must have been reported.

use std::collections::HashSet;
use std::time::Duration;

use rampart_tests::forwarder::Fault;
use rampart_tests::workload::Workload;
use rampart_tests::{config_for, wait_until, FaultyCluster, Proxy, Setup};

fn start_proxy(cluster: &FaultyCluster, quorum: &str, state: &std::path::Path) -> Proxy {
    let sections = format!(
        "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n[failover]\nstate_dir = \"{}\"\n",
        state.display()
    );
    Proxy::start_with(&format!(
        "{}[shards.main.replication]\nquorum = \"{quorum}\"\ntimeout_ms = 1000\nmanage_replication = true\n",
        config_for(&cluster.addrs(), Setup { sections: &sections, ..Setup::default() })
    ))
}

fn epoch(proxy: &Proxy) -> u64 {
    proxy.shard()["epoch"].as_u64().unwrap_or(0)
}

fn primary(proxy: &Proxy, cluster: &FaultyCluster) -> usize {
    cluster.node_at(proxy.shard()["primary"].as_str().unwrap_or_default())
}

/// Waits until a failover has moved past `before` and every node serves
/// again (the deposed primary fenced and caught up).
fn await_failover(proxy: &Proxy, before: u64) {
    wait_until("a promotion", Duration::from_secs(20), || {
        epoch(proxy) > before
    });
    assert_eq!(epoch(proxy), before + 1, "exactly one promotion per fault");
    proxy.wait_serving_replicas(2, Duration::from_secs(30));
}

/// Pauses both replicas for 300 ms while the primary keeps taking writes,
/// kills the primary, resumes the replicas and waits for the promotion.
/// Returns the epoch before and the killed node.
fn stall_replicas_then_kill_the_primary(
    cluster: &mut FaultyCluster,
    proxy: &Proxy,
) -> (u64, usize) {
    let e = epoch(proxy);
    let p = primary(proxy, cluster);
    let replicas: Vec<usize> = (0..3).filter(|&n| n != p).collect();
    for &r in &replicas {
        cluster.nodes[r].signal("STOP");
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[p].kill();
    for &r in &replicas {
        cluster.nodes[r].signal("CONT");
    }
    wait_until("a promotion", Duration::from_secs(20), || epoch(proxy) > e);
    (e, p)
}

/// Every key on every node, directly (not through Rampart).
fn keys_on(cluster: &FaultyCluster, node: usize) -> HashSet<String> {
    rampart_tests::workload::keys_at(&cluster.nodes[node].addr())
}

#[test]
fn sync_mode_loses_no_acknowledged_write_under_kill_pause_and_partition() {
    let mut cluster = FaultyCluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&cluster, "one", state.path());
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let workload = Workload::start(&proxy, 4, 0);
    std::thread::sleep(Duration::from_millis(300));

    // 1. SIGKILL of the primary, restarted (empty) once replaced.
    let e = epoch(&proxy);
    let p = primary(&proxy, &cluster);
    cluster.nodes[p].kill();
    wait_until("a promotion", Duration::from_secs(20), || epoch(&proxy) > e);
    cluster.nodes[p].restart();
    await_failover(&proxy, e);

    // 2. A pause shorter than the detection time: no failover.
    let e = epoch(&proxy);
    let p = primary(&proxy, &cluster);
    cluster.nodes[p].signal("STOP");
    std::thread::sleep(Duration::from_millis(200));
    cluster.nodes[p].signal("CONT");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(epoch(&proxy), e, "a short pause caused a failover");

    // 3. A pause longer than the detection time: failover, and the paused
    //    node is fenced when it wakes.
    let p = primary(&proxy, &cluster);
    cluster.nodes[p].signal("STOP");
    wait_until("a promotion", Duration::from_secs(20), || epoch(&proxy) > e);
    cluster.nodes[p].signal("CONT");
    await_failover(&proxy, e);

    // 4. A partition: the primary's forwarder goes silent both ways.
    let e = epoch(&proxy);
    let p = primary(&proxy, &cluster);
    cluster.forwarders[p].set(Fault::Blackhole);
    wait_until("a promotion", Duration::from_secs(20), || epoch(&proxy) > e);
    cluster.forwarders[p].set(Fault::Reset);
    std::thread::sleep(Duration::from_millis(100));
    cluster.forwarders[p].set(Fault::Pass);
    await_failover(&proxy, e);

    // 5. Every connection to the primary is reset at once (it stays up):
    //    in-flight writes are unknown, nothing acknowledged is lost, and
    //    Rampart may or may not judge it down.
    let p = primary(&proxy, &cluster);
    cluster.forwarders[p].set(Fault::Reset);
    std::thread::sleep(Duration::from_millis(100));
    cluster.forwarders[p].set(Fault::Pass);
    proxy.wait_serving_replicas(2, Duration::from_secs(30));

    // 6. The primary's network turns slow (1 s each way, past the probe
    //    timeout) for two seconds, then recovers.
    let p = primary(&proxy, &cluster);
    cluster.forwarders[p].set_delay(Duration::from_millis(1000));
    std::thread::sleep(Duration::from_millis(2000));
    cluster.forwarders[p].set(Fault::Reset);
    std::thread::sleep(Duration::from_millis(100));
    cluster.forwarders[p].set(Fault::Pass);
    wait_until("a primary", Duration::from_secs(20), || {
        let shard = proxy.shard();
        shard["primary"].is_string() && shard["failing_over"] == false
    });
    proxy.wait_serving_replicas(2, Duration::from_secs(30));

    // 7. The replicas stall, then the primary dies: what the primary
    //    acknowledged alone must not have been acknowledged to clients.
    let (e, p) = stall_replicas_then_kill_the_primary(&mut cluster, &proxy);
    cluster.nodes[p].restart();
    await_failover(&proxy, e);

    std::thread::sleep(Duration::from_millis(300));
    let outcomes = workload.finish();
    eprintln!(
        "acknowledged {}, failed {}, unknown {}",
        outcomes.acked.len(),
        outcomes.failed,
        outcomes.unknown
    );
    assert!(outcomes.acked.len() > 200, "the workload made progress");

    // After healing: every acknowledged write is on every node, and the
    // nodes agree with each other.
    let p = primary(&proxy, &cluster);
    wait_until("replicas to converge", Duration::from_secs(20), || {
        let reference = keys_on(&cluster, p);
        (0..3).all(|n| keys_on(&cluster, n) == reference)
    });
    let on_primary = keys_on(&cluster, p);
    let lost: Vec<&String> = outcomes
        .acked
        .iter()
        .filter(|k| !on_primary.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // Every step is in the event history: a promotion for each of the four
    // faults that take the primary away, maybe more for the reset and the
    // slow network.
    let kinds = proxy.event_kinds();
    let promotions = kinds.iter().filter(|k| *k == "promoted").count();
    assert!((4..=6).contains(&promotions), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| *k == "fenced").count() >= 3,
        "{kinds:?}"
    );
    // The epoch counts the promotions: nothing else changes the primary.
    assert_eq!(epoch(&proxy), 1 + promotions as u64);
}

#[test]
fn async_mode_reports_what_a_failover_may_have_lost() {
    let mut cluster = FaultyCluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&cluster, "none", state.path());
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    // Large values, so that what the stalled replicas cannot take in piles
    // up in the primary's memory rather than in socket buffers.
    let workload = Workload::start(&proxy, 4, 32 * 1024);
    std::thread::sleep(Duration::from_millis(300));
    // The replicas stall while the primary keeps acknowledging writes, then
    // the primary dies: what only it had is gone.
    stall_replicas_then_kill_the_primary(&mut cluster, &proxy);
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = workload.finish();

    let new = primary(&proxy, &cluster);
    let on_primary = keys_on(&cluster, new);
    let lost = outcomes
        .acked
        .iter()
        .filter(|k| !on_primary.contains(*k))
        .count();
    let promoted = proxy
        .events()
        .into_iter()
        .find(|e| e["kind"] == "promoted")
        .expect("a promoted event");
    let detail = promoted["detail"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "async failover: {lost} of {} acknowledged writes lost; Rampart said: {detail}",
        outcomes.acked.len()
    );
    assert!(lost > 0, "the stalled replicas missed nothing?");
    assert!(
        detail.contains("are lost"),
        "{lost} writes lost silently: {detail}"
    );
    let metrics = rampart_tests::http_get(proxy.admin.expect("admin"), "/metrics").1;
    let counted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rampart_failover_lost_bytes_total{shard=\"main\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(counted > 0.0, "the loss is counted: {metrics}");
}
