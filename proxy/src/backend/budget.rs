//! What replies cost the clients they are for, against Redis-style caps.
//!
//! A reply is charged to its client the moment a link hands it over, not
//! when the client's task gets round to it: a client that does not read
//! leaves its task stuck writing, and what piles up for it must still be
//! seen. The charge follows the bytes (the reply, then the client's
//! output queue) and is released as they are written or dropped.
//!
//! Three caps, as Redis has them: a per-client hard limit, a per-client
//! soft limit that may be exceeded only for a while
//! (`client-output-buffer-limit`), and a total across clients
//! (`maxmemory-clients`, which evicts the biggest client). A client over a
//! cap is evicted: told through [`Account::evicted`], which its task waits
//! on even while stuck writing. The links never wait for a client, so one
//! that does not read never holds up another's replies.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The caps, in bytes (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub hard: usize,
    pub soft: usize,
    pub soft_for: Duration,
    pub total: usize,
    /// Partly received requests across all clients.
    pub partial_requests: usize,
}

impl Caps {
    /// The caps `[limits]` sets.
    pub fn of(limits: &crate::resp::Limits) -> Caps {
        const MIB: usize = 1024 * 1024;
        Caps {
            hard: limits.client_output_hard_mb * MIB,
            soft: limits.client_output_soft_mb * MIB,
            soft_for: Duration::from_secs(limits.client_output_soft_seconds),
            total: limits.clients_output_total_mb * MIB,
            partial_requests: limits.partial_requests_total_mb * MIB,
        }
    }
}

/// Why a client was evicted, for logs and the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Hard,
    Soft,
    Total,
    PartialRequests,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Hard => "output-hard-limit",
            Reason::Soft => "output-soft-limit",
            Reason::Total => "output-total-limit",
            Reason::PartialRequests => "partial-requests-limit",
        }
    }
}

/// Every client's account, and what they hold together.
pub struct Budget {
    /// Replaced whole by a reload (`[limits]`).
    caps: arc_swap::ArcSwap<Caps>,
    total: AtomicUsize,
    accounts: DashMap<u64, Weak<Account>>,
    /// Bytes of requests received in part, across clients.
    partial: AtomicUsize,
    /// Evictions by [`Reason`].
    evicted: [AtomicU64; 4],
}

impl Budget {
    pub fn new(caps: Caps) -> Arc<Budget> {
        Arc::new(Budget {
            caps: arc_swap::ArcSwap::from_pointee(caps),
            total: AtomicUsize::new(0),
            accounts: DashMap::new(),
            partial: AtomicUsize::new(0),
            evicted: Default::default(),
        })
    }

    /// Opens the account of client `id`; closed when dropped.
    pub fn open(self: &Arc<Budget>, id: u64) -> Arc<Account> {
        let account = Arc::new(Account {
            id,
            budget: self.clone(),
            used: AtomicUsize::new(0),
            over_soft_since: Mutex::new(None),
            over_soft: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            partial: AtomicUsize::new(0),
            reason: std::sync::atomic::AtomicU8::new(u8::MAX),
            wake: atomic_waker::AtomicWaker::new(),
        });
        self.accounts.insert(id, Arc::downgrade(&account));
        account
    }

    /// Puts new caps in force (a reload): clients already over the new
    /// hard cap, and the biggest while the total is over its cap, are
    /// evicted now; the soft cap is judged at each client's next reply.
    pub fn set_caps(&self, caps: Caps) {
        self.caps.store(Arc::new(caps));
        if caps.hard > 0 {
            let over: Vec<Arc<Account>> = self
                .accounts
                .iter()
                .filter_map(|entry| entry.value().upgrade())
                .filter(|account| !account.is_evicted() && account.used() > caps.hard)
                .collect();
            for account in over {
                account.evict(Reason::Hard);
            }
        }
        self.enforce_total();
    }

    /// The cap on [`Budget::total`], 0 for none.
    pub fn total_cap(&self) -> usize {
        self.caps.load().total
    }

    /// Bytes of replies held for all clients.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes of partly received requests, across clients.
    pub fn partial(&self) -> usize {
        self.partial.load(Ordering::Relaxed)
    }

