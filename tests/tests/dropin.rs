//! What real applications rely on: job queues whose workers come and go
//! while blocked, long scripts that must not look like a dead primary, and
//! node settings that only Rampart may change.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_tests::{wait_until, Cluster, Proxy, Setup};
use redis::Commands;

const SYNC_ONE: Setup = Setup {
    proxy: "",
    shard: "read_from = \"primary\"\n[shards.main.replication]\nquorum = \"one\"",
    sections: "",
    admin: "",
};

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{}\r\n", a.len(), a).as_bytes());
    }
    out
}

/// Every job a reply carries: BLPOP/BRPOP/BZPOPMIN answer `[key, job, ...]`,
/// BLMOVE the job itself.
fn jobs_in(value: &redis::Value) -> Vec<String> {
    use redis::Value as V;
    let text = |v: &V| match v {
        V::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    match value {
        V::Array(items) => items
            .get(1)
            .and_then(text)
            .into_iter()
            .filter(|t| t.starts_with("job-"))
            .collect(),
        other => text(other).into_iter().collect(),
    }
}

/// One consumer's attempt: a blocking pop on a fresh connection that the
/// consumer abandons after `patience` unless a job came. Leaving is a
/// half-close, so whatever Rampart still writes afterwards is read and
/// counted: the accounting below is exact, and a job is lost only if
/// Rampart dropped it.
fn consume_once(port: u16, command: &[&str], patience: Duration) -> (Vec<String>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(&encode(command)).expect("send");
    s.set_read_timeout(Some(patience)).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let mut left = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if redis::parse_redis_value(&data).is_ok() {
                    break;
                }
            }
            Err(_) => {
                // Leave while blocked, then read what still comes.
                left = true;
                let _ = s.shutdown(Shutdown::Write);
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.read_to_end(&mut data);
                break;
            }
        }
    }
    let jobs = match redis::parse_redis_value(&data) {
        Ok(value) => jobs_in(&value),
        Err(_) => Vec::new(),
    };
    (jobs, left)
}

