//! The dashboard in a real headless Chromium: it loads, shows the topology
//! and live request rates, and follows a failover on its own (the page is
//! loaded once; only its own polling updates it).

use std::time::Duration;

use rampart_tests::browser::Browser;
use rampart_tests::{config_for, http_get, Cluster, Proxy, Setup};
use redis::Commands;

/// The node rows as `addr role health` strings, for assertions and messages.
const ROWS: &str = "JSON.stringify([...document.querySelectorAll('tr.node')].map(r => [r.dataset.addr, r.dataset.role, r.dataset.health].join(' ')))";

/// True when the page shows a row `addr role health`.
fn row_is(addr: &str, role: &str, health: &str) -> String {
    format!("JSON.parse({ROWS}).includes('{addr} {role} {health}')")
}

#[test]
fn dashboard_shows_the_topology_and_follows_a_failover() {
    let mut cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let sections = format!(
        "[probe]\ninterval_ms = 50\ntimeout_ms = 200\ndown_after_ms = 500\n[failover]\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let proxy = Proxy::start_with(&config_for(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"replicas\"",
            sections: &sections,
            ..Setup::default()
        },
    ));
    let admin = proxy.admin.expect("admin listener");
    let (status, page) = http_get(admin, "/dashboard");
    assert_eq!(status, 200);
    assert!(page.contains("<title>Rampart</title>"));

    let mut browser = Browser::open(&format!("http://{admin}/dashboard"));
    let old = cluster.primary().addr();
    let replicas: Vec<String> = cluster.addrs()[1..].to_vec();
    let ten_s = Duration::from_secs(10);

    // The topology: the primary and both replicas, all up.
    browser.wait_for("the topology", ten_s, &row_is(&old, "primary", "up"), ROWS);
    for replica in &replicas {
        browser.wait_for(
            "the replicas",
            ten_s,
            &row_is(replica, "replica", "up"),
            ROWS,
        );
    }
    assert_eq!(browser.eval("document.title"), "Rampart");
    // The shard's slots, and the Risks panel: every replica's room in the
    // primary's backlog.
    browser.wait_for(
        "the slots",
        ten_s,
        "document.querySelector('.shard-slots')?.textContent === '0-16383'",
        "document.getElementById('shards').innerText",
    );
    for replica in &replicas {
        browser.wait_for(
            "the risks panel",
            ten_s,
            &format!("Number(document.querySelector('li[data-risk=backlog][data-node=\"{replica}\"]')?.dataset.value) > 0.5"),
            "document.getElementById('risks').innerText",
        );
    }
    browser.wait_for(
        "the router policy",
        ten_s,
        "document.querySelector('tr[data-policy=router][data-slot=active]')?.dataset.name === 'round-robin'",
        "document.getElementById('policies').innerText",
    );

    // Live request rates: traffic through the proxy shows as req/s.
    let mut conn = proxy.conn();
    let traffic = |conn: &mut redis::Connection| {
        for i in 0..300 {
            let _: () = conn.set(format!("k{i}"), i).unwrap();
            let _: Option<i64> = conn.get(format!("k{i}")).unwrap();
        }
    };
    let mut seen_rate = false;
    for _ in 0..20 {
        traffic(&mut conn);
        if browser.eval(
            "Number(document.querySelector('.shard-rate')?.textContent.replace(/,/g, '')) > 0",
        ) == true
        {
            seen_rate = true;
            break;
        }
    }
    assert!(
        seen_rate,
        "no request rate shown: {}",
        browser.eval("document.getElementById('shards').innerText")
    );

    // Who served the reads: each GET followed its own SET, so under the
    // default session consistency the primary served them.
    browser.wait_for(
        "the reads line",
        ten_s,
        "Number(document.querySelector('p.reads')?.dataset.notCaughtUp) > 0",
        "document.getElementById('shards').innerText",
    );

    // The charts of the last minutes draw the traffic, and move on their
    // own as new samples arrive.
    browser.wait_for(
        "the request chart",
        ten_s,
        "Number(document.querySelector('#chart-requests path[data-series=main]')?.dataset.points) >= 2",
        "document.getElementById('charts').innerHTML.slice(0, 500)",
    );
    for chart in ["chart-latency", "chart-lag", "chart-errors", "chart-held"] {
        browser.wait_for(
            chart,
            ten_s,
            &format!("document.querySelector('#{chart} path') !== null"),
            "document.getElementById('charts').innerText",
        );
    }
    let newest = browser.eval("Number(document.getElementById('chart-requests').dataset.newest)");
    browser.wait_for(
        "the charts to move",
        ten_s,
        &format!("Number(document.getElementById('chart-requests').dataset.newest) > {newest}"),
        "document.getElementById('chart-requests').dataset.newest",
    );
    screenshot(&mut browser, "dashboard.png");

    // Kill the primary: without a reload the page shows a new primary, the
    // old one down, and the promotion in the event timeline.
    let updates_before = browser.eval("Number(document.body.dataset.updates)");
    cluster.nodes[0].kill();
    let new_primary = format!(
        "JSON.parse({ROWS}).some(r => r.endsWith(' primary up') && !r.startsWith('{old} '))"
    );
    browser.wait_for("a new primary", ten_s, &new_primary, ROWS);
    let old_down =
        format!("JSON.parse({ROWS}).some(r => r.startsWith('{old} ') && r.endsWith(' down'))");
    browser.wait_for("the old primary down", ten_s, &old_down, ROWS);
    browser.wait_for(
        "the promotion in the timeline",
        ten_s,
        "document.querySelector('li.event[data-kind=promoted]') !== null",
        "document.getElementById('events').innerText",
    );
    let updates_after = browser.eval("Number(document.body.dataset.updates)");
    assert!(
        updates_after.as_f64() > updates_before.as_f64(),
        "the page did not poll: {updates_before} -> {updates_after}"
    );
    let epoch = browser.eval("document.querySelector('h2[data-shard=main]').dataset.epoch");
    assert_eq!(epoch, "2", "the page shows the new epoch");
    // The failover is marked on the charts' time axis.
    browser.wait_for(
        "the failover on the charts",
        ten_s,
        "document.querySelector('#chart-requests line.marker[data-kind=promoted]') !== null",
        "document.getElementById('charts').innerHTML.slice(0, 500)",
    );
    screenshot(&mut browser, "dashboard-failover.png");
}

