//! Ordinary Redis clients through Rampart: every data type, pipelines,
//! transactions, pub/sub, blocking commands, RESP3, connection commands.

use std::time::Duration;

use rampart_tests::{redis_cli, wait_until, Cluster, Proxy, Setup};
use redis::{Commands, Value};

fn setup() -> (Cluster, Proxy) {
    let cluster = Cluster::start(2);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    (cluster, proxy)
}

#[test]
fn every_data_type_through_redis_rs() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();

    let _: () = c.set("s", "v").unwrap();
    assert_eq!(c.get::<_, String>("s").unwrap(), "v");
    assert_eq!(c.incr::<_, _, i64>("n", 5).unwrap(), 5);

    let _: () = c.hset_multiple("h", &[("a", "1"), ("b", "2")]).unwrap();
    let h: std::collections::HashMap<String, String> = c.hgetall("h").unwrap();
    assert_eq!(h.len(), 2);

    let _: () = c.rpush("l", &["x", "y", "z"]).unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", 0, -1).unwrap(),
        ["x", "y", "z"]
    );

    let _: () = c.sadd("set", &["a", "b", "a"]).unwrap();
    assert_eq!(c.scard::<_, i64>("set").unwrap(), 2);

    let _: () = c.zadd_multiple("z", &[(1, "one"), (2, "two")]).unwrap();
    assert_eq!(
        c.zrange_withscores::<_, Vec<(String, f64)>>("z", 0, -1)
            .unwrap(),
        [("one".to_string(), 1.0), ("two".to_string(), 2.0)]
    );

    let id: String = redis::cmd("XADD")
        .arg("st")
        .arg("*")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    assert!(id.contains('-'));
    let len: i64 = redis::cmd("XLEN").arg("st").query(&mut c).unwrap();
    assert_eq!(len, 1);

    let sum: i64 = redis::cmd("EVAL")
        .arg("return redis.call('INCRBY', KEYS[1], ARGV[1]) + 1")
        .arg(1)
        .arg("counter")
        .arg(41)
        .query(&mut c)
        .unwrap();
    assert_eq!(sum, 42);

    // An unknown command reaches the primary and gets Redis's own answer.
    let err = redis::cmd("NOSUCHCOMMAND")
        .arg("x")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
}

