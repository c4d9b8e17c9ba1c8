//! Policies shared through etcd: what each router, quorum and detector
//! slot holds (its active generation and, for routers, its shadow) is one
//! record per slot, written by the instance that changed it; every other
//! instance loads the same thing under the same generation number.
//!
//! A record describes the state, not the operation, so an instance that
//! was away (or restarted) converges from the latest record alone. Wasm
//! bytes are stored once under their sha256 (`<prefix>/~blobs/<sha>/<n>`,
//! in chunks below etcd's request limit) and checked against it when read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::etcd::{EtcdError, Op};
use super::Coordination;

/// etcd refuses requests over 1.5 MiB by default.
const CHUNK: usize = 1024 * 1024;

/// Where a generation's policy comes from, as any instance can load it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Shared {
    /// The instance's own configuration file (the same on every instance).
    Configured,
    /// `builtin:<name>` or `native:<name>`.
    Named { label: String },
    /// A Wasm component stored in etcd; `name` is how views show it.
    Blob { name: String, sha256: String },
}

/// One generation as shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub generation: u64,
    pub source: Shared,
    pub config: String,
}

/// A policy slot's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The instance that wrote it.
    pub origin: String,
    pub active: Spec,
    /// Routers only: the generation running in shadow.
    #[serde(default)]
    pub shadow: Option<Spec>,
}

/// `router/<shard>`, `quorum/<shard>` or `detector`.
pub fn scope(kind: &str, shard: Option<&str>) -> String {
    match shard {
        Some(shard) => format!("{kind}/{shard}"),
        None => kind.to_string(),
    }
}

impl Coordination {
    fn policy_key(&self, scope: &str) -> String {
        format!("{}/policies/{scope}", self.prefix)
    }

    fn blob_prefix(&self, sha256: &str) -> String {
        format!("{}/~blobs/{sha256}/", self.prefix)
    }

    /// Stores `bytes` (once per content) and returns their sha256.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, EtcdError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let prefix = self.blob_prefix(&sha256);
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let put = Op::Put {
                key: format!("{prefix}{i:06}"),
                value: chunk.to_vec(),
                lease: 0,
            };
            self.etcd.txn(&[], &[put]).await?;
        }
        Ok(sha256)
    }

    /// The bytes stored under `sha256`, checked against it.
    pub async fn get_blob(&self, sha256: &str) -> Result<Vec<u8>, String> {
        let (_, kvs) = self
            .etcd
            .range_prefix(&self.blob_prefix(sha256))
            .await
            .map_err(|e| e.to_string())?;
        // Keys are zero-padded chunk numbers: etcd returns them in order.
        let bytes: Vec<u8> = kvs.into_iter().flat_map(|kv| kv.value).collect();
        let found = hex(&Sha256::digest(&bytes));
        if found != sha256 {
            return Err(format!(
                "the stored plugin {sha256} is incomplete or corrupt (its bytes hash to {found})"
            ));
        }
        Ok(bytes)
    }

    /// Writes a slot's state for the other instances.
    pub async fn share_policy(
        &self,
        scope: &str,
        record: &PolicyRecord,
    ) -> Result<(), super::SaveError> {
        let put = Op::Put {
            key: self.policy_key(scope),
            value: serde_json::to_vec(record)
                .map_err(|e| super::SaveError::Encode(e.to_string()))?,
            lease: 0,
        };
        let (_, revision) = self
            .etcd
            .txn(&[], &[put])
            .await
            .map_err(super::SaveError::Etcd)?;
        let mut view = self.view();
        view.policies
            .insert(scope.to_string(), (record.clone(), revision));
        view.policies_applied.insert(scope.to_string(), revision);
        Ok(())
    }

    /// The newest generation number any instance used for `scope`: a new
    /// one must be above it, so numbers mean the same everywhere.
    pub fn shared_generation(&self, scope: &str) -> u64 {
        let view = self.view();
        view.policies.get(scope).map_or(0, |(r, _)| {
            r.active
                .generation
                .max(r.shadow.as_ref().map_or(0, |s| s.generation))
        })
    }

    /// Records written by others (or by this instance before a restart)
    /// that this instance has not applied yet.
    pub fn pending_policies(&self) -> Vec<(String, PolicyRecord, i64)> {
        let view = self.view();
        view.policies
            .iter()
            .filter(|(scope, (_, revision))| {
                view.policies_applied
                    .get(*scope)
                    .is_none_or(|applied| applied < revision)
            })
            .map(|(scope, (record, revision))| (scope.clone(), record.clone(), *revision))
            .collect()
    }

    /// `scope`'s record at `revision` is in force here (or was given up
    /// on, with an event saying why).
    pub fn mark_applied(&self, scope: &str, revision: i64) {
        self.view()
            .policies_applied
            .insert(scope.to_string(), revision);
    }

    /// A receiver woken whenever records were read that are not applied.
    pub fn policy_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_changed.subscribe()
    }

    /// How a generation this instance runs can be loaded elsewhere.
    pub fn shared_source(&self, scope: &str, generation: u64) -> Shared {
        self.view()
            .sources
            .get(&(scope.to_string(), generation))
            .cloned()
            .unwrap_or(Shared::Configured)
    }

    /// Remembers how generation `generation` of `scope` was loaded.
    pub fn remember_source(&self, scope: &str, generation: u64, source: Shared) {
        self.view()
            .sources
            .insert((scope.to_string(), generation), source);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
