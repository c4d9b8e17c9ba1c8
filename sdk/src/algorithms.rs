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
