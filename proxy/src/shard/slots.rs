//! Key -> hash slot -> shard, as Redis Cluster places keys.
//!
//! A key's slot is CRC16 (XMODEM) of the key modulo 16384, where a key
//! holding a non-empty `{tag}` is hashed by the tag alone: applications
//! written for Redis Cluster keep their key design (and `{user:1}:cart`
//! and `{user:1}:orders` stay together) when they move behind Rampart.
//! Which shard owns which slots is configuration, checked at start.

use std::fmt;

/// Hash slots, as in Redis Cluster.
pub use crate::config::slots::{parse_ranges, SLOTS};

/// The slot `key` lives in.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS as u16
}

/// The slot of every key `pattern` can form by replacing its `*` (as SORT's
/// BY and GET do), if they all have the same: the pattern has no `*`, or a
/// non-empty `{hash tag}` that ends before the first `*` (an element put
/// in before it could bring a `{` of its own).
pub fn pattern_slot(pattern: &[u8]) -> Option<u16> {
    let Some(star) = pattern.iter().position(|&b| b == b'*') else {
        return Some(slot(pattern));
    };
    let open = pattern.iter().position(|&b| b == b'{')?;
    let len = pattern[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0 && open + 1 + len < star).then(|| slot(pattern))
}

/// The part of `key` that is hashed: what is between the first `{` and the
/// next `}` if that is not empty, otherwise the whole key (Redis's rule).
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0. A byte at a
/// time through a table: it runs for every keyed command.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

/// The CRC of each byte value, computed at compile time.
static CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

/// Which shard (by index) owns each slot, and the move in progress.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    owner: Box<[u16]>,
    /// Slots on their way from their owner to another shard (one move at
    /// a time); see [`crate::reshard`].
    moving: Option<Moving>,
}

/// Slots being moved from the shard owning them to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moving {
    pub ranges: Vec<(u16, u16)>,
    pub from: usize,
    pub to: usize,
    /// While Rampart waits for every request routed by the map before
    /// the move to be answered, requests for these slots wait too: none
    /// may reach the source once the move of a key has begun.
    pub paused: bool,
}

impl Moving {
    pub fn contains(&self, slot: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }

    /// How many slots move.
    pub fn count(&self) -> usize {
        self.ranges
            .iter()
            .map(|&(first, last)| usize::from(last - first) + 1)
            .sum()
    }
}

/// Where a slot's keys are, as a request sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// On this shard only.
    Owned(usize),
    /// Moving from `from` to `to`: a key is on `from` until moved, and is
    /// moved before any command touches it, which then runs on `to`.
    Moving { from: usize, to: usize },
    /// At the start of a move: requests wait until it is under way.
    Paused,
}

/// A slot map that does not cover every slot exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotError(pub String);

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shards = self.owner.iter().max().map_or(0, |&m| usize::from(m) + 1);
        let mut map = f.debug_map();
        for shard in 0..shards {
            map.entry(&shard, &self.ranges_of(shard));
        }
        map.finish()
    }
}

impl SlotMap {
    /// Every slot to shard 0.
    pub fn single() -> SlotMap {
        SlotMap {
            owner: vec![0; SLOTS].into_boxed_slice(),
            moving: None,
        }
    }

    /// Builds the map from each shard's name and `slots` setting (see
    /// [`crate::config::slots::owners`]).
    pub fn build<'a>(
        shards: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<SlotMap, SlotError> {
        let owner = crate::config::slots::owners(shards).map_err(|e| SlotError(e.to_string()))?;
        Ok(SlotMap {
            owner: owner.into(),
            moving: None,
        })
    }

    /// The map the configuration's shards' `slots` settings draw.
    pub fn of(config: &crate::config::Config) -> Result<SlotMap, SlotError> {
        SlotMap::build(
            config
                .shards
                .iter()
                .map(|(name, shard)| (name.as_str(), shard.slots.as_deref())),
        )
    }

    /// The index of the shard owning `slot`.
    pub fn owner(&self, slot: u16) -> usize {
        usize::from(self.owner[usize::from(slot) % SLOTS])
    }

    /// The shard that runs commands on `key`: its owner, or where a
    /// moving slot's keys go.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        match self.residence(slot(key)) {
            Residence::Owned(shard) => shard,
            Residence::Moving { to, .. } => to,
            Residence::Paused => self.owner(slot(key)),
        }
    }

    /// Where `slot`'s keys are.
    pub fn residence(&self, slot: u16) -> Residence {
        match &self.moving {
            Some(moving) if moving.contains(slot) => match moving.paused {
                true => Residence::Paused,
                false => Residence::Moving {
                    from: moving.from,
                    to: moving.to,
                },
            },
            _ => Residence::Owned(self.owner(slot)),
        }
    }

    /// The move in progress.
    pub fn moving(&self) -> Option<&Moving> {
        self.moving.as_ref()
    }

    /// This map with `moving` in progress (or none).
    pub fn with_moving(&self, moving: Option<Moving>) -> SlotMap {
        SlotMap {
            owner: self.owner.clone(),
            moving,
        }
    }

    /// This map with every slot waiting: what an instance routes by before
    /// it has read the map shared through etcd (`reshard::shared`).
    pub fn all_paused(&self) -> SlotMap {
        self.with_moving(Some(Moving {
            ranges: vec![(0, 16383)],
            from: 0,
            to: 0,
            paused: true,
        }))
    }

    /// Whether this is [`SlotMap::all_paused`]'s map.
    pub fn is_all_paused(&self) -> bool {
        self.moving
            .as_ref()
            .is_some_and(|m| m.paused && m.from == m.to && m.count() == 16384)
    }

    /// This map with the move in progress done: its slots owned by its
    /// target.
    pub fn with_move_done(&self) -> SlotMap {
        let mut owner = self.owner.clone();
        if let Some(moving) = &self.moving {
            for &(first, last) in &moving.ranges {
                for slot in first..=last {
                    owner[usize::from(slot)] = moving.to as u16;
                }
            }
        }
        SlotMap {
            owner,
            moving: None,
        }
    }

    /// The map with `ranges` owned by `shard`, every other slot as in
    /// `self` (a map restored from what was persisted).
    pub fn with_owner(&self, ranges: &[(u16, u16)], shard: usize) -> SlotMap {
        let mut owner = self.owner.clone();
        for &(first, last) in ranges {
            for slot in first..=last {
                owner[usize::from(slot)] = shard as u16;
            }
        }
        SlotMap {
            owner,
            moving: self.moving.clone(),
        }
    }

    /// How many slots shard `index` owns.
    pub fn count_of(&self, index: usize) -> usize {
        self.owner
            .iter()
            .filter(|&&owner| usize::from(owner) == index)
            .count()
    }

    /// The slot ranges shard `index` owns, in order (for `CLUSTER SLOTS`-like
    /// views and `/v1/topology`).
    pub fn ranges_of(&self, index: usize) -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for (slot, &owner) in self.owner.iter().enumerate() {
            if usize::from(owner) != index {
                continue;
            }
            let slot = slot as u16;
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == slot => *last = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }
}

