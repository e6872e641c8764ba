//! Errors of the catalog crate, with the file (and line, for row problems) they concern.

use std::path::PathBuf;

use thiserror::Error;

use crate::movielens::Diagnostic;

/// Why loading, writing or storing catalog data failed.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// A file could not be opened, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create", "rename to").
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CSV file does not start with the expected header row.
    #[error("{}: expected header `{expected}`, found `{found}`", path.display())]
    Header {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    /// A malformed row, reported as an error in strict mode (lenient mode records it as a
    /// [`Diagnostic`] and goes on).
    #[error("{0}")]
    Malformed(Diagnostic),
    /// Two items share an external id.
    #[error("duplicate item id {id} in the catalog")]
    DuplicateItem { id: u32 },
    /// An embedding store exists but cannot be understood.
    #[error("corrupt embedding store {}: {message}", path.display())]
    CorruptStore { path: PathBuf, message: String },
    /// Embeddings could not be serialized.
    #[error("cannot serialize embeddings for {}: {message}", path.display())]
    Serialize { path: PathBuf, message: String },
}

impl CatalogError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CatalogError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
