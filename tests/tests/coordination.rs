//! Several Rampart instances agreeing through a real three-member etcd
//! cluster: real `etcd` and `redis-server` processes, and Rampart instances
//! as processes of their own (`rampart run`), killed with SIGKILL, paused
//! with SIGSTOP and cut off from etcd by forwarders.

use std::time::{Duration, Instant};

use rampart_tests::etcd::{EtcdCluster, Instance, InstanceSetup};
use rampart_tests::workload::{Workload, COUNTER};
use rampart_tests::{wait_until, wait_until_or, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_rampart-test-cli");

/// etcd, a primary with two replicas, and `n` Rampart instances writing
/// synchronously (one replica acknowledges every write).
struct Deployment {
    etcd: EtcdCluster,
    redis: Cluster,
    instances: Vec<Instance>,
    /// The instances' configuration files and logs.
    _dir: tempfile::TempDir,
}

fn deploy(n: usize, coordination: &str) -> Deployment {
    deploy_with(n, coordination, "")
}

fn deploy_with(n: usize, coordination: &str, shard: &str) -> Deployment {
    deploy_on(EtcdCluster::start(3), n, coordination, shard)
}

fn deploy_on(etcd: EtcdCluster, n: usize, coordination: &str, shard: &str) -> Deployment {
    deploy_users(etcd, n, coordination, shard, false)
}

/// With `users`, instance `rN` logs into the nodes as ACL user `rN` of its
/// own, so that a node can refuse one instance and not another (a split
/// between the instances and a node, made on the node).
fn deploy_users(
    etcd: EtcdCluster,
    n: usize,
    coordination: &str,
    shard: &str,
    users: bool,
) -> Deployment {
    let redis = Cluster::start(2);
    if users {
        for node in &redis.nodes {
            for i in 0..n {
                let (user, password) = (format!("r{i}"), format!(">pw-r{i}"));
                node.cli(&[
                    "ACL", "SETUSER", &user, "on", &password, "~*", "&*", "+@all",
                ]);
            }
        }
    }
    let per_instance = if users {
        "[backend]\nusername = \"{name}\"\npassword = \"pw-{name}\"\n"
    } else {
        ""
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("/rampart/test-{}", rampart_tests::free_port());
    let nodes = redis.addrs();
    let instances = {
        let setup = InstanceSetup {
            bin: BIN,
            dir: dir.path(),
            etcd: &etcd,
            nodes: &nodes,
            shard,
            replication: "quorum = \"one\"\ntimeout_ms = 1000\nmanage_replication = true",
            coordination,
            prefix: &prefix,
            per_instance,
        };
        (0..n)
            .map(|i| Instance::start(&format!("r{i}"), &setup))
            .collect()
    };
    let deployment = Deployment {
        etcd,
        redis,
        instances,
        _dir: dir,
    };
    deployment.wait_agreed();
    deployment
}

impl Deployment {
    fn live(&self) -> Vec<&Instance> {
        self.instances.iter().filter(|i| i.is_running()).collect()
    }

    /// Waits until every running instance sees the same lease holder (a
    /// running one) and routes to the same primary; returns them.
    fn wait_agreed(&self) -> (String, String) {
        let mut agreed = None;
        wait_until_or(
            "the instances to agree on a lease holder and a primary",
            Duration::from_secs(30),
            || {
                let live = self.live();
                let views: Vec<(Option<String>, Option<String>)> =
                    live.iter().map(|i| (i.holder(), i.primary())).collect();
                let Some((Some(holder), Some(primary))) = views.first().cloned() else {
                    return false;
                };
                let running = live.iter().any(|i| i.name == holder);
                // And each sees every live instance (an instance that has
                // not seen another would not ask it in failsafe).
                let formed = live.iter().all(|i| {
                    i.topology()["coordination"]["instances"]
                        .as_array()
                        .is_some_and(|seen| seen.len() == live.len())
                });
                if !formed {
                    return false;
                }
                if running
                    && views
                        .iter()
                        .all(|v| *v == (Some(holder.clone()), Some(primary.clone())))
                {
                    agreed = Some((holder, primary));
                    return true;
                }
                false
            },
            || {
                let views: Vec<String> = self
                    .live()
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: holder {:?}, primary {:?}, sees {}",
                            i.name,
                            i.holder(),
                            i.primary(),
                            i.topology()["coordination"]["instances"]
                        )
                    })
                    .collect();
                format!("{}\n{}", views.join("\n"), self.logs())
            },
        );
        agreed.expect("agreed")
    }

    /// A running instance other than `name`.
    fn other_than(&self, name: &str) -> String {
        self.live()
            .iter()
            .find(|i| i.name != name)
            .map(|i| i.name.clone())
            .expect("another running instance")
    }

    fn instance(&mut self, name: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.name == name)
            .expect("instance")
    }

    fn node_index(&self, addr: &str) -> usize {
        self.redis
            .nodes
            .iter()
            .position(|n| n.addr() == addr)
            .expect("node")
    }

    /// Waits until every running instance routes to a primary other than
    /// `old`, in the same epoch; returns it.
    fn wait_new_primary(&self, old: &str, timeout: Duration) -> String {
        let mut found = None;
        wait_until("a new primary on every instance", timeout, || {
            let views: Vec<(Option<String>, u64)> = self
                .live()
                .iter()
                .map(|i| (i.primary(), i.epoch()))
                .collect();
            match views.first() {
                Some((Some(p), e))
                    if p != old && views.iter().all(|v| *v == (Some(p.clone()), *e)) =>
                {
                    found = Some(p.clone());
                    true
                }
                _ => false,
            }
        });
        found.expect("new primary")
    }

    /// Waits until the instances named `names` all route to one primary
    /// other than `old`; returns it.
    fn wait_promoted_by(&self, names: &[String], old: &str, timeout: Duration) -> String {
        let mut found = None;
        wait_until("the instances to promote", timeout, || {
            let views: Vec<Option<String>> = names
                .iter()
                .map(|n| {
                    self.instances
                        .iter()
                        .find(|i| &i.name == n)
                        .and_then(|i| i.primary())
                })
                .collect();
            match &views[0] {
                Some(p) if p != old && views.iter().all(|v| v.as_ref() == Some(p)) => {
                    found = Some(p.clone());
                    true
                }
                _ => false,
            }
        });
        found.expect("promoted")
    }

    /// The names of the running instances other than `name`.
    fn names_but(&self, name: &str) -> Vec<String> {
        self.live()
            .iter()
            .filter(|i| i.name != name)
            .map(|i| i.name.clone())
            .collect()
    }

    /// Nodes that answer `ROLE` with `master`.
    fn claiming_primary(&self) -> Vec<String> {
        self.redis
            .nodes
            .iter()
            .filter(|n| n.pid() != 0 && n.cli(&["ROLE"]).starts_with("master"))
            .map(|n| n.addr())
            .collect()
    }

    fn logs(&self) -> String {
        self.instances
            .iter()
            .map(|i| format!("--- {} ---\n{}", i.name, tail(&i.log(), 40)))
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A write through `instance` until one succeeds; how long it took.
fn first_write(instance: &Instance, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let client = redis::Client::open(instance.url()).ok()?;
    while started.elapsed() < timeout {
        if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            if redis::cmd("SET")
                .arg("probe:first-write")
                .arg("1")
                .query::<()>(&mut conn)
                .is_ok()
            {
                return Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Stops the workload, says what it did (as `label`), and checks that it
/// ran and that nothing acknowledged is missing from `primary`.
fn finish_and_check(
    d: &Deployment,
    work: Workload,
    primary: &str,
    label: &str,
) -> rampart_tests::workload::Outcomes {
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = work.finish();
    eprintln!(
        "{label}: {} acknowledged, {} failed, {} unknown",
        outcomes.acked.len(),
        outcomes.failed,
        outcomes.unknown
    );
    assert!(outcomes.acked.len() > 100, "the workload ran");
    assert_nothing_lost(d, primary, &outcomes);
    outcomes
}

/// Every acknowledged key is on `node`, and the shared counter is within
/// what was acknowledged and what may have run.
fn assert_nothing_lost(
    deployment: &Deployment,
    node: &str,
    outcomes: &rampart_tests::workload::Outcomes,
) {
    let index = deployment.node_index(node);
    let keys = rampart_tests::workload::keys_at(node);
    let mut conn = redis::Client::open(format!("redis://{node}/"))
        .and_then(|c| c.get_connection())
        .expect("connect to the new primary");
    let lost: Vec<&String> = outcomes
        .acked
        .iter()
        .filter(|k| !keys.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost on node {index} ({node}), e.g. {:?}\n{}",
        lost.len(),
        outcomes.acked.len(),
        &lost[..lost.len().min(5)],
        deployment.logs()
    );
    let counter: u64 = redis::cmd("GET")
        .arg(COUNTER)
        .query::<Option<u64>>(&mut conn)
        .expect("GET counter")
        .unwrap_or(0);
    assert!(
        counter >= outcomes.incr_acked && counter <= outcomes.incr_acked + outcomes.incr_unknown,
        "counter {counter}: {} acknowledged INCRs, {} unknown",
        outcomes.incr_acked,
        outcomes.incr_unknown
    );
}

#[test]
fn holder_killed_then_primary_killed_another_instance_promotes() {
    let mut d = deploy(3, "");
    let (holder, primary) = d.wait_agreed();
    let urls: Vec<String> = d.live().iter().map(|i| i.url()).collect();
    let work = Workload::over(&urls, 6, 0, true);
    std::thread::sleep(Duration::from_millis(500));

    d.instance(&holder).kill();
    let (new_holder, same) = d.wait_agreed();
    assert_ne!(new_holder, holder);
    assert_eq!(same, primary, "taking the lease over changes no primary");
    // The dashboard of any instance shows the live instances and the
    // new holder.
    let admin = d.live()[0].admin;
    let mut browser =
        rampart_tests::browser::Browser::open(&format!("http://127.0.0.1:{admin}/dashboard"));
    let rows = "JSON.stringify([...document.querySelectorAll('tr.instance')].map(r => r.dataset.instance + ':' + r.dataset.holds))";
    browser.wait_for(
        "the instances on the dashboard",
        Duration::from_secs(10),
        &format!(
            "(() => {{ const r = {rows}; return JSON.parse(r).length === 2 && r.includes('{new_holder}:main'); }})()"
        ),
        rows,
    );
    drop(browser);

    let p = d.node_index(&primary);
    d.redis.nodes[p].kill();
    let promoted = d.wait_new_primary(&primary, Duration::from_secs(20));
    for instance in d.live() {
        assert!(
            first_write(instance, Duration::from_secs(10)).is_some(),
            "writes through {} resume\n{}",
            instance.name,
            d.logs()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = work.finish();
    assert!(
        outcomes.acked.len() > 100,
        "the workload ran: {}",
        outcomes.acked.len()
    );
    assert_nothing_lost(&d, &promoted, &outcomes);
    assert_eq!(d.claiming_primary(), vec![promoted.clone()]);
    let events = d.instance(&new_holder).events();
    assert!(
        events.iter().any(|e| e["kind"] == "epoch-fenced"),
        "the new holder fenced the epoch before naming a primary: {events:?}"
    );
    // Any instance shows every instance's events, the dead one's too.
    let other = d
        .live()
        .iter()
        .find(|i| i.name != new_holder)
        .map(|i| i.admin)
        .expect("a third instance");
    let addr = format!("127.0.0.1:{other}").parse().expect("addr");
    let all = || -> Vec<serde_json::Value> {
        let (_, body) = rampart_tests::http_get(addr, "/v1/events?instances=all");
        serde_json::from_str(&body).unwrap_or_default()
    };
    let by = |events: &[serde_json::Value], instance: &str, kind: &str| {
        events
            .iter()
            .any(|e| e["instance"] == instance && e["kind"] == kind)
    };
    // Each instance publishes its events at most once a second.
    wait_until("every instance's events", Duration::from_secs(5), || {
        let events = all();
        by(&events, &holder, "lease-acquired") && by(&events, &new_holder, "promoted")
    });
}

/// Kills the primary and the lease holder at once; returns how long until
/// the first write through a surviving instance succeeded. The deployment
/// is made whole again afterwards (the instance restarted, the node back
/// as a replica).
fn kill_primary_and_holder(d: &mut Deployment) -> Duration {
    let (holder, primary) = d.wait_agreed();
    let p = d.node_index(&primary);
    let survivor = d.other_than(&holder);
    d.instance(&holder).kill();
    d.redis.nodes[p].kill();
    let started = Instant::now();
    let took = first_write(d.instance(&survivor), Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no write succeeded within 30 s\n{}", d.logs()));
    let elapsed = started.elapsed().min(took);
    let promoted = d.wait_new_primary(&primary, Duration::from_secs(20));
    assert_eq!(d.claiming_primary(), vec![promoted]);
    // Whole again: the node returns (fenced into a replica) and the
    // instance restarts.
    d.redis.nodes[p].restart();
    d.instance(&holder).restart();
    wait_until(
        "every node to follow the new primary",
        Duration::from_secs(30),
        || {
            d.instance(&survivor).topology()["shards"][0]["nodes"]
                .as_array()
                .is_some_and(|nodes| {
                    nodes.iter().all(|n| {
                        n["health"] == "up" && (n["primary"] == true || n["serves_reads"] == true)
                    })
                })
        },
    );
    elapsed
}

#[test]
fn primary_and_holder_killed_together_writes_resume() {
    let mut d = deploy(3, "");
    for _ in 0..2 {
        let took = kill_primary_and_holder(&mut d);
        eprintln!("first write after {} ms", took.as_millis());
    }
}

/// Kills the primary alone (the lease holder lives); returns how long
/// until the first write through an instance that does not hold the
/// lease succeeded, then brings the node back.
fn kill_primary(d: &mut Deployment) -> Duration {
    let (holder, primary) = d.wait_agreed();
    let p = d.node_index(&primary);
    let other = d.other_than(&holder);
    d.redis.nodes[p].kill();
    let took = first_write(d.instance(&other), Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no write succeeded within 30 s\n{}", d.logs()));
    eprintln!(
        "killed {primary}; first write through {other} (holder {holder}); now {:?}",
        d.instance(&other).primary()
    );
    d.wait_new_primary(&primary, Duration::from_secs(20));
    d.redis.nodes[p].restart();
    settle(d);
    took
}

/// Median, p90 and max in milliseconds.
fn spread(mut times: Vec<u128>) -> String {
    times.sort();
    format!(
        "median {} ms, p90 {} ms, max {} ms",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1]
    )
}

/// The figures in the README and docs/coordination.md, run by
/// `tests/bench/coordination.sh`.
#[test]
#[ignore]
fn measure_primary_and_holder_killed_together() {
    let mut d = deploy(3, "");
    let alone: Vec<u128> = (0..10)
        .map(|round| {
            let took = kill_primary(&mut d).as_millis();
            eprintln!("primary only, round {round}: first write after {took} ms");
            took
        })
        .collect();
    let together: Vec<u128> = (0..20)
        .map(|round| {
            let took = kill_primary_and_holder(&mut d).as_millis();
            eprintln!("primary and holder, round {round}: first write after {took} ms");
            took
        })
        .collect();
    println!("three instances, lease TTL 2 s, 1 s detector; SIGKILL -> first successful write:");
    println!(
        "  primary alone, 10 rounds:               {}",
        spread(alone)
    );
    println!(
        "  primary and lease holder, 20 rounds:    {}",
        spread(together)
    );
}

#[test]
fn instance_cut_off_from_etcd_holds_writes_and_never_promotes() {
    let mut d = deploy(3, "");
    let (holder, primary) = d.wait_agreed();
    // Cut off the holder itself: the hardest case, it must give up.
    d.instance(&holder).cut_from_etcd(true);
    let cut = d.instance(&holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cut.topology()["shards"][0]["view_stale"] != true {
        assert!(
            Instant::now() < deadline,
            "the cut-off instance does not hold writes: {}\n{}",
            cut.topology(),
            tail(&cut.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = |instance: &Instance| {
        let addr = format!("127.0.0.1:{}", instance.admin)
            .parse()
            .expect("addr");
        rampart_tests::http_get(addr, "/metrics").1
    };
    let cut_metrics = metrics(d.instance(&holder));
    assert!(
        cut_metrics.contains("rampart_shard_view_stale{shard=\"main\"} 1"),
        "{cut_metrics}"
    );
    let others = d.names_but(&holder);
    for name in &others {
        assert!(first_write(d.instance(name), Duration::from_secs(5)).is_some());
    }
    // Writes through the cut-off instance wait, then fail: they never
    // reach a primary it can no longer vouch for.
    let mut conn = redis::Client::open(d.instance(&holder).url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let refused = redis::cmd("SET").arg("k").arg("v").query::<()>(&mut conn);
    assert!(
        refused.is_err(),
        "a write through the cut-off instance was accepted"
    );

    // Another instance takes the lease, and fails over when the primary
    // dies; the cut-off one promotes nothing.
    let p = d.node_index(&primary);
    wait_until(
        "another instance to take the lease",
        Duration::from_secs(15),
        || {
            d.instances
                .iter()
                .filter(|i| i.name != holder)
                .all(|i| i.holder().is_some_and(|h| h != holder))
        },
    );
    let new_holder = d.instance(&others[0]).holder().expect("a holder");
    let held = metrics(d.instance(&new_holder));
    assert!(
        held.contains("rampart_coordination_lease_held{shard=\"main\"} 1")
            && held.contains("rampart_coordination_instances 2"),
        "{held}"
    );
    d.redis.nodes[p].kill();
    let promoted = d.wait_promoted_by(&others, &primary, Duration::from_secs(20));
    assert_eq!(d.claiming_primary(), vec![promoted.clone()]);
    let cut_events = d.instance(&holder).events();
    assert!(
        !cut_events
            .iter()
            .any(|e| e["kind"] == "promoted" || e["kind"] == "epoch-fenced"),
        "the cut-off instance decided something: {cut_events:?}"
    );

    // Healed: it routes to the new primary and writes flow through it.
    d.instance(&holder).cut_from_etcd(false);
    let cut = d.instance(&holder);
    wait_until(
        "the healed instance to converge",
        Duration::from_secs(15),
        || {
            cut.primary().as_deref() == Some(promoted.as_str())
                && cut.topology()["shards"][0]["view_stale"] != true
        },
    );
    assert!(first_write(cut, Duration::from_secs(5)).is_some());
}

#[test]
fn etcd_quorum_lost_no_promotion_and_writes_go_on() {
    let mut d = deploy(3, "");
    let (_, primary) = d.wait_agreed();
    let epoch = d.live()[0].epoch();
    d.etcd.stop(1);
    d.etcd.stop(2);
    // Every instance sees etcd gone, asks the others, and (all of them
    // unable to read it, all on the same epoch) keeps writing: failsafe.
    wait_until(
        "every instance to notice etcd is gone",
        Duration::from_secs(10),
        || {
            d.live().iter().all(|i| {
                let c = &i.topology()["coordination"];
                c["view_age_ms"].as_u64().is_some_and(|age| age > 1000)
            })
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    for instance in d.live() {
        assert!(
            first_write(instance, Duration::from_secs(3)).is_some(),
            "writes through {} go on without etcd\n{}",
            instance.name,
            d.logs()
        );
        assert_eq!(instance.topology()["coordination"]["failsafe"], true);
    }
    // A policy cannot be shared without etcd: the operator is told.
    let answer = rampart_tests::redis_cli(
        d.instances[0].port,
        &["RAMPART", "POLICY", "LOAD", "router", "builtin:round-robin"],
    )
    .unwrap_or_default();
    assert!(answer.contains("not shared with the others"), "{answer}");
    // The primary dies meanwhile: nobody can promote.
    let p = d.node_index(&primary);
    d.redis.nodes[p].kill();
    std::thread::sleep(Duration::from_secs(3));
    for instance in d.live() {
        assert_eq!(
            instance.epoch(),
            epoch,
            "{} moved on without etcd",
            instance.name
        );
    }
    // Nobody can fail over, so every instance keeps the replicas' copies
    // safe: they stop following the dead primary (they would resync from
    // it if it came back empty) and nothing routes to them.
    for instance in d.live() {
        assert_eq!(instance.primary().as_deref(), Some(primary.as_str()));
    }
    wait_until(
        "the replicas to be detached from the dead primary",
        Duration::from_secs(5),
        || d.claiming_primary().len() == 2,
    );
    // etcd returns: the failover happens, everyone converges.
    d.etcd.restart(1);
    d.etcd.restart(2);
    let promoted = d.wait_new_primary(&primary, Duration::from_secs(30));
    for instance in d.live() {
        assert!(first_write(instance, Duration::from_secs(10)).is_some());
    }
    assert_eq!(d.claiming_primary(), vec![promoted]);
}

/// `n` keys written through `instance` one by one; the acknowledged ones.
/// The refusals are printed (a test that expects none says why it got one).
fn write_keys(instance: &Instance, prefix: &str, n: usize) -> Vec<String> {
    let mut conn = redis::Client::open(instance.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    (0..n)
        .map(|i| format!("{prefix}:{i}"))
        .filter(
            |key| match redis::cmd("SET").arg(key).arg("v").query::<()>(&mut conn) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("SET {key} through {}: {e}", instance.name);
                    false
                }
            },
        )
        .collect()
}

/// etcd's quorum lost, then the primary killed and restarted empty (no
/// persistence) while nobody can fail over: the replicas must not resync
/// from it, failsafe must not write to it, and once etcd is back a replica
/// holding everything is promoted on its own.
#[test]
fn etcd_quorum_lost_and_the_primary_restarting_empty_loses_nothing() {
    let mut d = deploy(3, "");
    let (_, primary) = d.wait_agreed();
    let before = write_keys(&d.instances[0], "n:before", 2000);
    assert_eq!(before.len(), 2000, "every write before the faults answered");
    let urls: Vec<String> = d.instances.iter().map(|i| i.url()).collect();
    let work = Workload::over(&urls, 6, 0, true);
    std::thread::sleep(Duration::from_millis(500));
    d.etcd.stop(1);
    d.etcd.stop(2);
    std::thread::sleep(Duration::from_secs(2));
    let p = d.node_index(&primary);
    d.redis.nodes[p].kill();
    std::thread::sleep(Duration::from_secs(2));
    d.redis.nodes[p].restart();
    // The empty node answers, claims to be primary, and would take writes:
    // nobody may send it any, and no replica may copy its emptiness.
    std::thread::sleep(Duration::from_secs(4));
    for instance in d.live() {
        assert_eq!(
            instance.topology()["shards"][0]["view_stale"],
            true,
            "{} writes to a primary that restarted empty under failsafe\n{}",
            instance.name,
            d.logs()
        );
    }
    d.etcd.restart(1);
    d.etcd.restart(2);
    let promoted = d.wait_new_primary(&primary, Duration::from_secs(30));
    for instance in d.live() {
        assert!(
            first_write(instance, Duration::from_secs(10)).is_some(),
            "writes resume through {} on their own\n{}",
            instance.name,
            d.logs()
        );
    }
    let outcomes = work.finish();
    eprintln!(
        "{} acknowledged during the faults, {} failed, {} unknown",
        outcomes.acked.len(),
        outcomes.failed,
        outcomes.unknown
    );
    let keys = rampart_tests::workload::keys_at(&promoted);
    let lost: Vec<&String> = before.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} of the 2000 keys written before the faults are gone\n{}",
        lost.len(),
        d.logs()
    );
    assert_nothing_lost(&d, &promoted, &outcomes);
    // The restarted node follows the new primary, like every other.
    wait_until("one primary", Duration::from_secs(10), || {
        d.claiming_primary() == vec![promoted.clone()]
    });
}

/// The lease holder cut off from etcd while the primary refuses the other
/// instances (a real split: only the cut-off instance still reaches the
/// primary), over and over. The others take the lease and fail over; the
/// cut-off instance must stop acknowledging writes before they can, to the
/// millisecond rather than at its next coordination round.
#[test]
fn cut_off_holder_and_a_split_lose_no_acknowledged_write() {
    let cycles: usize = std::env::var("RAMPART_SPLIT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // A view bound above the lease TTL: the lease is what must stop the
    // cut-off instance, and a round takes a whole request timeout.
    let coordination = "max_view_age_ms = 3000\nrequest_timeout_ms = 500";
    let mut d = deploy_users(EtcdCluster::start(3), 3, coordination, "", true);
    let urls: Vec<String> = d.instances.iter().map(|i| i.url()).collect();
    let work = Workload::over(&urls, 6, 0, true);
    let mut primary = String::new();
    for cycle in 0..cycles {
        let (holder, current) = d.wait_agreed();
        primary = current;
        let others = d.names_but(&holder);
        let p = d.node_index(&primary);
        d.instance(&holder).cut_from_etcd(true);
        for user in &others {
            d.redis.nodes[p].cli(&["ACL", "SETUSER", user, "off"]);
            d.redis.nodes[p].cli(&["CLIENT", "KILL", "USER", user]);
        }
        let started = Instant::now();
        let promoted = d.wait_promoted_by(&others, &primary, Duration::from_secs(30));
        eprintln!(
            "cycle {cycle}: {holder} cut off, {promoted} promoted after {} ms",
            started.elapsed().as_millis()
        );
        for user in &others {
            d.redis.nodes[p].cli(&["ACL", "SETUSER", user, "on"]);
        }
        d.instance(&holder).cut_from_etcd(false);
        primary = settle(&d);
    }
    finish_and_check(&d, work, &primary, &format!("{cycles} cycles"));
}

/// etcd returns while the other instances still write under failsafe:
/// the lease holder reads etcd first (the others stay cut off from it) and
/// fails over a primary only it can no longer reach, while the others,
/// still reaching it, were writing on the strength of the holder's own
/// "I cannot read etcd either". The fence must wait for their failsafe to
/// end.
#[test]
fn etcd_returning_during_failsafe_loses_no_acknowledged_write() {
    let mut d = deploy_users(EtcdCluster::start(3), 3, "", "", true);
    let (holder, primary) = d.wait_agreed();
    let others = d.names_but(&holder);
    let urls: Vec<String> = d.instances.iter().map(|i| i.url()).collect();
    let work = Workload::over(&urls, 6, 0, true);
    d.etcd.stop(1);
    d.etcd.stop(2);
    wait_until("failsafe everywhere", Duration::from_secs(10), || {
        d.live()
            .iter()
            .all(|i| i.topology()["coordination"]["failsafe"] == true)
    });
    for name in &others {
        d.instance(name).cut_from_etcd(true);
    }
    let p = d.node_index(&primary);
    d.redis.nodes[p].cli(&["ACL", "SETUSER", &holder, "off"]);
    d.redis.nodes[p].cli(&["CLIENT", "KILL", "USER", &holder]);
    std::thread::sleep(Duration::from_millis(300));
    d.etcd.restart(1);
    d.etcd.restart(2);
    let promoted = d.wait_promoted_by(
        std::slice::from_ref(&holder),
        &primary,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500));
    d.redis.nodes[p].cli(&["ACL", "SETUSER", &holder, "on"]);
    for name in &others {
        d.instance(name).cut_from_etcd(false);
    }
    let primary = settle(&d);
    assert_eq!(primary, promoted);
    finish_and_check(&d, work, &primary, "etcd back during failsafe");
}

#[test]
fn paused_holder_steps_back() {
    let mut d = deploy(2, "");
    let (holder, _) = d.wait_agreed();
    d.instance(&holder).signal("STOP");
    // Longer than the lease TTL (2 s): another instance takes over.
    std::thread::sleep(Duration::from_secs(4));
    let other = d.other_than(&holder);
    wait_until(
        "the other instance to take the lease",
        Duration::from_secs(10),
        || d.instance(&other).holder().as_deref() == Some(other.as_str()),
    );
    d.instance(&holder).signal("CONT");
    let paused = d.instance(&holder);
    wait_until(
        "the paused instance to notice",
        Duration::from_secs(10),
        || paused.events().iter().any(|e| e["kind"] == "tilt"),
    );
    // It follows the new holder's records and does not take the lease back.
    let (now, _) = d.wait_agreed();
    assert_eq!(now, other);
}

/// The active router generation and its sha256 on `instance`.
fn router_on(instance: &Instance) -> (u64, Option<String>) {
    let addr = format!("127.0.0.1:{}", instance.admin)
        .parse()
        .expect("addr");
    let (_, body) = rampart_tests::http_get(addr, "/v1/policies");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let active = &json["router"][0][1]["active"];
    (
        active["generation"].as_u64().unwrap_or(0),
        active["sha256"].as_str().map(str::to_string),
    )
}

#[test]
fn a_policy_loaded_on_one_instance_runs_on_all_and_a_rollback_reaches_all() {
    let d = deploy_with(3, "", "read_from = \"replicas\"");
    let hostile = rampart_tests::test_plugin("router-hostile");
    let name = rampart_tests::plugin_name(&hostile);
    // It passes the self-check, then traps on every 40th call.
    let answer = rampart_tests::redis_cli(
        d.instances[0].port,
        &[
            "RAMPART",
            "POLICY",
            "LOAD",
            "router",
            &name,
            "trap-after:40",
        ],
    )
    .unwrap_or_default();
    assert_eq!(answer.trim(), "OK generation 2");
    let loaded = Instant::now();
    let (_, sha) = router_on(&d.instances[0]);
    assert!(sha.is_some());
    wait_until(
        "every instance to run generation 2",
        Duration::from_secs(10),
        || d.instances.iter().all(|i| router_on(i) == (2, sha.clone())),
    );
    eprintln!(
        "generation 2 on every instance {} ms after the load returned",
        loaded.elapsed().as_millis()
    );

    // Reads through instance 1 only: it alone sees the traps, rolls back,
    // and every instance goes back with it.
    let mut conn = redis::Client::open(d.instances[1].url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    redis::cmd("SET")
        .arg("p")
        .arg("v")
        .query::<()>(&mut conn)
        .expect("SET");
    for _ in 0..300 {
        let v: String = redis::cmd("GET").arg("p").query(&mut conn).expect("GET");
        assert_eq!(v, "v");
    }
    wait_until(
        "every instance to roll back",
        Duration::from_secs(10),
        || d.instances.iter().all(|i| router_on(i).0 == 1),
    );
    let kinds: Vec<String> = d.instances[2]
        .events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(kinds.iter().any(|k| k == "policy-followed"), "{kinds:?}");
}

/// Waits for the faults of one round to heal: every instance agrees on a
/// primary, which is the only node claiming the role.
fn settle(d: &Deployment) -> String {
    let (_, primary) = d.wait_agreed();
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.claiming_primary() != vec![primary.clone()] {
        assert!(
            Instant::now() < deadline,
            "{:?} claim to be primary, the instances route to {primary}\n{}",
            d.claiming_primary(),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    primary
}

#[test]
fn nemesis_through_three_instances_loses_no_acknowledged_write() {
    let mut d = deploy(3, "");
    let urls: Vec<String> = d.instances.iter().map(|i| i.url()).collect();
    let work = Workload::over(&urls, 6, 0, true);
    std::thread::sleep(Duration::from_millis(500));
    let first_epoch = d.instances[0].epoch();

    // 1. A non-holder instance and the primary killed together.
    let (holder, primary) = d.wait_agreed();
    let other = d.other_than(&holder);
    let p = d.node_index(&primary);
    d.instance(&other).kill();
    d.redis.nodes[p].kill();
    d.wait_new_primary(&primary, Duration::from_secs(20));
    d.redis.nodes[p].restart();
    d.instance(&other).restart();
    let primary = settle(&d);

    // 2. The holder and the primary paused past the lease TTL.
    let (holder, _) = d.wait_agreed();
    let p = d.node_index(&primary);
    d.instance(&holder).signal("STOP");
    d.redis.nodes[p].signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    d.redis.nodes[p].signal("CONT");
    d.instance(&holder).signal("CONT");
    let primary = settle(&d);

    // 3. The holder cut off from etcd, then the primary killed.
    let (holder, _) = d.wait_agreed();
    let p = d.node_index(&primary);
    d.instance(&holder).cut_from_etcd(true);
    std::thread::sleep(Duration::from_secs(3));
    d.redis.nodes[p].kill();
    std::thread::sleep(Duration::from_secs(3));
    d.instance(&holder).cut_from_etcd(false);
    d.redis.nodes[p].restart();
    let primary = settle(&d);

    finish_and_check(&d, work, &primary, "nemesis");
    let promotions = d.instances[0].epoch() - first_epoch;
    assert!(
        promotions >= 3,
        "each round failed over: {promotions} promotion(s)"
    );
}

#[test]
fn etcd_with_client_certificates() {
    let pki = std::sync::Arc::new(rampart_tests::pki::Pki::new());
    let etcd = EtcdCluster::start_tls(1, &pki, true);
    let coordination = format!(
        "[coordination.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    );
    let mut d = deploy_on(etcd, 2, &coordination, "");
    let (_, primary) = d.wait_agreed();
    let p = d.node_index(&primary);
    d.redis.nodes[p].kill();
    let promoted = d.wait_new_primary(&primary, Duration::from_secs(20));
    assert_eq!(d.claiming_primary(), vec![promoted]);
}

/// Authentication over TLS (server certificate only: with client
/// certificates required too, etcd's JSON gateway refuses authenticated
/// requests whose certificate names a CommonName).
#[test]
fn etcd_with_authentication() {
    let pki = std::sync::Arc::new(rampart_tests::pki::Pki::new());
    let etcd = EtcdCluster::start_tls(1, &pki, false);
    for step in [
        vec!["user", "add", "root:r00t"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        etcd.etcdctl(&step).expect("etcdctl");
    }
    let coordination = format!(
        "username = \"root\"\npassword = \"r00t\"\n[coordination.tls]\nca = \"{}\"",
        pki.ca.display()
    );
    let d = deploy_on(etcd, 2, &coordination, "");
    d.wait_agreed();
    // What Rampart wrote is there, readable only with credentials.
    let keys = d
        .etcd
        .etcdctl(&[
            "--user",
            "root:r00t",
            "get",
            "--prefix",
            "/rampart/",
            "--keys-only",
        ])
        .expect("etcdctl get");
    assert!(keys.contains("/shards/main/record"), "{keys}");
    assert!(d.etcd.etcdctl(&["get", "--prefix", "/rampart/"]).is_err());
}

/// Patroni #2787's lesson, checked on the transaction itself: an instance
/// that believes it still holds a shard's lease (its loop stood still, so
/// nothing told it otherwise) cannot write the shard's record once another
/// holds the lease; and the holder cannot write over a record changed
/// behind its back.
#[test]
fn a_decision_needs_the_lease_and_the_record_it_replaces() {
    use rampart::coord::Coordination;
    use rampart::failover::state::ShardState;
    use std::sync::Arc;

    let etcd = EtcdCluster::start(1);
    let endpoint = etcd.endpoints()[0].clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let start = |name: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n[coordination]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/rampart/cas\"\ninstance = \"{name}\"\nlease_ttl_s = 6\npoll_ms = 50\n[shards.main]\nnodes = [\"127.0.0.1:2\"]\n"
        );
        let config = rampart::Config::parse(&text).expect("config");
        let shard = Arc::new(rampart::topology::ReplicaSet::new(
            "main".into(),
            Vec::new(),
            rampart::config::ReadFrom::Primary,
            false,
            1000,
        ));
        let coordination = Arc::new(Coordination::new(
            config.coordination.as_ref().expect("[coordination]"),
            None,
            true,
            format!("{name}:1"),
            None,
            vec![shard],
            Arc::new(rampart::observe::events::Events::new(16)),
        ));
        let task = runtime.spawn(coordination.clone().run(shutdown.clone()));
        (coordination, task)
    };
    let record = |epoch: u64, primary: &str| ShardState {
        epoch,
        primary: primary.into(),
        waiting: None,
        fenced: false,
        members: None,
    };

    let (a, a_loop) = start("a");
    wait_until("a to hold the lease", Duration::from_secs(10), || {
        a.holds("main")
    });
    runtime
        .block_on(a.save("main", &record(1, "127.0.0.1:7001")))
        .expect("the holder writes");
    // a stands still; its lease key goes (as when its lease expires) and b
    // takes the shard.
    a_loop.abort();
    etcd.etcdctl(&["del", "/rampart/cas/shards/main/lease"])
        .expect("etcdctl del");
    let (b, b_loop) = start("b");
    wait_until("b to hold the lease", Duration::from_secs(10), || {
        b.holds("main")
    });
    assert!(a.holds("main"), "a still believes it holds the lease");
    let stale = runtime.block_on(a.save("main", &record(2, "127.0.0.1:7002")));
    assert!(stale.is_err(), "a wrote a decision without the lease");
    runtime
        .block_on(b.save("main", &record(2, "127.0.0.1:7003")))
        .expect("the new holder writes");
    // The record changed behind b's back (b's loop stopped first, so that
    // it cannot have read the change): b's next write is refused too.
    b_loop.abort();
    etcd.etcdctl(&[
        "put",
        "/rampart/cas/shards/main/record",
        r#"{"epoch":9,"primary":"127.0.0.1:7009"}"#,
    ])
    .expect("etcdctl put");
    let behind = runtime.block_on(b.save("main", &record(3, "127.0.0.1:7003")));
    assert!(behind.is_err(), "b wrote over a record it had not seen");
    let stored = etcd
        .etcdctl(&[
            "get",
            "--print-value-only",
            "/rampart/cas/shards/main/record",
        ])
        .expect("etcdctl get");
    assert!(stored.contains("7009"), "{stored}");
    // The refusal made b step back, but the lease key is still on b's
    // lease: at its next read b knows it holds the shard again, and
    // decides from the record it now sees.
    assert!(!b.holds("main"));
    let _b_again = runtime.spawn(b.clone().run(shutdown.clone()));
    wait_until("b to hold the lease again", Duration::from_secs(10), || {
        b.holds("main")
    });
    runtime
        .block_on(b.save("main", &record(10, "127.0.0.1:7003")))
        .expect("b writes again, over the record it has read");
}

/// Keys written into etcd by hand (an instance key without a lease, which
/// would never expire, and a shard lease key without a lease) are refused
/// with an event, and failover goes on.
#[test]
fn keys_written_by_hand_are_refused_and_failover_goes_on() {
    let mut d = deploy(2, "");
    let (_, primary) = d.wait_agreed();
    let prefix = d.instances[0].topology()["coordination"]["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    let ghost = r#"{"instance":"ghost","listen":"127.0.0.1:1","published_ms":1}"#;
    d.etcd
        .etcdctl(&["put", &format!("{prefix}/instances/ghost"), ghost])
        .expect("put");
    d.etcd
        .etcdctl(&["put", &format!("{prefix}/shards/other/lease"), "ghost"])
        .expect("put");
    let first = d.instances[0].name.clone();
    wait_until("the keys to be refused", Duration::from_secs(10), || {
        d.instance(&first)
            .events()
            .iter()
            .filter(|e| e["kind"] == "coordination-key-refused")
            .count()
            >= 2
    });
    let listed = d.instances[0].topology()["coordination"]["instances"].clone();
    assert!(
        !listed.to_string().contains("ghost"),
        "a key without a lease shows as a live instance: {listed}"
    );
    let p = d.node_index(&primary);
    d.redis.nodes[p].kill();
    d.wait_new_primary(&primary, Duration::from_secs(20));
}

/// Two primaries die one after the other, with instances agreeing through
/// etcd: the replica that took every write of the second epoch is promoted
/// alone, because the epoch's record in etcd says the first primary, down
/// since before that epoch, never followed it; every write is there.
#[test]
fn a_second_failover_through_etcd_counts_only_the_epoch_s_members() {
    let mut d = deploy(2, "");
    let (_, first) = d.wait_agreed();
    let before = write_keys(&d.instances[0], "m:before", 50);
    let index = d.node_index(&first);
    d.redis.nodes[index].kill();
    let second = d.wait_new_primary(&first, Duration::from_secs(20));
    let during = write_keys(&d.instances[1], "m:during", 50);
    assert_eq!(
        during.len(),
        50,
        "writes acknowledged by the one live replica"
    );
    let index = d.node_index(&second);
    d.redis.nodes[index].kill();
    let third = d.wait_new_primary(&second, Duration::from_secs(20));
    assert_ne!(third, first, "the first primary is down");
    let survivor = &d.redis.nodes[d.node_index(&third)];
    for key in before.iter().chain(&during) {
        assert_eq!(survivor.cli(&["GET", key]).trim(), "v", "{key} lost");
    }
}
