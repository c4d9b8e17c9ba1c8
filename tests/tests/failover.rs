//! Automatic failover, fencing, epochs and switchover, against real
//! redis-server processes.

use std::time::Duration;

use rampart_tests::{config_for, wait_until, wait_until_or, Cluster, Proxy, Setup};
use redis::Commands;

/// Probes every 50 ms, down after 500 ms, writes synchronous to one replica.
fn config(nodes: &[String], state_dir: &std::path::Path, extra: &str) -> String {
    let sections = format!(
        "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n[failover]\nstate_dir = \"{}\"\nhold_writes_ms = 5000\n{extra}",
        state_dir.display()
    );
    format!(
        "{}[shards.main.replication]\nquorum = \"one\"\ntimeout_ms = 1000\n",
        config_for(
            nodes,
            Setup {
                sections: &sections,
                ..Setup::default()
            }
        )
    )
}

/// Waits until the probes have seen every node reach the primary's
/// current offset: only then is a node coming back with less a loss
/// Rampart can know of (on a loaded machine probes can lag).
fn probes_see_every_write(cluster: &Cluster, proxy: &Proxy) {
    let written: u64 = cluster
        .primary()
        .info_field("replication", "master_repl_offset")
        .and_then(|o| o.parse().ok())
        .unwrap();
    wait_until(
        "the probes to see the writes",
        Duration::from_secs(10),
        || {
            (0..cluster.nodes.len())
                .all(|i| proxy.shard()["nodes"][i]["offset"].as_u64().unwrap_or(0) >= written)
        },
    );
}

/// A primary and `replicas` replicas behind a Rampart that switches over
/// as often as asked, serving reads from every replica.
fn switchable(replicas: usize) -> (Cluster, tempfile::TempDir, Proxy) {
    let cluster = Cluster::start(replicas);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(
        &cluster.addrs(),
        state.path(),
        "switchover_interval_ms = 0",
    ));
    proxy.wait_serving_replicas(replicas, Duration::from_secs(10));
    (cluster, state, proxy)
}

fn primary_addr(proxy: &Proxy) -> String {
    proxy.shard()["primary"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_dead_primary_is_replaced_and_fenced_when_it_returns() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    let old = cluster.primary().addr();
    assert_eq!(primary_addr(&proxy), old);
    assert_eq!(proxy.shard()["epoch"], 1);

    let mut conn = proxy.conn();
    for i in 0..100 {
        let _: () = conn.set(format!("before:{i}"), i).unwrap();
    }
    cluster.nodes[0].kill();

    // Writes are held during the failover, then go to the new primary: a
    // client that keeps writing sees at most the writes in flight fail.
    let mut failed = 0;
    for i in 0..100 {
        if conn.set::<_, _, ()>(format!("after:{i}"), i).is_err() {
            failed += 1;
            conn = proxy.conn();
        }
    }
    assert!(failed <= 2, "{failed} writes failed across the failover");
    let new = primary_addr(&proxy);
    assert_ne!(new, old);
    assert_eq!(proxy.shard()["epoch"], 2);
    let kinds = proxy.event_kinds();
    for kind in [
        "primary-discovered",
        "primary-down",
        "promoted",
        "repointed",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} event in {kinds:?}"
        );
    }
    // And in the metrics.
    let (_, metrics) = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics");
    assert!(
        metrics.contains("rampart_failover_events_total{shard=\"main\",kind=\"promoted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_shard_epoch{shard=\"main\"} 2"),
        "{metrics}"
    );
    // The epoch is on disk.
    let persisted = std::fs::read_to_string(state.path().join("main.json")).unwrap();
    assert!(
        persisted.contains(&new) && persisted.contains("\"epoch\":2"),
        "{persisted}"
    );

    // Every acknowledged write is readable through Rampart.
    for i in 0..100 {
        let v: i64 = conn.get(format!("before:{i}")).unwrap();
        assert_eq!(v, i);
    }

    // The old primary comes back empty, claiming to be primary: it is made
    // a replica of the new one before it serves anything.
    cluster.nodes[0].restart();
    let old_node = &cluster.nodes[0];
    wait_until(
        "the old primary to be fenced",
        Duration::from_secs(10),
        || old_node.info_field("replication", "role").as_deref() == Some("slave"),
    );
    assert_eq!(
        old_node.info_field("replication", "master_port"),
        new.rsplit_once(':').map(|(_, p)| p.to_string())
    );
    assert!(proxy.event_kinds().iter().any(|k| k == "fenced"));
    // And once it has caught up it has every write.
    wait_until(
        "the fenced node to catch up",
        Duration::from_secs(20),
        || old_node.cli(&["GET", "before:99"]).trim() == "99",
    );
}

#[test]
fn a_restarted_rampart_remembers_its_epoch_and_fences_a_stale_primary() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let new = {
        let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
        cluster.nodes[0].kill();
        wait_until("a promotion", Duration::from_secs(10), || {
            proxy.shard()["epoch"] == 2
        });
        primary_addr(&proxy)
    };
    // While no Rampart runs, the old primary returns still believing it is
    // primary (its data intact, as after a partition).
    cluster.nodes[0].restart();
    assert_eq!(
        cluster.nodes[0]
            .info_field("replication", "role")
            .as_deref(),
        Some("master")
    );

    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    assert_eq!(
        primary_addr(&proxy),
        new,
        "the persisted epoch's primary wins"
    );
    assert_eq!(proxy.shard()["epoch"], 2);
    let stale = &cluster.nodes[0];
    wait_until(
        "the stale primary to be fenced",
        Duration::from_secs(10),
        || stale.info_field("replication", "role").as_deref() == Some("slave"),
    );
    let mut conn = proxy.conn();
    let _: () = conn.set("k", "v").unwrap();
}

/// A shard whose primary stops answering while one of its two replicas is
/// stopped too: with one acknowledgement required of two replicas, an
/// acknowledged write may be on either, so both must answer before one is
/// promoted, and none can be. Writes hold for `hold_ms`. The primary is
/// stopped (SIGSTOP) rather than killed so that its port stays taken: a
/// killed node's port can be handed to another test's redis-server, which
/// this test's Rampart, still probing the address, would then take for its
/// own node coming back and repoint.
fn shard_that_cannot_promote(
    hold_ms: u32,
) -> (Cluster, tempfile::TempDir, Proxy, redis::Connection) {
    let cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), "").replace(
        "hold_writes_ms = 5000",
        &format!("hold_writes_ms = {hold_ms}"),
    ));
    let mut conn = proxy.conn();
    let _: () = conn.set("k", "v").unwrap();
    cluster.nodes[2].signal("STOP");
    cluster.nodes[0].signal("STOP");
    (cluster, state, proxy, conn)
}

