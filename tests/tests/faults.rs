//! Bad input and failing backends: each gets a clear error, the proxy keeps
//! serving, and no other client notices.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_tests::workload::Bystander;
use rampart_tests::{wait_until, Cluster, Proxy, Setup};
use redis::Commands;

/// Sends `input` on a fresh connection and returns everything the proxy
/// wrote before closing it.
fn send_raw(port: u16, input: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(input);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn malformed_input_gets_redis_errors_and_disturbs_nobody() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let bystander = Bystander::start(&proxy);

    let cases: &[(&[u8], &str)] = &[
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*1\r\n$-3\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$99999999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*9999999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            "-ERR Protocol error: bulk string not terminated by CRLF\r\n",
        ),
    ];
    for (input, expected) in cases {
        let out = send_raw(proxy.port(), input);
        assert_eq!(
            String::from_utf8_lossy(&out),
            *expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // An inline request longer than 64 KiB without a newline.
    let out = send_raw(proxy.port(), &vec![b'A'; 70 * 1024]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-ERR Protocol error: too big inline request\r\n"
    );
    // A huge declared array is not allocated up front: the proxy waits for
    // the elements and stays small.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"*1048576\r\n$3\r\nGET\r\n").unwrap();
    // Random garbage, many times.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..200 {
        let len = (seed % 64) as usize + 1;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b"*$\r\n-:+0123456789abc"[(seed % 20) as usize]
            })
            .collect();
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        let _ = s.write_all(&junk);
    }
    // Pre-auth and after everything: the proxy still answers.
    assert_eq!(proxy.cli(&["PING"]).trim(), "PONG");
    let (ok, failed) = bystander.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "the bystander saw {failed} failures");
}

#[test]
fn too_many_clients_get_redis_error() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "max_clients = 3",
            ..Setup::default()
        },
    );
    let _held: Vec<redis::Connection> = (0..3).map(|_| proxy.conn()).collect();
    let out = send_raw(proxy.port(), b"PING\r\n");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-ERR max number of clients reached\r\n"
    );
}

#[test]
fn a_killed_replica_fails_only_what_was_in_flight_on_it() {
    let mut cluster = Cluster::start(2);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"replicas\"",
            ..Setup::default()
        },
    );
    let mut c = proxy.conn();
    let _: () = c.set("k", "v").unwrap();
    wait_until("replicas to serve reads", Duration::from_secs(5), || {
        proxy.serving_replicas() == 2
            && cluster.nodes[1..]
                .iter()
                .all(|n| n.cli(&["GET", "k"]).trim() == "v")
    });

    // Readers hammer GET while a replica is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let oks = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let client = proxy.client();
            let (stop, errors, oks) = (stop.clone(), errors.clone(), oks.clone());
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                let mut messages = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.get::<_, String>("k") {
                        Ok(v) => {
                            assert_eq!(v, "v");
                            oks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            messages.push(e.to_string());
                        }
                    }
                }
                messages
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[2].kill();
    let killed_at = oks.load(Ordering::Relaxed);
    // Reads recover onto the surviving replica.
    wait_until("reads to continue", Duration::from_secs(5), || {
        oks.load(Ordering::Relaxed) > killed_at + 2_000
    });
    let errors_after_recovery = errors.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let messages: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    // Only requests in flight on the killed node (at most one per reader,
    // which each had one outstanding) failed, with a clear message, and
    // nothing failed once the proxy had noticed.
    assert!(
        messages.len() <= 4,
        "{} errors: {messages:?}",
        messages.len()
    );
    for m in &messages {
        assert!(m.contains(&cluster.nodes[2].addr()), "unclear error: {m}");
    }
    assert_eq!(errors.load(Ordering::Relaxed), errors_after_recovery);

    // The replica comes back and serves reads again.
    cluster.nodes[2].restart();
    wait_until(
        "the replica to serve reads again",
        Duration::from_secs(15),
        || proxy.serving_replicas() == 2,
    );
    // Once its link has reconnected (backoff of at most a second) it gets
    // reads again, and no read fails meanwhile. New clients, since one
    // client keeps reading from the replica it started on (its home, for
    // monotonic reads); 7 reads each, so that the rotation does not start
    // every client on the same replica.
    let before = cluster.nodes[2].calls("get");
    rampart_tests::wait_until_or(
        "reads to reach the returned replica",
        Duration::from_secs(10),
        || {
            let mut fresh = proxy.conn();
            for _ in 0..7 {
                let _: String = fresh.get("k").unwrap();
            }
            cluster.nodes[2].calls("get") > before
        },
        || {
            let gets: Vec<u64> = cluster.nodes.iter().map(|n| n.calls("get")).collect();
            format!("GETs per node {gets:?}; {:#}", proxy.shard())
        },
    );
}

