//! TLS everywhere: clients to Rampart, Rampart to the nodes, the admin
//! API; client certificates; certificates reloaded on SIGHUP without
//! dropping anyone. Real redis-server nodes with `--tls-port`, real
//! redis-cli `--tls` and redis-rs with rustls, certificates made by each
//! test.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rampart_tests::pki::Pki;
use rampart_tests::{free_port, redis_cli, run_rampart, wait_until, Cluster, Proxy, Setup};
use redis::Commands;

/// Rampart in front of a TLS-only cluster, clients on TLS too.
fn tls_proxy(cluster: &Cluster, pki: &Pki, client_ca: bool, admin: bool) -> Proxy {
    let mut proxy_tls = pki.server_section();
    if client_ca {
        proxy_tls.push_str(&format!("ca = \"{}\"\n", pki.ca.display()));
    }
    let admin_tls = if admin {
        format!("[admin.tls]\n{}", pki.server_section())
    } else {
        String::new()
    };
    let text = rampart_tests::config_for(
        &cluster.addrs(),
        Setup {
            shard: "read_from = \"replicas\"",
            sections: &format!("[backend.tls]\n{}", pki.backend_section()),
            ..Setup::default()
        },
    )
    // Sub-tables after their parents' keys.
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[proxy.tls]\n{proxy_tls}[admin]\nlisten = \"127.0.0.1:0\"\n{admin_tls}"),
    );
    Proxy::start_with(&text)
}

/// A redis-rs client that trusts `pki`'s CA (and presents no certificate).
fn tls_client(port: u16, pki: &Pki) -> redis::Client {
    redis::Client::build_with_tls(
        format!("rediss://localhost:{port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pki.ca_pem()),
        },
    )
    .unwrap()
}

fn cli(port: u16, pki: &Pki, args: &[&str]) -> String {
    let mut all = pki.cli_args();
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    redis_cli(port, &all).unwrap()
}

#[test]
fn tls_clients_reach_tls_nodes_through_rampart() {
    let pki = Arc::new(Pki::new());
    let cluster = Cluster::start_tls(1, &pki);
    let proxy = tls_proxy(&cluster, &pki, false, false);
    // The probes reach the nodes over TLS: the replica serves reads.
    wait_until(
        "the replica to serve reads",
        Duration::from_secs(10),
        || proxy.shard()["nodes"][1]["serves_reads"] == true,
    );

    // redis-cli --tls.
    assert_eq!(cli(proxy.port(), &pki, &["SET", "k", "v"]).trim(), "OK");
    wait_until("the replica to answer", Duration::from_secs(10), || {
        cli(proxy.port(), &pki, &["GET", "k"]).trim() == "v"
    });

    // redis-rs with rustls: commands, a pipeline, a transaction.
    let mut c = tls_client(proxy.port(), &pki).get_connection().unwrap();
    let _: () = c.set("n", 1).unwrap();
    let (a, b): (i64, i64) = redis::pipe()
        .incr("n", 1)
        .incr("n", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (2, 3));
    let (x,): (i64,) = redis::pipe().atomic().incr("n", 10).query(&mut c).unwrap();
    assert_eq!(x, 13);
    // A large value both ways (many TLS records).
    let big = "x".repeat(4 * 1024 * 1024);
    let _: () = c.set("big", &big).unwrap();
    // Reads go to the replica: once it has the value, it comes back whole.
    wait_until("the value on the replica", Duration::from_secs(10), || {
        c.get::<_, Option<String>>("big")
            .unwrap()
            .is_some_and(|back| back == big)
    });
    // Written through Rampart's TLS link, replicated over TLS.
    wait_until("replication", Duration::from_secs(10), || {
        cluster.nodes[1].cli(&["GET", "n"]).trim() == "13"
    });

    // A plain client on the TLS port gets nothing it can use.
    let plain = redis_cli(proxy.port(), &["PING"]).unwrap_or_default();
    assert_ne!(plain.trim(), "PONG");
}

#[test]
fn client_certificates_are_required_when_a_ca_is_set() {
    let pki = Arc::new(Pki::new());
    let cluster = Cluster::start_tls(0, &pki);
    let proxy = tls_proxy(&cluster, &pki, true, false);
    // No certificate: the handshake fails.
    let anonymous = redis_cli(
        proxy.port(),
        &["--tls", "--cacert", pki.ca.to_str().unwrap(), "PING"],
    )
    .unwrap();
    assert_ne!(anonymous.trim(), "PONG");
    // With one signed by the CA: in.
    assert_eq!(cli(proxy.port(), &pki, &["PING"]).trim(), "PONG");
    let metrics = rampart_tests::http_get(proxy.admin.unwrap(), "/metrics").1;
    assert!(
        !metrics.contains("rampart_tls_handshake_failures_total 0"),
        "{metrics}"
    );
}

