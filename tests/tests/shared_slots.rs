//! Slot moves with several Rampart instances through a real three-member
//! etcd cluster: the move started on one instance is followed by all,
//! every key ends on the shard owning its slot and only there, nothing
//! acknowledged is lost, no read is wrong through any instance; a member
//! that does not answer (cut off from etcd, or stopped) stops a move from
//! starting until it answers or is forgotten; an instance cut off mid-move
//! never answers wrong; the walker killed mid-move is replaced; a shard
//! is added and removed by reloading every instance; the source's primary
//! fails over mid-move.

use std::time::Duration;

use rampart_tests::etcd::{EtcdCluster, Instance, InstanceSetup};
use rampart_tests::moves::{self, expect_only_straddling_transactions, Clients, KEYS};
use rampart_tests::{http, wait_until_or, Cluster};
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_rampart-test-cli");

/// etcd, shard `main` (every slot) and shard `two` (none), each a primary
/// and a replica written synchronously, and `n` instances `r0`, `r1`...
struct Deployment {
    _etcd: EtcdCluster,
    main: Cluster,
    two: Cluster,
    instances: Vec<Instance>,
    _dir: tempfile::TempDir,
}

fn deploy(n: usize) -> Deployment {
    deploy_with(n, true)
}

/// Shard `two`'s section, owning no slots.
fn two_section(two: &Cluster) -> String {
    let nodes: Vec<String> = two.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[shards.two]\nnodes = [{}]\nslots = \"\"\n\
         [shards.two.replication]\nquorum = \"one\"\ntimeout_ms = 1000\n",
        nodes.join(", ")
    )
}

