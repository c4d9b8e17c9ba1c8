//! Nodes added and removed while Rampart runs, by editing `nodes` in the
//! configuration file (a reload): a new node follows the primary and
//! serves reads once in sync; a removed one is no longer routed to; the
//! primary is never removed.

use std::time::Duration;

use rampart_tests::{http, wait_until, wait_until_or, Cluster, Proxy, RedisNode};
use redis::Commands;

fn write_config(file: &std::path::Path, nodes: &[String]) {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    std::fs::write(
        file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n\
             [shards.main]\nnodes = [{}]\nread_from = \"replicas\"\n",
            nodes.join(", ")
        ),
    )
    .unwrap();
}

/// The shard's nodes as `/v1/topology` shows them: (addr, role, serves reads).
fn nodes(proxy: &Proxy) -> Vec<(String, String, bool)> {
    proxy.shard()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["addr"].as_str().unwrap_or_default().to_string(),
                n["role"].as_str().unwrap_or_default().to_string(),
                n["serves_reads"] == true,
            )
        })
        .collect()
}

/// Every key read back, by nineteen new clients (10 or 11 reads each: a
/// fixed even count would start every client on the same replica of the
/// rotation).
fn read_all(proxy: &Proxy) {
    for client in 0..19 {
        let mut conn = proxy.conn();
        for i in (client..200).step_by(19) {
            let v: i64 = conn.get(format!("k{i}")).unwrap();
            assert_eq!(v, i as i64);
        }
    }
}

fn reads_on(node: &RedisNode) -> u64 {
    node.calls("get")
}

