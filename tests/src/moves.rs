//! What the slot-move tests share: keys loaded before a move, clients
//! working through it, and the check that every key, acknowledged write
//! and counter ended where it belongs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::Commands;

use crate::Cluster;

/// Keys loaded before the move.
pub const KEYS: usize = 100_000;
/// Hash-tagged groups (a list and a hash each, in the tag's slot).
pub const GROUPS: usize = 500;
/// Counters incremented during the move.
pub const COUNTERS: usize = 50;

/// Redis Cluster's slot of a key.
pub fn slot(key: &str) -> u16 {
    crate::key_slot(key)
}

/// Strings (every fifth with a TTL) and hash-tagged lists and hashes.
pub fn load(client: &redis::Client) {
    let mut conn = client.get_connection().expect("connect");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let key = format!("k:{i}");
            if i % 5 == 0 {
                pipe.set_ex(&key, format!("v{i}"), 3600).ignore();
            } else {
                pipe.set(&key, format!("v{i}")).ignore();
            }
        }
        pipe.query::<()>(&mut conn).expect("load strings");
    }
    let mut pipe = redis::pipe();
    for g in 0..GROUPS {
        pipe.rpush(format!("{{g{g}}}:list"), &["a", "b", "c"])
            .ignore();
        pipe.hset(format!("{{g{g}}}:hash"), "field", g).ignore();
        pipe.set(format!("{{g{g}}}:a"), 0).ignore();
        pipe.set(format!("{{g{g}}}:b"), 0).ignore();
    }
    pipe.query::<()>(&mut conn).expect("load groups");
}

/// What the clients working during the move saw.
#[derive(Default)]
pub struct Seen {
    /// Keys whose SET was acknowledged, with their values.
    pub acked: HashMap<String, String>,
    /// Acknowledged and unknown INCRs per counter.
    pub incr: Vec<(u64, u64)>,
    /// Wrong reads: a key read as missing or with another value, or a
    /// transaction seeing its two keys differ.
    pub wrong: Vec<String>,
    pub errors: Vec<String>,
}

/// Writers, incrementers, readers of the loaded keys and transactions
/// on hash-tagged pairs, until stopped.
pub struct Clients {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    pub ops: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Every kind of client on each of `through` (instances of Rampart).
    pub fn start(through: &[redis::Client]) -> Clients {
        Clients::start_roles(through, &[0, 1, 2, 3])
    }

    /// Clients of `roles` only (0 writes new keys, 1 increments counters,
    /// 2 reads loaded keys, 3 runs transactions) on each of `through`.
    pub fn start_roles(through: &[redis::Client], roles: &[usize]) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            incr: vec![(0, 0); COUNTERS],
            ..Default::default()
        }));
        let ops = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (role, client) in roles
            .iter()
            .flat_map(|&role| through.iter().map(move |c| (role, c.clone())))
        {
            let writer = threads.len();
            let (stop, seen, ops) = (stop.clone(), seen.clone(), ops.clone());
            threads.push(std::thread::spawn(move || {
                let mut conn = client.get_connection().expect("connect");
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                    work(role, writer, n, &mut conn, &seen);
                }
            }));
        }
        Clients {
            stop,
            seen,
            ops,
            threads,
        }
    }

    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("threads done")
            .into_inner()
            .expect("lock")
    }
}

