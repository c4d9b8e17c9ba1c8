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
            "0",
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
