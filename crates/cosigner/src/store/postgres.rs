//! The providers' store: a PostgreSQL schema with the same two tables as SQLite.

use std::collections::{BTreeMap, HashMap};

use postgres::{Client, IsolationLevel, NoTls, Statement};

use super::{Batch, OutboxEntry, Pool, Store};
use crate::error::StoreError;

/// A PostgreSQL schema, through a pool of connections: concurrent requests run their own
/// transactions, and the server syncs their commits together.
pub struct PostgresStore {
    pool: Pool<Connection>,
}

/// Most connections open at once (PostgreSQL's default limit is 100 for the whole server).
const CONNECTIONS: usize = 16;

/// One connection, with the statements every request runs prepared once: a query given as
/// text is parsed by the server in a round trip of its own, each time it runs.
struct Connection {
    client: Client,
    get: Statement,
    list: Statement,
    locks: Statement,
    read_many: Statement,
    put_many: Statement,
    delete: Statement,
    outbox: Statement,
    pending: Statement,
}

/// Whether a connection goes back to the pool: not after the server closed it, nor after
/// any error of the server's. A prepared statement can fail for good on a connection still
/// open (a table altered under it, a pooler that lost it); a fresh connection prepares anew.
fn usable<T>(c: &Connection, result: &Result<T, StoreError>) -> bool {
    !c.client.is_closed() && !matches!(result, Err(StoreError::Postgres(_)))
}

fn connect(url: &str, schema: &str) -> Result<Connection, StoreError> {
    let mut client = Client::connect(url, NoTls)?;
    // `schema` is checked to be letters, digits and _ when the configuration is parsed.
    client.batch_execute(&format!("SET search_path TO {schema}"))?;
    prepared(client)
}

/// `client` (its search path set) with the request path's statements prepared.
fn prepared(mut client: Client) -> Result<Connection, StoreError> {
    Ok(Connection {
        get: client.prepare("SELECT body FROM records WHERE kind = $1 AND id = $2")?,
        // A prefix match the pattern index answers, whatever the database's collation.
        list: client.prepare("SELECT id, body FROM records WHERE kind = $1 AND id LIKE $2 ORDER BY id")?,
        // A function scan yields the array in its order, and each row's lock is taken as
        // the row is produced: the locks are taken in the (sorted) order given.
        locks: client.prepare("SELECT pg_advisory_xact_lock(l) FROM unnest($1::bigint[]) AS l")?,
        read_many: client.prepare(
            "SELECT e.kind, e.id, r.body FROM unnest($1::text[], $2::text[]) AS e(kind, id)
             LEFT JOIN records r ON r.kind = e.kind AND r.id = e.id",
        )?,
        put_many: client.prepare(
            "INSERT INTO records (kind, id, body) SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
        )?,
        delete: client.prepare("DELETE FROM records WHERE kind = $1 AND id = $2")?,
        outbox: client.prepare("INSERT INTO outbox (body) VALUES ($1) RETURNING id")?,
        pending: client.prepare("INSERT INTO pending (sink, alarm_id) SELECT name, $1 FROM sinks")?,
        client,
    })
}

/// The advisory lock guarding one record: the first 8 bytes of sha256(kind, id), the same
/// in every process that opens the schema.
fn record_lock(kind: &str, id: &str) -> i64 {
    use vigil_policy::bitcoin::hashes::{sha256, Hash};
    let digest = sha256::Hash::hash(format!("{kind}\0{id}").as_bytes());
    i64::from_be_bytes(digest.to_byte_array()[..8].try_into().expect("8 bytes"))
}

impl PostgresStore {
    /// Connects, creating the schema and its tables if missing.
    pub fn connect(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET search_path TO {schema};
             CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, id));
             CREATE INDEX IF NOT EXISTS records_by_prefix ON records (kind, id text_pattern_ops);
             CREATE TABLE IF NOT EXISTS outbox (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS outbox_by_client ON outbox (((body::jsonb)->>'client'), id);
             CREATE TABLE IF NOT EXISTS deliveries (alarm_id BIGINT NOT NULL, sink TEXT NOT NULL,
                 PRIMARY KEY (alarm_id, sink));
             CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS pending (sink TEXT NOT NULL, alarm_id BIGINT NOT NULL,
                 PRIMARY KEY (sink, alarm_id));"
        ))?;
        // Records are JSON of a few kilobytes, compressed on every write: with the server's
        // default (pglz) that was a fifth of the server's CPU under load. lz4 where the server
        // has it (PostgreSQL 14 and later, built with it); otherwise the default stays.
        if let Err(e) = client.batch_execute("ALTER TABLE records ALTER COLUMN body SET COMPRESSION lz4") {
            tracing::info!(error = %e, "the store keeps the server's default compression");
        }
        let first = prepared(client)?;
        let (url, schema) = (url.to_owned(), schema.to_owned());
        Ok(PostgresStore { pool: Pool::new(CONNECTIONS, first, move || connect(&url, &schema)) })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.pool.with(usable, |c| Ok(f(c)?))
    }
}

