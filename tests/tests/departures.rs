//! A client that leaves while blocked, with commands pipelined behind the
//! blocking one: as with Redis, nothing after the blocked command runs,
//! nothing is popped for the departed client, and nobody else's replies
//! shift. Checked for every blocking command, in db 0 and another, with a
//! half-close (ioredis's `stream.end()`) and a full close, on one shard and
//! on two.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use rampart_tests::{Cluster, Proxy, Setup};

/// RESP for one command.
fn resp(args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Leave {
    HalfClose,
    Close,
}

/// One blocking command (and what proves an element was or was not taken
/// from its source).
struct Case {
    name: &'static str,
    /// Prepares the source (so the command would block).
    setup: &'static [&'static [&'static str]],
    blocking: &'static [&'static str],
    /// Makes an element available once the client left.
    feed: &'static [&'static str],
    /// How many elements must still be where `feed` put them, read with
    /// this command (an integer reply).
    left: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "BRPOP",
        setup: &[&["DEL", "{q}jobs"]],
        blocking: &["BRPOP", "{q}jobs", "0"],
        feed: &["LPUSH", "{q}jobs", "job1"],
        left: &["LLEN", "{q}jobs"],
    },
    Case {
        name: "BLPOP",
        setup: &[&["DEL", "{q}jobs"]],
        blocking: &["BLPOP", "{q}jobs", "0"],
        feed: &["RPUSH", "{q}jobs", "job1"],
        left: &["LLEN", "{q}jobs"],
    },
    Case {
        name: "BLMOVE",
        setup: &[&["DEL", "{q}jobs", "{q}taken"]],
        blocking: &["BLMOVE", "{q}jobs", "{q}taken", "RIGHT", "LEFT", "0"],
        feed: &["LPUSH", "{q}jobs", "job1"],
        left: &["LLEN", "{q}jobs"],
    },
    Case {
        name: "BZPOPMIN",
        setup: &[&["DEL", "{q}jobs"]],
        blocking: &["BZPOPMIN", "{q}jobs", "0"],
        feed: &["ZADD", "{q}jobs", "1", "job1"],
        left: &["ZCARD", "{q}jobs"],
    },
    Case {
        name: "XREAD BLOCK",
        setup: &[&["DEL", "{q}jobs"], &["XADD", "{q}jobs", "1-1", "f", "v"]],
        blocking: &["XREAD", "BLOCK", "0", "STREAMS", "{q}jobs", "$"],
        feed: &["XADD", "{q}jobs", "2-1", "f", "v"],
        left: &["XLEN", "{q}jobs"],
    },
];

fn int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn).expect("integer reply")
}

fn run(cmd: &[&str], conn: &mut redis::Connection) {
    let mut c = redis::cmd(cmd[0]);
    for a in &cmd[1..] {
        c.arg(*a);
    }
    let _: redis::Value = c.query(conn).expect("command");
}

/// The client pipelines `SELECT db`, the blocking command, then a SET, a
/// PING and an INCR behind it, and leaves; then the source is fed.
fn departs(proxy: &Proxy, case: &Case, db: u32, leave: Leave) {
    let mut other = redis::Client::open(format!("redis://{}/{db}", proxy.addr))
        .and_then(|c| c.get_connection())
        .expect("connect");
    for step in case.setup {
        run(step, &mut other);
    }
    run(&["DEL", "{q}after", "{q}count"], &mut other);
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut pipeline = resp(&["SELECT", &db.to_string()]);
    pipeline.push_str(&resp(case.blocking));
    pipeline.push_str(&resp(&["SET", "{q}after", "1"]));
    pipeline.push_str(&resp(&["PING"]));
    pipeline.push_str(&resp(&["INCR", "{q}count"]));
    client.write_all(pipeline.as_bytes()).expect("send");
    // Let it block (SELECT's +OK arrives; nothing else may).
    std::thread::sleep(Duration::from_millis(300));
    match leave {
        Leave::HalfClose => {
            client.shutdown(Shutdown::Write).expect("half-close");
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got);
            assert_eq!(
                String::from_utf8_lossy(&got),
                "+OK\r\n",
                "{} db {db} {leave:?}: only SELECT's reply, nothing after the blocked command",
                case.name
            );
        }
        Leave::Close => drop(client),
    }
    std::thread::sleep(Duration::from_millis(300));
    run(case.feed, &mut other);
    std::thread::sleep(Duration::from_millis(300));
    let what = format!("{} in db {db}, {leave:?}", case.name);
    assert_eq!(
        int(&mut other, case.left),
        if case.name == "XREAD BLOCK" { 2 } else { 1 },
        "{what}: the element was taken for a client that left"
    );
    let after: Option<String> = redis::cmd("GET")
        .arg("{q}after")
        .query(&mut other)
        .expect("GET");
    assert_eq!(after, None, "{what}: a command behind the blocked one ran");
    let count: Option<i64> = redis::cmd("GET")
        .arg("{q}count")
        .query(&mut other)
        .expect("GET");
    assert_eq!(count, None, "{what}: a command behind the blocked one ran");
    // Nobody else's replies are shifted.
    let pong: String = redis::cmd("PING").query(&mut other).expect("PING");
    assert_eq!(pong, "PONG");
}

fn every_case(proxy: &Proxy) {
    for case in CASES {
        for db in [0, 3] {
            for leave in [Leave::HalfClose, Leave::Close] {
                departs(proxy, case, db, leave);
            }
        }
    }
}

#[test]
fn a_departing_client_runs_nothing_behind_its_blocked_command() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    every_case(&proxy);
}

#[test]
fn a_departing_client_runs_nothing_behind_its_blocked_command_with_sync_writes() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[shards.main.replication]\nquorum = \"one\"",
            ..Setup::default()
        },
    );
    every_case(&proxy);
}
