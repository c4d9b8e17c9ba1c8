//! The failover lease: one etcd lease per instance kept alive, the shard
//! lease keys taken on it, and the records written under them. Every
//! record is written by a transaction that compares the lease key (this
//! very lease) and the record's revision, so a holder that lost its lease
//! without knowing it cannot write a decision. A process that stood still
//! (TILT) gives its shard leases back.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::etcd::{Compare, EtcdError, Op};
use super::{Coordination, Holder, Lease};
use crate::failover::state::ShardState;

/// Why a record (a shard's, or a policy slot's) was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SaveError {
    /// This instance does not hold the shard's failover lease.
    #[error("this instance does not hold shard '{0}''s failover lease")]
    NotHeld(String),
    /// It holds the lease but may not act on it: about to expire, or the
    /// instance is in TILT.
    #[error("the failover lease is about to expire or the instance is in TILT")]
    Expiring,
    /// Another instance took the lease or wrote the record meanwhile:
    /// this one steps back.
    #[error("the failover lease or the shard record changed under this instance; it steps back")]
    Superseded,
    /// etcd could not be asked.
    #[error(transparent)]
    Etcd(EtcdError),
    #[error("cannot encode the record: {0}")]
    Encode(String),
}

impl Coordination {
    /// Whether this instance may act on `shard` now: it holds the lease,
    /// the lease is valid for at least a third of its TTL more (counted
    /// from the keep-alive's sending), and it is not in TILT.
    pub fn holds(&self, shard: &str) -> bool {
        let view = self.view();
        let now = Instant::now();
        view.held.contains_key(shard)
            && view.tilt_until.is_none_or(|t| now >= t)
            && view
                .lease
                .is_some_and(|l| l.valid_until > now + self.ttl / 3)
    }

    /// Who holds `shard`'s lease, as last read.
    pub fn holder(&self, shard: &str) -> Option<String> {
        self.view().holders.get(shard).map(|h| h.instance.clone())
    }

    /// The shard's record as last read (or written by this instance).
    pub fn record(&self, shard: &str) -> Option<ShardState> {
        self.view().records.get(shard).map(|(r, _)| r.clone())
    }

    /// Writes the shard's record, on condition that this instance still
    /// holds the lease it acquired and the record is the one it last saw.
    pub async fn save(&self, shard: &str, record: &ShardState) -> Result<(), SaveError> {
        let (created, seen) = {
            let view = self.view();
            let Some(&created) = view.held.get(shard) else {
                return Err(SaveError::NotHeld(shard.to_string()));
            };
            (created, view.records.get(shard).map_or(0, |(_, rev)| *rev))
        };
        if !self.holds(shard) {
            return Err(SaveError::Expiring);
        }
        let lease_key = self.lease_key(shard);
        let record_key = self.record_key(shard);
        let value = serde_json::to_vec(record).map_err(|e| SaveError::Encode(e.to_string()))?;
        let compare = [
            Compare::Value(lease_key.clone(), self.instance.as_bytes().to_vec()),
            Compare::Created(lease_key, created),
            Compare::Modified(record_key.clone(), seen),
        ];
        let put = Op::Put {
            key: record_key,
            value,
            lease: 0,
        };
        match self.etcd.txn(&compare, &[put]).await {
            Ok((true, revision)) => {
                self.view()
                    .records
                    .insert(shard.to_string(), (record.clone(), revision));
                Ok(())
            }
            Ok((false, _)) => {
                // Someone else holds the lease now, or wrote the record:
                // this instance no longer decides for the shard.
                self.view().held.remove(shard);
                Err(SaveError::Superseded)
            }
            Err(e) => Err(SaveError::Etcd(e)),
        }
    }

    /// Renews the lease every third of its TTL. A lease this instance
    /// counts as run out is still renewed if etcd has kept it (etcd
    /// extends leases across its own leader changes): the keys on it are
    /// still this instance's. Only a lease etcd no longer knows is
    /// replaced, and the shards held on it are lost with it.
    pub(super) async fn keep_lease(&self) -> Result<(), EtcdError> {
        let now = Instant::now();
        let lease = self.view().lease;
        if let Some(lease) = lease {
            if now < lease.renew_at {
                return Ok(());
            }
            let ttl = self.etcd.keep_alive(lease.id).await?;
            let mut view = self.view();
            if ttl > 0 {
                view.lease = Some(Lease {
                    id: lease.id,
                    valid_until: now + Duration::from_secs(ttl).min(self.ttl),
                    renew_at: now + self.ttl / 3,
                });
                return Ok(());
            }
            view.lease = None;
            view.held.clear();
        }
        let (id, ttl) = self.etcd.grant(self.ttl.as_secs().max(1)).await?;
        let mut view = self.view();
        view.held.clear();
        view.published = None;
        view.lease = Some(Lease {
            id,
            valid_until: now + Duration::from_secs(ttl).min(self.ttl),
            renew_at: now + self.ttl / 3,
        });
        Ok(())
    }

