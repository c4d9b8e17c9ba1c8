//! Memory caps: what clients make Rampart hold is bounded, and a client
//! over a cap is disconnected without disturbing the others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_tests::{
    free_port, http_get, redis_cli, run_rampart, wait_until, Cluster, Proxy, Running, Setup,
};
use redis::Commands;

/// `VmHWM` (peak resident memory) or `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap()
}

/// Writes `big` (a value of `size` bytes) and `small` (`s`) straight to
/// the primary; returns the big value.
fn big_and_small(cluster: &Cluster, size: usize) -> Vec<u8> {
    let value = vec![b'x'; size];
    let mut direct = redis::Client::open(format!("redis://{}/", cluster.addrs()[0]))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = direct.set("big", &value).unwrap();
    let _: () = direct.set("small", "s").unwrap();
    value
}

/// `rampart run` as its own process, so its memory can be measured.
fn rampart_with_limits(nodes: &[String], limits: &str) -> (Running, u16, std::net::SocketAddr) {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[limits]\n{limits}\n[shards.main]\nnodes = [{}]\n",
            nodes.join(", ")
        ),
    )
    .unwrap();
    let running = run_rampart(env!("CARGO_BIN_EXE_rampart-test-cli"), &file, || {
        redis_cli(port, &["PING"]).is_ok_and(|out| out.trim() == "PONG")
    });
    // The file is read at start (and on SIGHUP, which no test sends).
    std::mem::forget(dir);
    (running, port, format!("127.0.0.1:{admin}").parse().unwrap())
}

/// A client that never reads while its replies pass `client_output_hard_mb`
/// (here one reply is larger than the cap) is cut, Rampart's peak memory
/// grows by little more than the cap, and another client is served
/// throughout. (A client whose replies fit is not cut: its requests wait,
/// see the test below.)
#[test]
fn a_client_that_never_reads_is_cut_at_its_cap_and_others_are_served() {
    let cluster = Cluster::start(0);
    let value = big_and_small(&cluster, 4 * 1024 * 1024);
    let (rampart, port, admin) = rampart_with_limits(
        &cluster.addrs(),
        "client_output_hard_mb = 2\nclients_output_total_mb = 64",
    );
    let pid = rampart.0.id();
    let before = memory_kib(pid, "VmRSS:");

    // 150 GETs of 4 MiB: 600 MB owed to a client that reads nothing (the
    // node sends it all; what the cap saves is Rampart holding it).
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(150);
    slow.write_all(&request).unwrap();

    // Meanwhile another client keeps working.
    let mut other = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut slowest_ping = Duration::ZERO;
    let evicted = |admin| {
        http_get(admin, "/metrics")
            .1
            .contains("rampart_clients_evicted_total{reason=\"output-hard-limit\"} 1")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after_eviction = None;
    while after_eviction.is_none_or(|n| n < 20) {
        assert!(Instant::now() < deadline, "the slow client was never cut");
        let started = Instant::now();
        let pong: String = redis::cmd("PING").query(&mut other).unwrap();
        slowest_ping = slowest_ping.max(started.elapsed());
        assert_eq!(pong, "PONG");
        let small: String = other.get("small").unwrap();
        assert_eq!(small, "s");
        if after_eviction.is_some() || evicted(admin) {
            after_eviction = Some(after_eviction.unwrap_or(0) + 1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cut means closed: once the bytes already in flight are read, EOF.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sink = vec![0; 1 << 20];
    let mut received = 0;
    loop {
        match slow.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) => panic!("the evicted client's connection stayed open: {e}"),
        }
    }
    assert!(received < value.len() * 150, "it got everything: not cut");

    let peak = memory_kib(pid, "VmHWM:");
    assert!(
        peak.saturating_sub(before) < 256 * 1024,
        "Rampart grew from {before} KiB to a peak of {peak} KiB"
    );
    // Liveness, not speed: a client that does not read must not stall the
    // others for seconds, as it once did.
    assert!(
        slowest_ping < Duration::from_secs(1),
        "a PING waited {slowest_ping:?}"
    );
    let metrics = http_get(admin, "/metrics").1;
    assert!(
        metrics.contains("rampart_clients_output_bytes 0"),
        "{metrics}"
    );
    let events = http_get(admin, "/v1/events").1;
    assert!(
        events.contains("client-evicted") && events.contains("output-hard-limit"),
        "{events}"
    );
}

/// Many connections each sending most of a large value share one cap: the
/// one whose unfinished request takes the total past it is disconnected,
/// the others (and everyone else) carry on.
#[test]
fn partly_received_requests_share_a_cap() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[limits]\npartial_requests_total_mb = 8\n",
            ..Setup::default()
        },
    );
    // Values of 3.5 MiB, of which 3 MiB are sent at first.
    let header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3670016\r\n";
    let chunk = vec![b'x'; 3 * 1024 * 1024];
    let mut senders: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(header).unwrap();
        s.write_all(&chunk).unwrap();
        senders.push(s);
    }
    let admin = proxy.admin.unwrap();
    wait_until("6 MiB held", Duration::from_secs(10), || {
        http_get(admin, "/metrics").1.lines().any(|l| {
            l.strip_prefix("rampart_clients_partial_request_bytes ")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 6.0 * 1024.0 * 1024.0)
        })
    });
    // The third takes it past 8 MiB: it is closed.
    let mut third = TcpStream::connect(proxy.addr).unwrap();
    third.write_all(header).unwrap();
    let _ = third.write_all(&chunk);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third connection was not closed"
    );
    let metrics = http_get(admin, "/metrics").1;
    assert!(
        metrics.contains("rampart_clients_evicted_total{reason=\"partial-requests-limit\"} 1"),
        "{metrics}"
    );
    // The first two finish their requests and are answered.
    let mut conn = proxy.conn();
    let _: () = conn.set("ok", 1).unwrap();
    for mut s in senders {
        s.write_all(&vec![b'x'; 3670016 - chunk.len()]).unwrap();
        s.write_all(b"\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
    }
}