#[test]
fn a_pipeline_of_ten_thousand_commands_keeps_its_order() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();
    let mut pipe = redis::pipe();
    for i in 0..5_000 {
        pipe.set(format!("k{i}"), i).ignore();
        pipe.get(format!("k{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(values, (0..5_000).collect::<Vec<i64>>());
}

/// More requests than a client may have in flight (`max_pipeline`, and
/// the smaller window of a client whose replies are not known yet), all in
/// one write: Rampart goes on parsing what it already holds as replies go
/// out, without waiting for bytes that will never come.
#[test]
fn a_pipeline_longer_than_the_window_in_one_write_is_answered_in_full() {
    let (_cluster, proxy) = setup();
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = 9_000;
    let mut bytes =
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nw\r\n$1\r\nv\r\n*1\r\n$4\r\nEXEC\r\n"
            .to_vec();
    bytes.extend(b"*2\r\n$3\r\nGET\r\n$1\r\nw\r\n".repeat(n));
    std::io::Write::write_all(&mut s, &bytes).unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while got.windows(6).filter(|w| w == b"$1\r\nv\r").count() < n {
        let read = std::io::Read::read(&mut s, &mut chunk).expect("every reply in time");
        assert!(read > 0, "closed");
        got.extend_from_slice(&chunk[..read]);
    }
    assert!(got.starts_with(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"));
}

#[test]
fn transactions_and_watch() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("t", 1)
        .incr("t", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (1, 2));

    // WATCH, a change by another client, then EXEC: aborted (nil).
    let mut other = proxy.conn();
    redis::cmd("WATCH").arg("w").exec(&mut c).unwrap();
    let _: () = other.set("w", "changed").unwrap();
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let queued: String = redis::cmd("SET")
        .arg("w")
        .arg("mine")
        .query(&mut c)
        .unwrap();
    assert_eq!(queued, "QUEUED");
    let exec: Value = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(exec, Value::Nil);
    assert_eq!(c.get::<_, String>("w").unwrap(), "changed");

    // Without interference the same transaction commits.
    redis::cmd("WATCH").arg("w").exec(&mut c).unwrap();
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let _: String = redis::cmd("SET")
        .arg("w")
        .arg("mine")
        .query(&mut c)
        .unwrap();
    let exec: Vec<String> = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(exec, ["OK"]);
    assert_eq!(c.get::<_, String>("w").unwrap(), "mine");

    // DISCARD, and EXEC without MULTI, answer like Redis.
    redis::cmd("MULTI").exec(&mut c).unwrap();
    redis::cmd("INCR").arg("t").exec(&mut c).unwrap();
    redis::cmd("DISCARD").exec(&mut c).unwrap();
    assert_eq!(c.get::<_, i64>("t").unwrap(), 2);
    let err = redis::cmd("EXEC").query::<()>(&mut c).unwrap_err();
    assert!(err.to_string().contains("EXEC without MULTI"), "{err}");
}

#[test]
fn pubsub_between_two_clients() {
    let (_cluster, proxy) = setup();
    let mut sub_conn = proxy.conn();
    let mut publisher = proxy.conn();
    let mut sub = sub_conn.as_pubsub();
    sub.subscribe("news").unwrap();
    sub.psubscribe("sport.*").unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The subscription is live once PUBLISH counts a receiver.
    wait_until("subscriber", Duration::from_secs(5), || {
        publisher.publish::<_, _, i64>("news", "hello").unwrap() >= 1
    });
    let msg = sub.get_message().unwrap();
    assert_eq!(msg.get_channel_name(), "news");
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
    let _: i64 = publisher.publish("sport.tennis", "ace").unwrap();
    let msg = sub.get_message().unwrap();
    assert_eq!(msg.get_pattern::<String>().unwrap(), "sport.*");
    assert_eq!(msg.get_payload::<String>().unwrap(), "ace");
}

#[test]
fn blpop_is_woken_by_another_client_and_blocks_nobody_else() {
    let (_cluster, proxy) = setup();
    let client = proxy.client();
    let waiter = std::thread::spawn(move || {
        let mut c = client.get_connection().unwrap();
        let popped: (String, String) = c.blpop("queue", 10.0).unwrap();
        popped
    });
    // While BLPOP waits, other clients (sharing the same backend links)
    // are served.
    let mut c = proxy.conn();
    for i in 0..100 {
        let _: () = c.set("busy", i).unwrap();
    }
    wait_until("BLPOP to block", Duration::from_secs(5), || {
        let clients: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
        clients.contains("blocked_clients:1")
    });
    let _: () = c.rpush("queue", "job").unwrap();
    assert_eq!(waiter.join().unwrap(), ("queue".into(), "job".into()));

    // XREAD BLOCK likewise.
    let client = proxy.client();
    let reader = std::thread::spawn(move || {
        let mut c = client.get_connection().unwrap();
        let v: Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(10_000)
            .arg("STREAMS")
            .arg("events")
            .arg("$")
            .query(&mut c)
            .unwrap();
        v
    });
    wait_until("XREAD to block", Duration::from_secs(5), || {
        let clients: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
        clients.contains("blocked_clients:1")
    });
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("a")
        .arg("1")
        .query(&mut c)
        .unwrap();
    assert!(matches!(reader.join().unwrap(), Value::Array(_)));
}

#[test]
fn resp3_via_hello_3() {
    let (_cluster, proxy) = setup();
    let client = redis::Client::open(format!("{}?protocol=resp3", proxy.url())).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = c.hset("h3", "f", "v").unwrap();
    // HGETALL is a RESP3 map when the client speaks RESP3.
    let v: Value = redis::cmd("HGETALL").arg("h3").query(&mut c).unwrap();
    assert!(matches!(v, Value::Map(_)), "{v:?}");
    let d: Value = redis::cmd("ZSCORE")
        .arg("nozset")
        .arg("m")
        .query(&mut c)
        .unwrap();
    assert_eq!(d, Value::Nil);
    let _: () = c.zadd("z3", "m", 1.5).unwrap();
    let d: Value = redis::cmd("ZSCORE")
        .arg("z3")
        .arg("m")
        .query(&mut c)
        .unwrap();
    assert_eq!(d, Value::Double(1.5));

    // A RESP2 client asking the same gets RESP2.
    let mut c2 = proxy.conn();
    let v: Value = redis::cmd("HGETALL").arg("h3").query(&mut c2).unwrap();
    assert!(matches!(v, Value::Array(_)), "{v:?}");

    // Pushes reach a RESP3 subscriber as pushes.
    let raw = raw_exchange(proxy.port(), b"HELLO 3\r\nSUBSCRIBE ch\r\n", |seen| {
        seen.windows(b">3\r\n$9\r\nsubscribe".len())
            .any(|w| w == b">3\r\n$9\r\nsubscribe")
    });
    assert!(raw.starts_with(b"%"), "{}", String::from_utf8_lossy(&raw));
}

/// Writes `input` on a raw connection and reads until `done` says so.
fn raw_exchange(port: u16, input: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(input).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&seen) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

#[test]
fn redis_cli_inline_and_connection_commands() {
    let (_cluster, proxy) = setup();
    assert_eq!(proxy.cli(&["PING"]).trim(), "PONG");
    assert_eq!(proxy.cli(&["SET", "cli", "hello world"]).trim(), "OK");
    assert_eq!(proxy.cli(&["GET", "cli"]).trim(), "hello world");
    assert_eq!(proxy.cli(&["ECHO", "x"]).trim(), "x");

    // Inline commands, as telnet sends them.
    let raw = raw_exchange(
        proxy.port(),
        b"SET inl \"a b\"\r\nGET inl\r\nPING\r\n",
        |seen| seen.ends_with(b"+PONG\r\n"),
    );
    assert_eq!(raw, b"+OK\r\n$3\r\na b\r\n+PONG\r\n");

    // Connection state is the client's own.
    let mut c = proxy.conn();
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("worker-1")
        .exec(&mut c)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
    assert_eq!(name, "worker-1");
    let other_name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut proxy.conn())
        .unwrap();
    assert_eq!(other_name, None);
    let id1: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let id2: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut proxy.conn())
        .unwrap();
    assert_ne!(id1, id2);

    // SELECT: each client sees its own database.
    redis::cmd("SELECT").arg(3).exec(&mut c).unwrap();
    let _: () = c.set("db3key", "x").unwrap();
    assert_eq!(c.get::<_, String>("db3key").unwrap(), "x");
    let mut d0 = proxy.conn();
    assert_eq!(d0.get::<_, Option<String>>("db3key").unwrap(), None);
    let err = redis::cmd("SELECT")
        .arg(99999)
        .query::<()>(&mut d0)
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    redis::cmd("SELECT").arg(0).exec(&mut c).unwrap();
    assert_eq!(c.get::<_, Option<String>>("db3key").unwrap(), None);

    // RESET answers like Redis and forgets the name.
    let reset: String = redis::cmd("RESET").query(&mut c).unwrap();
    assert_eq!(reset, "RESET");
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
    assert_eq!(name, None);

    // QUIT answers OK and closes.
    let raw = raw_exchange(proxy.port(), b"QUIT\r\n", |seen| seen.ends_with(b"\r\n"));
    assert_eq!(raw, b"+OK\r\n");
}

#[test]
fn proxy_password_and_backend_password() {
    let cluster = Cluster::start(1);
    for node in &cluster.nodes {
        node.cli(&["CONFIG", "SET", "masterauth", "backend-secret"]);
    }
    for node in cluster.nodes.iter().rev() {
        node.cli(&["CONFIG", "SET", "requirepass", "backend-secret"]);
    }
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "password = \"front-secret\"",
            sections: "[backend]\npassword = \"backend-secret\"",
            ..Setup::default()
        },
    );
    assert!(proxy.cli(&["GET", "x"]).contains("NOAUTH"));
    assert!(proxy.cli(&["AUTH", "wrong"]).contains("WRONGPASS"));
    assert!(proxy
        .cli(&["AUTH", "nobody", "front-secret"])
        .contains("WRONGPASS"));
    assert_eq!(
        proxy
            .cli(&["-a", "front-secret", "--no-auth-warning", "SET", "x", "1"])
            .trim(),
        "OK"
    );
    let client = redis::Client::open(format!(
        "redis://:front-secret@{}/?protocol=resp3",
        proxy.addr
    ))
    .unwrap();
    let mut c = client.get_connection().unwrap();
    assert_eq!(c.get::<_, String>("x").unwrap(), "1");
}