    pub fn evictions(&self, reason: Reason) -> u64 {
        self.evicted[reason as usize].load(Ordering::Relaxed)
    }

    /// Past the total cap: evicts the client holding the most, as Redis's
    /// `maxmemory-clients` does (the biggest is the likeliest culprit and
    /// frees the most).
    fn enforce_total(&self) {
        let cap = self.caps.load().total;
        if cap == 0 || self.total() <= cap {
            return;
        }
        let biggest = self
            .accounts
            .iter()
            .filter_map(|entry| entry.value().upgrade())
            .filter(|account| !account.is_evicted())
            .max_by_key(|account| account.used());
        if let Some(account) = biggest {
            account.evict(Reason::Total);
        }
    }
}

/// One client's share.
pub struct Account {
    pub id: u64,
    budget: Arc<Budget>,
    used: AtomicUsize,
    over_soft_since: Mutex<Option<Instant>>,
    /// Set while `over_soft_since` may hold a time.
    over_soft: AtomicBool,
    evicted: AtomicBool,
    /// Bytes of partly received requests the client holds.
    partial: AtomicUsize,
    /// The [`Reason`] once evicted (`u8::MAX` before).
    reason: std::sync::atomic::AtomicU8,
    /// The one task waiting for the eviction: the client's own (its serve
    /// loop and its writer are one task). Cheaper to wait on than a
    /// `Notify`, which the client's loop would register with and
    /// deregister from on every wake.
    wake: atomic_waker::AtomicWaker,
}

impl Account {
    /// Bytes of replies held for this client.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves once the client has been evicted. Cancel-safe.
    pub async fn evicted(&self) {
        super::signal::until(&self.wake, || self.is_evicted()).await
    }

    /// Charges `bytes` to the client and enforces the caps.
    pub fn charge(self: &Arc<Account>, bytes: usize) -> Charge {
        self.add(bytes);
        Charge {
            account: self.clone(),
            bytes,
        }
    }

    fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.budget.total.fetch_add(bytes, Ordering::Relaxed);
        let caps = **self.budget.caps.load();
        if caps.hard > 0 && used > caps.hard {
            self.evict(Reason::Hard);
        } else if caps.soft > 0 && used > caps.soft {
            self.over_soft.store(true, Ordering::Relaxed);
            let mut since = self
                .over_soft_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if since.get_or_insert_with(Instant::now).elapsed() >= caps.soft_for {
                drop(since);
                self.evict(Reason::Soft);
            }
        }
        self.budget.enforce_total();
    }

    /// Records that the client now holds `now` bytes of requests not yet
    /// complete. Evicts it, and answers false, when its growing request
    /// takes the total across clients past the cap. What it holds is given
    /// back when the account closes, however the connection ended.
    pub fn hold_partial(&self, now: usize) -> bool {
        // Only this client's task calls this: no race between the two.
        let before = self.partial.swap(now, Ordering::Relaxed);
        if now == before {
            // The common case (nothing held, nothing held): no shared write.
            return true;
        }
        let partial = &self.budget.partial;
        if now >= before {
            let total = partial.fetch_add(now - before, Ordering::Relaxed) + now - before;
            let cap = self.budget.caps.load().partial_requests;
            if cap > 0 && now > before && total > cap {
                self.evict(Reason::PartialRequests);
                return false;
            }
        } else {
            partial.fetch_sub(before - now, Ordering::Relaxed);
        }
        true
    }

    /// Gives back `bytes` (written to the client, or dropped).
    pub fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.total.fetch_sub(bytes, Ordering::Relaxed);
        // The lock only for a client that went over the soft limit.
        if before.saturating_sub(bytes) <= self.budget.caps.load().soft
            && self.over_soft.swap(false, Ordering::Relaxed)
        {
            *self
                .over_soft_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Why the client was evicted, once it was.
    pub fn eviction(&self) -> Option<Reason> {
        match self.reason.load(Ordering::Acquire) {
            0 => Some(Reason::Hard),
            1 => Some(Reason::Soft),
            2 => Some(Reason::Total),
            3 => Some(Reason::PartialRequests),
            _ => None,
        }
    }

    fn evict(&self, reason: Reason) {
        if self.evicted.swap(true, Ordering::AcqRel) {
            return;
        }
        self.reason.store(reason as u8, Ordering::Release);
        self.budget.evicted[reason as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client = self.id,
            reason = reason.name(),
            buffered_replies = self.used(),
            partial_requests = self.budget.partial(),
            "client evicted: over a memory cap (limits.client_output_*, clients_output_total_mb, partial_requests_total_mb)"
        );
        self.wake.wake();
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.hold_partial(0);
        self.budget.accounts.remove(&self.id);
    }
}

