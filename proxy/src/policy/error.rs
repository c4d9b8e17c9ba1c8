//! Why a policy was not loaded, as a type: the admin API answers 404 for
//! a plugin file that is not there and 422 for one that is no policy, and
//! never decides from the text.

/// Why a policy was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No plugin file by that name.
    #[error("{0}")]
    NotFound(String),
    /// What was named cannot be a policy here: a path where a plugin name
    /// belongs, no `plugins.dir`, an unknown built-in, a file that is not
    /// a WebAssembly component, or too large.
    #[error("{0}")]
    Refused(String),
    /// The component did not compile, link or configure, or failed its
    /// self-check.
    #[error("{0}")]
    Broken(String),
}
