//! The tower's errors: why it cannot start, and why its store failed.

use std::path::PathBuf;

use vigil_chain::BackendError;
use vigil_policy::bitcoin::OutPoint;

/// Why the tower cannot start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum TowerError {
    /// The configuration file cannot be read.
    #[error("tower config {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML of the expected shape.
    #[error("tower config: {0}")]
    ConfigSyntax(#[from] toml::de::Error),
    /// A configuration field cannot work.
    #[error("tower config `{field}`: {reason}")]
    Config {
        /// The field, as written in the file (`fee_wallet.stress_sat_per_vb`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A client's pinned policy file cannot be read or does not build.
    #[error("client policy {path}: {source}")]
    ClientPolicy {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ClientPolicyError,
    },
    /// A key file is missing, unreadable by others' standards, or not a key.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain backend failed at start.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// I/O (binding the port, creating the data directory).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A block from the backend does not parse (the tower stops: it cannot decide on it).
    #[error("block {hash} from the backend does not parse: {source}")]
    BadBlock {
        /// The block.
        hash: vigil_policy::bitcoin::BlockHash,
        /// Why.
        source: crate::index::ScanError,
    },
    /// The watch loop died.
    #[error("the watch loop panicked")]
    WatchLoopPanicked,
    /// A request failed in a way that leaves memory unsure (the store failed, a handler
    /// panicked): the tower stopped rather than answer from memory what a restart forgets.
    #[error("stopped while answering a request: {0}")]
    RequestFailed(String),
}

/// Why a client's policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientPolicyError {
    /// It cannot be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It does not build.
    #[error(transparent)]
    Policy(#[from] vigil_policy::PolicyError),
}

/// A store failure (I/O, corruption): the tower stops rather than act on unrecorded decisions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("tower store (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("tower store (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    /// A stored record does not parse.
    #[error("tower store: a stored {what} does not parse: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A stored value is not what it should be.
    #[error("tower store: a stored {what} is invalid: {value:?}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// As stored.
        value: String,
    },
    /// A vault row would lose its transactions (or has none to give back).
    #[error("tower store: vault {0} would be stored, or was read back, without its transactions")]
    Incomplete(OutPoint),
    /// A vault the watcher needs is not in the store.
    #[error("tower store: vault {0} is not in the store")]
    MissingVault(OutPoint),
    /// The store was written by a newer Vigil.
    #[error("tower store: schema version {found} is newer than this tower's {supported}")]
    NewerSchema {
        /// What the store has.
        found: i64,
        /// What this build knows.
        supported: i64,
    },
    /// A PostgreSQL schema name that is not a plain identifier.
    #[error("tower store: schema {0:?}: letters, digits and _ only")]
    SchemaName(String),
}

impl StoreError {
    /// A stored JSON record that does not parse.
    pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Corrupt { what, source }
    }
}

/// Why a request was refused: each names the problem, and nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed or breaks a rule.
    BadRequest(String),
    /// The request's signature is missing or does not verify.
    Unauthorized(String),
    /// The signer may not do this.
    Forbidden(String),
    /// What it names is not here.
    NotFound(String),
    /// It conflicts with what is recorded (a replay, another vault at this outpoint).
    Conflict(String),
    /// The tower cannot check the request now (its chain backend is unreachable): retry.
    Unavailable(String),
    /// The tower failed (logged; the client sees no detail).
    Internal,
}

impl Refusal {
    /// What the client is told.
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m)
            | Refusal::Unauthorized(m)
            | Refusal::Forbidden(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::Unavailable(m) => m,
            Refusal::Internal => "internal error",
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        tracing::error!(error = %e, "store failure while answering a request");
        Refusal::Internal
    }
}

impl From<BackendError> for Refusal {
    fn from(e: BackendError) -> Refusal {
        tracing::warn!(error = %e, "chain backend failure while answering a request");
        Refusal::Unavailable(format!("the tower cannot check this against the chain now ({e}); retry"))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}