fn work(role: usize, writer: usize, n: usize, conn: &mut redis::Connection, seen: &Mutex<Seen>) {
    let record_error = |e: redis::RedisError| seen.lock().unwrap().errors.push(e.to_string());
    match role {
        // New keys.
        0 => {
            let key = format!("w:{writer}:{n}");
            match conn.set::<_, _, ()>(&key, n) {
                Ok(()) => {
                    seen.lock().unwrap().acked.insert(key, n.to_string());
                }
                Err(e) => record_error(e),
            }
        }
        // Counters.
        1 => {
            let c = n % COUNTERS;
            let result = conn.incr::<_, _, i64>(format!("c:{c}"), 1);
            let mut seen = seen.lock().unwrap();
            match result {
                Ok(_) => seen.incr[c].0 += 1,
                Err(e) => {
                    seen.incr[c].1 += 1;
                    seen.errors.push(e.to_string());
                }
            }
        }
        // Reads of loaded keys: never missing, never another value.
        2 => {
            let i = (n * 7919) % KEYS;
            match conn.get::<_, Option<String>>(format!("k:{i}")) {
                Ok(Some(v)) if v == format!("v{i}") => {}
                Ok(other) => seen
                    .lock()
                    .unwrap()
                    .wrong
                    .push(format!("k:{i} read as {other:?}")),
                Err(e) => record_error(e),
            }
        }
        // A transaction on a hash-tagged pair: both always equal.
        _ => {
            let g = n % GROUPS;
            let (a, b) = (format!("{{g{g}}}:a"), format!("{{g{g}}}:b"));
            // Spelled out (not redis-rs's atomic pipe) so that an error
            // reply's own text is what is recorded.
            let result: redis::RedisResult<(String, String, String, (i64, i64))> = redis::pipe()
                .cmd("MULTI")
                .incr(&a, 1)
                .incr(&b, 1)
                .cmd("EXEC")
                .query(conn);
            match result {
                Ok((_, _, _, (x, y))) if x == y => {}
                Ok((_, _, _, (x, y))) => seen
                    .lock()
                    .unwrap()
                    .wrong
                    .push(format!("{a} = {x} but {b} = {y} in one transaction")),
                Err(e) => record_error(e),
            }
        }
    }
}

/// The one error a move may cause: a transaction that queued commands
/// before the move began and reached EXEC after is discarded (EXECABORT,
/// nothing ran), at most a few, at the start.
pub fn expect_only_straddling_transactions(seen: &Seen) {
    let (straddling, other): (Vec<&String>, Vec<&String>) = seen
        .errors
        .iter()
        .partition(|e| e.contains("started moving to another shard"));
    assert!(
        other.is_empty(),
        "errors: {:?}",
        &other[..other.len().min(10)]
    );
    assert!(
        straddling.len() <= 4,
        "{} transactions discarded",
        straddling.len()
    );
}