/// The attack from the hostile-inputs review, nine times in one process: a
/// client pipelines 1,000 GETs of a 10 MiB value and never reads. Its
/// requests stop going to the node once its unread replies fill its share
/// (the node is not kept busy for seconds producing what nobody will
/// read), so the node is never taken for dead and failed over; a
/// bystander's GETs stay fast throughout; and what Rampart held for the
/// attacker is given back to the system once it has gone.
#[test]
fn a_client_that_pipelines_huge_reads_and_never_reads_costs_others_nothing() {
    let cluster = Cluster::start(1);
    big_and_small(&cluster, 10 * 1024 * 1024);
    let (rampart, port, admin) = rampart_with_limits(&cluster.addrs(), "");
    let pid = rampart.0.id();
    let mut other = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: String = other.get("small").unwrap();
    let start = memory_kib(pid, "VmRSS:");
    let mut slowest = Duration::ZERO;
    let mut after = Vec::new();
    for _ in 0..9 {
        let mut attacker = TcpStream::connect(("127.0.0.1", port)).unwrap();
        attacker
            .write_all(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(1000))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let started = Instant::now();
            let small: String = other.get("small").unwrap();
            slowest = slowest.max(started.elapsed());
            assert_eq!(small, "s");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(attacker);
        std::thread::sleep(Duration::from_millis(500));
        after.push(memory_kib(pid, "VmRSS:"));
    }
    let events = http_get(admin, "/v1/events").1;
    eprintln!(
        "RSS at start {start} KiB, after each attack {after:?}; slowest bystander GET {slowest:?}"
    );
    assert!(
        !events.contains("\"primary-lost\"") && !events.contains("\"promoted\""),
        "the busy primary was taken for dead: {events}"
    );
    assert!(
        slowest < Duration::from_millis(250),
        "a bystander's GET took {slowest:?}"
    );
    let last = *after.last().unwrap();
    assert!(
        last < start + 64 * 1024,
        "Rampart kept what it held for the attackers: {start} KiB at start, {after:?} after"
    );
}

/// `[limits]` change on SIGHUP without a restart: a client owed more than
/// a lowered hard cap is cut at once, the total cap follows, and the new
/// request size limit applies to connections opened after the reload
/// (one opened before keeps the limits it was opened with).
#[test]
fn caps_change_on_sighup() {
    let cluster = Cluster::start(0);
    big_and_small(&cluster, 4 * 1024 * 1024);
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let write = |limits: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[limits]\n{limits}\n[shards.main]\nnodes = [\"{}\"]\n",
            cluster.addrs()[0]
        );
        std::fs::write(&file, text).unwrap();
    };
    write("client_output_hard_mb = 256\nclients_output_total_mb = 384");
    let rampart = run_rampart(env!("CARGO_BIN_EXE_rampart-test-cli"), &file, || {
        redis_cli(port, &["PING"]).is_ok_and(|out| out.trim() == "PONG")
    });
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let metric = |name: &str| {
        http_get(admin, "/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    let mib = 1024.0 * 1024.0;
    // Owed 40 MiB and reading none of it: Rampart reads its requests one
    // large reply at a time, and holds one (4 MiB), under the caps.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(10))
        .unwrap();
    wait_until("the replies held", Duration::from_secs(10), || {
        metric("rampart_clients_output_bytes").is_some_and(|b| b >= 4.0 * mib)
    });
    let mut before = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        metric("rampart_clients_output_cap_bytes"),
        Some(384.0 * mib)
    );

    write("client_output_hard_mb = 2\nclients_output_total_mb = 100\nmax_bulk_len = 1024");
    Command::new("kill")
        .args(["-HUP", &rampart.0.id().to_string()])
        .status()
        .unwrap();
    wait_until("the slow client cut", Duration::from_secs(10), || {
        http_get(admin, "/metrics")
            .1
            .contains("rampart_clients_evicted_total{reason=\"output-hard-limit\"} 1")
    });
    assert_eq!(
        metric("rampart_clients_output_cap_bytes"),
        Some(100.0 * mib)
    );
    let value = "x".repeat(2000);
    let refused = redis_cli(port, &["SET", "k", &value]).unwrap_or_default();
    assert!(refused.contains("invalid bulk length"), "{refused}");
    let _: () = before.set("k", &value).unwrap();
    let events = http_get(admin, "/v1/events").1;
    assert!(
        events.contains("applied now: limits.client_output_hard_mb, limits.clients_output_total_mb, limits.max_bulk_len"),
        "{events}"
    );
}
