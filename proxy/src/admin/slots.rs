//! The admin listener's connection slots: at most `admin.max_connections`
//! at once, and when every one is taken, the connection idle the longest
//! (it has sent nothing yet, or sits between requests) gives its slot to
//! the newcomer. Connections held open without a word cannot lock out
//! `/healthz`, `/readyz` and `/metrics`: the probes send their request as
//! soon as they connect, so they are never the idlest, while a flood of
//! silent connections only evicts itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub struct Slots {
    free: Arc<Semaphore>,
    /// Admitted connections by age (ids grow).
    held: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
}

struct Entry {
    busy: Arc<AtomicBool>,
    permit: Option<OwnedSemaphorePermit>,
    evict: Option<oneshot::Sender<()>>,
}

/// A connection's slot, given back when dropped.
pub struct Held {
    id: u64,
    slots: Arc<Slots>,
    /// Set while a request is being answered: not evictable then.
    pub busy: Arc<AtomicBool>,
    /// Fires when the slot was given to a newer connection.
    pub evicted: oneshot::Receiver<()>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            free: Arc::new(Semaphore::new(max.max(1))),
            held: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// A slot for a new connection: a free one, or the idlest connection's.
    /// None when every connection is answering a request.
    pub fn admit(self: &Arc<Self>) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let permit = match self.free.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let idlest = held
                    .values_mut()
                    .find(|e| e.permit.is_some() && !e.busy.load(Ordering::Acquire))?;
                if let Some(evict) = idlest.evict.take() {
                    let _ = evict.send(());
                }
                idlest.permit.take()?
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        held.insert(
            id,
            Entry {
                busy: busy.clone(),
                permit: Some(permit),
                evict: Some(evict),
            },
        );
        Some(Held {
            id,
            slots: self.clone(),
            busy,
            evicted,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idlest_gives_way_and_busy_ones_do_not() {
        let slots = Slots::new(2);
        let mut first = slots.admit().expect("free slot");
        let second = slots.admit().expect("free slot");
        second.busy.store(true, Ordering::Release);
        // Full: the first (idle, oldest) gives its slot to the third.
        let third = slots.admit().expect("evicts the idlest");
        assert!(first.evicted.try_recv().is_ok());
        // Second busy, third idle: the third gives way next.
        let _fourth = slots.admit().expect("evicts the third");
        drop(third);
        drop(first);
        // Everyone left is busy or newest-and-idle; all four ids were
        // admitted against two permits.
        assert_eq!(slots.free.available_permits(), 0);
    }
}
