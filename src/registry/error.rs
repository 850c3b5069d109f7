//! Why a registry operation failed. Every error that concerns a file names it.

use std::path::PathBuf;

use super::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "'{0}' is not a valid model name: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("'{0}' is not a valid version: use semver MAJOR.MINOR.PATCH, e.g. 1.0.0 or 1.0.0-rc.1 (no leading v)")]
    InvalidVersion(String),
    #[error("{name}@{version} is not in the registry at {}", .root.display())]
    NotFound { name: String, version: String, root: PathBuf },
    /// A version directory whose metadata.json names another version (a hand edit).
    #[error("{}: it describes {found}, not {name}@{version}", .path.display())]
    WrongMetadata { path: PathBuf, found: String, name: String, version: String },
    /// Versions are immutable: this one is there already.
    #[error("{name}@{version} is already in the registry ({existing}); versions are immutable, add a new version")]
    Exists { name: String, version: String, existing: Existing },
    #[error("endpoint kind '{0}' is not supported: use openai or ollama")]
    UnsupportedEndpointKind(String),
    #[error("endpoint base URL '{0}' must start with http:// or https://")]
    BadEndpointUrl(String),
    #[error("the endpoint's model name is empty")]
    EmptyEndpointModel,
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A file or directory operation: `action` is what could not be done, e.g. `read`,
    /// `create`, `resolve the path`.
    #[error("{}: cannot {action}: {error}", .path.display())]
    Io { path: PathBuf, action: &'static str, error: std::io::Error },
    #[error("cannot copy {} to {}: {error}", .from.display(), .to.display())]
    Copy { from: PathBuf, to: PathBuf, error: std::io::Error },
    #[error("{}: invalid metadata: {error}", .path.display())]
    BadMetadata { path: PathBuf, error: serde_json::Error },
    #[error("cannot encode the metadata: {0}")]
    EncodeMetadata(serde_json::Error),
}

impl RegistryError {
    pub(super) fn io(path: &std::path::Path, action: &'static str) -> impl FnOnce(std::io::Error) -> RegistryError {
        let path = path.to_owned();
        move |error| RegistryError::Io { path, action, error }
    }
}

/// What the registry holds under a version that an add found already there.
#[derive(Debug)]
pub enum Existing {
    Sha256(String),
    Endpoint { kind: String, base_url: String, model: String },
    NothingRecorded,
    Unreadable(Box<RegistryError>),
}

impl std::fmt::Display for Existing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Existing::Sha256(sha) => write!(f, "sha256 {sha}"),
            Existing::Endpoint { kind, base_url, model } => write!(f, "{kind} endpoint {base_url} model {model}"),
            Existing::NothingRecorded => write!(f, "no sha256 recorded"),
            Existing::Unreadable(e) => write!(f, "its metadata is unreadable: {e}"),
        }
    }
}
