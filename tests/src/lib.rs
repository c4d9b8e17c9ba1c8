//! Test harness: real `redis-server` processes on free loopback ports, a
//! real Rampart in front of them, and helpers to hurt both.
//!
//! Everything started here is stopped when its handle drops, also when a
//! test fails, so a failing test never leaves servers behind.

pub mod browser;
pub mod dns;
pub mod etcd;
pub mod forwarder;
pub mod moves;
pub mod pki;
pub mod resp3;
pub mod workload;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use rampart;

/// A port nobody listens on right now, and never handed out before in this
/// process: tests run in parallel, and a port freed by one test's killed
/// node must not become another test's node while the first test's Rampart
/// still probes it (its failover controller would fence that node).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    wait_until_or(what, timeout, check, String::new);
}

/// [`wait_until`], and on timeout the panic carries `explain()` (the
/// state that was waited on, logs) so a failure under load can be read.
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        explain()
    );
}

/// A key's hash slot as the Redis Cluster spec defines it (CRC16 XMODEM
/// of the key, or of its non-empty `{hash tag}`, modulo 16384), computed
/// here independently of Rampart's own.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One `redis-server` process.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    replica_of: Option<u16>,
    /// Listening (and replicating) with TLS only, with these certificates.
    tls: Option<std::sync::Arc<pki::Pki>>,
    /// More `redis-server` arguments, for the next start.
    extra: Vec<String>,
}

impl RedisNode {
    /// Starts a node; a replica of `replica_of` when given.
    pub fn start(replica_of: Option<u16>) -> RedisNode {
        RedisNode::start_with(replica_of, None)
    }

    /// A node that speaks TLS only (`--tls-port`, no plain port), to
    /// clients and to its replicas, and requires client certificates.
    pub fn start_tls(replica_of: Option<u16>, pki: &std::sync::Arc<pki::Pki>) -> RedisNode {
        RedisNode::start_with(replica_of, Some(pki.clone()))
    }

