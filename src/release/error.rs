//! Why a release operation failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The store's directory could not be created.
    #[error("{}: {error}", .dir.display())]
    CreateDir { dir: PathBuf, error: std::io::Error },
    /// The store could not be opened, or its tables created.
    #[error("{}: {error}", .path.display())]
    Open { path: PathBuf, error: rusqlite::Error },
    /// A read or write of the open store.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
    /// A change made against stages that are no longer the live ones: another change (an
    /// automatic rollback) came first, and nothing was written.
    #[error("the stages changed before the change could be recorded (another change came first)")]
    StagesChanged,
    /// The shared store (PostgreSQL, with `[cluster]`) could not be read or written.
    #[error("the shared release store (PostgreSQL): {0}")]
    Shared(String),
}