#[test]
fn promotion_is_refused_when_no_replica_can_be_sure_to_hold_every_acknowledged_write() {
    let (cluster, _state, proxy, mut conn) = shard_that_cannot_promote(300);
    wait_until("a refusal", Duration::from_secs(10), || {
        proxy.event_kinds().iter().any(|k| k == "promotion-refused")
    });
    assert_eq!(proxy.shard()["epoch"], 1, "nothing was promoted");
    let (_, metrics) = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics");
    assert!(metrics.contains("kind=\"promotion-refused\"}"), "{metrics}");
    // Held writes are answered with an error once the hold expires.
    let err = conn.set::<_, _, ()>("k2", "v").unwrap_err();
    assert!(err.to_string().contains("no reachable primary"), "{err}");

    // The second replica answers again: the election sees both, and goes
    // ahead with the one that has the most.
    cluster.nodes[2].signal("CONT");
    wait_until("a promotion", Duration::from_secs(15), || {
        proxy.shard()["epoch"] == 2
    });
    let mut conn = proxy.conn();
    wait_until("writes to succeed", Duration::from_secs(10), || {
        conn.set::<_, _, ()>("k3", "v").is_ok()
    });
    let v: String = conn.get("k").unwrap();
    assert_eq!(v, "v");
}

#[test]
fn a_replica_that_lost_its_data_does_not_count_towards_a_safe_promotion() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    let mut conn = proxy.conn();
    for i in 0..50 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }
    probes_see_every_write(&cluster, &proxy);
    // A replica restarts without persistence: it is back, but empty, and
    // the acknowledged writes may have been only on it.
    cluster.nodes[2].kill();
    cluster.nodes[0].kill();
    cluster.nodes[2].restart();
    wait_until("a refusal", Duration::from_secs(10), || {
        proxy.events().iter().any(|e| {
            e["kind"] == "promotion-refused"
                && e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("less data")
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.shard()["epoch"], 1, "nothing was promoted");
}

/// The sequence that once lost an acknowledged write: a replica dies, the
/// primary dies (promotion refused: the surviving replica alone cannot be
/// proven to hold every acknowledged write), and the primary comes back
/// from an older snapshot. It is not taken back; the surviving replica
/// keeps its copy; the shard says it waits for an operator; and
/// `promote --force` of the replica brings every write back.
#[test]
fn a_primary_back_from_an_older_snapshot_is_not_taken_back() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let admin = proxy.admin.unwrap();
    let mut conn = proxy.conn();
    let _: () = conn.set("before", 1).unwrap();
    assert_eq!(cluster.nodes[0].cli(&["SAVE"]).trim(), "OK");
    let _: () = conn.set("marker", "acked").unwrap();
    probes_see_every_write(&cluster, &proxy);

    cluster.nodes[2].kill();
    cluster.nodes[0].kill();
    wait_until(
        "a refusal and the replica detached",
        Duration::from_secs(10),
        || {
            let kinds = proxy.event_kinds();
            kinds.iter().any(|k| k == "promotion-refused")
                && kinds.iter().any(|k| k == "replica-detached")
        },
    );
    cluster.nodes[0].restart();
    assert_eq!(
        cluster.nodes[0].cli(&["GET", "marker"]).trim(),
        "",
        "the snapshot is older"
    );
    wait_until(
        "the stale primary to be seen",
        Duration::from_secs(10),
        || proxy.event_kinds().iter().any(|k| k == "primary-stale"),
    );
    // Long enough for a replica still following it to have resynced.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.nodes[1].cli(&["GET", "marker"]).trim(), "acked");
    assert_eq!(proxy.shard()["epoch"], 1, "nothing was promoted");
    let shard = proxy.shard();
    assert_eq!(shard["failing_over"], true, "{shard}");
    assert!(
        shard["awaiting_operator"]
            .as_str()
            .is_some_and(|why| why.contains("promote --force")),
        "{shard}"
    );
    let (status, ready) = rampart_tests::http_get(admin, "/readyz");
    assert_eq!(status, 503);
    assert!(ready.contains("waiting for an operator"), "{ready}");
    let metrics = rampart_tests::http_get(admin, "/metrics").1;
    assert!(
        metrics.contains("rampart_shard_awaiting_operator{shard=\"main\"} 1"),
        "{metrics}"
    );
    let persisted = std::fs::read_to_string(state.path().join("main.json")).unwrap();
    assert!(persisted.contains("\"waiting\""), "{persisted}");

    // The operator decides.
    let survivor = cluster.nodes[1].addr();
    let (status, body) = rampart_tests::http(
        admin,
        "POST",
        &format!("/v1/shards/main/promote?node={survivor}"),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(primary_addr(&proxy), survivor);
    let mut conn = proxy.conn();
    let marker: String = conn.get("marker").unwrap();
    assert_eq!(marker, "acked");
    let _: () = conn.set("after", 1).unwrap();
    assert_eq!(rampart_tests::http_get(admin, "/readyz").0, 200);
    // The old primary is made a replica of the chosen one, and copies it.
    wait_until(
        "the old primary to copy the survivor",
        Duration::from_secs(15),
        || cluster.nodes[0].cli(&["GET", "marker"]).trim() == "acked",
    );
    assert!(proxy
        .event_kinds()
        .iter()
        .any(|k| k == "promoted-by-operator"));
    let persisted = std::fs::read_to_string(state.path().join("main.json")).unwrap();
    assert!(!persisted.contains("\"waiting\""), "{persisted}");
}

/// A primary that restarts (from an older snapshot) faster than the
/// detector judges it down is failed over from as if it had died, so the
/// replicas' copies win over its older data.
///
/// Redis itself races Rampart here: a replica reconnects to its restarted
/// primary within a second and, if it does so before Rampart has acted,
/// resyncs from it and loses its copy. Rampart then sees a replica with
/// less than it once had and, unable to prove the other holds every
/// acknowledged write, waits for an operator instead of promoting. Either
/// way no acknowledged write is lost silently: promoted, the new primary
/// has them all; waiting, the replica that did not resync still has them.
/// The primary restarts from a snapshot taken before 20 acknowledged
/// writes (no persistence since), `delay` being the restarted node's
/// `repl-diskless-sync-delay`. Returns whether Rampart promoted a replica;
/// fails if a promoted one lacks an acknowledged write, or if Rampart
/// neither promotes nor says it waits for an operator.
fn primary_restarts_empty(delay: &str) -> bool {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(
        &config(&cluster.addrs(), state.path(), "")
            .replace("down_after_ms = 500", "down_after_ms = 5000"),
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let mut conn = proxy.conn();
    assert_eq!(cluster.nodes[0].cli(&["SAVE"]).trim(), "OK");
    for i in 0..20 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }
    probes_see_every_write(&cluster, &proxy);
    cluster.nodes[0].restart_with(&["--repl-diskless-sync-delay", delay]);
    wait_until(
        "a promotion or a wait for an operator",
        Duration::from_secs(15),
        || proxy.shard()["epoch"] == 2 || proxy.shard()["awaiting_operator"].is_string(),
    );
    assert!(proxy.event_kinds().iter().any(|k| k == "primary-stale"));
    if proxy.shard()["epoch"] != 2 {
        let why = proxy.shard()["awaiting_operator"].to_string();
        assert!(why.contains("less data than they once had"), "{why}");
        return false;
    }
    assert_ne!(primary_addr(&proxy), cluster.nodes[0].addr());
    let mut conn = proxy.conn();
    wait_until("writes to succeed", Duration::from_secs(10), || {
        conn.set::<_, _, ()>("after", 1).is_ok()
    });
    for i in 0..20 {
        let v: Option<i64> = conn.get(format!("k{i}")).unwrap();
        assert_eq!(v, Some(i), "acknowledged write k{i} lost");
    }
    true
}

/// Redis as shipped waits 5 s before a full resynchronisation
/// (`repl-diskless-sync-delay`): Rampart sees the restart first, detaches
/// the replicas with their copies, and promotes one.
#[test]
fn a_primary_that_restarts_with_less_data_is_replaced() {
    assert!(
        primary_restarts_empty("5"),
        "a replica holding every write could have been promoted"
    );
}

/// Replicas that resynchronise at once: Redis may let them replace their
/// copies with the restarted primary's emptier data before Rampart sees
/// the restart, even between a replica's election and its promotion.
/// Whoever wins, no node lacking an acknowledged write is promoted: a
/// replica holding them all is, or the shard waits for an operator.
#[test]
fn a_primary_restarting_empty_never_gets_a_replica_promoted_without_its_writes() {
    let promoted = (0..4).filter(|_| primary_restarts_empty("0")).count();
    eprintln!("promoted in {promoted} of 4 rounds; the others wait for an operator");
}

#[test]
fn a_follower_never_promotes() {
    let mut cluster = Cluster::start(1);
    let state = tempfile::tempdir().unwrap();
    // Asynchronous writes: the node the operator promotes has no replica.
    let proxy = Proxy::start_with(
        &config(&cluster.addrs(), state.path(), "role = \"follower\"\n")
            .replace("hold_writes_ms = 5000", "hold_writes_ms = 200")
            .replace("quorum = \"one\"", "quorum = \"none\""),
    );
    let mut conn = proxy.conn();
    let _: () = conn.set("k", "v").unwrap();
    cluster.nodes[0].kill();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cluster.nodes[1]
            .info_field("replication", "role")
            .as_deref(),
        Some("slave"),
        "the follower left the replica alone"
    );
    assert!(conn.set::<_, _, ()>("k", "w").is_err());
    // An operator promotes it; the follower routes to what it observes.
    cluster.nodes[1].cli(&["REPLICAOF", "NO", "ONE"]);
    wait_until("writes to the new primary", Duration::from_secs(10), || {
        conn.set::<_, _, ()>("k", "w").is_ok()
    });
    assert!(
        proxy.events().is_empty(),
        "a follower records no failover steps"
    );
    let err = proxy.cli(&["RAMPART", "SWITCHOVER", "main"]);
    assert!(err.contains("follower"), "{err}");
}

#[test]
fn switchover_moves_the_primary_without_errors_or_loss() {
    let (cluster, _state, proxy) = switchable(2);

    // Writers keep going through both switchovers and must see no error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = proxy.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("w{w}:{i}");
                    conn.set::<_, _, ()>(&key, i)
                        .unwrap_or_else(|e| panic!("write {key} failed during a switchover: {e}"));
                    acked.push(key);
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let target = cluster.nodes[2].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");
    assert_eq!(primary_addr(&proxy), target);
    std::thread::sleep(Duration::from_millis(300));

    // Back again over HTTP, letting the election choose.
    let (status, body) = rampart_tests::http(
        proxy.admin.unwrap(),
        "POST",
        "/v1/shards/main/switchover",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acked.len() > 100,
        "the writers made progress ({})",
        acked.len()
    );
    assert_eq!(proxy.shard()["epoch"], 3);

    let mut conn = proxy.conn();
    for key in &acked {
        let v: Option<i64> = conn.get(key).unwrap();
        assert!(v.is_some(), "acknowledged write {key} lost");
    }
    let (status, _) = rampart_tests::http(
        proxy.admin.unwrap(),
        "POST",
        "/v1/shards/nope/switchover",
        b"",
    );
    assert_eq!(status, 404);
}

/// Switchovers are rate-limited per shard: one asked for within
/// `failover.switchover_interval_ms` of the last is refused (429 over
/// HTTP) and counted, and a flood of them leaves the record of a failover
/// in the event history.
#[test]
fn switchovers_are_rate_limited_and_never_push_failovers_out_of_the_history() {
    let cluster = Cluster::start(1);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(
        &cluster.addrs(),
        state.path(),
        "switchover_interval_ms = 60000\nevent_history = 8",
    ));
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let admin = proxy.admin.unwrap();
    let first = proxy.cli(&["RAMPART", "SWITCHOVER", "main"]);
    assert!(first.starts_with("switched over"), "{first}");
    let mut c = proxy.conn();
    for _ in 0..500 {
        let refused = redis::cmd("RAMPART")
            .arg(&["SWITCHOVER", "main"])
            .query::<String>(&mut c)
            .unwrap_err();
        assert!(
            refused.to_string().contains("switchover_interval_ms"),
            "{refused}"
        );
        let (status, _) = rampart_tests::http(admin, "POST", "/v1/shards/main/switchover", b"");
        assert_eq!(status, 429);
    }
    assert_eq!(proxy.shard()["epoch"], 2, "one switchover happened");
    let metrics = rampart_tests::http_get(admin, "/metrics").1;
    assert!(
        metrics.contains("rampart_switchovers_refused_total 1000"),
        "{metrics}"
    );
    // Now a flood of policy refusals, which do record events.
    for _ in 0..50 {
        let _ = proxy.cli(&["RAMPART", "POLICY", "LOAD", "router", "missing.wasm"]);
    }
    let kinds = proxy.event_kinds();
    assert!(kinds.iter().any(|k| k == "switchover"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "primary-discovered"), "{kinds:?}");
}

