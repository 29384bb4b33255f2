//! Why the co-signer cannot start, and why its store failed.

use vigil_chain::BackendError;

pub use vigil_tower::Refusal;

/// Why the co-signer cannot start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum CosignerError {
    /// A configuration field cannot work.
    #[error("co-signer config `{field}`: {reason}")]
    Config {
        /// The field, as written in the file.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The master key cannot be opened.
    #[error("key file: {0}")]
    Key(#[from] vigil_keystore::KeystoreError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain backend failed at start.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// I/O (binding the port, creating the data directory).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The store failed: the request is not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// A conditional write found the record changed meanwhile.
    #[error("a record changed under a request: {0}")]
    Conflict(String),
    /// A stored record does not parse.
    #[error("a stored record does not parse: {0}")]
    Corrupt(String),
    /// The store cannot take writes (its writer stopped, or a group's commit failed).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        tracing::error!(error = %e, "store failed");
        match e {
            StoreError::Conflict(what) => Refusal::Conflict(format!("{what} changed meanwhile; try again")),
            _ => Refusal::Unavailable("the co-signer's store is unavailable; nothing was changed".into()),
        }
    }
}
