//! Password guessing slowed per source address and in total, not only per
//! connection: an attacker opening a fresh connection for every guess, or
//! hundreds at once, gets its wrong answers one at a time, spaced out.
//!
//! Only wrong answers wait: a client that knows the password is never
//! slowed, whatever others from its address do. The answers from one source
//! are scheduled one after another (as `fail2ban`-style protections do), so
//! parallel connections do not multiply the rate; a connection whose answer
//! would wait longer than [`MAX_WAIT`] is closed unanswered instead, so
//! waiting connections cannot pile up either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong passwords from one source answered without delay.
const FREE_PER_SOURCE: u32 = 3;
/// The spacing of wrong answers to one source past those: doubling from
/// this, at most [`MAX_SPACING`].
const FIRST_SPACING: Duration = Duration::from_millis(100);
const MAX_SPACING: Duration = Duration::from_secs(1);
/// Every source together: wrong answers at most this often past
/// [`FREE_TOTAL`] within a [`FORGET_AFTER`] window.
const TOTAL_SPACING: Duration = Duration::from_millis(10);
const FREE_TOTAL: u32 = 100;
/// A source (or the total) without a wrong password for this long starts
/// afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Longer than this, and the connection is closed without an answer.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Sources tracked at once (a flood of addresses falls back on the total).
const MAX_SOURCES: usize = 65_536;

#[derive(Clone, Copy)]
struct Pace {
    failures: u32,
    /// When the next wrong answer may go out.
    next: Instant,
    last: Instant,
}

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace {
            failures: 0,
            next: now,
            last: now,
        }
    }

    /// Counts a failure at `now`; returns when its answer may go out.
    fn fail(&mut self, now: Instant, free: u32, spacing: impl Fn(u32) -> Duration) -> Instant {
        if now.duration_since(self.last) > FORGET_AFTER {
            *self = Pace::new(now);
        }
        self.failures += 1;
        self.last = now;
        if self.failures <= free {
            return now;
        }
        self.next = self.next.max(now) + spacing(self.failures - free);
        self.next
    }
}

/// What to do with a wrong password's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it at this moment.
    AnswerAt(Instant),
    /// Close the connection unanswered.
    Close,
}

pub struct AuthThrottle {
    sources: Mutex<HashMap<IpAddr, Pace>>,
    total: Mutex<Pace>,
}

impl Default for AuthThrottle {
    fn default() -> AuthThrottle {
        AuthThrottle {
            sources: Mutex::new(HashMap::new()),
            total: Mutex::new(Pace::new(Instant::now())),
        }
    }
}

impl AuthThrottle {
    /// A wrong password from `ip` now.
    pub fn failed(&self, ip: IpAddr) -> Verdict {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) -> Verdict {
        let source = source_of(ip);
        let per_source = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
                sources.retain(|_, pace| now.duration_since(pace.last) <= FORGET_AFTER);
            }
            if sources.len() < MAX_SOURCES || sources.contains_key(&source) {
                let pace = sources.entry(source).or_insert_with(|| Pace::new(now));
                pace.fail(now, FREE_PER_SOURCE, |n| {
                    (FIRST_SPACING * 2u32.saturating_pow(n.saturating_sub(1).min(8)))
                        .min(MAX_SPACING)
                })
            } else {
                now
            }
        };
        let total =
            self.total
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fail(now, FREE_TOTAL, |_| TOTAL_SPACING);
        let at = per_source.max(total);
        if at.duration_since(now) > MAX_WAIT {
            Verdict::Close
        } else {
            Verdict::AnswerAt(at)
        }
    }
}

/// The unit a source is counted by: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_spaced_out_and_others_are_not() {
        let throttle = AuthThrottle::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..FREE_PER_SOURCE {
            assert_eq!(throttle.failed_at(a, now), Verdict::AnswerAt(now));
        }
        // Parallel guesses from the same source are answered one after
        // another, further and further apart.
        let mut last = now;
        for _ in 0..5 {
            match throttle.failed_at(a, now) {
                Verdict::AnswerAt(at) => {
                    assert!(at > last);
                    last = at;
                }
                Verdict::Close => panic!("closed too early"),
            }
        }
        assert!(last.duration_since(now) >= Duration::from_millis(100 + 200 + 400 + 800));
        // Another source is not slowed by the first.
        assert_eq!(throttle.failed_at(b, now), Verdict::AnswerAt(now));
        // Past MAX_WAIT the connection is closed instead of queued.
        let closed = (0..20)
            .map(|_| throttle.failed_at(a, now))
            .filter(|v| *v == Verdict::Close)
            .count();
        assert!(closed > 0);
        // A minute later the source starts afresh.
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(throttle.failed_at(a, later), Verdict::AnswerAt(later));
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let two: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(source_of(one), source_of(two));
    }
}
