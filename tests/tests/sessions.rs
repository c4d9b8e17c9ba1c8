//! Connection state that lives on a dedicated backend connection:
//! transactions, WATCH, blocking commands, databases, protocol switches,
//! and what happens when that connection is lost.

use std::time::Duration;

use rampart_tests::{wait_until, Cluster, Proxy, Setup};
use redis::{Commands, Value};

fn setup() -> (Cluster, Proxy) {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    (cluster, proxy)
}

/// The id, on the primary, of the backend connection whose last command
/// was `command` (how Rampart's dedicated connection can be found).
fn backend_conn_running(cluster: &Cluster, command: &str) -> Option<String> {
    cluster
        .primary()
        .cli(&["CLIENT", "LIST"])
        .lines()
        .find(|l| l.contains(&format!("cmd={command} ")))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
}

#[test]
fn a_transaction_whose_connection_dies_never_runs_half() {
    let (cluster, proxy) = setup();
    let mut c = proxy.conn();
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let queued: String = redis::cmd("SET")
        .arg("tx-a")
        .arg("1")
        .query(&mut c)
        .unwrap();
    assert_eq!(queued, "QUEUED");
    // Kill the dedicated connection holding the transaction.
    let id = backend_conn_running(&cluster, "set").expect("dedicated connection");
    cluster.primary().cli(&["CLIENT", "KILL", "ID", &id]);
    // The next command cannot join the transaction; it must not run alone.
    let next = redis::cmd("SET")
        .arg("tx-b")
        .arg("2")
        .query::<String>(&mut c);
    assert!(next.is_err(), "{next:?}");
    let exec = redis::cmd("EXEC").query::<Value>(&mut c).unwrap_err();
    assert_eq!(exec.code(), Some("EXECABORT"), "{exec}");
    // Nothing of the transaction was applied, and the client carries on.
    let mut direct = redis::Client::open(format!("redis://{}/", cluster.primary().addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(direct.get::<_, Option<String>>("tx-a").unwrap(), None);
    assert_eq!(direct.get::<_, Option<String>>("tx-b").unwrap(), None);
    let _: () = c.set("after", "ok").unwrap();
    assert_eq!(c.get::<_, String>("after").unwrap(), "ok");
}

#[test]
fn a_lost_watch_makes_exec_fail_rather_than_commit_unwatched() {
    let (cluster, proxy) = setup();
    let mut c = proxy.conn();
    redis::cmd("WATCH").arg("guarded").exec(&mut c).unwrap();
    let id = backend_conn_running(&cluster, "watch").expect("dedicated connection");
    cluster.primary().cli(&["CLIENT", "KILL", "ID", &id]);
    // Someone changes the key; the WATCH that would have noticed is gone.
    let _: () = proxy.conn().set("guarded", "theirs").unwrap();
    let mut failed = false;
    // MULTI may already fail; if it is accepted, EXEC must fail.
    match redis::cmd("MULTI").exec(&mut c) {
        Err(_) => failed = true,
        Ok(()) => {
            let _ = redis::cmd("SET")
                .arg("guarded")
                .arg("mine")
                .query::<Value>(&mut c);
            match redis::cmd("EXEC").query::<Value>(&mut c) {
                Err(_) | Ok(Value::Nil) => failed = true,
                Ok(_) => {}
            }
        }
    }
    assert!(failed, "an unwatched transaction committed");
    assert_eq!(c.get::<_, String>("guarded").unwrap(), "theirs");
}

#[test]
fn blocking_variants_and_databases() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();
    let _: () = c.rpush("src", "x").unwrap();
    let moved: String = redis::cmd("BLMOVE")
        .arg("src")
        .arg("dst")
        .arg("LEFT")
        .arg("RIGHT")
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(moved, "x");
    let _: () = c.zadd("zs", "m", 3).unwrap();
    let popped: Vec<String> = redis::cmd("BZPOPMIN")
        .arg("zs")
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(popped, ["zs", "m", "3"]);
    // A timeout comes back as nil, and the client is usable afterwards.
    let none: Value = redis::cmd("BLPOP")
        .arg("empty")
        .arg("0.1")
        .query(&mut c)
        .unwrap();
    assert_eq!(none, Value::Nil);

    // A pipeline that switches databases keeps every command in order.
    let replies: Vec<Value> = redis::pipe()
        .cmd("SELECT")
        .arg(2)
        .set("db-key", "two")
        .cmd("SELECT")
        .arg(0)
        .get("db-key")
        .cmd("SELECT")
        .arg(2)
        .get("db-key")
        .query(&mut c)
        .unwrap();
    let ok = Value::Okay;
    assert_eq!(
        replies,
        [
            ok.clone(),
            ok.clone(),
            ok.clone(),
            Value::Nil,
            ok,
            Value::BulkString(b"two".to_vec())
        ]
    );
}

#[test]
fn switching_protocol_while_pinned_keeps_the_database() {
    let (_cluster, proxy) = setup();
    let mut c = proxy.conn();
    redis::cmd("SELECT").arg(5).exec(&mut c).unwrap();
    let _: () = c.hset("h5", "f", "v").unwrap();
    let hello: Value = redis::cmd("HELLO").arg(3).query(&mut c).unwrap();
    assert!(matches!(hello, Value::Map(_)), "{hello:?}");
    // Still database 5, now answered in RESP3.
    let h: Value = redis::cmd("HGETALL").arg("h5").query(&mut c).unwrap();
    assert!(matches!(h, Value::Map(ref m) if m.len() == 1), "{h:?}");
    // HELLO inside a transaction is refused like Redis refuses it.
    redis::cmd("MULTI").exec(&mut c).unwrap();
    let err = redis::cmd("HELLO")
        .arg(2)
        .query::<Value>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    redis::cmd("DISCARD").exec(&mut c).unwrap();
}

#[test]
fn pooled_connections_come_back_clean() {
    let (cluster, proxy) = setup();
    // Many short transactions from one client reuse a small number of
    // dedicated connections instead of opening one each.
    let mut c = proxy.conn();
    for i in 0..50 {
        let _: () = redis::pipe()
            .atomic()
            .set("pool", i)
            .ignore()
            .query(&mut c)
            .unwrap();
        let _: i64 = c.get("pool").unwrap();
    }
    let connected: usize = cluster
        .primary()
        .info_field("clients", "connected_clients")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(connected < 15, "{connected} connections to the primary");
    // A connection given back after SELECT would leak the database to the
    // next borrower: it is not given back.
    let mut d = proxy.conn();
    redis::cmd("SELECT").arg(7).exec(&mut d).unwrap();
    redis::cmd("MULTI").exec(&mut d).unwrap();
    redis::cmd("SET").arg("in7").arg("x").exec(&mut d).unwrap();
    redis::cmd("EXEC").exec(&mut d).unwrap();
    drop(d);
    wait_until("the client to go", Duration::from_secs(2), || true);
    let mut e = proxy.conn();
    redis::cmd("MULTI").exec(&mut e).unwrap();
    redis::cmd("GET").arg("in7").exec(&mut e).unwrap();
    let got: Vec<Option<String>> = redis::cmd("EXEC").query(&mut e).unwrap();
    assert_eq!(got, [None]);
}

/// How many connections the primary has accepted since it started.
fn connections_received(cluster: &Cluster) -> u64 {
    let field = cluster
        .primary()
        .info_field("stats", "total_connections_received");
    field.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A connection logged in as a client's ACL user serves only clients
/// logged in as that user: pooled with the others, the next client to
/// borrow a connection would run as that user (with its rights, more or
/// fewer than its own). Kept apart, it is used again by the same user.
#[test]
fn a_users_connection_never_serves_another_client() {
    let (cluster, proxy) = setup();
    let mut admin = proxy.conn();
    let mut user = |name: &str| {
        let pattern = format!("~{name}:*");
        let rules = ["SETUSER", name, "on", ">secret", &pattern, "+@all"];
        redis::cmd("ACL").arg(&rules).exec(&mut admin).unwrap();
        let mut conn = proxy.conn();
        redis::cmd("AUTH")
            .arg(&[name, "secret"])
            .exec(&mut conn)
            .unwrap();
        conn
    };
    let mut app = user("app");
    // WAIT borrows a connection of the client's own for as long as it
    // blocks, then lends it back: the next WAIT uses it again.
    let opened = || connections_received(&cluster);
    let before = opened();
    for _ in 0..20 {
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(0).query(&mut app).unwrap();
        assert_eq!(acked, 1);
    }
    let more = opened() - before;
    assert!(
        more <= 2,
        "{more} connections opened for one client's WAITs"
    );
    drop(app);
    // Another user's transactions run as that user.
    let mut ops = user("ops");
    for i in 0..4 {
        let got: (String,) = redis::pipe()
            .atomic()
            .set(format!("ops:{i}"), i)
            .query(&mut ops)
            .unwrap();
        assert_eq!(got.0, "OK");
    }
    // Transactions borrow pooled connections: each runs with Rampart's
    // own rights, outside the user's key pattern too.
    for i in 0..8 {
        let mut other = proxy.conn();
        let got: (String,) = redis::pipe()
            .atomic()
            .set(format!("other:{i}"), i)
            .query(&mut other)
            .unwrap();
        assert_eq!(got.0, "OK");
    }
}
