//! Moving hash slots between shards while clients use them, on real
//! redis-server nodes: every key ends on the shard owning its slot and
//! only there, with its value, type and TTL; no acknowledged write is
//! lost; counters are exact; no client reads a wrong value or misses a
//! key while it moves; transactions on hash-tagged keys stay atomic. Also
//! with the source's primary killed mid-move, and with Rampart stopped
//! mid-move and started again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rampart_tests::moves::{self, expect_only_straddling_transactions, slot, Clients, Seen, KEYS};
use rampart_tests::resp3::Resp3;
use rampart_tests::{http, wait_until, wait_until_or, Cluster, Proxy};
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_rampart-test-cli");

/// Shard `s0` owns every slot, `s1` none; both a primary and a replica,
/// writes synchronous to one replica; state kept in `state`.
fn config(a: &Cluster, b: &Cluster, state: &std::path::Path) -> String {
    format!(
        "{}{}",
        config_one(a, state).replace(
            "[shards.s0]\nnodes",
            "[shards.s0]\nslots = \"0-16383\"\nnodes"
        ),
        shard_section("s1", b)
    )
}

/// Shard `s0` alone (no `slots` line: it owns every slot).
fn config_one(a: &Cluster, state: &std::path::Path) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n\
         [failover]\nhold_writes_ms = 5000\nstate_dir = \"{}\"\n\
         [shards.s0]\nnodes = [{}]\n[shards.s0.replication]\nquorum = \"one\"\ntimeout_ms = 1000\n",
        state.display(),
        nodes(a),
    )
}

/// Shard `name` on `cluster`, owning no slots.
fn shard_section(name: &str, cluster: &Cluster) -> String {
    format!(
        "[shards.{name}]\nnodes = [{}]\nslots = \"\"\n[shards.{name}.replication]\nquorum = \"one\"\ntimeout_ms = 1000\n",
        nodes(cluster)
    )
}

