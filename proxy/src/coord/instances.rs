//! The instances' views of one another: what each publishes (the epoch
//! it routes each shard by, the nodes its probes judge down, the offsets
//! they saw), and what the lease holder reads from them: whether a fenced
//! epoch is confirmed, whether the primary is down by enough vantage
//! points, the most a replica was ever seen with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::etcd::{EtcdError, Op};
use super::{now_ms, Coordination, InstanceView, ShardSeen};
use crate::topology::Health;

impl Coordination {
    /// Waits until every other live instance routes `shard` by `epoch` or
    /// a newer one, or `max_view_age_ms` passed (an instance that has not
    /// read etcd for that long holds writes by itself). Returns the
    /// instances that did not confirm.
    ///
    /// The instances waited for are those live when the wait begins: one
    /// whose key expires meanwhile is still waited for, since it may
    /// route by its old view until its own bound. One whose key had
    /// expired already holds writes: its lease ran out by its own count
    /// (from the keep-alive's sending) no later than etcd's.
    ///
    /// And never sooner than `max_view_age_ms` after this instance last
    /// told a peer it could not read etcd either: that peer may be writing
    /// under failsafe on the strength of the answer until then, and its
    /// key may be gone (its lease expired while it was cut off), so it is
    /// not among those waited for.
    pub async fn wait_confirmed(&self, shard: &str, epoch: u64) -> Vec<String> {
        let now = Instant::now();
        let floor = self
            .view()
            .answered_unfresh_at
            .map(|t| t + self.max_view_age)
            .filter(|t| *t > now);
        let deadline = (now + self.max_view_age).max(floor.unwrap_or(now));
        let mut silent: Vec<String> = self
            .view()
            .instances
            .keys()
            .filter(|i| **i != self.instance)
            .cloned()
            .collect();
        loop {
            {
                let view = self.view();
                silent.retain(|i| {
                    view.instances
                        .get(i)
                        .and_then(|v| v.shards.get(shard))
                        .is_none_or(|s| s.epoch < epoch)
                });
            }
            let now = Instant::now();
            if (silent.is_empty() && floor.is_none_or(|f| now >= f)) || now >= deadline {
                return silent;
            }
            tokio::time::sleep(self.poll / 4).await;
        }
    }

    /// Whether enough live instances judge `addr` down: `down_quorum` of
    /// them, or (0) a majority. This instance counts with its own probes.
    pub fn agreed_down(&self, shard: &str, addr: &str) -> (bool, String) {
        let view = self.view();
        let others: Vec<&InstanceView> = view
            .instances
            .values()
            .filter(|i| i.instance != self.instance)
            .collect();
        let live = others.len() as u32 + 1;
        let down = 1 + others
            .iter()
            .filter(|i| {
                i.shards
                    .get(shard)
                    .is_some_and(|s| s.down.iter().any(|d| d == addr))
            })
            .count() as u32;
        let needed = match self.down_quorum {
            0 => live / 2 + 1,
            n => n.min(live),
        };
        (
            down >= needed,
            format!("{down} of {live} live instances judge it down ({needed} needed)"),
        )
    }

    /// The highest offset any live instance's probes saw on `addr`: a
    /// replica with less has lost writes, even if this instance (started
    /// later, say) never saw it hold more.
    pub fn seen_offset(&self, shard: &str, addr: &str) -> u64 {
        self.view()
            .instances
            .values()
            .filter_map(|i| i.shards.get(shard)?.offsets.get(addr).copied())
            .max()
            .unwrap_or(0)
    }

    /// Whether any live instance (this one included) detached `addr` from
    /// a primary that was down while nobody could read etcd.
    pub fn detached_by_anyone(&self, shard: &str, addr: &str) -> bool {
        self.view().instances.values().any(|i| {
            i.shards
                .get(shard)
                .is_some_and(|s| s.detached.iter().any(|d| d == addr))
        })
    }

    /// Per shard: the epoch this instance routes by, and what its probes
    /// see.
    pub(super) fn seen(&self) -> BTreeMap<String, ShardSeen> {
        self.shards()
            .iter()
            .map(|s| {
                let seen = ShardSeen {
                    epoch: s.epoch(),
                    fenced: s.is_failing_over(),
                    down: s
                        .nodes
                        .iter()
                        .filter(|n| n.health() == Health::Down)
                        .map(|n| n.addr.clone())
                        .collect(),
                    detached: s
                        .nodes
                        .iter()
                        .filter(|n| n.is_detached())
                        .map(|n| n.addr.clone())
                        .collect(),
                    offsets: BTreeMap::new(),
                };
                (s.name.clone(), seen)
            })
            .collect()
    }

    /// Publishes this instance's view when it changed, and every second.
    pub(super) async fn publish(&self) -> Result<(), EtcdError> {
        let mine = InstanceView {
            instance: self.instance.clone(),
            listen: self.listen.clone(),
            admin: self.admin.clone(),
            shards: self.seen(),
            published_ms: 0,
            view_age_ms: 0,
            slots_acked: self.view().slots_acked,
        };
        let (lease, due) = {
            let view = self.view();
            let due = match &view.published {
                Some((last, at)) => *last != mine || at.elapsed() >= Duration::from_secs(1),
                None => true,
            };
            (view.lease, due)
        };
        let Some(lease) = lease else {
            return Ok(());
        };
        if !due {
            return Ok(());
        }
        // Offsets move with every write: they go out with the changes
        // and the once-a-second refresh, not as changes of their own.
        let mut stamped = InstanceView {
            published_ms: now_ms(),
            ..mine.clone()
        };
        for shard in &self.shards() {
            if let Some(seen) = stamped.shards.get_mut(&shard.name) {
                seen.offsets = shard
                    .nodes
                    .iter()
                    .map(|n| (n.addr.clone(), n.max_offset()))
                    .collect();
            }
        }
        let value = serde_json::to_vec(&stamped).unwrap_or_default();
        let put = Op::Put {
            key: self.instance_key(&self.instance),
            value,
            lease: lease.id,
        };
        self.etcd.txn(&[], &[put]).await?;
        let mut view = self.view();
        view.instances.insert(self.instance.clone(), stamped);
        view.published = Some((mine, Instant::now()));
        Ok(())
    }
}