/// Failovers back to back, each killed primary restarted (empty: no
/// persistence) and resynced before the next: every promoted node had
/// restarted once, and each must be trusted once elected, or the next
/// tick fails it over again and the shard ends up waiting for an operator.
/// Primary killed, a replica promoted; writes acknowledged by the only
/// replica left; that primary killed too. The first primary, down since
/// before the second epoch began, cannot have acknowledged any of its
/// writes, so the survivor, which holds them all, is promoted alone. Once
/// the first primary returns and follows again it counts, and two nodes
/// down at once stop the shard as before.
#[test]
fn a_second_failover_counts_only_replicas_that_followed_the_primary() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let mut conn = proxy.conn();
    let _: () = conn.set("first", 1).unwrap();
    cluster.nodes[0].kill();
    wait_until("the first promotion", Duration::from_secs(10), || {
        proxy.shard()["epoch"] == 2
    });
    let mut conn = proxy.conn();
    for i in 0..100 {
        conn.set::<_, _, ()>(format!("k{i}"), i)
            .unwrap_or_else(|e| panic!("k{i}: {e}"));
    }
    let second = primary_addr(&proxy);
    let index = cluster.addrs().iter().position(|a| *a == second).unwrap();
    let survivor = 3 - index;
    let record = std::fs::read_to_string(state.path().join("main.json")).unwrap();
    assert!(record.contains("members"), "{record}");
    assert!(!record.contains(&cluster.nodes[0].addr()), "{record}");
    cluster.nodes[index].kill();
    wait_until(
        "the second promotion (or a refusal)",
        Duration::from_secs(10),
        || proxy.shard()["epoch"] == 3 || proxy.shard()["awaiting_operator"].is_string(),
    );
    assert_eq!(
        proxy.shard()["epoch"],
        3,
        "refused: {}; events: {:?}",
        proxy.shard()["awaiting_operator"],
        proxy.events()
    );
    assert_eq!(primary_addr(&proxy), cluster.nodes[survivor].addr());
    let mut conn = proxy.conn();
    let first: Option<i64> = conn.get("first").unwrap();
    assert_eq!(first, Some(1));
    for i in 0..100 {
        let v: Option<i64> = conn.get(format!("k{i}")).unwrap();
        assert_eq!(v, Some(i), "acknowledged write k{i} lost");
    }

    // Writes need a replica to acknowledge them: the first primary
    // returns, is told to follow, and counts from then on.
    cluster.nodes[0].restart();
    wait_until("writes to succeed", Duration::from_secs(15), || {
        conn.set::<_, _, ()>("after", 1).is_ok()
    });
    let record = std::fs::read_to_string(state.path().join("main.json")).unwrap();
    assert!(record.contains(&cluster.nodes[0].addr()), "{record}");
}