#[test]
fn reads_go_to_replicas_when_configured() {
    let cluster = Cluster::start(2);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"replicas\"",
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(5));
    let mut c = proxy.conn();
    let _: () = c.set("r", "v").unwrap();
    wait_until("replication", Duration::from_secs(5), || {
        cluster.nodes[1..]
            .iter()
            .all(|n| n.cli(&["GET", "r"]).trim() == "v")
    });
    // Fresh connections (one that keeps reading stays on its replica, see
    // docs/reads.md): the round robin spreads them.
    let before: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    let mut readers: Vec<redis::Connection> = (0..4).map(|_| proxy.conn()).collect();
    for _ in 0..50 {
        for reader in &mut readers {
            let _: String = reader.get("r").unwrap();
        }
    }
    let after: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(served[0], 0, "the primary served reads: {served:?}");
    assert_eq!(served[1] + served[2], 200, "{served:?}");
    assert!(served[1] >= 50 && served[2] >= 50, "not spread: {served:?}");
    // Writes still go to the primary.
    assert!(cluster.primary().calls("set") >= 1);
    // With reads to the primary (the default) no replica serves a GET.
    let primary_only = Proxy::start(&cluster.addrs(), Setup::default());
    let before = cluster.nodes[1].calls("get") + cluster.nodes[2].calls("get");
    for _ in 0..50 {
        let _: String = primary_only.conn().get("r").unwrap();
    }
    assert_eq!(
        cluster.nodes[1].calls("get") + cluster.nodes[2].calls("get"),
        before
    );
}

