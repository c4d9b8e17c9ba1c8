//! What a leader must remember across restarts: each shard's epoch and the
//! primary it chose in that epoch. Without it, a restarted Rampart would
//! have to believe whichever node claims to be primary, and a stale primary
//! that came back first would win.
//!
//! A fan-out shard remembers which of its nodes had every write when
//! Rampart last stopped: the backlog of a node that was away lives in
//! memory, so after a restart only those nodes can be trusted.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub epoch: u64,
    pub primary: String,
    /// Set while the shard waits for an operator because no node could be
    /// proven to hold every acknowledged write: a Rampart restarted then
    /// keeps waiting rather than trust whichever node claims the role
    /// (what made the choice unsafe, the offsets it saw, is not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// With `[coordination]`: the epoch is fenced, its primary not named
    /// yet (the old one is kept in `primary`); every instance holds the
    /// shard's writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// The nodes besides `primary` that may have followed it since it was
    /// promoted: only these can have acknowledged its writes, so only these
    /// count when it fails. A node down at the promotion joins when it is
    /// told to follow (recorded before it is told). Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

/// A fan-out shard's nodes as Rampart last left them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutState {
    /// True while Rampart runs: found true at start, it stopped without
    /// closing the log (a crash), and only `primary` is known to have
    /// every acknowledged write.
    pub running: bool,
    pub primary: Option<String>,
    /// After a clean stop: the nodes that had run every write.
    pub in_sync: Vec<String>,
    /// Each trusted node's `run_id` when last seen: a node that answers
    /// with another one restarted since, and lost what it did not persist.
    #[serde(default)]
    pub run_ids: std::collections::BTreeMap<String, String>,
}

/// Files `<dir>/<shard>.json` (and `<shard>.fanout.json`); with no
/// directory, nothing is kept.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: Option<PathBuf>,
}

impl StateStore {
    pub fn new(dir: Option<&str>) -> StateStore {
        StateStore {
            dir: dir.map(PathBuf::from),
        }
    }

    pub fn load(&self, shard: &str) -> std::io::Result<Option<ShardState>> {
        self.load_file(&format!("{shard}.json"))
    }

    pub fn save(&self, shard: &str, state: &ShardState) -> std::io::Result<()> {
        self.save_file(&format!("{shard}.json"), state)
    }

    pub fn load_fanout(&self, shard: &str) -> std::io::Result<Option<FanoutState>> {
        self.load_file(&format!("{shard}.fanout.json"))
    }

    pub fn save_fanout(&self, shard: &str, state: &FanoutState) -> std::io::Result<()> {
        self.save_file(&format!("{shard}.fanout.json"), state)
    }

    /// `<dir>/<name>`, read as JSON; `None` when absent (or no directory).
    pub(crate) fn load_file<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> std::io::Result<Option<T>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the state durably: a temporary file, synced, renamed over the
    /// old one, so a crash leaves either the old epoch or the new.
    pub(crate) fn save_file<T: Serialize>(&self, name: &str, state: &T) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        // Readable by Rampart's user alone: the settings ledger holds
        // password hashes.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("rampart-state-{}", std::process::id()));
        let store = StateStore::new(dir.to_str());
        assert_eq!(store.load("main").unwrap(), None);
        let state = ShardState {
            epoch: 3,
            primary: "127.0.0.1:7001".into(),
            waiting: None,
            fenced: false,
            members: Some(vec!["127.0.0.1:7002".into()]),
        };
        store.save("main", &state).unwrap();
        assert_eq!(store.load("main").unwrap(), Some(state));
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(StateStore::new(None).load("main").unwrap(), None);
    }
}
