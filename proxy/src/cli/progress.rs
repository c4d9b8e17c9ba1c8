//! Progress for operations that take a while (starting nodes, uploading
//! and compiling a plugin, a switchover): one line per step on stderr,
//! so stdout stays clean for scripts.

use std::io::Write;
use std::time::Instant;

pub struct Step {
    started: Instant,
}

impl Step {
    /// Prints `what…` and leaves the line open for the outcome.
    pub fn start(what: &str) -> Step {
        eprint!("{what}… ");
        let _ = std::io::stderr().flush();
        Step {
            started: Instant::now(),
        }
    }

    /// Ends the line with `outcome` and the time taken.
    pub fn done(self, outcome: &str) {
        eprintln!("{outcome} ({})", elapsed(self.started));
    }

    pub fn failed(self) {
        eprintln!("failed ({})", elapsed(self.started));
    }

    /// Ends the line according to `result`, passing it on.
    pub fn finish<T, E>(self, result: Result<T, E>, outcome: &str) -> Result<T, E> {
        match &result {
            Ok(_) => self.done(outcome),
            Err(_) => self.failed(),
        }
        result
    }
}

fn elapsed(since: Instant) -> String {
    let ms = since.elapsed().as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
