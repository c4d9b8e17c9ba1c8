//! Several shards behind one Rampart: keys placed by hash slot on real
//! redis-server nodes, multi-key commands split and combined as one Redis
//! would answer them, CROSSSLOT where they cannot be, keyless commands over
//! the whole data set, pub/sub, transactions, and a failover of one shard
//! that the other never notices.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_tests::resp3::Resp3;
use rampart_tests::{wait_until, Cluster, Proxy, RedisNode};
use redis::{Commands, Value};

/// `shards` shards of a primary and `replicas` replicas each, the slots
/// split evenly, writes synchronous to one replica.
fn config(clusters: &[Cluster], extra: &str) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n[failover]\nhold_writes_ms = 5000\n{extra}\n"
    );
    let per = 16384 / clusters.len();
    for (i, cluster) in clusters.iter().enumerate() {
        let first = i * per;
        let last = if i + 1 == clusters.len() {
            16383
        } else {
            first + per - 1
        };
        let nodes: Vec<String> = cluster.addrs().iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "[shards.s{i}]\nnodes = [{}]\nslots = \"{first}-{last}\"\n[shards.s{i}.replication]\nquorum = \"{}\"\ntimeout_ms = 1000\n",
            nodes.join(", "),
            if cluster.nodes.len() > 1 { "one" } else { "none" },
        ));
    }
    text
}

fn clusters(shards: usize, replicas: usize) -> Vec<Cluster> {
    (0..shards).map(|_| Cluster::start(replicas)).collect()
}

/// Redis Cluster's slot of a key, computed by a real node.
fn slot_of(proxy: &Proxy, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut proxy.conn())
        .unwrap()
}

fn node_conn(node: &RedisNode) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", node.addr()))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A key whose slot lands in shard `shard` of `shards` (even split), with
/// `prefix` in its hash tag.
fn key_in(shard: usize, shards: usize, prefix: &str) -> String {
    let per = 16384 / shards;
    (0..)
        .map(|i| format!("{{{prefix}{i}}}"))
        .find(|key| {
            let slot = crc16_slot(key);
            slot / per == shard || (shard + 1 == shards && slot >= shard * per)
        })
        .unwrap()
}

/// Waits until shard s0 has a primary other than `old`.
fn wait_failed_over(proxy: &Proxy, old: &str) {
    wait_until("shard s0 to fail over", Duration::from_secs(15), || {
        let topology = proxy.topology();
        let primary = topology["shards"][0]["primary"]
            .as_str()
            .unwrap_or_default();
        !primary.is_empty() && primary != old
    });
}

/// The slot as the cluster spec defines it (checked against a real
/// node's `CLUSTER KEYSLOT` below, through Rampart).
fn crc16_slot(key: &str) -> usize {
    usize::from(rampart_tests::key_slot(key))
}

#[test]
fn keys_land_on_the_shard_their_slot_names() {
    let shards = clusters(3, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    // Rampart's CLUSTER KEYSLOT is Redis Cluster's (values from its spec).
    assert_eq!(slot_of(&proxy, "foo"), 12182);
    assert_eq!(
        slot_of(&proxy, "{user1000}.following"),
        slot_of(&proxy, "user1000")
    );
    let mut direct: Vec<_> = shards.iter().map(|c| node_conn(c.primary())).collect();
    for i in 0..300 {
        let key = format!("key:{i}");
        let _: () = conn.set(&key, i).unwrap();
        let owner = crc16_slot(&key) / (16384 / 3);
        assert_eq!(slot_of(&proxy, &key) as usize, crc16_slot(&key));
        for (shard, node) in direct.iter_mut().enumerate() {
            let there: bool = node.exists(&key).unwrap();
            assert_eq!(there, shard == owner.min(2), "{key} on shard {shard}");
        }
    }
    // Hash tags keep keys together.
    for i in 0..20 {
        let _: () = conn.set(format!("{{user:7}}:field{i}"), i).unwrap();
    }
    let owner = crc16_slot("user:7") / (16384 / 3);
    let count: usize = redis::cmd("KEYS")
        .arg("{user:7}:*")
        .query::<Vec<String>>(&mut direct[owner.min(2)])
        .unwrap()
        .len();
    assert_eq!(count, 20);
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(dbsize, 320);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 320);
}

/// Runs each command on a single redis-server and through Rampart over
/// two shards: the replies must be the same.
#[test]
fn split_commands_answer_as_one_redis() {
    let shards = clusters(2, 1);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let reference = RedisNode::start(None);
    let mut one = node_conn(&reference);
    let mut through = proxy.conn();
    let (a, b) = (key_in(0, 2, "a"), key_in(1, 2, "b"));
    let (a2, b2) = (key_in(0, 2, "c"), key_in(1, 2, "d"));
    let commands: Vec<Vec<String>> = [
        vec!["MSET", &a, "1", &b, "2", &a2, "3"],
        vec!["MGET", &b, &a, "missing", &a2, &b],
        vec!["EXISTS", &a, &b, &b, "missing", &a2],
        vec!["TOUCH", &a, &b, "missing"],
        vec!["MSET", &b2, "x", &a, "overwritten"],
        vec!["MGET", &a, &b2, &b],
        vec!["DEL", &a, &b, "missing"],
        vec!["MGET", &a, &b, &a2, &b2],
        vec!["UNLINK", &a2, &b2],
        vec!["EXISTS", &a, &b, &a2, &b2],
        vec!["MGET", &a],
        vec!["MSET", &a, "1", &b],
        vec!["DEL"],
    ]
    .iter()
    .map(|c| c.iter().map(|s| s.to_string()).collect())
    .collect();
    for command in &commands {
        let run = |conn: &mut redis::Connection| -> Result<Value, String> {
            let mut cmd = redis::cmd(&command[0]);
            for arg in &command[1..] {
                cmd.arg(arg);
            }
            cmd.query::<Value>(conn).map_err(|e| e.to_string())
        };
        assert_eq!(run(&mut through), run(&mut one), "{command:?}");
    }
    // The keys are where their slots say, not all on one shard.
    let _: () = through.mset(&[(&a, "1"), (&b, "2")]).unwrap();
    let on_a: bool = node_conn(shards[0].primary()).exists(&a).unwrap();
    let on_b: bool = node_conn(shards[1].primary()).exists(&b).unwrap();
    assert!(on_a && on_b);
}

