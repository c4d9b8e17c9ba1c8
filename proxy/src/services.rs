//! The background services of a running Rampart, each started by name (as
//! pingora starts its services): one list says what runs besides the
//! clients, every service ends at the shutdown signal it watches, and
//! whatever has not ended by the end of a shutdown is stopped there.
//! Per-node probes and per-shard failover controllers are started by
//! their own modules (nodes come and go); these are the process-wide ones.

use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinHandle;
use tracing::Instrument;

#[derive(Default)]
pub struct Services {
    running: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Services {
    /// Starts `task` as the service `name`; its log lines carry the name.
    pub fn start<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task.instrument(tracing::info_span!("service", name)));
        if let Ok(mut running) = self.running.lock() {
            running.push((name, handle));
        }
    }

    /// The services started that have not ended, by name.
    pub fn running(&self) -> Vec<&'static str> {
        self.running.lock().map_or_else(
            |_| Vec::new(),
            |running| {
                running
                    .iter()
                    .filter(|(_, handle)| !handle.is_finished())
                    .map(|(name, _)| *name)
                    .collect()
            },
        )
    }

    /// Stops every service still running (after the shutdown signal had
    /// its chance).
    pub fn stop_all(&self) {
        if let Ok(mut running) = self.running.lock() {
            for (name, handle) in running.drain(..) {
                if !handle.is_finished() {
                    tracing::debug!(service = name, "stopped at the end of the shutdown");
                    handle.abort();
                }
            }
        }
    }
}
