//! Fan-out mode: independent redis-server nodes (no Redis replication
//! between them) kept identical by Rampart sending every write to each,
//! in one order; a node that was away is replayed or copied afresh.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_tests::forwarder::{Fault, Forwarder};
use rampart_tests::{wait_until, Proxy, RedisNode};
use redis::Commands;

/// Three independent nodes.
fn nodes() -> Vec<RedisNode> {
    (0..3).map(|_| RedisNode::start(None)).collect()
}

fn fanout_config(addrs: &[String], replication: &str, sections: &str) -> String {
    let nodes: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[probe]\ninterval_ms = 50\n{sections}\n[shards.main]\nnodes = [{}]\nread_from = \"replicas\"\n[shards.main.replication]\nmode = \"fanout\"\n{replication}\n",
        nodes.join(", ")
    )
}

fn start(addrs: &[String], replication: &str) -> Proxy {
    Proxy::start_with(&fanout_config(addrs, replication, ""))
}

/// Every key of a node with its type, its value in a canonical form, and
/// its absolute expiry (`PEXPIRETIME`): two nodes with equal dumps hold
/// the same data.
fn dump(addr: &str) -> BTreeMap<String, (String, String, i64)> {
    let mut conn = redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let value = match kind.as_str() {
            "string" => conn.get::<_, String>(&key).unwrap(),
            "list" => format!("{:?}", conn.lrange::<_, Vec<String>>(&key, 0, -1).unwrap()),
            "hash" => format!(
                "{:?}",
                conn.hgetall::<_, BTreeMap<String, String>>(&key).unwrap()
            ),
            "set" => {
                let mut members: Vec<String> = conn.smembers(&key).unwrap();
                members.sort();
                format!("{members:?}")
            }
            "zset" => format!(
                "{:?}",
                conn.zrange_withscores::<_, Vec<(String, f64)>>(&key, 0, -1)
                    .unwrap()
            ),
            "stream" => format!(
                "{:?}",
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query::<redis::Value>(&mut conn)
                    .unwrap()
            ),
            other => format!("<{other}>"),
        };
        let expire_at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query(&mut conn)
            .unwrap();
        out.insert(key, (kind, value, expire_at));
    }
    out
}

/// Every node holds exactly what the first does.
fn assert_identical(addrs: &[String]) -> usize {
    let first = dump(&addrs[0]);
    for addr in &addrs[1..] {
        let other = dump(addr);
        let only_first: Vec<_> = first
            .keys()
            .filter(|k| !other.contains_key(*k))
            .take(5)
            .collect();
        let only_other: Vec<_> = other
            .keys()
            .filter(|k| !first.contains_key(*k))
            .take(5)
            .collect();
        let differ: Vec<_> = first
            .iter()
            .filter(|(k, v)| other.get(*k).is_some_and(|o| o != *v))
            .take(3)
            .collect();
        assert!(
            only_first.is_empty() && only_other.is_empty() && differ.is_empty(),
            "{} and {addr} differ: only on the first {only_first:?}, only on the other {only_other:?}, different {differ:?}",
            addrs[0]
        );
    }
    first.len()
}