#[test]
fn what_cannot_be_split_is_crossslot() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let (a, b) = (key_in(0, 2, "a"), key_in(1, 2, "b"));
    // redis-rs names the error kind its own way; the text is Redis Cluster's.
    let crossslot = "Keys in request don't hash to the same slot";
    let _: () = conn.set(&a, "1").unwrap();
    for command in [
        vec!["RENAME", a.as_str(), b.as_str()],
        vec!["MSETNX", a.as_str(), "1", b.as_str(), "2"],
        vec!["SUNIONSTORE", a.as_str(), b.as_str()],
        vec!["LMOVE", a.as_str(), b.as_str(), "LEFT", "LEFT"],
        vec!["EVAL", "return 1", "2", a.as_str(), b.as_str()],
        vec!["BLPOP", a.as_str(), b.as_str(), "1"],
    ] {
        let error = redis::cmd(command[0])
            .arg(&command[1..])
            .query::<Value>(&mut conn)
            .unwrap_err();
        assert_eq!(error.code(), Some("CROSSSLOT"), "{command:?}");
        assert!(
            error.to_string().contains(crossslot),
            "{command:?}: {error}"
        );
    }
    // Within one shard (hash tags) they work.
    let (t1, t2) = ("{t}1", "{t}2");
    let _: () = conn.set(t1, "v").unwrap();
    let _: () = redis::cmd("RENAME")
        .arg(t1)
        .arg(t2)
        .query(&mut conn)
        .unwrap();
    let got: String = conn.get(t2).unwrap();
    assert_eq!(got, "v");
    let one: i64 = redis::cmd("EVAL")
        .arg("return redis.call('exists', KEYS[1]) + redis.call('exists', KEYS[2])")
        .arg(2)
        .arg(t1)
        .arg(t2)
        .query(&mut conn)
        .unwrap();
    assert_eq!(one, 1);
    // SELECT: every shard's data is in database 0, as in Redis Cluster.
    let error = redis::cmd("SELECT")
        .arg(1)
        .query::<()>(&mut conn)
        .unwrap_err();
    assert!(error
        .to_string()
        .contains("SELECT is not allowed in cluster mode"));
    for (command, words) in [
        (vec!["MOVE", t2, "1"], "MOVE is not allowed in cluster mode"),
        (
            vec!["SWAPDB", "0", "1"],
            "SWAPDB is not allowed in cluster mode",
        ),
        (
            vec!["COPY", t2, "{t}3", "DB", "1"],
            "Copying to another database is not allowed in cluster mode",
        ),
    ] {
        let error = redis::cmd(command[0])
            .arg(&command[1..])
            .query::<Value>(&mut conn)
            .unwrap_err();
        assert!(error.to_string().contains(words), "{command:?}: {error}");
    }
    let copied: i64 = redis::cmd("COPY")
        .arg(t2)
        .arg("{t}3")
        .query(&mut conn)
        .unwrap();
    assert_eq!(copied, 1);
}

/// `SORT ... BY/GET` patterns name other keys, which may live on another
/// shard, where the node running the SORT cannot see them (it would read
/// them as missing and answer wrongly): refused with Redis Cluster's words,
/// unless a hash tag keeps every key they name on the sorted key's shard.
#[test]
fn sort_patterns_that_may_reach_another_shard_are_refused() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let list = key_in(0, 2, "a");
    let _: () = redis::cmd("RPUSH")
        .arg(&list)
        .arg(&["2", "3", "1"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("MSET")
        .arg(&["user:1", "u1", "user:2", "u2", "user:3", "u3"])
        .query(&mut conn)
        .unwrap();
    for (option, args) in [("GET", ["GET", "user:*"]), ("BY", ["BY", "user:*"])] {
        let error = redis::cmd("SORT")
            .arg(&list)
            .arg(&args)
            .query::<Value>(&mut conn)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("ResponseError: {option} option of SORT denied in Cluster mode."),
            "{option}"
        );
    }
    // Plain sorts, GET #, BY without a pattern, and patterns whose hash tag
    // keeps them on the list's shard are answered.
    let sorted: Vec<String> = redis::cmd("SORT").arg(&list).query(&mut conn).unwrap();
    assert_eq!(sorted, ["1", "2", "3"]);
    let own: Vec<String> = redis::cmd("SORT")
        .arg(&list)
        .arg(&["BY", "nosort", "GET", "#"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(own, ["2", "3", "1"]);
    let tag = &list[1..list.find('}').unwrap()];
    for i in 1..=3 {
        let _: () = conn
            .set(format!("{{{tag}}}:name:{i}"), format!("n{i}"))
            .unwrap();
    }
    let names: Vec<String> = redis::cmd("SORT")
        .arg(&list)
        .arg(&["GET", &format!("{{{tag}}}:name:*")])
        .query(&mut conn)
        .unwrap();
    assert_eq!(names, ["n1", "n2", "n3"]);
}

/// `SLOWLOG GET` merges every shard's log, newest first; `LEN` sums the
/// shards' logs and `RESET` empties them all.
#[test]
fn the_slow_log_covers_every_shard() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "slowlog-log-slower-than", "0"])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
    let (first, second) = (key_in(0, 2, "slow"), key_in(1, 2, "slow"));
    let _: () = conn.set(&first, 1).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let _: () = conn.set(&second, 2).unwrap();
    let log: Vec<Value> = redis::cmd("SLOWLOG")
        .arg(&["GET", "-1"])
        .query(&mut conn)
        .unwrap();
    let text = format!("{log:?}");
    let (at_first, at_second) = (text.find(&first), text.find(&second));
    assert!(
        at_first.is_some() && at_second.is_some(),
        "both shards' entries: {text}"
    );
    assert!(at_second < at_first, "newest first: {text}");
    let newest: Vec<Value> = redis::cmd("SLOWLOG")
        .arg(&["GET", "1"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(newest.len(), 1);
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut conn).unwrap();
    assert!(len >= 2, "{len}");
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
    for cluster in &shards {
        let log = cluster.nodes[0].cli(&["SLOWLOG", "GET", "-1"]);
        assert!(!log.contains("slow"), "{log}");
    }
}

