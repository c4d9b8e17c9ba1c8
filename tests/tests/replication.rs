//! Synchronous and asynchronous writes in native mode (the nodes replicate
//! with Redis replication): what an acknowledgement promises, what a
//! shortfall does, and that reads do not wait behind the replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_tests::{Cluster, Proxy, Setup};
use redis::Commands;

fn sync_setup(quorum: &str, timeout_ms: u32, on_shortfall: &str) -> String {
    format!(
        "[shards.main.replication]\nquorum = \"{quorum}\"\ntimeout_ms = {timeout_ms}\non_shortfall = \"{on_shortfall}\"\n"
    )
}

/// `Setup::shard` holds lines inside `[shards.main]`; a sub-table must come
/// last, so the replication settings go in `sections` after the shard.
fn start(cluster: &Cluster, replication: &str) -> Proxy {
    let config = format!(
        "{}{replication}",
        rampart_tests::config_for(&cluster.addrs(), Setup::default())
    );
    Proxy::start_with(&config)
}

#[test]
fn acknowledged_sync_writes_are_on_every_replica_when_the_primary_dies() {
    let mut cluster = Cluster::start(2);
    let proxy = start(&cluster, &sync_setup("all", 2000, "fail"));

    // Several clients, some pipelining: every acknowledged write counts.
    let acked = rampart_tests::acknowledged_writes(&proxy);
    assert_eq!(
        acked.len(),
        4 * 50 * 5,
        "every write is acknowledged while all replicas are up"
    );

    // The primary dies the moment the last write was acknowledged.
    cluster.nodes[0].kill();
    for replica in &cluster.nodes[1..] {
        let missing = rampart_tests::missing_on(&replica.addr(), &acked);
        assert!(
            missing.is_empty(),
            "{} acknowledged writes missing on {}: {:?}",
            missing.len(),
            replica.addr(),
            &missing[..missing.len().min(5)]
        );
    }

    // Group commit: far fewer WAITs than writes.
    let durability = &proxy.shard()["durability"];
    let waits = durability["waits"].as_u64().unwrap();
    assert_eq!(durability["mode"], "sync");
    assert!(
        (1..=4 * 50).contains(&waits),
        "one WAIT per pipeline at most, got {waits} for 1000 writes"
    );
}

#[test]
fn a_shortfall_fails_or_is_accepted_as_configured() {
    let cluster = Cluster::start(1);
    let fail = start(&cluster, &sync_setup("one", 300, "fail"));
    let accept = start(&cluster, &sync_setup("one", 300, "accept"));
    let mut f = fail.conn();
    let mut a = accept.conn();
    // The first write also waits for the links and the replica's first ack.
    rampart_tests::wait_until(
        "a first acknowledged write",
        Duration::from_secs(10),
        || f.set::<_, _, ()>("before", "1").is_ok(),
    );

    cluster.nodes[1].signal("STOP");
    let err = f.set::<_, _, ()>("short", "1").unwrap_err();
    assert_eq!(err.code(), Some("NOQUORUM"), "{err}");
    assert!(err.to_string().contains("may still be replicated"), "{err}");
    // Redis cannot roll back: the write is on the primary, as the error says.
    assert_eq!(cluster.primary().cli(&["GET", "short"]).trim(), "1");
    // A command that failed on its own keeps its own error.
    let _: () = f.set("text", "x").unwrap_or(());
    let err = f.incr::<_, _, i64>("text", 1).unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    // A transaction is one write.
    let _: () = redis::cmd("MULTI").query(&mut f).unwrap();
    let _: () = redis::cmd("SET").arg("tx1").arg("1").query(&mut f).unwrap();
    let err = match redis::cmd("EXEC").query::<redis::Value>(&mut f) {
        Ok(v) => panic!(
            "EXEC acknowledged during the shortfall: {v:?}; {}",
            fail.shard()
        ),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some("NOQUORUM"), "{err}");

    let _: () = a.set("accepted", "1").unwrap();
    cluster.nodes[1].signal("CONT");

    let durability = &fail.shard()["durability"];
    assert!(
        durability["shortfalls"].as_u64().unwrap() >= 2,
        "{durability}"
    );
    assert!(
        durability["failed_writes"].as_u64().unwrap() >= 2,
        "{durability}"
    );

    // Once the replica is back, writes are acknowledged again.
    rampart_tests::wait_until("the replica to ack again", Duration::from_secs(10), || {
        f.set::<_, _, ()>("after", "1").is_ok()
    });
}

