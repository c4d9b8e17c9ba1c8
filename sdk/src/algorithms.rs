//! The algorithms behind the built-in policies, as plain functions: the
//! same code runs natively inside Rampart and inside the built-in plugins
//! (`plugins/`), so the two cannot drift apart.

/// A replica that could be promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    /// Replication offset just before the election.
    pub offset: u64,
    /// `replica-priority`: lower is preferred, 0 never promoted.
    pub priority: u32,
}

/// The standard election: never a priority-0 replica; the highest offset
/// (the replica most likely to hold every acknowledged write); then the
/// lowest priority number, as Sentinel prefers; then the lowest id, so the
/// choice is deterministic.
pub fn elect_by_offset(candidates: impl IntoIterator<Item = Candidate>) -> Option<u32> {
    candidates
        .into_iter()
        .filter(|c| c.priority != 0)
        .max_by(|a, b| {
            a.offset
                .cmp(&b.offset)
                .then(b.priority.cmp(&a.priority))
                .then(b.id.cmp(&a.id))
        })
        .map(|c| c.id)
}

/// Replica acknowledgements the standard quorums ask of a shard with
/// `replicas` replicas: `none` 0, `one` 1, `majority` of all the shard's
/// nodes with the primary counting as one, `all` every replica. `None` for
/// an unknown name.
pub fn quorum_acks(quorum: &str, replicas: u32) -> Option<u32> {
    match quorum {
        "none" => Some(0),
        "one" => Some(replicas.min(1)),
        "majority" => Some(replicas.div_ceil(2)),
        "all" => Some(replicas),
        _ => None,
    }
}

/// Phi accrual's suspicion level: how unlikely a silence of `elapsed_ms`
/// is for a node whose answers come every `mean_ms` give or take `std_ms`,
/// as -log10 of its probability (the logistic approximation of the normal
/// distribution that Akka uses).
pub fn phi(elapsed_ms: f64, mean_ms: f64, std_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_ms;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if y > 0.0 {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// Mean and standard deviation of the gaps seen, `first_gap_ms` (and no
/// spread) before there are any, the spread at least `min_std_ms`.
pub fn gap_stats<'a>(
    gaps: impl ExactSizeIterator<Item = &'a f64> + Clone,
    first_gap_ms: f64,
    min_std_ms: f64,
) -> (f64, f64) {
    let n = gaps.len() as f64;
    if n == 0.0 {
        return (first_gap_ms, min_std_ms);
    }
    let mean = gaps.clone().sum::<f64>() / n;
    let variance = gaps.map(|g| (g - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt().max(min_std_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, offset: u64, priority: u32) -> Candidate {
        Candidate {
            id,
            offset,
            priority,
        }
    }

    #[test]
    fn election_prefers_offset_then_priority_and_skips_priority_zero() {
        assert_eq!(elect_by_offset([c(1, 10, 100), c(2, 20, 100)]), Some(2));
        assert_eq!(elect_by_offset([c(1, 20, 100), c(2, 20, 10)]), Some(2));
        assert_eq!(elect_by_offset([c(1, 20, 100), c(2, 30, 0)]), Some(1));
        assert_eq!(elect_by_offset([c(1, 20, 100), c(2, 20, 100)]), Some(1));
        assert_eq!(elect_by_offset([c(2, 30, 0)]), None);
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(quorum_acks("none", 2), Some(0));
        assert_eq!(quorum_acks("one", 2), Some(1));
        assert_eq!(quorum_acks("one", 0), Some(0));
        assert_eq!(quorum_acks("majority", 1), Some(1));
        assert_eq!(quorum_acks("majority", 2), Some(1));
        assert_eq!(quorum_acks("majority", 4), Some(2));
        assert_eq!(quorum_acks("all", 2), Some(2));
        assert_eq!(quorum_acks("most", 2), None);
    }

    #[test]
    fn phi_grows_with_silence() {
        assert!(phi(100.0, 100.0, 50.0) < 1.0);
        assert!(phi(300.0, 100.0, 50.0) < phi(600.0, 100.0, 50.0));
        assert!(phi(1000.0, 100.0, 100.0) > 8.0);
    }
}

/// The `key=value key=value` text every built-in plugin's `configure`
/// takes, split into pairs (an empty text is no pairs).
pub fn pairs(config: &str) -> Result<Vec<(&str, &str)>, String> {
    config
        .split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .ok_or_else(|| format!("expected key=value, got {pair:?}"))
        })
        .collect()
}

/// SplitMix64's finaliser: spreads any 64-bit number over all 64 bits.
/// Plugins have no randomness (no WASI); mixing a counter with a client
/// id gives choices that look random and cost nothing.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Consistent hashing: every node owns `points` positions on a ring of
/// 64-bit numbers, and a key belongs to the node at the first position at
/// or after the key's hash. A node that leaves gives up only its own keys
/// (spread over the others); every other key stays where it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashRing {
    positions: Vec<(u64, u32)>,
}