fn node_sync(proxy: &Proxy, addr: &str) -> String {
    proxy.shard()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == addr)
        .map(|n| n["sync"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn wait_in_sync(proxy: &Proxy, addrs: &[String], timeout: Duration) {
    wait_until("every node in sync", timeout, || {
        addrs.iter().all(|a| node_sync(proxy, a) == "in-sync")
    });
}

/// A mix of writes to every type, some with relative expiry, from `w`'s
/// `round`: deterministic, so any node can be compared with any other.
fn write_round(conn: &mut redis::Connection, w: usize, round: usize) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.incr("shared:counter", 1)
        .ignore()
        .rpush("shared:list", format!("{w}:{round}"))
        .ignore()
        .hset(format!("h:{w}"), format!("f{}", round % 7), round)
        .ignore()
        .zadd("shared:zset", format!("{w}:{}", round % 11), round as f64)
        .ignore()
        .sadd(format!("s:{}", round % 3), w)
        .ignore()
        .set_ex(format!("ttl:{w}:{round}"), round, 3600)
        .ignore()
        .cmd("XADD")
        .arg("shared:stream")
        .arg("*")
        .arg("w")
        .arg(w)
        .ignore();
    if round % 5 == 0 {
        pipe.del(format!("ttl:{w}:{}", round.saturating_sub(5)))
            .ignore();
        pipe.expire(format!("h:{w}"), 7200).ignore();
    }
    pipe.query(conn)
}

#[test]
fn fanout_applies_every_write_on_every_node_in_one_order() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let shard = proxy.shard();
    assert_eq!(shard["mode"], "fanout");
    assert_eq!(shard["primary"], addrs[0].as_str(), "the first node listed");

    // Several clients write concurrently, to shared keys whose value
    // depends on the order (a list, a counter, a stream).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                for round in 0..100 {
                    write_round(&mut conn, w, round).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let keys = assert_identical(&addrs);
    assert!(keys > 100, "the writes made keys ({keys})");
    let list_len: usize = proxy.conn().llen("shared:list").unwrap();
    assert_eq!(list_len, 400);
    // None of the nodes replicate: each ran the writes itself.
    for node in &nodes {
        assert_eq!(
            node.info_field("replication", "role").as_deref(),
            Some("master")
        );
        assert!(
            node.calls("rpush") >= 400,
            "{} ran every RPUSH",
            node.addr()
        );
    }
    // Reads go to the other nodes, all in sync.
    proxy.wait_serving_replicas(2, Duration::from_secs(5));

    // An operator asks for a node to be copied afresh: it is, while the
    // others go on serving.
    let admin = proxy.admin.unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args(args)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap()
    };
    let done = cli(&["resync", "main", &addrs[1]]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("copied afresh"));
    let refused = cli(&["resync", "main", "nowhere:1"]);
    assert!(!refused.status.success());
    let (status, _) =
        rampart_tests::http(admin, "POST", "/v1/shards/main/resync?node=nowhere:1", b"");
    assert_eq!(status, 404);
    wait_until("the node copied", Duration::from_secs(10), || {
        proxy.event_kinds().iter().any(|k| k == "resynced")
    });
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    assert_identical(&addrs);
}

