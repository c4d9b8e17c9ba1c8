//! A small HTTP/1.1 client for Rampart's admin listener. The admin API is
//! the only way the CLI talks to a running Rampart, so anything the CLI
//! does, a script with curl can do too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::{Failure, Target};
use crate::Config;

/// Where `status`, `policy` and friends connect when told nothing else:
/// the admin address of `examples/configs/local.toml` and `rampart demo`.
const DEFAULT_ADMIN: &str = "127.0.0.1:6381";

/// Longer than any operation the admin API waits for (a switchover waits
/// up to its catch-up bound, a plugin compiles in a few seconds).
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    pub addr: SocketAddr,
    token: Option<String>,
    /// HTTPS (`[admin.tls]`): the CA to trust and the name to check.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Admin {
    /// `--admin`, else the config file's `admin.listen`, else the default.
    pub fn connect(target: &Target) -> Result<Admin, Failure> {
        let mut addr = target.admin.clone();
        let mut token = target.token.clone();
        let mut cacert = target.cacert.clone();
        let mut https = cacert.is_some();
        if let Some(path) = &target.config {
            let config = Config::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
            let listen = config.admin.listen.clone().ok_or_else(|| {
                Failure::Usage(format!(
                    "{}: field `admin.listen` is not set, so that Rampart has no admin listener to talk to",
                    path.display()
                ))
            })?;
            addr = addr.or(Some(listen));
            token = token.or(config.admin.token.clone());
            if let Some(tls) = &config.admin.tls {
                https = true;
                cacert = cacert.or(tls.ca.as_ref().map(std::path::PathBuf::from));
            }
        }
        let text = addr.unwrap_or_else(|| DEFAULT_ADMIN.to_string());
        let mut resolved = text
            .to_socket_addrs()
            .map_err(|e| Failure::Usage(format!("admin address `{text}`: {e}")))?
            .next()
            .ok_or_else(|| Failure::Usage(format!("admin address `{text}` resolves to nothing")))?;
        // A listener on every interface is reached on this machine's loopback.
        if resolved.ip().is_unspecified() {
            resolved.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let tls = match (https, cacert) {
            (false, _) => None,
            (true, None) => {
                return Err(Failure::Usage(
                    "the admin listener uses TLS: pass --cacert with the CA that signed its certificate".into(),
                ))
            }
            (true, Some(ca)) => Some(https_config(&ca, &text)?),
        };
        Ok(Admin {
            addr: resolved,
            token,
            tls,
        })
    }

    pub fn get(&self, path: &str) -> Result<String, Failure> {
        self.request("GET", path, &[])
    }

    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, Failure> {
        let body = self.get(path)?;
        serde_json::from_str(&body)
            .map_err(|e| Failure::Remote(format!("GET {path}: not JSON ({e})")))
    }

    /// A request; a non-2xx answer is an error carrying the server's text.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<String, Failure> {
        let (status, text) = self.exchange(method, path, body).map_err(|e| {
            Failure::Remote(format!(
                "cannot reach Rampart's admin listener at {}: {e} (is it running? see --admin)",
                self.addr
            ))
        })?;
        match status {
            200..=299 => Ok(text),
            401 => Err(Failure::Usage(format!(
                "{method} {path}: {text} (pass --token or set RAMPART_ADMIN_TOKEN)"
            ))),
            400..=499 => Err(Failure::Usage(format!("{method} {path}: {text}"))),
            _ => Err(Failure::Remote(format!(
                "{method} {path}: HTTP {status}: {text}"
            ))),
        }
    }

    fn exchange(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        match &self.tls {
            None => self.exchange_over(stream, method, path, body),
            Some((config, name)) => {
                let session = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(std::io::Error::other)?;
                self.exchange_over(
                    rustls::StreamOwned::new(session, stream),
                    method,
                    path,
                    body,
                )
            }
        }
    }

    fn exchange_over(
        &self,
        mut stream: impl Read + Write,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let auth = match &self.token {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut response = Vec::new();
        if let Err(e) = stream.read_to_end(&mut response) {
            // A TLS peer may close without close_notify once it has
            // answered: what arrived counts.
            if response.is_empty() {
                return Err(e);
            }
        }
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
        })?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status")
            })?;
        Ok((status, body.to_string()))
    }
}

/// Trusts the CA in `ca` for the admin listener at `addr` (`host:port`).
fn https_config(
    ca: &std::path::Path,
    addr: &str,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), Failure> {
    use rustls::pki_types::pem::PemObject;
    let usage = |e: String| Failure::Usage(format!("--cacert {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| usage(e.to_string()))?
    {
        roots
            .add(cert.map_err(|e| usage(e.to_string()))?)
            .map_err(|e| usage(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| usage(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "0.0.0.0" || host == "::" {
        "127.0.0.1"
    } else {
        host
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Failure::Usage(format!("admin address `{addr}`: {e}")))?;
    Ok((Arc::new(config), name))
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
