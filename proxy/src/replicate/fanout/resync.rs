//! Copying a stale node afresh while writes go on.
//!
//! The keys come from `SCAN` of a node in sync (the source) and of the
//! stale node itself (the target: keys only it holds must go). Each page
//! of keys becomes a snapshot entry in the shard's log: the source reads
//! the keys (`DUMP`, `PEXPIRETIME`) when its stream reaches that entry,
//! and the target writes them (`RESTORE ... REPLACE ABSTTL`, or `DEL`)
//! when its stream reaches the same entry. Both have run exactly the same
//! writes before that point, so each key is copied as of one moment of the
//! log; the target runs every later write itself (it holds its place in
//! the log from the moment the resync began). The resync ends at a marker
//! entry, after which the target is in sync.
//!
//! A key SCAN never lists was neither on the source nor on the target for
//! the whole scan, so any writes that made or removed it during the resync
//! ran on both alike.

use std::sync::Arc;

use super::log::Kind;
use super::Fanout;
use crate::backend::control::{scan_page, Control};
use crate::topology::SyncState;

/// Keys per snapshot entry (and per `SCAN` call).
const PAGE: usize = 256;

/// Why a resync did not finish (it is tried again later).
#[derive(Debug, thiserror::Error)]
enum ResyncError {
    #[error("no node in sync to copy from")]
    NoSource,
    #[error("cannot connect to {0} to scan: {1}")]
    Unreachable(String, std::io::Error),
    #[error("SCAN on {0}: {1}")]
    Scan(String, String),
    /// The node left the resync meanwhile (down again, or resynced anew).
    #[error("the node stopped resyncing")]
    Stopped,
}

pub async fn run(fanout: Arc<Fanout>, target: usize) {
    if let Err(why) = copy(&fanout, target).await {
        tracing::warn!(%why, "resync failed");
        fanout.resync_failed(target, &why.to_string());
    }
}

async fn copy(fanout: &Fanout, target: usize) -> Result<(), ResyncError> {
    let source = fanout.source_for(target).ok_or(ResyncError::NoSource)?;
    let source_addr = &fanout.shard.nodes[source].addr;
    fanout.event(
        "resync-started",
        target,
        format!("copying every key from {source_addr} (SCAN + DUMP/RESTORE)"),
    );
    for side in [source, target] {
        let addr = &fanout.shard.nodes[side].addr;
        let mut control = Control::connect(addr, &fanout.opts)
            .await
            .map_err(|e| ResyncError::Unreachable(addr.clone(), e))?;
        let mut cursor = "0".to_string();
        loop {
            let count = PAGE.to_string();
            let reply = control
                .call(&["SCAN", &cursor, "COUNT", &count], fanout.reply_timeout)
                .await
                .map_err(|e| ResyncError::Scan(addr.clone(), e.to_string()))?;
            let (next, keys) = scan_page(&reply).ok_or_else(|| {
                ResyncError::Scan(addr.clone(), format!("unexpected reply {reply:?}"))
            })?;
            if !keys.is_empty() && !fanout.append_snapshot(source, target, keys).await {
                return Err(ResyncError::Stopped);
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    if fanout.node_state(target) != SyncState::Resyncing {
        return Err(ResyncError::Stopped);
    }
    fanout.append(Kind::Synced { target }).await;
    Ok(())
}
