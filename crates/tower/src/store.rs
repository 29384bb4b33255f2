//! The tower's durable state in SQLite (embedded, the default).
//!
//! Every decision is written before it is acted on: a block's (or a mempool sighting's) vault
//! states, the broadcasts and alarms it decided, and the follower's position commit in one
//! transaction. After a crash the tower reloads all of it, re-broadcasts what was decided but
//! not confirmed, and replays the blocks it missed. SQLite runs in WAL mode with full sync.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use vigil_chain::BlockId;
use vigil_policy::bitcoin::{BlockHash, OutPoint, Txid};

use crate::watch::{Action, Vault};

/// A store failure (I/O, corruption): the tower stops rather than act on unrecorded decisions.
#[derive(Debug, thiserror::Error)]
#[error("tower store: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// An alarm waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxAlarm {
    /// Row id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Message.
    pub message: String,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// Everything the tower reloads on start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Watched vaults with their states.
    pub vaults: Vec<(Vault, String)>,
    /// Approved spends: (U txid, spend txid).
    pub approvals: Vec<(Txid, Txid)>,
    /// The follower's recent blocks, oldest first.
    pub recent: Vec<BlockId>,
    /// Broadcasts decided and not yet known to be done.
    pub pending_broadcasts: Vec<(i64, Action)>,
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS vaults (outpoint TEXT PRIMARY KEY, policy_id TEXT NOT NULL,
                 registration TEXT NOT NULL, vault TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL,
                 body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, nonce INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS broadcasts (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL,
                 done INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                 message TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0);",
        )?;
        Ok(Store { conn })
    }

    /// Everything, for a restart.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut stmt = self.conn.prepare("SELECT vault, registration FROM vaults")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (vault, registration) = row?;
            loaded.vaults.push((serde_json::from_str(&vault)?, registration));
        }
        let mut stmt = self.conn.prepare("SELECT unvault_txid, spend_txid FROM approvals")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (u, s) = row?;
            let parse = |t: &str| t.parse::<Txid>().map_err(|e| StoreError(e.to_string()));
            loaded.approvals.push((parse(&u)?, parse(&s)?));
        }
        let recent: Option<String> =
            self.conn.query_row("SELECT recent FROM progress WHERE id = 0", [], |r| r.get(0)).optional()?;
        if let Some(text) = recent {
            let pairs: Vec<(u32, String)> = serde_json::from_str(&text)?;
            for (height, hash) in pairs {
                let hash: BlockHash =
                    hash.parse().map_err(|_| StoreError("bad block hash in progress".into()))?;
                loaded.recent.push(BlockId { height, hash });
            }
        }
        let mut stmt = self.conn.prepare("SELECT id, action FROM broadcasts WHERE done = 0 ORDER BY id")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, action) = row?;
            loaded.pending_broadcasts.push((id, serde_json::from_str(&action)?));
        }
        Ok(loaded)
    }

    /// Whether a vault is registered, and its registration if so.
    pub fn registration(&self, outpoint: &OutPoint) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT registration FROM vaults WHERE outpoint = ?1", [outpoint.to_string()], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Accepts `nonce` from `key` only if it exceeds every nonce seen from that key, and
    /// records it; with the request's own effect in the same transaction (`then`).
    pub fn with_fresh_nonce<T>(
        &mut self,
        key: &str,
        nonce: u64,
        then: impl FnOnce(&rusqlite::Transaction) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.conn.transaction()?;
        let last: Option<i64> =
            tx.query_row("SELECT nonce FROM nonces WHERE key = ?1", [key], |r| r.get(0)).optional()?;
        if last.is_some_and(|l| l as u64 >= nonce) {
            return Ok(None);
        }
        tx.execute("INSERT OR REPLACE INTO nonces (key, nonce) VALUES (?1, ?2)", params![key, nonce as i64])?;
        let out = then(&tx)?;
        tx.commit()?;
        Ok(Some(out))
    }

    /// Writes a new vault (inside a request transaction).
    pub fn insert_vault(
        tx: &rusqlite::Transaction,
        vault: &Vault,
        registration: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO vaults (outpoint, policy_id, registration, vault) VALUES (?1, ?2, ?3, ?4)",
            params![vault.outpoint.to_string(), vault.policy_id, registration, serde_json::to_string(vault)?],
        )?;
        Ok(())
    }

    /// Writes an approval (inside a request transaction).
    pub fn insert_approval(
        tx: &rusqlite::Transaction,
        unvault: &Txid,
        spend: &Txid,
        body: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT OR REPLACE INTO approvals (unvault_txid, spend_txid, body) VALUES (?1, ?2, ?3)",
            params![unvault.to_string(), spend.to_string(), body],
        )?;
        Ok(())
    }

    /// Records a step's decisions atomically: changed vault states, the follower's position
    /// (if it moved), the broadcasts to make and the alarms to deliver. Returns the
    /// broadcasts' row ids, to mark them done once the backend accepted them.
    pub fn commit_step(
        &mut self,
        vaults: &[Vault],
        recent: Option<&[BlockId]>,
        actions: &[Action],
    ) -> Result<Vec<(i64, Action)>, StoreError> {
        let tx = self.conn.transaction()?;
        for v in vaults {
            tx.execute(
                "UPDATE vaults SET vault = ?2 WHERE outpoint = ?1",
                params![v.outpoint.to_string(), serde_json::to_string(v)?],
            )?;
        }
        if let Some(recent) = recent {
            let pairs: Vec<(u32, String)> = recent.iter().map(|b| (b.height, b.hash.to_string())).collect();
            tx.execute(
                "INSERT OR REPLACE INTO progress (id, recent) VALUES (0, ?1)",
                [serde_json::to_string(&pairs)?],
            )?;
        }
        let mut broadcasts = Vec::new();
        for action in actions {
            match action {
                Action::Broadcast { .. } => {
                    tx.execute(
                        "INSERT INTO broadcasts (action) VALUES (?1)",
                        [serde_json::to_string(action)?],
                    )?;
                    broadcasts.push((tx.last_insert_rowid(), action.clone()));
                }
                Action::Alarm { kind, message, .. } => {
                    tx.execute("INSERT INTO alarms (kind, message) VALUES (?1, ?2)", params![kind, message])?;
                }
            }
        }
        tx.commit()?;
        Ok(broadcasts)
    }

    /// A broadcast the backend accepted (or that is no longer needed).
    pub fn broadcast_done(&self, id: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE broadcasts SET done = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Alarms not yet delivered.
    pub fn undelivered_alarms(&self) -> Result<Vec<OutboxAlarm>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, kind, message, attempts FROM alarms WHERE delivered = 0 ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(OutboxAlarm {
                id: r.get(0)?,
                kind: r.get(1)?,
                message: r.get(2)?,
                attempts: r.get::<_, i64>(3)? as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every alarm ever recorded: (kind, message), oldest first.
    pub fn all_alarms(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT kind, message FROM alarms ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks an alarm delivered, or counts a failed attempt.
    pub fn alarm_attempted(&self, id: i64, delivered: bool) -> Result<(), StoreError> {
        if delivered {
            self.conn
                .execute("UPDATE alarms SET delivered = 1, attempts = attempts + 1 WHERE id = ?1", [id])?;
        } else {
            self.conn.execute("UPDATE alarms SET attempts = attempts + 1 WHERE id = ?1", [id])?;
        }
        Ok(())
    }
}
