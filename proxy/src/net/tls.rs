//! TLS with rustls: Rampart's listeners (clients, admin) and its
//! connections to the nodes.
//!
//! Certificates and keys are PEM files named in the configuration. They
//! are read at start, and again on SIGHUP: a new handshake uses what was
//! read last, and connections already open are not touched, so rotating a
//! certificate drops nobody. A file that no longer reads on reload leaves
//! the previous certificate in force (and says why).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::config::tls::{BackendTls, ServerTls};

/// A failure to set up TLS, naming the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct TlsError {
    what: String,
    detail: String,
}

fn error(what: impl Into<String>, detail: impl std::fmt::Display) -> TlsError {
    TlsError {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(path, e))
}

fn roots(path: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| error(path, e))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Reads the files and builds the listener's TLS configuration.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("TLS", e))?;
        let builder = match &self.ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| error(ca.as_str(), e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| error(format!("{} and {}", self.cert, self.key), e))?;
        Ok(Arc::new(config))
    }
}

impl BackendTls {
    /// Reads the files and builds the TLS configuration for the nodes.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("TLS", e))?
            .with_root_certificates(roots(&self.ca)?);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key_file)) => builder
                .with_client_auth_cert(certs(cert)?, key(key_file)?)
                .map_err(|e| error(format!("{cert} and {key_file}"), e))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(error(
                    "backend.tls",
                    "cert and key go together: set both or neither",
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

/// Files that build a rustls configuration.
pub trait Build {
    type Config;
    fn build(&self) -> Result<Arc<Self::Config>, TlsError>;
}

impl Build for ServerTls {
    type Config = rustls::ServerConfig;
    fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        ServerTls::build(self)
    }
}

impl Build for BackendTls {
    type Config = rustls::ClientConfig;
    fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        BackendTls::build(self)
    }
}

/// A configuration read from files, read again by [`Reloadable::reload`];
/// each new connection takes the latest.
pub struct Reloadable<F: Build> {
    files: F,
    config: ArcSwap<F::Config>,
}

impl<F: Build + Clone> Reloadable<F> {
    pub fn new(files: &F) -> Result<Reloadable<F>, TlsError> {
        Ok(Reloadable {
            config: ArcSwap::new(files.build()?),
            files: files.clone(),
        })
    }

    /// Reads the files again; on failure the previous ones stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.store(self.files.build()?);
        Ok(())
    }
}

/// A listener's TLS.
pub type Acceptor = Reloadable<ServerTls>;

/// TLS to the nodes.
pub type Connector = Reloadable<BackendTls>;

impl Acceptor {
    /// The TLS handshake with a client that just connected.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        let tls = acceptor.accept(tcp).await?;
        Ok(Stream::Accepted(Box::new(tls)))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("ca", &self.files.ca)
            .finish()
    }
}

impl Connector {
    /// The TLS handshake with the node at `addr` (`host:port`).
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> std::io::Result<Stream> {
        let host = match &self.files.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_string(),
        };
        let name = ServerName::try_from(host).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr}: not a TLS server name: {e}"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.config.load_full());
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::Connected(Box::new(tls)))
    }
}

/// `host` of `host:port` (`[::1]:6379` gives `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:6379"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6379"), "::1");
        assert_eq!(host_of("redis.internal:6380"), "redis.internal");
    }

    #[test]
    fn missing_files_are_named() {
        let files = ServerTls {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            ca: None,
        };
        let e = files.build().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
