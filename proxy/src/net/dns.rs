//! A small DNS client for node discovery: SRV records (Kubernetes headless
//! Services, Consul's DNS interface) and A/AAAA records, asked of one
//! nameserver over UDP (TCP when the answer is truncated). Answers are
//! untrusted input: every length and pointer is checked, and a malformed
//! answer is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{0}: no answer from the nameserver")]
    Timeout(String),
    #[error("{name}: {error}")]
    Io { name: String, error: String },
    /// The name does not exist (NXDOMAIN).
    #[error("{0}: no such name")]
    NoSuchName(String),
    #[error("{name}: the nameserver answered {} (code {code})", rcode_name(*code))]
    Server { name: String, code: u8 },
    #[error("{0}: malformed answer")]
    Malformed(String),
}

/// A DNS response code's name (RFC 1035, 6895).
fn rcode_name(code: u8) -> &'static str {
    match code {
        1 => "FORMERR",
        2 => "SERVFAIL",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error",
    }
}

/// One SRV record's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// Asks `server`.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub server: SocketAddr,
    pub timeout: Duration,
}

impl Resolver {
    /// The first `nameserver` of `/etc/resolv.conf`, or `server` if given.
    pub fn new(server: Option<SocketAddr>) -> Resolver {
        let server = server
            .or_else(system_nameserver)
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        Resolver {
            server,
            timeout: Duration::from_secs(2),
        }
    }

    /// `host:port` of every target of the SRV records of `name`, each
    /// target's addresses taken from the answer's additional records or
    /// asked for.
    pub async fn srv(&self, name: &str) -> Result<Vec<SocketAddr>, DnsError> {
        let answer = self.ask(name, TYPE_SRV).await?;
        let mut out = Vec::new();
        for target in &answer.targets {
            let known: Vec<IpAddr> = answer
                .addresses
                .iter()
                .filter(|(owner, _)| owner.eq_ignore_ascii_case(&target.host))
                .map(|(_, ip)| *ip)
                .collect();
            let ips = match known.is_empty() {
                true => self.addresses(&target.host).await?,
                false => known,
            };
            out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, target.port)));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every A and AAAA address of `name`.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let mut ips: Vec<IpAddr> = Vec::new();
        let v4 = self.ask(name, TYPE_A).await;
        let v6 = self.ask(name, TYPE_AAAA).await;
        for answer in [&v4, &v6].into_iter().flatten() {
            ips.extend(answer.addresses.iter().map(|(_, ip)| *ip));
        }
        if ips.is_empty() {
            // Both failed or both empty: the first error says why.
            v4?;
            v6?;
        }
        ips.sort();
        ips.dedup();
        Ok(ips)
    }

    async fn ask(&self, name: &str, kind: u16) -> Result<Answer, DnsError> {
        let id = query_id();
        let query =
            encode_query(id, name, kind).ok_or_else(|| DnsError::Malformed(name.to_string()))?;
        let io = |e: std::io::Error| DnsError::Io {
            name: name.to_string(),
            error: e.to_string(),
        };
        let bind = match self.server {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let socket = UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(self.server).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            socket.send(&query).await.map_err(io)?;
            let received = tokio::time::timeout(self.timeout, async {
                loop {
                    let n = socket.recv(&mut buf).await?;
                    // Someone else's answer (another id): keep waiting.
                    if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        return Ok::<usize, std::io::Error>(n);
                    }
                }
            })
            .await;
            match received {
                Ok(Ok(n)) => {
                    let answer = parse(&buf[..n], id, name)?;
                    if answer.truncated {
                        return self.ask_tcp(&query, id, name).await;
                    }
                    return Ok(answer);
                }
                Ok(Err(e)) => return Err(io(e)),
                Err(_) => continue,
            }
        }
        Err(DnsError::Timeout(name.to_string()))
    }

    async fn ask_tcp(&self, query: &[u8], id: u16, name: &str) -> Result<Answer, DnsError> {
        let io = |e: std::io::Error| DnsError::Io {
            name: name.to_string(),
            error: e.to_string(),
        };
        let exchange = async {
            let mut stream = TcpStream::connect(self.server).await?;
            let mut out = (query.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(query);
            stream.write_all(&out).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buf).await?;
            Ok::<Vec<u8>, std::io::Error>(buf)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(buf)) => parse(&buf, id, name),
            Ok(Err(e)) => Err(io(e)),
            Err(_) => Err(DnsError::Timeout(name.to_string())),
        }
    }
}