#[test]
fn back_to_back_failovers_over_restarted_nodes_need_no_operator() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    let mut conn = proxy.conn();
    for round in 0..6 {
        conn.set::<_, _, ()>(format!("k{round}"), round)
            .unwrap_or_else(|e| panic!("round {round}: {e}; events: {:?}", proxy.events()));
        let old = primary_addr(&proxy);
        let epoch = proxy.shard()["epoch"].as_u64().unwrap();
        let index = cluster.addrs().iter().position(|a| *a == old).unwrap();
        cluster.nodes[index].kill();
        wait_until("a promotion", Duration::from_secs(10), || {
            proxy.shard()["epoch"].as_u64().unwrap() > epoch && primary_addr(&proxy) != old
        });
        cluster.nodes[index].restart();
        // Back as a replica of the new primary and synced (as the node
        // itself says: Rampart's probes may not have seen it yet), and no
        // more: the next kill comes at once.
        let primary = primary_addr(&proxy);
        let port = primary.rsplit(':').next().unwrap().to_string();
        wait_until(
            "the restarted node to resync",
            Duration::from_secs(20),
            || {
                let node = &cluster.nodes[index];
                node.info_field("replication", "master_port").as_deref() == Some(port.as_str())
                    && node
                        .info_field("replication", "master_link_status")
                        .as_deref()
                        == Some("up")
            },
        );
        let shard = proxy.shard();
        assert!(
            shard["awaiting_operator"].is_null(),
            "round {round}: {}",
            shard["awaiting_operator"]
        );
    }
    let new = primary_addr(&proxy);
    let index = cluster.addrs().iter().position(|a| *a == new).unwrap();
    for round in 0..6 {
        assert_eq!(
            cluster.nodes[index]
                .cli(&["GET", &format!("k{round}")])
                .trim(),
            round.to_string()
        );
    }
}

/// Requests pipelined on one connection to a shard with no primary it may
/// promote are each answered within about one hold of arriving: they wait
/// together, not one hold after another (a client pipelining four SETs
/// used to wait four holds).
#[test]
fn pipelined_requests_share_one_hold() {
    let (cluster, _state, proxy, mut conn) = shard_that_cannot_promote(1000);
    wait_until("the shard to hold writes", Duration::from_secs(10), || {
        proxy.event_kinds().iter().any(|k| k == "primary-down")
    });
    let started = std::time::Instant::now();
    let answers: redis::RedisResult<()> = redis::pipe()
        .set("a", 1)
        .set("b", 2)
        .set("c", 3)
        .set("d", 4)
        .query(&mut conn);
    let took = started.elapsed();
    assert!(answers.is_err(), "no primary: the writes fail");
    assert!(
        took < Duration::from_millis(2500),
        "four pipelined writes were answered after {took:?} (one hold is 1 s)"
    );
    cluster.nodes[2].signal("CONT");
}

