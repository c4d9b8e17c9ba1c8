//! Reads from replicas that never show a client less than it has seen
//! (`read_consistency`), checked by many clients against real nodes while
//! a replica lags on purpose: `CLIENT PAUSE ... WRITE` on it, over and
//! over, stops it applying what its primary (or, in fan-out mode, Rampart)
//! sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_tests::{Cluster, Proxy, RedisNode, Setup};
use redis::Commands;

/// How long each checker runs (`RAMPART_CHECK_SECS`, default 20).
fn check_secs() -> u64 {
    std::env::var("RAMPART_CHECK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

const CLIENTS: usize = 10;

/// What the clients found.
#[derive(Debug, Default)]
struct Found {
    reads: u64,
    /// A client's read of its own key older than its acknowledged write.
    stale_own: u64,
    /// A read older than one the same client made of the same key before.
    backwards: u64,
    /// A read older than a write acknowledged to anyone before it began.
    stale_global: u64,
}

/// Pauses `node`'s writes for 700 ms of every second until `stop`.
fn lag(node: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://{node}/")).unwrap();
        let mut conn = client.get_connection().unwrap();
        while !stop.load(Ordering::Relaxed) {
            let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                .arg(&["PAUSE", "700", "WRITE"])
                .query(&mut conn);
            std::thread::sleep(Duration::from_millis(1000));
        }
        let _: redis::RedisResult<()> = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut conn);
    })
}

/// `CLIENTS` clients, each writing a counter to its own key and reading
/// it back, and reading another client's key, for `secs`.
fn run_checker(proxy: &Proxy, secs: u64) -> Found {
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let client = proxy.client();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                let mut found = Found::default();
                let mut seen: HashMap<usize, u64> = HashMap::new();
                let mut n = 0u64;
                let key = |i: usize| format!("check:{i}");
                while Instant::now() < deadline {
                    n += 1;
                    let _: () = conn.set(key(me), n).unwrap();
                    acked[me].store(n, Ordering::SeqCst);
                    let own: u64 = conn.get::<_, Option<u64>>(key(me)).unwrap().unwrap_or(0);
                    found.reads += 1;
                    found.stale_own += u64::from(own < n);
                    for other in [(me + 1) % CLIENTS, (me + 3) % CLIENTS] {
                        let before = acked[other].load(Ordering::SeqCst);
                        let value: u64 =
                            conn.get::<_, Option<u64>>(key(other)).unwrap().unwrap_or(0);
                        found.reads += 1;
                        found.stale_global += u64::from(value < before);
                        let last = seen.entry(other).or_insert(0);
                        found.backwards += u64::from(value < *last);
                        *last = (*last).max(value);
                    }
                }
                found
            })
        })
        .collect();
    let mut total = Found::default();
    for thread in threads {
        let f = thread.join().unwrap();
        total.reads += f.reads;
        total.stale_own += f.stale_own;
        total.backwards += f.backwards;
        total.stale_global += f.stale_global;
    }
    total
}