#[test]
fn a_primary_dying_mid_reply_fails_the_in_flight_requests_then_recovers() {
    let mut cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut c = proxy.conn();
    // A big value makes the reply span many reads.
    let big = "x".repeat(4 * 1024 * 1024);
    let _: () = c.set("big", &big).unwrap();
    let client = proxy.client();
    let reader = std::thread::spawn(move || {
        let mut c = client.get_connection().unwrap();
        let mut results = Vec::new();
        for _ in 0..200 {
            results.push(
                c.get::<_, Option<String>>("big")
                    .map(|v| v.map(|v| v.len())),
            );
        }
        results
    });
    std::thread::sleep(Duration::from_millis(50));
    cluster.nodes[0].restart();
    let results = reader.join().unwrap();
    for r in &results {
        match r {
            Ok(Some(len)) => assert_eq!(*len, big.len()),
            // The node restarted empty (no persistence in the test).
            Ok(None) => {}
            Err(e) => assert!(
                e.to_string().contains("rampart")
                    && e.to_string().contains(&cluster.nodes[0].addr()),
                "unclear error: {e}"
            ),
        }
    }
    // After the restart (empty, no persistence) the proxy reconnects.
    wait_until("the link to reconnect", Duration::from_secs(10), || {
        c.set::<_, _, ()>("after", "1").is_ok()
    });
    assert_eq!(c.get::<_, String>("after").unwrap(), "1");
}

/// A primary that goes away and comes back at the same address (a crash
/// and a restart, no replica to fail over to) costs the requests sent
/// meanwhile a pause, not an error: they wait (`failover.hold_writes_ms`)
/// while the node is down, and while Rampart's link reconnects once it
/// answers again. Only what was on the wire when it died may fail.
#[test]
fn requests_sent_while_a_primary_restarts_wait_for_it() {
    let mut cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n",
            ..Setup::default()
        },
    );
    let _: () = proxy.conn().set("warm", "up").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, stop) = (proxy.client(), stop.clone());
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                let (mut ok, mut errors) = (0u64, Vec::new());
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match c.set::<_, _, ()>(format!("w{w}:{i}"), i) {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Down for longer than a few reconnect attempts, so that the links
    // back off; back well within the hold.
    cluster.nodes[0].kill();
    std::thread::sleep(Duration::from_millis(700));
    cluster.nodes[0].restart();
    wait_until("a write after the restart", Duration::from_secs(10), || {
        cluster.nodes[0]
            .cli(&["DBSIZE"])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            > 20
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let (ok, errors) = writer.join().unwrap();
        assert!(ok > 20, "{ok} writes went through");
        // At most the write on the wire when the node died fails, and
        // says it may have run.
        let first: Vec<_> = errors.iter().take(3).collect();
        assert!(
            errors.len() <= 1 && errors.iter().all(|e| e.contains("may or may not have run")),
            "{} errors, the first {first:?}",
            errors.len()
        );
    }
}

/// A primary that dies and stays dead, with the detector slow to judge
/// it: a request waits for its link no longer than
/// `failover.hold_writes_ms`, then is answered with an error naming it.
#[test]
fn a_request_held_for_a_dead_primary_fails_once_the_hold_ends() {
    let mut cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 60000\n[failover]\nhold_writes_ms = 400\n",
            ..Setup::default()
        },
    );
    let mut c = proxy.conn();
    let _: () = c.set("warm", "up").unwrap();
    cluster.nodes[0].kill();
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let error = c
        .set::<_, _, ()>("k", "v")
        .expect_err("the node is dead")
        .to_string();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    assert!(
        error.contains("unavailable") || error.contains("no reachable primary"),
        "{error}"
    );
}

/// Resident memory of this process (the proxy runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_does_not_read_is_held_back_not_buffered() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut c = proxy.conn();
    let value = "v".repeat(16 * 1024);
    let _: () = c.set("fat", &value).unwrap();
    let before = rss_kib();
    // Up to 100 MiB of GET requests (~4 million, ~64 GiB of replies if
    // they were all read and buffered) from a client that never reads.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nfat\r\n".repeat(40_000);
    let mut sent_mib = 0;
    for _ in 0..100 {
        match s.write_all(&request) {
            Ok(()) => sent_mib += 1,
            Err(_) => break, // the proxy stopped reading: backpressure
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        sent_mib < 100,
        "the proxy read every request from a client that never reads"
    );
    assert!(grown_mib < 300, "memory grew by {grown_mib} MiB");
    // Others are unaffected.
    assert_eq!(c.get::<_, String>("fat").unwrap().len(), value.len());
}
