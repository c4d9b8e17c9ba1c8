//! The `rampart` command line, run as a separate process exactly as users
//! run it: `--version`, `check-config`, `status`, `events`, `policy ...`,
//! `switchover`, `promote` against a running Rampart, and `demo` end to end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rampart_tests::{
    config_for, free_port, plugin, redis_cli, repo_path, wait_until, Cluster, Proxy, Running, Setup,
};

const TOKEN: &str = "s3cret";

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args(args)
        .env_remove("RAMPART_ADMIN")
        .env_remove("RAMPART_ADMIN_TOKEN")
        .env_remove("RAMPART_PASSWORD")
        .output()
        .expect("run rampart")
}

/// Runs `rampart args`, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = rampart(args);
    assert!(
        out.status.success(),
        "rampart {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every subcommand `rampart --help` lists is in docs/operations.md's CLI
/// table.
#[test]
fn every_subcommand_is_documented() {
    let help = ok(&["--help"]);
    let docs = std::fs::read_to_string(repo_path("docs/operations.md")).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 8, "{help}");
    for command in commands {
        assert!(
            docs.contains(&format!("| `rampart {command}")),
            "docs/operations.md does not document `rampart {command}`"
        );
    }
}

#[test]
fn version_and_check_config() {
    let version = ok(&["--version"]);
    assert_eq!(
        version.trim(),
        format!("rampart {}", env!("CARGO_PKG_VERSION"))
    );

    for example in [
        "examples/configs/local.toml",
        "examples/configs/reference.toml",
        "examples/configs/coordinated-1.toml",
        "examples/configs/coordinated-2.toml",
    ] {
        let path = repo_path(example);
        let path = path.to_str().unwrap();
        assert!(ok(&["check-config", path]).contains(": ok"), "{example}");
    }

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.main]\nnodes = [\"127.0.0.1:7001\"]\nread_from = \"sideways\"\n",
    )
    .unwrap();
    let out = rampart(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shards.main.read_from"), "{stderr}");

    // `--since OLD`: what a reload would apply at once, what waits.
    let (old, new) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    let base =
        "[proxy]\nlisten = \"127.0.0.1:6380\"\n[shards.main]\nnodes = [\"127.0.0.1:7001\"]\n";
    std::fs::write(&old, base).unwrap();
    std::fs::write(
        &new,
        format!("{base}read_from = \"replicas\"\n[limits]\nclient_output_hard_mb = 32\n[backend]\nconnect_timeout_ms = 200\n"),
    )
    .unwrap();
    let out = ok(&[
        "check-config",
        new.to_str().unwrap(),
        "--since",
        old.to_str().unwrap(),
    ]);
    assert!(
        out.contains("applied at once by a reload: limits.client_output_hard_mb, shards.main.read_from\nat the next start: backend.connect_timeout_ms"),
        "{out}"
    );
    // An OLD that does not read is a usage error naming it.
    let missing = dir.path().join("missing.toml");
    let out = rampart(&[
        "check-config",
        new.to_str().unwrap(),
        "--since",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn status_events_policies_and_switchover_against_a_running_proxy() {
    let cluster = Cluster::start(2);
    let state = tempfile::tempdir().unwrap();
    let sections = format!(
        "token = \"{TOKEN}\"\n[probe]\ninterval_ms = 50\n[failover]\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let proxy = Proxy::start_with(&config_for(
        &cluster.addrs(),
        Setup {
            sections: &sections,
            ..Setup::default()
        },
    ));
    let admin = proxy.admin.unwrap().to_string();
    let primary = cluster.primary().addr();

    // Reading needs no token.
    let status = ok(&["status", "--admin", &admin]);
    let primary_row = status
        .lines()
        .find(|l| l.starts_with(&primary))
        .unwrap_or_else(|| panic!("no row for {primary}:\n{status}"));
    assert!(
        primary_row.contains("primary") && primary_row.contains("up"),
        "{status}"
    );
    assert!(status.contains(&format!("primary {primary}")), "{status}");
    for replica in &cluster.addrs()[1..] {
        assert!(status.contains(replica.as_str()), "{status}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--admin", &admin, "--json"])).unwrap();
    assert_eq!(json["shards"][0]["primary"], primary.as_str());
    let events = ok(&["events", "--admin", &admin]);
    assert!(events.contains("primary-discovered"), "{events}");

    // Changing needs the token, and says so.
    let wasm = plugin("router-round-robin");
    let wasm = wasm.to_str().unwrap();
    let refused = rampart(&["policy", "load", "router", wasm, "--admin", &admin]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--token"));

    let with_token = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", admin.as_str(), "--token", TOKEN]);
        ok(&all)
    };
    let loaded = with_token(&["policy", "load", "router", wasm]);
    assert!(loaded.contains("router generation 2 active"), "{loaded}");
    let list = with_token(&["policy", "list"]);
    // Named after its file, with the hash's prefix.
    assert!(list.contains("router_round_robin.wasm@"), "{list}");
    assert!(
        list.contains("previous") && list.contains("sha256:"),
        "{list}"
    );

    let shadowed = with_token(&["policy", "shadow", "router", "builtin:primary-only"]);
    assert!(shadowed.contains("generation 3 in shadow"), "{shadowed}");
    let _ = proxy.cli(&["GET", "some-key"]);
    assert!(with_token(&["policy", "list"]).contains("shadow ("));
    assert!(with_token(&["policy", "activate", "router"]).contains("generation 3"));
    assert!(with_token(&["policy", "rollback", "router"]).contains("generation 2"));
    let bad = rampart(&[
        "policy",
        "load",
        "router",
        "builtin:nope",
        "--admin",
        &admin,
        "--token",
        TOKEN,
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown built-in router"));

    // A switchover through the CLI moves the primary.
    let target = cluster.addrs()[1].clone();
    let moved = with_token(&["switchover", "main", "--to", &target]);
    assert!(moved.contains("switched over"), "{moved}");
    assert_eq!(proxy.shard()["primary"], target.as_str());
    assert!(ok(&["events", "--admin", &admin]).contains("switchover"));

    // A forced promotion must be asked for with --force.
    let unforced = rampart(&["promote", "main", &target, "--admin", &admin]);
    assert_eq!(unforced.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unforced.stderr).contains("--force"));

    // The address and token can come from the config file instead.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:6380\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n[shards.main]\nnodes = [\"{primary}\"]\n"
    );
    std::fs::write(&file, config).unwrap();
    let file = file.to_str().unwrap();
    assert!(ok(&["status", "--config", file]).contains(&target));
    let loaded = ok(&[
        "policy",
        "load",
        "router",
        "builtin:round-robin",
        "--config",
        file,
    ]);
    assert!(loaded.contains("active: round-robin"), "{loaded}");

    // Nobody listening: a clear error and status 1.
    let gone = rampart(&["status", "--admin", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach"));
}

/// `rampart demo` (with `extra` arguments) on free ports, once it says it
/// is up: the process, its client and admin ports, and the nodes' ports.
fn start_demo(extra: &[&str], node_count: usize) -> (Running, u16, u16, Vec<u16>) {
    let (demo, port, admin, nodes, _) = start_demo_with_tips(extra, node_count);
    (demo, port, admin, nodes)
}

/// [`start_demo`], and the commands the demo printed as tips.
fn start_demo_with_tips(
    extra: &[&str],
    node_count: usize,
) -> (Running, u16, u16, Vec<u16>, Vec<String>) {
    let (port, admin) = (free_port(), free_port());
    let nodes: Vec<u16> = (0..node_count).map(|_| free_port()).collect();
    let list = nodes
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut demo = Running(
        Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args([
                "demo",
                "--port",
                &port.to_string(),
                "--admin-port",
                &admin.to_string(),
            ])
            .args(["--nodes", &list])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo"),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut up = false;
    while !up {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => up = line.starts_with("Rampart is up"),
            Err(_) => break,
        }
    }
    assert!(up, "the demo did not come up");
    let mut tips = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.starts_with("Ctrl-C") {
            break;
        }
        // "  <command>   <what it shows>"
        if let Some((command, _)) = line.trim().split_once("   ") {
            tips.push(command.trim().to_string());
        }
    }
    (demo, port, admin, nodes, tips)
}

/// Runs a tip the demo printed, as a shell would.
fn run_tip(tips: &[String], containing: &str) -> std::process::Output {
    let tip = tips
        .iter()
        .find(|t| t.contains(containing))
        .unwrap_or_else(|| panic!("no tip with {containing}: {tips:#?}"));
    Command::new("sh").arg("-c").arg(tip).output().unwrap()
}

/// SIGTERM: the demo exits cleanly and stops its nodes.
fn stop_demo(mut demo: Running, nodes: Vec<u16>) {
    let pid = demo.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(demo.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let exit = demo.0.wait().unwrap();
    assert!(exit.success(), "demo exited with {exit}: {stderr}");
    assert!(
        stderr.contains("starting redis-server"),
        "progress shown: {stderr}"
    );
    for node in nodes {
        wait_until("the demo's nodes to stop", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", node)).is_err()
        });
    }
}

#[test]
fn demo_starts_three_nodes_and_rampart_and_stops_them() {
    let (demo, port, admin, nodes, tips) = start_demo_with_tips(&[], 3);
    assert_eq!(
        redis_cli(port, &["SET", "demo", "works"]).unwrap().trim(),
        "OK"
    );
    // Reads go to the replicas (read_from = "replicas"): the write was
    // acknowledged by one of them, the other may lag a moment.
    wait_until("the write to be readable", Duration::from_secs(5), || {
        redis_cli(port, &["GET", "demo"]).is_ok_and(|v| v.trim() == "works")
    });
    let status = ok(&["status", "--admin", &format!("127.0.0.1:{admin}")]);
    for node in &nodes {
        assert!(status.contains(&format!("127.0.0.1:{node}")), "{status}");
    }
    // Sync replication to one replica, as the example config says.
    assert!(status.contains("sync, 1 ack(s)"), "{status}");
    // The tips run as printed: status, then killing the primary and
    // starting it again, after which it follows the new primary.
    let shown = run_tip(&tips, " status --admin");
    assert!(shown.status.success(), "{shown:?}");
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("127.0.0.1:{}", nodes[0])));
    let _ = run_tip(&tips, "SHUTDOWN NOSAVE");
    wait_until("a failover", Duration::from_secs(15), || {
        redis_cli(port, &["SET", "after", "1"]).is_ok_and(|r| r.trim() == "OK")
    });
    let restart = tips
        .iter()
        .find(|t| t.starts_with("redis-server"))
        .expect("a tip to start the node again")
        .clone();
    let restarted = Running(
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec {restart}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the node to follow the new primary",
        Duration::from_secs(20),
        || {
            redis_cli(nodes[0], &["INFO", "replication"]).is_ok_and(|info| {
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
        },
    );
    drop(restarted);
    stop_demo(demo, nodes);
}

#[test]
fn demo_fanout_writes_to_three_independent_nodes() {
    let (demo, port, admin, nodes) = start_demo(&["--fanout"], 3);
    assert_eq!(
        redis_cli(port, &["SET", "demo", "everywhere"])
            .unwrap()
            .trim(),
        "OK"
    );
    for &node in &nodes {
        // Each node is a primary of its own, and has the write.
        let role = redis_cli(node, &["ROLE"]).unwrap();
        assert!(role.starts_with("master"), "{node}: {role}");
        wait_until(
            "every node to run the write",
            Duration::from_secs(5),
            || redis_cli(node, &["GET", "demo"]).is_ok_and(|v| v.trim() == "everywhere"),
        );
    }
    let status = ok(&["status", "--admin", &format!("127.0.0.1:{admin}")]);
    assert!(status.contains("fan-out"), "{status}");
    stop_demo(demo, nodes);
}

#[test]
fn demo_shards_spreads_keys_over_two_shards() {
    let (demo, port, admin, nodes) = start_demo(&["--shards", "2"], 6);
    // bar -> slot 5061 (shard1), foo -> slot 12182 (shard2).
    assert_eq!(
        redis_cli(port, &["MSET", "foo", "1", "bar", "2"])
            .unwrap()
            .trim(),
        "OK"
    );
    assert_eq!(redis_cli(nodes[0], &["GET", "bar"]).unwrap().trim(), "2");
    assert_eq!(redis_cli(nodes[3], &["GET", "foo"]).unwrap().trim(), "1");
    assert_eq!(redis_cli(nodes[0], &["EXISTS", "foo"]).unwrap().trim(), "0");
    // The demo reads from replicas: the write acknowledged by one replica
    // may not have reached the one DBSIZE asks yet.
    wait_until("DBSIZE over both shards", Duration::from_secs(5), || {
        redis_cli(port, &["DBSIZE"]).is_ok_and(|n| n.trim() == "2")
    });
    let status = ok(&["status", "--admin", &format!("127.0.0.1:{admin}")]);
    for shard in ["shard1", "shard2"] {
        assert!(status.contains(shard), "{status}");
    }
    stop_demo(demo, nodes);
}

/// The Kubernetes ConfigMap's configuration is valid, with the admin
/// token coming from the environment as the Deployment sets it.
#[test]
fn deploy_configs_pass_check_config() {
    let manifest = std::fs::read_to_string(repo_path("deploy/kubernetes/rampart.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let name = "rampart.toml";
        let toml = embedded_file(&manifest, name);
        let path = dir.path().join(name);
        std::fs::write(&path, &toml).unwrap();
        let path = path.to_str().unwrap();
        let checked = Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args(["check-config", path])
            .env("RAMPART_ADMIN_TOKEN", "t0ken")
            .env("RAMPART_PASSWORD", "pa55")
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        // Without the password, a client listener on 0.0.0.0 is refused
        // (protected mode); without the token, an admin listener.
        let refused = rampart(&["check-config", path]);
        assert_eq!(refused.status.code(), Some(2), "{name}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("proxy.password"));
        let no_token = Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args(["check-config", path])
            .env("RAMPART_PASSWORD", "pa55")
            .env_remove("RAMPART_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert_eq!(no_token.status.code(), Some(2), "{name}");
        assert!(String::from_utf8_lossy(&no_token.stderr).contains("admin.token"));
    }
}

/// Every Kubernetes manifest is well-formed YAML whose documents are
/// Kubernetes objects, and what can be known without a cluster holds:
/// etcd's distroless image is started with its own binary (it has no
/// shell) and every `$(VAR)` its arguments use is defined; the locally
/// built Rampart image is never pulled; Rampart's memory limit covers what
/// its caps let clients make it hold (docs/deployment.md).
#[test]
fn kubernetes_manifests_are_objects_that_fit_their_images() {
    use serde::Deserialize;
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for file in ["etcd.yaml", "redis.yaml", "rampart.yaml"] {
        let text =
            std::fs::read_to_string(repo_path(&format!("deploy/kubernetes/{file}"))).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            for field in ["/apiVersion", "/kind", "/metadata/name"] {
                assert!(
                    object.pointer(field).is_some_and(|v| v.is_string()),
                    "{file}: no {field}"
                );
            }
            objects.push(object);
        }
    }
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["ConfigMap", "Deployment", "StatefulSet", "Service"] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    let container = |name: &str| -> serde_json::Value {
        objects
            .iter()
            .filter_map(|o| o.pointer("/spec/template/spec/containers")?.as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no container {name}"))
    };

    let etcd = container("etcd");
    assert!(etcd["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("quay.io/coreos/etcd:")));
    assert_eq!(
        etcd["command"],
        serde_json::json!(["/usr/local/bin/etcd"]),
        "etcd's release image has no shell: its own binary"
    );
    let defined: Vec<&str> = etcd["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for arg in etcd["args"].as_array().into_iter().flatten() {
        let arg = arg.as_str().unwrap_or_default();
        for used in arg.split("$(").skip(1) {
            let var = used.split(')').next().unwrap_or_default();
            assert!(
                defined.contains(&var),
                "$({var}) is not defined in etcd's env"
            );
        }
    }

    let rampart = container("rampart");
    assert!(rampart["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("rampart:")));
    assert_eq!(
        rampart["imagePullPolicy"], "IfNotPresent",
        "a locally built image must not be pulled"
    );
    let configmap = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "rampart")
        .expect("the rampart ConfigMap");
    let toml = configmap["data"]["rampart.toml"]
        .as_str()
        .expect("rampart.toml");
    let config = rampart::Config::parse_with(toml, |v| Some(format!("{v}-value")))
        .expect("the ConfigMap's configuration");
    let limit_mi: usize = rampart["resources"]["limits"]["memory"]
        .as_str()
        .and_then(|v| v.strip_suffix("Mi"))
        .and_then(|v| v.parse().ok())
        .expect("a memory limit in Mi");
    let limits = &config.limits;
    let needed = 64 + limits.clients_output_total_mb + limits.partial_requests_total_mb;
    assert!(
        limits.clients_output_total_mb > 0 && limits.partial_requests_total_mb > 0,
        "unbounded caps cannot fit any limit"
    );
    assert!(
        limit_mi >= needed + 64,
        "memory limit {limit_mi}Mi below {needed}Mi the caps allow plus 64Mi for plugins"
    );
}

/// The block under `  name: |` in a YAML manifest, unindented.
fn embedded_file(manifest: &str, name: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != format!("{name}: |"));
    assert!(lines.next().is_some(), "no {name} in the manifest");
    lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `rampart run` as a process: JSON logs with the connection span, a
/// reload on SIGHUP, a clean exit on SIGTERM.
#[test]
fn run_logs_json_reloads_on_sighup_and_drains_on_sigterm() {
    let cluster = Cluster::start(1);
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let write = |read_from: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nformat = \"json\"\nlevel = \"info,rampart::client=debug\"\n[shards.main]\nnodes = [\"{}\", \"{}\"]\nread_from = \"{read_from}\"\n",
            cluster.addrs()[0],
            cluster.addrs()[1]
        );
        std::fs::write(&file, text).unwrap();
    };
    write("primary");
    let mut run = Running(
        Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args(["run", "--config", file.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rampart run"),
    );
    let stderr = run.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut wait_for = |what: &str, found: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if lines.iter().any(found) {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")),
                ),
                Err(_) => panic!("no log line for {what}; got {lines:#?}"),
            }
        }
    };
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    wait_for("listening", &|v| message(v).contains("rampart listening"));

    // A client connection is logged inside its span.
    assert_eq!(redis_cli(port, &["PING"]).unwrap().trim(), "PONG");
    wait_for("the client span", &|v| {
        v["span"]["name"] == "client" && v["span"]["peer"].is_string()
    });

    // SIGHUP: the file is read again and the change applied.
    write("replicas");
    Command::new("kill")
        .args(["-HUP", &run.0.id().to_string()])
        .status()
        .unwrap();
    wait_for("the reload", &|v| message(v).contains("SIGHUP"));
    wait_for("the new router", &|v| {
        message(v).contains("router reloaded")
    });
    let policies = rampart_tests::http_get(([127, 0, 0, 1], admin).into(), "/v1/policies").1;
    assert!(policies.contains("round-robin"), "{policies}");

    // SIGTERM: drains and exits 0.
    Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap();
    wait_for("the drain", &|v| message(v).contains("shutting down"));
    let status = run.0.wait().unwrap();
    assert!(status.success(), "rampart run exited with {status}");
}

/// Admin tokens and the client password change on SIGHUP, without a
/// restart: a new token listed in `admin.tokens` works alongside the old
/// one, then the old one is refused once removed; a new password is the
/// one `AUTH` takes from then on.
#[test]
fn tokens_and_password_rotate_on_sighup_and_rampart_reload() {
    let cluster = Cluster::start(0);
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.toml");
    let write = |tokens: &str, password: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\npassword = \"{password}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{tokens}\n[shards.main]\nnodes = [\"{}\"]\n",
            cluster.addrs()[0]
        );
        std::fs::write(&file, text).unwrap();
    };
    write("token = \"old-token\"", "first-password");
    let run = Running(
        Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
            .args(["run", "--config", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rampart run"),
    );
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    // A change any token holder may make: loading the router in force.
    let change = |token: &str| {
        let bearer = format!("Bearer {token}");
        rampart_tests::try_http_with(
            admin,
            "PUT",
            "/v1/policies/router?builtin=primary-only",
            b"",
            &[("Authorization", &bearer)],
        )
        .map(|(status, _)| status)
        .unwrap_or(0)
    };
    let auth = |password: &str| redis_cli(port, &["AUTH", password]).unwrap_or_default();
    wait_until("rampart to serve", Duration::from_secs(20), || {
        change("old-token") == 200
    });
    assert_eq!(change("new-token"), 401);
    assert_eq!(auth("first-password").trim(), "OK");
    let hangup = || {
        Command::new("kill")
            .args(["-HUP", &run.0.id().to_string()])
            .status()
            .unwrap();
    };
    write(
        "token = \"old-token\"\ntokens = [\"new-token\"]",
        "second-password",
    );
    hangup();
    wait_until("the new token", Duration::from_secs(10), || {
        change("new-token") == 200
    });
    assert_eq!(change("old-token"), 200, "both during the overlap");
    assert_eq!(auth("second-password").trim(), "OK");
    assert!(auth("first-password").contains("WRONGPASS"));
    write("tokens = [\"new-token\"]", "second-password");
    // `rampart reload` does what SIGHUP does, and answers once it is done
    // with what applied (nothing more when the file watcher saw the
    // change first).
    let out = ok(&[
        "reload",
        "--admin",
        &admin.to_string(),
        "--token",
        "new-token",
    ]);
    assert!(out.starts_with("applied at once:"), "{out}");
    assert_eq!(change("old-token"), 401);
    assert_eq!(change("new-token"), 200);
}

/// `rampart doctor` finds planted pitfalls on a running deployment, each
/// with its fix, and exits 1; fixed, they are no longer reported.
#[test]
fn doctor_finds_planted_pitfalls() {
    let cluster = Cluster::start(1);
    let proxy = Proxy::start(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"replicas\"",
            ..Setup::default()
        },
    );
    proxy.wait_serving_replicas(1, Duration::from_secs(10));
    let admin = proxy.admin.unwrap().to_string();
    // Planted: no persistence (as the harness starts the nodes), a backlog
    // smaller than a minute of the writes below, stale reads served.
    cluster.nodes[0].cli(&["CONFIG", "SET", "repl-backlog-size", "16384"]);
    let writer = {
        let client = proxy.client();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            let value = "x".repeat(2000);
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until {
                let _: () = redis::Commands::set(&mut conn, "doctor", &value).unwrap();
            }
        })
    };
    let out = rampart(&["doctor", "--admin", &admin]);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for check in ["[persistence]", "[replication-backlog]", "[stale-reads]"] {
        assert!(text.contains(check), "{check} not found:\n{text}");
    }
    assert!(text.contains("fix: turn on appendonly"), "{text}");
    assert!(text.contains(&cluster.nodes[0].addr()), "{text}");

    for node in &cluster.nodes {
        node.cli(&["CONFIG", "SET", "appendonly", "yes"]);
        node.cli(&["CONFIG", "SET", "replica-serve-stale-data", "no"]);
    }
    let out = rampart(&["doctor", "--admin", &admin, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert!(
        !found.contains(&"persistence") && !found.contains(&"stale-reads"),
        "{report:#}"
    );
}

/// `rampart policy test`: each example scenario holds for its built-in,
/// the example router passes its own, and a wrong decision or a trap
/// fails the run with what went wrong, without Redis or a Rampart.
#[test]
fn policy_test_runs_a_plugin_against_a_scenario() {
    let scenario = |name: &str| repo_path(&format!("examples/scenarios/{name}.toml"));
    let run = |source: &str, scenario: &std::path::Path, expect: bool| {
        let scenario = scenario.display().to_string();
        let mut args = vec!["policy", "test", source, "--scenario", &scenario];
        if expect {
            args.push("--expect");
        }
        let out = rampart(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for (source, file) in [
        ("builtin:primary-only", "router-primary-only"),
        ("builtin:round-robin", "router-round-robin"),
        ("builtin:least-latency", "router-least-latency"),
        ("builtin:key-affinity", "router-key-affinity"),
        ("builtin:zone-affinity", "router-zone-affinity"),
        ("builtin:majority", "quorum"),
        ("builtin:fixed-timeout", "detector"),
        ("builtin:phi-accrual", "detector"),
    ] {
        let (status, out) = run(source, &scenario(file), true);
        assert_eq!(status, Some(0), "{source} with {file}: {out}");
        assert!(out.contains(" 0 not;"), "{out}");
    }
    let example = rampart_tests::example_plugin();
    let (status, out) = run(
        &example.display().to_string(),
        &repo_path("examples/router-prefix/scenario.toml"),
        true,
    );
    assert_eq!(status, Some(0), "{out}");
    assert!(
        out.contains("read \"session:42\" (client 0) -> primary   ok"),
        "{out}"
    );

    // A decision other than the expected one: printed, and with
    // --expect the run fails.
    let wrong = scenario("router-round-robin");
    let (status, out) = run("builtin:primary-only", &wrong, true);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("MISMATCH: expected 10.0.0.2:6379"), "{out}");
    let (status, _) = run("builtin:primary-only", &wrong, false);
    assert_eq!(status, Some(0));

    // A plugin that passes the load check, then panics: the reason in words.
    let dir = tempfile::tempdir().unwrap();
    let trapping = dir.path().join("trap.toml");
    let shard = std::fs::read_to_string(scenario("router-round-robin")).unwrap();
    std::fs::write(
        &trapping,
        shard.replacen(
            "kind = \"router\"",
            "kind = \"router\"\nconfig = \"trap-after:33\"",
            1,
        ),
    )
    .unwrap();
    let hostile = rampart_tests::test_plugin("router-hostile");
    let (status, out) = run(&hostile.display().to_string(), &trapping, true);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("1 trap(s)"), "{out}");
    assert!(out.contains("panicked at"), "{out}");
}

/// `rampart policy new` for each kind: the crate builds with one command,
/// passes its own scenario, and the router loads into a running Rampart.
#[test]
fn policy_new_makes_a_crate_that_builds_tests_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cluster = Cluster::start(1);
    let proxy = Proxy::start_with(&config_for(&cluster.addrs(), Setup::default()));
    let admin = proxy.admin.unwrap().to_string();
    for kind in ["router", "quorum", "detector"] {
        let name = format!("my-{kind}");
        let dir_arg = dir.path().display().to_string();
        let made = ok(&["policy", "new", kind, &name, "--dir", &dir_arg]);
        assert!(made.contains("cargo build --release"), "{made}");
        let crate_dir = dir.path().join(&name);
        for file in ["Cargo.toml", "src/lib.rs", "scenario.toml", "README.md"] {
            assert!(crate_dir.join(file).is_file(), "{kind}: no {file}");
        }
        // The one command its README gives (the target comes from its
        // .cargo/config.toml).
        let built = Command::new(&cargo)
            .args(["build", "--release", "--quiet"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(built.success(), "{kind}: cargo build failed");
        let wasm = target.join(format!("wasm32-wasip2/release/my_{kind}.wasm"));
        let scenario = crate_dir.join("scenario.toml");
        let tested = ok(&[
            "policy",
            "test",
            wasm.to_str().unwrap(),
            "--scenario",
            scenario.to_str().unwrap(),
            "--expect",
        ]);
        assert!(
            tested.contains(" 0 not; 0 trap(s), 0 fallback(s)"),
            "{tested}"
        );
        if kind == "router" {
            ok(&[
                "policy",
                "load",
                "router",
                wasm.to_str().unwrap(),
                "--name",
                &name,
                "--admin",
                &admin,
            ]);
            let listed = ok(&["policy", "list", "--admin", &admin]);
            assert!(listed.contains("my-router@"), "{listed}");
        }
    }
    // A name that is not a crate name, and a kind that does not exist.
    let bad = rampart(&["policy", "new", "router", "My Router"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = rampart(&["policy", "new", "balancer", "x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected router, quorum or detector"));
}

/// A detector that traps is replaced by a fresh instance, which Rampart
/// first gives the recent probe results again: a detector judging from
/// history (up after three answered probes) keeps judging the node up
/// right after its trap instead of starting from nothing.
#[test]
fn a_trapped_detector_is_given_its_history_again() {
    let mut scenario = String::from(
        "kind = \"detector\"\nconfig = \"trap-assess:4\"\n[[nodes]]\naddr = \"10.0.0.1:6379\"\nrole = \"primary\"\n",
    );
    for at in [0, 100, 200, 300, 400] {
        scenario.push_str(&format!(
            "[[probes]]\nnode = \"10.0.0.1:6379\"\nat_ms = {at}\nok = true\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.toml");
    std::fs::write(&file, scenario).unwrap();
    let plugin = rampart_tests::test_plugin("detector-hostile");
    let out = ok(&[
        "policy",
        "test",
        plugin.to_str().unwrap(),
        "--scenario",
        file.to_str().unwrap(),
    ]);
    // The fourth verdict trapped (the node keeps its last verdict); the
    // fifth comes from a fresh instance.
    assert!(out.contains("1 trap(s)"), "{out}");
    assert!(out.contains("trap on assess call 4"), "{out}");
    assert!(out.contains("at 300 ms: probe answered -> up"), "{out}");
    assert!(out.contains("at 400 ms: probe answered -> up"), "{out}");
}