/// A shard may own no slots (`slots = ""`), ready to receive some: it is
/// probed and shown, and no key goes to it. `rampart slots` shows the map,
/// and with `--toml` prints the lines that make a file match it.
#[test]
fn a_shard_may_own_no_slots_and_the_map_is_shown() {
    let shards = clusters(2, 0);
    let text = config(&shards, "")
        .replace("slots = \"0-8191\"", "slots = \"0-16383\"")
        .replace("slots = \"8192-16383\"", "slots = \"\"");
    let proxy = Proxy::start_with(&text);
    let mut conn = proxy.conn();
    for i in 0..50 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }
    assert_eq!(shards[1].nodes[0].cli(&["DBSIZE"]).trim(), "0");
    assert_eq!(shards[0].nodes[0].cli(&["DBSIZE"]).trim(), "50");
    let admin = proxy.admin.unwrap();
    let (_, body) = rampart_tests::http_get(admin, "/v1/slots");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["shards"][0]["count"], 16384, "{view}");
    assert_eq!(view["shards"][1]["count"], 0, "{view}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args(["slots", "--toml", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[shards.s0]\nslots = \"0-16383\"\n[shards.s1]\nslots = \"\"\n"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args(["slots", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("s1") && table.contains("none"), "{table}");
}

#[test]
fn transactions_and_scripts_run_within_one_shard() {
    let shards = clusters(2, 1);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let (a, b) = (key_in(0, 2, "a"), key_in(1, 2, "b"));
    let b_tag = b.trim_start_matches('{').trim_end_matches('}').to_string();
    let b_other = format!("{{{b_tag}}}:other");

    // A transaction on shard 1's keys.
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr(&b, 1)
        .incr(&b_other, 5)
        .query(&mut conn)
        .unwrap();
    assert_eq!((x, y), (1, 5));
    let on_node: i64 = node_conn(shards[1].primary()).get(&b_other).unwrap();
    assert_eq!(on_node, 5);

    // A transaction over both shards fails whole: CROSSSLOT while
    // queueing, EXECABORT at EXEC, nothing applied.
    let replies: Vec<String> = {
        let mut out = Vec::new();
        for command in [
            vec!["MULTI"],
            vec!["SET", a.as_str(), "1"],
            vec!["SET", b.as_str(), "2"],
            vec!["EXEC"],
        ] {
            out.push(
                match redis::cmd(command[0])
                    .arg(&command[1..])
                    .query::<Value>(&mut conn)
                {
                    Ok(v) => format!("{v:?}"),
                    Err(e) => e.to_string(),
                },
            );
        }
        out
    };
    assert!(
        replies[2].contains("Keys in request don't hash to the same slot"),
        "{replies:?}"
    );
    assert!(replies[3].contains("Transaction discarded"), "{replies:?}");
    let a_value: Option<String> = conn.get(&a).unwrap();
    assert_eq!(a_value, None);

    // WATCH then MULTI on one shard; a change by another client aborts.
    let _: () = redis::cmd("WATCH").arg(&b).query(&mut conn).unwrap();
    let _: () = proxy.conn().set(&b, "changed").unwrap();
    let aborted: Option<Vec<String>> = redis::pipe()
        .atomic()
        .set(&b_other, "x")
        .ignore()
        .query(&mut conn)
        .unwrap();
    assert_eq!(aborted, None);
    // An empty transaction and a discarded one.
    let empty: Vec<Value> = redis::pipe().atomic().query(&mut conn).unwrap();
    assert!(empty.is_empty());
    let _: () = redis::cmd("MULTI").query(&mut conn).unwrap();
    let _: () = redis::cmd("DISCARD").query(&mut conn).unwrap();

    // A script loaded through Rampart is on every shard.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('get', KEYS[1])")
        .query(&mut conn)
        .unwrap();
    let _: () = conn.set(&a, "from-a").unwrap();
    for key in [&a, &b] {
        let value: String = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(key)
            .query(&mut conn)
            .unwrap();
        assert_eq!(value, if key == &a { "from-a" } else { "changed" });
    }
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000000000000000000000000000000000000000")
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, vec![1, 0]);

    // WAIT after writes to both shards counts the replicas every write
    // reached: each shard has one, so 1; asking for more waits out the
    // timeout and still answers the fewest.
    let mut writer = proxy.conn();
    let _: () = writer.set(&a, "1").unwrap();
    let _: () = writer.set(&b, "2").unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut writer)
        .unwrap();
    assert_eq!(acked, 1);
    let acked: i64 = redis::cmd("WAIT")
        .arg(3)
        .arg(200)
        .query(&mut writer)
        .unwrap();
    assert_eq!(acked, 1);
    // A client that leaves during a WAIT that cannot finish frees its
    // connections: the next clients' WAITs still work.
    {
        let mut leaver = proxy.conn();
        let _: () = leaver.set(&a, "1").unwrap();
        let _: () = leaver.set(&b, "2").unwrap();
        leaver
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(redis::cmd("WAIT")
            .arg(3)
            .arg(0)
            .query::<i64>(&mut leaver)
            .is_err());
        for cluster in &shards {
            wait_until(
                "the WAIT to block on the node",
                Duration::from_secs(5),
                || {
                    cluster
                        .primary()
                        .info_field("clients", "blocked_clients")
                        .as_deref()
                        == Some("1")
                },
            );
        }
    }
    for cluster in &shards {
        wait_until(
            "the departed client's WAIT to end",
            Duration::from_secs(5),
            || {
                cluster
                    .primary()
                    .info_field("clients", "blocked_clients")
                    .as_deref()
                    == Some("0")
            },
        );
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut writer)
        .unwrap();
    assert_eq!(acked, 1);

    // A blocking pop on shard 1 gets what another client pushes there.
    let waiter = {
        let mut conn = proxy.conn();
        let b = b.clone() + ":list";
        std::thread::spawn(move || -> Option<(String, String)> {
            redis::cmd("BLPOP").arg(&b).arg(5).query(&mut conn).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let _: () = conn.rpush(b.clone() + ":list", "job").unwrap();
    let popped = waiter.join().unwrap();
    assert_eq!(popped, Some((b + ":list", "job".into())));
}

#[test]
fn scan_visits_every_key_of_every_shard() {
    let shards = clusters(3, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let written: BTreeSet<String> = (0..1000).map(|i| format!("scan:{i}")).collect();
    let mut pipe = redis::pipe();
    for key in &written {
        pipe.set(key, 1).ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();
    let _: () = conn.set("other", 1).unwrap();
    let mut seen = BTreeSet::new();
    let mut cursor: u64 = 0;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(50)
            .query(&mut conn)
            .unwrap();
        seen.extend(keys);
        calls += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
        assert!(calls < 10_000, "SCAN never ends");
    }
    assert_eq!(seen, written);
    // redis-rs's own iterator, as an application would use it.
    let iterated: BTreeSet<String> = conn
        .scan_match::<_, String>("scan:*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(iterated, written);
    // Keyless commands over the whole data set.
    let random: String = redis::cmd("RANDOMKEY").query(&mut conn).unwrap();
    assert!(random == "other" || written.contains(&random));
    let info: redis::InfoDict = redis::cmd("INFO").arg("keyspace").query(&mut conn).unwrap();
    let db0: String = info.get("db0").unwrap();
    assert!(db0.starts_with("keys=1001,"), "{db0}");
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    let size: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(size, 0);
    for cluster in &shards {
        let size: i64 = redis::cmd("DBSIZE")
            .query(&mut node_conn(cluster.primary()))
            .unwrap();
        assert_eq!(size, 0);
    }
    let nothing: Option<String> = redis::cmd("RANDOMKEY").query(&mut conn).unwrap();
    assert_eq!(nothing, None);
}

#[test]
fn messages_reach_subscribers_whatever_shard() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let client = proxy.client();
    let mut sub = client.get_connection().unwrap();
    let mut sharded = client.get_connection().unwrap();
    let channel_b = key_in(1, 2, "chan");
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("news").unwrap();
    pubsub.psubscribe("ne*").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // SSUBSCRIBE by slot: on the shard owning the channel.
    redis::cmd("SSUBSCRIBE")
        .arg(&channel_b)
        .exec(&mut sharded)
        .unwrap();
    sharded
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let mut conn = proxy.conn();
    let receivers: i64 = conn.publish("news", "hello").unwrap();
    assert_eq!(receivers, 2);
    let first = pubsub.get_message().unwrap();
    let second = pubsub.get_message().unwrap();
    let payloads: Vec<String> = [first, second]
        .iter()
        .map(|m| m.get_payload::<String>().unwrap())
        .collect();
    assert_eq!(payloads, ["hello", "hello"]);
    let receivers: i64 = redis::cmd("SPUBLISH")
        .arg(&channel_b)
        .arg("sharded")
        .query(&mut conn)
        .unwrap();
    assert_eq!(receivers, 1);
    let pushed = sharded.recv_response().unwrap();
    assert!(format!("{pushed:?}").contains("sharded"), "{pushed:?}");
    // A shard channel of the other shard needs a connection of its own.
    let channel_a = key_in(0, 2, "chan");
    let refused = redis::cmd("SSUBSCRIBE").arg(&channel_a).exec(&mut sharded);
    let text = format!("{refused:?} {:?}", sharded.recv_response());
    assert!(text.contains("use another connection"), "{text}");
}

/// Killing one shard's primary under load: that shard's writers pause
/// for the failover and lose nothing acknowledged; the other shard's
/// writers see no error and no pause.
#[test]
fn one_shard_fails_over_while_the_other_never_notices() {
    let mut shards = clusters(2, 2);
    let proxy = Arc::new(Proxy::start_with(&config(&shards, "")));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = |shard: usize| {
        let proxy = proxy.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conn = proxy.conn();
            let (mut acked, mut errors, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{}:{i}", key_in(shard, 2, "w"));
                let started = Instant::now();
                match conn.set::<_, _, ()>(&key, i) {
                    Ok(()) => acked.push(key),
                    Err(_) => {
                        errors += 1;
                        conn = proxy.conn();
                    }
                }
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (acked, errors, slowest)
        })
    };
    let (on_a, on_b) = (writer(0), writer(1));
    std::thread::sleep(Duration::from_millis(500));
    let old = shards[0].primary().addr();
    shards[0].nodes[0].kill();
    wait_failed_over(&proxy, &old);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (acked_a, errors_a, pause_a) = on_a.join().unwrap();
    let (acked_b, errors_b, slowest_b) = on_b.join().unwrap();
    eprintln!(
        "s0: {} acknowledged, {errors_a} failed, longest pause {pause_a:?}; s1: {} acknowledged, {errors_b} failed, slowest {slowest_b:?}",
        acked_a.len(),
        acked_b.len()
    );
    assert_eq!(errors_b, 0, "shard s1's writes failed during s0's failover");
    // A stall check, not a measurement: anything that made s1 wait for
    // s0's failover would last at least as long as detecting s0's primary
    // dead (down_after_ms = 500).
    assert!(
        slowest_b < Duration::from_millis(400),
        "shard s1's writes paused {slowest_b:?} while s0 failed over ({pause_a:?})"
    );
    assert!(errors_a <= 2, "{errors_a} writes to s0 failed");
    assert_eq!(proxy.topology()["shards"][1]["epoch"], 1);
    // Nothing acknowledged on s0 is lost.
    let mut conn = proxy.conn();
    let lost: Vec<&String> = acked_a
        .iter()
        .filter(|key| !conn.exists::<_, bool>(*key).unwrap())
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(acked_a.len() > 10 && acked_b.len() > 10);
}

#[test]
fn slot_ownership_is_checked_at_start() {
    let check = |slots: [&str; 2]| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\nslots = \"{}\"\n[shards.b]\nnodes = [\"127.0.0.1:2\"]\nslots = \"{}\"\n",
            slots[0], slots[1]
        );
        rampart::Config::parse(&text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(check(["0-8191", "8192-16383"]).is_ok());
    let gap = check(["0-8000", "8192-16383"]).unwrap_err();
    assert!(
        gap.contains("slots 8001-8191 are owned by no shard"),
        "{gap}"
    );
    let twice = check(["0-8192", "8192-16383"]).unwrap_err();
    assert!(
        twice.contains("slot 8192 is already owned by shard 'a'"),
        "{twice}"
    );
    let missing = rampart::Config::parse(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\n[shards.b]\nnodes = [\"127.0.0.1:2\"]\nslots = \"0-16383\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(missing.contains("shards.a.slots"), "{missing}");
    let shared = rampart::Config::parse(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[shards.a]\nnodes = [\"127.0.0.1:1\"]\nslots = \"0-8191\"\n[shards.b]\nnodes = [\"127.0.0.1:1\"]\nslots = \"8192-16383\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(shared.contains("also a node of shard 'a'"), "{shared}");
}

/// Rampart finds a command's keys where Redis itself does (`COMMAND
/// GETKEYS` on a real node), for every form of key spec.
#[test]
fn keys_are_found_where_redis_finds_them() {
    let node = RedisNode::start(None);
    let mut conn = node_conn(&node);
    let commands: &[&[&str]] = &[
        &["GET", "k"],
        &["SET", "k", "v", "EX", "10"],
        &["MSET", "a", "1", "b", "2", "c", "3"],
        &["MGET", "a", "b", "c"],
        &["DEL", "a", "b"],
        &["RENAME", "a", "b"],
        &["SMOVE", "a", "b", "m"],
        &["LMOVE", "a", "b", "LEFT", "RIGHT"],
        &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
        &["BLPOP", "a", "b", "c", "0"],
        &["BZPOPMIN", "a", "b", "0"],
        &["EVAL", "return 1", "2", "a", "b", "x", "y"],
        &[
            "EVALSHA",
            "0000000000000000000000000000000000000000",
            "1",
            "a",
            "x",
        ],
        &["FCALL", "f", "2", "a", "b", "x"],
        &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
        &["ZINTERCARD", "2", "a", "b", "LIMIT", "1"],
        &["SINTERCARD", "3", "a", "b", "c"],
        &["LMPOP", "2", "a", "b", "LEFT", "COUNT", "2"],
        &["BLMPOP", "1", "2", "a", "b", "RIGHT"],
        &["ZMPOP", "1", "a", "MIN"],
        &["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"],
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", "0"],
        &["SORT", "l", "BY", "w_*", "LIMIT", "0", "2", "STORE", "d"],
        &["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"],
        &["OBJECT", "ENCODING", "k"],
        &["XINFO", "STREAM", "s"],
        &["MEMORY", "USAGE", "k"],
        &["BITOP", "AND", "d", "a", "b"],
        &["PFMERGE", "d", "a", "b"],
        &["COPY", "a", "b"],
        &["MIGRATE", "h", "1", "", "0", "5", "KEYS", "a", "b"],
        &["LCS", "a", "b"],
        &["GETEX", "k", "PERSIST"],
    ];
    for command in commands {
        let redis_keys: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(*command)
            .query(&mut conn)
            .unwrap_or_default();
        let req = rampart::resp::Request::from_args(command);
        let ours: Vec<String> = rampart::resp::keyspecs::keys(&req)
            .unwrap()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(ours, redis_keys, "{command:?}");
    }
    // Shard channels are not keys to COMMAND GETKEYS, but they place
    // SPUBLISH and SSUBSCRIBE by slot, as Redis Cluster does.
    let spublish = rampart::resp::Request::from_args(&["SPUBLISH", "ch", "m"]);
    assert_eq!(rampart::resp::keyspecs::keys(&spublish).unwrap().len(), 1);
}

/// A client logged in as a node ACL user through Rampart: commands over
/// several shards run as that user on every shard, so the nodes' ACLs
/// decide, as on one Redis.
/// Makes an ACL user (password `secret`) through Rampart, waits until
/// every shard's primary has it, and returns a connection logged in as it.
fn user(proxy: &Proxy, shards: &[Cluster], name: &str, rules: &[&str]) -> redis::Connection {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(">secret")
        .arg(rules)
        .query(&mut proxy.conn())
        .unwrap();
    for cluster in shards {
        wait_until("the user on every node", Duration::from_secs(5), || {
            redis::cmd("ACL")
                .arg("GETUSER")
                .arg(name)
                .query::<Value>(&mut node_conn(cluster.primary()))
                .is_ok_and(|v| v != Value::Nil)
        });
    }
    let mut conn = proxy.conn();
    let _: () = redis::cmd("AUTH")
        .arg(name)
        .arg("secret")
        .query(&mut conn)
        .unwrap();
    conn
}

/// `MSET` and `MGET` of `a` and `b`, keys on different shards.
fn split_set_and_get(conn: &mut redis::Connection, a: &str, b: &str) {
    let _: () = redis::cmd("MSET")
        .arg(a)
        .arg("1")
        .arg(b)
        .arg("2")
        .query(conn)
        .unwrap();
    let values: Vec<String> = redis::cmd("MGET").arg(a).arg(b).query(conn).unwrap();
    assert_eq!(values, ["1", "2"]);
}

#[test]
fn acl_users_reach_every_shard_as_themselves() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let (a, b) = (key_in(0, 2, "app:a"), key_in(1, 2, "app:b"));
    // ACL SETUSER through Rampart reaches every node of every shard.
    let mut app = user(&proxy, &shards, "app", &["~{app:*", "+@all"]);
    split_set_and_get(&mut app, &a, &b);
    let size: i64 = redis::cmd("DBSIZE").query(&mut app).unwrap();
    assert_eq!(size, 2);
    // A key outside the user's pattern, on the other shard: the node's
    // own NOPERM.
    let other = key_in(1, 2, "other");
    let refused = redis::cmd("DEL")
        .arg(&a)
        .arg(&other)
        .query::<i64>(&mut app)
        .unwrap_err();
    assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
}

/// The connections a user's command split over shards runs on, logged in
/// as that user, are used again by that user alone: pooled with the
/// others, they would run the next client's transaction as that user.
#[test]
fn a_users_split_commands_lend_their_connections_to_that_user_alone() {
    let shards = clusters(2, 1);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let (a, b) = (key_in(0, 2, "app:a"), key_in(1, 2, "app:b"));
    let mut app = user(&proxy, &shards, "app", &["~{app:*", "+@all"]);
    // Split writes, a split read, and a WAIT on both shards' primaries.
    let opened = |cluster: &Cluster| {
        let field = cluster
            .primary()
            .info_field("stats", "total_connections_received");
        field.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let before: Vec<u64> = shards.iter().map(opened).collect();
    for _ in 0..20 {
        split_set_and_get(&mut app, &a, &b);
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(0).query(&mut app).unwrap();
        assert_eq!(acked, 1);
    }
    // Used again, not opened anew each time.
    for (cluster, before) in shards.iter().zip(before) {
        let more = opened(cluster) - before;
        assert!(more <= 8, "{more} connections opened for one client");
    }
    drop(app);
    // Transactions on either shard borrow pooled connections, with
    // Rampart's own rights.
    for i in 0..8 {
        let mut other = proxy.conn();
        let got: (String,) = redis::pipe()
            .atomic()
            .set(key_in(i % 2, 2, "other"), i)
            .query(&mut other)
            .unwrap();
        assert_eq!(got.0, "OK");
    }
}

/// With several shards `MULTI` is deferred until the transaction's first
/// command says which shard it runs on. A client whose dedicated
/// connection (kept from its last transaction) died with a failover must
/// get a working transaction next, and the one after: nothing of the new
/// one was on the dead connection, so nothing of it is lost.
#[test]
fn a_transaction_after_a_failover_runs_on_a_new_connection() {
    // Two replicas: one is left to confirm writes after the failover.
    let mut shards = clusters(2, 2);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let key = key_in(0, 2, "tx");
    let mut conn = proxy.conn();
    let transaction = |conn: &mut redis::Connection, value: i64| {
        redis::pipe()
            .atomic()
            .set(format!("{key}:a"), value)
            .ignore()
            .set(format!("{key}:b"), value)
            .ignore()
            .query::<()>(conn)
    };
    transaction(&mut conn, 1).expect("before the failover");
    let old = shards[0].primary().addr();
    shards[0].nodes[0].kill();
    wait_failed_over(&proxy, &old);
    transaction(&mut conn, 2).expect("the first transaction after the failover");
    transaction(&mut conn, 3).expect("and the next");
    let (a, b): (i64, i64) = redis::pipe()
        .get(format!("{key}:a"))
        .get(format!("{key}:b"))
        .query(&mut conn)
        .unwrap();
    assert_eq!((a, b), (3, 3));
}

/// A deferred `MULTI` (several shards) that the node refuses when it is
/// finally sent: the client heard OK for MULTI and queued on, so nothing
/// it queued may run outside a transaction. Each command is refused with
/// the node's error and EXEC answers EXECABORT, as Redis does after an
/// error while queueing.
#[test]
fn a_transaction_whose_multi_the_node_refuses_runs_nothing() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut admin = proxy.conn();
    let mut app = user(&proxy, &shards, "nomulti", &["~*", "+@all", "-multi"]);
    let key = key_in(0, 2, "tx");
    let (a, b) = (format!("{key}:a"), format!("{key}:b"));
    let multi: String = redis::cmd("MULTI").query(&mut app).unwrap();
    assert_eq!(multi, "OK");
    for k in [&a, &b] {
        let refused = redis::cmd("INCR")
            .arg(k)
            .query::<i64>(&mut app)
            .unwrap_err();
        assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
    }
    let exec = redis::cmd("EXEC").query::<Value>(&mut app).unwrap_err();
    assert_eq!(exec.code(), Some("EXECABORT"), "{exec}");
    let values: (Option<i64>, Option<i64>) =
        redis::pipe().get(&a).get(&b).query(&mut admin).unwrap();
    assert_eq!(values, (None, None), "nothing of the transaction ran");
    // The session is out of the transaction: commands run again.
    let _: () = redis::cmd("SET").arg(&a).arg(1).query(&mut app).unwrap();
    let again: String = redis::cmd("MULTI").query(&mut app).unwrap();
    assert_eq!(again, "OK");
    let _: Value = redis::cmd("DISCARD").query(&mut app).unwrap();
}

/// A RESP3 subscriber's connection is piped to the first shard's primary
/// and may send any command: one on another shard's keys, or about the
/// whole data set, would run on the wrong node (a write there is lost to
/// every other client), so it is refused; the pipe's own shard's keys
/// work as usual.
#[test]
fn a_subscriber_cannot_reach_another_shards_keys() {
    use std::io::{Read, Write};
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let here = key_in(0, 2, "here");
    let there = key_in(1, 2, "there");
    let mut subscriber = std::net::TcpStream::connect(proxy.addr).unwrap();
    subscriber
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let commands = format!(
        "HELLO 3\r\nSUBSCRIBE news\r\nSET {here} 1\r\nSET {there} 1\r\nFLUSHALL\r\nPING done\r\n"
    );
    subscriber.write_all(commands.as_bytes()).unwrap();
    let mut heard = String::new();
    let mut chunk = [0u8; 4096];
    while !heard.contains("done") {
        let n = subscriber
            .read(&mut chunk)
            .expect("the subscriber's replies");
        assert!(n > 0, "closed after: {heard}");
        heard.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(heard.contains("+OK"), "{heard}");
    assert_eq!(heard.matches("reaches beyond it").count(), 2, "{heard}");
    let mut direct: Vec<_> = shards.iter().map(|c| node_conn(c.primary())).collect();
    let on_first: Option<String> = direct[0].get(&there).unwrap();
    assert_eq!(on_first, None, "another shard's key written on the first");
    let kept: i64 = direct[0].get(&here).unwrap();
    assert_eq!(kept, 1, "FLUSHALL ran on the first shard");
    let read: Option<i64> = proxy.conn().get(&there).unwrap();
    assert_eq!(read, None);
}

/// How many patterns the node at `addr` has subscribers for: the relay
/// of keyspace notifications subscribes to two.
fn patterns_on(addr: &str) -> i64 {
    redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c))
        .unwrap_or(-1)
}

/// The next `n` keys named by `set` events the subscriber hears.
fn set_events(pubsub: &mut redis::PubSub, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let message = pubsub.get_message().expect("a keyspace notification");
            assert_eq!(message.get_channel_name(), "__keyevent@0__:set");
            message.get_payload::<String>().unwrap()
        })
        .collect()
}

/// Redis raises a key's notifications on the node that holds it; through
/// Rampart a subscriber hears every shard's, each once, and still after
/// the second shard failed over (the relay follows its new primary).
#[test]
fn keyspace_notifications_come_from_every_shard() {
    // Two replicas each: s1 keeps one to meet its quorum after failing over.
    let mut shards = clusters(2, 2);
    let proxy = Proxy::start_with(&config(&shards, ""));
    // Through Rampart: every shard's primary, then every replica, so that
    // a promoted replica raises them too.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("KEA")
        .exec(&mut proxy.conn())
        .unwrap();
    wait_until("the setting on every node", Duration::from_secs(5), || {
        shards.iter().flat_map(|c| c.nodes.iter()).all(|node| {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query(&mut node_conn(node))
                .unwrap();
            pair[1].len() == 3
        })
    });
    let mut sub = proxy.client().get_connection().unwrap();
    let mut pubsub = sub.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut conn = proxy.conn();
    let second = shards[1].primary().addr();
    wait_until("the relay on s1", Duration::from_secs(10), || {
        patterns_on(&second) == 2
    });
    let (a, b) = (key_in(0, 2, "ka"), key_in(1, 2, "kb"));
    let _: () = conn.set(&a, 1).unwrap();
    let _: () = conn.set(&b, 1).unwrap();
    assert_eq!(set_events(&mut pubsub, 2), BTreeSet::from([a.clone(), b]));
    // Once each: the next event is the next write's.
    let _: () = conn.set(&a, 2).unwrap();
    assert_eq!(set_events(&mut pubsub, 1), BTreeSet::from([a.clone()]));

    shards[1].nodes[0].kill();
    wait_until("shard s1 to fail over", Duration::from_secs(15), || {
        let primary = proxy.topology()["shards"][1]["primary"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !primary.is_empty() && primary != second
    });
    let promoted = proxy.topology()["shards"][1]["primary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_until(
        "the relay on s1's new primary",
        Duration::from_secs(10),
        || patterns_on(&promoted) == 2,
    );
    let b2 = key_in(1, 2, "kb2");
    let _: () = conn.set(&b2, 1).unwrap();
    let _: () = conn.set(&a, 3).unwrap();
    assert_eq!(set_events(&mut pubsub, 2), BTreeSet::from([a, b2]));
}

/// `INFO clients` counts the clients blocked on every shard, as one
/// Redis counts all of its own: a client waiting for another to block
/// (as Redis's own tests do) sees it whatever shard it blocks on.
#[test]
fn info_counts_clients_blocked_on_every_shard() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let key = key_in(1, 2, "queue");
    let client = proxy.client();
    let waiter = std::thread::spawn(move || {
        let mut conn = client.get_connection().unwrap();
        let got: Option<(String, String)> = conn.brpop(&key, 10.0).unwrap();
        got
    });
    let blocked = || -> String {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut proxy.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    wait_until(
        "the pop to count as blocked",
        Duration::from_secs(5),
        || blocked() == "1",
    );
    let _: () = proxy.conn().lpush(key_in(1, 2, "queue"), "job").unwrap();
    assert!(waiter.join().unwrap().is_some());
    wait_until("no client blocked", Duration::from_secs(5), || {
        blocked() == "0"
    });
}

/// `MONITOR` over several shards shows every shard's commands: each
/// shard's primary is watched and the lines merged as they come, with
/// Rampart's own commands left out and one `+OK`. When one shard's
/// primary changes, the `MONITOR` ends, as it does over one shard, so the
/// client watches the new primary once it connects again.
#[test]
fn monitor_watches_every_shard() {
    let mut shards = clusters(2, 1);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut conn = proxy.conn();
    let mut monitor = proxy.conn();
    redis::cmd("MONITOR").exec(&mut monitor).unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (a, b) = (key_in(0, 2, "ma"), key_in(1, 2, "mb"));
    // At once: the other shard's feed already watches.
    let _: () = conn.set(&b, "on-second").unwrap();
    let _: () = conn.set(&a, "on-first").unwrap();
    // Probe rounds pass on both shards meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let _: () = conn.set(&a, "last").unwrap();
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("last")) {
        let line = monitor.recv_response();
        let line = line.unwrap_or_else(|e| panic!("{e}; so far:\n{}", lines.join("\n")));
        lines.push(format!("{line:?}"));
    }
    let all = lines.join("\n");
    assert!(
        all.contains("on-first") && all.contains("on-second"),
        "{all}"
    );
    for internal in ["INFO", "__rampart__", "HELLO", "Okay"] {
        assert!(!all.contains(internal), "{internal} in:\n{all}");
    }

    // A user who may not MONITOR hears the nodes' refusal and carries on.
    let mut refused = user(&proxy, &shards, "nomon", &["~*", "+@all", "-monitor"]);
    let error = redis::cmd("MONITOR").exec(&mut refused).unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
    std::thread::sleep(Duration::from_millis(200));
    let pong: String = redis::cmd("PING").query(&mut refused).unwrap();
    assert_eq!(pong, "PONG");

    shards[1].nodes[0].kill();
    loop {
        match monitor.recv_response() {
            Ok(_) => continue,
            Err(e) if e.is_connection_dropped() => break,
            Err(e) => panic!("MONITOR went on after shard s1's primary died ({e})"),
        }
    }
}

/// A `MONITOR`'s `+OK` comes once every shard's feed watches: a command
/// the client sends right after it is seen, even on a shard whose node is
/// slow to answer (here 150 ms each way, through a forwarder).
#[test]
fn monitor_sees_every_shard_from_its_first_ok() {
    use rampart_tests::forwarder::Forwarder;
    let (first, second) = (Cluster::start(0), Cluster::start(0));
    let slow = Forwarder::start(second.primary().port);
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[probe]\ninterval_ms = 100\ntimeout_ms = 2000\ndown_after_ms = 10000\n\
         [shards.s0]\nnodes = [\"{}\"]\nslots = \"0-8191\"\n[shards.s1]\nnodes = [\"{}\"]\nslots = \"8192-16383\"\n",
        first.primary().addr(),
        slow.addr(),
    );
    let proxy = Proxy::start_with(&text);
    let b = key_in(1, 2, "slow");
    let mut conn = proxy.conn();
    let _: () = conn.set(&b, "warm").unwrap();
    slow.set_delay(Duration::from_millis(150));
    let mut monitor = proxy.conn();
    redis::cmd("MONITOR").exec(&mut monitor).unwrap();
    let _: () = conn.set(&b, "on-second").unwrap();
    monitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The forwarder hides whose connections the probes are: their lines
    // come too, so the wait is bounded by time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the slow shard's command was not seen"
        );
        let line = monitor.recv_response();
        let line = line.unwrap_or_else(|e| panic!("the slow shard's command was not seen: {e}"));
        if format!("{line:?}").contains("on-second") {
            break;
        }
    }
}

