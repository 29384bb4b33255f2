//! The operators' store: a PostgreSQL schema (created if missing). The connection is
//! re-established when the server dropped it (a restart, an idle timeout), and the operation
//! retried once.

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::ToSql;
use vigil_policy::bitcoin::OutPoint;

use super::*;

const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS vaults (outpoint TEXT PRIMARY KEY, client TEXT, vault_index BIGINT,
        registration TEXT NOT NULL, vault TEXT NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS vaults_by_client ON vaults (client, vault_index);
    CREATE TABLE IF NOT EXISTS approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL,
        body TEXT NOT NULL, terms TEXT);
    CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, nonce BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS broadcasts (id BIGSERIAL PRIMARY KEY, action TEXT NOT NULL,
        done BOOLEAN NOT NULL DEFAULT FALSE);
    CREATE TABLE IF NOT EXISTS alarms (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, delivered BOOLEAN NOT NULL DEFAULT FALSE, vault TEXT, client TEXT);
    CREATE INDEX IF NOT EXISTS alarms_outbox ON alarms (delivered, id);
    CREATE INDEX IF NOT EXISTS alarms_by_vault ON alarms (vault, id);
    CREATE INDEX IF NOT EXISTS alarms_by_client ON alarms (client, id);
    CREATE TABLE IF NOT EXISTS alarm_deliveries (alarm_id BIGINT NOT NULL, endpoint TEXT NOT NULL,
        PRIMARY KEY (alarm_id, endpoint));
    CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, policy TEXT NOT NULL, pending TEXT);
    CREATE TABLE IF NOT EXISTS client_versions (client TEXT NOT NULL, seq BIGINT NOT NULL,
        policy TEXT NOT NULL, PRIMARY KEY (client, seq));
    CREATE TABLE IF NOT EXISTS panics (id TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, client TEXT);";

/// Schema 1 -> 2: the columns the new tables do not bring.
const FROM_V1: &str = "
    ALTER TABLE vaults ADD COLUMN IF NOT EXISTS client TEXT;
    ALTER TABLE vaults ADD COLUMN IF NOT EXISTS vault_index BIGINT;
    UPDATE vaults SET client = (vault::json->>'policy_id') WHERE client IS NULL;
    ALTER TABLE approvals ADD COLUMN IF NOT EXISTS terms TEXT;
    ALTER TABLE alarms ADD COLUMN IF NOT EXISTS vault TEXT;";

/// Schema 2 -> 3: an alarm names the client it is about when no one vault is (then
/// [`name_clients`]).
const FROM_V2: &str = "ALTER TABLE alarms ADD COLUMN IF NOT EXISTS client TEXT;";

/// Names the client of each alarm schema 2 kept about a client as a whole, so the feed
/// lists it.
fn name_clients(tx: &mut ::postgres::Transaction<'_>) -> Result<(), StoreError> {
    for row in tx.query(&unnamed_client_alarms_sql(), &[])? {
        let (id, message): (i64, String) = (row.get(0), row.get(1));
        if let Some(client) = client_named(&message) {
            tx.execute("UPDATE alarms SET client = $2 WHERE id = $1", &[&id, &client])?;
        }
    }
    Ok(())
}

/// The operators' store: a PostgreSQL schema (created if missing), one connection.
pub struct PostgresStore {
    client: ::postgres::Client,
    url: String,
    schema: String,
}

fn connect(url: &str, schema: &str) -> Result<::postgres::Client, StoreError> {
    if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::SchemaName(schema.to_owned()));
    }
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls)?;
    client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema};"))?;
    Ok(client)
}

