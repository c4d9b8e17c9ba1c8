//! What one connection has seen of a shard, and which replicas may serve
//! its next read without showing it less (`read_consistency`).
//!
//! A [`ReadToken`] keeps a *floor*: a position (see `topology::position`)
//! covering everything the client has seen. A replica whose position is at
//! least the floor holds all of it. What the client saw most recently is
//! not covered yet: its bound is only known once a probe of the primary
//! starts after the reply came (the primary's offset then covers whatever
//! any node showed before). Until then the client may read from the one
//! replica that showed it (its *home*: a replica never goes back in time)
//! or from the primary (which holds everything).
//!
//! So a client reading from one replica stays on it; a client that writes,
//! or is served by the primary, reads from the primary until it has had no
//! reply outstanding at a moment the primary was probed and some replica
//! was later seen to have caught up. Nothing here waits or asks a node.

use crate::config::ReadConsistency;
use crate::topology::position::{stamp, History, Stamp};
use crate::topology::{Node, ReplicaSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Pending {
    /// The floor covers everything the client has seen, home aside.
    #[default]
    Settled,
    /// The client has seen (or will, once it is answered) something at
    /// item `n` of its reply queue, beyond the floor.
    Upto(u64),
    /// Everything the client has seen was in place at this moment.
    Since(Stamp),
}

/// The replica a client has been reading from since the floor was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Home {
    id: u32,
    /// Its position when last chosen: lower later means it lost data
    /// (restarted, resynced) and its reads could go back in time.
    from: u64,
}

/// One connection's standing with one shard (`Default`: one that has seen
/// nothing).
#[derive(Debug, Clone, Default)]
pub struct ReadToken {
    history: History,
    floor: u64,
    pending: Pending,
    home: Option<Home>,
}

/// Where the client's reply queue stands: items complete, and the last
/// time all of them were, with how many there were then.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub completed: u64,
    pub caught_up: (u64, Stamp),
}

impl ReadToken {
    pub fn new(shard: &ReplicaSet) -> ReadToken {
        ReadToken {
            history: shard.history(),
            floor: 0,
            pending: Pending::Settled,
            home: None,
        }
    }

    /// Brings the token up to date before a read is placed: a reply that
    /// came starts the wait for a probe, a probe that came sets the floor.
    pub fn settle(&mut self, shard: &ReplicaSet, progress: Progress) {
        let history = shard.history();
        if history != self.history {
            // Another primary: positions in the old history mean nothing
            // in the new one. Start over from the new primary as it is now.
            self.history = history;
            self.floor = 0;
            self.home = None;
            if !matches!(self.pending, Pending::Upto(_)) {
                self.pending = Pending::Since(stamp());
            }
        }
        if let Pending::Upto(n) = self.pending {
            let (all, at) = progress.caught_up;
            if all >= n {
                self.pending = Pending::Since(at);
            } else if progress.completed >= n {
                self.pending = Pending::Since(stamp());
            }
        }
        if let Pending::Since(since) = self.pending {
            if let Some(position) = shard.position_after(since) {
                self.floor = self.floor.max(position);
                self.pending = Pending::Settled;
            }
        }
    }

    /// What decides, for one read, which replicas may serve it.
    pub fn check<'a>(&'a self, shard: &'a ReplicaSet, consistency: ReadConsistency) -> Check<'a> {
        let global = match consistency {
            ReadConsistency::Global => Some(shard.global_floor()),
            _ => None,
        };
        Check {
            token: self,
            shard,
            consistency,
            global,
        }
    }

    /// The client's next reply, item `position` of its queue, comes from
    /// `replica`, or (`None`) from the primary or anything else that may
    /// show it more than any replica holds.
    pub fn sent(&mut self, shard: &ReplicaSet, replica: Option<&Node>, position: u64) {
        self.pending = match self.pending {
            Pending::Upto(n) => Pending::Upto(n.max(position)),
            _ => Pending::Upto(position),
        };
        self.home = replica.map(|node| Home {
            id: node.id,
            from: shard.position(node),
        });
    }

    /// The home replica, if it may serve the read.
    pub fn home<'s>(
        &self,
        shard: &'s ReplicaSet,
        check: &Check,
    ) -> Option<&'s std::sync::Arc<Node>> {
        let home = self.home?;
        shard
            .nodes
            .iter()
            .find(|node| node.id == home.id)
            .filter(|node| check.allows(node))
    }
}

/// Whether a replica may serve one read.
pub struct Check<'a> {
    token: &'a ReadToken,
    shard: &'a ReplicaSet,
    consistency: ReadConsistency,
    /// Global: the floor every write acknowledged so far is under, if known
    /// (`Some(None)`: not known, no replica may serve).
    global: Option<Option<u64>>,
}