/// Client-side caching over several shards: the client hears of every
/// change to the keys it read, whichever shard holds them, and of nothing
/// else; a flush on every shard; and a key read once is reported on each
/// later change.
#[test]
fn client_tracking_tells_of_the_keys_read_on_every_shard() {
    let shards = clusters(2, 1);
    let text = config(&shards, "");
    let text = text.replace(
        "[shards.s1.replication]",
        "read_from = \"replicas\"\n[shards.s1.replication]",
    );
    let proxy = Proxy::start_with(&text);
    let mut tracking = Resp3::connect(proxy.port());
    assert_eq!(tracking.call(&["CLIENT", "TRACKING", "ON"]), "+OK\r\n");
    let (a, b, unread) = (key_in(0, 2, "ta"), key_in(1, 2, "tb"), key_in(1, 2, "tc"));
    tracking.call(&["GET", &a]);
    tracking.call(&["MGET", &b, &b]);
    let mut writer = proxy.conn();
    let _: () = writer.set(&unread, 1).unwrap();
    let _: () = writer.set(&a, 1).unwrap();
    let _: () = writer.set(&b, 1).unwrap();
    let told = tracking.invalidated(|keys| keys.len() >= 2);
    assert_eq!(told, BTreeSet::from([a.clone(), b.clone()]));
    let _: () = writer.set(&b, 2).unwrap();
    let _: () = writer.set(&unread, 2).unwrap();
    let told = tracking.invalidated(|keys| !keys.is_empty());
    assert_eq!(told, BTreeSet::from([b.clone()]));
    // Its replies and the invalidations share the connection in order.
    assert_eq!(tracking.call(&["GET", &b]), "$1\r\n2\r\n");
    let _: () = redis::cmd("FLUSHALL").query(&mut writer).unwrap();
    let told = tracking.invalidated(|keys| keys.contains("*"));
    assert!(told.contains("*"), "{told:?}");

    // Its reads go to the primary, whatever `read_from` says: a replica
    // may not have a write it was told about. Others' reads do not.
    let replica = &shards[1].nodes[1];
    let mut other = Resp3::connect(proxy.port());
    wait_until("RESP3 reads on the replica", Duration::from_secs(5), || {
        let before = replica.calls("get");
        other.call(&["GET", &b]);
        replica.calls("get") > before
    });
    let before = replica.calls("get") + replica.calls("mget");
    for _ in 0..5 {
        tracking.call(&["GET", &b]);
        tracking.call(&["MGET", &b, &a]);
    }
    assert_eq!(replica.calls("get") + replica.calls("mget"), before);

    // A script's declared keys are tracked.
    let scripted = key_in(1, 2, "ts");
    let script = "return redis.call('get', KEYS[1])";
    tracking.call(&["EVAL", script, "1", &scripted]);
    let _: () = writer.set(&scripted, 1).unwrap();
    let told = tracking.invalidated(|keys| keys.contains(&scripted));
    assert!(told.contains(&scripted), "{told:?}");

    // Off: nothing more.
    assert_eq!(tracking.call(&["CLIENT", "TRACKING", "OFF"]), "+OK\r\n");
    tracking.invalidated(|_| true);
    let _: () = writer.set(&a, 3).unwrap();
    assert_eq!(tracking.call(&["PING"]), "+PONG\r\n");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tracking.call(&["PING"]), "+PONG\r\n");
    assert!(tracking.pushes.is_empty(), "{:?}", tracking.pushes);
}