/// Ranges as the configuration writes them: `0-8191,10000`.
pub fn ranges_text(ranges: &[(u16, u16)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}-{last}"),
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_has_one_slot_only_when_its_tag_comes_before_its_star() {
        assert_eq!(pattern_slot(b"weight_1"), Some(slot(b"weight_1")));
        assert_eq!(pattern_slot(b"{user}:*"), Some(slot(b"{user}:x")));
        assert_eq!(pattern_slot(b"user:*"), None);
        assert_eq!(
            pattern_slot(b"*{user}"),
            None,
            "an element may bring its own {{"
        );
        assert_eq!(pattern_slot(b"{*}:x"), None);
        assert_eq!(pattern_slot(b"{}:*"), None);
    }

    #[test]
    fn a_shard_may_own_no_slots() {
        let map = SlotMap::build([("a", Some("0-16383")), ("b", Some(""))]).unwrap();
        assert_eq!(map.count_of(0), 16384);
        assert_eq!(map.count_of(1), 0);
        assert!(map.ranges_of(1).is_empty());
        assert!(
            SlotMap::build([("a", Some(""))]).is_err(),
            "every slot needs a shard"
        );
    }

    #[test]
    fn a_move_routes_its_slots_to_the_target_and_ends_with_it_owning_them() {
        let map = SlotMap::build([("a", Some("0-16383")), ("b", Some(""))]).unwrap();
        let moving = Moving {
            ranges: vec![(8192, 16383)],
            from: 0,
            to: 1,
            paused: true,
        };
        let paused = map.with_moving(Some(moving.clone()));
        assert_eq!(paused.residence(100), Residence::Owned(0));
        assert_eq!(paused.residence(9000), Residence::Paused);
        // While paused, a key still belongs to the source.
        assert_eq!(paused.shard_of(b"foo"), 0, "foo is in slot 12182");
        let under_way = map.with_moving(Some(Moving {
            paused: false,
            ..moving
        }));
        assert_eq!(
            under_way.residence(9000),
            Residence::Moving { from: 0, to: 1 }
        );
        assert_eq!(under_way.shard_of(b"foo"), 1);
        assert_eq!(under_way.count_of(1), 0, "owned by the source until done");
        let done = under_way.with_move_done();
        assert!(done.moving().is_none());
        assert_eq!(done.ranges_of(1), vec![(8192, 16383)]);
        assert_eq!(done.ranges_of(0), vec![(0, 8191)]);
        assert_eq!(ranges_text(&done.ranges_of(0)), "0-8191");
        assert_eq!(ranges_text(&[(5, 5), (7, 9)]), "5,7-9");
    }

    #[test]
    fn slots_match_redis_cluster() {
        // From Redis's own `CLUSTER KEYSLOT` (and its cluster spec).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn every_slot_owned_exactly_once() {
        let map = SlotMap::build([("a", Some("0-8191")), ("b", Some("8192-16383"))]).unwrap();
        assert_eq!(map.owner(0), 0);
        assert_eq!(map.owner(16383), 1);
        assert_eq!(map.ranges_of(1), vec![(8192, 16383)]);
        let gap = SlotMap::build([("a", Some("0-100")), ("b", Some("200-16383"))]).unwrap_err();
        assert!(
            gap.0.contains("slots 101-199 are owned by no shard"),
            "{gap}"
        );
        let twice = SlotMap::build([("a", Some("0-9000")), ("b", Some("9000-16383"))]).unwrap_err();
        assert!(
            twice.0.contains("slot 9000 is already owned by shard 'a'"),
            "{twice}"
        );
        let unset = SlotMap::build([("a", None), ("b", Some("0-16383"))]).unwrap_err();
        assert!(unset.0.contains("shards.a.slots"), "{unset}");
        let bad = SlotMap::build([("a", Some("0-16384"))]).unwrap_err();
        assert!(bad.0.contains("0 to 16383"), "{bad}");
        assert!(SlotMap::build([("a", None)]).is_ok());
        let split = SlotMap::build([("a", Some("0-5, 10-16383")), ("b", Some("6-9"))]).unwrap();
        assert_eq!(split.ranges_of(0), vec![(0, 5), (10, 16383)]);
    }
}
