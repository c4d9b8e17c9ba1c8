//! What every section's checks share: the error naming the field at fault,
//! and the shape of addresses and names.

/// A configuration mistake, with the field it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Whether `host:port` listens on a loopback address only.
pub(super) fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
    matches!(host, "localhost" | "[::1]" | "::1")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` with a non-empty host and a numeric port.
/// Shard names become file names (`failover.state_dir`), etcd keys and
/// metric labels: letters, digits, `-`, `_` and `.`, not starting with a
/// dot, at most 64.
pub(super) fn check_shard_name(name: &str) -> Result<(), ConfigError> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        return Ok(());
    }
    Err(ConfigError(format!(
        "field `shards`: '{}' is not a shard name: use letters, digits, '-', '_' and '.' (not first), at most 64",
        name.escape_debug()
    )))
}

/// A node address as compared for "the same node twice": `localhost` and
/// the loopback addresses are one host.
pub(super) fn same_node(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("localhost" | "127.0.0.1" | "[::1]" | "::1", port)) => {
            format!("loopback:{port}")
        }
        _ => addr.to_ascii_lowercase(),
    }
}

pub(super) fn check_addr(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "field `{field}`: expected host:port (e.g. 127.0.0.1:6379), got {value:?}"
        )))
    }
}