#[test]
fn wait_counts_replica_acks_of_this_clients_writes() {
    let (cluster, proxy) = setup();
    let mut c = proxy.conn();
    let _: () = c.set("w", "1").unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(2000).query(&mut c).unwrap();
    assert_eq!(acked, 2);
    // With one replica stopped, WAIT for both times out and says 1.
    cluster.nodes[2].signal("STOP");
    let _: () = c.set("w", "2").unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(300).query(&mut c).unwrap();
    cluster.nodes[2].signal("CONT");
    assert_eq!(acked, 1);
}

#[test]
fn direct_redis_cli_through_proxy_matches_direct() {
    let (cluster, proxy) = setup();
    proxy.cli(&["RPUSH", "cmp", "a", "b", "c"]);
    let through = proxy.cli(&["LRANGE", "cmp", "0", "-1"]);
    let direct = redis_cli(cluster.primary().port, &["LRANGE", "cmp", "0", "-1"]).unwrap();
    assert_eq!(through, direct);
}

#[test]
fn big_aggregate_replies_split_across_reads_under_pipelining() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();
    let items: Vec<String> = (0..100).map(|i| format!("item-{i}")).collect();
    let _: () = c.rpush("big-list", &items).unwrap();
    let _: () = c
        .hset_multiple(
            "big-hash",
            &items.iter().map(|i| (i.as_str(), "v")).collect::<Vec<_>>(),
        )
        .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let client = proxy.client();
            let items = items.clone();
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                let mut pipe = redis::pipe();
                for _ in 0..500 {
                    pipe.lrange("big-list", 0, -1);
                }
                let lists: Vec<Vec<String>> = pipe.query(&mut c).unwrap();
                assert!(lists.iter().all(|l| *l == items));
                let mut pipe = redis::pipe();
                for _ in 0..200 {
                    pipe.hgetall("big-hash");
                }
                let hashes: Vec<std::collections::HashMap<String, String>> =
                    pipe.query(&mut c).unwrap();
                assert!(hashes.iter().all(|h| h.len() == 100));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// The bytes a node holds unread from the client connection that is running
/// `cmd` (the link, blocked on a paused write).
fn unread_bytes_of_link(node: &rampart_tests::RedisNode) -> Option<u64> {
    let list = node.cli(&["CLIENT", "LIST"]);
    let line = list.lines().find(|l| l.contains("cmd=set"))?;
    let field = line.split(' ').find_map(|f| f.strip_prefix("qbuf="))?;
    field.parse().ok()
}

