//! The `tls` sections: files `net::tls` reads certificates and keys from.

use serde::Deserialize;

/// `[proxy.tls]`, `[admin.tls]`: a listener's certificate, and the CA its
/// clients' certificates must be signed by, if clients must present one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first.
    pub cert: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// When set, clients must present a certificate signed by this CA.
    pub ca: Option<String>,
}

/// `[backend.tls]`: how Rampart connects to TLS nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// The CA the nodes' certificates are signed by (PEM).
    pub ca: String,
    /// Rampart's own certificate and key, for nodes that require client
    /// certificates (`tls-auth-clients yes`, Redis's default).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The name the nodes' certificates are checked against; default: the
    /// host part of each node's address.
    pub server_name: Option<String>,
}