/// A shard's `nodes` with every DNS entry replaced by the addresses it
/// names now (`host:port` entries as they are), in order, each once.
pub async fn expand(resolver: &Resolver, entries: &[String]) -> Result<Vec<String>, DnsError> {
    use crate::config::NodeEntry;
    let mut out: Vec<String> = Vec::new();
    for entry in entries {
        let found: Vec<String> = match NodeEntry::parse(entry) {
            NodeEntry::Addr(addr) => vec![addr.to_string()],
            NodeEntry::Srv(name) => resolver
                .srv(name)
                .await?
                .into_iter()
                .map(|addr| addr.to_string())
                .collect(),
            NodeEntry::Name { host, port } => resolver
                .addresses(host)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port).to_string())
                .collect(),
        };
        for addr in found {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// The first `nameserver` line of `/etc/resolv.conf`.
fn system_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let ip: IpAddr = line.strip_prefix("nameserver")?.trim().parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u16
}

/// A query for `name`'s records of type `kind`, recursion desired.
fn encode_query(id: u16, name: &str, kind: u16) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(out)
}

/// What an answer holds: SRV targets, and addresses by owner name.
#[derive(Debug, Default)]
struct Answer {
    targets: Vec<Target>,
    addresses: Vec<(String, IpAddr)>,
    truncated: bool,
}

fn parse(msg: &[u8], id: u16, name: &str) -> Result<Answer, DnsError> {
    let bad = || DnsError::Malformed(name.to_string());
    let header = msg.get(..12).ok_or_else(bad)?;
    if u16::from_be_bytes([header[0], header[1]]) != id || header[2] & 0x80 == 0 {
        return Err(bad());
    }
    let truncated = header[2] & 0x02 != 0;
    match header[3] & 0x0f {
        0 => {}
        3 => return Err(DnsError::NoSuchName(name.to_string())),
        code => {
            return Err(DnsError::Server {
                name: name.to_string(),
                code,
            })
        }
    }
    let count = |at: usize| usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
    let (questions, records) = (count(4), count(6) + count(8) + count(10));
    let mut at = 12;
    for _ in 0..questions {
        at = read_name(msg, at, &mut String::new()).ok_or_else(bad)?;
        at = at
            .checked_add(4)
            .filter(|&a| a <= msg.len())
            .ok_or_else(bad)?;
    }
    let mut answer = Answer {
        truncated,
        ..Default::default()
    };
    for _ in 0..records {
        let mut owner = String::new();
        at = read_name(msg, at, &mut owner).ok_or_else(bad)?;
        let fixed = msg.get(at..at + 10).ok_or_else(bad)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data_at = at + 10;
        let data = msg.get(data_at..data_at + len).ok_or_else(bad)?;
        match kind {
            TYPE_A if len == 4 => {
                let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
                answer.addresses.push((owner, IpAddr::V4(ip)));
            }
            TYPE_AAAA if len == 16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                answer
                    .addresses
                    .push((owner, IpAddr::V6(Ipv6Addr::from(octets))));
            }
            TYPE_SRV if len > 6 => {
                let port = u16::from_be_bytes([data[4], data[5]]);
                let mut host = String::new();
                read_name(msg, data_at + 6, &mut host).ok_or_else(bad)?;
                answer.targets.push(Target { host, port });
            }
            _ => {}
        }
        at = data_at + len;
    }
    Ok(answer)
}

/// Reads a (possibly compressed) name at `at` into `out`; returns where
/// the name ends in the message (after its first pointer, if any).
fn read_name(msg: &[u8], mut at: usize, out: &mut String) -> Option<usize> {
    let mut end = None;
    // Each pointer must go backwards: no loops.
    let mut limit = at;
    for _ in 0..128 {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(end.unwrap_or(at + 1)),
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *msg.get(at + 1)?]));
                if target >= limit {
                    return None;
                }
                end.get_or_insert(at + 2);
                limit = target;
                at = target;
            }
            l if l & 0xc0 == 0 => {
                let label = msg.get(at + 1..at + 1 + usize::from(l))?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&String::from_utf8_lossy(label));
                at += 1 + usize::from(l);
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_labels() {
        let q = encode_query(7, "_redis._tcp.cache.", TYPE_SRV).unwrap();
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(&q[12..], b"\x06_redis\x04_tcp\x05cache\x00\x00\x21\x00\x01");
        assert!(encode_query(1, "a..b", TYPE_A).is_none());
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        // Every prefix of a real-looking answer, and a pointer loop.
        let mut msg = vec![0, 9, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9]);
        let answer = parse(&msg, 9, "a").unwrap();
        assert_eq!(
            answer.addresses,
            vec![("a".to_string(), "127.0.0.9".parse().unwrap())]
        );
        for cut in 0..msg.len() {
            let _ = parse(&msg[..cut], 9, "a");
        }
        let mut looped = msg.clone();
        looped[12] = 0xc0;
        looped[13] = 12;
        assert!(parse(&looped, 9, "a").is_err());
        let mut nx = msg.clone();
        nx[3] = 0x83;
        assert_eq!(
            parse(&nx, 9, "a").unwrap_err(),
            DnsError::NoSuchName("a".into())
        );
    }
}