    /// Takes the lease of every shard nobody holds (Patroni's rule: a
    /// transaction on the key not existing).
    pub(super) async fn campaign(&self) -> Result<(), EtcdError> {
        let (lease, free): (Option<Lease>, Vec<String>) = {
            let view = self.view();
            (
                view.lease,
                self.shards()
                    .iter()
                    .filter(|s| !view.holders.contains_key(&s.name))
                    .map(|s| s.name.clone())
                    .collect(),
            )
        };
        let Some(lease) = lease else {
            return Ok(());
        };
        for shard in free {
            let key = self.lease_key(&shard);
            let put = Op::Put {
                key: key.clone(),
                value: self.instance.as_bytes().to_vec(),
                lease: lease.id,
            };
            let (won, revision) = self.etcd.txn(&[Compare::Absent(key)], &[put]).await?;
            if won {
                {
                    let mut view = self.view();
                    view.held.insert(shard.clone(), revision);
                    view.holders.insert(
                        shard.clone(),
                        Holder {
                            instance: self.instance.clone(),
                            create_revision: revision,
                            lease: lease.id,
                        },
                    );
                }
                self.events.record(
                    &shard,
                    "lease-acquired",
                    None,
                    0,
                    format!("{} holds the shard's failover lease", self.instance),
                );
            }
        }
        Ok(())
    }
    /// TILT: the process was paused or starved (see [`watch_pauses`]);
    /// whatever it believed about its leases may be stale. It gives its
    /// shards' leases back (so another instance takes over at once) and
    /// decides nothing for one TTL. Its own lease stays: it still serves
    /// clients and confirms fences.
    pub(super) async fn tilt(&self, gap: Duration) {
        let held: Vec<(String, i64)> = {
            let mut view = self.view();
            view.tilt_until = Some(Instant::now() + self.ttl);
            view.held.drain().collect()
        };
        self.events.record(
            "-",
            "tilt",
            None,
            0,
            format!(
                "this instance did not run for {} ms (paused or starved): it gives its failover leases back and decides nothing for {} s",
                gap.as_millis(),
                self.ttl.as_secs()
            ),
        );
        for (shard, created) in held {
            self.give_back(&shard, created).await;
        }
    }

    /// Gives back the leases of shards removed here by a reload, so that an
    /// instance still serving them (not reloaded yet) decides for them.
    pub(super) async fn give_back_retired(&self) {
        let serving: Vec<String> = self.shards().iter().map(|s| s.name.clone()).collect();
        let retired: Vec<(String, i64)> = {
            let mut view = self.view();
            let retired: Vec<(String, i64)> = view
                .held
                .iter()
                .filter(|(shard, _)| !serving.contains(shard))
                .map(|(shard, created)| (shard.clone(), *created))
                .collect();
            for (shard, _) in &retired {
                view.held.remove(shard);
            }
            retired
        };
        for (shard, created) in retired {
            self.give_back(&shard, created).await;
        }
    }

    /// Deletes this instance's lease key of `shard` (this very key).
    async fn give_back(&self, shard: &str, created: i64) {
        let key = self.lease_key(shard);
        let mine = [
            Compare::Value(key.clone(), self.instance.as_bytes().to_vec()),
            Compare::Created(key.clone(), created),
        ];
        let _ = self.etcd.txn(&mine, &[Op::Delete(key)]).await;
    }
}

/// Sentinel's TILT check, kept apart from the loop so that a slow etcd
/// (a round waiting on its requests) is not taken for a pause: a timer that
/// wakes `beyond` later than asked means the whole process stood still.
pub(super) async fn watch_pauses(
    every: Duration,
    beyond: Duration,
    paused: tokio::sync::mpsc::Sender<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let asleep = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let gap = asleep.elapsed();
        if gap > beyond {
            let _ = paused.try_send(gap);
        }
    }
}
