//! The tower's durable state: embedded SQLite by default, PostgreSQL for operators.
//!
//! Every decision is written before it is acted on: a block's (or a mempool sighting's) vault
//! states, the broadcasts and alarms it decided, and the follower's position commit in one
//! transaction. After a crash the tower reloads all of it, re-broadcasts what was decided but
//! not done, and replays the blocks it missed. Requests commit their nonce with their effect,
//! so a replay is refused and a crash never half-registers a vault.
//!
//! Both backends keep the same five tables; values are JSON text, so the schema is the same.

use std::path::Path;

use vigil_chain::BlockId;
use vigil_policy::bitcoin::{BlockHash, OutPoint, Txid};

use crate::watch::{Action, Vault};

/// A store failure (I/O, corruption): the tower stops rather than act on unrecorded decisions.
#[derive(Debug, thiserror::Error)]
#[error("tower store: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
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
    /// Approvals: (U txid, spend txid, the request as received).
    pub approvals: Vec<(Txid, Txid, String)>,
    /// The follower's recent blocks, oldest first.
    pub recent: Vec<BlockId>,
    /// Broadcasts decided and not yet known to be done.
    pub pending_broadcasts: Vec<(i64, Action)>,
    /// Small named records (JSON): `fee_wallet`, `policy_changes`.
    pub records: std::collections::HashMap<String, String>,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Stored now.
    New,
    /// Already stored with the same transactions (a retry).
    Same,
    /// Already stored with other transactions: refused.
    Conflict,
    /// The nonce was not fresh: refused.
    Replay,
}

/// One step's decisions, recorded together.
#[derive(Debug, Default, Clone, Copy)]
pub struct Step<'a> {
    /// Vaults whose state changed.
    pub vaults: &'a [Vault],
    /// The follower's position, if it moved.
    pub recent: Option<&'a [BlockId]>,
    /// Named records (JSON) that changed: `fee_wallet`, `policy_changes`.
    pub records: &'a [(&'a str, String)],
    /// Broadcasts to make and alarms to deliver.
    pub actions: &'a [Action],
}

/// The tower's store.
pub trait TowerStore: Send {
    /// Everything but the vaults, for a restart.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Every vault with its state, one at a time (a large tower never holds them all).
    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError>;
    /// Registers a vault with the request's nonce, atomically (`registration`: the request's
    /// digest, for audit).
    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
    ) -> Result<Registered, StoreError>;
    /// Stores an approval with the request's nonce, atomically; false on a replay.
    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        unvault: &Txid,
        spend: &Txid,
        body: &str,
    ) -> Result<bool, StoreError>;
    /// Consumes a nonce alone (a panic); false on a replay.
    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<bool, StoreError>;
    /// Records a step's decisions atomically: changed vault states, the follower's position (if
    /// it moved), the broadcasts to make and the alarms to deliver. Returns the broadcasts
    /// with their ids, to mark done once the backend accepted them.
    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError>;
    /// One vault, with every transaction (the watcher keeps idle vaults' graphs here only).
    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError>;
    /// A broadcast the backend has answered for good.
    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError>;
    /// Alarms not yet delivered.
    fn undelivered_alarms(&mut self) -> Result<Vec<OutboxAlarm>, StoreError>;
    /// Marks an alarm delivered, or counts a failed attempt.
    fn alarm_attempted(&mut self, id: i64, delivered: bool) -> Result<(), StoreError>;
}

/// A vault row is only ever written whole: one without its transactions (the watcher's
/// in-memory copy of an idle vault) must never be stored, nor replace the stored graph.
fn whole(v: &Vault) -> Result<String, StoreError> {
    if v.cancels.is_empty() || v.emergencies.is_empty() || v.unvault_emergencies.is_empty() {
        return Err(StoreError(format!("vault {} would be stored without its transactions", v.outpoint)));
    }
    Ok(serde_json::to_string(v)?)
}

fn recent_json(recent: &[BlockId]) -> Result<String, StoreError> {
    let pairs: Vec<(u32, String)> = recent.iter().map(|b| (b.height, b.hash.to_string())).collect();
    Ok(serde_json::to_string(&pairs)?)
}