#[test]
fn a_job_queue_loses_no_job_when_workers_leave_while_blocked() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let port = proxy.port();
    let consumed: Arc<Mutex<Vec<String>>> = Arc::default();
    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let departures = Arc::new(AtomicU64::new(0));
    const JOBS: u64 = 600;

    let mut workers = Vec::new();
    for w in 0..6u64 {
        let consumed = consumed.clone();
        let done = done.clone();
        let departures = departures.clone();
        workers.push(std::thread::spawn(move || {
            let mut i = w;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let command: &[&str] = match i % 4 {
                    0 => &["BLPOP", "jobs", "0"],
                    1 => &["BRPOP", "jobs", "0"],
                    2 => &["BLMOVE", "jobs", "processing", "RIGHT", "LEFT", "0"],
                    _ => &["BZPOPMIN", "zjobs", "0"],
                };
                // Mostly impatient workers, so many leave while blocked.
                let patience = Duration::from_millis(1 + (i * 7 + w * 13) % 25);
                let (jobs, left) = consume_once(port, command, patience);
                if left {
                    departures.fetch_add(1, Ordering::Relaxed);
                }
                // A moved job is counted where it lies: in `processing`.
                if command[0] != "BLMOVE" {
                    consumed.lock().unwrap().extend(jobs);
                }
            }
        }));
    }
    let producer = {
        let produced = produced.clone();
        let mut c = proxy.conn();
        std::thread::spawn(move || {
            for n in 0..JOBS {
                let job = format!("job-{n}");
                if n % 3 == 0 {
                    let _: i64 = c.zadd("zjobs", &job, n as f64).unwrap();
                } else {
                    let _: i64 = c.lpush("jobs", &job).unwrap();
                }
                produced.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    producer.join().unwrap();
    // Let the workers drain what is left, then stop them.
    let mut c = proxy.conn();
    wait_until("queues drained", Duration::from_secs(30), || {
        c.llen::<_, i64>("jobs").unwrap() == 0 && c.zcard::<_, i64>("zjobs").unwrap() == 0
    });
    done.store(true, Ordering::Relaxed);
    // Wake workers still blocked so they can see `done`.
    for _ in 0..12 {
        let _: i64 = c.lpush("jobs", "wake").unwrap();
        let _: i64 = c.zadd("zjobs", "wake", 0).unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }

    let consumed = consumed.lock().unwrap().clone();
    let processing: Vec<String> = c.lrange("processing", 0, -1).unwrap();
    let still: Vec<String> = c.lrange("jobs", 0, -1).unwrap();
    let still_z: Vec<String> = c.zrange("zjobs", 0, -1).unwrap();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for job in consumed
        .iter()
        .chain(&processing)
        .chain(&still)
        .chain(&still_z)
    {
        if job.starts_with("job-") {
            *seen.entry(job.clone()).or_default() += 1;
        }
    }
    let lost: Vec<String> = (0..JOBS)
        .map(|n| format!("job-{n}"))
        .filter(|j| !seen.contains_key(j))
        .collect();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(j, _)| j)
        .collect();
    let left = departures.load(Ordering::Relaxed);
    eprintln!(
        "{JOBS} jobs, {left} workers left while blocked, {} consumed, {} moved to processing",
        consumed.len(),
        processing.len()
    );
    assert!(
        left > 50,
        "the test must make workers leave while blocked ({left})"
    );
    assert!(lost.is_empty(), "lost jobs: {lost:?}");
    assert!(twice.is_empty(), "jobs delivered twice: {twice:?}");

    // No node keeps a blocked connection for a client that is gone.
    wait_until("no blocked clients left", Duration::from_secs(5), || {
        cluster
            .primary()
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("0")
    });
}

#[test]
fn a_client_killed_while_blocked_leaves_nothing_blocked_on_the_node() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    for command in [
        &["BLPOP", "q", "0"][..],
        &["BZPOPMAX", "z", "0"],
        &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        &["WAIT", "5", "0"],
    ] {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(&encode(command)).unwrap();
        wait_until("the command blocks", Duration::from_secs(5), || {
            cluster
                .primary()
                .info_field("clients", "blocked_clients")
                .as_deref()
                == Some("1")
        });
        drop(s); // the client dies
        wait_until("the node unblocked", Duration::from_secs(5), || {
            cluster
                .primary()
                .info_field("clients", "blocked_clients")
                .as_deref()
                == Some("0")
        });
    }
    // The next element pushed is there for the next consumer.
    let mut c = proxy.conn();
    let _: i64 = c.lpush("q", "job").unwrap();
    let _: i64 = c.zadd("z", "m", 1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.lrange::<_, Vec<String>>("q", 0, -1).unwrap(), ["job"]);
    assert_eq!(c.zcard::<_, i64>("z").unwrap(), 1);
    let metrics = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics").1;
    assert!(
        metrics.contains("rampart_blocked_abandoned_total 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("blocked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A script that keeps the primary busy for three times the detector's
/// limit is not a failure; `SCRIPT KILL` through Rampart stops it.
#[test]
fn a_long_script_is_not_a_dead_primary_and_script_kill_reaches_it() {
    let cluster = Cluster::start(1);
    for node in &cluster.nodes {
        node.cli(&["CONFIG", "SET", "busy-reply-threshold", "100"]);
    }
    let setup = Setup {
        sections: "[probe]\ninterval_ms = 50\ndown_after_ms = 500\nbusy_kill_after_ms = 0",
        ..SYNC_ONE
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    let epoch = proxy.shard()["epoch"].as_u64().unwrap();
    // A read-only script that ends by itself after ~1.5 s (3x down_after).
    let started = Instant::now();
    let script = "local t = redis.call('TIME'); local start = t[1] * 1000 + t[2] / 1000; \
                  while true do local n = redis.call('TIME'); \
                  if n[1] * 1000 + n[2] / 1000 - start > 1500 then break end end return 1";
    let mut c = proxy.conn();
    let ran: i64 = redis::cmd("EVAL").arg(script).arg(0).query(&mut c).unwrap();
    assert_eq!(ran, 1);
    assert!(started.elapsed() >= Duration::from_millis(1400));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        proxy.shard()["epoch"].as_u64().unwrap(),
        epoch,
        "no failover"
    );
    let kinds = proxy.event_kinds();
    assert!(!kinds.iter().any(|k| k == "primary-down"), "{kinds:?}");

    // An endless read-only script, killed through Rampart by another client.
    let endless = "while true do end";
    let port = proxy.port();
    let runner = std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("EVAL")
            .arg(endless)
            .arg(0)
            .query::<redis::Value>(&mut c)
    });
    let mut other = proxy.conn();
    wait_until("the script runs", Duration::from_secs(5), || {
        redis::cmd("SCRIPT")
            .arg("KILL")
            .query::<String>(&mut other)
            .is_ok()
    });
    let result = runner.join().unwrap();
    let error = result.expect_err("the killed script fails");
    assert!(error.to_string().contains("killed"), "{error}");
    // The shard is fine and serves writes.
    let _: () = other.set("after-kill", "1").unwrap();
    assert_eq!(
        proxy.shard()["epoch"].as_u64().unwrap(),
        epoch,
        "no failover"
    );
}

/// An endless script that wrote cannot be killed: Rampart reports it,
/// and (as Sentinel does) fails the primary over.
#[test]
fn an_unkillable_script_is_reported_and_failed_over() {
    let cluster = Cluster::start(2);
    for node in &cluster.nodes {
        node.cli(&["CONFIG", "SET", "busy-reply-threshold", "100"]);
    }
    let setup = Setup {
        sections: "[probe]\ninterval_ms = 50\ndown_after_ms = 500\nbusy_kill_after_ms = 300",
        ..SYNC_ONE
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    let epoch = proxy.shard()["epoch"].as_u64().unwrap();
    let port = proxy.port();
    std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let _ = redis::cmd("EVAL")
            .arg("redis.call('SET', 'w', 1) while true do end")
            .arg(0)
            .query::<redis::Value>(&mut c);
    });
    wait_until(
        "the unkillable script is reported",
        Duration::from_secs(10),
        || proxy.event_kinds().iter().any(|k| k == "script-unkillable"),
    );
    wait_until("a replica is promoted", Duration::from_secs(10), || {
        proxy.shard()["epoch"].as_u64().unwrap() > epoch
    });
    let mut c = proxy.conn();
    let _: () = c.set("after-failover", "1").unwrap();
    // The busy node cannot be stopped politely; end it for the next test.
    cluster.nodes[0].signal("KILL");
}

#[test]
fn settings_rampart_owns_are_refused_and_repaired() {
    let cluster = Cluster::start(1);
    let setup = Setup {
        shard: "[shards.main.replication]\nquorum = \"one\"\nmanage_replication = true",
        ..Setup::default()
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    let mut c = proxy.conn();
    for args in [
        &["CONFIG", "SET", "requirepass", "x"][..],
        &[
            "CONFIG",
            "SET",
            "maxmemory",
            "0",
            "min-replicas-to-write",
            "5",
        ],
        &["CONFIG", "SET", "masterauth", "x"],
        &["CONFIG", "SET", "replica-read-only", "no"],
        &["CLIENT", "PAUSE", "4000", "ALL"],
        &["DEBUG", "SLEEP", "2"],
        &["ACL", "SETUSER", "default", "off"],
        &["SHUTDOWN", "NOSAVE"],
        &["REPLICAOF", "NO", "ONE"],
    ] {
        let error = redis::cmd(args[0])
            .arg(&args[1..])
            .query::<redis::Value>(&mut c)
            .expect_err("refused");
        let text = error.to_string().to_lowercase();
        assert!(text.contains("rampart"), "{args:?}: {error}");
    }
    // Nothing reached the node.
    assert_eq!(
        cluster.primary().cli(&["CONFIG", "GET", "requirepass"]),
        "requirepass\n\n"
    );
    let _: () = c.set("still", "works").unwrap();
    // Settings that are the application's own still pass.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-lru"])
        .query(&mut c)
        .unwrap();

    // Inside MULTI a refused command dooms the transaction, as on Redis.
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let _: String = redis::cmd("SET").arg(&["tx", "1"]).query(&mut c).unwrap();
    let shutdown = redis::cmd("SHUTDOWN")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(
        shutdown
            .to_string()
            .contains("not allowed inside a transaction"),
        "{shutdown}"
    );
    let exec = redis::cmd("EXEC")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert_eq!(exec.code(), Some("EXECABORT"), "{exec}");
    assert_eq!(c.get::<_, Option<String>>("tx").unwrap(), None);

    // min-replicas-to-write changed behind Rampart's back is put back.
    wait_until("the guard is set", Duration::from_secs(5), || {
        cluster
            .primary()
            .cli(&["CONFIG", "GET", "min-replicas-to-write"])
            == "min-replicas-to-write\n1\n"
    });
    cluster
        .primary()
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    wait_until("the guard is repaired", Duration::from_secs(5), || {
        cluster
            .primary()
            .cli(&["CONFIG", "GET", "min-replicas-to-write"])
            == "min-replicas-to-write\n1\n"
    });
    assert!(proxy.event_kinds().iter().any(|k| k == "guard-repaired"));
    // Setting a managed parameter to the value it has changes nothing, and
    // passes (clients that save and restore their configuration do that).
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "min-replicas-to-write", "1", "maxmemory", "0"])
        .query(&mut c)
        .unwrap();
    assert!(redis::cmd("CONFIG")
        .arg(&["SET", "min-replicas-to-write", "0"])
        .query::<()>(&mut c)
        .is_err());
}