impl Store for PostgresStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        let row = self.with(|c| c.client.query_opt(&c.get, &[&kind, &id]))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn list(&self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.with(|c| c.client.query(&c.list, &[&kind, &like_prefix(prefix)]))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn count(&self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .with(|c| c.client.query_one("SELECT count(*) FROM records WHERE kind = $1", &[&kind]))?
            .get(0);
        Ok(n as u64)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        // Every record the batch reads or writes is locked first, in one order (no deadlock):
        // a concurrent batch on any of them waits, then reads what this one committed. A row
        // lock alone would not cover a record that must not exist yet.
        let mut locks: Vec<i64> = batch
            .expect
            .iter()
            .map(|(k, i, _)| record_lock(k, i))
            .chain(batch.put.iter().map(|(k, i, _)| record_lock(k, i)))
            .chain(batch.delete.iter().map(|(k, i)| record_lock(k, i)))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        self.pool.with(usable, |c| {
            // READ COMMITTED whatever the server's default: each check below must see
            // what the previous holder of its lock committed, not a snapshot older than it.
            let mut tx =
                c.client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start()?;
            // A statement each for the locks, the checks and the writes, not one per record:
            // each statement is a round trip, with the client's locks held.
            if !locks.is_empty() {
                tx.execute(&c.locks, &[&locks])?;
            }
            if !batch.expect.is_empty() {
                let kinds: Vec<&str> = batch.expect.iter().map(|(k, _, _)| *k).collect();
                let ids: Vec<&str> = batch.expect.iter().map(|(_, i, _)| i.as_str()).collect();
                let have: HashMap<(String, String), Option<String>> = tx
                    .query(&c.read_many, &[&kinds, &ids])?
                    .into_iter()
                    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                    .collect();
                for (kind, id, want) in &batch.expect {
                    if have.get(&((*kind).to_owned(), id.clone())) != Some(want) {
                        return Err(StoreError::Conflict(format!("{kind} {id}")));
                    }
                }
            }
            // One row per record (the last write of it wins, as written one by one): an
            // upsert may not touch a row twice.
            let mut puts: BTreeMap<(&str, &str), &str> = BTreeMap::new();
            for (kind, id, body) in &batch.put {
                puts.insert((kind, id), body);
            }
            if !puts.is_empty() {
                let kinds: Vec<&str> = puts.keys().map(|(k, _)| *k).collect();
                let ids: Vec<&str> = puts.keys().map(|(_, i)| *i).collect();
                let bodies: Vec<&str> = puts.values().copied().collect();
                tx.execute(&c.put_many, &[&kinds, &ids, &bodies])?;
            }
            for (kind, id) in &batch.delete {
                tx.execute(&c.delete, &[kind, id])?;
            }
            for alarm in &batch.alarms {
                let id: i64 = tx.query_one(&c.outbox, &[alarm])?.get(0);
                tx.execute(&c.pending, &[&id])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn deliver_to(&self, sinks: &[String]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx =
                c.client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start()?;
            // No alarm commits meanwhile (another process's): each either sees the new sinks
            // or committed before the backfill below reads the outbox.
            tx.batch_execute("LOCK TABLE outbox IN EXCLUSIVE MODE")?;
            for sink in sinks {
                tx.execute("INSERT INTO sinks (name) VALUES ($1) ON CONFLICT DO NOTHING", &[sink])?;
                tx.execute(
                    "INSERT INTO pending (sink, alarm_id) SELECT $1, o.id FROM outbox o
                       WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alarm_id = o.id AND d.sink = $1)
                     ON CONFLICT DO NOTHING",
                    &[sink],
                )?;
            }
            // Delivered by a release that kept no such rows: not owed again.
            tx.execute(
                "DELETE FROM pending p USING deliveries d WHERE d.alarm_id = p.alarm_id AND d.sink = p.sink",
                &[],
            )?;
            tx.commit()
        })?;
        Ok(())
    }

    fn undelivered(&self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.with(|c| {
            c.client.query(
                "SELECT o.id, o.body FROM pending p JOIN outbox o ON o.id = p.alarm_id WHERE p.sink = $1
                 ORDER BY p.alarm_id LIMIT $2",
                &[&sink, &(limit as i64)],
            )
        })?;
        Ok(rows.into_iter().map(|r| OutboxEntry { id: r.get(0), body: r.get(1) }).collect())
    }

    fn undelivered_by_client(&self, sink: &str, per_client: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.with(|c| {
            c.client.query(
                "SELECT id, body FROM (SELECT o.id, o.body, row_number() OVER
                   (PARTITION BY (o.body::jsonb)->>'client' ORDER BY o.id) AS n
                   FROM pending p JOIN outbox o ON o.id = p.alarm_id WHERE p.sink = $1) AS w
                 WHERE n <= $2 ORDER BY id",
                &[&sink, &(per_client as i64)],
            )
        })?;
        Ok(rows.into_iter().map(|r| OutboxEntry { id: r.get(0), body: r.get(1) }).collect())
    }

    fn delivered(&self, id: i64, sink: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute(
                "INSERT INTO deliveries (alarm_id, sink) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id, &sink],
            )?;
            tx.execute("DELETE FROM pending WHERE sink = $1 AND alarm_id = $2", &[&sink, &id])?;
            tx.commit()
        })?;
        Ok(())
    }

    fn client_alarms(
        &self,
        client: &str,
        kinds: Option<&[&str]>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.with(|c| {
            c.client.query(
                "SELECT id, body FROM outbox WHERE (body::jsonb)->>'client' = $1
                   AND ($2::text[] IS NULL OR (body::jsonb)->>'kind' = ANY($2::text[]))
                 ORDER BY id DESC LIMIT $3",
                &[&client, &kinds, &(limit as i64)],
            )
        })?;
        Ok(rows.into_iter().map(|r| OutboxEntry { id: r.get(0), body: r.get(1) }).collect())
    }

    fn outbox_depth(&self, sinks: &[String]) -> Result<u64, StoreError> {
        let n: i64 = self
            .with(|c| {
                c.client.query_one(
                    "SELECT count(DISTINCT alarm_id) FROM pending WHERE sink = ANY($1::text[])",
                    &[&sinks],
                )
            })?
            .get(0);
        Ok(n as u64)
    }
}