/// GETs of keys nobody writes by fresh clients: how many of them the
/// replicas served, of `reads`.
fn read_only_phase(proxy: &Proxy, nodes: &[&RedisNode], primary: &RedisNode) -> (u64, u64) {
    let before: u64 = nodes.iter().map(|n| n.calls("get")).sum();
    let before_primary = primary.calls("get");
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                for i in 0..200 {
                    let _: Option<u64> = conn.get(format!("check:{}", i % CLIENTS)).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let replicas: u64 = nodes.iter().map(|n| n.calls("get")).sum::<u64>() - before;
    let primary = primary.calls("get") - before_primary;
    (replicas, replicas + primary)
}

fn replicas_proxy(cluster: &Cluster, consistency: &str) -> Proxy {
    let shard = format!("read_from = \"replicas\"\nread_consistency = \"{consistency}\"\n");
    let shard: &'static str = Box::leak(shard.into_boxed_str());
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard,
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    proxy
}

#[test]
fn session_reads_from_lagging_replicas_never_show_a_client_less_than_it_saw() {
    let cluster = Cluster::start(2);
    let proxy = replicas_proxy(&cluster, "session");
    let stop = Arc::new(AtomicBool::new(false));
    let lagger = lag(cluster.nodes[1].addr(), stop.clone());
    let found = run_checker(&proxy, check_secs());
    stop.store(true, Ordering::Relaxed);
    lagger.join().unwrap();
    eprintln!("session: {found:?}; reads: {}", proxy.shard()["reads"]);
    assert!(
        found.reads > 1000,
        "too few reads to mean anything: {found:?}"
    );
    assert_eq!(
        found.stale_own, 0,
        "a client missed its own write: {found:?}"
    );
    assert_eq!(
        found.backwards, 0,
        "a client's reads went back in time: {found:?}"
    );
    let replicas = [&cluster.nodes[1], &cluster.nodes[2]];
    let (on_replicas, all) = read_only_phase(&proxy, &replicas, &cluster.nodes[0]);
    eprintln!("read-only phase: {on_replicas} of {all} GETs on replicas");
    let reads = &proxy.shard()["reads"];
    assert_eq!(reads["consistency"], "session", "{reads}");
    assert!(reads["replica"].as_u64().unwrap() >= on_replicas, "{reads}");
    assert!(
        reads["primary_not_caught_up"].as_u64().unwrap() > 0,
        "{reads}"
    );
    assert!(
        on_replicas * 100 >= all * 80,
        "clients that never wrote read from the primary: {on_replicas} of {all} on replicas"
    );
}

/// The same checker with `eventual` finds what `session` prevents: the
/// test above is not passing because nothing could go wrong.
#[test]
fn eventual_reads_from_a_lagging_replica_can_be_stale() {
    let cluster = Cluster::start(2);
    let proxy = replicas_proxy(&cluster, "eventual");
    let stop = Arc::new(AtomicBool::new(false));
    let lagger = lag(cluster.nodes[1].addr(), stop.clone());
    let found = run_checker(&proxy, 5);
    stop.store(true, Ordering::Relaxed);
    lagger.join().unwrap();
    eprintln!("eventual: {found:?}");
    assert!(
        found.stale_own > 0,
        "eventual reads found nothing stale: {found:?}"
    );
}

#[test]
fn global_reads_see_every_write_acknowledged_before_them() {
    let cluster = Cluster::start(2);
    let proxy = replicas_proxy(&cluster, "global");
    let stop = Arc::new(AtomicBool::new(false));
    let lagger = lag(cluster.nodes[1].addr(), stop.clone());
    let found = run_checker(&proxy, check_secs() / 2);
    stop.store(true, Ordering::Relaxed);
    lagger.join().unwrap();
    eprintln!("global: {found:?}; reads: {}", proxy.shard()["reads"]);
    assert!(found.reads > 500, "{found:?}");
    assert_eq!(
        found.stale_global, 0,
        "a read missed an acknowledged write: {found:?}"
    );
    assert_eq!(found.stale_own, 0, "{found:?}");
    assert_eq!(found.backwards, 0, "{found:?}");
    // With nothing written, global reads go to replicas too.
    let replicas = [&cluster.nodes[1], &cluster.nodes[2]];
    std::thread::sleep(Duration::from_millis(300));
    let (on_replicas, all) = read_only_phase(&proxy, &replicas, &cluster.nodes[0]);
    eprintln!("global read-only phase: {on_replicas} of {all} GETs on replicas");
    assert!(on_replicas * 100 >= all * 80, "{on_replicas} of {all}");
}

#[test]
fn fanout_session_reads_never_show_a_client_less_than_it_saw() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start(None)).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    let proxy = Proxy::start_with(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_commands = true\n[admin]\nlisten = \"127.0.0.1:0\"\n[probe]\ninterval_ms = 50\n[shards.main]\nnodes = [{}]\nread_from = \"replicas\"\n[shards.main.replication]\nmode = \"fanout\"\n",
        addrs.join(", ")
    ));
    proxy.wait_serving_replicas(2, Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let lagger = lag(nodes[2].addr(), stop.clone());
    let found = run_checker(&proxy, check_secs() / 2);
    stop.store(true, Ordering::Relaxed);
    lagger.join().unwrap();
    eprintln!(
        "fan-out session: {found:?}; reads: {}",
        proxy.shard()["reads"]
    );
    assert!(found.reads > 500, "{found:?}");
    assert_eq!(found.stale_own, 0, "{found:?}");
    assert_eq!(found.backwards, 0, "{found:?}");
}