#[test]
fn deny_commands_are_configurable() {
    let cluster = Cluster::start(0);
    let setup = Setup {
        proxy: "deny_commands = [\"FLUSHALL\", \"CONFIG RESETSTAT\"]",
        ..Setup::default()
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    let mut c = proxy.conn();
    assert!(redis::cmd("FLUSHALL").query::<String>(&mut c).is_err());
    assert!(redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<String>(&mut c)
        .is_err());
    // CLIENT PAUSE is no longer in the list.
    let _: String = redis::cmd("CLIENT")
        .arg(&["PAUSE", "10", "WRITE"])
        .query(&mut c)
        .unwrap();
}

/// A raw connection that reads one reply at a time.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Waits for the connection to be closed by Rampart, skipping whatever
    /// it was sent before (messages, MONITOR lines).
    fn expect_closed(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("the connection stayed open: {e}"),
            }
        }
    }

    fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, commands: &[&[&str]]) {
        let mut out = Vec::new();
        for args in commands {
            out.extend(encode(args));
        }
        self.stream.write_all(&out).unwrap();
    }

    fn reply(&mut self) -> redis::Value {
        loop {
            // RESP2 first (its null array is no RESP3), then RESP3.
            let used = match redis_protocol::resp2::decode::decode(&self.buf) {
                Ok(Some((_, used))) => Some(used),
                _ => redis_protocol::resp3::decode::complete::decode(&self.buf)
                    .ok()
                    .flatten()
                    .map(|(_, used)| used),
            };
            if let Some(used) = used {
                let value = redis::parse_redis_value(&self.buf[..used]).expect("RESP");
                self.buf.drain(..used);
                return value;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("a reply");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn client_commands_are_about_rampart_clients() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut alice = proxy.conn();
    let _: () = redis::cmd("CLIENT")
        .arg(&["SETNAME", "alice"])
        .query(&mut alice)
        .unwrap();
    let alice_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut alice).unwrap();
    let _: Option<String> = alice.get("k").unwrap();

    let mut bob = proxy.conn();
    let bob_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut bob).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut bob).unwrap();
    let alice_line = list
        .lines()
        .find(|l| l.starts_with(&format!("id={alice_id} ")))
        .unwrap_or_else(|| panic!("alice in CLIENT LIST:\n{list}"));
    assert!(alice_line.contains(" name=alice "), "{alice_line}");
    assert!(alice_line.contains(" cmd=get "), "{alice_line}");
    assert!(alice_line.contains(" user=default "), "{alice_line}");
    let bob_line = list
        .lines()
        .find(|l| l.starts_with(&format!("id={bob_id} ")))
        .unwrap();
    assert!(bob_line.contains(" cmd=client|list "), "{bob_line}");
    assert!(bob_line.contains(" flags=N "), "{bob_line}");
    // Only Rampart's clients, none of its connections to the nodes.
    assert_eq!(list.lines().count(), 2, "{list}");
    let only: String = redis::cmd("CLIENT")
        .arg(&["LIST", "ID", &alice_id.to_string()])
        .query(&mut bob)
        .unwrap();
    assert_eq!(only.lines().count(), 1);
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut alice).unwrap();
    assert!(info.starts_with(&format!("id={alice_id} ")), "{info}");
    assert!(info.contains(" cmd=client|info "), "{info}");

    // Errors as Redis words them.
    let e = redis::cmd("CLIENT")
        .arg(&["KILL", "127.0.0.1:1"])
        .query::<String>(&mut bob)
        .unwrap_err();
    assert!(e.to_string().contains("No such client"), "{e}");
    let e = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "nosuch"])
        .query::<i64>(&mut bob)
        .unwrap_err();
    assert!(
        e.to_string().contains("Unknown client type 'nosuch'"),
        "{e}"
    );

    // KILL by id closes that client's connection, not Rampart's links.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &alice_id.to_string()])
        .query(&mut bob)
        .unwrap();
    assert_eq!(killed, 1);
    assert!(alice.get::<_, Option<String>>("k").is_err());
    let _: () = bob.set("k", "still served").unwrap();
    // SKIPME: by default a client does not kill itself.
    let me: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &bob_id.to_string()])
        .query(&mut bob)
        .unwrap();
    assert_eq!(me, 0);
}

