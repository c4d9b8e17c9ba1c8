//! Nodes named by DNS (`dns+srv://`, `dns://name:port`), looked up in a
//! real DNS server (dnsmasq) at start and every `discovery.interval_ms`:
//! a node that appears joins the shard, one that disappears leaves it, and
//! a nameserver outage changes nothing.

use std::time::Duration;

use rampart_tests::dns::{Dnsmasq, Records};
use rampart_tests::{wait_until_or, Cluster, Proxy, RedisNode};

const SERVICE: &str = "_redis._tcp.cache.test";

fn records(nodes: &[&RedisNode]) -> Records {
    let mut records = Records::default();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("n{i}-{}.test", node.port);
        records.a.push((name.clone(), "127.0.0.1".into()));
        records.srv.push((SERVICE.into(), name, node.port));
    }
    records
}

fn addrs(proxy: &Proxy) -> Vec<String> {
    let mut addrs: Vec<String> = proxy.shard()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap_or_default().to_string())
        .collect();
    addrs.sort();
    addrs
}

fn sorted(nodes: &[&RedisNode]) -> Vec<String> {
    let mut addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    addrs.sort();
    addrs
}

fn wait_nodes(proxy: &Proxy, nodes: &[&RedisNode], what: &str) {
    wait_until_or(
        what,
        Duration::from_secs(20),
        || addrs(proxy) == sorted(nodes),
        || format!("{:?}\n{:?}", addrs(proxy), proxy.event_kinds()),
    );
}

#[test]
fn nodes_named_by_srv_records_join_and_leave_as_dns_says() {
    let cluster = Cluster::start(1);
    let (primary, replica) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut dns = Dnsmasq::start(&records(&[primary, replica]));
    let proxy = Proxy::start_with(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n\
         [discovery]\nnameserver = \"{}\"\ninterval_ms = 200\n\
         [shards.main]\nnodes = [\"dns+srv://{SERVICE}\"]\nread_from = \"replicas\"\n",
        dns.addr()
    ));
    assert_eq!(
        addrs(&proxy),
        sorted(&[primary, replica]),
        "looked up at start"
    );
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut proxy.conn())
        .unwrap();

    // A node appears in DNS: it joins, follows the primary, serves reads.
    let newcomer = RedisNode::start(None);
    dns.serve(&records(&[primary, replica, &newcomer]));
    wait_nodes(
        &proxy,
        &[primary, replica, &newcomer],
        "the new node to join",
    );
    wait_until_or(
        "the new node to follow the primary",
        Duration::from_secs(20),
        || newcomer.cli(&["GET", "k"]).trim() == "v",
        || format!("{:#}", proxy.shard()),
    );

    // One disappears: it leaves.
    dns.serve(&records(&[primary, &newcomer]));
    wait_nodes(&proxy, &[primary, &newcomer], "the replica to leave");
    let kinds = proxy.event_kinds();
    assert!(
        kinds.iter().any(|k| k == "node-added") && kinds.iter().any(|k| k == "node-removed"),
        "{kinds:?}"
    );

    // The nameserver goes away: nothing changes, and it is said once.
    dns.stop();
    wait_until_or(
        "the failed lookup to be reported",
        Duration::from_secs(10),
        || proxy.event_kinds().iter().any(|k| k == "discovery-failed"),
        || format!("{:?}", proxy.event_kinds()),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(addrs(&proxy), sorted(&[primary, &newcomer]));
    let failures = proxy
        .event_kinds()
        .iter()
        .filter(|k| *k == "discovery-failed")
        .count();
    assert_eq!(
        failures, 1,
        "an outage is reported once, not at every lookup"
    );

    // The primary disappearing from DNS is refused: it stays.
    dns.serve(&records(&[&newcomer]));
    wait_until_or(
        "the refusal",
        Duration::from_secs(10),
        || {
            proxy
                .event_kinds()
                .iter()
                .any(|k| k == "node-change-refused")
        },
        || format!("{:?}", proxy.event_kinds()),
    );
    assert_eq!(proxy.shard()["primary"], primary.addr().as_str());
}

#[test]
fn a_name_with_a_port_is_looked_up_as_addresses() {
    let cluster = Cluster::start(1);
    let replica = &cluster.nodes[1];
    let dns = Dnsmasq::start(&Records {
        a: vec![("replica.cache.test".into(), "127.0.0.1".into())],
        ..Default::default()
    });
    let proxy = Proxy::start_with(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [discovery]\nnameserver = \"{}\"\n\
         [shards.main]\nnodes = [\"{}\", \"dns://replica.cache.test:{}\"]\n",
        dns.addr(),
        cluster.nodes[0].addr(),
        replica.port
    ));
    assert_eq!(addrs(&proxy), sorted(&[&cluster.nodes[0], replica]));
    // A name that does not resolve at start is a clear error.
    let config = rampart::Config::parse(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[discovery]\nnameserver = \"{}\"\n\
         [shards.main]\nnodes = [\"dns://missing.cache.test:6379\"]\n",
        dns.addr()
    ))
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = match runtime.block_on(rampart::Server::start(config)) {
        Ok(_) => panic!("started without its nodes"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("missing.cache.test: no such name"),
        "{error}"
    );
}