/// A transaction from a client with no connection of its own yet, while
/// the primary takes no new connection though its open ones (the probes',
/// the shared links) work: nothing has run, so the transaction waits, as
/// a write waits for a failover, and runs once a connection opens, instead
/// of failing at once with the closed connection. (Seen for real when a
/// primary dies between two probes.)
#[test]
fn a_transaction_waits_for_a_connection_to_the_primary() {
    use rampart_tests::forwarder::{Fault, Forwarder};
    let node = rampart_tests::RedisNode::start(None);
    let forwarder = Forwarder::start(node.port);
    let proxy = Proxy::start_with(&config_for(
        &[forwarder.addr()],
        Setup {
            sections: "[failover]\nhold_writes_ms = 2000\n[backend]\nidle_dedicated_per_node = 0\n",
            ..Setup::default()
        },
    ));
    let mut conn = proxy.conn();
    let _: () = conn.set("before", 1).unwrap();
    forwarder.set(Fault::RefuseNew);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            forwarder.set(Fault::Pass);
        });
        let ran: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .set("a", 1)
            .ignore()
            .set("b", 1)
            .ignore()
            .query(&mut conn);
        ran.expect("held until a connection opened, then run");
    });
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (a, b): (i64, i64) = redis::pipe().get("a").get("b").query(&mut conn).unwrap();
    assert_eq!((a, b), (1, 1));
    // Refused past the hold: the transaction fails whole. Its commands
    // must not run outside it (the client sent them in one pipeline, as
    // client libraries do).
    forwarder.set(Fault::RefuseNew);
    let mut conn = proxy.conn();
    let failed: redis::RedisResult<redis::Value> = redis::pipe()
        .cmd("MULTI")
        .incr("a", 1)
        .incr("b", 1)
        .cmd("EXEC")
        .query(&mut conn);
    assert!(failed.is_err(), "{failed:?}");
    forwarder.set(Fault::Pass);
    let (a, b): (i64, i64) = redis::pipe().get("a").get("b").query(&mut conn).unwrap();
    assert_eq!((a, b), (1, 1), "nothing of the failed transaction ran");
}

/// A client's dedicated connection follows the primary: after a
/// switchover the old primary is a replica, and a client pinned there
/// (its database chosen, or between two transactions) goes on on the new
/// primary instead of hearing READONLY; a transaction or WATCH that lived
/// on the old connection fails whole, with nothing run.
#[test]
fn a_pinned_client_follows_a_new_primary() {
    let (cluster, _state, proxy) = switchable(1);
    let connect = || proxy.client().get_connection().unwrap();
    let (mut between, mut db1, mut watching, mut queued) =
        (connect(), connect(), connect(), connect());
    // Pinned, each in its way.
    let _: (i64,) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .query(&mut between)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(1).query(&mut db1).unwrap();
    let _: () = db1.set("d", 1).unwrap();
    let _: () = redis::cmd("WATCH").arg("w").query(&mut watching).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut queued).unwrap();
    let _: () = redis::cmd("INCR").arg("q").query(&mut queued).unwrap();

    let target = cluster.nodes[1].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");

    let (t,): (i64,) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .query(&mut between)
        .expect("a transaction after the switchover runs on the new primary");
    assert_eq!(t, 2);
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut db1)
        .expect("WAIT on the new primary");
    assert_eq!(acked, 1);
    let _: () = db1.set("d", 2).expect("database 1 on the new primary");
    let d: i64 = db1.get("d").unwrap();
    assert_eq!(d, 2);

    let _: () = redis::cmd("MULTI").query(&mut watching).unwrap();
    let _ = redis::cmd("SET")
        .arg("w")
        .arg(1)
        .query::<redis::Value>(&mut watching);
    let exec: redis::RedisResult<redis::Value> = redis::cmd("EXEC").query(&mut watching);
    assert!(
        exec.is_err(),
        "a WATCH on the old primary is lost: {exec:?}"
    );

    let _ = redis::cmd("INCR")
        .arg("q")
        .query::<redis::Value>(&mut queued);
    let exec: redis::RedisResult<redis::Value> = redis::cmd("EXEC").query(&mut queued);
    assert!(
        exec.is_err(),
        "a transaction queued on the old primary fails: {exec:?}"
    );

    let mut conn = proxy.conn();
    let (w, q): (Option<i64>, Option<i64>) =
        redis::pipe().get("w").get("q").query(&mut conn).unwrap();
    assert_eq!((w, q), (None, None), "nothing of the lost transactions ran");
    assert_eq!(cluster.nodes[1].cli(&["-n", "1", "GET", "d"]).trim(), "2");
}

/// After a switchover the old primary is a replica. A client piped to it
/// that can write or watch the primary (MONITOR, CLIENT TRACKING) is
/// disconnected, as Sentinel disconnects a demoted primary's clients, and
/// reconnects to the new one; so is a RESP2 subscriber that has left
/// subscribed mode. A RESP2 subscriber stays, and what is published on the
/// new primary reaches it through replication.
#[test]
fn piped_clients_of_a_demoted_primary_are_disconnected_but_subscribers_stay() {
    let (cluster, _state, proxy) = switchable(1);
    let mut monitor = proxy.conn();
    let _: () = redis::cmd("MONITOR").query(&mut monitor).unwrap();
    let mut tracking = proxy.conn();
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "ON"])
        .query(&mut tracking)
        .unwrap();
    let _: () = tracking.set("t", 1).unwrap();
    // A RESP2 subscriber that left subscribed mode may read and write.
    let mut left = proxy.conn();
    {
        let mut pubsub = left.as_pubsub();
        pubsub.subscribe("old").unwrap();
        pubsub.unsubscribe("old").unwrap();
    }
    let _: () = left.set("l", 1).unwrap();
    let mut subscriber = proxy.conn();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("news").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let target = cluster.nodes[1].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");

    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        match monitor.recv_response() {
            // Lines of what ran before the switchover.
            Ok(_) => continue,
            Err(e) => {
                assert!(!e.is_timeout(), "the MONITOR stayed on the old primary");
                break;
            }
        }
    }
    let set: redis::RedisResult<()> = tracking.set("t", 2);
    let error = set.expect_err("the tracking client stayed on the old primary");
    assert!(!error.to_string().contains("READONLY"), "{error}");
    let set: redis::RedisResult<()> = left.set("l", 2);
    let error = set.expect_err("a former subscriber stayed on the old primary");
    assert!(!error.to_string().contains("READONLY"), "{error}");
    let mut again = proxy.conn();
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "ON"])
        .query(&mut again)
        .unwrap();
    let _: () = again
        .set("t", 2)
        .expect("a tracking client reconnected writes");

    let heard: i64 = proxy.conn().publish("news", "after").unwrap();
    assert_eq!(heard, 0, "PUBLISH counts the new primary's subscribers");
    let message = pubsub.get_message().expect("the subscriber still hears");
    assert_eq!(message.get_payload::<String>().unwrap(), "after");
}

/// A worker waiting for a job: `BRPOP jobs <timeout>` through Rampart.
fn pop_job(
    proxy: &Proxy,
    timeout: u32,
) -> std::thread::JoinHandle<redis::RedisResult<(String, String)>> {
    let client = proxy.client();
    std::thread::spawn(move || {
        let mut conn = client.get_connection()?;
        redis::cmd("BRPOP")
            .arg("jobs")
            .arg(timeout)
            .query(&mut conn)
    })
}

