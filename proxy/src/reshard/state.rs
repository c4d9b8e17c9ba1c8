//! The slot map as moves left it, kept in `failover.state_dir/slots.json`
//! so a restart routes by it (and resumes a move in progress) rather than
//! by the `slots` lines of the configuration, which describe the map
//! before any move.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::shard::slots::{parse_ranges, ranges_text, Moving, SlotError, SlotMap};

const FILE: &str = "slots.json";

/// What is written: each shard's slots by name, and the move in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMap {
    pub shards: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<SavedMove>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMove {
    pub slots: String,
    pub from: String,
    pub to: String,
}

impl SavedMap {
    pub fn of(map: &SlotMap, names: &[&str]) -> SavedMap {
        SavedMap {
            shards: names
                .iter()
                .enumerate()
                .map(|(index, name)| (name.to_string(), ranges_text(&map.ranges_of(index))))
                .collect(),
            moving: map.moving().map(|m| SavedMove {
                slots: ranges_text(&m.ranges),
                from: names.get(m.from).unwrap_or(&"").to_string(),
                to: names.get(m.to).unwrap_or(&"").to_string(),
            }),
        }
    }

    /// The map this describes, for the configured shards `names`: a shard
    /// it does not name owns nothing; one it names that is not configured
    /// any more is an error (its slots would have no owner). A move in
    /// progress resumes past its pause (nothing was routed by an earlier
    /// map in this process).
    pub fn to_map(&self, names: &[&str]) -> Result<SlotMap, SlotError> {
        if let Some(gone) = self.shards.keys().find(|n| !names.contains(&n.as_str())) {
            if self.shards.get(gone).is_some_and(|s| !s.is_empty()) {
                return Err(SlotError(format!(
                    "{FILE}: shard '{gone}' owns slots {} but is not in the configuration; add it back, or move its slots first",
                    self.shards[gone]
                )));
            }
        }
        let map = SlotMap::build(
            names
                .iter()
                .map(|&name| (name, Some(self.shards.get(name).map_or("", String::as_str)))),
        )
        .map_err(|e| SlotError(format!("{FILE}: {e}")))?;
        let Some(saved) = &self.moving else {
            return Ok(map);
        };
        let index = |name: &str| {
            names.iter().position(|&n| n == name).ok_or_else(|| {
                SlotError(format!(
                    "{FILE}: a move names shard '{name}', which is not in the configuration"
                ))
            })
        };
        let ranges = parse_ranges(&saved.slots).map_err(|e| SlotError(format!("{FILE}: {e}")))?;
        Ok(map.with_moving(Some(Moving {
            ranges,
            from: index(&saved.from)?,
            to: index(&saved.to)?,
            paused: false,
        })))
    }
}

/// `<dir>/slots.json`.
#[derive(Debug, Clone)]
pub struct MapStore {
    dir: Option<PathBuf>,
}

impl MapStore {
    pub fn new(dir: Option<&str>) -> MapStore {
        MapStore {
            dir: dir.map(PathBuf::from),
        }
    }

    /// Whether maps are kept at all (moves need it).
    pub fn keeps(&self) -> bool {
        self.dir.is_some()
    }

    pub fn load(&self) -> std::io::Result<Option<SavedMap>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary file, synced and renamed: a crash leaves the
    /// old map or the new one, never half of one.
    pub fn save(&self, saved: &SavedMap) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}
