//! The ledger kept in `failover.state_dir/settings.json`, so that a
//! restarted Rampart still catches up a node that restarted, or missed a
//! copy, while it was down.
//!
//! With the ledger it keeps each node that held all of it, and the
//! `run_id` of the node's process then. After a restart, a node listed
//! with the `run_id` it still has is left alone: whatever was changed on it
//! directly since stays. A node listed with another `run_id` (it restarted
//! meanwhile), or not listed (it had a copy queued, missed one, or was not
//! a member), is caught up.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ledger::Ledger;
use crate::failover::state::StateStore;

const FILE: &str = "settings.json";

/// What is written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Saved {
    users: Vec<User>,
    params: Vec<Param>,
    /// Node address -> the `run_id` of its process when it held the whole
    /// ledger.
    pub(super) nodes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    name: Text,
    /// Its rules as `ACL LIST` writes them; `null`: deleted.
    rules: Option<Vec<Text>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Param {
    name: Text,
    value: Text,
}

/// Bytes as a string when they are UTF-8 (key patterns and names almost
/// always are), hex otherwise, so that any rule survives the round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Text {
    Utf8(String),
    Raw { hex: String },
}

impl From<&Bytes> for Text {
    fn from(bytes: &Bytes) -> Text {
        match std::str::from_utf8(bytes) {
            Ok(s) => Text::Utf8(s.to_string()),
            Err(_) => Text::Raw {
                hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }
}

impl Text {
    fn bytes(&self) -> Option<Bytes> {
        match self {
            Text::Utf8(s) => Some(Bytes::from(s.clone())),
            Text::Raw { hex } => (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
                .map(Bytes::from),
        }
    }
}

impl Saved {
    pub(super) fn of(ledger: &Ledger, nodes: BTreeMap<String, String>) -> Saved {
        let rules = |r: &Option<Vec<Bytes>>| r.as_ref().map(|r| r.iter().map(Text::from).collect());
        Saved {
            users: ledger
                .users
                .iter()
                .map(|(user, r)| User {
                    name: Text::from(user),
                    rules: rules(r),
                })
                .collect(),
            params: ledger
                .params
                .iter()
                .map(|(p, v)| Param {
                    name: Text::from(p),
                    value: Text::from(v),
                })
                .collect(),
            nodes,
        }
    }

    /// The ledger it holds; `None` if an entry does not decode (the file
    /// was edited by hand).
    pub(super) fn ledger(&self) -> Option<Ledger> {
        let mut ledger = Ledger::default();
        for user in &self.users {
            let rules = match &user.rules {
                Some(rules) => Some(rules.iter().map(Text::bytes).collect::<Option<_>>()?),
                None => None,
            };
            ledger.users.insert(user.name.bytes()?, rules);
        }
        for param in &self.params {
            ledger
                .params
                .insert(param.name.bytes()?, param.value.bytes()?);
        }
        Some(ledger)
    }
}

/// `<state_dir>/settings.json`, written as the epochs are (synced, then
/// renamed over the old one); nothing without a `state_dir`.
pub(super) struct Store {
    files: StateStore,
    keeps: bool,
}

impl Store {
    pub(super) fn new(dir: Option<&str>) -> Store {
        Store {
            files: StateStore::new(dir),
            keeps: dir.is_some(),
        }
    }

    /// Whether anything is kept (there is a `state_dir`).
    pub(super) fn keeps(&self) -> bool {
        self.keeps
    }

    /// What was saved, or nothing (no file, no directory, or a file that
    /// does not decode: logged, and the ledger starts empty, as it did
    /// before it was kept).
    pub(super) fn load(&self) -> (Ledger, BTreeMap<String, String>) {
        let saved: Option<Saved> = match self.files.load_file(FILE) {
            Ok(saved) => saved,
            Err(error) => {
                tracing::error!(%error, "the ACL users and settings changed through Rampart could not be read; starting without them");
                None
            }
        };
        let Some(saved) = saved else {
            return Default::default();
        };
        match saved.ledger() {
            Some(ledger) => (ledger, saved.nodes),
            None => {
                tracing::error!("{FILE} holds an entry that does not decode; starting without the ACL users and settings changed through Rampart");
                Default::default()
            }
        }
    }

    pub(super) fn save(&self, saved: &Saved) -> std::io::Result<()> {
        self.files.save_file(FILE, saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_survives_the_round_trip_whatever_its_bytes() {
        let mut ledger = Ledger::default();
        ledger.users.insert(
            Bytes::from("app"),
            Some(vec![Bytes::from("on"), Bytes::from_static(b"~k\xff*")]),
        );
        ledger.users.insert(Bytes::from("gone"), None);
        ledger
            .params
            .insert(Bytes::from("maxmemory-policy"), Bytes::from("allkeys-lru"));
        let nodes = BTreeMap::from([("127.0.0.1:6379".to_string(), "abc".to_string())]);
        let saved = Saved::of(&ledger, nodes);
        let text = serde_json::to_string(&saved).unwrap();
        assert!(text.contains(r#"{"hex":"7e6bff2a"}"#), "{text}");
        let back: Saved = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        let again = back.ledger().unwrap();
        assert_eq!(again.users, ledger.users);
        assert_eq!(again.params, ledger.params);
    }

    #[test]
    fn a_file_edited_into_nonsense_starts_empty() {
        let dir = std::env::temp_dir().join(format!("rampart-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(FILE),
            r#"{"users":[{"name":"u","rules":[{"hex":"zz"}]}],"params":[],"nodes":{"n":"r"}}"#,
        )
        .unwrap();
        let (ledger, nodes) = Store::new(dir.to_str()).load();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ledger.is_empty() && nodes.is_empty());
    }
}