/// A worker blocked in BRPOP on the old primary when a switchover demotes
/// it: the node unblocks it with nothing popped, and Rampart sends the pop
/// again to the new primary (what is left of its timeout), so the worker
/// gets the next job instead of an error.
#[test]
fn a_blocked_pop_waits_on_through_a_switchover() {
    let (cluster, _state, proxy) = switchable(1);
    let worker = pop_job(&proxy, 30);
    wait_until("the pop to block", Duration::from_secs(10), || {
        cluster
            .primary()
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("1")
    });
    let target = cluster.nodes[1].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");
    wait_until("the pop to block again", Duration::from_secs(10), || {
        cluster.nodes[1]
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("1")
    });
    let pushed: i64 = proxy.conn().lpush("jobs", "job-1").unwrap();
    assert_eq!(pushed, 1);
    let popped = worker.join().unwrap().expect("the worker's pop");
    assert_eq!(popped, ("jobs".to_string(), "job-1".to_string()));
}

/// A stream consumer blocked in `XREADGROUP ... >` and a reader blocked
/// in `XREAD` from an explicit id on the old primary when a switchover
/// demotes it are sent again to the new primary, and get the entry added
/// after it; a reader of `$` gets Redis's `-UNBLOCKED` (sent again, it
/// would skip what was added meanwhile).
#[test]
fn blocked_stream_reads_from_named_ids_wait_on_through_a_switchover() {
    let (cluster, _state, proxy) = switchable(1);
    let mut conn = proxy.conn();
    redis::cmd("XGROUP")
        .arg(&["CREATE", "events", "workers", "$", "MKSTREAM"])
        .exec(&mut conn)
        .unwrap();
    let read = |args: &'static [&'static str]| {
        let client = proxy.client();
        std::thread::spawn(move || -> redis::RedisResult<redis::Value> {
            redis::cmd(args[0])
                .arg(&args[1..])
                .query(&mut client.get_connection()?)
        })
    };
    let consumer = read(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "c1",
        "BLOCK",
        "30000",
        "STREAMS",
        "events",
        ">",
    ]);
    let reader = read(&["XREAD", "BLOCK", "30000", "STREAMS", "events", "0-1"]);
    let latest = read(&["XREAD", "BLOCK", "30000", "STREAMS", "events", "$"]);
    wait_until("the reads to block", Duration::from_secs(10), || {
        cluster
            .primary()
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("3")
    });
    let target = cluster.nodes[1].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");
    wait_until("two reads to block again", Duration::from_secs(10), || {
        cluster.nodes[1]
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("2")
    });
    let unblocked = latest.join().unwrap().unwrap_err();
    assert!(unblocked.to_string().contains("UNBLOCKED"), "{unblocked}");
    let id: String = redis::cmd("XADD")
        .arg(&["events", "*", "job", "1"])
        .query(&mut conn)
        .unwrap();
    for (name, read) in [("XREADGROUP", consumer), ("XREAD", reader)] {
        let got = format!("{:?}", read.join().unwrap().expect(name));
        assert!(got.contains(&id) && got.contains("job"), "{name}: {got}");
    }
    // The group delivered it once, to c1, on the new primary.
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&["events", "workers"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(1));
}

/// A pop on a shard with synchronous writes is held for its `WAIT`; if
/// the primary dies meanwhile, what the pop took is in its reply and
/// nowhere else for sure: the worker gets the job (at least once), not
/// an error that would lose it.
#[test]
fn a_pop_held_for_its_wait_is_delivered_when_the_primary_dies() {
    let mut cluster = Cluster::start(1);
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&cluster.addrs(), state.path(), ""));
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    // The replica cannot acknowledge: the pop's WAIT waits (1 s).
    cluster.primary().cli(&["LPUSH", "jobs", "job-1"]);
    cluster.nodes[1].signal("STOP");
    let worker = pop_job(&proxy, 0);
    wait_until("the pop", Duration::from_secs(10), || {
        cluster.primary().cli(&["LLEN", "jobs"]).trim() == "0"
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!worker.is_finished(), "the pop was not held for its WAIT");
    cluster.nodes[0].kill();
    let popped = worker.join().unwrap();
    cluster.nodes[1].signal("CONT");
    assert_eq!(
        popped.expect("the popped job"),
        ("jobs".to_string(), "job-1".to_string())
    );
}

/// A node's `CONFIG GET parameter` value, asked directly.
fn node_setting(addr: &str, parameter: &str) -> String {
    let mut conn = redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .unwrap();
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(parameter)
        .query(&mut conn)
        .unwrap();
    pair.get(1).cloned().unwrap_or_default()
}

/// A setting lives on the node that takes it: `CONFIG SET` through
/// Rampart reaches the replicas too, so the primary a switchover names
/// has it; a refused one reaches none; a managed parameter set to the
/// primary's own value is not copied over the replicas' own.
#[test]
fn config_set_through_rampart_outlives_a_switchover() {
    let (cluster, _state, proxy) = switchable(2);
    let mut conn = proxy.conn();
    let ok: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .arg("hash-max-listpack-entries")
        .arg("77")
        .query(&mut conn)
        .unwrap();
    assert_eq!(ok, "OK");
    for node in &cluster.addrs() {
        wait_until("the setting on every node", Duration::from_secs(5), || {
            node_setting(node, "maxmemory-policy") == "allkeys-lru"
                && node_setting(node, "hash-max-listpack-entries") == "77"
        });
    }

    // Changes in quick succession land on every node in the order the
    // primary took them: the last one stays.
    for n in 100..140 {
        let _: String = redis::cmd("CONFIG")
            .arg("SET")
            .arg("hash-max-listpack-entries")
            .arg(n)
            .query(&mut conn)
            .unwrap();
    }
    for node in &cluster.addrs() {
        wait_until(
            "the last change on every node",
            Duration::from_secs(5),
            || node_setting(node, "hash-max-listpack-entries") == "139",
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for node in &cluster.addrs() {
        assert_eq!(
            node_setting(node, "hash-max-listpack-entries"),
            "139",
            "{node}"
        );
    }

    // Refused in Redis's words.
    let refused = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("no-such-policy")
        .exec(&mut conn)
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("argument(s) must be one of the following"),
        "{refused}"
    );
    // The replicas keep their own priority when a client sets the
    // primary's (which passes: the value it already has).
    let replica = cluster.nodes[1].addr();
    let mut direct = redis::Client::open(format!("redis://{replica}/"))
        .and_then(|c| c.get_connection())
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-priority")
        .arg("42")
        .exec(&mut direct)
        .unwrap();
    let primary_priority = node_setting(&cluster.nodes[0].addr(), "replica-priority");
    let _: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-priority")
        .arg(&primary_priority)
        .query(&mut conn)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node_setting(&replica, "replica-priority"), "42");

    let target = cluster.nodes[2].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");
    let setting: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut conn)
        .unwrap();
    assert_eq!(setting, ["maxmemory-policy", "allkeys-lru"]);
    for node in &cluster.addrs() {
        assert_eq!(
            node_setting(node, "maxmemory-policy"),
            "allkeys-lru",
            "{node}"
        );
    }
}