/// A subscriber or a MONITOR killed by `CLIENT KILL` is disconnected, as
/// Redis disconnects it: it receives nothing more and `PUBLISH` no longer
/// counts it.
#[test]
fn client_kill_disconnects_subscribers_and_monitors() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut admin = proxy.conn();
    let mut subscriber = Raw::connect(proxy.addr);
    subscriber.send(&[&["SUBSCRIBE", "news"]]);
    let _ = subscriber.reply();
    let mut monitor = Raw::connect(proxy.addr);
    monitor.send(&[&["MONITOR"]]);
    assert_eq!(monitor.reply(), redis::Value::Okay);
    let heard: i64 = admin.publish("news", "one").unwrap();
    assert_eq!(heard, 1);

    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    subscriber.expect_closed();
    let heard: i64 = admin.publish("news", "two").unwrap();
    assert_eq!(heard, 0, "the killed subscriber is still subscribed");

    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    let monitor_id = list
        .lines()
        .find(|l| l.contains(" cmd=monitor "))
        .and_then(|l| l.strip_prefix("id="))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no monitor in CLIENT LIST:\n{list}"))
        .to_string();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &monitor_id])
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    monitor.expect_closed();
}

/// A subscribed or tracking client is piped to a node connection of its
/// own, but it is still the client Rampart knows: `CLIENT ID`, `GETNAME`
/// and `LIST` answer about it, in order with the node's replies, and in
/// RESP2 subscribed mode they get Redis's refusal.
#[test]
fn a_piped_client_keeps_its_identity() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut c = Raw::connect(proxy.addr);
    c.send(&[&["CLIENT", "SETNAME", "niceName"], &["CLIENT", "ID"]]);
    assert_eq!(c.reply(), redis::Value::Okay);
    let redis::Value::Int(id) = c.reply() else {
        panic!("CLIENT ID");
    };
    // Pipelined behind the SUBSCRIBE: refused as Redis refuses it.
    c.send(&[
        &["SUBSCRIBE", "l"],
        &["CLIENT", "ID"],
        &["UNSUBSCRIBE", "l"],
    ]);
    assert!(format!("{:?}", c.reply()).contains("subscribe"));
    let refused = format!("{:?}", c.reply());
    assert!(
        refused.contains("Can't execute 'client|id': only (P|S)SUBSCRIBE"),
        "{refused}"
    );
    assert!(format!("{:?}", c.reply()).contains("unsubscribe"));
    c.send(&[
        &["CLIENT", "GETNAME"],
        &["CLIENT", "ID"],
        &["CLIENT", "TRACKING", "ON"],
        &["CLIENT", "ID"],
        &["CLIENT", "LIST"],
    ]);
    assert_eq!(c.reply(), redis::Value::BulkString(b"niceName".to_vec()));
    assert_eq!(c.reply(), redis::Value::Int(id));
    assert_eq!(c.reply(), redis::Value::Okay);
    assert_eq!(c.reply(), redis::Value::Int(id));
    let list = match c.reply() {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("CLIENT LIST: {other:?}"),
    };
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("id={id} ")) && l.contains(" name=niceName ")),
        "{list}"
    );
    assert!(!list.contains("cmd=replconf"), "the node's clients: {list}");
}

/// `HELLO ... AUTH` on a piped connection is checked by Rampart against
/// its own password, as on any connection: the node, which has another
/// password, never sees the client's credentials.
#[test]
fn hello_auth_on_a_piped_connection_is_rampart_s() {
    let cluster = Cluster::start(0);
    cluster.nodes[0].cli(&["CONFIG", "SET", "requirepass", "backend-secret"]);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "password = \"front-secret\"",
            sections: "[backend]\npassword = \"backend-secret\"",
            ..Setup::default()
        },
    );
    let mut c = Raw::connect(proxy.addr);
    c.send(&[&["AUTH", "front-secret"], &["CLIENT", "ID"]]);
    assert_eq!(c.reply(), redis::Value::Okay);
    let redis::Value::Int(id) = c.reply() else {
        panic!("CLIENT ID");
    };
    c.send(&[&["CLIENT", "TRACKING", "ON"]]);
    assert_eq!(c.reply(), redis::Value::Okay);
    c.send(&[&[
        "HELLO",
        "2",
        "AUTH",
        "default",
        "front-secret",
        "SETNAME",
        "piped",
    ]]);
    let hello = c.reply();
    assert_eq!(
        field(&hello, "id"),
        Some(redis::Value::Int(id)),
        "{hello:?}"
    );
    c.send(&[
        &["CLIENT", "GETNAME"],
        &["HELLO", "2", "AUTH", "default", "wrong"],
    ]);
    assert_eq!(c.reply(), redis::Value::BulkString(b"piped".to_vec()));
    assert!(format!("{:?}", c.reply()).contains("WRONGPASS"));
}

#[test]
fn client_reply_and_unblock_behave_as_on_redis() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut s = Raw::connect(proxy.addr);
    s.send(&[
        &["CLIENT", "REPLY", "OFF"],
        &["SET", "a", "1"],
        &["CLIENT", "REPLY", "ON"],
        &["CLIENT", "REPLY", "SKIP"],
        &["SET", "b", "2"],
        &["GET", "b"],
    ]);
    assert_eq!(s.reply(), redis::Value::Okay);
    assert_eq!(s.reply(), redis::Value::BulkString(b"2".to_vec()));
    let mut c = proxy.conn();
    assert_eq!(c.get::<_, String>("a").unwrap(), "1");

    // CLIENT UNBLOCK, by another client, in both modes.
    let mut blocked = Raw::connect(proxy.addr);
    blocked.send(&[&["CLIENT", "ID"]]);
    let redis::Value::Int(id) = blocked.reply() else {
        panic!("CLIENT ID");
    };
    for (mode, expected) in [("TIMEOUT", None), ("ERROR", Some("UNBLOCKED"))] {
        blocked.send(&[&["BLPOP", "empty", "0"]]);
        wait_until("blocked", Duration::from_secs(5), || {
            cluster
                .primary()
                .info_field("clients", "blocked_clients")
                .as_deref()
                == Some("1")
        });
        let n: i64 = redis::cmd("CLIENT")
            .arg(&["UNBLOCK", &id.to_string(), mode])
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 1);
        match (blocked.reply(), expected) {
            (redis::Value::Nil, None) => {}
            (redis::Value::ServerError(e), Some(code)) => assert_eq!(e.code(), code),
            (other, _) => panic!("{mode}: {other:?}"),
        }
    }
    let n: i64 = redis::cmd("CLIENT")
        .arg(&["UNBLOCK", &id.to_string()])
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 0, "not blocked any more");
}

