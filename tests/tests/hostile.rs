//! Hostile clients and nodes hurt no one else: a password that guards the
//! default user whatever the nodes say, guesses slowed per source address,
//! HTTP sent to the Redis port closed like Redis closes it, and nodes that
//! answer with replies too deep or too large to hold refused rather than
//! crashing or bloating Rampart.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_tests::workload::Bystander;
use rampart_tests::{wait_until, Cluster, Proxy, Setup};

/// A fresh connection's answer to one command, as redis-rs sees it.
fn answer(proxy: &Proxy, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut conn = proxy.client().get_connection()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn)
}

#[test]
fn the_default_user_is_guarded_by_the_proxy_password_whatever_the_nodes_say() {
    let cluster = Cluster::start(1);
    for node in &cluster.nodes {
        node.cli(&[
            "ACL",
            "SETUSER",
            "alice",
            "on",
            ">alice-pw",
            "~*",
            "&*",
            "+@all",
        ]);
    }
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "password = \"secret\"",
            ..Setup::default()
        },
    );
    // The nodes' default user is `nopass`: they would take anything.
    for args in [
        &["AUTH", "default", "anything"][..],
        &["AUTH", "anything"],
        &["HELLO", "3", "AUTH", "default", "anything"],
        &["HELLO", "2", "AUTH", "default", "x"],
    ] {
        let refused = answer(&proxy, args).expect_err("a wrong password is refused");
        assert_eq!(refused.code(), Some("WRONGPASS"), "{args:?}: {refused}");
    }
    assert_eq!(proxy.metric("rampart_auth_failures_total"), Some(4.0));
    // Rampart's password, however the default user is named.
    for args in [
        &["AUTH", "secret"][..],
        &["AUTH", "default", "secret"],
        &["HELLO", "3", "AUTH", "default", "secret"],
    ] {
        assert!(answer(&proxy, args).is_ok(), "{args:?}");
    }
    // The nodes' own ACL users are still theirs to check.
    assert!(answer(&proxy, &["AUTH", "alice", "alice-pw"]).is_ok());
    let refused = answer(&proxy, &["AUTH", "alice", "nope"]).expect_err("refused");
    assert_eq!(refused.code(), Some("WRONGPASS"));
}

#[test]
fn password_guesses_are_slowed_per_source_and_never_the_right_one() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "password = \"secret\"",
            ..Setup::default()
        },
    );
    // A fresh connection for every guess, as a brute-forcer does: the
    // first three are answered at once, then 100, 200, 400, 800, 1000 ms
    // apart.
    let started = Instant::now();
    for _ in 0..8 {
        let refused = answer(&proxy, &["AUTH", "guess"]).expect_err("refused");
        assert_eq!(refused.code(), Some("WRONGPASS"));
    }
    let guessing = started.elapsed();
    assert!(
        guessing >= Duration::from_millis(1400),
        "8 wrong passwords on fresh connections answered in {guessing:?}"
    );
    // The right password from the same address is not held back.
    let right = Instant::now();
    assert!(answer(&proxy, &["AUTH", "secret"]).is_ok());
    assert!(
        right.elapsed() < Duration::from_millis(800),
        "the right password waited {:?}",
        right.elapsed()
    );
    // Parallel guesses from one address do not multiply the rate: their
    // answers come one after another.
    let started = Instant::now();
    let guesses: Vec<_> = (0..4)
        .map(|_| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut c = client.get_connection().ok()?;
                redis::cmd("AUTH").arg("guess").query::<()>(&mut c).err()
            })
        })
        .collect();
    for guess in guesses {
        let _ = guess.join();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "4 parallel guesses answered in {:?}",
        started.elapsed()
    );
}

#[test]
fn http_sent_to_the_redis_port_closes_only_that_connection() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let bystanders: Vec<Bystander> = (0..4).map(|_| Bystander::start(&proxy)).collect();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..50 {
        let request = if i % 2 == 0 {
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        } else {
            "Host: 127.0.0.1\r\n\r\n"
        };
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).expect("send");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.is_empty(),
            "Redis answers nothing and closes: got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for bystander in bystanders {
        let (ok, failed) = bystander.finish();
        assert!(ok > 0);
        assert_eq!(failed, 0, "another client saw {failed} errors");
    }
}

