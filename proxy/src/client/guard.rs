//! Commands and settings a client may not use through Rampart, because
//! Rampart owns what they change on the nodes: how the nodes replicate and
//! authenticate, and the connections Rampart shares between clients.
//!
//! Two lists, both in the configuration with safe defaults (like Redis's
//! `rename-command`): `proxy.deny_commands` (a command, or a command and
//! its subcommand) and `proxy.managed_settings` (parameters `CONFIG SET`
//! may not touch; a trailing `*` matches any suffix). Rampart's own backend
//! user cannot be changed or deleted with `ACL SETUSER` / `ACL DELUSER`.
//! Each refusal says why and what to use instead.

use crate::resp::request::CommandName;
use crate::resp::Request;

/// Why a command is refused.
#[derive(Debug)]
pub struct Refusal {
    pub error: String,
    /// `CONFIG SET` of managed parameters is let through after all when it
    /// sets each to the value it already has (a client saving and restoring
    /// its configuration changes nothing Rampart relies on).
    pub unless_unchanged: Vec<(String, Vec<u8>)>,
}

impl Refusal {
    fn plain(error: String) -> Refusal {
        Refusal {
            error,
            unless_unchanged: Vec::new(),
        }
    }

    /// Whether every managed parameter a `CONFIG SET` names already has
    /// the value it would set, on `shard`'s primary.
    pub async fn unchanged_on(&self, shard: &crate::topology::ReplicaSet) -> bool {
        use redis_protocol::resp3::types::OwnedFrame;
        let Some(primary) = shard.primary().cloned() else {
            return false;
        };
        let Ok(mut control) = primary.pool.control().await else {
            return false;
        };
        for (param, value) in &self.unless_unchanged {
            let now = control
                .call(
                    &["CONFIG", "GET", param.as_str()],
                    std::time::Duration::from_secs(1),
                )
                .await;
            let current = match &now {
                Ok(OwnedFrame::Map { data, .. }) => data
                    .values()
                    .next()
                    .and_then(crate::backend::control::frame_text),
                _ => None,
            };
            if current.as_deref().map(str::as_bytes) != Some(value.as_slice()) {
                return false;
            }
        }
        true
    }
}

pub struct Guard {
    /// `(command, subcommand)`, upper case.
    deny: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Lower case; a trailing `*` matches any suffix.
    managed: Vec<String>,
    /// The user Rampart's own connections use on the nodes.
    backend_user: String,
    /// First bytes of every command the guard looks at: most commands pass
    /// with one table lookup.
    first: [bool; 256],
}

impl Guard {
    pub fn new(deny: &[String], managed: &[String], backend_user: Option<&str>) -> Guard {
        let deny: Vec<(Vec<u8>, Option<Vec<u8>>)> = deny
            .iter()
            .filter_map(|entry| {
                let mut words = entry.split_whitespace();
                let name = words.next()?.to_ascii_uppercase().into_bytes();
                let sub = words.next().map(|s| s.to_ascii_uppercase().into_bytes());
                Some((name, sub))
            })
            .collect();
        let mut first = [false; 256];
        for (name, _) in &deny {
            first[name[0] as usize] = true;
        }
        // CONFIG SET and ACL SETUSER/DELUSER are always looked at.
        first[b'C' as usize] = true;
        first[b'A' as usize] = true;
        Guard {
            deny,
            managed: managed.iter().map(|m| m.to_ascii_lowercase()).collect(),
            backend_user: backend_user.unwrap_or("default").to_string(),
            first,
        }
    }