impl HashRing {
    pub fn new(nodes: impl IntoIterator<Item = u32>, points: u32) -> HashRing {
        let mut positions: Vec<(u64, u32)> = nodes
            .into_iter()
            .flat_map(|node| {
                (0..points).map(move |i| (mix64((u64::from(node) << 32) | u64::from(i)), node))
            })
            .collect();
        positions.sort_unstable();
        HashRing { positions }
    }

    /// The ring as a table of `slots` owners, for a `by-key` plan: slot
    /// `s` belongs to the owner of `mix64(s)`, so a node leaving changes
    /// only its own slots. Empty when the ring is.
    pub fn table(&self, slots: u32) -> Vec<u32> {
        (0..u64::from(slots))
            .filter_map(|slot| self.pick(mix64(slot)))
            .collect()
    }

    /// The node owning `hash`; none when the ring is empty.
    pub fn pick(&self, hash: u64) -> Option<u32> {
        let at = self.positions.partition_point(|&(p, _)| p < hash);
        self.positions
            .get(at)
            .or_else(|| self.positions.first())
            .map(|&(_, node)| node)
    }
}

/// The power of two choices: two candidates drawn by `seed` (distinct when
/// there are two or more), the cheaper one wins. Nearly as good as always
/// taking the cheapest, without sending everyone to the same node at once.
pub fn two_choices<T: Copy>(candidates: &[T], seed: u64, cost: impl Fn(T) -> u64) -> Option<T> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = (seed % n as u64) as usize;
            let b = (a + 1 + (mix64(seed) % (n as u64 - 1)) as usize) % n;
            let (x, y) = (candidates[a], candidates[b]);
            Some(if cost(y) < cost(x) { y } else { x })
        }
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    #[test]
    fn a_node_leaving_moves_only_its_own_keys() {
        let before = HashRing::new([1, 2, 3], 100);
        let after = HashRing::new([1, 3], 100);
        let mut owned = [0usize; 4];
        for key in 0..10_000u64 {
            let hash = mix64(key);
            let was = before.pick(hash).unwrap();
            owned[was as usize] += 1;
            let now = after.pick(hash).unwrap();
            if was != 2 {
                assert_eq!(was, now, "key {key} moved from {was} to {now}");
            }
        }
        for (node, keys) in owned.iter().enumerate().skip(1) {
            assert!(*keys > 2_000, "node {node} owns {keys} keys");
        }
        assert_eq!(HashRing::new([], 100).pick(7), None);
        // As a table, the same: only the leaving node's slots change hands.
        let (t1, t2) = (before.table(1024), after.table(1024));
        assert_eq!(t1.len(), 1024);
        for (a, b) in t1.iter().zip(&t2) {
            assert!(*a == 2 || a == b);
        }
        assert!(HashRing::new([], 1).table(8).is_empty());
    }

    #[test]
    fn two_choices_takes_the_cheaper_of_two_distinct() {
        let nodes = [(1, 10), (2, 1000)];
        for seed in 0..100 {
            assert_eq!(two_choices(&nodes, seed, |(_, c)| c), Some((1, 10)));
        }
        assert_eq!(two_choices(&[] as &[(u32, u64)], 1, |(_, c)| c), None);
        assert_eq!(pairs("a=1  b=x").unwrap(), [("a", "1"), ("b", "x")]);
        assert!(pairs("nope").is_err());
    }
}
