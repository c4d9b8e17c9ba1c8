//! Shards' `slots` settings: which hash slots each shard owns. Read here,
//! so a file with a gap or an overlap is refused by `check-config` and at
//! start; `shard::slots` builds the routing map from what this accepts.

use super::ConfigError;

/// Hash slots, as Redis Cluster has them.
pub const SLOTS: usize = 16384;

/// `"0-8191,10000,12000-16383"`: ranges and single slots, comma separated;
/// `""`: none (a shard ready to receive slots).
pub fn parse_ranges(text: &str) -> Result<Vec<(u16, u16)>, RangeError> {
    let mut ranges = Vec::new();
    if text.trim().is_empty() {
        return Ok(ranges);
    }
    for part in text.split(',').map(str::trim) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let number = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|&n| usize::from(n) < SLOTS)
                .ok_or_else(|| RangeError::NotSlots(text.to_string()))
        };
        let (first, last) = (number(first)?, number(last)?);
        if first > last {
            return Err(RangeError::Backwards(first, last));
        }
        ranges.push((first, last));
    }
    Ok(ranges)
}

/// Why a `slots` text is not ranges of slots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("expected slot numbers from 0 to 16383 as \"first-last\" ranges separated by commas, got \"{0}\"")]
    NotSlots(String),
    #[error("range {0}-{1} ends before it starts")]
    Backwards(u16, u16),
}

/// The owner of every slot (an index into `shards`), from each shard's
/// name and `slots` setting (`None` means every slot, allowed only when
/// there is one shard). Every slot must be owned by exactly one shard.
pub fn owners<'a>(
    shards: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Vec<u16>, ConfigError> {
    let shards: Vec<_> = shards.into_iter().collect();
    if shards.len() > u16::MAX as usize {
        return Err(ConfigError("field `shards`: too many shards".into()));
    }
    let mut owner: Vec<Option<u16>> = vec![None; SLOTS];
    for (index, (name, ranges)) in shards.iter().enumerate() {
        let ranges = match ranges {
            Some(ranges) => {
                parse_ranges(ranges).map_err(|e| ConfigError(format!("field `shards.{name}.slots`: {e}")))?
            }
            // The only shard, or the only one beside shards that own no
            // slots (added to receive some): every slot.
            None if shards
                .iter()
                .all(|(other, r)| other == name || r.is_some_and(|r| r.trim().is_empty())) =>
            {
                vec![(0, SLOTS as u16 - 1)]
            }
            None => {
                return Err(ConfigError(format!(
                    "field `shards.{name}.slots`: expected the hash slots this shard owns (e.g. \"0-8191\"), because there are {} shards",
                    shards.len()
                )))
            }
        };
        for (first, last) in ranges {
            for slot in first..=last {
                if let Some(other) = owner[slot as usize] {
                    return Err(ConfigError(format!(
                        "field `shards.{name}.slots`: slot {slot} is already owned by shard '{}'",
                        shards[other as usize].0
                    )));
                }
                owner[slot as usize] = Some(index as u16);
            }
        }
    }
    if let Some(missing) = owner.iter().position(Option::is_none) {
        let end = owner[missing..]
            .iter()
            .position(Option::is_some)
            .map_or(SLOTS - 1, |n| missing + n - 1);
        return Err(ConfigError(format!(
            "field `shards.*.slots`: slots {missing}-{end} are owned by no shard (every slot from 0 to 16383 needs one)"
        )));
    }
    Ok(owner.into_iter().map(|o| o.unwrap_or(0)).collect())
}