/// A "node" that answers whatever it is sent with `reply`, forever; `sent`
/// keeps the most bytes one connection took before Rampart hung up.
fn hostile_node(reply: Vec<u8>, sent: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (reply, sent) = (reply.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut total = 0;
                while conn.read(&mut buf).is_ok_and(|n| n > 0) {
                    for chunk in reply.chunks(64 * 1024) {
                        if conn.write_all(chunk).is_err() {
                            return;
                        }
                        total += chunk.len();
                        sent.fetch_max(total, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_node_answering_too_deep_or_too_large_is_refused_and_nobody_notices() {
    let cluster = Cluster::start(0);
    let deep_sent = Arc::new(AtomicUsize::new(0));
    let deep = hostile_node(
        ("*1\r\n".repeat(5000) + ":1\r\n").into_bytes(),
        deep_sent.clone(),
    );
    // A 1 GiB bulk string, of which the node sends the first 64 MiB.
    let huge_sent = Arc::new(AtomicUsize::new(0));
    let mut huge_reply = b"$1073741824\r\n".to_vec();
    huge_reply.resize(64 * 1024 * 1024, b'x');
    let huge = hostile_node(huge_reply, huge_sent.clone());
    let mut nodes = cluster.addrs();
    nodes.push(deep);
    nodes.push(huge);
    let proxy = Proxy::start(&nodes, Setup::default());
    let bystander = Bystander::start(&proxy);
    // Probes and handshakes reach both every 50 ms for two seconds.
    wait_until(
        "both hostile nodes to be tried",
        Duration::from_secs(10),
        || deep_sent.load(Ordering::Relaxed) > 0 && huge_sent.load(Ordering::Relaxed) > 0,
    );
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed) = bystander.finish();
    assert!(ok > 0, "Rampart serves");
    assert_eq!(failed, 0);
    // Rampart hung up on the huge reply long before the end of it: a
    // connection takes at most about 1 MiB (plus what the sockets buffer).
    assert!(
        huge_sent.load(Ordering::Relaxed) < 16 * 1024 * 1024,
        "{} bytes taken from the node on one connection",
        huge_sent.load(Ordering::Relaxed)
    );
    let topology = proxy.cli(&["RAMPART", "TOPOLOGY"]);
    assert!(topology.contains("\"health\""), "{topology}");
}

#[test]
fn silent_connections_do_not_lock_the_probes_out_of_the_admin_port() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            admin: "max_connections = 64",
            ..Setup::default()
        },
    );
    let admin = proxy.admin.expect("admin listener");
    // Fifteen times the cap, held open without a byte.
    let held: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(admin).ok())
        .collect();
    assert!(held.len() > 900, "{} connections held", held.len());
    std::thread::sleep(Duration::from_millis(300));
    let mut answered = 0;
    for path in ["/healthz", "/readyz", "/metrics"].iter().cycle().take(21) {
        match rampart_tests::try_http(admin, "GET", path, b"") {
            Ok((200, _)) => answered += 1,
            other => eprintln!("{path}: {other:?}"),
        }
    }
    assert_eq!(answered, 21, "the probes were locked out");
    drop(held);
}

/// A "replica" that claims to follow `primary_port` at `offset`, far
/// beyond anything the primary wrote: a misconfigured or hostile node.
/// It answers `INFO` with that claim and everything else with `+OK`.
fn boasting_replica(primary_port: u16, offset: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let info = format!(
        "# Server\r\nredis_version:7.0.15\r\nrun_id:{:040}\r\n# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:{primary_port}\r\nmaster_link_status:up\r\nslave_repl_offset:{offset}\r\nslave_priority:100\r\nmaster_replid:{:040}\r\nmaster_repl_offset:{offset}\r\n",
        7, 9
    );
    let info = format!("${}\r\n{info}\r\n", info.len()).into_bytes();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let info = info.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Ok(Some((frame, used))) = redis_protocol::resp2::decode::decode(&buf)
                    {
                        let first = match &frame {
                            redis_protocol::resp2::types::OwnedFrame::Array(items) => {
                                match items.first() {
                                    Some(redis_protocol::resp2::types::OwnedFrame::BulkString(
                                        b,
                                    )) => String::from_utf8_lossy(b).to_uppercase(),
                                    _ => String::new(),
                                }
                            }
                            _ => String::new(),
                        };
                        buf.drain(..used);
                        let reply: &[u8] = match first.as_str() {
                            "INFO" => &info,
                            "PING" => b"+PONG\r\n",
                            _ => b"+OK\r\n",
                        };
                        if conn.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A node claiming an offset the primary never reached is not believed:
/// when the primary dies, the real replica is promoted, not the boaster,
/// and the refusal is said once, not every tick.
#[test]
fn a_replica_claiming_an_impossible_offset_is_never_promoted() {
    let cluster = Cluster::start(1);
    let fake = boasting_replica(cluster.nodes[0].port, 1_000_000_000_000_000);
    let mut nodes = cluster.addrs();
    nodes.push(fake.clone());
    let proxy = Proxy::start(
        &nodes,
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n",
            ..Setup::default()
        },
    );
    let mut conn = proxy.conn();
    for i in 0..20 {
        let _: () = redis::Commands::set(&mut conn, format!("k{i}"), i).unwrap();
    }
    let real = cluster.nodes[1].addr();
    wait_until(
        "the real replica to catch up",
        Duration::from_secs(10),
        || cluster.nodes[1].cli(&["GET", "k19"]).trim() == "19",
    );
    let mut cluster = cluster;
    cluster.nodes[0].kill();
    wait_until("a promotion", Duration::from_secs(10), || {
        proxy.shard()["epoch"] == 2
    });
    assert_eq!(
        proxy.shard()["primary"],
        real.as_str(),
        "{:#?}",
        proxy.events()
    );
    let kinds = proxy.event_kinds();
    let boasts = kinds.iter().filter(|k| *k == "replica-implausible").count();
    assert_eq!(boasts, 1, "{kinds:?}");
    let mut conn = proxy.conn();
    let v: Option<i64> = redis::Commands::get(&mut conn, "k19").unwrap();
    assert_eq!(v, Some(19));
    // A second later the history holds no flood of events about it.
    std::thread::sleep(Duration::from_secs(1));
    let about_fake = proxy
        .events()
        .iter()
        .filter(|e| e["node"] == fake.as_str())
        .count();
    assert!(about_fake <= 6, "{about_fake} events about the boaster");
}