/// Bytes charged to a client, given back when dropped (or taken over by
/// the client's output queue with [`Charge::keep`]).
pub struct Charge {
    account: Arc<Account>,
    bytes: usize,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Charge({} bytes to client {})",
            self.bytes, self.account.id
        )
    }
}

impl Charge {
    /// Charges more, or gives some back, so that `bytes` are charged.
    pub fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.account.add(bytes - self.bytes);
        } else {
            self.account.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    /// Hands the bytes over to whoever holds them now, who releases them
    /// through the account as they go out.
    pub fn keep(mut self) -> usize {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.account.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(hard: usize, soft: usize, total: usize) -> Caps {
        Caps {
            hard,
            soft,
            soft_for: Duration::from_secs(3600),
            total,
            partial_requests: 0,
        }
    }

    #[test]
    fn charges_are_given_back() {
        let budget = Budget::new(caps(100, 0, 0));
        let account = budget.open(1);
        let charge = account.charge(60);
        assert_eq!((account.used(), budget.total()), (60, 60));
        let kept = account.charge(30).keep();
        drop(charge);
        assert_eq!(account.used(), 30);
        account.release(kept);
        assert_eq!((account.used(), budget.total()), (0, 0));
        assert!(!account.is_evicted());
    }

    #[test]
    fn the_hard_limit_evicts_the_client() {
        let budget = Budget::new(caps(100, 0, 0));
        let account = budget.open(1);
        let _a = account.charge(100);
        assert!(!account.is_evicted());
        let _b = account.charge(1);
        assert!(account.is_evicted());
        assert_eq!(budget.evictions(Reason::Hard), 1);
    }

    #[test]
    fn the_soft_limit_allows_a_while() {
        let budget = Budget::new(Caps {
            soft_for: Duration::ZERO,
            ..caps(0, 10, 0)
        });
        let account = budget.open(1);
        let _a = account.charge(11);
        assert!(account.is_evicted());
        let patient = Budget::new(caps(0, 10, 0)).open(2);
        let _b = patient.charge(11);
        assert!(!patient.is_evicted());
    }

    #[test]
    fn lowered_caps_apply_at_once() {
        let budget = Budget::new(caps(100, 0, 0));
        let (big, small) = (budget.open(1), budget.open(2));
        let _a = big.charge(80);
        let _b = small.charge(20);
        budget.set_caps(caps(50, 0, 0));
        assert!(big.is_evicted() && !small.is_evicted());
        budget.set_caps(caps(0, 0, 10));
        assert!(small.is_evicted(), "the biggest left over the total");
        assert_eq!(budget.total_cap(), 10);
    }

    #[test]
    fn the_total_evicts_the_biggest() {
        let budget = Budget::new(caps(0, 0, 100));
        let small = budget.open(1);
        let big = budget.open(2);
        let _a = big.charge(70);
        let _b = small.charge(40);
        assert!(big.is_evicted() && !small.is_evicted());
        assert_eq!(budget.evictions(Reason::Total), 1);
    }

    #[test]
    fn partial_requests_share_a_cap() {
        let budget = Budget::new(Caps {
            partial_requests: 100,
            ..caps(0, 0, 0)
        });
        let a = budget.open(1);
        let b = budget.open(2);
        assert!(a.hold_partial(60));
        assert!(!b.hold_partial(50), "the one that grows past the cap goes");
        assert!(b.is_evicted() && !a.is_evicted());
        drop(b);
        assert!(a.hold_partial(0));
        assert_eq!(budget.partial(), 0);
    }
}
