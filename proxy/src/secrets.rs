//! The secrets that change while Rampart runs: the admin tokens and the
//! client password. A reload (SIGHUP, or the file changing) swaps them
//! whole; every check reads the current ones (checks are rare: `AUTH`,
//! `RAMPART AUTH`, a mutating admin request).
//!
//! Several admin tokens may be valid at once (`admin.token` and
//! `admin.tokens`), so a token is rotated without a moment where the old
//! one is already refused and the new one not yet accepted: add the new
//! one, move the tools to it, remove the old one. A connection already
//! authenticated stays so after a change, as on Redis when `requirepass`
//! changes.

use std::sync::{Arc, RwLock};

use crate::config::Config;

/// The secrets in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Every accepted admin token; none means the admin API and `RAMPART`
    /// changes need none.
    pub admin_tokens: Vec<String>,
    /// `proxy.password`.
    pub password: Option<String>,
}

impl Current {
    fn of(config: &Config) -> Current {
        let mut admin_tokens: Vec<String> = config.admin.token.iter().cloned().collect();
        for token in &config.admin.tokens {
            if !admin_tokens.contains(token) {
                admin_tokens.push(token.clone());
            }
        }
        Current {
            admin_tokens,
            password: config.proxy.password.clone(),
        }
    }

    /// Whether changes need an admin token.
    pub fn admin_required(&self) -> bool {
        !self.admin_tokens.is_empty()
    }

    /// Whether `given` is one of the admin tokens (each compared in
    /// constant time, all of them always).
    pub fn admin_token_ok(&self, given: &[u8]) -> bool {
        self.admin_tokens.iter().fold(false, |ok, token| {
            constant_time_eq(given, token.as_bytes()) | ok
        })
    }
}

/// The secrets, swapped whole on reload.
#[derive(Debug)]
pub struct Secrets {
    current: RwLock<Arc<Current>>,
}

impl Secrets {
    pub fn new(config: &Config) -> Secrets {
        Secrets {
            current: RwLock::new(Arc::new(Current::of(config))),
        }
    }

    pub fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the secrets of a reloaded configuration; returns what changed
    /// (field names, never values).
    pub fn update(&self, config: &Config) -> Vec<&'static str> {
        let next = Current::of(config);
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        if slot.admin_tokens != next.admin_tokens {
            changed.push("admin tokens");
        }
        if slot.password != next.password {
            changed.push("proxy.password");
        }
        *slot = Arc::new(next);
        changed
    }
}

/// Compares secrets without an early exit that would leak how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin: &str) -> Config {
        Config::parse(&format!(
            "[proxy]\nlisten = \"127.0.0.1:6380\"\n[admin]\n{admin}\n[shards.main]\nnodes = [\"127.0.0.1:7000\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn every_listed_token_is_accepted_and_only_those() {
        let secrets = Secrets::new(&config("token = \"old\"\ntokens = [\"new\"]"));
        let current = secrets.current();
        assert!(current.admin_token_ok(b"old") && current.admin_token_ok(b"new"));
        assert!(!current.admin_token_ok(b"ol") && !current.admin_token_ok(b""));
        assert_eq!(
            secrets.update(&config("tokens = [\"new\"]")),
            vec!["admin tokens"]
        );
        assert!(!secrets.current().admin_token_ok(b"old"));
        assert!(secrets.current().admin_token_ok(b"new"));
        assert!(secrets.update(&config("tokens = [\"new\"]")).is_empty());
        assert!(!Secrets::new(&config("")).current().admin_required());
    }
}
