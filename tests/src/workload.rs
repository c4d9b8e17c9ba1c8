//! Writers that keep writing through Rampart while faults are injected,
//! recording each write as acknowledged, failed (the error says it did not
//! run) or unknown (it may have).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Proxy;

#[derive(Default)]
pub struct Outcomes {
    /// Keys whose `SET` was acknowledged.
    pub acked: Vec<String>,
    pub failed: usize,
    pub unknown: usize,
    /// `INCR` of the shared counter (with [`Workload::with_counter`]):
    /// acknowledged, and unknown.
    pub incr_acked: u64,
    pub incr_unknown: u64,
}

/// The keys the writers wrote that are on the node at `addr`, read
/// directly (not through Rampart).
pub fn keys_at(addr: &str) -> std::collections::HashSet<String> {
    let mut conn = redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .expect("connect to the node");
    redis::cmd("KEYS")
        .arg("n:*")
        .query::<Vec<String>>(&mut conn)
        .expect("KEYS")
        .into_iter()
        .collect()
}

/// The shared counter [`Workload::with_counter`] increments.
pub const COUNTER: &str = "n:counter";

/// Writers that keep writing unique keys until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How a write ended.
enum Outcome {
    Acked,
    Failed,
    Unknown,
}

fn classify(result: &redis::RedisResult<redis::Value>) -> Outcome {
    match result {
        Ok(_) => Outcome::Acked,
        Err(e) => {
            let text = e.to_string();
            // Only errors that say the command did not run count as
            // failed; anything else may have been applied.
            if text.contains("no reachable primary") || text.contains("unavailable") {
                Outcome::Failed
            } else {
                Outcome::Unknown
            }
        }
    }
}

impl Workload {
    /// `padding` bytes are appended to each value (the key itself).
    pub fn start(proxy: &Proxy, writers: usize, padding: usize) -> Workload {
        Workload::spawn(proxy, writers, padding, false)
    }

    /// Also `INCR`s [`COUNTER`] after every `SET`: a write applied twice on
    /// a node, or missed, shows in its value.
    pub fn with_counter(proxy: &Proxy, writers: usize) -> Workload {
        Workload::spawn(proxy, writers, 0, true)
    }

    fn spawn(proxy: &Proxy, writers: usize, padding: usize, counter: bool) -> Workload {
        Workload::over(&[proxy.url()], writers, padding, counter)
    }

    /// Writers spread over several Rampart instances (`urls`, in turn).
    pub fn over(urls: &[String], writers: usize, padding: usize, counter: bool) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let threads = (0..writers)
            .map(|w| {
                let client = redis::Client::open(urls[w % urls.len()].as_str()).expect("client");
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let mut conn = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => {
                                match client.get_connection_with_timeout(Duration::from_secs(2)) {
                                    Ok(c) => conn.insert(c),
                                    Err(_) => {
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                }
                            }
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        let key = format!("n:{w}:{i}");
                        i += 1;
                        let value = format!("{key}{}", "x".repeat(padding));
                        let set = redis::cmd("SET").arg(&key).arg(value).query(c);
                        let incr = counter.then(|| redis::cmd("INCR").arg(COUNTER).query(c));
                        let mut o = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                        match classify(&set) {
                            Outcome::Acked => o.acked.push(key),
                            Outcome::Failed => o.failed += 1,
                            Outcome::Unknown => o.unknown += 1,
                        }
                        if let Some(incr) = &incr {
                            match classify(incr) {
                                Outcome::Acked => o.incr_acked += 1,
                                Outcome::Failed => {}
                                Outcome::Unknown => o.incr_unknown += 1,
                            }
                        }
                        let broken = [Some(&set), incr.as_ref()].into_iter().flatten().any(|r| {
                            r.as_ref()
                                .is_err_and(|e| e.is_io_error() || e.is_connection_dropped())
                        });
                        if broken {
                            conn = None;
                        }
                    }
                })
            })
            .collect();
        Workload {
            stop,
            outcomes,
            threads,
        }
    }

    pub fn finish(self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.outcomes)
            .ok()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_default()
    }
}

/// A client that keeps doing SET/GET and counts failures, until stopped.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bystander {
    pub fn start(proxy: &Proxy) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let client = proxy.client();
        // A key of its own: bystanders side by side must not read each
        // other's values.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let key = format!("bystander:{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let set: redis::RedisResult<()> = redis::Commands::set(&mut c, &key, i);
                let get: redis::RedisResult<u64> = redis::Commands::get(&mut c, &key);
                match (set, get) {
                    (Ok(()), Ok(v)) if v == i => o.fetch_add(1, Ordering::Relaxed),
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Bystander {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops and returns (ok, failed).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