/// `BCAST` with prefixes over several shards, and `OPTIN` with `CLIENT
/// CACHING yes`; a tracking client is disconnected when a shard's primary
/// changes (its cache must be flushed).
#[test]
fn client_tracking_modes_over_shards() {
    let mut shards = clusters(2, 1);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut writer = proxy.conn();
    let mut bcast = Resp3::connect(proxy.port());
    let answer = bcast.call(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "{p:"]);
    assert_eq!(answer, "+OK\r\n");
    let (p0, p1, q1) = (key_in(0, 2, "p:"), key_in(1, 2, "p:"), key_in(1, 2, "q:"));
    for key in [&q1, &p0, &p1] {
        let _: () = writer.set(key, 1).unwrap();
    }
    let told = bcast.invalidated(|keys| keys.len() >= 2);
    assert_eq!(told, BTreeSet::from([p0.clone(), p1.clone()]));

    let mut optin = Resp3::connect(proxy.port());
    assert_eq!(
        optin.call(&["CLIENT", "TRACKING", "ON", "OPTIN"]),
        "+OK\r\n"
    );
    let (x, y) = (key_in(0, 2, "ox"), key_in(1, 2, "oy"));
    optin.call(&["GET", &x]);
    assert_eq!(optin.call(&["CLIENT", "CACHING", "YES"]), "+OK\r\n");
    optin.call(&["GET", &y]);
    let _: () = writer.set(&x, 1).unwrap();
    let _: () = writer.set(&y, 1).unwrap();
    let told = optin.invalidated(|keys| !keys.is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let told: BTreeSet<String> = told.union(&optin.invalidated(|_| true)).cloned().collect();
    assert_eq!(told, BTreeSet::from([y.clone()]));

    // Tracking, then subscribed (piped to the first shard): what it reads
    // there is tracked, and the invalidations come between the messages.
    let mut subscriber = Resp3::connect(proxy.port());
    assert_eq!(subscriber.call(&["CLIENT", "TRACKING", "ON"]), "+OK\r\n");
    subscriber.send(&["SUBSCRIBE", "news"]);
    let confirmed = subscriber.frame().expect("a confirmation");
    assert!(
        confirmed.starts_with(b">3\r\n$9\r\nsubscribe"),
        "{confirmed:?}"
    );
    let read = key_in(0, 2, "sub");
    assert_eq!(subscriber.call(&["GET", &read]), "_\r\n");
    let _: () = writer.set(&read, 1).unwrap();
    let told = subscriber.invalidated(|keys| !keys.is_empty());
    assert_eq!(told, BTreeSet::from([read.clone()]));

    shards[1].nodes[0].kill();
    assert!(
        optin.closed_within(Duration::from_secs(15)),
        "still connected"
    );
}