/// `GET path` over HTTPS with a rustls client trusting `pki`'s CA.
fn https_get(addr: std::net::SocketAddr, pki: &Pki, path: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pki.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    match tls.read_to_string(&mut out) {
        Ok(_) => Ok(out),
        // Some servers close without close_notify; what arrived counts.
        Err(_) if !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}

use rustls::pki_types::pem::PemObject;

#[test]
fn the_admin_api_over_https() {
    let pki = Arc::new(Pki::new());
    let cluster = Cluster::start_tls(0, &pki);
    let proxy = tls_proxy(&cluster, &pki, false, true);
    let admin = proxy.admin.unwrap();
    let healthy = https_get(admin, &pki, "/healthz").unwrap();
    assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
    let topology = https_get(admin, &pki, "/v1/topology").unwrap();
    assert!(topology.contains("\"shards\""), "{topology}");
    // The CLI, told which CA to trust.
    let status = Command::new(env!("CARGO_BIN_EXE_rampart-test-cli"))
        .args(["status", "--admin", &admin.to_string(), "--cacert"])
        .arg(&pki.ca)
        .output()
        .unwrap();
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains("shard main"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Plain HTTP on the HTTPS port is not served.
    let mut plain = std::net::TcpStream::connect(admin).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!String::from_utf8_lossy(&reply).contains("200 OK"));
}

/// Certificates are read again on SIGHUP: a client connecting afterwards
/// gets the new certificate (and must trust the new CA), one connected
/// before keeps working on its session.
#[test]
fn certificates_reload_on_sighup_without_dropping_clients() {
    let node = rampart_tests::RedisNode::start(None);
    let pki = Pki::new();
    let (port, admin) = (free_port(), free_port());
    let file = pki.dir().join("rampart.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[proxy.tls]\n{}[admin]\nlisten = \"127.0.0.1:{admin}\"\n[shards.main]\nnodes = [\"{}\"]\n",
            pki.server_section(),
            node.addr()
        ),
    )
    .unwrap();
    let rampart = run_rampart(env!("CARGO_BIN_EXE_rampart-test-cli"), &file, || {
        cli(port, &pki, &["PING"]).trim() == "PONG"
    });
    let old_ca = pki.ca_pem();
    let mut before = tls_client(port, &pki).get_connection().unwrap();
    let _: () = before.set("k", 1).unwrap();

    pki.rotate();
    assert!(Command::new("kill")
        .args(["-HUP", &rampart.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("the new certificate", Duration::from_secs(10), || {
        cli(port, &pki, &["PING"]).trim() == "PONG"
    });
    // The old CA no longer vouches for what Rampart presents.
    let stale = redis::Client::build_with_tls(
        format!("rediss://localhost:{port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(old_ca),
        },
    )
    .unwrap();
    assert!(stale.get_connection().is_err());
    // The connection from before the reload is still served.
    let n: i64 = before.incr("k", 1).unwrap();
    assert_eq!(n, 2);
}

/// Nodes whose certificates Rampart cannot verify are not reached: the
/// handshake fails, the node is down, and a client gets Redis-style
/// errors rather than a hang.
#[test]
fn nodes_with_a_certificate_rampart_does_not_trust_are_not_used() {
    let pki = Arc::new(Pki::new());
    let cluster = Cluster::start_tls(0, &pki);
    let stranger = Pki::new();
    let text = rampart_tests::config_for(
        &cluster.addrs(),
        Setup {
            sections: &format!(
                "[backend.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[failover]\nhold_writes_ms = 300\n",
                stranger.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ),
            ..Setup::default()
        },
    );
    let proxy = Proxy::start_with(&text);
    assert_eq!(proxy.shard()["nodes"][0]["health"], "down");
    assert_eq!(
        rampart_tests::http_get(proxy.admin.unwrap(), "/readyz").0,
        503
    );
    let mut c = proxy.conn();
    let refused = c.set::<_, _, ()>("k", "v").unwrap_err();
    assert!(
        refused.to_string().contains("no reachable primary"),
        "{refused}"
    );
}
