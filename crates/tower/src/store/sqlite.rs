//! The embedded store: one SQLite file, WAL, full sync.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use vigil_policy::bitcoin::OutPoint;

use super::*;

const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS vaults (outpoint TEXT PRIMARY KEY, client TEXT, vault_index INTEGER,
        registration TEXT NOT NULL, vault TEXT NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS vaults_by_client ON vaults (client, vault_index);
    CREATE TABLE IF NOT EXISTS approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL,
        body TEXT NOT NULL, terms TEXT);
    CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, nonce INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS broadcasts (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
        message TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
        vault TEXT, client TEXT);
    CREATE INDEX IF NOT EXISTS alarms_outbox ON alarms (delivered, id);
    CREATE INDEX IF NOT EXISTS alarms_by_vault ON alarms (vault, id);
    CREATE INDEX IF NOT EXISTS alarms_by_client ON alarms (client, id);
    CREATE TABLE IF NOT EXISTS alarm_deliveries (alarm_id INTEGER NOT NULL, endpoint TEXT NOT NULL,
        PRIMARY KEY (alarm_id, endpoint));
    CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, policy TEXT NOT NULL, pending TEXT);
    CREATE TABLE IF NOT EXISTS client_versions (client TEXT NOT NULL, seq INTEGER NOT NULL,
        policy TEXT NOT NULL, PRIMARY KEY (client, seq));
    CREATE TABLE IF NOT EXISTS panics (id TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, client TEXT);";

/// Schema 1 -> 2: the columns the new tables do not bring.
const FROM_V1: &str = "
    ALTER TABLE vaults ADD COLUMN client TEXT;
    ALTER TABLE vaults ADD COLUMN vault_index INTEGER;
    UPDATE vaults SET client = json_extract(vault, '$.policy_id');
    ALTER TABLE approvals ADD COLUMN terms TEXT;
    ALTER TABLE alarms ADD COLUMN vault TEXT;";

/// Schema 2 -> 3: an alarm names the client it is about when no one vault is (then
/// [`name_clients`]).
const FROM_V2: &str = "ALTER TABLE alarms ADD COLUMN client TEXT;";

/// Names the client of each alarm schema 2 kept about a client as a whole, so the feed
/// lists it.
fn name_clients(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
    let unnamed: Vec<(i64, String)> = tx
        .prepare(&unnamed_client_alarms_sql())?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, message) in &unnamed {
        if let Some(client) = client_named(message) {
            tx.execute("UPDATE alarms SET client = ?2 WHERE id = ?1", params![id, client])?;
        }
    }
    Ok(())
}

/// The embedded store: one SQLite file, WAL, full sync.
pub struct SqliteStore {
    conn: rusqlite::Connection,
}

impl SqliteStore {
    /// Opens (or creates, or migrates) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut conn = rusqlite::Connection::open(path)?;
        // Other connections (graphs read back, alarm delivery) write too: wait, do not fail.
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let existing: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vaults')",
            [],
            |r| r.get(0),
        )?;
        match version {
            0 if existing => {
                tx.execute_batch(&format!("{FROM_V1}{FROM_V2}"))?;
                name_clients(&tx)?;
            }
            2 => {
                tx.execute_batch(FROM_V2)?;
                name_clients(&tx)?;
            }
            0 | SCHEMA_VERSION => {}
            found => return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION }),
        }
        tx.execute_batch(TABLES)?;
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        tx.commit()?;
        Ok(SqliteStore { conn })
    }

    fn nonce(tx: &rusqlite::Transaction, key: &str, nonce: u64) -> Result<NonceCheck, StoreError> {
        let last: Option<i64> =
            tx.query_row("SELECT nonce FROM nonces WHERE key = ?1", [key], |r| r.get(0)).optional()?;
        let check = NonceCheck::of(last.map(|l| l as u64), nonce);
        if check == NonceCheck::Fresh {
            tx.execute(
                "INSERT OR REPLACE INTO nonces (key, nonce) VALUES (?1, ?2)",
                params![key, nonce as i64],
            )?;
        }
        Ok(check)
    }
}