#[test]
fn tracking_redirects_to_another_rampart_client() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut sub = Raw::connect(proxy.addr);
    sub.send(&[&["CLIENT", "ID"]]);
    let redis::Value::Int(sub_id) = sub.reply() else {
        panic!("CLIENT ID");
    };
    sub.send(&[&["SUBSCRIBE", "__redis__:invalidate"]]);
    let _ = sub.reply();
    let mut c = proxy.conn();
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "REDIRECT", &sub_id.to_string()])
        .query(&mut c)
        .unwrap();
    let _: Option<String> = c.get("tracked").unwrap();
    let mut other = proxy.conn();
    let _: () = other.set("tracked", "changed").unwrap();
    let message = format!("{:?}", sub.reply());
    assert!(
        message.contains("invalidate") && message.contains("tracked"),
        "{message}"
    );
    // The target is named by its Rampart id, as it was given.
    let redirect: i64 = redis::cmd("CLIENT").arg("GETREDIR").query(&mut c).unwrap();
    assert_eq!(redirect, sub_id);
    let info: redis::Value = redis::cmd("CLIENT")
        .arg("TRACKINGINFO")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        field(&info, "redirect"),
        Some(redis::Value::Int(sub_id)),
        "{info:?}"
    );
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "off"])
        .query(&mut c)
        .unwrap();
    let redirect: i64 = redis::cmd("CLIENT").arg("GETREDIR").query(&mut c).unwrap();
    assert_eq!(redirect, -1);
    // HELLO on the piped connection: Rampart's answer, about this client.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let hello: redis::Value = redis::cmd("HELLO").arg("2").query(&mut c).unwrap();
    assert_eq!(
        field(&hello, "id"),
        Some(redis::Value::Int(id)),
        "{hello:?}"
    );
    assert!(field(&hello, "proxy").is_some(), "{hello:?}");
}

/// As on Redis, any connected client may be named as the redirect target,
/// subscribed yet or not: invalidations reach it once it subscribes to
/// `__redis__:invalidate`. A client that is not connected is refused.
#[test]
fn tracking_may_redirect_to_a_client_that_subscribes_later() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let mut target = Raw::connect(proxy.addr);
    target.send(&[&["CLIENT", "ID"]]);
    let redis::Value::Int(target_id) = target.reply() else {
        panic!("CLIENT ID");
    };
    let mut c = proxy.conn();
    let err = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "REDIRECT", "987654"])
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "REDIRECT", &target_id.to_string()])
        .query(&mut c)
        .unwrap();
    let redirect: i64 = redis::cmd("CLIENT").arg("GETREDIR").query(&mut c).unwrap();
    assert_eq!(redirect, target_id);
    // The target still works as any client, then subscribes.
    target.send(&[
        &["SET", "plain", "1"],
        &["SUBSCRIBE", "__redis__:invalidate"],
    ]);
    assert_eq!(target.reply(), redis::Value::Okay);
    let _ = target.reply();
    let _: Option<String> = c.get("tracked").unwrap();
    let mut other = proxy.conn();
    let _: () = other.set("tracked", "changed").unwrap();
    let message = format!("{:?}", target.reply());
    assert!(
        message.contains("invalidate") && message.contains("tracked"),
        "{message}"
    );

    // A RESP3 target gets the pushes without subscribing, between its
    // replies, even with its replies turned off.
    let mut resp3 = Raw::connect(proxy.addr);
    resp3.send(&[&["HELLO", "3"], &["CLIENT", "ID"]]);
    let _ = resp3.reply();
    let redis::Value::Int(resp3_id) = resp3.reply() else {
        panic!("CLIENT ID");
    };
    let _: () = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "REDIRECT", &resp3_id.to_string()])
        .query(&mut c)
        .unwrap();
    let _: Option<String> = c.get("tracked").unwrap();
    resp3.send(&[&["CLIENT", "REPLY", "OFF"]]);
    let _: () = other.set("tracked", "again").unwrap();
    let message = format!("{:?}", resp3.reply()).to_lowercase();
    assert!(
        message.contains("invalidate") && message.contains("tracked"),
        "{message}"
    );
    resp3.send(&[&["CLIENT", "REPLY", "ON"], &["PING"]]);
    assert_eq!(resp3.reply(), redis::Value::Okay);
    assert_eq!(resp3.reply(), redis::Value::SimpleString("PONG".into()));
}

/// The value after `name` in a reply of name/value pairs (an array in
/// RESP2, a map in RESP3).
fn field(reply: &redis::Value, name: &str) -> Option<redis::Value> {
    let pairs: Vec<(redis::Value, redis::Value)> = match reply {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
            .collect(),
        redis::Value::Map(pairs) => pairs.clone(),
        _ => return None,
    };
    pairs.into_iter().find_map(|(k, v)| match k {
        redis::Value::BulkString(k) if k == name.as_bytes() => Some(v),
        redis::Value::SimpleString(k) if k == name => Some(v),
        _ => None,
    })
}