#[test]
fn fanout_converges_after_a_node_is_killed_and_restarted() {
    let mut nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "quorum = \"one\"\ntimeout_ms = 1000");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    // Data from before the trouble, which the restarted node will have
    // lost (no persistence) and must be copied.
    {
        let mut conn = proxy.conn();
        for round in 0..50 {
            write_round(&mut conn, 9, round).unwrap();
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let client = proxy.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                let (mut ok, mut failed) = (0, 0);
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    match write_round(&mut conn, w, round) {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    round += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    nodes[2].kill();
    std::thread::sleep(Duration::from_millis(500));
    nodes[2].restart();
    wait_until(
        "the restarted node to be resynced",
        Duration::from_secs(30),
        || proxy.event_kinds().iter().any(|k| k == "resynced"),
    );
    // Writes go on after the resync too.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for w in writers {
        let (o, failed) = w.join().unwrap();
        ok += o;
        assert_eq!(failed, 0, "no write failed: the other nodes had every one");
    }
    assert!(ok > 100, "writes kept flowing ({ok} rounds)");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let kinds = proxy.event_kinds();
    for kind in ["node-stale", "resync-started", "resynced"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert_identical(&addrs);
}

/// Every node has answered every write (an asynchronous write is
/// answered once the primary has it; the others may still be running it).
fn wait_caught_up(proxy: &Proxy) {
    wait_until(
        "every node to run every write",
        Duration::from_secs(5),
        || {
            proxy.shard()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["lag_bytes"] == 0)
        },
    );
}

#[test]
fn fanout_replays_a_short_absence_and_resyncs_a_long_one() {
    let nodes = nodes();
    let forwarders: Vec<Forwarder> = nodes.iter().map(|n| Forwarder::start(n.port)).collect();
    let addrs: Vec<String> = forwarders.iter().map(|f| f.addr()).collect();
    let proxy = Proxy::start_with(&fanout_config(
        &addrs,
        "backlog_mb = 1",
        "[backend]\nreply_timeout_ms = 1000",
    ));
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let mut conn = proxy.conn();
    for round in 0..20 {
        write_round(&mut conn, 0, round).unwrap();
    }

    // A short absence (nothing in flight when it began): the node keeps its
    // place, and runs what it missed when it returns.
    wait_caught_up(&proxy);
    forwarders[2].set(Fault::Reset);
    wait_until("the node to be seen down", Duration::from_secs(5), || {
        node_sync(&proxy, &addrs[2]) == "down"
    });
    for round in 20..60 {
        write_round(&mut conn, 0, round).unwrap();
    }
    assert!(
        proxy.shard()["nodes"][2]["lag_bytes"].as_u64().unwrap() > 0,
        "its backlog shows as lag"
    );
    forwarders[2].set(Fault::Pass);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let kinds = proxy.event_kinds();
    assert!(kinds.iter().any(|k| k == "node-down"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "caught-up"), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k == "resync-started"),
        "replayed, not copied: {kinds:?}"
    );
    assert_identical(&addrs);

    // A long absence: more than the 1 MiB backlog. The node is let go of,
    // and copied afresh when it returns.
    wait_caught_up(&proxy);
    forwarders[1].set(Fault::Reset);
    wait_until("the node to be seen down", Duration::from_secs(5), || {
        node_sync(&proxy, &addrs[1]) == "down"
    });
    let big = "x".repeat(16 * 1024);
    for i in 0..100 {
        let _: () = conn.set(format!("big:{i}"), &big).unwrap();
    }
    assert_eq!(node_sync(&proxy, &addrs[1]), "stale");
    let events = proxy.events();
    assert!(
        events.iter().any(|e| e["kind"] == "node-stale"
            && e["node"] == addrs[1].as_str()
            && e["detail"].as_str().unwrap_or_default().contains("backlog")),
        "{events:?}"
    );
    // Operators see it: the metrics, and `rampart status`.
    let (_, metrics) = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics");
    let in_sync = format!(
        "rampart_node_in_sync{{shard=\"main\",node=\"{}\"}} 0",
        addrs[1]
    );
    assert!(metrics.contains(&in_sync), "{in_sync} in the metrics");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args(["status", "--admin", &proxy.admin.unwrap().to_string()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("fan-out") && status.contains("stale"),
        "{status}"
    );
    forwarders[1].set(Fault::Pass);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    assert!(proxy.event_kinds().iter().any(|k| k == "resynced"));
    assert_identical(&addrs);
}

#[test]
fn fanout_sync_quorum_shortfall_fails_or_accepts() {
    for on_shortfall in ["fail", "accept"] {
        let nodes = nodes();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
        let proxy = start(
            &addrs,
            &format!("quorum = \"all\"\ntimeout_ms = 300\non_shortfall = \"{on_shortfall}\""),
        );
        wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
        let mut conn = proxy.conn();
        let _: () = conn.set("before", 1).unwrap();
        nodes[2].signal("STOP");
        let result: redis::RedisResult<()> = conn.set("during", 1);
        nodes[2].signal("CONT");
        match on_shortfall {
            "fail" => {
                let error = result.unwrap_err().to_string();
                assert!(error.contains("NOQUORUM"), "{error}");
                assert!(error.contains("1 of the 2"), "{error}");
            }
            _ => result.unwrap(),
        }
        // Either way the write was applied where it arrived, and reaches
        // the paused node once it runs again.
        wait_until(
            "the paused node to run the write",
            Duration::from_secs(10),
            || nodes[2].cli(&["GET", "during"]).trim() == "1",
        );
        let shard = proxy.shard();
        assert!(shard["durability"]["shortfalls"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn fanout_rewrites_or_refuses_what_would_differ_per_node() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let mut conn = proxy.conn();
    let error = |r: redis::RedisResult<redis::Value>| r.unwrap_err().to_string();

    // Relative expiry becomes one absolute time, the same on every node
    // however late a node runs it.
    let _: () = redis::cmd("SET")
        .arg("a")
        .arg(1)
        .arg("EX")
        .arg(100)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SETEX")
        .arg("b")
        .arg(100)
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let _: () = conn.set("c", 1).unwrap();
    let _: bool = conn.expire("c", 100).unwrap();
    let _: () = redis::cmd("PSETEX")
        .arg("d")
        .arg(100_000)
        .arg(1)
        .query(&mut conn)
        .unwrap();
    // XADD * gets its millisecond from Rampart: the same ID everywhere.
    let id: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let keys = assert_identical(&addrs);
    assert_eq!(keys, 5);
    let ttl: i64 = conn.ttl("a").unwrap();
    assert!((90..=100).contains(&ttl), "TTL kept: {ttl}");
    for node in &nodes {
        assert_eq!(
            node.cli(&["XRANGE", "s", "-", "+"]).lines().next(),
            Some(id.as_str())
        );
    }

    // Random effects are refused, with a reason.
    let _: () = conn.sadd("set", &[1, 2, 3]).unwrap();
    let e = error(redis::cmd("SPOP").arg("set").query(&mut conn));
    assert!(e.contains("SPOP is not allowed in fan-out mode"), "{e}");
    // Reads are served by one node: random reads need nothing.
    let member: String = redis::cmd("SRANDMEMBER")
        .arg("set")
        .query(&mut conn)
        .unwrap();
    assert!(["1", "2", "3"].contains(&member.as_str()));
    // Scripts: checked by what they call, and must name their keys.
    let e = error(
        redis::cmd("EVAL")
            .arg("return redis.call('SPOP', KEYS[1])")
            .arg(1)
            .arg("set")
            .query(&mut conn),
    );
    assert!(e.contains("'spop'"), "{e}");
    let e = error(
        redis::cmd("EVAL")
            .arg("return redis.call('INCR', 'k')")
            .arg(0)
            .query(&mut conn),
    );
    assert!(e.contains("no keys"), "{e}");
    let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let n: i64 = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg("n")
        .arg(5)
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 5);
    let e = error(
        redis::cmd("EVALSHA")
            .arg("0".repeat(40))
            .arg(1)
            .arg("n")
            .query(&mut conn),
    );
    assert!(e.contains("has not seen"), "{e}");
    let other = "return redis.call('DECRBY', KEYS[1], ARGV[1])";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(other)
        .query(&mut conn)
        .unwrap();
    let n: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("n")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 3);
    // Other things that cannot be the same everywhere.
    for (args, expected) in [
        (&["SELECT", "1"][..], "only database 0"),
        (&["WATCH", "k"][..], "WATCH is"),
        (&["BLPOP", "q", "1"][..], "blocking pops"),
        (&["WAIT", "1", "0"][..], "WAIT"),
        (&["XAUTOCLAIM", "s", "g", "c", "0", "0"][..], "idle times"),
        (&["NOSUCHCOMMAND"][..], "cannot tell"),
    ] {
        let e = error(redis::cmd(args[0]).arg(&args[1..]).query(&mut conn));
        assert!(e.contains(expected), "{args:?}: {e}");
    }
    // Admin commands run on the primary alone.
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
    assert!(info.contains("redis_version"));
    assert_identical(&addrs);
    let n: i64 = conn.get("n").unwrap();
    assert_eq!(n, 3, "the connection is still usable");
}

#[test]
fn fanout_transactions_run_whole_on_every_node() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "quorum = \"all\"");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let mut conn = proxy.conn();

    // redis-rs's atomic pipeline is MULTI ... EXEC; the replies are EXEC's.
    let (n, len, old): (i64, i64, Option<String>) = redis::pipe()
        .atomic()
        .incr("tx:n", 5)
        .rpush("tx:list", "a")
        .getset("tx:s", "new")
        .query(&mut conn)
        .unwrap();
    assert_eq!((n, len, old), (5, 1, None));
    // Relative expiry inside a transaction is rewritten too.
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("tx:ttl")
        .arg(1)
        .arg("EX")
        .arg(100)
        .ignore()
        .query(&mut conn)
        .unwrap();
    assert_identical(&addrs);

    // By hand: QUEUED, then EXEC's array; DISCARD drops everything.
    let reply = proxy.cli(&["MULTI"]);
    assert_eq!(reply.trim(), "OK");
    let mut raw = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let queued: String = redis::cmd("MULTI").query(&mut raw).unwrap();
    assert_eq!(queued, "OK");
    let queued: String = redis::cmd("INCR").arg("tx:n").query(&mut raw).unwrap();
    assert_eq!(queued, "QUEUED");
    let _: () = redis::cmd("DISCARD").query(&mut raw).unwrap();
    let n: i64 = raw.get("tx:n").unwrap();
    assert_eq!(n, 5, "a discarded transaction ran nowhere");

    // A command refused while queueing aborts the transaction, as an
    // error at queueing time does in Redis.
    let _: String = redis::cmd("MULTI").query(&mut raw).unwrap();
    let _: String = redis::cmd("INCR").arg("tx:n").query(&mut raw).unwrap();
    let e = redis::cmd("SPOP")
        .arg("tx:set")
        .query::<redis::Value>(&mut raw)
        .unwrap_err();
    assert!(e.to_string().contains("SPOP"), "{e}");
    let e = redis::cmd("EXEC")
        .query::<redis::Value>(&mut raw)
        .unwrap_err();
    assert!(e.to_string().contains("Transaction discarded"), "{e}");
    let n: i64 = raw.get("tx:n").unwrap();
    assert_eq!(n, 5);
    // A transaction with a runtime error runs the rest, the same on every
    // node.
    let _: () = raw.set("tx:str", "x").unwrap();
    let results: Vec<redis::Value> = redis::pipe()
        .atomic()
        .incr("tx:n", 1)
        .lpush("tx:str", "y")
        .incr("tx:n", 1)
        .query(&mut raw)
        .unwrap_or_default();
    let n: i64 = raw.get("tx:n").unwrap();
    assert_eq!(n, 7, "{results:?}");
    assert_identical(&addrs);
}