#[test]
fn a_shared_link_sends_at_most_its_window_of_requests() {
    // Each client sends one SET (28 bytes) while the node holds writes: the
    // link's first SET blocks the node's reading of that connection, so the
    // rest of what the link sent stays in the node's query buffer.
    const SET_LEN: u64 = "*3\r\n$3\r\nSET\r\n$2\r\nk0\r\n$1\r\nv\r\n".len() as u64;
    const CLIENTS: usize = 10;
    let cluster = Cluster::start(0);
    let node = cluster.primary();
    for (window, check) in [
        (
            0,
            Box::new(|q: u64| q >= (CLIENTS as u64 - 1) * SET_LEN) as Box<dyn Fn(u64) -> bool>,
        ),
        (4, Box::new(|q: u64| q > 0 && q <= 3 * SET_LEN)),
    ] {
        node.cli(&["FLUSHALL"]);
        let sections = format!("[backend]\nlinks_per_node = 1\nmax_inflight_per_link = {window}");
        let proxy = Proxy::start(
            &cluster.addrs(),
            Setup {
                sections: &sections,
                ..Setup::default()
            },
        );
        let _: () = proxy.conn().set("warm", "up").unwrap();
        node.cli(&["CLIENT", "PAUSE", "5000", "WRITE"]);
        let writers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let client = proxy.client();
                std::thread::spawn(move || {
                    let mut c = client.get_connection().unwrap();
                    let _: () = c.set(format!("k{i}"), "v").unwrap();
                })
            })
            .collect();
        // Everything that will reach the node has reached it once its
        // query buffer stops growing.
        let mut last = None;
        wait_until(
            "the link's requests to settle",
            Duration::from_secs(3),
            || {
                std::thread::sleep(Duration::from_millis(200));
                let now = unread_bytes_of_link(node);
                let settled = now.is_some() && now == last;
                last = now;
                settled
            },
        );
        let unread = last.unwrap();
        node.cli(&["CLIENT", "UNPAUSE"]);
        assert!(
            check(unread),
            "window {window}: {unread} bytes unread on the node"
        );
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(node.cli(&["DBSIZE"]).trim(), (CLIENTS + 1).to_string());
    }
}

#[test]
fn requests_waiting_for_the_window_fail_cleanly_when_the_node_dies() {
    let mut cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[backend]\nmax_inflight_per_link = 1",
            ..Setup::default()
        },
    );
    let _: () = proxy.conn().set("warm", "up").unwrap();
    cluster
        .primary()
        .cli(&["CLIENT", "PAUSE", "10000", "WRITE"]);
    // One SET reaches the node and blocks there; the others wait for the
    // window in Rampart (one taken off the link's queue, one still in it).
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                std::thread::sleep(Duration::from_millis(50 * i));
                c.set::<_, _, ()>(format!("k{i}"), "v")
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    wait_until("a SET blocked on the node", Duration::from_secs(3), || {
        unread_bytes_of_link(cluster.primary()).is_some()
    });
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[0].kill();
    let errors: Vec<String> = writers
        .into_iter()
        .map(|w| w.join().unwrap().expect_err("the node died"))
        .collect();
    // The one sent may or may not have run; the two never sent say so.
    let sent = errors
        .iter()
        .filter(|e| e.contains("may or may not have run"));
    let unsent = errors.iter().filter(|e| e.contains("unavailable"));
    assert_eq!((sent.count(), unsent.count()), (1, 2), "{errors:?}");
}

/// The reply to `EVAL` of a Lua table nested `depth` deep, read raw from
/// `addr` (redis-rs would recurse once per level).
fn deep_reply(addr: &str, depth: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let script = format!(
        "local t = {{}} local c = t for i=1,{depth} do local n = {{}} c[1] = n c = n end return t"
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
            script.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Every level is `*1\r\n`; the innermost table is empty (`*0\r\n`),
    // unless Lua's stack ran out first and Redis ended with an error.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 65536];
    while !(reply.ends_with(b"*0\r\n") || reply.ends_with(b"limit\r\n")) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} bytes", reply.len());
        reply.extend_from_slice(&chunk[..n]);
    }
    reply
}

/// The deepest replies Redis makes (a Lua table nested as deep as Lua's
/// stack allows) pass through unchanged, and clients sharing the link
/// see nothing of them.
#[test]
fn the_deepest_replies_redis_makes_pass_through() {
    let (cluster, proxy) = setup();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others: Vec<_> = (0..4)
        .map(|i| {
            let mut c = proxy.conn();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _: () = c.set(format!("other:{i}"), n).unwrap();
                    let got: u64 = c.get(format!("other:{i}")).unwrap();
                    assert_eq!(got, n);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let through = proxy.addr.to_string();
    for depth in [600, 7_900, 20_000] {
        let direct = deep_reply(&cluster.addrs()[0], depth);
        assert_eq!(deep_reply(&through, depth), direct, "depth {depth}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for other in others {
        assert!(other.join().unwrap() > 0);
    }
}