fn nodes(c: &Cluster) -> String {
    c.addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn admin(proxy: &Proxy) -> std::net::SocketAddr {
    proxy.admin.expect("admin listener")
}

fn slots(proxy: &Proxy) -> serde_json::Value {
    let (status, body) = http(admin(proxy), "GET", "/v1/slots", b"");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

fn moved_so_far(proxy: &Proxy) -> u64 {
    let p = &slots(proxy)["moving"]["progress"];
    p["moved"].as_u64().unwrap_or(0) + p["moved_by_clients"].as_u64().unwrap_or(0)
}

/// Waits (10 s at most) for an event of `kind`.
fn wait_event(proxy: &Proxy, kind: &str) {
    wait_until_or(
        &format!("a {kind} event"),
        Duration::from_secs(10),
        || proxy.events_of(kind) > 0,
        || format!("{:?}", proxy.event_kinds()),
    );
}

/// `POST /v1/slots/move?<query>`.
fn ask_move(proxy: &Proxy, query: &str) -> (u16, String) {
    http(
        admin(proxy),
        "POST",
        &format!("/v1/slots/move?{query}"),
        b"",
    )
}

fn start_move(proxy: &Proxy, rate: u64) {
    let (status, body) = ask_move(proxy, &format!("slots=8192-16383&to=s1&rate={rate}"));
    assert_eq!(status, 200, "{body}");
}

fn wait_moved(proxy: &Proxy, timeout: Duration) {
    wait_until_or(
        "the move to finish",
        timeout,
        || slots(proxy)["moving"].is_null(),
        || format!("{:#}", slots(proxy)),
    );
}

/// Every loaded key, acknowledged write and counter where it belongs,
/// and the map as the move left it.
fn check(proxy: &Proxy, a: &Cluster, b: &Cluster, seen: &Seen) {
    let view = slots(proxy);
    assert_eq!(view["shards"][0]["slots"], "0-8191", "{view}");
    assert_eq!(view["shards"][1]["slots"], "8192-16383", "{view}");
    moves::check(&proxy.client(), a, b, seen);
}

fn load(proxy: &Proxy) {
    moves::load(&proxy.client());
}

#[test]
fn slots_move_online_while_clients_read_and_write() {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    load(&proxy);
    let clients = Clients::start(&[proxy.client()]);
    std::thread::sleep(Duration::from_millis(300));
    // The command line's way, showing progress until done.
    let out = std::process::Command::new(BIN)
        .args([
            "slots",
            "move",
            "8192-16383",
            "--to",
            "s1",
            "--wait",
            "--rate",
            "20000",
        ])
        .args(["--admin", &admin(&proxy).to_string()])
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("done: slots 8192-16383 are on shard 's1'"),
        "{stdout}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let ops = clients.ops.load(Ordering::Relaxed);
    let seen = clients.finish();
    assert!(ops > 1000, "the clients kept working: {ops} operations");
    expect_only_straddling_transactions(&seen);
    check(&proxy, &a, &b, &seen);
    let kinds = proxy.event_kinds();
    assert!(
        kinds.iter().any(|k| k == "slots-moving") && kinds.iter().any(|k| k == "slots-moved"),
        "{kinds:?}"
    );
    // The map survives a restart, and `--toml` prints what makes the
    // file match it.
    drop(proxy);
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    let view = slots(&proxy);
    assert_eq!(view["shards"][1]["slots"], "8192-16383", "{view}");
    let toml = std::process::Command::new(BIN)
        .args(["slots", "--toml", "--admin", &admin(&proxy).to_string()])
        .output()
        .expect("run the CLI");
    let toml = String::from_utf8_lossy(&toml.stdout);
    assert!(
        toml.contains("[shards.s1]\nslots = \"8192-16383\""),
        "{toml}"
    );
    check(&proxy, &a, &b, &seen);
}

#[test]
fn a_move_survives_its_source_primary_failing() {
    move_with_a_failover(0);
}

#[test]
fn a_move_survives_its_target_primary_failing() {
    move_with_a_failover(1);
}

/// A move with clients working throughout, and the primary of shard
/// `failing` (0: the source, 1: the target) killed a tenth of the way in,
/// then back as a replica of the new primary.
fn move_with_a_failover(failing: usize) {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    load(&proxy);
    let clients = Clients::start(&[proxy.client()]);
    start_move(&proxy, 4000);
    wait_until(
        "a tenth of the keys to move",
        Duration::from_secs(30),
        || moved_so_far(&proxy) > (KEYS / 10) as u64,
    );
    let mut shards = [a, b];
    let cluster = &mut shards[failing];
    let old = cluster.primary().addr();
    cluster.nodes[0].kill();
    wait_until(
        "the replica to be promoted",
        Duration::from_secs(20),
        || {
            proxy.topology()["shards"][failing]["primary"]
                .as_str()
                .is_some_and(|p| p != old)
        },
    );
    // Back as a replica of the new primary (the quorum needs one).
    cluster.nodes[0].restart();
    wait_moved(&proxy, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let seen = clients.finish();
    moves::expect_only_failover_errors(&seen);
    shards[failing].nodes.swap(0, 1);
    let [a, b] = &shards;
    check(&proxy, a, b, &seen);
}

#[test]
fn a_move_resumes_after_rampart_stops_mid_move() {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let text = config(&a, &b, state.path());
    let proxy = Proxy::start_with(&text);
    load(&proxy);
    start_move(&proxy, 3000);
    wait_until("some keys to move", Duration::from_secs(30), || {
        moved_so_far(&proxy) > (KEYS / 10) as u64
    });
    drop(proxy);
    let saved = std::fs::read_to_string(state.path().join("slots.json")).unwrap();
    assert!(saved.contains("\"moving\""), "{saved}");
    let proxy = Proxy::start_with(&text);
    // Routing by the move from the first request: every key readable.
    let mut conn = proxy.conn();
    for i in (0..KEYS).step_by(97) {
        let v: Option<String> = conn.get(format!("k:{i}")).unwrap();
        assert_eq!(v, Some(format!("v{i}")), "k:{i} right after the restart");
    }
    let clients = Clients::start(&[proxy.client()]);
    wait_moved(&proxy, Duration::from_secs(60));
    let seen = clients.finish();
    assert!(
        seen.errors.is_empty(),
        "errors: {:?}",
        &seen.errors[..seen.errors.len().min(10)]
    );
    check(&proxy, &a, &b, &seen);
}

/// Growing without a restart: Rampart runs one shard, a second is added
/// to the file (a reload), and half the slots move to it while clients
/// work; then a restart with that file keeps the new map.
#[test]
fn a_shard_added_by_reload_receives_slots_online() {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("rampart.toml");
    std::fs::write(&file, config_one(&a, state.path())).unwrap();
    let proxy = Proxy::start_with(&std::fs::read_to_string(&file).unwrap());
    proxy.watch_config(&file);
    load(&proxy);
    let clients = Clients::start(&[proxy.client()]);
    let grown = format!(
        "{}{}",
        config_one(&a, state.path()),
        shard_section("s1", &b)
    );
    std::fs::write(&file, &grown).unwrap();
    wait_until_or(
        "the new shard to be in service",
        Duration::from_secs(20),
        || {
            let shard = &proxy.topology()["shards"][1];
            shard["name"] == "s1" && shard["primary"].as_str() == Some(&b.primary().addr())
        },
        || format!("{:#}\n{:?}", proxy.topology(), proxy.event_kinds()),
    );
    assert!(proxy.event_kinds().iter().any(|k| k == "shard-added"));
    assert_eq!(slots(&proxy)["shards"][1]["slots"], "");
    start_move(&proxy, 0);
    wait_moved(&proxy, Duration::from_secs(60));
    let seen = clients.finish();
    expect_only_straddling_transactions(&seen);
    check(&proxy, &a, &b, &seen);
    drop(proxy);
    // Restarted with the grown file: the moved slots stay with s1.
    let proxy = Proxy::start_with(&grown);
    check(&proxy, &a, &b, &Seen::default());
}

/// Clients blocked on keys of slots that start moving get what one Redis
/// would give them: the element pushed after the move (BLPOP with no
/// timeout), the entry added after it (a consumer in `XREADGROUP ... >`,
/// its group moved with the stream), or nil once their own timeout is
/// up, never an early nil.
#[test]
fn blocked_clients_follow_their_keys_to_the_target() {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    let moving_key = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| slot(k) >= 8192)
            .unwrap()
    };
    let (forever, five) = (moving_key("queue:"), moving_key("timed:"));
    let stream = moving_key("events:");
    redis::cmd("XGROUP")
        .arg(&["CREATE", &stream, "workers", "$", "MKSTREAM"])
        .exec(&mut proxy.conn())
        .unwrap();
    let consumer = {
        let (client, stream) = (proxy.client(), stream.clone());
        std::thread::spawn(move || -> redis::RedisResult<redis::Value> {
            redis::cmd("XREADGROUP")
                .arg(&[
                    "GROUP", "workers", "c1", "BLOCK", "0", "STREAMS", &stream, ">",
                ])
                .query(&mut client.get_connection()?)
        })
    };
    let started = std::time::Instant::now();
    let waiters: Vec<_> = [(forever.clone(), 0.0), (five.clone(), 5.0)]
        .into_iter()
        .map(|(key, timeout)| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().unwrap();
                let got: Option<(String, String)> = conn.blpop(&key, timeout).unwrap();
                (got, started.elapsed())
            })
        })
        .collect();
    wait_until("all three to block", Duration::from_secs(10), || {
        a.primary()
            .info_field("clients", "blocked_clients")
            .is_some_and(|n| n == "3")
    });
    start_move(&proxy, 0);
    wait_moved(&proxy, Duration::from_secs(30));
    // Blocked on the target now, not answered.
    wait_until(
        "all three to block on the target",
        Duration::from_secs(10),
        || {
            b.primary()
                .info_field("clients", "blocked_clients")
                .is_some_and(|n| n == "3")
        },
    );
    let _: () = proxy.conn().lpush(&forever, "job").unwrap();
    let id: String = redis::cmd("XADD")
        .arg(&[&stream, "*", "job", "1"])
        .query(&mut proxy.conn())
        .unwrap();
    let got = format!("{:?}", consumer.join().unwrap().expect("the entry"));
    assert!(got.contains(&id), "{got}");
    let mut waiters = waiters.into_iter();
    let (got, _) = waiters.next().unwrap().join().unwrap();
    assert_eq!(got, Some((forever, "job".to_string())));
    let (got, after) = waiters.next().unwrap().join().unwrap();
    assert_eq!(got, None);
    assert!(
        after >= Duration::from_millis(4900),
        "nil after {after:?}, timeout 5 s"
    );
}