#[test]
fn acl_users_log_in_and_their_permissions_apply() {
    let cluster = Cluster::start(1);
    for node in &cluster.nodes {
        node.cli(&[
            "ACL", "SETUSER", "alice", "on", ">secret", "~app:*", "+@all",
        ]);
    }
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut c = proxy.conn();
    let wrong = redis::cmd("AUTH")
        .arg(&["alice", "nope"])
        .query::<String>(&mut c)
        .unwrap_err();
    assert_eq!(wrong.code(), Some("WRONGPASS"), "{wrong}");
    let _: () = redis::cmd("AUTH")
        .arg(&["alice", "secret"])
        .query(&mut c)
        .unwrap();
    let _: () = c.set("app:x", "1").unwrap();
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let _: String = redis::cmd("SET")
        .arg(&["app:y", "2"])
        .query(&mut c)
        .unwrap();
    let _: Vec<String> = redis::cmd("EXEC").query(&mut c).unwrap();
    let denied = c.set::<_, _, ()>("other:x", "1").unwrap_err();
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut c).unwrap();
    assert_eq!(who, "alice");
    let list: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
    assert!(list.contains(" user=alice "), "{list}");
    // The write was acknowledged by a replica as usual.
    assert_eq!(
        cluster.nodes[1].cli(&["GET", "app:x"]).trim(),
        "1",
        "replicated"
    );

    // HELLO ... AUTH, on another connection; other clients are unaffected.
    let mut s = Raw::connect(proxy.addr);
    s.send(&[
        &["HELLO", "2", "AUTH", "alice", "secret"],
        &["GET", "other:y"],
    ]);
    let _hello = s.reply();
    match s.reply() {
        redis::Value::ServerError(e) => assert_eq!(e.code(), "NOPERM"),
        other => panic!("{other:?}"),
    }
    let mut plain = proxy.conn();
    let _: () = plain.set("other:x", "1").unwrap();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut plain).unwrap();
    assert_eq!(who, "default");
    // RESET goes back to Rampart's own user.
    let _: String = redis::cmd("RESET").query(&mut c).unwrap();
    let _: () = c.set("other:x", "2").unwrap();

    // A user defined through Rampart exists on every node (Redis does not
    // replicate ACLs), so it survives a failover.
    let _: String = redis::cmd("ACL")
        .arg(&["SETUSER", "bob", "on", ">pw", "~*", "+@all"])
        .query(&mut c)
        .unwrap();
    wait_until("bob on the replica", Duration::from_secs(5), || {
        cluster.nodes[1].cli(&["ACL", "LIST"]).contains("user bob ")
    });
    // A user without the right to change users changes nothing, on any node.
    let _: String = redis::cmd("ACL")
        .arg(&["SETUSER", "carol", "on", ">pw", "~*", "+@all", "-@admin"])
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("AUTH")
        .arg(&["carol", "pw"])
        .query(&mut c)
        .unwrap();
    let denied = redis::cmd("ACL")
        .arg(&["SETUSER", "mallory", "on", ">x", "+@all"])
        .query::<String>(&mut c)
        .unwrap_err();
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");
    std::thread::sleep(Duration::from_millis(200));
    for node in &cluster.nodes {
        assert!(!node.cli(&["ACL", "LIST"]).contains("mallory"));
    }
}

/// A subscriber whose connection breaks with its primary, and that
/// re-subscribes at once (as redis-py and ioredis do), gets messages again.
#[test]
fn a_subscriber_that_resubscribes_during_a_failover_gets_messages() {
    let mut cluster = Cluster::start(2);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut sub = Raw::connect(proxy.addr);
    sub.send(&[&["SUBSCRIBE", "news"]]);
    let _ = sub.reply();
    cluster.nodes[0].kill();
    // The pipe to the dead primary breaks: the connection closes.
    let mut chunk = [0u8; 64];
    assert!(matches!(sub.stream.read(&mut chunk), Ok(0) | Err(_)));
    // Reconnect and re-subscribe right away, before the failover is done.
    let mut sub = Raw::connect(proxy.addr);
    sub.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sub.send(&[&["SUBSCRIBE", "news"]]);
    let confirmed = format!("{:?}", sub.reply());
    assert!(confirmed.contains("subscribe"), "{confirmed}");
    let mut c = proxy.conn();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&["news", "after-failover"])
        .query(&mut c)
        .unwrap();
    assert_eq!(receivers, 1);
    let message = format!("{:?}", sub.reply());
    assert!(message.contains("after-failover"), "{message}");
}

/// MONITOR shows the clients' commands, not Rampart's probes or the WAITs
/// it adds after synchronous writes.
#[test]
fn monitor_shows_the_clients_commands_only() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut monitor = Raw::connect(proxy.addr);
    monitor.send(&[&["MONITOR"]]);
    assert_eq!(monitor.reply(), redis::Value::Okay);
    let mut c = proxy.conn();
    let _: () = c.set("watched", "1").unwrap();
    let _: Option<String> = c.get("watched").unwrap();
    // A pop is confirmed by a marker and a WAIT of Rampart's own.
    let _: i64 = c.lpush("jobs", "j").unwrap();
    let _: (String, String) = redis::cmd("BRPOP")
        .arg(&["jobs", "1"])
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("WAIT").arg(&["1", "100"]).query(&mut c).unwrap();
    // Several probe rounds pass meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let _: () = c.set("last", "1").unwrap();
    let mut lines = Vec::new();
    loop {
        let line = format!("{:?}", monitor.reply());
        let done = line.contains("\\\"last\\\"");
        lines.push(line);
        if done {
            break;
        }
    }
    let all = lines.join("\n");
    assert!(all.contains("\\\"watched\\\" \\\"1\\\""), "{all}");
    assert!(all.to_uppercase().contains("\\\"GET\\\""), "{all}");
    // The client's own WAIT is shown; Rampart's are not.
    assert_eq!(all.matches("\\\"WAIT\\\"").count(), 1, "{all}");
    for internal in ["INFO", "__rampart__", "CONFIG", "HELLO"] {
        assert!(!all.contains(internal), "{internal} in:\n{all}");
    }
}