/// With `with_two` false, shard `two`'s nodes run but no file names them.
fn deploy_with(n: usize, with_two: bool) -> Deployment {
    let etcd = EtcdCluster::start(3);
    let (main, two) = (Cluster::start(1), Cluster::start(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("/rampart/test-{}", rampart_tests::free_port());
    let nodes = main.addrs();
    let per_instance = format!(
        "[failover]\nhold_writes_ms = 5000\n{}",
        if with_two {
            two_section(&two)
        } else {
            String::new()
        }
    );
    let setup = InstanceSetup {
        bin: BIN,
        dir: dir.path(),
        etcd: &etcd,
        nodes: &nodes,
        shard: "slots = \"0-16383\"",
        replication: "quorum = \"one\"\ntimeout_ms = 1000",
        coordination: "",
        prefix: &prefix,
        per_instance: &per_instance,
    };
    let instances = (0..n)
        .map(|i| Instance::start(&format!("r{i}"), &setup))
        .collect();
    let d = Deployment {
        _etcd: etcd,
        main,
        two,
        instances,
        _dir: dir,
    };
    for i in 0..n {
        d.wait_members(i, n);
    }
    d
}

impl Deployment {
    fn at(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    /// Waits until instance `i` sees `n` members and serves keys.
    fn wait_members(&self, i: usize, n: usize) {
        let instance = self.at(i);
        wait_until_or(
            &format!("{} to see {n} members", instance.name),
            Duration::from_secs(30),
            || {
                members(instance).len() == n
                    && instance
                        .client()
                        .get_connection_with_timeout(Duration::from_secs(1))
                        .and_then(|mut c| c.get::<_, Option<String>>("probe"))
                        .is_ok()
            },
            || format!("{:?}", members(instance)),
        );
    }

    /// Waits until every instance in `which` routes `8192-16383` by shard
    /// `owner`, with no move in progress.
    fn wait_owned(&self, which: &[usize], owner: &str, timeout: Duration) {
        let (index, expected) = match owner {
            "main" => (0, "0-16383"),
            _ => (1, "8192-16383"),
        };
        for &i in which {
            let instance = self.at(i);
            wait_until_or(
                &format!("{} to route 8192-16383 to {owner}", instance.name),
                timeout,
                || {
                    let view = slots(instance);
                    view["moving"].is_null() && view["shards"][index]["slots"] == expected
                },
                || format!("{:#}", slots(instance)),
            );
        }
    }

    /// Keys on each shard's primary.
    fn sizes(&self) -> (usize, usize) {
        let size = |c: &Cluster| {
            c.primary()
                .cli(&["DBSIZE"])
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        };
        (size(&self.main), size(&self.two))
    }
}

fn members(instance: &Instance) -> Vec<String> {
    instance.topology()["coordination"]["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn admin(instance: &Instance) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", instance.admin)
        .parse()
        .expect("addr")
}

fn slots(instance: &Instance) -> serde_json::Value {
    let (status, body) = http(admin(instance), "GET", "/v1/slots", b"");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

fn ask_move(instance: &Instance, query: &str) -> (u16, String) {
    http(
        admin(instance),
        "POST",
        &format!("/v1/slots/move?{query}"),
        b"",
    )
}

fn moved_so_far(instance: &Instance) -> u64 {
    let p = &slots(instance)["moving"]["progress"];
    p["moved"].as_u64().unwrap_or(0) + p["moved_by_clients"].as_u64().unwrap_or(0)
}

/// Reads of loaded keys through `instance`: every one there, right.
fn read_sample(instance: &Instance, step: usize) {
    let mut conn = instance.client().get_connection().expect("connect");
    for i in (0..KEYS).step_by(step) {
        let value: Option<String> = conn.get(format!("k:{i}")).expect("read");
        assert_eq!(
            value.as_deref(),
            Some(format!("v{i}").as_str()),
            "k:{i} through {}",
            instance.name
        );
    }
}

#[test]
fn a_move_started_on_one_instance_is_followed_by_all() {
    let d = deploy(3);
    moves::load(&d.at(0).client());
    let through: Vec<redis::Client> = d.instances.iter().map(|i| i.client()).collect();
    let clients = Clients::start(&through);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = ask_move(d.at(1), "slots=8192-16383&to=two");
    assert_eq!(status, 200, "{body}");
    d.wait_owned(&[0, 1, 2], "two", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    let seen = clients.finish();
    check_clients(&seen, d.at(2), &d);
    read_sample(d.at(0), 101);
    read_sample(d.at(1), 103);
    // The walker told what it did; the others followed.
    let walker_events = d.at(1).events();
    assert!(
        walker_events.iter().any(|e| e["kind"] == "slots-moved"),
        "{walker_events:?}"
    );

    // Restarted while etcd is out of its reach, an instance does not
    // know the map (its file still gives every slot to main): it refuses
    // keys, saying why, rather than read them where they no longer are.
    let mut d = d;
    d.at(0).cut_from_etcd(true);
    d.instances[0].restart();
    let moved = (0..KEYS)
        .map(|i| format!("k:{i}"))
        .find(|k| moves::slot(k) >= 8192)
        .expect("a moved key");
    let mut conn = d.at(0).client().get_connection().expect("connect");
    let refused = conn.get::<_, Option<String>>(&moved).expect_err("answered");
    assert!(
        refused.to_string().contains("has not read the slot map"),
        "{refused}"
    );
    d.at(0).cut_from_etcd(false);
    d.wait_members(0, 3);
    read_sample(d.at(0), 211);
}

/// The clients kept working, saw nothing but straddling transactions
/// fail, and everything is where it belongs (checked through `through`).
fn check_clients(seen: &moves::Seen, through: &Instance, d: &Deployment) {
    assert!(
        seen.acked.len() > 100,
        "the clients kept working: {} acknowledged writes",
        seen.acked.len()
    );
    expect_only_straddling_transactions(seen);
    moves::check(&through.client(), &d.main, &d.two, seen);
}

#[test]
fn a_move_waits_for_every_member_and_a_stopped_one_can_be_forgotten() {
    let mut d = deploy(3);
    moves::load(&d.at(0).client());
    // r2 cut off from etcd: it cannot acknowledge the pause.
    d.at(2).cut_from_etcd(true);
    let (status, body) = ask_move(d.at(0), "slots=8192-16383&to=two");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("r2") && body.contains("nothing moved"),
        "{body}"
    );
    // Nothing moved, and every instance routes as before (r2 by the map
    // it has; it never saw a pause, or saw one that was called off).
    assert_eq!(d.sizes().1, 0, "keys moved to two");
    d.wait_owned(&[0, 1], "main", Duration::from_secs(10));
    d.at(2).cut_from_etcd(false);
    d.wait_owned(&[2], "main", Duration::from_secs(10));

    // Answering again, it takes part in the move.
    let (status, body) = ask_move(d.at(0), "slots=8192-16383&to=two");
    assert_eq!(status, 200, "{body}");
    d.wait_owned(&[0, 1, 2], "two", Duration::from_secs(120));
    read_sample(d.at(2), 211);

    // Stopped for good: moves wait for it until it is forgotten.
    d.instances[2].kill();
    let (status, body) = ask_move(d.at(0), "slots=8192-16383&to=main");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("r2"), "{body}");
    // A live instance cannot be forgotten, nor the one asked, nor one
    // that was never a member.
    let (status, body) = http(admin(d.at(0)), "DELETE", "/v1/coordination/members/r1", b"");
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(admin(d.at(0)), "DELETE", "/v1/coordination/members/r0", b"");
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(admin(d.at(0)), "DELETE", "/v1/coordination/members/r9", b"");
    assert_eq!(status, 404, "{body}");
    // r2's lease has run out by now (the pause waited longer than it).
    let (status, body) = http(admin(d.at(0)), "DELETE", "/v1/coordination/members/r2", b"");
    assert_eq!(status, 200, "{body}");
    // r1 has read that the refused move was called off.
    d.wait_owned(&[1], "two", Duration::from_secs(10));
    let (status, body) = ask_move(d.at(1), "slots=8192-16383&to=main");
    assert_eq!(status, 200, "{body}");
    d.wait_owned(&[0, 1], "main", Duration::from_secs(120));
    assert_eq!(d.sizes(), (KEYS + 4 * moves::GROUPS, 0));
    read_sample(d.at(1), 307);
}

#[test]
fn an_instance_cut_off_mid_move_reads_right_and_a_dead_walker_is_replaced() {
    let mut d = deploy(3);
    moves::load(&d.at(0).client());
    // Every kind of client on r1; readers on r2 (r0 is killed
    // meanwhile). Cut off, r2 does not know the primaries any more (one
    // may have been replaced meanwhile): it refuses what needs one, never
    // answering wrong.
    let writers = Clients::start(&[d.at(1).client()]);
    let readers = Clients::start_roles(&[d.at(2).client()], &[2]);
    // Slowly, so that it is under way when r2 is cut off and r0 killed.
    let (status, body) = ask_move(d.at(0), "slots=8192-16383&to=two&rate=4000");
    assert_eq!(status, 200, "{body}");
    wait_until_or(
        "keys to move",
        Duration::from_secs(30),
        || moved_so_far(d.at(0)) > 5_000,
        || format!("{:#}", slots(d.at(0))),
    );
    d.at(2).cut_from_etcd(true);
    std::thread::sleep(Duration::from_secs(2));
    // The walker dies: another instance walks once its lease is gone.
    d.instances[0].kill();
    d.wait_owned(&[1], "two", Duration::from_secs(120));
    d.at(2).cut_from_etcd(false);
    d.wait_owned(&[2], "two", Duration::from_secs(20));
    read_sample(d.at(2), 53);
    d.instances[0].restart();
    d.wait_members(0, 3);
    d.wait_owned(&[0], "two", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let read = readers.finish();
    let seen = writers.finish();
    let unexpected: Vec<&String> = read
        .errors
        .iter()
        .filter(|e| !e.contains("TryAgain") && !e.contains("no reachable primary"))
        .collect();
    assert!(
        read.wrong.is_empty() && unexpected.is_empty(),
        "reads through r2: {:?} {:?}",
        &read.wrong[..read.wrong.len().min(10)],
        &unexpected[..unexpected.len().min(10)]
    );
    check_clients(&seen, d.at(0), &d);
}

/// Writes `text` as instance `i`'s file and reloads it; returns the answer.
fn reload_with(d: &Deployment, i: usize, text: &str) -> String {
    std::fs::write(d.at(i).config_path(), text).expect("write config");
    let (status, body) = http(admin(d.at(i)), "POST", "/v1/reload", b"");
    assert_eq!(status, 200, "{body}");
    body
}

fn lease_holder(instance: &Instance, shard: &str) -> Option<String> {
    instance.topology()["coordination"]["lease_holders"][shard]
        .as_str()
        .map(String::from)
}

fn shard_names(instance: &Instance) -> Vec<String> {
    slots(instance)["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .filter_map(|s| s["shard"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_shard_added_by_reload_everywhere_receives_slots_and_is_removed_again() {
    let mut d = deploy_with(3, false);
    moves::load(&d.at(0).client());
    let files: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(d.at(i).config_path()).expect("config"))
        .collect();
    // Added by a reload of each instance's file; r0 first, so that it
    // takes the new shard's failover lease.
    for (i, file) in files.iter().enumerate() {
        let answer = reload_with(&d, i, &format!("{file}{}", two_section(&d.two)));
        assert!(answer.contains("two"), "{answer}");
        if i == 0 {
            wait_until_or(
                "r0 to hold shard two's failover lease",
                Duration::from_secs(10),
                || lease_holder(d.at(0), "two").as_deref() == Some("r0"),
                || format!("{:#}", d.at(0).topology()["coordination"]),
            );
        }
    }
    for i in 0..3 {
        wait_until_or(
            &format!("r{i} to serve shard two"),
            Duration::from_secs(10),
            || shard_names(d.at(i)).contains(&"two".to_string()),
            || format!("{:#}", slots(d.at(i))),
        );
    }
    let through: Vec<redis::Client> = d.instances.iter().map(|i| i.client()).collect();
    let clients = Clients::start(&through);
    let (status, body) = ask_move(d.at(2), "slots=8192-16383&to=two");
    assert_eq!(status, 200, "{body}");
    d.wait_owned(&[0, 1, 2], "two", Duration::from_secs(120));
    let seen = clients.finish();
    check_clients(&seen, d.at(1), &d);

    // Back to main, then removed: on r0 first, where a move to it is
    // then refused (r0 cannot route slots to a shard it removed) even
    // when asked of an instance that still has it.
    let (status, body) = ask_move(d.at(1), "slots=8192-16383&to=main");
    assert_eq!(status, 200, "{body}");
    d.wait_owned(&[0, 1, 2], "main", Duration::from_secs(120));
    reload_with(&d, 0, &files[0]);
    wait_until_or(
        "r0 to remove shard two",
        Duration::from_secs(10),
        || !shard_names(d.at(0)).contains(&"two".to_string()),
        || format!("{:#}", slots(d.at(0))),
    );
    // It gave the shard's lease back: an instance still serving the
    // shard decides for it.
    wait_until_or(
        "another instance to hold shard two's failover lease",
        Duration::from_secs(10),
        || lease_holder(d.at(1), "two").is_some_and(|h| h != "r0"),
        || format!("{:#}", d.at(1).topology()["coordination"]),
    );
    let (status, body) = ask_move(d.at(1), "slots=0-99&to=two");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("r0"), "{body}");
    d.wait_owned(&[1, 2], "main", Duration::from_secs(10));
    for i in [1, 2] {
        reload_with(&d, i, &files[i]);
    }
    for i in 0..3 {
        wait_until_or(
            &format!("r{i} to remove shard two"),
            Duration::from_secs(10),
            || !shard_names(d.at(i)).contains(&"two".to_string()),
            || format!("{:#}", slots(d.at(i))),
        );
    }
    // Its nodes may go: every key is on main, through every instance.
    assert_eq!(d.sizes().1, 0);
    for node in &mut d.two.nodes {
        node.kill();
    }
    for i in 0..3 {
        read_sample(d.at(i), 499);
    }
}

#[test]
fn a_move_through_three_instances_survives_its_source_primary_failing() {
    let mut d = deploy(3);
    moves::load(&d.at(0).client());
    let through: Vec<redis::Client> = d.instances.iter().map(|i| i.client()).collect();
    let clients = Clients::start(&through);
    let (status, body) = ask_move(d.at(0), "slots=8192-16383&to=two&rate=4000");
    assert_eq!(status, 200, "{body}");
    wait_until_or(
        "a tenth of the keys to move",
        Duration::from_secs(30),
        || moved_so_far(d.at(0)) > (KEYS / 10) as u64,
        || format!("{:#}", slots(d.at(0))),
    );
    let old = d.main.primary().addr();
    d.main.nodes[0].kill();
    for i in 0..3 {
        wait_until_or(
            &format!("r{i} to route main to its new primary"),
            Duration::from_secs(30),
            || {
                d.at(i).topology()["shards"][0]["primary"]
                    .as_str()
                    .is_some_and(|p| p != old)
            },
            || format!("{:#}", d.at(i).topology()["shards"][0]),
        );
    }
    // Back as a replica of the new primary (the quorum needs one).
    d.main.nodes[0].restart();
    d.wait_owned(&[0, 1, 2], "two", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    let seen = clients.finish();
    moves::expect_only_failover_errors(&seen);
    d.main.nodes.swap(0, 1);
    moves::check(&d.at(2).client(), &d.main, &d.two, &seen);
}

#[test]
fn a_pause_outliving_its_walker_is_called_off_by_another_instance() {
    let mut d = deploy(3);
    moves::load(&d.at(0).client());
    // r2 cut off, so the pause waits for it; r0, the walker, dies while
    // it waits: the slots stay paused until another instance calls the
    // move off.
    d.at(2).cut_from_etcd(true);
    let walker_admin = admin(d.at(0));
    let asking = std::thread::spawn(move || {
        rampart_tests::try_http(
            walker_admin,
            "POST",
            "/v1/slots/move?slots=8192-16383&to=two",
            b"",
        )
    });
    wait_until_or(
        "r1 to pause the slots",
        Duration::from_secs(10),
        || slots(d.at(1))["moving"]["paused"] == true,
        || format!("{:#}", slots(d.at(1))),
    );
    d.instances[0].kill();
    let _ = asking.join();
    d.wait_owned(&[1], "main", Duration::from_secs(20));
    assert_eq!(d.sizes().1, 0, "keys moved to two");
    read_sample(d.at(1), 499);
    d.at(2).cut_from_etcd(false);
    d.wait_owned(&[2], "main", Duration::from_secs(20));
    read_sample(d.at(2), 499);
}

/// How many connections to the node at `addr` subscribe to two patterns,
/// as a relay of keyspace notifications does.
fn relays_on(addr: &str) -> usize {
    redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("CLIENT").arg("LIST").query::<String>(&mut c))
        .map_or(0, |list| {
            list.lines().filter(|l| l.contains(" psub=2 ")).count()
        })
}

/// Shard `two`'s keyspace notifications reach subscribers of every
/// instance (piped to `main`'s primary), relayed by the one instance that
/// holds `two`'s lease: each event is heard once.
#[test]
fn one_instance_relays_a_shards_keyspace_notifications() {
    let d = deploy(3);
    for node in d.main.nodes.iter().chain(&d.two.nodes) {
        let mut conn = redis::Client::open(format!("redis://{}/", node.addr()))
            .and_then(|c| c.get_connection())
            .unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("KEA")
            .exec(&mut conn)
            .unwrap();
    }
    let two = d.two.primary().addr();
    wait_until_or(
        "a relay on shard two",
        Duration::from_secs(30),
        || relays_on(&two) == 1,
        || format!("{} relays", relays_on(&two)),
    );
    // One relay, not one per instance.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(relays_on(&two), 1);
    let mut direct = redis::Client::open(format!("redis://{two}/"))
        .and_then(|c| c.get_connection())
        .unwrap();
    for (i, instance) in d.instances.iter().enumerate() {
        let mut sub = instance.client().get_connection().unwrap();
        let mut pubsub = sub.as_pubsub();
        pubsub.psubscribe("__keyevent@0__:set").unwrap();
        pubsub
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for key in [format!("{i}:first"), format!("{i}:second")] {
            let _: () = direct.set(&key, 1).unwrap();
            let heard = pubsub.get_message().expect("shard two's event");
            assert_eq!(
                heard.get_payload::<String>().unwrap(),
                key,
                "through {}",
                instance.name
            );
        }
    }
}
