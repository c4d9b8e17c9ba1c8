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

/// The value of one sample line of `/metrics`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// The metric families a running Rampart's `/metrics` renders (the names
/// of its `# HELP` lines).
fn exported_families() -> Vec<String> {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let metrics = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics").1;
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every metric family `/metrics` renders is in docs/operations.md's
/// metrics reference: the docs cannot fall behind the code.
#[test]
fn every_metric_is_documented() {
    let families = exported_families();
    let docs = std::fs::read_to_string(rampart_tests::repo_path("docs/operations.md")).unwrap();
    assert!(families.len() > 30, "{families:?}");
    for family in families {
        assert!(
            docs.contains(&format!("| `{family}` |")),
            "docs/operations.md does not list {family}"
        );
    }
}

/// The alert rules pass `promtool check rules` and their own unit tests
/// (`promtool test rules`), and every metric they and the Grafana
/// dashboard query is one Rampart exports.
#[test]
fn alerts_and_the_grafana_dashboard_query_real_metrics() {
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(rampart_tests::repo_path(""))
            .output()
            .expect("promtool (Debian's prometheus package) is installed");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exported = exported_families();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rampart_tests::repo_path("deploy/grafana/rampart.json")).unwrap(),
    )
    .expect("the Grafana dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
        .collect();
    queries.push(
        std::fs::read_to_string(rampart_tests::repo_path("deploy/prometheus/alerts.yml")).unwrap(),
    );
    for text in &queries {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("rampart_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.iter().any(|e| e == family),
                "{name} is queried but not exported"
            );
        }
    }
}

#[test]
fn metrics_in_prometheus_format() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(&cluster.addrs(), Setup::default());
    let admin = proxy.admin.unwrap();
    let mut conn = proxy.conn();
    for i in 0..20 {
        redis::cmd("SET")
            .arg("m")
            .arg(i)
            .query::<()>(&mut conn)
            .unwrap();
        redis::cmd("GET").arg("m").query::<i64>(&mut conn).unwrap();
    }
    let (status, body) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE rampart_request_batch_seconds histogram"),
        "{body}"
    );
    for class in ["read", "write"] {
        let count = sample(
            &body,
            &format!("rampart_request_batch_seconds_count{{class=\"{class}\"}}"),
        )
        .unwrap();
        assert!(count >= 20.0, "{class}: {count}");
    }
    let primary = format!(
        "rampart_node_primary{{shard=\"main\",node=\"{}\"}}",
        cluster.primary().addr()
    );
    assert_eq!(sample(&body, &primary), Some(1.0));
    let up = format!(
        "rampart_node_up{{shard=\"main\",node=\"{}\"}}",
        cluster.nodes[1].addr()
    );
    assert_eq!(sample(&body, &up), Some(1.0));
    assert_eq!(
        sample(&body, "rampart_shard_epoch{shard=\"main\"}"),
        Some(1.0)
    );
    assert!(sample(&body, "rampart_clients").unwrap() >= 1.0);
    assert!(
        body.contains(
            "rampart_failover_events_total{shard=\"main\",kind=\"primary-discovered\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains("rampart_policy_calls_total{shard=\"main\",kind=\"router\""),
        "{body}"
    );
    assert!(body.contains("rampart_policy_calls_total{shard=\"main\",kind=\"quorum\""));
    assert!(body.contains("rampart_policy_traps_total{shard=\"*\",kind=\"detector\""));
    let connections = format!(
        "rampart_node_connections{{shard=\"main\",node=\"{}\"}}",
        cluster.primary().addr()
    );
    assert!(sample(&body, &connections).unwrap() >= 1.0, "{body}");
    well_formed(&body);
}

/// Prometheus's text format: every sample after its family's HELP and
/// TYPE, each family in one group.
fn well_formed(body: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(seen.insert(name.clone()), "{name} declared twice");
            current = name;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| *f == current))
            .unwrap_or(name);
        assert_eq!(family, current, "`{line}` is outside its family's group");
    }
}

#[test]
fn requests_failed_by_a_node_are_counted() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50\ntimeout_ms = 2000\ndown_after_ms = 5000\n[backend]\nreply_timeout_ms = 300\n",
            ..Setup::default()
        },
    );
    let admin = proxy.admin.unwrap();
    let errors = format!(
        "rampart_node_errors_total{{shard=\"main\",node=\"{}\"}}",
        cluster.primary().addr()
    );
    let mut conn = proxy.conn();
    redis::cmd("SET")
        .arg("k")
        .arg(1)
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(sample(&get(admin, "/metrics").1, &errors), Some(0.0));

    // A stalled primary: the read times out on its link, which is reset.
    cluster.primary().signal("STOP");
    let failed = redis::cmd("GET").arg("k").query::<Option<i64>>(&mut conn);
    cluster.primary().signal("CONT");
    let error = failed
        .expect_err("a stalled node's reply timed out")
        .to_string();
    assert!(error.contains("may or may not have run"), "{error}");
    let body = get(admin, "/metrics").1;
    assert_eq!(sample(&body, &errors), Some(1.0), "{body}");
}