/// `CLIENT TRACKING`, `CACHING`, `TRACKINGINFO` and `GETREDIR` over
/// several shards answer as Redis does, byte for byte, errors included.
#[test]
fn client_tracking_answers_as_redis_does_over_shards() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let node_port = shards[0].nodes[0]
        .addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let script: &[&[&str]] = &[
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "GETREDIR"],
        &["CLIENT", "CACHING", "yes"],
        &["CLIENT", "TRACKING", "on", "prefix", "a"],
        &["CLIENT", "TRACKING", "on", "optin", "optout"],
        &["CLIENT", "TRACKING", "on", "bcast", "optin"],
        &["CLIENT", "TRACKING", "on", "optin"],
        &["CLIENT", "CACHING", "no"],
        &["CLIENT", "CACHING", "yes"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "GETREDIR"],
        &["CLIENT", "TRACKING", "on", "optout"],
        &["CLIENT", "TRACKING", "on", "bcast"],
        &["CLIENT", "TRACKING", "off"],
        &["CLIENT", "TRACKING", "on", "optout", "noloop"],
        &["CLIENT", "CACHING", "no"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "TRACKING", "off"],
        &[
            "CLIENT", "TRACKING", "on", "bcast", "prefix", "a", "prefix", "ab",
        ],
        &["CLIENT", "TRACKING", "on", "bcast", "prefix", "b", "noloop"],
        &["CLIENT", "TRACKING", "on", "bcast", "prefix", "ba"],
        &["CLIENT", "TRACKING", "on", "bcast", "prefix", "c"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "TRACKING", "maybe"],
        &["CLIENT", "TRACKING", "on", "sometimes"],
        &["CLIENT", "TRACKING"],
        &["CLIENT", "CACHING"],
        &["CLIENT", "TRACKING", "off"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "TRACKING", "on", "optin"],
        &["RESET"],
        &["CLIENT", "TRACKINGINFO"],
        &["CLIENT", "GETREDIR"],
    ];
    let mut rampart = Resp3::connect(proxy.port());
    let mut redis = Resp3::connect(node_port);
    for args in script {
        assert_eq!(rampart.call(args), redis.call(args), "{args:?}");
    }
    // A redirect to a client that does not exist, twice, or to no number;
    // RESP2 without a redirect (accepted: it hears nothing, as on Redis).
    let (mut rampart, mut redis) = (Resp3::connect(proxy.port()), Resp3::connect(node_port));
    let script: &[&[&str]] = &[
        &["CLIENT", "TRACKING", "on", "redirect", "987654"],
        &["CLIENT", "TRACKING", "on", "redirect", "x"],
        &["CLIENT", "TRACKING", "on", "redirect"],
        &["HELLO", "2"],
        &["CLIENT", "TRACKING", "on"],
        &["CLIENT", "TRACKINGINFO"],
    ];
    for args in script {
        let (ours, theirs) = (rampart.call(args), redis.call(args));
        if args[0] != "HELLO" {
            assert_eq!(ours, theirs, "{args:?}");
        }
    }
    let own = rampart.id();
    let twice = [
        "CLIENT", "TRACKING", "on", "redirect", &own, "redirect", &own,
    ];
    assert_eq!(
        rampart.call(&twice),
        "-ERR A client can only redirect to a single other client\r\n"
    );
}