#[test]
fn fanout_moves_the_primary_when_its_node_dies() {
    let mut nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let mut conn = proxy.conn();
    let _: () = conn.set("k", 1).unwrap();
    nodes[0].kill();
    wait_until("another primary", Duration::from_secs(10), || {
        let primary = proxy.shard()["primary"].clone();
        primary.is_string() && primary != addrs[0].as_str()
    });
    let _: i64 = conn.incr("k", 1).unwrap();
    let k: i64 = conn.get("k").unwrap();
    assert_eq!(k, 2);
    wait_until(
        "an event for the new primary",
        Duration::from_secs(5),
        || {
            proxy
                .events()
                .iter()
                .any(|e| e["kind"] == "fanout-primary" && e["node"] != addrs[0].as_str())
        },
    );

    // An operator moves it on purpose: nothing to copy, only in-sync nodes.
    let (status, body) = rampart_tests::http(
        proxy.admin.unwrap(),
        "POST",
        "/v1/shards/main/switchover",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    nodes[0].restart();
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    assert_identical(&addrs);
}

#[test]
fn fanout_remembers_across_restarts_which_nodes_it_can_trust() {
    let mut nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let state_dir = tempfile::tempdir().unwrap();
    let config = fanout_config(
        &addrs,
        "",
        &format!("[failover]\nstate_dir = \"{}\"", state_dir.path().display()),
    );

    // A node is away when Rampart stops cleanly: its backlog is gone with
    // the process, so the next Rampart must copy it.
    let proxy = Proxy::start_with(&config);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let mut conn = proxy.conn();
    for round in 0..10 {
        write_round(&mut conn, 0, round).unwrap();
    }
    nodes[2].kill();
    for round in 10..20 {
        write_round(&mut conn, 0, round).unwrap();
    }
    drop(conn);
    proxy.shutdown();
    drop(proxy);
    nodes[2].restart();
    let proxy = Proxy::start_with(&config);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    let events = proxy.events();
    let stale: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "node-stale")
        .filter_map(|e| e["node"].as_str())
        .collect();
    assert_eq!(stale, [addrs[2].as_str()], "{events:?}");
    assert!(events.iter().any(|e| e["kind"] == "resynced"));
    assert_identical(&addrs);

    // Rampart dies without closing its log: only the primary is known to
    // have every acknowledged write; the others are copied from it.
    let mut conn = proxy.conn();
    for round in 20..30 {
        write_round(&mut conn, 0, round).unwrap();
    }
    drop(conn);
    drop(proxy); // no clean stop
    let proxy = Proxy::start_with(&config);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    let resynced: Vec<String> = proxy
        .events()
        .iter()
        .filter(|e| e["kind"] == "resynced")
        .map(|e| e["node"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(resynced.len(), 2, "{resynced:?}");
    assert!(
        !resynced.contains(&addrs[0]),
        "the last primary is the source"
    );
    assert_eq!(proxy.shard()["primary"], addrs[0].as_str());
    assert_identical(&addrs);

    // Rampart dies again, and the last primary is gone too: no node is
    // known to have every write, so none serves until an operator says
    // which to trust.
    let _: () = proxy.conn().set("last", 1).unwrap();
    wait_caught_up(&proxy);
    drop(proxy);
    nodes[0].kill();
    let proxy = Proxy::start_with(&config);
    std::thread::sleep(Duration::from_millis(300));
    assert!(proxy.shard()["primary"].is_null(), "{}", proxy.shard());
    let admin = proxy.admin.unwrap();
    let path = format!("/v1/shards/main/switchover?target={}", addrs[1]);
    let (status, body) = rampart_tests::http(admin, "POST", &path, b"");
    assert_eq!(status, 200, "{body}");
    wait_until(
        "the trusted node to be primary",
        Duration::from_secs(10),
        || proxy.shard()["primary"] == addrs[1].as_str(),
    );
    assert!(proxy.event_kinds().iter().any(|k| k == "trusted"));
    nodes[0].restart();
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    let last: i64 = proxy.conn().get("last").unwrap();
    assert_eq!(last, 1);
    assert_identical(&addrs);
}

#[test]
fn fanout_acknowledged_sync_writes_are_on_the_other_nodes_when_the_primary_dies() {
    let mut nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "quorum = \"all\"\ntimeout_ms = 2000");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let acked = rampart_tests::acknowledged_writes(&proxy);
    assert_eq!(acked.len(), 1000);
    // The primary dies the moment the last write was acknowledged; with
    // quorum "all" every other node already has every acknowledged write.
    nodes[0].kill();
    for node in &nodes[1..] {
        let missing = rampart_tests::missing_on(&node.addr(), &acked).len();
        assert_eq!(missing, 0, "{} lacks acknowledged writes", node.addr());
    }
}

#[test]
fn fanout_answers_resp2_and_resp3_clients_in_their_own_protocol() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "quorum = \"one\"");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    // Two clients of each protocol writing at once: the nodes' connections
    // switch protocol between their writes, and each client still gets
    // replies in its own (ZINCRBY is a double in RESP3, a bulk in RESP2).
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let url = if c % 2 == 0 {
                format!("{}?protocol=resp3", proxy.url())
            } else {
                proxy.url()
            };
            std::thread::spawn(move || {
                let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
                for i in 0..100 {
                    let v: redis::Value = redis::cmd("ZINCRBY")
                        .arg(format!("z:{c}"))
                        .arg(1.5)
                        .arg("m")
                        .query(&mut conn)
                        .unwrap();
                    let expected = 1.5 * (i + 1) as f64;
                    match (c % 2, &v) {
                        (0, redis::Value::Double(d)) => assert_eq!(*d, expected),
                        (1, redis::Value::BulkString(b)) => {
                            assert_eq!(String::from_utf8_lossy(b).parse::<f64>().unwrap(), expected)
                        }
                        _ => panic!("client {c} got {v:?}"),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_identical(&addrs);
}

#[test]
fn fanout_nodes_end_identical_after_kills_pauses_partitions_and_resets() {
    use rampart_tests::workload::{Workload, COUNTER};
    let mut nodes = nodes();
    let forwarders: Vec<Forwarder> = nodes.iter().map(|n| Forwarder::start(n.port)).collect();
    let addrs: Vec<String> = forwarders.iter().map(|f| f.addr()).collect();
    let direct: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = Proxy::start_with(&fanout_config(
        &addrs,
        "quorum = \"one\"\ntimeout_ms = 500",
        "timeout_ms = 200\ndown_after_ms = 500\n[backend]\nreply_timeout_ms = 1000",
    ));
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let resyncs = |proxy: &Proxy| proxy.events_of("resynced");
    let workload = Workload::with_counter(&proxy, 4);
    std::thread::sleep(Duration::from_millis(300));

    // 1. A node that is not the primary is killed and restarted empty.
    let before = resyncs(&proxy);
    nodes[2].kill();
    std::thread::sleep(Duration::from_millis(300));
    nodes[2].restart();
    wait_until("the node copied", Duration::from_secs(30), || {
        resyncs(&proxy) > before
    });

    // 2. The primary is killed and restarted empty: another takes over.
    let before = resyncs(&proxy);
    nodes[0].kill();
    std::thread::sleep(Duration::from_millis(300));
    nodes[0].restart();
    wait_until("the node copied", Duration::from_secs(30), || {
        resyncs(&proxy) > before
    });

    // 3. A partition longer than the reply timeout: writes in flight there
    //    are unanswered, so the node is copied when it returns.
    forwarders[1].set(Fault::Blackhole);
    std::thread::sleep(Duration::from_millis(1500));
    forwarders[1].set(Fault::Reset);
    std::thread::sleep(Duration::from_millis(100));
    forwarders[1].set(Fault::Pass);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(30));

    // 4. The primary pauses briefly.
    let primary = proxy.shard()["primary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let p = addrs.iter().position(|a| *a == primary).unwrap_or(0);
    nodes[p].signal("STOP");
    std::thread::sleep(Duration::from_millis(300));
    nodes[p].signal("CONT");

    // 5. Every connection to a node is reset at once.
    forwarders[2].set(Fault::Reset);
    std::thread::sleep(Duration::from_millis(100));
    forwarders[2].set(Fault::Pass);

    std::thread::sleep(Duration::from_millis(300));
    let outcomes = workload.finish();
    eprintln!(
        "acknowledged {} (+{} INCR), failed {}, unknown {} (+{} INCR)",
        outcomes.acked.len(),
        outcomes.incr_acked,
        outcomes.failed,
        outcomes.unknown,
        outcomes.incr_unknown
    );
    assert!(outcomes.acked.len() > 200, "the workload made progress");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(30));

    // The nodes hold exactly the same data; every acknowledged write is
    // there; no INCR was applied twice or lost on any node.
    assert_identical(&direct);
    let lost = rampart_tests::missing_on(&direct[0], &outcomes.acked);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let counter: u64 = nodes[0].cli(&["GET", COUNTER]).trim().parse().unwrap_or(0);
    assert!(
        (outcomes.incr_acked..=outcomes.incr_acked + outcomes.incr_unknown).contains(&counter),
        "counter {counter}: {} acknowledged, {} unknown",
        outcomes.incr_acked,
        outcomes.incr_unknown
    );
}

#[test]
fn fanout_node_too_far_behind_serves_no_reads_until_it_catches_up() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "max_read_lag_ms = 200");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    proxy.wait_serving_replicas(2, Duration::from_secs(5));
    let serves = |proxy: &Proxy| -> bool { proxy.shard()["nodes"][2]["serves_reads"] == true };
    // The node stops running writes for 1.5 s (its connection stays up).
    nodes[2].cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let mut conn = proxy.conn();
    let _: () = conn.set("k", 1).unwrap();
    wait_until(
        "the lagging node to stop serving reads",
        Duration::from_secs(5),
        || !serves(&proxy),
    );
    assert_eq!(
        node_sync(&proxy, &addrs[2]),
        "in-sync",
        "behind, not out of the log"
    );
    wait_until("the node to serve again", Duration::from_secs(10), || {
        serves(&proxy)
    });
    assert_eq!(nodes[2].cli(&["GET", "k"]).trim(), "1");
}