/// Every loaded key, acknowledged write and counter where it belongs:
/// through Rampart, and on the primary owning its slot (0-8191 on `a`,
/// the rest on `b`) and only there.
pub fn check(through: &redis::Client, a: &Cluster, b: &Cluster, seen: &Seen) {
    assert!(
        seen.wrong.is_empty(),
        "wrong reads: {:?}",
        &seen.wrong[..seen.wrong.len().min(10)]
    );
    let mut through = through.get_connection().expect("connect");
    let on = |cluster: &Cluster| {
        redis::Client::open(format!("redis://{}/", cluster.primary().addr()))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let (mut on_a, mut on_b) = (on(a), on(b));
    let mut expected: Vec<(String, String)> = (0..KEYS)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    expected.extend(seen.acked.iter().map(|(k, v)| (k.clone(), v.clone())));
    // In pipelines of a thousand: every key through Rampart, on the shard
    // owning its slot, and not on the other.
    for chunk in expected.chunks(1000) {
        let keys: Vec<&String> = chunk.iter().map(|(k, _)| k).collect();
        let through_values: Vec<Option<String>> = through.mget(&keys).unwrap();
        let ttls: Vec<i64> = keys
            .iter()
            .fold(&mut redis::pipe(), |p, k| p.ttl(*k))
            .query(&mut through)
            .unwrap();
        let (mut home_a, mut home_b) = (redis::pipe(), redis::pipe());
        let (mut else_a, mut else_b) = (redis::pipe(), redis::pipe());
        let mut order = Vec::new();
        for key in &keys {
            let on_a_side = slot(key) < 8192;
            order.push(on_a_side);
            let (home, other) = match on_a_side {
                true => (&mut home_a, &mut else_b),
                false => (&mut home_b, &mut else_a),
            };
            home.get(*key);
            other.exists(*key);
        }
        let (at_a, at_b): (Vec<Option<String>>, Vec<Option<String>>) = (
            home_a.query(&mut on_a).unwrap(),
            home_b.query(&mut on_b).unwrap(),
        );
        let (also_b, also_a): (Vec<bool>, Vec<bool>) = (
            else_b.query(&mut on_b).unwrap(),
            else_a.query(&mut on_a).unwrap(),
        );
        let (mut at_a, mut at_b) = (at_a.into_iter(), at_b.into_iter());
        let (mut also_a, mut also_b) = (also_a.into_iter(), also_b.into_iter());
        for (i, (key, value)) in chunk.iter().enumerate() {
            assert_eq!(
                through_values[i].as_deref(),
                Some(value.as_str()),
                "{key} through Rampart"
            );
            let (there, elsewhere) = match order[i] {
                true => (at_a.next(), also_b.next()),
                false => (at_b.next(), also_a.next()),
            };
            assert_eq!(
                there.flatten().as_deref(),
                Some(value.as_str()),
                "{key} on its shard"
            );
            assert_eq!(elsewhere, Some(false), "{key} also on the other shard");
            // The loaded keys: every fifth with a TTL, the rest without.
            if let Some(n) = key.strip_prefix("k:").and_then(|n| n.parse::<usize>().ok()) {
                match n % 5 {
                    0 => assert!(
                        (3000..=3600).contains(&ttls[i]),
                        "{key} kept its TTL: {}",
                        ttls[i]
                    ),
                    _ => assert_eq!(ttls[i], -1, "{key} has no TTL"),
                }
            }
        }
    }
    for g in 0..GROUPS {
        let list: Vec<String> = through.lrange(format!("{{g{g}}}:list"), 0, -1).unwrap();
        assert_eq!(list, ["a", "b", "c"], "group {g}");
        let field: usize = through.hget(format!("{{g{g}}}:hash"), "field").unwrap();
        assert_eq!(field, g);
        let (x, y): (i64, i64) = through
            .mget(&[format!("{{g{g}}}:a"), format!("{{g{g}}}:b")])
            .unwrap();
        assert_eq!(x, y, "group {g}'s pair");
    }
    for (c, &(acked, unknown)) in seen.incr.iter().enumerate() {
        let value: Option<u64> = through.get(format!("c:{c}")).unwrap();
        let value = value.unwrap_or(0);
        assert!(
            value >= acked && value <= acked + unknown,
            "counter {c}: {value}, {acked} acknowledged, {unknown} unknown"
        );
    }
    let total: usize = redis::cmd("DBSIZE").query(&mut through).unwrap();
    let a_size: usize = redis::cmd("DBSIZE").query(&mut on_a).unwrap();
    let b_size: usize = redis::cmd("DBSIZE").query(&mut on_b).unwrap();
    assert_eq!(total, a_size + b_size);
    assert!(
        b_size > KEYS / 3 && a_size > KEYS / 3,
        "{a_size} / {b_size}"
    );
}

/// Errors only of the kinds a failover gives without a move (commands in
/// flight to the killed node, writes no replica confirmed), none of them
/// acknowledged, and transactions straddling the start.
pub fn expect_only_failover_errors(seen: &Seen) {
    let odd: Vec<&String> = seen
        .errors
        .iter()
        .filter(|e| {
            let e = e.to_lowercase();
            ![
                "noquorum",
                "no reachable primary",
                "may or may not have run",
                // Not sent: the primary's connection was down before the
                // probes called it down (see data_path.rs).
                "unavailable",
                "tryagain",
                "started moving to another shard",
            ]
            .iter()
            .any(|k| e.contains(k))
        })
        .collect();
    assert!(odd.is_empty(), "unexpected errors: {odd:?}");
}