/// `prefix` as a LIKE pattern matching what starts with it (its wildcards escaped).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    /// Against a real PostgreSQL (`VIGIL_TEST_POSTGRES`), in a schema of its own.
    #[test]
    fn postgres_passes_the_conformance_suite() {
        let Some(url) = vigil_testenv::process::postgres() else { return };
        let schema = vigil_testenv::process::unique_schema("cosigner_conformance");
        let store = super::PostgresStore::connect(&url, &schema).unwrap();
        crate::store::conformance::run(&store);
        // The records' bodies are compressed with lz4 where the server has it (14 and later).
        let version: i32 = store
            .with(|c| c.client.query_one("SELECT current_setting('server_version_num')::int", &[]))
            .unwrap()
            .get(0);
        if version >= 140000 {
            let compression: String = store
                .with(|c| {
                    c.client.query_one(
                        "SELECT attcompression::text FROM pg_attribute
                           WHERE attrelid = 'records'::regclass AND attname = 'body'",
                        &[],
                    )
                })
                .unwrap()
                .get(0);
            assert_eq!(compression, "l", "the body column's compression");
        }
        store.with(|c| c.client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))).unwrap();
    }

    /// A prepared statement can fail for good on a connection still open: here the table is
    /// altered under it, and the server refuses every later run of that plan. That costs the
    /// one call that saw it; the connection is not pooled again, and the next call prepares
    /// anew on a fresh one.
    #[test]
    fn a_connection_whose_statements_broke_is_not_pooled_again() {
        use crate::store::{Batch, Store};
        let Some(url) = vigil_testenv::process::postgres() else { return };
        let schema = vigil_testenv::process::unique_schema("cosigner_broken_plan");
        let store = super::PostgresStore::connect(&url, &schema).unwrap();
        store.commit(Batch::default().put("client", "a", "body")).unwrap();
        assert_eq!(store.get("client", "a").unwrap().as_deref(), Some("body"));
        let mut other = super::Client::connect(&url, super::NoTls).unwrap();
        other.batch_execute(&format!("ALTER TABLE {schema}.records ALTER COLUMN body TYPE varchar")).unwrap();
        let broken = store.get("client", "a").unwrap_err();
        assert!(format!("{broken:?}").contains("cached plan"), "{broken:?}");
        for _ in 0..3 {
            assert_eq!(store.get("client", "a").unwrap().as_deref(), Some("body"));
        }
        other.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
    }
}