#[test]
fn a_move_is_refused_when_it_cannot_be_done_safely() {
    let (a, b) = (Cluster::start(0), Cluster::start(0));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    let ask = |query: &str| ask_move(&proxy, query);
    let (status, body) = ask("slots=0-10&to=nowhere");
    assert_eq!(status, 404, "{body}");
    let (status, body) = ask("slots=0-10&to=s0");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("already owns"), "{body}");
    let (status, body) = ask("slots=0-16384&to=s1");
    assert_eq!(status, 422, "{body}");
    drop(proxy);
    // Without a state directory a restart would forget the new map.
    let text = config(&a, &b, state.path())
        .replace(&format!("state_dir = \"{}\"\n", state.path().display()), "");
    let proxy = Proxy::start_with(&text);
    let (status, body) = ask_move(&proxy, "slots=0-10&to=s1");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("state_dir"), "{body}");
}

/// A key the target will not take (its `RESTORE` refused: here the
/// target's primary is out of memory) stays on the source and is never
/// lost: a command on it is answered `-TRYAGAIN`, the walk retries and
/// shows why in `/v1/slots`; once the target takes keys again, the move
/// finishes with every key on the shard owning its slot.
#[test]
fn a_key_the_target_refuses_stays_on_the_source_until_it_can_move() {
    let (a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    const N: usize = 2000;
    let mut conn = proxy.conn();
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.set(format!("k:{i}"), format!("v{i}")).ignore();
    }
    pipe.query::<()>(&mut conn).expect("load");
    // Every write to the target's primary is refused (-OOM).
    let target = &b.nodes[0];
    target.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    target.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    start_move(&proxy, 100_000);
    wait_until_or(
        "the walk to say why it cannot move keys",
        Duration::from_secs(10),
        || {
            slots(&proxy)["moving"]["progress"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("OOM"))
        },
        || format!("{:#}", slots(&proxy)),
    );
    let moving = (0..N)
        .map(|i| format!("k:{i}"))
        .find(|k| slot(k) >= 8192)
        .expect("a key in the moving slots");
    let refused = redis::cmd("GET")
        .arg(&moving)
        .query::<Option<String>>(&mut conn)
        .expect_err("the key cannot be moved first");
    assert!(
        format!("{refused:?}").contains("TryAgain") || refused.to_string().contains("TRYAGAIN"),
        "{refused:?}"
    );
    // Nothing lost meanwhile: every key on exactly one primary, intact.
    let direct = |c: &Cluster| {
        redis::Client::open(format!("redis://{}/", c.addrs()[0]))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let (mut on_a, mut on_b) = (direct(&a), direct(&b));
    for i in 0..N {
        let key = format!("k:{i}");
        let x: Option<String> = on_a.get(&key).unwrap();
        let y: Option<String> = on_b.get(&key).unwrap();
        assert_eq!(
            (x.is_some() as u8 + y.is_some() as u8, x.or(y)),
            (1, Some(format!("v{i}"))),
            "{key}"
        );
    }
    // Room again: the move finishes.
    target.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    wait_moved(&proxy, Duration::from_secs(60));
    for i in 0..N {
        let key = format!("k:{i}");
        let (owner, other) = if slot(&key) >= 8192 {
            (&mut on_b, &mut on_a)
        } else {
            (&mut on_a, &mut on_b)
        };
        let here: Option<String> = owner.get(&key).unwrap();
        let there: Option<String> = other.get(&key).unwrap();
        assert_eq!((here, there), (Some(format!("v{i}")), None), "{key}");
        let through: Option<String> = conn.get(&key).unwrap();
        assert_eq!(through, Some(format!("v{i}")), "{key}");
    }
}

/// A shard whose slots were all moved away is removed by a reload that
/// drops it from the file, and its nodes can then be shut down: every
/// command for every shard (DBSIZE, KEYS, SCAN, INFO, SCRIPT LOAD,
/// SLOWLOG, CLIENT PAUSE), keyless commands, pub/sub and readiness go on
/// without it. Removing a shard that still owns slots is refused and
/// changes nothing; the same reload goes through once the slots are gone.
#[test]
fn a_shard_emptied_by_a_move_is_removed_by_reload() {
    let (mut a, b) = (Cluster::start(1), Cluster::start(1));
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("rampart.toml");
    std::fs::write(&file, config(&a, &b, state.path())).unwrap();
    let proxy = Proxy::start_with(&std::fs::read_to_string(&file).unwrap());
    proxy.watch_config(&file);
    std::thread::sleep(Duration::from_millis(300));
    let mut conn = proxy.conn();
    for i in 0..500 {
        let _: () = conn.set(format!("k:{i}"), i).unwrap();
    }
    let sha: String = redis::cmd("SCRIPT")
        .arg(&["LOAD", "return 7"])
        .query(&mut conn)
        .unwrap();
    // A subscriber lives on the first shard, s0.
    let mut subscriber = proxy.conn();
    redis::cmd("SUBSCRIBE")
        .arg("news")
        .exec(&mut subscriber)
        .unwrap();

    // Only s1 in the file, owning every slot: s0 still owns them all, so
    // its removal is refused, and nothing changes.
    let without_s0 = shard_section("s1", &b).replace("slots = \"\"", "slots = \"0-16383\"");
    let without_s0 = config_one(&a, state.path())
        .split("[shards.s0]")
        .next()
        .unwrap()
        .to_string()
        + &without_s0;
    std::fs::write(&file, &without_s0).unwrap();
    wait_event(&proxy, "shard-change-refused");
    let refusal = proxy.last_event_detail("shard-change-refused").unwrap();
    assert!(refusal.contains("owns slots 0-16383"), "{refusal}");
    assert_eq!(proxy.topology()["shards"].as_array().unwrap().len(), 2);
    let value: i64 = conn.get("k:7").unwrap();
    assert_eq!(value, 7);

    // Every slot moved to s1, then the same file again: s0 goes.
    let (status, body) = ask_move(&proxy, "slots=0-16383&to=s1");
    assert_eq!(status, 200, "{body}");
    wait_moved(&proxy, Duration::from_secs(60));
    std::fs::write(&file, &without_s0).unwrap();
    wait_event(&proxy, "shard-removed");
    let shards = proxy.topology()["shards"].clone();
    assert_eq!(shards.as_array().unwrap().len(), 1, "{shards:#}");
    assert_eq!(shards[0]["name"], "s1");
    let view = slots(&proxy);
    assert_eq!(view["shards"].as_array().unwrap().len(), 1, "{view:#}");
    assert_eq!(view["shards"][0]["slots"], "0-16383", "{view:#}");
    let metrics = rampart_tests::http_get(admin(&proxy), "/metrics").1;
    assert!(
        !metrics.contains("rampart_shard_slots{shard=\"s0\"}"),
        "{metrics}"
    );
    // The subscriber piped to s0's primary was disconnected, to
    // subscribe again where PUBLISH now goes.
    subscriber
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let end = subscriber.recv_response().expect_err("still connected");
    assert!(!end.is_timeout(), "still connected: {end}");

    // s0's nodes gone for good.
    for node in a.nodes.iter_mut() {
        node.kill();
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut conn = proxy.conn();
    let mut subscriber = proxy.conn();
    redis::cmd("SUBSCRIBE")
        .arg("news")
        .exec(&mut subscriber)
        .unwrap();
    let receivers: i64 = conn.publish("news", "hello").unwrap();
    assert_eq!(receivers, 1);
    let size: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(size, 500);
    let keys: Vec<String> = conn.keys("k:*").unwrap();
    assert_eq!(keys.len(), 500);
    let scanned: std::collections::HashSet<String> =
        conn.scan().unwrap().map(|key| key.unwrap()).collect();
    assert_eq!(scanned.len(), 500);
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let seven: i64 = redis::cmd("EVALSHA")
        .arg(&[&sha, "0"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(seven, 7);
    let again: String = redis::cmd("SCRIPT")
        .arg(&["LOAD", "return 8"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(again.len(), 40);
    let info: redis::InfoDict = redis::cmd("INFO").query(&mut conn).unwrap();
    assert!(info
        .get::<String>("db0")
        .is_some_and(|db| db.starts_with("keys=500")));
    let _: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").query(&mut conn).unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "10", "WRITE"])
        .query(&mut conn)
        .unwrap();
    let (status, body) = rampart_tests::http_get(admin(&proxy), "/readyz");
    assert_eq!(status, 200, "{body}");
    for i in [0, 250, 499] {
        let value: i64 = conn.get(format!("k:{i}")).unwrap();
        assert_eq!(value, i);
    }
    // A move to the removed shard is refused as for any unknown shard.
    let (status, _) = ask_move(&proxy, "slots=0-10&to=s0");
    assert_eq!(status, 404);
    drop(proxy);
    // Restarted with the file as it is now: everything on s1.
    let proxy = Proxy::start_with(&without_s0);
    let mut conn = proxy.conn();
    let size: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(size, 500);
}

/// A `RESTORE` given up on (its connection stalled in the network past the
/// step's timeout) and delivered late, after the key was moved by a later
/// attempt and written anew on the target, must not put the old value
/// back: Rampart kills that connection on the target before moving
/// anything else there.
#[test]
fn a_restore_given_up_on_cannot_overwrite_a_newer_write() {
    use rampart_tests::forwarder::Fault;
    let a = Cluster::start(0);
    let b = rampart_tests::FaultyCluster::start(0);
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 60000\n\
         [backend]\nreply_timeout_ms = 1000\n\
         [failover]\nhold_writes_ms = 5000\nstate_dir = \"{}\"\n\
         [shards.s0]\nnodes = [\"{}\"]\nslots = \"0-16383\"\n\
         [shards.s1]\nnodes = [\"{}\"]\nslots = \"\"\n",
        state.path().display(),
        a.primary().addr(),
        b.addrs()[0],
    );
    let proxy = Proxy::start_with(&text);
    // Two keys in different slots moved through the same gate (slots 64
    // apart): the first move leaves the gate's connection to the target
    // open, the second uses it.
    let key_in = |wanted: &dyn Fn(u16) -> bool| {
        (0..)
            .map(|i| format!("key:{i}"))
            .find(|k| wanted(slot(k)))
            .unwrap()
    };
    let first = key_in(&|s| s < 16000);
    let second = key_in(&|s| s == slot(&first) + 64);
    let mut conn = proxy.conn();
    let _: () = conn.set(&first, "1").unwrap();
    let _: () = conn.set(&second, "old").unwrap();
    let moved = |key: &str| {
        let query = format!("slots={}&to=s1", slot(key));
        let (status, body) = ask_move(&proxy, &query);
        assert_eq!(status, 200, "{body}");
        wait_moved(&proxy, Duration::from_secs(60));
    };
    moved(&first);
    // The target's open connections stall; new ones pass.
    b.forwarders[0].set(Fault::HoldOpen);
    moved(&second);
    assert_eq!(b.nodes[0].cli(&["GET", &second]).trim(), "old");
    // Written anew through Rampart (a transaction: a connection opened
    // now), acknowledged.
    let mut writer = proxy.conn();
    let (value,): (String,) = redis::pipe()
        .atomic()
        .set(&second, "new")
        .ignore()
        .get(&second)
        .query(&mut writer)
        .unwrap();
    assert_eq!(value, "new");
    // The stalled connection delivers what it carried.
    b.forwarders[0].set(Fault::Pass);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.nodes[0].cli(&["GET", &second]).trim(), "new");
    assert_eq!(a.primary().cli(&["EXISTS", &second]).trim(), "0");
}

/// A client subscribed to a shard channel (`SSUBSCRIBE`) whose slot moves
/// is disconnected when the move starts, as a Redis Cluster node tells its
/// shard-channel subscribers when their slot leaves: `SPUBLISH` goes to
/// the target from then on, and a subscriber left on the source would
/// miss every message without a word. Subscribing again reaches them.
/// Plain `SUBSCRIBE` subscribers are left alone.
#[test]
fn shard_channel_subscribers_follow_their_slot() {
    let (a, b) = (Cluster::start(0), Cluster::start(0));
    let state = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&config(&a, &b, state.path()));
    let channel = "orders";
    let mut shard_sub = proxy.conn();
    redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .exec(&mut shard_sub)
        .unwrap();
    let mut plain_sub = proxy.conn();
    redis::cmd("SUBSCRIBE")
        .arg(channel)
        .exec(&mut plain_sub)
        .unwrap();
    let mut conn = proxy.conn();
    let heard: i64 = redis::cmd("SPUBLISH")
        .arg(&[channel, "before"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(heard, 1);
    let (status, body) = ask_move(&proxy, &format!("slots={}&to=s1", slot(channel)));
    assert_eq!(status, 200, "{body}");
    wait_moved(&proxy, Duration::from_secs(60));
    shard_sub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The message published before the move, then the end of the
    // connection.
    let first = shard_sub.recv_response();
    assert!(first.is_ok(), "{first:?}");
    let end = shard_sub.recv_response().expect_err("still connected");
    assert!(!end.is_timeout(), "still connected: {end}");
    let mut again = proxy.conn();
    redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .exec(&mut again)
        .unwrap();
    let heard: i64 = redis::cmd("SPUBLISH")
        .arg(&[channel, "after"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(heard, 1, "the new subscription is where SPUBLISH goes");
    // The plain subscriber is still there (PUBLISH goes to the first
    // shard, which did not change).
    let heard: i64 = conn.publish(channel, "plain").unwrap();
    assert_eq!(heard, 1);
}

/// A tracking client (client-side caching) is disconnected, so that its
/// cache is flushed, when slots start moving to a shard added while it
/// tracks: that shard's writes would change keys it may have cached,
/// unseen. Over one shard (the client piped to its primary) and over
/// several (a feed per shard at the time it turned tracking on).
#[test]
fn tracking_clients_leave_when_slots_move_to_a_shard_added_since() {
    for shards_at_start in [1, 2] {
        let (a, b, c) = (Cluster::start(0), Cluster::start(0), Cluster::start(0));
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("rampart.toml");
        let (text, added) = match shards_at_start {
            1 => (config_one(&a, state.path()), shard_section("s1", &b)),
            _ => (config(&a, &b, state.path()), shard_section("s2", &c)),
        };
        std::fs::write(&file, &text).unwrap();
        let proxy = Proxy::start_with(&text);
        proxy.watch_config(&file);
        let mut tracking = Resp3::connect(proxy.port());
        assert_eq!(tracking.call(&["CLIENT", "TRACKING", "ON"]), "+OK\r\n");
        tracking.call(&["GET", "k"]);
        std::fs::write(&file, format!("{text}{added}")).unwrap();
        let name = if shards_at_start == 1 { "s1" } else { "s2" };
        wait_until("the new shard in service", Duration::from_secs(20), || {
            proxy.topology()["shards"][shards_at_start]["name"] == name
        });
        // Added, still without slots: the client stays.
        assert_eq!(tracking.call(&["PING"]), "+PONG\r\n");
        let (status, body) = ask_move(&proxy, &format!("slots=8192-16383&to={name}&rate=0"));
        assert_eq!(status, 200, "{body}");
        assert!(
            tracking.closed_within(Duration::from_secs(10)),
            "with {shards_at_start} shard(s) at the start: still connected"
        );
    }
}
