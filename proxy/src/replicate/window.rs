//! How long this instance may go on acknowledging writes to a shard.
//!
//! Alone, Rampart decides who is primary and the window is always open.
//! With `[coordination]` another instance may name a new primary once this
//! one's view of etcd is older than `max_view_age_ms` (or its lease may have
//! lapsed): past that moment a write sent to the old primary could be
//! acknowledged and then lost. The coordination loop cannot be trusted to
//! notice in time (while etcd is silent one round lasts a request timeout),
//! so the moment itself is stored here, as a deadline, and checked where
//! writes are routed and where a synchronous write is acknowledged, to the
//! clock's precision.
//!
//! Failsafe (every known instance confirmed it cannot read etcd either)
//! opens a second, weaker window: writes may go on, but only to a primary
//! whose data Rampart still trusts (not restarted, offset not gone back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The whole future: the window of a Rampart that decides alone.
const ALWAYS: u64 = u64::MAX;

/// What the window admits now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The view is fresh (or there is no coordination).
    Open,
    /// The view is stale, but failsafe holds: only to a trusted primary.
    Failsafe,
    /// No writes.
    Closed,
}

/// Deadlines as nanoseconds since a process-wide origin, so that the write
/// path reads them without a lock.
pub struct WriteWindow {
    fresh_until: AtomicU64,
    failsafe_until: AtomicU64,
}

impl Default for WriteWindow {
    fn default() -> WriteWindow {
        WriteWindow {
            fresh_until: AtomicU64::new(ALWAYS),
            failsafe_until: AtomicU64::new(0),
        }
    }
}

impl WriteWindow {
    /// Closes the window until the first [`WriteWindow::open_until`]: an
    /// instance with `[coordination]` writes nothing before it read etcd.
    pub fn close(&self) {
        self.fresh_until.store(0, Ordering::Release);
        self.failsafe_until.store(0, Ordering::Release);
    }

    /// The view is fresh until `until`.
    pub fn open_until(&self, until: Instant) {
        self.fresh_until.store(nanos(until), Ordering::Release);
    }

    /// Failsafe admits writes until `until` (or, with `None`, no longer).
    pub fn failsafe_until(&self, until: Option<Instant>) {
        self.failsafe_until
            .store(until.map_or(0, nanos), Ordering::Release);
    }

    pub fn admits(&self) -> Admit {
        let fresh = self.fresh_until.load(Ordering::Acquire);
        if fresh == ALWAYS {
            return Admit::Open;
        }
        let now = nanos(Instant::now());
        if now < fresh {
            Admit::Open
        } else if now < self.failsafe_until.load(Ordering::Acquire) {
            Admit::Failsafe
        } else {
            Admit::Closed
        }
    }
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `at` as nanoseconds since the origin (0 before it; never `ALWAYS`).
fn nanos(at: Instant) -> u64 {
    let n = at.saturating_duration_since(origin()).as_nanos();
    n.min((ALWAYS - 1) as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_failsafe_closed() {
        let window = WriteWindow::default();
        assert_eq!(window.admits(), Admit::Open);
        window.close();
        assert_eq!(window.admits(), Admit::Closed);
        let now = Instant::now();
        window.open_until(now + Duration::from_secs(60));
        assert_eq!(window.admits(), Admit::Open);
        window.open_until(now);
        assert_eq!(window.admits(), Admit::Closed);
        window.failsafe_until(Some(now + Duration::from_secs(60)));
        assert_eq!(window.admits(), Admit::Failsafe);
        window.failsafe_until(None);
        assert_eq!(window.admits(), Admit::Closed);
    }
}