/// SLOWLOG GET lists the clients' commands, not Rampart's probes or the
/// replicas' acknowledgements.
#[test]
fn slowlog_lists_the_clients_commands() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let mut c = proxy.conn();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "slowlog-log-slower-than", "0"])
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    let _: () = c.set("slow", "1").unwrap();
    // Probes and replica acks are logged on the node meanwhile.
    std::thread::sleep(Duration::from_millis(1200));
    let on_node = cluster.primary().cli(&["SLOWLOG", "GET", "-1"]);
    assert!(
        on_node.contains("INFO") || on_node.contains("REPLCONF"),
        "{on_node}"
    );
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg(&["GET", "100"])
        .query(&mut c)
        .unwrap();
    let text = format!("{entries:?}");
    assert!(text.contains("\"SET\"") && text.contains("slow"), "{text}");
    for internal in ["INFO", "REPLCONF", "WAIT", "PUBLISH"] {
        assert!(!text.contains(internal), "{internal} in {text}");
    }
    // Redis's own errors for a bad count, and too many arguments first.
    for (args, error) in [
        (
            &["GET", "-5"][..],
            "ERR count should be greater than or equal to -1",
        ),
        (
            &["GET", "x"][..],
            "ERR count should be greater than or equal to -1",
        ),
        (
            &["GET", "x", "y"][..],
            "ERR unknown subcommand or wrong number of arguments for 'GET'. Try SLOWLOG HELP.",
        ),
    ] {
        let got = redis::cmd("SLOWLOG")
            .arg(args)
            .query::<redis::Value>(&mut c)
            .unwrap_err();
        let direct = cluster.primary().cli(&[&["SLOWLOG"][..], args].concat());
        assert_eq!(direct.trim(), error, "redis-server itself");
        assert!(got.to_string().contains(&error[4..]), "{args:?}: {got}");
    }
}

/// `CLIENT PAUSE <ms> WRITE` holds writes on the primary, longer than the
/// backend reply timeout, without failing anything or failing over;
/// `CLIENT UNPAUSE` from another client ends it at once. Pausing all
/// commands is refused.
#[test]
fn client_pause_write_holds_writes_without_harm() {
    let cluster = Cluster::start(1);
    let setup = Setup {
        sections:
            "[backend]\nreply_timeout_ms = 1000\n[probe]\ninterval_ms = 50\ndown_after_ms = 500",
        shard:
            "read_from = \"primary\"\n[shards.main.replication]\nquorum = \"one\"\ntimeout_ms = 500",
        ..Setup::default()
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    let epoch = proxy.shard()["epoch"].as_u64().unwrap();
    let mut admin = proxy.conn();
    let all = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1000"])
        .query::<()>(&mut admin)
        .unwrap_err();
    assert!(all.to_string().contains("WRITE"), "{all}");
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "30000", "WRITE"])
        .query(&mut admin)
        .unwrap();
    let port = proxy.port();
    let writer = std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let started = Instant::now();
        let result = c.set::<_, _, ()>("paused", "1");
        (result, started.elapsed())
    });
    // Paused for three times the reply timeout.
    std::thread::sleep(Duration::from_millis(3000));
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut admin)
        .unwrap();
    let (result, took) = writer.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        proxy.shard()["epoch"].as_u64().unwrap(),
        epoch,
        "no failover"
    );
    assert_eq!(admin.get::<_, String>("paused").unwrap(), "1");
}

/// No sequence of client commands leaves the shard without its healthy
/// primary, and none reaches Rampart's own connections.
#[test]
fn hostile_client_commands_leave_the_shard_serving() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), SYNC_ONE);
    let epoch = proxy.shard()["epoch"].as_u64().unwrap();
    let mut other = proxy.conn();
    let mut c = proxy.conn();
    for args in [
        &["CONFIG", "SET", "requirepass", "x"][..],
        &["CLIENT", "PAUSE", "4000", "ALL"],
        &["CLIENT", "PAUSE", "4000"],
        &["DEBUG", "SLEEP", "3"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["CLIENT", "KILL", "TYPE", "master"],
        &["CLIENT", "KILL", "TYPE", "replica"],
        &["CLIENT", "KILL", "USER", "default"],
        &["ACL", "SETUSER", "default", "resetpass", ">x"],
        &["CONFIG", "SET", "min-replicas-to-write", "3"],
        &["SCRIPT", "KILL"],
        &["FUNCTION", "KILL"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SHUTDOWN"],
    ] {
        let _ = redis::cmd(args[0])
            .arg(&args[1..])
            .query::<redis::Value>(&mut c);
    }
    // The killed client is gone; everyone else, new clients included, is
    // served by the same primary, and its replica still follows it.
    assert!(other.get::<_, Option<String>>("x").is_err());
    let mut fresh = proxy.conn();
    for i in 0..50 {
        let _: () = fresh.set(format!("after:{i}"), i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.shard()["epoch"].as_u64().unwrap(), epoch);
    assert_eq!(
        cluster.nodes[1]
            .info_field("replication", "master_link_status")
            .as_deref(),
        Some("up")
    );
    assert!(!proxy.event_kinds().iter().any(|k| k == "primary-down"));
}

/// Connection commands whose errors must be Redis's own: `HELLO ...
/// SETNAME` checks the name as `CLIENT SETNAME` does (and changes nothing
/// when it is refused); `CLIENT SETINFO`, which Redis 7.0 does not have and
/// clients send on every connection, takes 7.2's attributes and refuses
/// others.
#[test]
fn hello_setname_and_client_setinfo_are_checked_as_redis_checks_them() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let direct = redis::Client::open(format!("redis://{}/", cluster.primary().addr())).unwrap();
    let error = |client: &redis::Client, args: &[&str]| -> Option<String> {
        let mut conn = client.get_connection().unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut conn)
            .err()
            .map(|e| e.to_string())
    };
    for args in [
        &["HELLO", "2", "SETNAME", "bad name"][..],
        &["HELLO", "3", "SETNAME", "bad\nname"],
        &["CLIENT", "SETNAME", "bad name"],
    ] {
        let redis_says = error(&direct, args).expect("Redis refuses it");
        assert_eq!(error(&proxy.client(), args), Some(redis_says), "{args:?}");
    }
    // A refused HELLO does not name the connection.
    let mut conn = proxy.conn();
    assert!(redis::cmd("HELLO")
        .arg("3")
        .arg("SETNAME")
        .arg("bad name")
        .query::<redis::Value>(&mut conn)
        .is_err());
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut conn)
        .unwrap();
    assert_eq!(name, None);
    let setinfo = |args: &[&str]| error(&proxy.client(), args);
    assert_eq!(
        setinfo(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]),
        None
    );
    assert_eq!(setinfo(&["CLIENT", "SETINFO", "lib-ver", "5.2.1"]), None);
    assert!(setinfo(&["CLIENT", "SETINFO", "colour", "x"])
        .is_some_and(|e| e.contains("Unrecognized option 'colour'")));
    assert!(setinfo(&["CLIENT", "SETINFO", "lib-name", "my lib"])
        .is_some_and(|e| e.contains("cannot contain spaces")));
}

