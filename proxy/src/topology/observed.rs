//! What the probes' reports make of a shard: each node's record, who may
//! serve reads (replicas that follow the primary and provably hold what
//! `max_read_lag_ms` requires; fan-out nodes in sync), who is primary on a
//! follower instance, and where each node stands in the history of writes
//! for consistent reads (see `position.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{position, Health, Node, ReplicaSet, Report, Role, SyncState, NO_PRIMARY};

impl ReplicaSet {
    /// Records a probe's report of `node`, taken at `at`. `answered` is
    /// the node's answered batches when the probe started, when known (the
    /// probe loop's own probes): the primary's report then becomes the
    /// shard's [`position::Mark`].
    pub fn observe(&self, node: &Node, report: &Report, at: Instant, answered: Option<u64>) {
        if self.fanout {
            // Every fan-out node is a primary of its own; what matters is
            // that it answers, and its role is Rampart's choice.
            let mut report = report.clone();
            report.role = node.role();
            report.master = None;
            node.observe(&report);
            return;
        }
        node.observe(report);
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let is_primary = self.primary_node().is_some_and(|p| p.id == node.id);
        if is_primary {
            history.record(at, report.offset);
            if let (Some(answered), Role::Primary) = (answered, report.role) {
                self.positions.set_mark(position::Mark {
                    history: self.history(),
                    started: position::stamp_of(at),
                    answered,
                    offset: report.offset,
                });
            }
        } else if report.role == Role::Replica {
            let primary = self.primary_node();
            let primary_offset = primary.map_or(0, |p| p.offset());
            // A restarted replica that synced from the trusted primary
            // holds what the primary holds again.
            if report.connected
                && primary.is_some_and(|p| {
                    !p.is_stale() && report.master.as_deref() == Some(p.addr.as_str())
                })
                && report.offset >= node.max_offset()
            {
                node.restarted.store(false, Ordering::Release);
            }
            let lag = history.lag(report.offset, Instant::now());
            node.set_lag(
                primary_offset.saturating_sub(report.offset),
                lag.as_millis() as u64,
            );
        }
    }

    /// Re-derives who may serve reads (and, on a follower, who is primary)
    /// after a probe, and wakes held writes if the usable primary changed.
    pub fn refresh(&self) {
        if self.fanout {
            self.refresh_fanout();
            return;
        }
        if self.follow_claims {
            self.primary
                .store(self.claimed_primary(), Ordering::Release);
        }
        let covered = self.covered_offset();
        let mut changed = false;
        for node in &self.nodes {
            let readable = self.follows_primary(node)
                && covered.is_some_and(|covered| node.offset() >= covered);
            changed |= node.set_readable(readable);
        }
        // Wake held writes whenever there is a primary to send them to
        // (cheap: with nobody held, nobody is woken).
        let usable = self.primary().is_some();
        if (usable && self.held.load(Ordering::Acquire) > 0) || changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// A replica answering probes and following this epoch's primary over
    /// a live link: one that may take over (a switchover waits for it to
    /// catch up) and, caught up enough, serve reads.
    pub fn follows_primary(&self, node: &Node) -> bool {
        let primary = self.primary_node().map(|p| p.addr.as_str());
        node.health() == Health::Up
            && node.role() == Role::Replica
            && node.replica_connected.load(Ordering::Acquire) == 1
            && primary.is_some()
            && node.master().as_deref() == primary
    }

    /// The offset a replica needs to serve reads until the next refresh
    /// (one probe interval away) within `max_read_lag_ms`: the primary's
    /// at its first probe after `now + interval - max_read_lag_ms`. While
    /// the primary does not answer no write is sent to it, so its last
    /// answered probe stands.
    fn covered_offset(&self) -> Option<u64> {
        let lag = Duration::from_millis(self.max_read_lag_ms);
        let history = self.history.lock().ok()?;
        // A bound reaching back before this process began: its first probe.
        let covering = match (Instant::now() + self.probe_interval).checked_sub(lag) {
            Some(since) => history.covering(since),
            None => history.first(),
        };
        match covering {
            Some(offset) => Some(offset),
            None if self
                .primary_node()
                .is_some_and(|p| p.health() != Health::Up) =>
            {
                history.last()
            }
            None => None,
        }
    }

    /// The history offsets are in now.
    pub fn history(&self) -> position::History {
        position::History {
            epoch: self.epoch(),
            primary: self.primary_node().map_or(u32::MAX, |p| p.id),
        }
    }

    /// Where `node` stands: its offset (native) or the log entries it has
    /// answered (fan-out).
    pub fn position(&self, node: &Node) -> u64 {
        if self.fanout {
            node.applied.load(Ordering::Acquire)
        } else {
            node.offset()
        }
    }

    /// A position covering everything any node held, and every write
    /// acknowledged, at `since`; `None` until one is known (native: the
    /// primary has not been probed since).
    pub fn position_after(&self, since: position::Stamp) -> Option<u64> {
        if self.fanout {
            return Some(self.positions.log_head());
        }
        let mark = self.positions.mark()?;
        (mark.started > since && mark.history == self.history()).then_some(mark.offset)
    }

    /// A position covering every write acknowledged to anyone so far, if
    /// one is known: native, the last mark while the primary's links have
    /// answered nothing since it was taken.
    pub fn global_floor(&self) -> Option<u64> {
        if self.fanout {
            return Some(self.positions.log_head());
        }
        let mark = self.positions.mark()?;
        let primary = self.primary_node()?;
        let quiet = primary.pool.stats().answered() == mark.answered;
        (quiet && mark.history == self.history()).then_some(mark.offset)
    }

    /// Fan-out: the primary is a node that answers and has every write,
    /// kept while it stays so (a change costs nothing, no data moves, but
    /// needless changes confuse whoever reads the topology); the other
    /// such nodes serve reads while within `max_read_lag_ms` of the log.
    fn refresh_fanout(&self) {
        let fit = |n: &Node| n.health() == Health::Up && n.sync() == SyncState::InSync;
        let current = self.primary.load(Ordering::Acquire);
        let chosen = match self.nodes.get(current) {
            Some(node) if fit(node) => current,
            _ => self.nodes.iter().position(|n| fit(n)).unwrap_or(NO_PRIMARY),
        };
        if chosen != current {
            self.primary.store(chosen, Ordering::Release);
            if chosen != NO_PRIMARY {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        let mut changed = chosen != current;
        for (i, node) in self.nodes.iter().enumerate() {
            node.set_role(if i == chosen {
                Role::Primary
            } else {
                Role::Replica
            });
            // As in native mode: a node too far behind serves no reads.
            let current = node.lag_ms() <= self.max_read_lag_ms;
            changed |= node.set_readable(i != chosen && fit(node) && current);
        }
        let usable = self.primary().is_some();
        if (usable && self.held.load(Ordering::Acquire) > 0) || changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// The node the others agree is primary, from what they report: among
    /// the reachable nodes claiming the role, the one with the highest
    /// offset (several claimants is a split brain someone else left; it is
    /// logged).
    pub fn claimed_primary(&self) -> usize {
        let claimants: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.role() == Role::Primary && n.health() != Health::Down
            })
            .collect();
        if claimants.len() > 1 {
            tracing::warn!(shard = %self.name, claimants = ?claimants.iter().map(|&i| &self.nodes[i].addr).collect::<Vec<_>>(),
                "several nodes claim to be primary; using the one with the highest offset");
        }
        claimants
            .iter()
            .copied()
            .max_by_key(|&i| self.nodes[i].offset())
            .unwrap_or(NO_PRIMARY)
    }
}
