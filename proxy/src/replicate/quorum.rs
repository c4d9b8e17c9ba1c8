//! The quorum decision: how many replica acknowledgements a write needs,
//! what a shortfall does, and which replica to promote when the primary is
//! lost. One small trait; the built-in algorithms sit below it, and a Wasm
//! quorum plugin is another implementation of the same trait.

use rampart_sdk::algorithms;

use crate::observe::policy_view::PolicyView;

/// What a synchronous write must reach before its client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Replica acknowledgements; 0 = asynchronous.
    pub acks: u32,
    /// How long `WAIT` waits for them.
    pub timeout_ms: u32,
    /// On a shortfall, answer `-NOQUORUM` (true) or the write's own reply.
    pub fail_on_shortfall: bool,
}

/// A replica that could be promoted, as the election sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    /// Replication offset just before the election.
    pub offset: u64,
    /// Redis's `replica-priority`: lower is preferred, 0 never promoted.
    pub priority: u32,
}

pub trait QuorumPolicy: Send + Sync {
    /// The requirement for a shard with this many replicas configured.
    fn requirement(&self, replicas: u32) -> Requirement;

    /// The replica to promote, or `None` when none is fit.
    fn elect(&self, candidates: &[Candidate]) -> Option<u32>;

    fn describe(&self) -> PolicyView;

    /// Drops whatever state the load's self-check left, so the policy
    /// starts in service as new. Stateless policies have nothing to drop.
    fn forget_self_check(&self) {}
}

pub use crate::config::Quorum;

/// A built-in quorum with the default election.
pub struct Builtin {
    pub quorum: Quorum,
    pub timeout_ms: u32,
    pub fail_on_shortfall: bool,
}

impl Builtin {
    /// What a shard's `replication` settings say (`quorum` replaced by
    /// `quorum` when given).
    pub fn configured(
        replication: &crate::config::ReplicationConfig,
        quorum: Option<Quorum>,
    ) -> Builtin {
        Builtin {
            quorum: quorum.unwrap_or(replication.quorum),
            timeout_ms: replication.timeout_ms,
            fail_on_shortfall: replication.on_shortfall == crate::config::Shortfall::Fail,
        }
    }
}

impl QuorumPolicy for Builtin {
    fn requirement(&self, replicas: u32) -> Requirement {
        Requirement {
            acks: self.quorum.acks(replicas),
            timeout_ms: self.timeout_ms,
            fail_on_shortfall: self.fail_on_shortfall,
        }
    }

    fn elect(&self, candidates: &[Candidate]) -> Option<u32> {
        elect_by_offset(candidates)
    }

    fn describe(&self) -> PolicyView {
        PolicyView::native(&format!("quorum-{}", self.quorum.name()))
    }
}

/// The default election (shared with the `quorum-standard` plugin): never
/// priority 0, the highest offset, then the lowest priority number.
pub fn elect_by_offset(candidates: &[Candidate]) -> Option<u32> {
    algorithms::elect_by_offset(candidates.iter().map(|c| algorithms::Candidate {
        id: c.id,
        offset: c.offset,
        priority: c.priority,
    }))
}

/// How many of a shard's replicas must answer before a promotion can be
/// sure to find every acknowledged write: each such write is on at least
/// `acks` of the `replicas`, so any `replicas - acks + 1` of them include
/// one that has it. Asynchronous writes promise nothing, so one replica is
/// enough.
pub fn replicas_needed_to_promote(replicas: u32, acks: u32) -> u32 {
    if acks == 0 {
        return 1;
    }
    replicas.saturating_sub(acks) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_needs_enough_replicas() {
        assert_eq!(replicas_needed_to_promote(2, 1), 2);
        assert_eq!(replicas_needed_to_promote(2, 2), 1);
        assert_eq!(replicas_needed_to_promote(4, 2), 3);
        assert_eq!(replicas_needed_to_promote(2, 0), 1);
    }
}