#[test]
fn nodes_join_and_leave_a_running_shard_by_reload() {
    let cluster = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let (primary, replica) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    write_config(&file, &[primary.clone(), replica.clone()]);
    let proxy = Proxy::start_with(&std::fs::read_to_string(&file).unwrap());
    proxy.watch_config(&file);
    let mut conn = proxy.conn();
    for i in 0..200 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }

    // A user and a setting made through Rampart before the node joins.
    let made = [
        vec!["ACL", "SETUSER", "app", "on", ">secret", "~*", "+@all"],
        vec!["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    ];
    for args in made {
        redis::cmd(args[0]).arg(&args[1..]).exec(&mut conn).unwrap();
    }

    // A fresh, empty node joins: Rampart makes it follow the primary, and
    // it serves reads once in sync.
    let newcomer = RedisNode::start(None);
    write_config(&file, &[primary.clone(), replica.clone(), newcomer.addr()]);
    wait_until_or(
        "the new node to follow the primary and serve reads",
        Duration::from_secs(20),
        || nodes(&proxy).contains(&(newcomer.addr(), "replica".into(), true)),
        || format!("{:?}\n{:?}", nodes(&proxy), proxy.event_kinds()),
    );
    assert_eq!(
        newcomer.cli(&["GET", "k199"]).trim(),
        "199",
        "the new node has the data"
    );
    assert!(proxy.event_kinds().iter().any(|k| k == "node-added"));
    wait_until(
        "the new node to have what was made before it joined",
        Duration::from_secs(10),
        || {
            newcomer.cli(&["ACL", "LIST"]).contains("user app on ")
                && newcomer.cli(&["CONFIG", "GET", "maxmemory-policy"])
                    == "maxmemory-policy\nallkeys-lru\n"
        },
    );
    // A client keeps reading where it started (its home replica, for
    // read-your-writes): new clients spread over both replicas.
    let before = reads_on(&newcomer);
    read_all(&proxy);
    assert!(reads_on(&newcomer) > before, "reads spread to the new node");

    // The old replica leaves: no longer shown, probed or read from.
    write_config(&file, &[primary.clone(), newcomer.addr()]);
    wait_until("the replica to be removed", Duration::from_secs(10), || {
        !nodes(&proxy).iter().any(|(addr, _, _)| addr == &replica)
    });
    assert!(proxy.event_kinds().iter().any(|k| k == "node-removed"));
    let gone = &cluster.nodes[1];
    let before = reads_on(gone);
    read_all(&proxy);
    assert_eq!(reads_on(gone), before, "nothing read from a removed node");

    // The primary cannot be removed: refused, and named.
    write_config(&file, &[newcomer.addr()]);
    wait_until("the refusal", Duration::from_secs(10), || {
        proxy
            .event_kinds()
            .iter()
            .any(|k| k == "node-change-refused")
    });
    assert_eq!(proxy.shard()["primary"], primary.as_str());
    let _: () = conn.set("after", 1).unwrap();

    // Added back: the same node serves again.
    write_config(&file, &[primary.clone(), newcomer.addr(), replica.clone()]);
    wait_until(
        "the replica to serve again",
        Duration::from_secs(20),
        || nodes(&proxy).contains(&(replica.clone(), "replica".into(), true)),
    );
}

#[test]
fn probe_timings_change_on_reload() {
    let cluster = Cluster::start(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let write = |interval_ms: u64| {
        std::fs::write(
            &file,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [probe]\ninterval_ms = {interval_ms}\n\
                 [shards.main]\nnodes = [\"{}\"]\n",
                cluster.nodes[0].addr()
            ),
        )
        .unwrap();
    };
    write(2000);
    let proxy = Proxy::start_with(&std::fs::read_to_string(&file).unwrap());
    proxy.watch_config(&file);
    let node = &cluster.nodes[0];
    // Probes are `INFO replication` (the failover controller asks the
    // same only when it acts): counted over two seconds, before and after.
    let probes_in = |window: Duration| {
        let before = node.calls("info");
        std::thread::sleep(window);
        node.calls("info") - before
    };
    // Past the start (the first probe on a fresh connection, the
    // controller's first look).
    std::thread::sleep(Duration::from_millis(1500));
    let slow = probes_in(Duration::from_secs(2));
    write(50);
    wait_until("the reload", Duration::from_secs(10), || {
        proxy.event_kinds().iter().any(|k| k == "config-reloaded")
    });
    // A probe asleep for the old interval wakes once more before it.
    std::thread::sleep(Duration::from_millis(2200));
    let fast = probes_in(Duration::from_secs(2));
    assert!(slow <= 4, "every 2 s: {slow} probes in 2 s");
    assert!(
        fast >= 15,
        "every 50 ms after the reload: {fast} probes in 2 s"
    );
    assert_eq!(
        proxy.last_event_detail("config-reloaded").as_deref(),
        Some("applied now: probe.interval_ms; at the next start: nothing")
    );
}

/// What a reload cannot do to shards is refused and said
/// (`shard-change-refused`), changing nothing: adding a shard that claims
/// slots (its keys are still elsewhere), and removing one that owns
/// slots (it keeps running until they are moved away).
#[test]
fn shard_changes_a_reload_cannot_make_are_refused() {
    let (a, b, c) = (
        RedisNode::start(None),
        RedisNode::start(None),
        RedisNode::start(None),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let head = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                [probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n";
    let two = format!(
        "{head}[shards.a]\nnodes = [\"{}\"]\nslots = \"0-8191\"\n[shards.b]\nnodes = [\"{}\"]\nslots = \"8192-16383\"\n",
        a.addr(),
        b.addr()
    );
    std::fs::write(&file, &two).unwrap();
    let proxy = Proxy::start_with(&two);
    proxy.watch_config(&file);
    // The watcher notes the file's time when it starts: let it start
    // before the file changes.
    std::thread::sleep(Duration::from_millis(300));
    let names = |proxy: &Proxy| -> Vec<String> {
        proxy.topology()["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let refusals = |proxy: &Proxy| proxy.events_of("shard-change-refused");
    // b, which owns slots, taken out of the file: it stays.
    let one = format!("{head}[shards.a]\nnodes = [\"{}\"]\n", a.addr());
    std::fs::write(&file, &one).unwrap();
    wait_until_or(
        "the removal to be refused",
        Duration::from_secs(10),
        || refusals(&proxy) >= 1,
        || format!("{:?}", proxy.event_kinds()),
    );
    assert_eq!(names(&proxy), ["a", "b"]);
    // Said when the file drops it, not at every reload after.
    let (status, body) = http(proxy.admin.unwrap(), "POST", "/v1/reload", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(refusals(&proxy), 1);
    // c claiming slots: not added.
    let claiming = format!(
        "{head}[shards.a]\nnodes = [\"{}\"]\nslots = \"11-16383\"\n[shards.b]\nnodes = [\"{}\"]\nslots = \"\"\n[shards.c]\nnodes = [\"{}\"]\nslots = \"0-10\"\n",
        a.addr(),
        b.addr(),
        c.addr()
    );
    let before = refusals(&proxy);
    std::fs::write(&file, &claiming).unwrap();
    wait_until(
        "the addition to be refused",
        Duration::from_secs(10),
        || refusals(&proxy) > before,
    );
    assert_eq!(names(&proxy), ["a", "b"]);
    let mut conn = proxy.conn();
    let _: () = conn.set("still", 1).unwrap();

    // The same reload asked for over the admin API (`rampart reload`),
    // answered with what it did; a file that does not read changes
    // nothing and says why.
    let admin = proxy.admin.unwrap();
    let with_b = format!(
        "{head}[shards.a]\nnodes = [\"{}\"]\n[shards.b]\nnodes = [\"{}\"]\nread_from = \"replicas\"\nslots = \"\"\n",
        a.addr(),
        b.addr()
    );
    std::fs::write(&file, &with_b).unwrap();
    let (status, body) = http(admin, "POST", "/v1/reload", b"");
    assert_eq!(status, 200, "{body}");
    // (The file watcher may have seen the change first: then the answer
    // lists nothing, but the change is in force either way.)
    assert!(body.starts_with("applied at once:"), "{body}");
    assert_eq!(proxy.topology()["shards"][1]["read_from"], "replicas");
    std::fs::write(&file, "[shards.a]\nnodes = 7\n").unwrap();
    let (status, body) = http(admin, "POST", "/v1/reload", b"");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("nothing changed"), "{body}");
    assert_eq!(names(&proxy), ["a", "b"]);
    // Without a file there is nothing to reload.
    let fileless = Proxy::start_with(&two);
    let (status, body) = http(fileless.admin.unwrap(), "POST", "/v1/reload", b"");
    assert_eq!(status, 503, "{body}");
}
