//! What the admin views show of any policy, whichever decision it makes
//! (route, quorum, detect) and wherever it runs (native or Wasm): its
//! name, kind, call counts and why it last failed.

/// A policy (router, quorum or detector) as the admin views show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyView {
    pub name: String,
    /// `native` (built into the binary) or `wasm`.
    pub kind: &'static str,
    pub calls: u64,
    pub traps: u64,
    pub fallbacks: u64,
    /// Why the last trap or fallback happened, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PolicyView {
    pub fn native(name: &str) -> PolicyView {
        PolicyView {
            name: name.to_string(),
            kind: "native",
            calls: 0,
            traps: 0,
            fallbacks: 0,
            last_error: None,
        }
    }
}