/// Takes a screenshot of the page, checks it is a picture, and with
/// `RAMPART_UPDATE_SCREENSHOTS=1` writes it to docs/images/ (the
/// screenshots docs/operations.md shows).
fn screenshot(browser: &mut Browser, name: &str) {
    let png = browser.screenshot(1280, 1100);
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a screenshot"
    );
    if std::env::var_os("RAMPART_UPDATE_SCREENSHOTS").is_some() {
        let dir = rampart_tests::repo_path("docs/images");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// The node rows as `addr sync` strings (fan-out shards).
const SYNC_ROWS: &str = "JSON.stringify([...document.querySelectorAll('tr.node')].map(r => [r.dataset.addr, r.dataset.sync].join(' ')))";

#[test]
fn dashboard_shows_where_fanout_nodes_stand() {
    let mut nodes: Vec<rampart_tests::RedisNode> = (0..3)
        .map(|_| rampart_tests::RedisNode::start(None))
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let proxy = Proxy::start_with(&config_for(
        &addrs,
        Setup {
            shard: "[shards.main.replication]\nmode = \"fanout\"",
            ..Setup::default()
        },
    ));
    let admin = proxy.admin.expect("admin listener");
    let mut browser = Browser::open(&format!("http://{admin}/dashboard"));
    let ten_s = Duration::from_secs(10);
    let sync_is =
        |addr: &str, sync: &str| format!("JSON.parse({SYNC_ROWS}).includes('{addr} {sync}')");
    for addr in &addrs {
        browser.wait_for(
            "every node in sync",
            ten_s,
            &sync_is(addr, "in-sync"),
            SYNC_ROWS,
        );
    }
    browser.wait_for(
        "the write mode",
        ten_s,
        "document.getElementById('shards').innerText.includes('fan-out')",
        "document.getElementById('shards').innerText",
    );

    // Each node's place in the writes is its place in Rampart's log (the
    // nodes do not replicate: their own offsets stay 0).
    let _: () = proxy.conn().set("k", 1).unwrap();
    browser.wait_for(
        "every node's place in the log",
        ten_s,
        "[...document.querySelectorAll('tr.node')].every(r => Number(r.dataset.position) > 0)",
        "JSON.stringify([...document.querySelectorAll('tr.node')].map(r => r.dataset.position))",
    );
    // A node that restarts lost what it held: stale, then copied afresh.
    nodes[2].kill();
    // (down, or stale if the write was still on its way to it)
    let away = format!(
        "{} || {}",
        sync_is(&addrs[2], "down"),
        sync_is(&addrs[2], "stale")
    );
    browser.wait_for("the node away", ten_s, &away, SYNC_ROWS);
    nodes[2].restart();
    browser.wait_for(
        "the node copied",
        ten_s,
        &sync_is(&addrs[2], "in-sync"),
        SYNC_ROWS,
    );
    browser.wait_for(
        "the resync in the timeline",
        ten_s,
        "!!document.querySelector('li.event[data-kind=resynced]')",
        "document.getElementById('events').innerText",
    );
}
