//! The slot map as moves left it, kept in `failover.state_dir/slots.json`
//! so a restart routes by it (and resumes a move in progress) rather than
//! by the `slots` lines of the configuration, which describe the map
//! before any move.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failover::state::StateStore;
use crate::shard::slots::{parse_ranges, ranges_text, Moving, SlotError, SlotMap};

const FILE: &str = "slots.json";

/// What is written: each shard's slots by name, and the move in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMap {
    pub shards: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<SavedMove>,
    /// The `[coordination]` prefix whose shared map this copies (see
    /// [`crate::reshard::shared`]); None for a map of this instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMove {
    pub slots: String,
    pub from: String,
    pub to: String,
    /// Requests for the slots wait (the start of a move).
    #[serde(default)]
    pub paused: bool,
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
                paused: m.paused,
            }),
            shared: None,
        }
    }

    /// The map this describes, for the configured shards `names`: a shard
    /// it does not name owns nothing; one it names that is not configured
    /// any more is an error (its slots would have no owner). A move in
    /// progress resumes past its pause, unless `keep_pause`: alone,
    /// nothing was routed by an earlier map in this process; with other
    /// instances, a pause not yet called off or ended is theirs too.
    pub fn to_map(&self, names: &[&str], keep_pause: bool) -> Result<SlotMap, SlotError> {
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
            paused: keep_pause && saved.paused,
        })))
    }
}

/// `<dir>/slots.json`, kept as the shards' epochs are (see
/// [`StateStore`]: written to a temporary file, synced and renamed, so a
/// crash leaves the old map or the new one, never half of one).
#[derive(Debug, Clone)]
pub struct MapStore(StateStore);

impl MapStore {
    pub fn new(dir: Option<&str>) -> MapStore {
        MapStore(StateStore::new(dir))
    }

    pub fn load(&self) -> std::io::Result<Option<SavedMap>> {
        self.0.load_file(FILE)
    }

    pub fn save(&self, saved: &SavedMap) -> std::io::Result<()> {
        self.0.save_file(FILE, saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_map_comes_back_as_it_was_and_names_what_is_missing() {
        let map = SlotMap::build([("a", Some("0-8191")), ("b", Some("8192-16383"))]).unwrap();
        let moving = map.with_moving(Some(Moving {
            ranges: vec![(0, 99)],
            from: 0,
            to: 1,
            paused: true,
        }));
        let saved = SavedMap::of(&moving, &["a", "b"]);
        let back = saved.to_map(&["a", "b"], false).unwrap();
        assert!(
            saved
                .to_map(&["a", "b"], true)
                .unwrap()
                .moving()
                .unwrap()
                .paused
        );
        assert_eq!(back.ranges_of(0), vec![(0, 8191)]);
        // A move resumes past its pause.
        assert_eq!(
            back.moving(),
            Some(&Moving {
                ranges: vec![(0, 99)],
                from: 0,
                to: 1,
                paused: false
            })
        );
        // A shard added to the configuration since owns nothing.
        let grown = saved.to_map(&["a", "b", "c"], false).unwrap();
        assert_eq!(grown.count_of(2), 0);
        // A shard that owns slots cannot disappear from it.
        let error = saved.to_map(&["a"], false).unwrap_err();
        assert!(
            error.0.contains("shard 'b' owns slots 8192-16383"),
            "{error}"
        );
    }

    #[test]
    fn the_file_is_written_whole_and_read_back() {
        let dir = tempfile_dir();
        let store = MapStore::new(Some(dir.to_str().unwrap()));
        assert!(store.load().unwrap().is_none());
        let map = SlotMap::build([("a", Some("0-16383")), ("b", Some(""))]).unwrap();
        let saved = SavedMap::of(&map, &["a", "b"]);
        store.save(&saved).unwrap();
        assert_eq!(store.load().unwrap(), Some(saved));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rampart-slots-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