#[test]
fn reads_do_not_wait_behind_a_slow_quorum() {
    let cluster = Cluster::start(1);
    let proxy = start(&cluster, &sync_setup("one", 3000, "accept"));
    let mut reader = proxy.conn();
    let _: () = proxy.conn().set("r", "v").unwrap();

    cluster.nodes[1].signal("STOP");
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let client = proxy.client();
        let writing = writing.clone();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            let result: redis::RedisResult<()> = conn.set("slow", "1");
            writing.store(false, Ordering::SeqCst);
            result
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Another client's reads are answered while the write waits for its
    // WAIT (3 s): they never share a connection with it.
    for _ in 0..20 {
        let v: String = reader.get("r").unwrap();
        assert_eq!(v, "v");
    }
    assert!(
        writing.load(Ordering::SeqCst),
        "the reads finished while the write still waited"
    );
    cluster.nodes[1].signal("CONT");
    writer.join().unwrap().unwrap();
}

#[test]
fn a_client_reads_its_own_synchronous_writes() {
    let cluster = Cluster::start(1);
    let proxy = start(&cluster, &sync_setup("one", 2000, "fail"));
    let mut conn = proxy.conn();
    // Write and read in one pipeline: the read must see the write although
    // writes travel on their own links.
    for i in 0..200 {
        let (v,): (i64,) = redis::pipe()
            .set("own", i)
            .ignore()
            .get("own")
            .query(&mut conn)
            .unwrap();
        assert_eq!(v, i);
    }
}

#[test]
fn asynchronous_mode_sends_no_wait() {
    let cluster = Cluster::start(1);
    let proxy = start(&cluster, "");
    let mut conn = proxy.conn();
    for i in 0..100 {
        let _: () = conn.set("a", i).unwrap();
    }
    let durability = &proxy.shard()["durability"];
    assert_eq!(durability["mode"], "async");
    assert_eq!(durability["waits"], 0);
    assert_eq!(cluster.primary().calls("wait"), 0);
}

/// A pop served after it blocked (a worker waiting when a job arrives)
/// waits for the quorum as one served at once does. Redis moves a
/// connection's replication offset only for commands run at once, so a
/// `WAIT` right after such a pop would count a replica that has nothing
/// of it; with the replica stopped, the pop's `WAIT` must fall short.
#[test]
fn a_pop_served_after_it_blocked_waits_for_the_quorum() {
    let cluster = Cluster::start(1);
    let proxy = start(&cluster, &sync_setup("one", 500, "fail"));
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let worker = std::thread::spawn({
        let client = proxy.client();
        move || {
            let mut conn = client.get_connection()?;
            redis::cmd("BRPOP")
                .arg("jobs")
                .arg(0)
                .query::<(String, String)>(&mut conn)
        }
    });
    rampart_tests::wait_until("the pop to block", Duration::from_secs(10), || {
        cluster
            .primary()
            .info_field("clients", "blocked_clients")
            .as_deref()
            == Some("1")
    });
    let shortfalls = || proxy.shard()["durability"]["shortfalls"].as_u64().unwrap();
    let before = shortfalls();
    cluster.nodes[1].signal("STOP");
    cluster.primary().cli(&["LPUSH", "jobs", "job-1"]);
    let popped = worker.join().unwrap();
    cluster.nodes[1].signal("CONT");
    // What the pop took is the worker's, quorum or not.
    assert_eq!(
        popped.expect("the popped job"),
        ("jobs".to_string(), "job-1".to_string())
    );
    assert_eq!(
        shortfalls(),
        before + 1,
        "the pop's WAIT counted a stopped replica"
    );
}