/// `CLIENT TRACKING ... REDIRECT <id>` over several shards: the
/// invalidations of every shard reach the target, as messages on
/// `__redis__:invalidate` for a subscribed RESP2 target and as pushes for
/// a RESP3 one; once the target is gone, a RESP3 tracking client is told
/// (`tracking-redir-broken`), once.
#[test]
fn client_tracking_redirects_over_shards() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let mut writer = proxy.conn();
    let (a, b) = (key_in(0, 2, "ra"), key_in(1, 2, "rb"));

    let mut target = Resp3::connect_resp2(proxy.port());
    let target_id = target.id();
    let subscribed = target.call(&["SUBSCRIBE", "__redis__:invalidate"]);
    assert_eq!(
        subscribed,
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n"
    );
    let mut tracker = Resp3::connect_resp2(proxy.port());
    let on = tracker.call(&["CLIENT", "TRACKING", "on", "REDIRECT", &target_id]);
    assert_eq!(on, "+OK\r\n");
    assert_eq!(
        tracker.call(&["CLIENT", "GETREDIR"]),
        format!(":{target_id}\r\n")
    );
    tracker.call(&["GET", &a]);
    tracker.call(&["GET", &b]);
    let _: () = writer.set(&a, 1).unwrap();
    let _: () = writer.set(&b, 1).unwrap();
    let mut told = BTreeSet::new();
    while told.len() < 2 {
        let frame = target.frame().expect("a message");
        let text = String::from_utf8_lossy(&frame).into_owned();
        let header = "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n";
        assert!(text.starts_with(header), "{text}");
        told.insert(text.split("\r\n").nth(7).unwrap_or_default().to_string());
    }
    assert_eq!(told, BTreeSet::from([a.clone(), b.clone()]));

    let mut target = Resp3::connect(proxy.port());
    let target_id = target.id();
    let mut tracker = Resp3::connect(proxy.port());
    let on = tracker.call(&["CLIENT", "TRACKING", "on", "REDIRECT", &target_id]);
    assert_eq!(on, "+OK\r\n");
    tracker.call(&["GET", &b]);
    let _: () = writer.set(&b, 2).unwrap();
    assert_eq!(
        target.invalidated(|keys| !keys.is_empty()),
        BTreeSet::from([b.clone()])
    );

    drop(target);
    std::thread::sleep(Duration::from_millis(200));
    let _: () = writer.set(&b, 3).unwrap();
    let _: () = writer.set(&b, 4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let info = tracker.call(&["CLIENT", "TRACKINGINFO"]);
    assert!(info.contains("broken_redirect"), "{info}");
    let broken = format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{target_id}\r\n");
    let pushes: Vec<String> = tracker
        .pushes
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(pushes, [broken], "told once, and nothing else");
}

