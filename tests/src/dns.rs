//! A real DNS server for discovery tests: dnsmasq (Debian's
//! `dnsmasq-base`) on a free loopback port, serving SRV and A records the
//! test sets, restarted with the new records on every change (dnsmasq
//! reads SRV records only at start).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

pub struct Dnsmasq {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// What it serves.
#[derive(Default, Clone)]
pub struct Records {
    /// `(service name, target name, port)`.
    pub srv: Vec<(String, String, u16)>,
    /// `(name, ip)`.
    pub a: Vec<(String, String)>,
}

impl Dnsmasq {
    pub fn start(records: &Records) -> Dnsmasq {
        let mut dns = Dnsmasq {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        dns.serve(records);
        dns
    }

    /// `ip:port`, for `discovery.nameserver`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves `records` from now on.
    pub fn serve(&mut self, records: &Records) {
        self.stop();
        let hosts = self.dir.path().join("hosts");
        let lines: Vec<String> = records
            .a
            .iter()
            .map(|(name, ip)| format!("{ip} {name}"))
            .collect();
        std::fs::write(&hosts, lines.join("\n") + "\n").expect("hosts file");
        let mut conf = format!(
            // `local`: names under .test it does not know do not exist
            // (NXDOMAIN), as an authoritative server answers.
            "port={}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nlocal=/test/\naddn-hosts={}\n",
            self.port,
            hosts.display()
        );
        for (service, target, port) in &records.srv {
            conf.push_str(&format!("srv-host={service},{target},{port}\n"));
        }
        let file = self.dir.path().join("dnsmasq.conf");
        std::fs::write(&file, conf).expect("dnsmasq.conf");
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", file.display()))
            .arg("--user=root")
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start dnsmasq: is it installed (apt-get install dnsmasq-base)?");
        self.child = Some(child);
        let port = self.port;
        wait_until("dnsmasq to answer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops answering (a nameserver outage).
    pub fn stop(&mut self) {
        crate::kill_child(&mut self.child);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