/// A client piped to a node connection of its own (tracking, subscribed,
/// MONITOR) is refused what every client is refused: SHUTDOWN, REPLICAOF
/// and `proxy.deny_commands` never reach the node, inside a transaction
/// either (which EXEC then aborts, as Redis aborts one after a refusal
/// while queueing).
#[test]
fn piped_clients_are_refused_what_every_client_is() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let text = |v: redis::Value| format!("{v:?}");
    let mut c = Raw::connect(proxy.addr);
    c.send(&[
        &["CLIENT", "TRACKING", "ON"],
        &["SHUTDOWN"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["DEBUG", "SLEEP", "0"],
        &["SET", "k", "v"],
        &["MULTI"],
        &["SET", "k", "w"],
        &["SHUTDOWN", "NOSAVE"],
        &["EXEC"],
        &["GET", "k"],
    ]);
    assert_eq!(c.reply(), redis::Value::Okay);
    let shutdown = text(c.reply());
    assert!(
        shutdown.contains("not allowed through Rampart"),
        "{shutdown}"
    );
    let replicaof = text(c.reply());
    assert!(
        replicaof.contains("replication is managed by Rampart"),
        "{replicaof}"
    );
    let debug = text(c.reply());
    assert!(
        debug.contains("DEBUG SLEEP is refused through Rampart"),
        "{debug}"
    );
    assert_eq!(c.reply(), redis::Value::Okay);
    assert_eq!(c.reply(), redis::Value::Okay);
    assert!(text(c.reply()).contains("QUEUED"));
    let in_multi = text(c.reply());
    assert!(
        in_multi.contains("Command not allowed inside a transaction"),
        "{in_multi}"
    );
    let exec = text(c.reply());
    assert!(exec.contains("EXECABORT"), "{exec}");
    assert_eq!(c.reply(), redis::Value::BulkString(b"v".to_vec()));

    let mut monitor = Raw::connect(proxy.addr);
    monitor.send(&[&["MONITOR"]]);
    assert_eq!(monitor.reply(), redis::Value::Okay);
    monitor.send(&[&["SHUTDOWN"]]);
    let shutdown = text(monitor.reply());
    assert!(
        shutdown.contains("not allowed through Rampart"),
        "{shutdown}"
    );
    assert_eq!(cluster.primary().cli(&["PING"]).trim(), "PONG");
    assert_eq!(
        cluster.primary().cli(&["ROLE"]).lines().next(),
        Some("master")
    );
}

/// A piped client's writes are synchronous like everyone's: a tracking
/// client's or a RESP3 subscriber's write (and a transaction) on a shard
/// with a quorum is answered `NOQUORUM` when no replica has it, never OK.
#[test]
fn a_piped_clients_writes_wait_for_the_quorum() {
    let cluster = Cluster::start(1);
    let setup = Setup {
        shard: "read_from = \"primary\"\n[shards.main.replication]\nquorum = \"one\"\ntimeout_ms = 500\non_shortfall = \"fail\"",
        ..Setup::default()
    };
    let proxy = Proxy::start(&cluster.addrs(), setup);
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let text = |v: redis::Value| format!("{v:?}");
    // The replica has caught up once a write is confirmed.
    wait_until("a write to be confirmed", Duration::from_secs(10), || {
        proxy.conn().set::<_, _, ()>("z", 1).is_ok()
    });
    let mut tracking = Raw::connect(proxy.addr);
    tracking.send(&[&["CLIENT", "TRACKING", "ON"], &["SET", "a", "1"]]);
    assert_eq!(tracking.reply(), redis::Value::Okay);
    assert_eq!(tracking.reply(), redis::Value::Okay, "with the replica up");
    let mut resp3 = Raw::connect(proxy.addr);
    resp3.send(&[&["HELLO", "3"], &["SUBSCRIBE", "news"]]);
    resp3.reply();
    assert!(text(resp3.reply()).to_lowercase().contains("subscribe"));

    cluster.nodes[1].signal("STOP");
    tracking.send(&[
        &["SET", "b", "1"],
        &["MULTI"],
        &["SET", "c", "1"],
        &["EXEC"],
        &["GET", "a"],
    ]);
    resp3.send(&[&["SET", "d", "1"]]);
    let write = text(tracking.reply());
    assert!(
        write.contains("NOQUORUM"),
        "a tracking client's write: {write}"
    );
    assert_eq!(tracking.reply(), redis::Value::Okay);
    assert!(text(tracking.reply()).contains("QUEUED"));
    let exec = text(tracking.reply());
    assert!(
        exec.contains("NOQUORUM"),
        "a tracking client's EXEC: {exec}"
    );
    assert_eq!(tracking.reply(), redis::Value::BulkString(b"1".to_vec()));
    let write = text(resp3.reply());
    assert!(
        write.contains("NOQUORUM"),
        "a RESP3 subscriber's write: {write}"
    );
    cluster.nodes[1].signal("CONT");
}
