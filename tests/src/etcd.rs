//! A real etcd cluster on loopback (Debian's `etcd-server`), and Rampart
//! instances run as processes of their own against it, so that one can be
//! killed with SIGKILL or paused with SIGSTOP like a real deployment.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::forwarder::Forwarder;
use crate::pki::Pki;
use crate::{free_port, try_http, wait_until};

/// One etcd member.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// `n` etcd members forming one cluster, each reached through a
/// forwarder (so a Rampart can be cut off from etcd).
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Client URLs are HTTPS with these certificates.
    tls: Option<std::sync::Arc<Pki>>,
    /// Clients must present a certificate signed by the CA.
    client_certs: bool,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None, false)
    }

    /// `n` members whose client URLs are HTTPS only; with `client_certs`,
    /// clients must present a certificate.
    pub fn start_tls(n: usize, pki: &std::sync::Arc<Pki>, client_certs: bool) -> EtcdCluster {
        EtcdCluster::start_with(n, Some(pki.clone()), client_certs)
    }

    fn start_with(n: usize, tls: Option<std::sync::Arc<Pki>>, client_certs: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            dir,
            tls,
            client_certs,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy();
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let member = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let mut command = Command::new("etcd");
        if let Some(pki) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&pki.cert)
                .arg("--key-file")
                .arg(&pki.key);
            // etcd 3.4 asks every client for a certificate once it has a
            // CA to check them against, whatever --client-cert-auth says.
            if self.client_certs {
                command
                    .arg("--trusted-ca-file")
                    .arg(&pki.ca)
                    .arg("--client-cert-auth");
            }
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "rampart-test"])
            // Fast elections, so leases as short as 1 s are allowed.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start etcd: is it installed (apt-get install etcd-server)?");
        member.child = Some(child);
    }

    /// Waits until every running member answers and the cluster has a
    /// leader (a write succeeds).
    pub fn wait_healthy(&self) {
        wait_until("etcd to elect a leader", Duration::from_secs(30), || {
            self.members
                .iter()
                .filter(|m| m.child.is_some())
                .all(|m| match &self.tls {
                    None => etcd_put(m.client, "/health-check", "1"),
                    Some(_) => self.etcdctl(&["put", "/health-check", "1"]).is_ok(),
                })
        });
    }

    /// Runs `etcdctl` (Debian's etcd-client) against the cluster, with
    /// the client certificate when it has TLS and `--user` when given.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=2s");
        if let Some(pki) = &self.tls {
            command
                .arg("--cacert")
                .arg(&pki.ca)
                .arg("--cert")
                .arg(&pki.cert)
                .arg("--key")
                .arg(&pki.key);
        }
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("cannot run etcdctl (apt-get install etcd-client): {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// `host:port` of every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// SIGKILL member `i`.
    pub fn stop(&mut self, i: usize) {
        crate::kill_child(&mut self.members[i].child);
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i, "existing");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }
}

/// A put through the JSON gateway; true when etcd accepted it.
fn etcd_put(port: u16, key: &str, value: &str) -> bool {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64(value));
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    crate::try_http(addr, "POST", "/v3/kv/put", body.as_bytes())
        .is_ok_and(|(status, body)| status == 200 && body.contains("revision"))
}

/// A Rampart process with `[coordination]`, reaching etcd through
/// forwarders of its own.
pub struct Instance {
    pub name: String,
    pub port: u16,
    pub admin: u16,
    child: Option<Child>,
    /// One per etcd member: `cut()` makes them all silent.
    pub to_etcd: Vec<Forwarder>,
    config: std::path::PathBuf,
    bin: String,
}

/// What a test's instances share.
pub struct InstanceSetup<'a> {
    pub bin: &'a str,
    pub dir: &'a Path,
    pub etcd: &'a EtcdCluster,
    /// `[shards.main]`'s nodes.
    pub nodes: &'a [String],
    /// Lines added to `[shards.main]`.
    pub shard: &'a str,
    /// Lines added to `[shards.main.replication]`.
    pub replication: &'a str,
    /// Lines added to `[coordination]`.
    pub coordination: &'a str,
    /// The key prefix (one per test).
    pub prefix: &'a str,
    /// Lines added at the end of each instance's file, `{name}` replaced
    /// by the instance's name (e.g. a `[backend]` user of its own).
    pub per_instance: &'a str,
}