    /// Why `req` is refused, if it is.
    pub fn check(&self, req: &Request) -> Option<Refusal> {
        let name = req.name();
        let n = name.as_bytes();
        if n.is_empty() || !self.first[n[0] as usize] {
            return None;
        }
        let sub = || req.arg_upper(1);
        for (command, subcommand) in &self.deny {
            if command.as_slice() != n {
                continue;
            }
            let matches = match subcommand {
                None => true,
                Some(s) => sub().is_some_and(|a| a.as_bytes() == s.as_slice()),
            };
            if matches {
                return Some(Refusal::plain(refused(
                    &name,
                    subcommand.as_ref().and(sub()),
                )));
            }
        }
        match (n, sub().as_ref().map(CommandName::as_bytes)) {
            (b"CONFIG", Some(b"SET")) => self.config_set(req),
            (b"ACL", Some(b"SETUSER" | b"DELUSER")) => self.acl(req).map(Refusal::plain),
            _ => None,
        }
    }

    fn config_set(&self, req: &Request) -> Option<Refusal> {
        let mut i = 2;
        let mut managed = Vec::new();
        while let Some(param) = req.arg(i) {
            let name = String::from_utf8_lossy(param).to_ascii_lowercase();
            if self.managed.iter().any(|m| matches(m, &name)) {
                managed.push((name, req.arg(i + 1).unwrap_or_default().to_vec()));
            }
            i += 2;
        }
        let (first, _) = managed.first()?;
        Some(Refusal {
            error: format!(
                "ERR rampart: '{first}' is managed by Rampart (its configuration sets credentials and replication on the nodes); CONFIG SET of it is refused (proxy.managed_settings)"
            ),
            unless_unchanged: managed,
        })
    }

    fn acl(&self, req: &Request) -> Option<String> {
        let deleting = req.arg_upper(1).is_some_and(|s| s.as_bytes() == b"DELUSER");
        let users = if deleting { 2..req.argc() } else { 2..3 };
        for i in users {
            if req.arg(i) == Some(self.backend_user.as_bytes()) {
                return Some(format!(
                    "ERR rampart: user '{}' is the one Rampart connects to the nodes as; change it on the nodes directly, or give Rampart a user of its own (backend.username)",
                    self.backend_user
                ));
            }
        }
        None
    }
}

fn refused(name: &CommandName, sub: Option<CommandName>) -> String {
    let what = match &sub {
        Some(sub) => format!("{} {}", name.as_str(), sub.as_str()),
        None => name.as_str().to_string(),
    };
    let why = match name.as_bytes() {
        b"DEBUG" => "it would stop or restart a node Rampart serves from",
        _ => "it is in proxy.deny_commands",
    };
    format!("ERR rampart: {what} is refused through Rampart ({why}; proxy.deny_commands)")
}

/// `pattern` with an optional trailing `*`.
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_DENY, DEFAULT_MANAGED};

    fn guard() -> Guard {
        let deny: Vec<String> = DEFAULT_DENY.iter().map(|s| s.to_string()).collect();
        let managed: Vec<String> = DEFAULT_MANAGED.iter().map(|s| s.to_string()).collect();
        Guard::new(&deny, &managed, None)
    }

    fn check(args: &[&str]) -> Option<String> {
        guard().check(&Request::from_args(args)).map(|r| r.error)
    }

    #[test]
    fn refuses_what_rampart_owns() {
        assert!(check(&["CLIENT", "LIST"]).is_none());
        assert!(check(&["debug", "sleep", "1"]).is_some());
        assert!(check(&["DEBUG", "LOG", "x"]).is_none());
        let e = check(&["config", "set", "maxmemory", "1", "requirepass", "x"]).unwrap();
        assert!(e.contains("'requirepass'"), "{e}");
        assert!(check(&["CONFIG", "SET", "min-replicas-to-write", "0"]).is_some());
        assert!(check(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]).is_none());
        assert!(check(&["CONFIG", "GET", "requirepass"]).is_none());
        assert!(check(&["ACL", "SETUSER", "default", "off"]).is_some());
        assert!(check(&["ACL", "DELUSER", "a", "default"]).is_some());
        assert!(check(&["ACL", "SETUSER", "alice", "on"]).is_none());
        assert!(check(&["GET", "k"]).is_none());
    }
}
