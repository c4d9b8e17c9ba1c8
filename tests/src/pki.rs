//! Certificates for the TLS tests, made fresh for each: a CA, and one
//! certificate it signs for `localhost` and `127.0.0.1` that serves both
//! as a server's and as a client's (Redis nodes use theirs both ways).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a directory for certificates");
        let pki = Pki {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir,
        };
        pki.issue("Rampart test CA");
        pki
    }

    /// Replaces every file with a new CA and certificate (as a rotation
    /// to another CA would).
    pub fn rotate(&self) {
        self.issue("Rampart rotated CA");
    }

    fn issue(&self, ca_name: &str) {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("a DNS name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("signed certificate");
        std::fs::write(&self.ca, ca.pem()).expect("write the CA");
        std::fs::write(&self.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&self.key, key.serialize_pem()).expect("write the key");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA as PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("read the CA")
    }

    /// `redis-cli` arguments for a TLS connection with this certificate.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(&self.ca),
            "--cert".into(),
            path(&self.cert),
            "--key".into(),
            path(&self.key),
        ]
    }

    /// A `[proxy.tls]`/`[admin.tls]` section's body.
    pub fn server_section(&self) -> String {
        format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }

    /// A `[backend.tls]` section's body: this CA, this certificate.
    pub fn backend_section(&self) -> String {
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}