    fn start_with(replica_of: Option<u16>, tls: Option<std::sync::Arc<pki::Pki>>) -> RedisNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = RedisNode {
            port: free_port(),
            child: None,
            dir,
            replica_of,
            tls,
            extra: Vec::new(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(pki) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&pki.cert)
                .arg("--tls-key-file")
                .arg(&pki.key)
                .arg("--tls-ca-cert-file")
                .arg(&pki.ca)
                .args(["--tls-replication", "yes"]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica that needs a full sync gets it at once, not after
            // the default 5 s wait for other replicas to join.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(primary) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = cmd
            .spawn()
            .expect("cannot start redis-server: is it installed (apt-get install redis-server)?");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            &format!("redis-server on {port}"),
            Duration::from_secs(10),
            || self.cli(&["PING"]).trim() == "PONG",
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`) to the process, if it runs.
    pub fn signal(&self, signal: &str) {
        signal_child(self.child.as_ref(), signal);
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts the process again on the same port (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the process and starts it again with more arguments (these
    /// win over the harness's own, e.g. Redis's default
    /// `--repl-diskless-sync-delay 5`).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Runs a command on this node directly (not through Rampart).
    pub fn cli(&self, args: &[&str]) -> String {
        match &self.tls {
            None => redis_cli(self.port, args).unwrap_or_default(),
            Some(pki) => {
                let mut all: Vec<String> = pki.cli_args();
                all.extend(args.iter().map(|a| a.to_string()));
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                redis_cli(self.port, &all).unwrap_or_default()
            }
        }
    }

    /// A field of `INFO` (e.g. `cmdstat_get` from `INFO commandstats`).
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info = self.cli(&["INFO", section]);
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == field).then(|| v.trim().to_string())
        })
    }

    /// How many times this node ran `command` (from INFO commandstats).
    pub fn calls(&self, command: &str) -> u64 {
        self.info_field("commandstats", &format!("cmdstat_{command}"))
            .and_then(|v| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix("calls=").map(|n| n.parse().unwrap_or(0)))
            })
            .unwrap_or(0)
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        // A stopped process ignores SIGKILL until continued on some kernels.
        self.signal("CONT");
        self.kill();
    }
}

/// Runs `redis-cli -p PORT args...` and returns its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends a signal (`KILL`, `STOP`, `CONT`) to a child process, if there is
/// one. (Never to pid 0: `kill -CONT 0` would reach every process in the
/// test's process group, other tests' paused nodes included.)
pub(crate) fn signal_child(child: Option<&Child>, signal: &str) {
    if let Some(child) = child {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
    }
}

/// SIGKILL a child process, if there is one, and reap it.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A primary and its replicas, replication established.
pub struct Cluster {
    pub nodes: Vec<RedisNode>,
}

impl Cluster {
    pub fn start(replicas: usize) -> Cluster {
        Cluster::start_with(replicas, None)
    }

    /// Every node TLS only (see [`RedisNode::start_tls`]).
    pub fn start_tls(replicas: usize, pki: &std::sync::Arc<pki::Pki>) -> Cluster {
        Cluster::start_with(replicas, Some(pki))
    }

    fn start_with(replicas: usize, pki: Option<&std::sync::Arc<pki::Pki>>) -> Cluster {
        let start = |replica_of| match pki {
            Some(pki) => RedisNode::start_tls(replica_of, pki),
            None => RedisNode::start(replica_of),
        };
        let primary = start(None);
        let port = primary.port;
        let mut nodes = vec![primary];
        for _ in 0..replicas {
            nodes.push(start(Some(port)));
        }
        let cluster = Cluster { nodes };
        cluster.wait_replicas(replicas);
        cluster
    }

    pub fn primary(&self) -> &RedisNode {
        &self.nodes[0]
    }

    /// Waits until the primary sees `n` replicas online.
    pub fn wait_replicas(&self, n: usize) {
        wait_until("replicas to connect", Duration::from_secs(20), || {
            self.primary()
                .info_field("replication", "connected_slaves")
                .and_then(|v| v.parse::<usize>().ok())
                == Some(n)
                && self.nodes[1..].iter().all(|r| {
                    r.info_field("replication", "master_link_status").as_deref() == Some("up")
                })
        });
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }
}

/// A Rampart running in this process on a runtime of its own.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub server: rampart::Server,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts Rampart in front of `nodes`.
    pub fn start(nodes: &[String], setup: Setup) -> Proxy {
        let config = config_for(nodes, setup);
        Proxy::start_with(&config)
    }

    pub fn start_with(config_text: &str) -> Proxy {
        let config = rampart::Config::parse(config_text).expect("test config is valid");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(rampart::Server::start(config))
            .expect("rampart starts");
        Proxy {
            addr: server.client_addr,
            admin: server.admin_addr,
            server,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A redis-rs client for this proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect to rampart")
    }

    /// How many replicas the proxy currently lets serve reads.
    pub fn serving_replicas(&self) -> usize {
        self.cli(&["RAMPART", "TOPOLOGY"])
            .matches("\"serves_reads\": true")
            .count()
    }

    /// Waits until `n` replicas serve reads through the proxy.
    pub fn wait_serving_replicas(&self, n: usize, timeout: Duration) {
        wait_until("replicas to serve reads", timeout, || {
            self.serving_replicas() == n
        });
    }

    /// Runs redis-cli against the proxy.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port(), args).unwrap_or_default()
    }

    /// Reloads the configuration from `path` when it changes, as
    /// `rampart run --config` does.
    pub fn watch_config(&self, path: &std::path::Path) {
        if let Some(runtime) = &self.runtime {
            let _guard = runtime.enter();
            rampart::reload::spawn(self.server.context.clone(), path.to_path_buf());
        }
    }

    /// A clean stop, as SIGTERM makes one: clients drained, fan-out logs
    /// closed.
    pub fn shutdown(&self) {
        if let Some(runtime) = &self.runtime {
            runtime.block_on(self.server.shutdown(Duration::from_secs(2)));
        }
    }

    /// `GET /v1/topology` from the admin listener.
    pub fn topology(&self) -> serde_json::Value {
        self.admin_json("/v1/topology")
    }

    /// The first shard's view in the topology.
    pub fn shard(&self) -> serde_json::Value {
        self.topology()["shards"][0].clone()
    }

    /// `GET /v1/events`.
    /// One sample of `/metrics`: `series` is the name with its labels as
    /// Rampart writes them (`rampart_shard_epoch{shard="main"}`), or the
    /// bare name of an unlabelled family.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.admin.expect("admin listener"), "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        match self.admin_json("/v1/events") {
            serde_json::Value::Array(events) => events,
            other => panic!("events are not a list: {other}"),
        }
    }

    /// The detail of the newest event of `kind`.
    pub fn last_event_detail(&self, kind: &str) -> Option<String> {
        self.events()
            .into_iter()
            .rfind(|e| e["kind"] == kind)
            .and_then(|e| e["detail"].as_str().map(str::to_string))
    }

    /// Kinds of every event so far, oldest first.
    pub fn event_kinds(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// How many events of `kind` the history holds.
    pub fn events_of(&self, kind: &str) -> usize {
        self.event_kinds().iter().filter(|k| *k == kind).count()
    }

    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let admin = self.admin.expect("the test proxy has an admin listener");
        let (status, body) = http_get(admin, path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("admin JSON")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, b"")
}

/// A plain HTTP/1.1 request with a body; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_http(addr, method, path, body).expect("connect to the admin listener")
}

/// [`http`], with a failure to connect as an error rather than a panic.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    try_http_with(addr, method, path, body, &[])
}

/// [`try_http`] with more request headers (`Authorization`, say).
pub fn try_http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    // Read up to the end of the body Content-Length announces: not every
    // server closes the connection when asked (Chromium's DevTools does not).
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| response.len() >= end + 4 + len) {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A primary and replicas that reach each other, and are reached by
/// Rampart, only through fault-injecting forwarders: cutting a node's
/// forwarder partitions it from everyone.
pub struct FaultyCluster {
    pub nodes: Vec<RedisNode>,
    pub forwarders: Vec<forwarder::Forwarder>,
}

impl FaultyCluster {
    pub fn start(replicas: usize) -> FaultyCluster {
        let nodes: Vec<RedisNode> = (0..=replicas).map(|_| RedisNode::start(None)).collect();
        let forwarders: Vec<forwarder::Forwarder> = nodes
            .iter()
            .map(|n| forwarder::Forwarder::start(n.port))
            .collect();
        let primary = forwarders[0].port.to_string();
        for node in &nodes[1..] {
            node.cli(&["REPLICAOF", "127.0.0.1", &primary]);
        }
        let cluster = FaultyCluster { nodes, forwarders };
        wait_until("replicas to connect", Duration::from_secs(20), || {
            cluster.nodes[1..]
                .iter()
                .all(|r| r.info_field("replication", "master_link_status").as_deref() == Some("up"))
        });
        cluster
    }

    /// The addresses Rampart is given: the forwarders'.
    pub fn addrs(&self) -> Vec<String> {
        self.forwarders.iter().map(|f| f.addr()).collect()
    }

    /// The node behind a forwarder address.
    pub fn node_at(&self, addr: &str) -> usize {
        self.forwarders
            .iter()
            .position(|f| f.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a forwarder of this cluster"))
    }
}

/// Extra settings for a test proxy, each a TOML fragment.
#[derive(Default, Clone, Copy)]
pub struct Setup<'a> {
    /// Lines inside `[proxy]` (e.g. `password = "x"`).
    pub proxy: &'a str,
    /// Lines inside `[shards.main]` (e.g. `read_from = "replicas"`).
    pub shard: &'a str,
    /// Whole sections (e.g. `[backend]\nlinks_per_node = 1`).
    pub sections: &'a str,
    /// Lines inside `[admin]` (e.g. `max_connections = 2`).
    pub admin: &'a str,
}

/// The TOML for a proxy on a free port in front of `nodes`.
pub fn config_for(nodes: &[String], setup: Setup) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_commands = true\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n{}\n[shards.main]\nnodes = [{}]\n{}\n",
        setup.proxy,
        setup.admin,
        sections_with_defaults(setup.sections),
        nodes.join(", "),
        setup.shard,
    )
}

/// The test's `[probe]` and `[plugins]` sections unless it wrote its own:
/// fast probes, and `plugins.dir` where [`plugin`], [`test_plugin`] and
/// [`example_plugin`] put their files (so `RAMPART POLICY LOAD` can name
/// them).
fn sections_with_defaults(sections: &str) -> String {
    let mut all = String::new();
    if !sections.contains("[probe]") {
        all.push_str("[probe]\ninterval_ms = 50\n");
    }
    all.push_str(sections);
    if !sections.contains("[plugins]") {
        all.push_str(&format!(
            "\n[plugins]\ndir = \"{}\"\n",
            plugins_dir().display()
        ));
    }
    all
}

/// One directory per test process holding every plugin a test loads.
pub fn plugins_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a directory for the plugins"))
        .path()
}

/// The file name of a plugin from [`plugin`], [`test_plugin`] or
/// [`example_plugin`], as `RAMPART POLICY LOAD` takes it.
pub fn plugin_name(path: &std::path::Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("a plugin file name")
        .to_string()
}

/// The built-in plugin `name` (a crate under plugins/) as a `.wasm` file:
/// the component embedded in Rampart (built by its build script), written
/// out once, so tests load exactly what the binary ships.
pub fn plugin(name: &str) -> PathBuf {
    use rampart::policy::builtin;
    let bytes = if let Some(router) = name.strip_prefix("router-") {
        builtin::router(router)
    } else if let Some(detector) = name.strip_prefix("detector-") {
        builtin::detector(detector)
    } else if name == "quorum-standard" {
        Some(builtin::QUORUM)
    } else {
        None
    };
    let bytes = bytes.unwrap_or_else(|| panic!("no built-in plugin named {name}"));
    let path = plugins_dir().join(format!("{}.wasm", name.replace('-', "_")));
    if !path.exists() {
        std::fs::write(&path, bytes).expect("write the plugin");
    }
    path
}

/// The example plugin in examples/router-prefix, built on first use.
pub fn example_plugin() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    built_plugin(&BUILT, "examples/router-prefix", "router-prefix")
}

/// A misbehaving plugin from tests/plugins/, built on first use.
pub fn test_plugin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    built_plugin(&BUILT, "tests/plugins", name)
}

/// Builds the plugin workspace in `dir` once (`cargo build --target
/// wasm32-wasip2 --release`) and returns the path of `name`'s component,
/// copied into [`plugins_dir`].
fn built_plugin(once: &std::sync::OnceLock<()>, dir: &str, name: &str) -> PathBuf {
    once.get_or_init(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(repo_path(&format!("{dir}/Cargo.toml")))
            // The plugin's own target directory, whatever CARGO_TARGET_DIR
            // says, so the path below holds.
            .arg("--target-dir")
            .arg(repo_path(&format!("{dir}/target")))
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building {dir} failed (is the target installed? rustup target add wasm32-wasip2)"
        );
    });
    let file = format!("{}.wasm", name.replace('-', "_"));
    let built = repo_path(&format!("{dir}/target/wasm32-wasip2/release/{file}"));
    let path = plugins_dir().join(file);
    if !path.exists() {
        std::fs::copy(&built, &path).expect("copy the plugin into the plugins directory");
    }
    path
}

/// Path to a file in the repository (for example configs).
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// `MONITOR` on a node: every command it runs, as (command, first
/// argument), for tests that must know which node served which key.
pub struct Monitor {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stream: TcpStream,
}

impl Monitor {
    pub fn start(node: &RedisNode) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", node.port)).expect("connect to the node");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = stream.try_clone().expect("clone the stream");
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
            {
                // +1700000000.123456 [0 127.0.0.1:5555] "GET" "key"
                let Some((_, args)) = line.split_once("] ") else {
                    continue;
                };
                let mut quoted = args.split('"').skip(1).step_by(2);
                if let Some(command) = quoted.next() {
                    let first = quoted.next().unwrap_or_default().to_string();
                    let mut seen = sink.lock().unwrap_or_else(|p| p.into_inner());
                    seen.push((command.to_ascii_uppercase(), first));
                }
            }
        });
        Monitor { seen, stream }
    }

    /// The first arguments of every `command` seen so far, then forgets them.
    pub fn take(&self, command: &str) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let keys = seen
            .iter()
            .filter(|(c, _)| c == command)
            .map(|(_, key)| key.clone())
            .collect();
        seen.clear();
        keys
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Four clients, each writing 50 pipelines of 5 `SET key key` through the
/// proxy: the keys whose pipeline was acknowledged.
pub fn acknowledged_writes(proxy: &Proxy) -> Vec<String> {
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = proxy.client();
            std::thread::spawn(move || {
                let mut conn = client.get_connection().expect("connect to rampart");
                let mut acked = Vec::new();
                for round in 0..50 {
                    let keys: Vec<String> = (0..5).map(|i| format!("k:{w}:{round}:{i}")).collect();
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.set(key, key).ignore();
                    }
                    if pipe.query::<()>(&mut conn).is_ok() {
                        acked.extend(keys);
                    }
                }
                acked
            })
        })
        .collect();
    writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect()
}

/// The keys of `acked` (each written with itself as its value) that the
/// node at `addr` does not hold, read directly from it.
pub fn missing_on<'a>(addr: &str, acked: &'a [String]) -> Vec<&'a String> {
    let mut direct = redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .expect("connect to the node");
    acked
        .iter()
        .filter(|k| {
            redis::Commands::get::<_, Option<String>>(&mut direct, k.as_str())
                .ok()
                .flatten()
                .as_deref()
                != Some(k.as_str())
        })
        .collect()
}

/// `rampart run --config FILE` as a process of its own (so its memory and
/// signals are its own), logging warnings only; returns once `ready`
/// holds. `bin` is the test's `env!("CARGO_BIN_EXE_rampart-test-cli")`.
pub fn run_rampart(bin: &str, config: &std::path::Path, ready: impl FnMut() -> bool) -> Running {
    let running = Running(
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rampart run"),
    );
    wait_until("rampart to serve", Duration::from_secs(20), ready);
    running
}

/// A child process stopped when the test ends, even by a panic: SIGTERM
/// first (the demo then stops its nodes), SIGKILL if it lingers.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