impl Instance {
    /// Starts the instance on free ports; again on others when another
    /// test took one of them in between (`free_port` cannot hold them).
    pub fn start(name: &str, setup: &InstanceSetup) -> Instance {
        let mut last = String::new();
        for _ in 0..3 {
            match Instance::try_start(name, setup) {
                Ok(instance) => return instance,
                Err(why) if why.contains("in use") => last = why,
                Err(why) => panic!("rampart {name} did not start: {why}"),
            }
        }
        panic!("rampart {name} did not start: {last}");
    }

    fn try_start(name: &str, setup: &InstanceSetup) -> Result<Instance, String> {
        let port = free_port();
        let admin = free_port();
        let to_etcd: Vec<Forwarder> = setup
            .etcd
            .client_ports()
            .into_iter()
            .map(Forwarder::start)
            .collect();
        let endpoints: Vec<String> = to_etcd
            .iter()
            .map(|f| format!("\"{}\"", f.addr()))
            .collect();
        let nodes: Vec<String> = setup.nodes.iter().map(|n| format!("\"{n}\"")).collect();
        // The tests' timings, unless the test sets its own.
        let timings: String = [
            ("lease_ttl_s", "2"),
            ("poll_ms", "50"),
            ("request_timeout_ms", "250"),
            ("max_view_age_ms", "1000"),
        ]
        .iter()
        .filter(|(key, _)| !setup.coordination.contains(&format!("{key} =")))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
        let config = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_commands = true\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [probe]\ninterval_ms = 50\n\
             [coordination]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{}\"\ninstance = \"{name}\"\n\
             {timings}{}\n\
             [plugins]\ndir = \"{}\"\n\
             [shards.main]\nnodes = [{}]\n{}\n[shards.main.replication]\n{}\n{}\n",
            endpoints.join(", "),
            setup.prefix,
            setup.coordination,
            crate::plugins_dir().display(),
            nodes.join(", "),
            setup.shard,
            setup.replication,
            setup.per_instance.replace("{name}", name),
        );
        let path = setup.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let mut instance = Instance {
            name: name.to_string(),
            port,
            admin,
            child: None,
            to_etcd,
            config: path,
            bin: setup.bin.to_string(),
        };
        instance.try_spawn()?;
        Ok(instance)
    }

    fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("rampart {} did not start: {why}", self.name);
        }
    }

    /// Starts the process and waits for its admin port; an early exit is
    /// an error with the end of its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.config.with_extension("log")).expect("log file");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rampart");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            // The admin port answers, and it is this instance's (another
            // test may hold the port `free_port` gave, and then this
            // process exits with "in use" while the port still answers).
            if std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && self.topology()["coordination"]["instance"] == self.name.as_str()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("exited ({status}): {}", tail.join(" | ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "its admin port {} did not answer within 20 s",
            self.admin
        ))
    }

    /// SIGKILL: no lease given back, no goodbye.
    pub fn kill(&mut self) {
        crate::kill_child(&mut self.child);
    }

    /// Starts it again with the same configuration (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, signal: &str) {
        crate::signal_child(self.child.as_ref(), signal);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Cuts this instance off from etcd (silence, not errors), or heals.
    pub fn cut_from_etcd(&self, cut: bool) {
        let fault = if cut {
            crate::forwarder::Fault::Blackhole
        } else {
            crate::forwarder::Fault::Pass
        };
        for forwarder in &self.to_etcd {
            forwarder.set(fault);
        }
    }

    /// Its configuration file (a test may edit it and reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `GET /v1/topology`, or Null when the instance does not answer.
    pub fn topology(&self) -> serde_json::Value {
        let addr = format!("127.0.0.1:{}", self.admin).parse().expect("addr");
        match try_http(addr, "GET", "/v1/topology", b"") {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    /// `GET /v1/events`, or empty.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let addr = format!("127.0.0.1:{}", self.admin).parse().expect("addr");
        match try_http(addr, "GET", "/v1/events", b"") {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The shard's lease holder as this instance sees it.
    pub fn holder(&self) -> Option<String> {
        self.topology()["coordination"]["lease_holders"]["main"]
            .as_str()
            .map(str::to_string)
    }

    /// The primary this instance routes writes to.
    pub fn primary(&self) -> Option<String> {
        self.topology()["shards"][0]["primary"]
            .as_str()
            .map(str::to_string)
    }

    pub fn epoch(&self) -> u64 {
        self.topology()["shards"][0]["epoch"].as_u64().unwrap_or(0)
    }

    /// The log it wrote, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}