impl Check<'_> {
    pub fn allows(&self, node: &Node) -> bool {
        if !node.serves_reads() {
            return false;
        }
        if self.consistency == ReadConsistency::Eventual {
            return true;
        }
        let token = self.token;
        let position = self.shard.position(node);
        let home = token
            .home
            .is_some_and(|h| h.id == node.id && position >= h.from);
        let floor = token.pending == Pending::Settled && position >= token.floor;
        let global = match self.global {
            None => true,
            Some(known) => known.is_some_and(|g| position >= g),
        };
        (home || floor) && global
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::backend::NodePool;
    use crate::config::ReadFrom;
    use crate::topology::{Health, Report, Role};

    /// A primary (id 1) and two replicas (2, 3), none connected to.
    fn shard(consistency: ReadConsistency) -> ReplicaSet {
        let changes = Arc::new(AtomicU64::new(0));
        let nodes = (1..=3)
            .map(|id| {
                let addr = format!("127.0.0.1:{id}");
                let pool = NodePool::unconnected(addr.clone());
                Arc::new(Node::new(id, addr, pool, changes.clone()))
            })
            .collect();
        let shard = ReplicaSet::new("s".into(), nodes, ReadFrom::Replicas, false, 10_000)
            .with_reads(consistency, Duration::from_millis(100));
        shard.set_primary(&shard.nodes[0], 1);
        for node in &shard.nodes {
            node.set_health(Health::Up);
        }
        shard
    }

    /// A probe of node `index` (0: the primary) finding `offset`, started
    /// now, with the primary's answered count as it is.
    fn probe(shard: &ReplicaSet, index: usize, offset: u64) {
        let primary = index == 0;
        let report = Report {
            role: if primary {
                Role::Primary
            } else {
                Role::Replica
            },
            offset,
            connected: true,
            master: (!primary).then(|| "127.0.0.1:1".to_string()),
            priority: 100,
            replicas: 2,
            replid: String::new(),
            replid2: String::new(),
            backlog: 0,
        };
        let answered = shard.nodes[0].pool.stats().answered();
        shard.observe(&shard.nodes[index], &report, Instant::now(), Some(answered));
        shard.refresh();
    }

    /// Every node probed at `offset`, and a client that has seen nothing.
    fn all_at(shard: &ReplicaSet, offset: u64) -> ReadToken {
        for index in 0..3 {
            probe(shard, index, offset);
        }
        let mut token = ReadToken::new(shard);
        token.settle(shard, idle(0, 0));
        token
    }

    fn allowed(token: &ReadToken, shard: &ReplicaSet) -> Vec<u32> {
        let check = token.check(shard, shard.positions.consistency());
        shard
            .nodes
            .iter()
            .filter(|n| check.allows(n))
            .map(|n| n.id)
            .collect()
    }

    fn idle(at: Stamp, items: u64) -> Progress {
        Progress {
            completed: items,
            caught_up: (items, at),
        }
    }

    #[test]
    fn a_write_keeps_reads_off_replicas_until_one_is_seen_to_have_it() {
        let shard = shard(ReadConsistency::Session);
        let mut token = all_at(&shard, 100);
        assert_eq!(
            allowed(&token, &shard),
            [2, 3],
            "a new client reads anywhere"
        );
        // A write (item 1), not answered yet: no replica.
        token.sent(&shard, None, 1);
        token.settle(
            &shard,
            Progress {
                completed: 0,
                caught_up: (0, 0),
            },
        );
        assert_eq!(allowed(&token, &shard), Vec::<u32>::new());
        // Answered, but the primary was last probed before that.
        let answered_at = stamp();
        token.settle(&shard, idle(answered_at, 1));
        assert_eq!(allowed(&token, &shard), Vec::<u32>::new());
        // A probe after: the write is under offset 150; replica 2 is seen
        // there, replica 3 not yet.
        std::thread::sleep(Duration::from_millis(1));
        probe(&shard, 0, 150);
        probe(&shard, 1, 150);
        token.settle(&shard, idle(answered_at, 1));
        assert_eq!(allowed(&token, &shard), [2]);
        probe(&shard, 2, 160);
        assert_eq!(allowed(&token, &shard), [2, 3]);
    }

    #[test]
    fn a_replica_read_keeps_the_client_on_it_until_the_others_are_proven_ahead() {
        let shard = shard(ReadConsistency::Session);
        let mut token = all_at(&shard, 100);
        token.sent(&shard, Some(&shard.nodes[1]), 1);
        token.settle(&shard, idle(0, 0));
        assert_eq!(allowed(&token, &shard), [2], "home only");
        // Its home restarting with less data ends it.
        probe(&shard, 1, 10);
        assert_eq!(allowed(&token, &shard), Vec::<u32>::new());
        probe(&shard, 1, 100);
        let read_at = stamp();
        std::thread::sleep(Duration::from_millis(1));
        probe(&shard, 0, 120);
        probe(&shard, 2, 110);
        token.settle(&shard, idle(read_at, 1));
        assert_eq!(
            allowed(&token, &shard),
            [2],
            "replica 3 is below the new floor"
        );
        probe(&shard, 2, 120);
        assert_eq!(allowed(&token, &shard), [2, 3]);
    }

    #[test]
    fn another_primary_starts_the_floor_over() {
        let shard = shard(ReadConsistency::Session);
        let mut token = all_at(&shard, 100);
        assert_eq!(allowed(&token, &shard), [2, 3]);
        shard.set_primary(&shard.nodes[1], 2);
        token.settle(&shard, idle(0, 0));
        assert_eq!(allowed(&token, &shard), Vec::<u32>::new());
    }

    #[test]
    fn global_reads_wait_for_a_probe_with_nothing_answered_since() {
        let shard = shard(ReadConsistency::Global);
        all_at(&shard, 100);
        probe(&shard, 0, 120);
        probe(&shard, 1, 120);
        let mut token = ReadToken::new(&shard);
        token.settle(&shard, idle(0, 0));
        assert_eq!(
            allowed(&token, &shard),
            [2],
            "replica 3 lacks the primary's offset"
        );
        let eventual = ReadToken::new(&shard);
        shard.positions.set_consistency(ReadConsistency::Eventual);
        assert_eq!(allowed(&eventual, &shard), [2, 3]);
    }
}