/// Invalidations a client does not take (here it waits in `BLPOP`, behind
/// which they queue) count against its memory caps: past them it is
/// evicted, and Rampart does not grow; others carry on.
#[test]
fn a_tracking_client_that_takes_no_invalidations_is_evicted() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, "[limits]\nclient_output_hard_mb = 1"));
    let mut tracking = Resp3::connect(proxy.port());
    assert_eq!(
        tracking.call(&["CLIENT", "TRACKING", "ON", "BCAST"]),
        "+OK\r\n"
    );
    tracking.send(&["BLPOP", "never", "0"]);
    // A redirect target that does not take them is evicted the same way,
    // and the client redirecting to it stays.
    let mut target = Resp3::connect(proxy.port());
    let target_id = target.id();
    let mut redirecting = Resp3::connect(proxy.port());
    let on = ["CLIENT", "TRACKING", "ON", "BCAST", "REDIRECT", &target_id];
    assert_eq!(redirecting.call(&on), "+OK\r\n");
    target.send(&["BLPOP", "never", "0"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut writer = proxy.conn();
    let long = "x".repeat(1000);
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.set(format!("{i}{long}"), 1).ignore();
    }
    pipe.exec(&mut writer).unwrap();
    for (who, conn) in [("tracking", &mut tracking), ("target", &mut target)] {
        let closed = conn.closed_within(Duration::from_secs(10));
        assert!(closed, "{who}: still connected");
    }
    assert_eq!(redirecting.call(&["PING"]), "+PONG\r\n");
    let pong: String = redis::cmd("PING").query(&mut writer).unwrap();
    assert_eq!(pong, "PONG");
}

/// An invalidation never reaches the client before the reply to a read it
/// sent earlier: here the read's reply (8 MB) is still on its way from
/// the node when the invalidation of the write right behind it arrives on
/// the feed. (An attempt where the write overtook the read on its way to
/// the node proves nothing, and is made again.)
#[test]
fn an_invalidation_comes_after_the_reply_to_an_earlier_read() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    let big = key_in(1, 2, "big");
    let value = "x".repeat(8 * 1024 * 1024);
    let mut writer = proxy.conn();
    for attempt in 0.. {
        assert!(attempt < 10, "the write overtook the read every time");
        let _: () = writer.set(&big, &value).unwrap();
        let mut tracking = Resp3::connect(proxy.port());
        assert_eq!(tracking.call(&["CLIENT", "TRACKING", "ON"]), "+OK\r\n");
        tracking.send(&["GET", &big]);
        std::thread::sleep(Duration::from_millis(5));
        let _: () = writer.set(&big, "small").unwrap();
        let first = tracking.frame().expect("the reply");
        let head = String::from_utf8_lossy(&first[..first.len().min(40)]).into_owned();
        assert!(head.starts_with('$'), "before the read's reply: {head}");
        if head.starts_with("$5\r\n") {
            continue;
        }
        let second = tracking.frame().expect("the invalidation");
        let text = String::from_utf8_lossy(&second).into_owned();
        assert!(text.starts_with(">2\r\n$10\r\ninvalidate\r\n"), "{text}");
        break;
    }
}

/// A user the nodes do not allow `CLIENT TRACKING` hears their refusal,
/// tracks nothing and carries on; so does a client when a shard's primary
/// cannot be reached.
#[test]
fn client_tracking_refused_by_the_nodes_is_the_clients_answer() {
    let shards = clusters(2, 0);
    let proxy = Proxy::start_with(&config(&shards, ""));
    drop(user(
        &proxy,
        &shards,
        "notrack",
        &["~*", "+@all", "-client|tracking"],
    ));
    let mut conn = Resp3::connect(proxy.port());
    assert_eq!(conn.call(&["AUTH", "notrack", "secret"]), "+OK\r\n");
    let refused = conn.call(&["CLIENT", "TRACKING", "ON"]);
    assert!(refused.starts_with("-NOPERM"), "{refused}");
    assert!(conn.call(&["CLIENT", "TRACKINGINFO"]).contains("off"));
    assert_eq!(conn.call(&["PING"]), "+PONG\r\n");

    // A shard's primary that cannot be reached: an error saying which, and
    // no tracking.
    let mut shards = shards;
    let dead = shards[1].nodes[0].addr();
    shards[1].nodes[0].kill();
    let mut other = Resp3::connect(proxy.port());
    let answer = other.call(&["CLIENT", "TRACKING", "ON"]);
    assert!(
        answer.starts_with("-ERR rampart: ") && answer.contains(&dead),
        "{answer}"
    );
    assert!(other.call(&["CLIENT", "TRACKINGINFO"]).contains("off"));
}