#[test]
fn mutating_endpoints_need_the_token_when_one_is_set() {
    let cluster = Cluster::start(1);
    let text = rampart_tests::config_for(&cluster.addrs(), Setup::default()).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"",
    );
    let proxy = Proxy::start_with(&text);
    let admin = proxy.admin.unwrap();
    let (status, _) = rampart_tests::http(admin, "POST", "/v1/policies/router/rollback", b"");
    assert_eq!(status, 401);
    assert_eq!(get(admin, "/v1/topology").0, 200, "reading needs no token");

    // A non-loopback admin listener without a token is refused at start.
    let text = rampart_tests::config_for(&cluster.addrs(), Setup::default()).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"0.0.0.0:0\"",
    );
    let error = rampart_tests::rampart::Config::parse(&text).unwrap_err().0;
    assert!(error.contains("admin.token"), "{error}");
}

/// The client port changes nothing about Rampart unless
/// `proxy.admin_commands` is on, and then (with a token) only after
/// `RAMPART AUTH`. Reading stays open.
#[test]
fn resp_admin_commands_are_off_unless_enabled_and_authenticated() {
    let cluster = Cluster::start(1);
    let nodes: Vec<String> = cluster.addrs().iter().map(|n| format!("\"{n}\"")).collect();
    let text = |proxy: &str, admin: &str| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n[shards.main]\nnodes = [{}]\n",
            nodes.join(", ")
        )
    };
    let off = Proxy::start_with(&text("", ""));
    for args in [
        &["RAMPART", "SWITCHOVER", "main"][..],
        &[
            "RAMPART",
            "POLICY",
            "LOAD",
            "quorum",
            "builtin:quorum-standard",
            "quorum=none",
        ],
        &["RAMPART", "POLICY", "ROLLBACK", "router"],
    ] {
        let answer = off.cli(args);
        assert!(
            answer.contains("proxy.admin_commands"),
            "{args:?}: {answer}"
        );
    }
    assert!(off
        .cli(&["RAMPART", "POLICY", "LIST"])
        .contains("generation"));
    drop(off);

    let on = Proxy::start_with(&text("admin_commands = true", "token = \"s3cret\""));
    let mut c = on.conn();
    let refused = redis::cmd("RAMPART")
        .arg(&["SWITCHOVER", "main"])
        .query::<String>(&mut c)
        .unwrap_err();
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
    let wrong = redis::cmd("RAMPART")
        .arg(&["AUTH", "nope"])
        .query::<String>(&mut c)
        .unwrap_err();
    assert_eq!(wrong.code(), Some("WRONGPASS"), "{wrong}");
    let _: () = redis::cmd("RAMPART")
        .arg(&["AUTH", "s3cret"])
        .query(&mut c)
        .unwrap();
    let moved: String = redis::cmd("RAMPART")
        .arg(&["SWITCHOVER", "main"])
        .query(&mut c)
        .unwrap();
    assert!(!moved.is_empty());
    // Another connection has not authenticated.
    let mut other = on.conn();
    assert!(redis::cmd("RAMPART")
        .arg(&["SWITCHOVER", "main"])
        .query::<String>(&mut other)
        .is_err());
}

