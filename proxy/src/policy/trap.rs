//! Why a plugin call failed, in words an author can act on.
//!
//! wasmtime reports a trap as a kind and a backtrace of numbered
//! functions; fuel exhausted, a memory cap, a panic and an import Rampart
//! does not provide all end a call the same way for the caller. This turns
//! each into a sentence: what happened, in which call, and, where a usual
//! cause is known, what in ordinary Rust leads there.

use super::Limits;

/// What a failed call tells: the trap, the call it ended, the sandbox it
/// ran in, and the last error the plugin logged (a panic hook's message).
pub struct Failure<'a> {
    pub error: &'a wasmtime::Error,
    pub call: &'a str,
    pub limits: &'a Limits,
    /// The fuel the call was given.
    pub fuel: u64,
    pub last_error_log: Option<&'a str>,
}

impl Failure<'_> {
    pub fn explain(&self) -> String {
        let call = self.call;
        if let Some(trap) = self.error.downcast_ref::<wasmtime::Trap>() {
            return match trap {
                wasmtime::Trap::OutOfFuel => format!(
                    "fuel exhausted after {} instructions in {call} (plugins.route_budget_ms for route and update, plugins.call_budget_ms for the rest)",
                    self.fuel
                ),
                wasmtime::Trap::Interrupt => format!(
                    "ran past its wall-clock budget in {call} (plugins.call_budget_ms)"
                ),
                wasmtime::Trap::UnreachableCodeReached => match self.last_error_log {
                    Some(message) if message.starts_with("panicked") => {
                        format!("{message} (in {call})")
                    }
                    _ => format!(
                        "reached `unreachable` in {call}: a Rust panic or abort (rampart-sdk's export macros log a panic's message and place)"
                    ),
                },
                other => format!("trapped in {call}: {other}"),
            };
        }
        let text = format!("{:#}", self.error);
        if text.contains("forcing trap when growing memory") || text.contains("memory limit") {
            return format!(
                "memory limit {} MiB exceeded in {call} (plugins.memory_limit_mb)",
                self.limits.memory_bytes / (1024 * 1024)
            );
        }
        if let Some(import) = unknown_import(&text) {
            return format!(
                "called {import}, which Rampart does not provide (plugins get no WASI){}",
                hint(import)
            );
        }
        format!("failed in {call}: {}", first_line(&text))
    }
}

/// The import a trap names, from wasmtime's "unknown import: `name` ...".
fn unknown_import(text: &str) -> Option<&str> {
    let rest = &text[text.find("unknown import: `")? + "unknown import: `".len()..];
    rest.split('`').next()
}

/// What in ordinary Rust usually makes a plugin call a WASI interface.
fn hint(import: &str) -> &'static str {
    let hints: [(&str, &str); 6] = [
        ("environment", ": Rust's default panic handler reads RUST_BACKTRACE; panics inside rampart-sdk's export macros are reported instead"),
        ("stdout", ": println! or print!; use rampart_sdk's log"),
        ("stderr", ": eprintln!, or the default panic handler; use rampart_sdk's log"),
        ("random", ": std's HashMap seeds itself randomly; use a BTreeMap or a fixed hasher"),
        ("clocks", ": std::time::Instant or SystemTime; use rampart_sdk's now_ms"),
        ("filesystem", ": std::fs; a plugin reads nothing but its configure text"),
    ];
    hints
        .iter()
        .find(|(interface, _)| import.contains(interface))
        .map_or("", |(_, hint)| hint)
}

fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or(text)
        .trim_end_matches(':')
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain(error: wasmtime::Error, last: Option<&str>) -> String {
        Failure {
            error: &error,
            call: "route",
            limits: &Limits::default(),
            fuel: 5_000_000,
            last_error_log: last,
        }
        .explain()
    }

    #[test]
    fn each_failure_in_words() {
        assert!(explain(wasmtime::Trap::OutOfFuel.into(), None)
            .starts_with("fuel exhausted after 5000000 instructions in route"));
        assert_eq!(
            explain(
                wasmtime::Trap::UnreachableCodeReached.into(),
                Some("panicked at src/lib.rs:21:5: index out of bounds")
            ),
            "panicked at src/lib.rs:21:5: index out of bounds (in route)"
        );
        assert!(explain(wasmtime::Trap::UnreachableCodeReached.into(), None)
            .contains("a Rust panic or abort"));
        let import = wasmtime::Error::msg(
            "unknown import: `wasi:cli/stdout@0.2.6#get-stdout` has not been defined",
        );
        let text = explain(import, None);
        assert!(
            text.starts_with("called wasi:cli/stdout@0.2.6#get-stdout")
                && text.contains("println!"),
            "{text}"
        );
        let memory = wasmtime::Error::msg("forcing trap when growing memory to 20971520 bytes");
        assert!(explain(memory, None).starts_with("memory limit 16 MiB exceeded in route"));
    }
}