/// Whether the node (asked directly) has the ACL user.
fn has_user(addr: &str, user: &str) -> bool {
    redis_cli_at(addr, &["ACL", "LIST"])
        .lines()
        .any(|l| l.starts_with(&format!("user {user} ")))
}

fn redis_cli_at(addr: &str, args: &[&str]) -> String {
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    rampart_tests::redis_cli(port, args).unwrap_or_default()
}

/// An ACL user or setting made through Rampart lives on the node that
/// takes it, and a node forgets it when it restarts (unless its own files
/// hold it). A replica that restarted, or was down when a change was
/// copied, is caught up as soon as it answers: a switchover to it keeps
/// every user and setting, and a user deleted meanwhile stays deleted.
#[test]
fn users_and_settings_reach_a_replica_that_restarted_or_missed_them() {
    let (mut cluster, _state, proxy) = switchable(1);
    let replica = cluster.nodes[1].addr();
    let mut conn = proxy.conn();
    let acl = |conn: &mut redis::Connection, args: &[&str]| {
        redis::cmd("ACL").arg(args).exec(conn).unwrap();
    };
    acl(
        &mut conn,
        &["SETUSER", "app", "on", ">secret", "~app:*", "+@all"],
    );
    acl(
        &mut conn,
        &["SETUSER", "gone", "on", ">secret", "~*", "+@all"],
    );
    let config_set = |conn: &mut redis::Connection, parameter: &str, value: &str| {
        let ok: String = redis::cmd("CONFIG")
            .arg("SET")
            .arg(parameter)
            .arg(value)
            .query(conn)
            .unwrap();
        assert_eq!(ok, "OK");
    };
    config_set(&mut conn, "maxmemory-policy", "allkeys-lru");
    wait_until("the changes on the replica", Duration::from_secs(5), || {
        has_user(&replica, "app")
            && has_user(&replica, "gone")
            && node_setting(&replica, "maxmemory-policy") == "allkeys-lru"
    });

    cluster.nodes[1].restart();
    wait_until(
        "a restarted replica caught up",
        Duration::from_secs(10),
        || {
            has_user(&replica, "app")
                && has_user(&replica, "gone")
                && node_setting(&replica, "maxmemory-policy") == "allkeys-lru"
        },
    );
    wait_until_or(
        "the catch-up recorded",
        Duration::from_secs(5),
        || {
            let detail = proxy.last_event_detail("settings-caught-up");
            detail
                .is_some_and(|d| d.contains("3 ACL users and settings") && d.contains("restarted"))
        },
        || format!("{:?}", proxy.events()),
    );

    // Changes made while the replica is down reach it when it is back.
    cluster.nodes[1].kill();
    acl(&mut conn, &["DELUSER", "gone"]);
    acl(
        &mut conn,
        &["SETUSER", "late", "on", ">later", "~*", "+@all"],
    );
    config_set(&mut conn, "hash-max-listpack-entries", "77");
    cluster.nodes[1].restart();
    wait_until(
        "a replica that missed changes caught up",
        Duration::from_secs(10),
        || {
            has_user(&replica, "app")
                && has_user(&replica, "late")
                && !has_user(&replica, "gone")
                && node_setting(&replica, "maxmemory-policy") == "allkeys-lru"
                && node_setting(&replica, "hash-max-listpack-entries") == "77"
        },
    );

    // The replica as primary: the users log in through Rampart as before.
    switch_over_and_log_in(&proxy, &replica, ("late", "later"));
}

/// Switches the shard over to `replica`, then `user` logs in through
/// Rampart and writes, and the deleted user `gone` is refused.
fn switch_over_and_log_in(proxy: &Proxy, replica: &str, (user, password): (&str, &str)) {
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", replica]);
    assert!(answer.starts_with("switched over"), "{answer}");
    let mut conn = proxy.conn();
    redis::cmd("AUTH")
        .arg(&[user, password])
        .exec(&mut conn)
        .unwrap();
    let _: () = conn.set("anywhere", 1).unwrap();
    let refused = redis::cmd("AUTH")
        .arg(&["gone", "secret"])
        .exec(&mut proxy.conn())
        .unwrap_err();
    assert_eq!(refused.code(), Some("WRONGPASS"), "{refused}");
}