/// `RAMPART POLICY LOAD` names a file in `plugins.dir`: a path is refused
/// before anything is opened, and what is in the directory is read only
/// if it is a small regular WebAssembly file. No error quotes a file.
#[test]
fn policy_loads_over_resp_read_only_plugin_files_by_name() {
    let cluster = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "root:$6$hash:19000").unwrap();
    std::fs::write(dir.path().join("big.wasm"), b"\0asm").unwrap();
    let big = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("big.wasm"))
        .unwrap();
    big.set_len(65 * 1024 * 1024).unwrap();
    let fifo = dir.path().join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.wasm")).unwrap();
    std::fs::copy(
        rampart_tests::plugin("router-primary-only"),
        dir.path().join("mine.wasm"),
    )
    .unwrap();
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: &format!("[plugins]\ndir = \"{}\"\n", dir.path().display()),
            ..Setup::default()
        },
    );
    let load = |name: &str| proxy.cli(&["RAMPART", "POLICY", "LOAD", "router", name]);
    for path in ["/etc/shadow", "/nonexistent", "../etc/passwd", "sub/x.wasm"] {
        let answer = load(path);
        assert!(answer.contains("is not a plugin name"), "{path}: {answer}");
    }
    let answer = load("notes.txt");
    assert!(answer.contains("not a WebAssembly component"), "{answer}");
    assert!(!answer.contains("root"), "{answer}");
    assert!(load("big.wasm").contains("larger than 64 MiB"));
    // Neither blocks: a FIFO is opened without waiting for a writer.
    for special in ["fifo.wasm", "zero.wasm"] {
        let answer = load(special);
        assert!(answer.contains("not a regular file"), "{special}: {answer}");
    }
    assert!(load("missing.wasm").contains("no such file"));
    assert_eq!(load("mine.wasm").trim(), "OK generation 2");
    let listed = proxy.cli(&["RAMPART", "POLICY", "LIST"]);
    assert!(listed.contains("\"mine.wasm\""), "{listed}");
}

/// Wrong passwords are counted and, past the third on one connection,
/// answered ever more slowly (RESET does not start over); the right one
/// still gets in.
#[test]
fn password_guessing_is_counted_and_slowed() {
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            proxy: "password = \"right\"",
            ..Setup::default()
        },
    );
    let mut c = proxy.conn();
    for _ in 0..3 {
        assert!(redis::cmd("AUTH").arg("wrong").query::<()>(&mut c).is_err());
    }
    let _: String = redis::cmd("RESET").query(&mut c).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let e = redis::cmd("AUTH")
            .arg("wrong")
            .query::<()>(&mut c)
            .unwrap_err();
        assert_eq!(e.code(), Some("WRONGPASS"));
    }
    // The 4th, 5th and 6th wait 100, 200 and 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(700));
    let _: () = redis::cmd("AUTH").arg("right").query(&mut c).unwrap();
    let metrics = get(proxy.admin.unwrap(), "/metrics").1;
    assert!(
        metrics.contains("rampart_auth_failures_total 6"),
        "{metrics}"
    );
}

/// Sends a raw HTTP request to the admin listener; the status code.
fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A browser page elsewhere cannot change anything (cross-origin POST),
/// nor read anything through a name pointed at this machine (DNS
/// rebinding); slow or idle connections are cut and capped.
#[test]
fn the_admin_listener_refuses_other_origins_other_hosts_and_idle_floods() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50",
            ..Setup::default()
        },
    );
    let admin = proxy.admin.unwrap();
    let cross = format!(
        "POST /v1/shards/main/switchover HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(admin, &cross), 403);
    let rebound =
        "GET /v1/topology HTTP/1.1\r\nHost: evil.example:6381\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(admin, rebound), 403);
    let local = format!(
        "GET /v1/topology HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    assert_eq!(raw_status(admin, &local), 200);
    // The same origin may change things.
    let same = format!(
        "POST /v1/shards/main/switchover HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(admin, &same), 200);
    drop(proxy);

    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            sections: "[probe]\ninterval_ms = 50",
            admin: "header_timeout_ms = 500\nmax_connections = 2",
            ..Setup::default()
        },
    );
    let admin = proxy.admin.unwrap();
    // Two connections that never finish their headers hold both places...
    let mut slow = std::net::TcpStream::connect(admin).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x").unwrap();
    let _idle = std::net::TcpStream::connect(admin).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // ... so a third is closed at once.
    let mut third = std::net::TcpStream::connect(admin).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    // The slow one is cut after the header timeout, and the listener serves.
    slow.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    wait_until("a place is free again", Duration::from_secs(5), || {
        get(admin, "/healthz").0 == 200
    });
}

/// HEAD is answered as GET without a body (load balancers and uptime
/// checkers probe that way), and needs no token.
#[test]
fn head_requests_are_answered_like_get_without_a_body() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(0);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            admin: "token = \"t\"",
            ..Setup::default()
        },
    );
    let admin = proxy.admin.unwrap();
    for path in ["/healthz", "/readyz", "/metrics", "/v1/topology"] {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let (head, body) = response.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(body.is_empty(), "{path}: a body came with HEAD: {body}");
        assert!(
            head.to_ascii_lowercase().contains("content-length:"),
            "{path}: {head}"
        );
    }
    assert_eq!(
        raw_status(
            admin,
            &format!("HEAD /nothing HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
        ),
        404
    );
}