impl TowerStore for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut stmt = self.conn.prepare("SELECT unvault_txid, spend_txid, body, terms FROM approvals")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (u, s, body, terms): (String, String, String, Option<String>) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let terms = read_terms(terms.as_deref(), parse_txid(&s)?, &body)?;
            loaded.approvals.push(StoredApproval { unvault: parse_txid(&u)?, terms });
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
            loaded.pending_broadcasts.push((id, read_action(&action)?));
        }
        let mut stmt = self.conn.prepare("SELECT id, policy, pending FROM clients ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            loaded.clients.push(ClientRecord {
                id: r.get(0)?,
                policy: r.get(1)?,
                pending: read_pending(r.get(2)?)?,
                earlier: Vec::new(),
            });
        }
        let at: std::collections::HashMap<String, usize> =
            loaded.clients.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        let mut stmt =
            self.conn.prepare("SELECT client, policy FROM client_versions ORDER BY client, seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let client: String = r.get(0)?;
            if let Some(&i) = at.get(&client) {
                loaded.clients[i].earlier.push(r.get(1)?);
            }
        }
        Ok(loaded)
    }

    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare("SELECT vault FROM vaults ORDER BY outpoint")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            each(read_vault(&row?)?);
        }
        Ok(())
    }

    fn pin_client(&mut self, id: &str, policy: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO clients (id, policy) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
            params![id, policy],
        )?;
        Ok(n == 1)
    }

    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
        max_per_client: u32,
    ) -> Result<Registered, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let outpoint = vault.outpoint.to_string();
        if let NonceCheck::Refused { last } = Self::nonce(&tx, key, nonce)? {
            // The very request again (its answer lost in a crash or a dropped connection):
            // the same registration, not a replay to refuse.
            let stored: Option<String> = tx
                .query_row("SELECT registration FROM vaults WHERE outpoint = ?1", [&outpoint], |r| r.get(0))
                .optional()?;
            return Ok(if stored.as_deref() == Some(registration) {
                Registered::Same
            } else {
                Registered::Replay { last }
            });
        }
        let existing: Option<String> = tx
            .query_row("SELECT vault FROM vaults WHERE outpoint = ?1", [&outpoint], |r| r.get(0))
            .optional()?;
        let outcome = match existing {
            Some(stored) if same_transactions(&stored, vault)? => Registered::Same,
            Some(_) => Registered::Conflict,
            None => {
                let used: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM vaults WHERE client = ?1 AND vault_index = ?2)",
                    params![vault.policy_id, vault.index],
                    |r| r.get(0),
                )?;
                let count: i64 =
                    tx.query_row("SELECT COUNT(*) FROM vaults WHERE client = ?1", [&vault.policy_id], |r| {
                        r.get(0)
                    })?;
                if used {
                    Registered::IndexUsed
                } else if count >= max_per_client as i64 {
                    Registered::TooMany
                } else {
                    tx.execute(
                        "INSERT INTO vaults (outpoint, client, vault_index, registration, vault)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![outpoint, vault.policy_id, vault.index, registration, whole(vault)?],
                    )?;
                    Registered::New
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        approval: &StoredApproval,
        body: &str,
    ) -> Result<NonceCheck, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let check = Self::nonce(&tx, key, nonce)?;
        if check == NonceCheck::Fresh {
            tx.execute(
                "INSERT OR REPLACE INTO approvals (unvault_txid, spend_txid, body, terms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    approval.unvault.to_string(),
                    approval.terms.spend.to_string(),
                    body,
                    terms_json(&approval.terms)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(check)
    }

    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<NonceCheck, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let check = Self::nonce(&tx, key, nonce)?;
        tx.commit()?;
        Ok(check)
    }

    fn panic_used(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row("SELECT EXISTS (SELECT 1 FROM panics WHERE id = ?1)", [id], |r| r.get(0))?)
    }

    fn issue_token(&mut self, hash: &str) -> Result<(), StoreError> {
        self.conn.execute("INSERT INTO tokens (hash) VALUES (?1)", [hash])?;
        Ok(())
    }

    fn token(&mut self, hash: &str) -> Result<Option<Option<String>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT client FROM tokens WHERE hash = ?1", [hash], |r| r.get(0))
            .optional()?)
    }

    fn applied_policy(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT policy FROM clients WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    fn enroll(
        &mut self,
        hash: &str,
        client: &ClientRecord,
        replace: Option<&Action>,
    ) -> Result<Enrollment, StoreError> {
        let id = client.id.as_str();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let token: Option<Option<String>> =
            tx.query_row("SELECT client FROM tokens WHERE hash = ?1", [hash], |r| r.get(0)).optional()?;
        let outcome = match token {
            None => Enrollment::Unknown,
            Some(Some(c)) if c == id => Enrollment::Same,
            Some(Some(_)) => Enrollment::Used,
            Some(None) => {
                tx.execute("UPDATE tokens SET client = ?2 WHERE hash = ?1", params![hash, id])?;
                if let Some(alarm) = replace {
                    write_client(&tx, client)?;
                    insert_alarm(&tx, alarm)?;
                } else {
                    let new = tx.execute(
                        "INSERT INTO clients (id, policy) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
                        params![id, client.policy],
                    )?;
                    if new == 1 {
                        write_earlier(&tx, id, &client.earlier)?;
                    }
                }
                Enrollment::Pinned
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError> {
        let Step { vaults, recent, records, clients, panics, actions } = step;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (name, value) in records {
            tx.execute("INSERT OR REPLACE INTO records (name, value) VALUES (?1, ?2)", params![name, value])?;
        }
        for c in clients {
            write_client(&tx, c)?;
        }
        for id in panics {
            tx.execute("INSERT INTO panics (id) VALUES (?1)", [id])?;
        }
        for v in vaults {
            tx.execute(
                "UPDATE vaults SET vault = ?2 WHERE outpoint = ?1",
                params![v.outpoint.to_string(), whole(v)?],
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
                    tx.execute("INSERT INTO broadcasts (action) VALUES (?1)", [action_json(action)?])?;
                    broadcasts.push((tx.last_insert_rowid(), action.clone()));
                }
                Action::Alarm { .. } => insert_alarm(&tx, action)?,
            }
        }
        tx.commit()?;
        Ok(broadcasts)
    }

    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT vault FROM vaults WHERE outpoint = ?1", [outpoint.to_string()], |r| r.get(0))
            .optional()?;
        text.map(|t| read_vault(&t)).transpose()
    }

    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE broadcasts SET done = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    fn undelivered_alarms(&mut self, endpoint: &str) -> Result<Vec<OutboxAlarm>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, vault, client, kind, message, attempts FROM alarms a WHERE delivered = 0 AND NOT EXISTS
               (SELECT 1 FROM alarm_deliveries d WHERE d.alarm_id = a.id AND d.endpoint = ?1) ORDER BY id",
        )?;
        let mut rows = stmt.query([endpoint])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(outbox_alarm(r)?);
        }
        Ok(out)
    }

    fn alarm_attempted(
        &mut self,
        id: i64,
        endpoint: &str,
        delivered: bool,
        endpoints: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("UPDATE alarms SET attempts = attempts + 1 WHERE id = ?1", [id])?;
        if delivered {
            tx.execute(
                "INSERT OR IGNORE INTO alarm_deliveries (alarm_id, endpoint) VALUES (?1, ?2)",
                params![id, endpoint],
            )?;
            let reached: Vec<String> = tx
                .prepare("SELECT endpoint FROM alarm_deliveries WHERE alarm_id = ?1")?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if endpoints.iter().all(|e| reached.contains(e)) {
                tx.execute("UPDATE alarms SET delivered = 1 WHERE id = ?1", [id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn settle_alarms(&mut self, endpoints: &[String]) -> Result<u64, StoreError> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        let list = serde_json::to_string(endpoints).map_err(StoreError::corrupt("endpoint list"))?;
        Ok(self.conn.execute(
            "UPDATE alarms SET delivered = 1 WHERE delivered = 0 AND (SELECT COUNT(DISTINCT d.endpoint)
               FROM alarm_deliveries d WHERE d.alarm_id = alarms.id
               AND d.endpoint IN (SELECT value FROM json_each(?1))) = ?2",
            params![list, endpoints.len() as i64],
        )? as u64)
    }

    fn outbox_len(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM alarms WHERE delivered = 0", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    fn client_alarms(&mut self, client: &str, limit: u32) -> Result<Vec<OutboxAlarm>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT * FROM (SELECT id, vault, client, kind, message, attempts FROM alarms
                 WHERE client = ?1 ORDER BY id DESC LIMIT ?2)
             UNION ALL
             SELECT * FROM (SELECT a.id, a.vault, a.client, a.kind, a.message, a.attempts
                 FROM alarms a JOIN vaults v ON v.outpoint = a.vault
                 WHERE v.client = ?1 ORDER BY a.id DESC LIMIT ?2)
             ORDER BY id DESC",
        )?;
        let mut rows = stmt.query(params![client, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(outbox_alarm(r)?);
        }
        Ok(out)
    }
}

/// An alarm row selected as `id, vault, client, kind, message, attempts`.
fn outbox_alarm(r: &rusqlite::Row<'_>) -> Result<OutboxAlarm, StoreError> {
    Ok(OutboxAlarm {
        id: r.get(0)?,
        vault: r.get(1)?,
        client: r.get(2)?,
        kind: read_kind(&r.get::<_, String>(3)?)?,
        message: r.get(4)?,
        attempts: r.get::<_, i64>(5)? as u32,
    })
}

/// Puts `alarm` (an [`Action::Alarm`]) in the outbox.
fn insert_alarm(tx: &rusqlite::Transaction, alarm: &Action) -> Result<(), StoreError> {
    if let Action::Alarm { vault, client, kind, message } = alarm {
        tx.execute(
            "INSERT INTO alarms (kind, message, vault, client) VALUES (?1, ?2, ?3, ?4)",
            params![kind.as_str(), message, vault.map(|v| v.to_string()), client],
        )?;
    }
    Ok(())
}

/// Writes client `c` as it is now: its applied policy, its waiting change, the versions
/// before it.
fn write_client(tx: &rusqlite::Transaction, c: &ClientRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO clients (id, policy, pending) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, pending = excluded.pending",
        params![c.id, c.policy, pending_json(&c.pending)?],
    )?;
    write_earlier(tx, &c.id, &c.earlier)
}

/// Replaces the versions kept before client `id`'s applied one.
fn write_earlier(tx: &rusqlite::Transaction, id: &str, earlier: &[String]) -> Result<(), StoreError> {
    tx.execute("DELETE FROM client_versions WHERE client = ?1", [id])?;
    for (seq, text) in earlier.iter().enumerate() {
        tx.execute(
            "INSERT INTO client_versions (client, seq, policy) VALUES (?1, ?2, ?3)",
            params![id, seq as i64, text],
        )?;
    }
    Ok(())
}