/// With `state_dir` the ledger outlives a restart of Rampart: a replica
/// that restarted while Rampart was down is caught up once Rampart is
/// back, and a node that did not restart keeps what was changed on it
/// directly meanwhile.
#[test]
fn users_and_settings_outlive_a_restart_of_rampart() {
    let mut cluster = Cluster::start(1);
    let state = tempfile::tempdir().unwrap();
    let text = config(&cluster.addrs(), state.path(), "switchover_interval_ms = 0");
    let proxy = Proxy::start_with(&text);
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let (primary, replica) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    let mut conn = proxy.conn();
    for args in [
        &["ACL", "SETUSER", "app", "on", ">secret", "~*", "+@all"][..],
        &["ACL", "SETUSER", "gone", "on", ">secret", "~*", "+@all"],
        &["ACL", "DELUSER", "gone"],
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    ] {
        redis::cmd(args[0]).arg(&args[1..]).exec(&mut conn).unwrap();
    }
    let kept = state.path().join("settings.json");
    wait_until(
        "the changes on the replica, and kept with both nodes",
        Duration::from_secs(5),
        || {
            let text = std::fs::read_to_string(&kept).unwrap_or_default();
            has_user(&replica, "app")
                && node_setting(&replica, "maxmemory-policy") == "allkeys-lru"
                && text.contains(&primary)
                && text.contains(&replica)
        },
    );
    let text_kept = std::fs::read_to_string(&kept).unwrap();
    assert!(!text_kept.contains("secret"), "{text_kept}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    drop(conn);
    drop(proxy);

    // While Rampart is down: the replica restarts (and forgets), and an
    // operator changes a setting on the primary directly.
    redis_cli_at(
        &primary,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"],
    );
    cluster.nodes[1].restart();
    assert!(!has_user(&replica, "app"));

    let proxy = Proxy::start_with(&text);
    wait_until(
        "the replica caught up by the restarted Rampart",
        Duration::from_secs(10),
        || has_user(&replica, "app") && node_setting(&replica, "maxmemory-policy") == "allkeys-lru",
    );
    wait_until_or(
        "the catch-up recorded",
        Duration::from_secs(5),
        || {
            proxy
                .last_event_detail("settings-caught-up")
                .is_some_and(|d| d.contains("3 ACL users and settings") && d.contains("restarted"))
        },
        || format!("{:?}", proxy.events()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node_setting(&primary, "maxmemory-policy"), "volatile-ttl");
    assert_eq!(
        proxy.events_of("settings-caught-up"),
        1,
        "{:?}",
        proxy.events()
    );

    switch_over_and_log_in(&proxy, &replica, ("app", "secret"));
}

/// What a node refuses to take, a copy or part of a catch-up, is recorded
/// as an event (`settings-refused`), not only logged: here Rampart's user
/// on the replica may not run `CONFIG SET`.
#[test]
fn a_change_a_node_refuses_is_recorded() {
    let (mut cluster, _state, proxy) = switchable(1);
    let replica = cluster.nodes[1].addr();
    redis_cli_at(&replica, &["ACL", "SETUSER", "default", "-config|set"]);
    let mut conn = proxy.conn();
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-lru"])
        .exec(&mut conn)
        .unwrap();
    wait_until_or(
        "the refused copy recorded",
        Duration::from_secs(5),
        || {
            proxy
                .last_event_detail("settings-refused")
                .is_some_and(|d| d.contains("CONFIG SET refused: NOPERM"))
        },
        || format!("{:?}", proxy.events()),
    );
    assert_ne!(node_setting(&replica, "maxmemory-policy"), "allkeys-lru");

    redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">secret", "~*", "+@all"])
        .exec(&mut conn)
        .unwrap();
    wait_until("the user on the replica", Duration::from_secs(5), || {
        has_user(&replica, "app")
    });
    let restricted = [
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-config|set",
    ];
    cluster.nodes[1].restart_with(&restricted);
    wait_until(
        "the user back on the replica",
        Duration::from_secs(10),
        || has_user(&replica, "app"),
    );
    wait_until_or(
        "the refused part of the catch-up recorded",
        Duration::from_secs(5),
        || {
            proxy
                .last_event_detail("settings-refused")
                .is_some_and(|d| {
                    d.contains("the node refused: CONFIG SET maxmemory-policy: NOPERM")
                })
        },
        || format!("{:?}", proxy.events()),
    );
}

/// When the primary's users cannot be read back after an ACL change
/// (here Rampart's user there may not run `ACL LIST`), the client's own
/// command is copied to the other nodes as it was.
#[test]
fn an_acl_change_that_cannot_be_read_back_is_copied_as_it_was() {
    let (cluster, _state, proxy) = switchable(1);
    let (primary, replica) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    redis_cli_at(&primary, &["ACL", "SETUSER", "default", "-acl|list"]);
    redis::cmd("ACL")
        .arg(&["SETUSER", "raw", "on", ">pw", "~raw:*", "+get"])
        .exec(&mut proxy.conn())
        .unwrap();
    wait_until("the user on the replica", Duration::from_secs(5), || {
        has_user(&replica, "raw")
    });
    let line = redis_cli_at(&replica, &["ACL", "GETUSER", "raw"]);
    assert!(line.contains("~raw:*"), "{line}");
}

/// ACL changes and `CONFIG SET`s inside a transaction reach every node
/// once `EXEC` ran them, as outside one; a transaction that did not run
/// (a WATCHed key changed) changes nothing anywhere.
#[test]
fn settings_changed_in_a_transaction_reach_every_node() {
    let (cluster, _state, proxy) = switchable(1);
    let replica = cluster.nodes[1].addr();
    let mut conn = proxy.conn();
    let ran: Vec<String> = redis::pipe()
        .atomic()
        .cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-lfu"])
        .cmd("ACL")
        .arg(&["SETUSER", "txuser", "on", ">pw", "~*", "+@all"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(ran, ["OK", "OK"]);
    wait_until(
        "the transaction's changes on the replica",
        Duration::from_secs(5),
        || {
            has_user(&replica, "txuser")
                && node_setting(&replica, "maxmemory-policy") == "allkeys-lfu"
        },
    );

    let before = node_setting(&replica, "hash-max-listpack-entries");
    redis::cmd("WATCH").arg("watched").exec(&mut conn).unwrap();
    let _: () = proxy.conn().set("watched", 1).unwrap();
    let discarded: Option<Vec<String>> = redis::pipe()
        .atomic()
        .cmd("CONFIG")
        .arg(&["SET", "hash-max-listpack-entries", "55"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(discarded, None);
    std::thread::sleep(Duration::from_millis(300));
    for node in &cluster.addrs() {
        assert_eq!(
            node_setting(node, "hash-max-listpack-entries"),
            before,
            "{node}"
        );
    }
}

/// How many of the node's connections have `CLIENT NO-EVICT` on.
fn no_evict_connections(addr: &str) -> usize {
    let mut conn = redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('e'))
        })
        .count()
}

/// A CLIENT option lives on the connection it was set on: the client's
/// `CLIENT NO-EVICT on` is set again on its connection to the primary a
/// switchover names, and stays in force until RESET, as on one Redis.
#[test]
fn client_options_outlive_a_switchover() {
    let (cluster, _state, proxy) = switchable(1);
    let mut conn = proxy.conn();
    redis::cmd("CLIENT")
        .arg("NO-EVICT")
        .arg("on")
        .exec(&mut conn)
        .unwrap();
    assert_eq!(no_evict_connections(&cluster.nodes[0].addr()), 1);
    let target = cluster.nodes[1].addr();
    let answer = proxy.cli(&["RAMPART", "SWITCHOVER", "main", &target]);
    assert!(answer.starts_with("switched over"), "{answer}");
    let _: () = conn.set("after", 1).unwrap();
    assert_eq!(no_evict_connections(&target), 1);
    redis::cmd("RESET").exec(&mut conn).unwrap();
    let _: () = conn.set("after", 2).unwrap();
    wait_until(
        "the option's connection to close",
        Duration::from_secs(5),
        || no_evict_connections(&target) == 0,
    );
}
