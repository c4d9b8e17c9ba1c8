//! The admin HTTP listener and the RAMPART command namespace.

use std::time::Duration;

use rampart_tests::{http_get as get, wait_until, Cluster, Proxy, Setup};

#[test]
fn health_readiness_and_topology() {
    let mut cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let admin = proxy.admin.expect("admin listener");

    assert_eq!(get(admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz").0, 200);
    assert_eq!(get(admin, "/nope").0, 404);

    let (status, body) = get(admin, "/v1/topology");
    assert_eq!(status, 200);
    let topology: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = topology["shards"][0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let primary = nodes.iter().find(|n| n["primary"] == true).unwrap();
    assert_eq!(primary["addr"], cluster.primary().addr());
    assert_eq!(primary["role"], "primary");
    assert_eq!(primary["health"], "up");

    // The same picture through the RESP admin namespace.
    let through_resp: serde_json::Value =
        serde_json::from_str(&proxy.cli(&["RAMPART", "TOPOLOGY"])).unwrap();
    assert_eq!(
        through_resp["shards"][0]["nodes"][0]["addr"],
        nodes[0]["addr"]
    );
    assert!(proxy.cli(&["RAMPART", "NOPE"]).contains("Try RAMPART HELP"));

    // Without a reachable primary the proxy is alive but not ready, and
    // says which shard is missing one.
    cluster.nodes[0].kill();
    wait_until("readiness to drop", Duration::from_secs(10), || {
        get(admin, "/readyz").0 == 503
    });
    assert!(get(admin, "/readyz").1.contains("main"));
    assert_eq!(get(admin, "/healthz").0, 200);
}