fn recent_from_json(text: &str) -> Result<Vec<BlockId>, StoreError> {
    let pairs: Vec<(u32, String)> = serde_json::from_str(text)?;
    pairs
        .into_iter()
        .map(|(height, hash)| {
            let hash: BlockHash =
                hash.parse().map_err(|_| StoreError("bad block hash in progress".into()))?;
            Ok(BlockId { height, hash })
        })
        .collect()
}

fn parse_txid(t: &str) -> Result<Txid, StoreError> {
    t.parse().map_err(|e: vigil_policy::bitcoin::hex::HexToArrayError| StoreError(e.to_string()))
}

fn same_transactions(stored: &str, vault: &Vault) -> Result<bool, StoreError> {
    let old: Vault = serde_json::from_str(stored)?;
    Ok(old.unvault == vault.unvault && old.cancels == vault.cancels && old.emergencies == vault.emergencies)
}

// ----- SQLite ------------------------------------------------------------------------------

/// The embedded store: one SQLite file, WAL, full sync.
pub struct SqliteStore {
    conn: rusqlite::Connection,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS vaults (outpoint TEXT PRIMARY KEY, registration TEXT NOT NULL, vault TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, nonce INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS broadcasts (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL,
                 done INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                 message TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0);",
        )?;
        Ok(SqliteStore { conn })
    }

    fn fresh_nonce(tx: &rusqlite::Transaction, key: &str, nonce: u64) -> Result<bool, StoreError> {
        use rusqlite::OptionalExtension;
        let last: Option<i64> =
            tx.query_row("SELECT nonce FROM nonces WHERE key = ?1", [key], |r| r.get(0)).optional()?;
        if last.is_some_and(|l| l as u64 >= nonce) {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO nonces (key, nonce) VALUES (?1, ?2)",
            rusqlite::params![key, nonce as i64],
        )?;
        Ok(true)
    }
}

