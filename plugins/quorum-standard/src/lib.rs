//! The standard quorums as a plugin: `none` (asynchronous), `one`,
//! `majority` (of all the shard's nodes, the primary counting as one) or
//! `all` replicas, with a WAIT timeout and a choice on shortfall; and the
//! standard election: never priority 0, the highest offset, then the lowest
//! priority number, then the lowest id.
//!
//! Configuration: `quorum=majority timeout_ms=1000 on_shortfall=fail`
//! (every key optional; those are the defaults, except `quorum=one`).

use std::cell::RefCell;

use rampart_sdk::algorithms;
use rampart_sdk::quorum::{Candidate, Guest, Requirement};

struct Settings {
    quorum: String,
    timeout_ms: u32,
    fail_on_shortfall: bool,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings {
        quorum: "one".into(),
        timeout_ms: 1000,
        fail_on_shortfall: true,
    });
}

struct Standard;

impl Guest for Standard {
    fn configure(config: String) -> Result<(), String> {
        let mut settings = Settings {
            quorum: "one".into(),
            timeout_ms: 1000,
            fail_on_shortfall: true,
        };
        for (key, value) in rampart_sdk::algorithms::pairs(&config)? {
            match key {
                "quorum" => match value {
                    "none" | "one" | "majority" | "all" => settings.quorum = value.into(),
                    _ => {
                        return Err(format!(
                            "quorum: expected none, one, majority or all, got {value:?}"
                        ))
                    }
                },
                "timeout_ms" => {
                    settings.timeout_ms =
                        value.parse().ok().filter(|&t| t > 0).ok_or_else(|| {
                            format!("timeout_ms: expected a number above 0, got {value:?}")
                        })?
                }
                "on_shortfall" => match value {
                    "fail" => settings.fail_on_shortfall = true,
                    "accept" => settings.fail_on_shortfall = false,
                    _ => {
                        return Err(format!(
                            "on_shortfall: expected fail or accept, got {value:?}"
                        ))
                    }
                },
                _ => {
                    return Err(format!(
                        "unknown key {key:?} (expected quorum, timeout_ms, on_shortfall)"
                    ))
                }
            }
        }
        SETTINGS.with(|s| *s.borrow_mut() = settings);
        Ok(())
    }

    fn requirement(replicas: u32) -> Requirement {
        SETTINGS.with(|s| {
            let s = s.borrow();
            let acks = algorithms::quorum_acks(&s.quorum, replicas).unwrap_or(replicas);
            Requirement {
                acks,
                timeout_ms: s.timeout_ms,
                fail_on_shortfall: s.fail_on_shortfall,
            }
        })
    }

    fn elect(candidates: Vec<Candidate>) -> Option<u32> {
        algorithms::elect_by_offset(candidates.iter().map(|c| algorithms::Candidate {
            id: c.id,
            offset: c.offset,
            priority: c.priority,
        }))
    }
}

rampart_sdk::quorum::export_quorum!(Standard);
