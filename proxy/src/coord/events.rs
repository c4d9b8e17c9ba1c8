//! Every instance's latest events, kept in etcd so that any instance can
//! show what every instance did.

use std::time::{Duration, Instant};

use super::etcd::{EtcdError, Op};
use super::Coordination;

/// Events each instance keeps in etcd for the others to show.
const PUBLISHED_EVENTS: usize = 100;

/// How long an instance's published events outlive it.
const EVENTS_KEPT: Duration = Duration::from_secs(3600);

impl Coordination {
    /// Publishes this instance's latest events (at most once a second),
    /// so that any instance can show what every instance did. They are
    /// kept after the instance dies: its last words are the interesting
    /// ones.
    pub(super) async fn publish_events(&self) -> Result<(), EtcdError> {
        let (last, at) = self.view().events_published;
        if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        let recent = self.events.since(last);
        let Some(newest) = recent.last().map(|e| e.seq) else {
            return Ok(());
        };
        let all = self.events.since(0);
        let kept = &all[all.len().saturating_sub(PUBLISHED_EVENTS)..];
        // On a lease of their own, an hour long and replaced every half
        // hour: a dead instance's last words stay that long, and instances
        // that come and go (pods get new names) leave nothing behind.
        let current = self.view().events_lease;
        let lease = match current {
            Some((id, granted)) if granted.elapsed() < EVENTS_KEPT / 2 => id,
            _ => {
                let (id, _) = self.etcd.grant(EVENTS_KEPT.as_secs()).await?;
                self.view().events_lease = Some((id, Instant::now()));
                id
            }
        };
        // One key per life of the process: a restarted instance's events
        // from before the restart stay beside the new ones.
        let put = Op::Put {
            key: format!("{}/~events/{}/{}", self.prefix, self.instance, self.life),
            value: serde_json::to_vec(kept).unwrap_or_default(),
            lease,
        };
        self.etcd.txn(&[], &[put]).await?;
        self.view().events_published = (newest, Some(Instant::now()));
        Ok(())
    }

    /// Every other instance's published events, each with its
    /// `instance`, this instance's from before it restarted, and its own,
    /// oldest first.
    pub async fn all_events(&self) -> Result<Vec<serde_json::Value>, String> {
        let (_, kvs) = self
            .etcd
            .range_prefix(&format!("{}/~events/", self.prefix))
            .await
            .map_err(|e| e.to_string())?;
        let mut all: Vec<serde_json::Value> = Vec::new();
        let prefix = format!("{}/~events/", self.prefix);
        for kv in kvs {
            let name = kv.key.strip_prefix(&prefix).unwrap_or_default();
            let (instance, life) = match name.rsplit_once('/') {
                Some((instance, life)) => (instance.to_string(), life.parse().ok()),
                None => (name.to_string(), None),
            };
            if instance == self.instance && life == Some(self.life) {
                // This life's own come from memory, newest included.
                continue;
            }
            let events: Vec<serde_json::Value> =
                serde_json::from_slice(&kv.value).unwrap_or_default();
            all.extend(events.into_iter().map(|mut e| {
                e["instance"] = serde_json::Value::String(instance.clone());
                e
            }));
        }
        all.extend(self.events.since(0).into_iter().map(|e| {
            let mut e = serde_json::to_value(e).unwrap_or_default();
            e["instance"] = serde_json::Value::String(self.instance.clone());
            e
        }));
        all.sort_by_key(|e| e["at_ms"].as_u64().unwrap_or(0));
        Ok(all)
    }
}