#[test]
fn fanout_copies_a_node_that_stopped_holding_what_the_others_hold() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    // Node 2 starts as a Redis replica of node 0: unfit, held out.
    nodes[2].cli(&["REPLICAOF", "127.0.0.1", &nodes[0].port.to_string()]);
    let proxy = start(&addrs, "");
    wait_until(
        "the replica to be held out",
        Duration::from_secs(10),
        || {
            node_sync(&proxy, &addrs[2]) == "stale"
                && node_sync(&proxy, &addrs[0]) == "in-sync"
                && node_sync(&proxy, &addrs[1]) == "in-sync"
        },
    );
    let events = proxy.events();
    assert!(
        events.iter().any(|e| e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Redis replica")),
        "{events:?}"
    );
    let mut conn = proxy.conn();
    for round in 0..10 {
        write_round(&mut conn, 0, round).unwrap();
    }
    // Made independent, it is copied (not replayed onto what it followed).
    nodes[2].cli(&["REPLICAOF", "NO", "ONE"]);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(20));
    assert_identical(&addrs);

    // A node refuses writes the others take (out of memory): it has
    // missed them, so it is copied once it can take them again.
    nodes[1].cli(&["CONFIG", "SET", "maxmemory", "1"]);
    for round in 10..20 {
        write_round(&mut conn, 0, round).unwrap();
    }
    wait_until(
        "the node to be found diverged",
        Duration::from_secs(10),
        || node_sync(&proxy, &addrs[1]) != "in-sync",
    );
    assert!(proxy.events().iter().any(|e| e["node"] == addrs[1].as_str()
        && e["detail"].as_str().unwrap_or_default().contains("OOM")));
    nodes[1].cli(&["CONFIG", "SET", "maxmemory", "0"]);
    wait_in_sync(&proxy, &addrs, Duration::from_secs(40));
    assert_identical(&addrs);
}