impl PostgresStore {
    /// Connects to `url` (a libpq connection string) and uses (or creates, or migrates)
    /// `schema`.
    pub fn connect(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        let mut client = connect(url, schema)?;
        let mut tx = client.transaction()?;
        // One migrating process at a time.
        tx.execute("SELECT pg_advisory_xact_lock(7431)", &[])?;
        let existing: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'vaults')",
                &[&schema],
            )?
            .get(0);
        let has_meta: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'meta')",
                &[&schema],
            )?
            .get(0);
        let version: i64 = if has_meta {
            tx.query_opt("SELECT value FROM meta WHERE name = 'schema_version'", &[])?
                .map(|r| r.get::<_, String>(0))
                .map(|v| v.parse().map_err(|_| StoreError::Invalid { what: "schema version", value: v }))
                .transpose()?
                .unwrap_or(0)
        } else {
            0
        };
        match version {
            0 if existing => {
                tx.batch_execute(&format!("{FROM_V1}{FROM_V2}"))?;
                name_clients(&mut tx)?;
            }
            2 => {
                tx.batch_execute(FROM_V2)?;
                name_clients(&mut tx)?;
            }
            0 | SCHEMA_VERSION => {}
            found => return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION }),
        }
        tx.batch_execute(TABLES)?;
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('schema_version', $1)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&SCHEMA_VERSION.to_string()],
        )?;
        tx.commit()?;
        Ok(PostgresStore { client, url: url.to_owned(), schema: schema.to_owned() })
    }

    /// Runs `f`; if the server had dropped the connection, connects again and retries once.
    /// (A drop during COMMIT could make a step's alarms and broadcasts twice: both are
    /// idempotent to deliver.)
    fn run<T>(
        &mut self,
        f: impl Fn(&mut ::postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match f(&mut self.client) {
            Err(StoreError::Postgres(e)) if e.is_closed() || self.client.is_closed() => {
                tracing::warn!(error = %e, "PostgreSQL connection lost; reconnecting");
                self.client = connect(&self.url, &self.schema)?;
                f(&mut self.client)
            }
            other => other,
        }
    }

    fn nonce(tx: &mut ::postgres::Transaction, key: &str, nonce: u64) -> Result<NonceCheck, StoreError> {
        // Row lock on the key: concurrent requests with one key serialize here.
        let last = tx
            .query_opt("SELECT nonce FROM nonces WHERE key = $1 FOR UPDATE", &[&key])?
            .map(|r| r.get::<_, i64>(0) as u64);
        let check = NonceCheck::of(last, nonce);
        if check == NonceCheck::Fresh {
            tx.execute(
                "INSERT INTO nonces (key, nonce) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET nonce = EXCLUDED.nonce",
                &[&key as &(dyn ToSql + Sync), &(nonce as i64)],
            )?;
        }
        Ok(check)
    }
}

