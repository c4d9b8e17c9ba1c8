//! The slot map every instance routes by, kept in etcd (`<prefix>/slots/map`)
//! when slots move with `[coordination]`, and who must agree to a change
//! of it.
//!
//! The record itself is opaque here (`reshard::shared` reads and writes
//! it); this file carries it, the instances' acknowledgements, and the
//! **members**: every instance that ever routed by the record registers
//! under `<prefix>/members/<instance>`, on no lease, and stays a member
//! until an operator forgets it. A move's pause must be acknowledged by
//! every member, not only the live ones: an instance cut off from etcd
//! (its lease, and with it its published view, gone) may still be routing
//! by the map before, and keys must not leave the source while it does.
//!
//! An instance adopts a record only from a read that shows it registered
//! (`slot_record` is None until then): a mover waiting for
//! acknowledgements reads the members after writing its record, so an
//! instance either registered before that read (and is waited for) or
//! first reads the record after registering (and finds the move).

use super::etcd::{Compare, EtcdError, Op};
use super::Coordination;

/// Why an instance could not be forgotten.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgetError {
    #[error("instance '{0}' is not a member")]
    Unknown(String),
    #[error("instance '{0}' is live (its etcd lease is held): stop it first")]
    Live(String),
    #[error("an instance cannot forget itself")]
    Itself,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl Coordination {
    pub(super) fn slot_map_key(&self) -> String {
        format!("{}/slots/map", self.prefix)
    }

    pub(super) fn member_key(&self, instance: &str) -> String {
        format!("{}/members/{instance}", self.prefix)
    }

    /// The slot map's record as last read (or written here), and its
    /// `mod_revision` (0 with no record): None until this instance has
    /// read etcd as a registered member.
    pub fn slot_record(&self) -> Option<(Option<Vec<u8>>, i64)> {
        let view = self.view();
        if !view.members.contains(&self.instance) {
            return None;
        }
        Some(match &view.slot_record {
            Some((value, revision)) => (Some(value.clone()), *revision),
            None => (None, 0),
        })
    }

    /// Changes when [`Coordination::slot_record`] may answer differently.
    pub fn slot_record_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.slot_changed.subscribe()
    }

    /// Writes the record if it is still at `replaces` (0: none yet);
    /// returns its new revision, or None when it changed meanwhile.
    pub async fn write_slot_record(
        &self,
        value: Vec<u8>,
        replaces: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let key = self.slot_map_key();
        let compare = match replaces {
            0 => Compare::Absent(key.clone()),
            revision => Compare::Modified(key.clone(), revision),
        };
        let put = Op::Put {
            key,
            value: value.clone(),
            lease: 0,
        };
        let (done, revision) = self.etcd.txn(&[compare], &[put]).await?;
        if !done {
            return Ok(None);
        }
        self.view().slot_record = Some((value, revision));
        self.slot_changed.send_modify(|n| *n += 1);
        Ok(Some(revision))
    }

    /// This instance routes by the record at `revision`, and nothing it
    /// routed by an earlier map is still unanswered: published with its
    /// view.
    pub fn acknowledge_slots(&self, revision: i64) {
        let mut view = self.view();
        view.slots_acked = view.slots_acked.max(revision);
    }

    /// The members that have not acknowledged the record at `revision`,
    /// as read after it was written (every member, until such a read).
    pub fn unacknowledged(&self, revision: i64) -> Vec<String> {
        let view = self.view();
        let read_after = view.read_revision >= revision;
        view.members
            .iter()
            .filter(|m| {
                let acked = match m.as_str() == self.instance {
                    true => view.slots_acked,
                    false => view.instances.get(*m).map_or(0, |v| v.slots_acked),
                };
                !read_after || acked < revision
            })
            .cloned()
            .collect()
    }

    /// Whether `instance` holds a live key (its lease is kept alive).
    pub fn is_live(&self, instance: &str) -> bool {
        instance == self.instance || self.view().instances.contains_key(instance)
    }

    /// Registers this instance as a member, once per read that lacks it.
    pub(super) async fn register(&self) -> Result<(), EtcdError> {
        if self.view().members.contains(&self.instance) {
            return Ok(());
        }
        let key = self.member_key(&self.instance);
        let put = Op::Put {
            key: key.clone(),
            value: self.listen.clone().into_bytes(),
            lease: 0,
        };
        // Adopted from the next read, which shows it registered.
        self.etcd.txn(&[Compare::Absent(key)], &[put]).await?;
        Ok(())
    }

    /// Removes a stopped instance from the members, so moves no longer
    /// wait for it. Forgetting one that still runs, cut off from etcd,
    /// would let keys move while it routes by the map before: refused
    /// while its lease is live, and the docs say to stop it first.
    pub async fn forget(&self, instance: &str) -> Result<(), ForgetError> {
        if instance == self.instance {
            return Err(ForgetError::Itself);
        }
        if !self.view().members.contains(instance) {
            return Err(ForgetError::Unknown(instance.to_string()));
        }
        if self.is_live(instance) {
            return Err(ForgetError::Live(instance.to_string()));
        }
        self.etcd
            .txn(&[], &[Op::Delete(self.member_key(instance))])
            .await?;
        self.view().members.remove(instance);
        Ok(())
    }

    /// Takes in the record and the members of a read taken at `revision`;
    /// a record this instance wrote after the read was taken is kept.
    pub(super) fn absorb_slots(
        &self,
        revision: i64,
        record: Option<(Vec<u8>, i64)>,
        members: std::collections::BTreeSet<String>,
    ) {
        let mut view = self.view();
        let written = view.slot_record.as_ref().map_or(0, |(_, r)| *r);
        let read = record.as_ref().map_or(0, |(_, r)| *r);
        let before = (view.members.contains(&self.instance), written);
        if !(written > revision && written > read) {
            view.slot_record = record;
        }
        view.members = members;
        view.read_revision = revision;
        let after = (
            view.members.contains(&self.instance),
            view.slot_record.as_ref().map_or(0, |(_, r)| *r),
        );
        drop(view);
        if before != after {
            self.slot_changed.send_modify(|n| *n += 1);
        }
    }
}