/// A client in `CLIENT TRACKING` (or subscribed) mode has a connection of
/// its own to one node: a write sent down it would reach that node alone,
/// so it is refused (a transaction with one aborts), and reads and
/// tracking go on; every node keeps the same data.
#[test]
fn fanout_refuses_writes_on_a_piped_connection() {
    let nodes = nodes();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = start(&addrs, "");
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    let _: () = proxy.conn().set("k", "v").unwrap();
    let mut tracking = proxy.conn();
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "ON"])
        .query(&mut tracking)
        .unwrap();
    let write: redis::RedisResult<()> = tracking.set("piped", 1);
    let error = write
        .expect_err("a piped write in fan-out mode")
        .to_string();
    assert!(error.contains("not supported in fan-out mode"), "{error}");
    let tx: redis::RedisResult<redis::Value> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("piped")
        .arg(2)
        .query(&mut tracking);
    let error = tx
        .expect_err("a piped transaction with a write")
        .to_string();
    assert!(error.to_lowercase().contains("abort"), "{error}");
    assert!(error.contains("not supported in fan-out mode"), "{error}");
    let read: String = tracking.get("k").unwrap();
    assert_eq!(read, "v");
    let _: () = proxy.conn().set("after", 1).unwrap();
    wait_in_sync(&proxy, &addrs, Duration::from_secs(10));
    assert_identical(&addrs);
    for addr in &addrs {
        let piped: Option<String> = redis::Client::open(format!("redis://{addr}"))
            .unwrap()
            .get_connection()
            .unwrap()
            .get("piped")
            .unwrap();
        assert_eq!(piped, None, "{addr} ran a piped write");
    }
}