impl TowerStore for PostgresStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.run(|client| {
            let mut loaded = Loaded::default();
            for row in client.query("SELECT unvault_txid, spend_txid, body, terms FROM approvals", &[])? {
                let terms = read_terms(row.get(3), parse_txid(row.get(1))?, row.get(2))?;
                loaded.approvals.push(StoredApproval { unvault: parse_txid(row.get(0))?, terms });
            }
            if let Some(row) = client.query_opt("SELECT recent FROM progress WHERE id = 0", &[])? {
                loaded.recent = recent_from_json(row.get(0))?;
            }
            for row in client.query("SELECT name, value FROM records", &[])? {
                loaded.records.insert(row.get(0), row.get(1));
            }
            for row in client.query("SELECT id, action FROM broadcasts WHERE NOT done ORDER BY id", &[])? {
                loaded.pending_broadcasts.push((row.get(0), read_action(row.get(1))?));
            }
            for row in client.query("SELECT id, policy, pending FROM clients ORDER BY id", &[])? {
                loaded.clients.push(ClientRecord {
                    id: row.get(0),
                    policy: row.get(1),
                    pending: read_pending(row.get(2))?,
                    earlier: Vec::new(),
                });
            }
            let at: std::collections::HashMap<String, usize> =
                loaded.clients.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
            for row in client.query("SELECT client, policy FROM client_versions ORDER BY client, seq", &[])? {
                let id: String = row.get(0);
                if let Some(&i) = at.get(&id) {
                    loaded.clients[i].earlier.push(row.get(1));
                }
            }
            Ok(loaded)
        })
    }

    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = connect(&self.url, &self.schema)?;
        }
        let mut rows = self
            .client
            .query_raw("SELECT vault FROM vaults ORDER BY outpoint", std::iter::empty::<&str>())?;
        while let Some(row) = rows.next()? {
            each(read_vault(row.get(0))?);
        }
        Ok(())
    }

    fn pin_client(&mut self, id: &str, policy: &str) -> Result<bool, StoreError> {
        self.run(|client| {
            let n = client.execute(
                "INSERT INTO clients (id, policy) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&id as &(dyn ToSql + Sync), &policy],
            )?;
            Ok(n == 1)
        })
    }

    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
        max_per_client: u32,
    ) -> Result<Registered, StoreError> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            let outpoint = vault.outpoint.to_string();
            if let NonceCheck::Refused { last } = Self::nonce(&mut tx, key, nonce)? {
                // The very request again (its answer lost in a crash or a dropped connection):
                // the same registration, not a replay to refuse.
                let stored =
                    tx.query_opt("SELECT registration FROM vaults WHERE outpoint = $1", &[&outpoint])?;
                let same = stored
                    .is_some_and(|row| row.get::<_, Option<String>>(0).as_deref() == Some(registration));
                return Ok(if same { Registered::Same } else { Registered::Replay { last } });
            }
            // One registration per client at a time: the count and the index check hold.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&vault.policy_id])?;
            let existing = tx.query_opt("SELECT vault FROM vaults WHERE outpoint = $1", &[&outpoint])?;
            let outcome = match existing {
                Some(row) if same_transactions(row.get(0), vault)? => Registered::Same,
                Some(_) => Registered::Conflict,
                None => {
                    let index = vault.index as i64;
                    let used: bool = tx
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM vaults WHERE client = $1 AND vault_index = $2)",
                            &[&vault.policy_id as &(dyn ToSql + Sync), &index],
                        )?
                        .get(0);
                    let count: i64 = tx
                        .query_one("SELECT COUNT(*) FROM vaults WHERE client = $1", &[&vault.policy_id])?
                        .get(0);
                    if used {
                        Registered::IndexUsed
                    } else if count >= max_per_client as i64 {
                        Registered::TooMany
                    } else {
                        tx.execute(
                            "INSERT INTO vaults (outpoint, client, vault_index, registration, vault)
                             VALUES ($1, $2, $3, $4, $5)",
                            &[
                                &outpoint as &(dyn ToSql + Sync),
                                &vault.policy_id,
                                &index,
                                &registration,
                                &whole(vault)?,
                            ],
                        )?;
                        Registered::New
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        approval: &StoredApproval,
        body: &str,
    ) -> Result<NonceCheck, StoreError> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            let check = Self::nonce(&mut tx, key, nonce)?;
            if check == NonceCheck::Fresh {
                tx.execute(
                    "INSERT INTO approvals (unvault_txid, spend_txid, body, terms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (unvault_txid) DO UPDATE
                       SET spend_txid = EXCLUDED.spend_txid, body = EXCLUDED.body, terms = EXCLUDED.terms",
                    &[
                        &approval.unvault.to_string() as &(dyn ToSql + Sync),
                        &approval.terms.spend.to_string(),
                        &body,
                        &terms_json(&approval.terms)?,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(check)
        })
    }

    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<NonceCheck, StoreError> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            let check = Self::nonce(&mut tx, key, nonce)?;
            tx.commit()?;
            Ok(check)
        })
    }

    fn panic_used(&mut self, id: &str) -> Result<bool, StoreError> {
        self.run(|client| {
            Ok(client.query_one("SELECT EXISTS (SELECT 1 FROM panics WHERE id = $1)", &[&id])?.get(0))
        })
    }

    fn issue_token(&mut self, hash: &str) -> Result<(), StoreError> {
        self.run(|client| {
            client.execute("INSERT INTO tokens (hash) VALUES ($1)", &[&hash])?;
            Ok(())
        })
    }

    fn token(&mut self, hash: &str) -> Result<Option<Option<String>>, StoreError> {
        self.run(|c| {
            Ok(c.query_opt("SELECT client FROM tokens WHERE hash = $1", &[&hash])?.map(|r| r.get(0)))
        })
    }

    fn applied_policy(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        self.run(|c| Ok(c.query_opt("SELECT policy FROM clients WHERE id = $1", &[&id])?.map(|r| r.get(0))))
    }

    fn enroll(
        &mut self,
        hash: &str,
        record: &ClientRecord,
        replace: Option<&Action>,
    ) -> Result<Enrollment, StoreError> {
        let id = record.id.as_str();
        self.run(|client| {
            let mut tx = client.transaction()?;
            let token: Option<Option<String>> = tx
                .query_opt("SELECT client FROM tokens WHERE hash = $1 FOR UPDATE", &[&hash])?
                .map(|r| r.get(0));
            let outcome = match token {
                None => Enrollment::Unknown,
                Some(Some(c)) if c == id => Enrollment::Same,
                Some(Some(_)) => Enrollment::Used,
                Some(None) => {
                    tx.execute("UPDATE tokens SET client = $2 WHERE hash = $1", &[&hash, &id])?;
                    if let Some(alarm) = replace {
                        write_client(&mut tx, record)?;
                        insert_alarm(&mut tx, alarm)?;
                    } else {
                        let new = tx.execute(
                            "INSERT INTO clients (id, policy) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                            &[&id as &(dyn ToSql + Sync), &record.policy],
                        )?;
                        if new == 1 {
                            write_earlier(&mut tx, id, &record.earlier)?;
                        }
                    }
                    Enrollment::Pinned
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError> {
        let Step { vaults, recent, records, clients, panics, actions } = step;
        self.run(|client| {
            let mut tx = client.transaction()?;
            for (name, value) in records {
                tx.execute(
                    "INSERT INTO records (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[name as &(dyn ToSql + Sync), value],
                )?;
            }
            for c in clients {
                write_client(&mut tx, c)?;
            }
            for id in panics {
                tx.execute("INSERT INTO panics (id) VALUES ($1)", &[id])?;
            }
            for v in vaults {
                tx.execute("UPDATE vaults SET vault = $2 WHERE outpoint = $1", &[&v.outpoint.to_string() as &(dyn ToSql + Sync), &whole(v)?])?;
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
                        let row =
                            tx.query_one("INSERT INTO broadcasts (action) VALUES ($1) RETURNING id", &[&action_json(action)?])?;
                        broadcasts.push((row.get(0), action.clone()));
                    }
                    Action::Alarm { .. } => insert_alarm(&mut tx, action)?,
                }
            }
            tx.commit()?;
            Ok(broadcasts)
        })
    }

    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError> {
        self.run(|client| {
            let row =
                client.query_opt("SELECT vault FROM vaults WHERE outpoint = $1", &[&outpoint.to_string()])?;
            row.map(|r| read_vault(r.get(0))).transpose()
        })
    }

    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.run(|client| {
            client.execute("UPDATE broadcasts SET done = TRUE WHERE id = $1", &[&id])?;
            Ok(())
        })
    }

    fn undelivered_alarms(&mut self, endpoint: &str) -> Result<Vec<OutboxAlarm>, StoreError> {
        self.run(|client| {
            client
                .query(
                    "SELECT id, vault, client, kind, message, attempts FROM alarms a WHERE NOT delivered AND NOT EXISTS
                       (SELECT 1 FROM alarm_deliveries d WHERE d.alarm_id = a.id AND d.endpoint = $1) ORDER BY id",
                    &[&endpoint],
                )?
                .iter()
                .map(outbox_alarm)
                .collect()
        })
    }

    fn alarm_attempted(
        &mut self,
        id: i64,
        endpoint: &str,
        delivered: bool,
        endpoints: &[String],
    ) -> Result<(), StoreError> {
        self.run(|client| {
            let mut tx = client.transaction()?;
            tx.execute("UPDATE alarms SET attempts = attempts + 1 WHERE id = $1", &[&id])?;
            if delivered {
                tx.execute(
                    "INSERT INTO alarm_deliveries (alarm_id, endpoint) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&id as &(dyn ToSql + Sync), &endpoint],
                )?;
                let reached: Vec<String> = tx
                    .query("SELECT endpoint FROM alarm_deliveries WHERE alarm_id = $1", &[&id])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if endpoints.iter().all(|e| reached.contains(e)) {
                    tx.execute("UPDATE alarms SET delivered = TRUE WHERE id = $1", &[&id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn settle_alarms(&mut self, endpoints: &[String]) -> Result<u64, StoreError> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        let (list, count) = (endpoints.to_vec(), endpoints.len() as i64);
        self.run(|client| {
            Ok(client.execute(
                "UPDATE alarms a SET delivered = TRUE WHERE NOT delivered AND (SELECT COUNT(DISTINCT d.endpoint)
                   FROM alarm_deliveries d WHERE d.alarm_id = a.id AND d.endpoint = ANY($1)) = $2",
                &[&list as &(dyn ToSql + Sync), &count],
            )?)
        })
    }

    fn outbox_len(&mut self) -> Result<u64, StoreError> {
        self.run(|client| {
            Ok(client.query_one("SELECT COUNT(*) FROM alarms WHERE NOT delivered", &[])?.get::<_, i64>(0)
                as u64)
        })
    }

    fn client_alarms(&mut self, client: &str, limit: u32) -> Result<Vec<OutboxAlarm>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "(SELECT id, vault, client, kind, message, attempts FROM alarms
                     WHERE client = $1 ORDER BY id DESC LIMIT $2)
                 UNION ALL
                 (SELECT a.id, a.vault, a.client, a.kind, a.message, a.attempts
                     FROM alarms a JOIN vaults v ON v.outpoint = a.vault
                     WHERE v.client = $1 ORDER BY a.id DESC LIMIT $2)
                 ORDER BY id DESC",
                &[&client, &i64::from(limit)],
            )?;
            rows.iter().map(outbox_alarm).collect()
        })
    }
}

/// An alarm row selected as `id, vault, kind, message, attempts`.
fn outbox_alarm(r: &::postgres::Row) -> Result<OutboxAlarm, StoreError> {
    Ok(OutboxAlarm {
        id: r.get(0),
        vault: r.get(1),
        client: r.get(2),
        kind: read_kind(r.get(3))?,
        message: r.get(4),
        attempts: r.get::<_, i32>(5) as u32,
    })
}

/// Puts `alarm` (an [`Action::Alarm`]) in the outbox.
fn insert_alarm(tx: &mut ::postgres::Transaction<'_>, alarm: &Action) -> Result<(), StoreError> {
    if let Action::Alarm { vault, client, kind, message } = alarm {
        tx.execute(
            "INSERT INTO alarms (kind, message, vault, client) VALUES ($1, $2, $3, $4)",
            &[&kind.as_str() as &(dyn ToSql + Sync), message, &vault.map(|v| v.to_string()), client],
        )?;
    }
    Ok(())
}

/// Writes client `c` as it is now: its applied policy, its waiting change, the versions
/// before it.
fn write_client(tx: &mut ::postgres::Transaction<'_>, c: &ClientRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO clients (id, policy, pending) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET policy = EXCLUDED.policy, pending = EXCLUDED.pending",
        &[&c.id as &(dyn ToSql + Sync), &c.policy, &pending_json(&c.pending)?],
    )?;
    write_earlier(tx, &c.id, &c.earlier)
}

/// Replaces the versions kept before client `id`'s applied one.
fn write_earlier(
    tx: &mut ::postgres::Transaction<'_>,
    id: &str,
    earlier: &[String],
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM client_versions WHERE client = $1", &[&id])?;
    for (seq, text) in earlier.iter().enumerate() {
        tx.execute(
            "INSERT INTO client_versions (client, seq, policy) VALUES ($1, $2, $3)",
            &[&id as &(dyn ToSql + Sync), &(seq as i64), text],
        )?;
    }
    Ok(())
}