impl TowerStore for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        use rusqlite::OptionalExtension;
        let mut loaded = Loaded::default();
        let mut stmt = self.conn.prepare("SELECT unvault_txid, spend_txid, body FROM approvals")?;
        for row in stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        {
            let (u, s, body) = row?;
            loaded.approvals.push((parse_txid(&u)?, parse_txid(&s)?, body));
        }
        let recent: Option<String> =
            self.conn.query_row("SELECT recent FROM progress WHERE id = 0", [], |r| r.get(0)).optional()?;
        if let Some(text) = recent {
            loaded.recent = recent_from_json(&text)?;
        }
        let mut stmt = self.conn.prepare("SELECT name, value FROM records")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (name, value) = row?;
            loaded.records.insert(name, value);
        }
        let mut stmt = self.conn.prepare("SELECT id, action FROM broadcasts WHERE done = 0 ORDER BY id")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, action) = row?;
            loaded.pending_broadcasts.push((id, serde_json::from_str(&action)?));
        }
        Ok(loaded)
    }

    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare("SELECT vault FROM vaults ORDER BY outpoint")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            each(serde_json::from_str(&row?)?);
        }
        Ok(())
    }

    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
    ) -> Result<Registered, StoreError> {
        use rusqlite::OptionalExtension;
        let tx = self.conn.transaction()?;
        if !Self::fresh_nonce(&tx, key, nonce)? {
            return Ok(Registered::Replay);
        }
        let outpoint = vault.outpoint.to_string();
        let existing: Option<String> = tx
            .query_row("SELECT vault FROM vaults WHERE outpoint = ?1", [&outpoint], |r| r.get(0))
            .optional()?;
        let outcome = match existing {
            None => {
                tx.execute(
                    "INSERT INTO vaults (outpoint, registration, vault) VALUES (?1, ?2, ?3)",
                    rusqlite::params![outpoint, registration, whole(vault)?],
                )?;
                Registered::New
            }
            Some(stored) if same_transactions(&stored, vault)? => Registered::Same,
            Some(_) => Registered::Conflict,
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        unvault: &Txid,
        spend: &Txid,
        body: &str,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        if !Self::fresh_nonce(&tx, key, nonce)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO approvals (unvault_txid, spend_txid, body) VALUES (?1, ?2, ?3)",
            rusqlite::params![unvault.to_string(), spend.to_string(), body],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let fresh = Self::fresh_nonce(&tx, key, nonce)?;
        tx.commit()?;
        Ok(fresh)
    }

    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError> {
        let Step { vaults, recent, records, actions } = step;
        let tx = self.conn.transaction()?;
        for (name, value) in records {
            tx.execute(
                "INSERT OR REPLACE INTO records (name, value) VALUES (?1, ?2)",
                rusqlite::params![name, value],
            )?;
        }
        for v in vaults {
            tx.execute(
                "UPDATE vaults SET vault = ?2 WHERE outpoint = ?1",
                rusqlite::params![v.outpoint.to_string(), whole(v)?],
            )?;
        }
        if let Some(recent) = recent {
            tx.execute(
                "INSERT OR REPLACE INTO progress (id, recent) VALUES (0, ?1)",
                [recent_json(recent)?],
            )?;
        }
        let mut broadcasts = Vec::new();
        for action in actions {
            match action {
                Action::Broadcast { .. } | Action::BroadcastPackage { .. } => {
                    tx.execute(
                        "INSERT INTO broadcasts (action) VALUES (?1)",
                        [serde_json::to_string(action)?],
                    )?;
                    broadcasts.push((tx.last_insert_rowid(), action.clone()));
                }
                Action::Alarm { kind, message, .. } => {
                    tx.execute(
                        "INSERT INTO alarms (kind, message) VALUES (?1, ?2)",
                        rusqlite::params![kind, message],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(broadcasts)
    }

    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError> {
        use rusqlite::OptionalExtension;
        let text: Option<String> = self
            .conn
            .query_row("SELECT vault FROM vaults WHERE outpoint = ?1", [outpoint.to_string()], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE broadcasts SET done = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    fn undelivered_alarms(&mut self) -> Result<Vec<OutboxAlarm>, StoreError> {
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

    fn alarm_attempted(&mut self, id: i64, delivered: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE alarms SET attempts = attempts + 1, delivered = MAX(delivered, ?2) WHERE id = ?1",
            rusqlite::params![id, delivered as i64],
        )?;
        Ok(())
    }
}

// ----- PostgreSQL --------------------------------------------------------------------------

/// The operators' store: a PostgreSQL schema (created if missing), serializable transactions.
pub struct PostgresStore {
    client: postgres::Client,
}

impl PostgresStore {
    /// Connects to `url` (a libpq connection string) and uses `schema`.
    pub fn connect(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError(format!("schema {schema:?}: letters, digits and _ only")));
        }
        let mut client = postgres::Client::connect(url, postgres::NoTls)?;
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema};
             CREATE TABLE IF NOT EXISTS vaults (outpoint TEXT PRIMARY KEY, registration TEXT NOT NULL, vault TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, nonce BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS broadcasts (id BIGSERIAL PRIMARY KEY, action TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT FALSE);
             CREATE TABLE IF NOT EXISTS alarms (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, delivered BOOLEAN NOT NULL DEFAULT FALSE);"
        ))?;
        Ok(PostgresStore { client })
    }

    fn fresh_nonce(tx: &mut postgres::Transaction, key: &str, nonce: u64) -> Result<bool, StoreError> {
        // Row lock on the key: concurrent requests with one key serialize here.
        let last = tx.query_opt("SELECT nonce FROM nonces WHERE key = $1 FOR UPDATE", &[&key])?;
        if last.is_some_and(|r| r.get::<_, i64>(0) as u64 >= nonce) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO nonces (key, nonce) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET nonce = EXCLUDED.nonce",
            &[&key, &(nonce as i64)],
        )?;
        Ok(true)
    }
}

impl TowerStore for PostgresStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for row in self.client.query("SELECT unvault_txid, spend_txid, body FROM approvals", &[])? {
            loaded.approvals.push((parse_txid(row.get(0))?, parse_txid(row.get(1))?, row.get(2)));
        }
        if let Some(row) = self.client.query_opt("SELECT recent FROM progress WHERE id = 0", &[])? {
            loaded.recent = recent_from_json(row.get(0))?;
        }
        for row in self.client.query("SELECT name, value FROM records", &[])? {
            loaded.records.insert(row.get(0), row.get(1));
        }
        for row in self.client.query("SELECT id, action FROM broadcasts WHERE NOT done ORDER BY id", &[])? {
            loaded.pending_broadcasts.push((row.get(0), serde_json::from_str(row.get::<_, &str>(1))?));
        }
        Ok(loaded)
    }

    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut rows = self
            .client
            .query_raw("SELECT vault FROM vaults ORDER BY outpoint", std::iter::empty::<&str>())?;
        while let Some(row) = rows.next()? {
            each(serde_json::from_str(row.get::<_, &str>(0))?);
        }
        Ok(())
    }

    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
    ) -> Result<Registered, StoreError> {
        let mut tx = self.client.transaction()?;
        if !Self::fresh_nonce(&mut tx, key, nonce)? {
            return Ok(Registered::Replay);
        }
        let outpoint = vault.outpoint.to_string();
        let existing = tx.query_opt("SELECT vault FROM vaults WHERE outpoint = $1", &[&outpoint])?;
        let outcome = match existing {
            None => {
                tx.execute(
                    "INSERT INTO vaults (outpoint, registration, vault) VALUES ($1, $2, $3)",
                    &[&outpoint, &registration, &whole(vault)?],
                )?;
                Registered::New
            }
            Some(row) if same_transactions(row.get(0), vault)? => Registered::Same,
            Some(_) => Registered::Conflict,
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        unvault: &Txid,
        spend: &Txid,
        body: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.client.transaction()?;
        if !Self::fresh_nonce(&mut tx, key, nonce)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO approvals (unvault_txid, spend_txid, body) VALUES ($1, $2, $3)
             ON CONFLICT (unvault_txid) DO UPDATE SET spend_txid = EXCLUDED.spend_txid, body = EXCLUDED.body",
            &[&unvault.to_string(), &spend.to_string(), &body],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<bool, StoreError> {
        let mut tx = self.client.transaction()?;
        let fresh = Self::fresh_nonce(&mut tx, key, nonce)?;
        tx.commit()?;
        Ok(fresh)
    }

    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError> {
        let Step { vaults, recent, records, actions } = step;
        let mut tx = self.client.transaction()?;
        for (name, value) in records {
            tx.execute(
                "INSERT INTO records (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[name, value],
            )?;
        }
        for v in vaults {
            tx.execute(
                "UPDATE vaults SET vault = $2 WHERE outpoint = $1",
                &[&v.outpoint.to_string(), &whole(v)?],
            )?;
        }
        if let Some(recent) = recent {
            tx.execute(
                "INSERT INTO progress (id, recent) VALUES (0, $1) ON CONFLICT (id) DO UPDATE SET recent = EXCLUDED.recent",
                &[&recent_json(recent)?],
            )?;
        }
        let mut broadcasts = Vec::new();
        for action in actions {
            match action {
                Action::Broadcast { .. } | Action::BroadcastPackage { .. } => {
                    let row = tx.query_one(
                        "INSERT INTO broadcasts (action) VALUES ($1) RETURNING id",
                        &[&serde_json::to_string(action)?],
                    )?;
                    broadcasts.push((row.get(0), action.clone()));
                }
                Action::Alarm { kind, message, .. } => {
                    tx.execute("INSERT INTO alarms (kind, message) VALUES ($1, $2)", &[kind, message])?;
                }
            }
        }
        tx.commit()?;
        Ok(broadcasts)
    }

    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT vault FROM vaults WHERE outpoint = $1", &[&outpoint.to_string()])?;
        Ok(row.map(|r| serde_json::from_str(r.get::<_, &str>(0))).transpose()?)
    }

    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.client.execute("UPDATE broadcasts SET done = TRUE WHERE id = $1", &[&id])?;
        Ok(())
    }

    fn undelivered_alarms(&mut self) -> Result<Vec<OutboxAlarm>, StoreError> {
        Ok(self
            .client
            .query("SELECT id, kind, message, attempts FROM alarms WHERE NOT delivered ORDER BY id", &[])?
            .into_iter()
            .map(|r| OutboxAlarm {
                id: r.get(0),
                kind: r.get(1),
                message: r.get(2),
                attempts: r.get::<_, i32>(3) as u32,
            })
            .collect())
    }

    fn alarm_attempted(&mut self, id: i64, delivered: bool) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE alarms SET attempts = attempts + 1, delivered = delivered OR $2 WHERE id = $1",
            &[&id, &delivered],
        )?;
        Ok(())
    }
}

/// The watcher's [`crate::watch::Graphs`] source: a store connection of its own, so reading a
/// graph back never waits on (or borrows) the connection that records decisions.
pub struct StoreGraphs(pub Box<dyn TowerStore>);

impl crate::watch::Graphs for StoreGraphs {
    fn graph(&mut self, vault: &OutPoint) -> Result<Vault, String> {
        match self.0.vault(vault) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err("not in the store".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}
