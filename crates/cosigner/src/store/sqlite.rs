//! The embedded store: one SQLite file, WAL, full sync.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Batch, OutboxEntry, Store};
use crate::error::StoreError;

const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (kind, id));
    CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS outbox_by_client ON outbox (json_extract(body, '$.client'), id);
    CREATE TABLE IF NOT EXISTS deliveries (alarm_id INTEGER NOT NULL, sink TEXT NOT NULL,
        PRIMARY KEY (alarm_id, sink));";

/// The embedded store.
pub struct SqliteStore {
    conn: rusqlite::Connection,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        conn.execute_batch(TABLES)?;
        Ok(SqliteStore { conn })
    }
}

impl Store for SqliteStore {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT body FROM records WHERE kind = ?1 AND id = ?2", params![kind, id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn list(&mut self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body FROM records WHERE kind = ?1 AND substr(id, 1, length(?2)) = ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![kind, prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count(&mut self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 =
            self.conn.query_row("SELECT count(*) FROM records WHERE kind = ?1", [kind], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (kind, id, want) in &batch.expect {
            let have: Option<String> = tx
                .query_row("SELECT body FROM records WHERE kind = ?1 AND id = ?2", params![kind, id], |r| {
                    r.get(0)
                })
                .optional()?;
            if &have != want {
                return Err(StoreError::Conflict(format!("{kind} {id}")));
            }
        }
        for (kind, id, body) in &batch.put {
            tx.execute(
                "INSERT INTO records (kind, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                params![kind, id, body],
            )?;
        }
        for (kind, id) in &batch.delete {
            tx.execute("DELETE FROM records WHERE kind = ?1 AND id = ?2", params![kind, id])?;
        }
        for alarm in &batch.alarms {
            tx.execute("INSERT INTO outbox (body) VALUES (?1)", [alarm])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn undelivered(&mut self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body FROM outbox WHERE id NOT IN (SELECT alarm_id FROM deliveries WHERE sink = ?1)
             ORDER BY id LIMIT ?2",
        )?;
        let rows =
            stmt.query_map(params![sink, limit], |r| Ok(OutboxEntry { id: r.get(0)?, body: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delivered(&mut self, id: i64, sink: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO deliveries (alarm_id, sink) VALUES (?1, ?2)",
            params![id, sink],
        )?;
        Ok(())
    }

    fn client_alarms(&mut self, client: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, body FROM outbox WHERE json_extract(body, '$.client') = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows =
            stmt.query_map(params![client, limit], |r| Ok(OutboxEntry { id: r.get(0)?, body: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn outbox_depth(&mut self, sinks: &[String]) -> Result<u64, StoreError> {
        let sinks = serde_json::to_string(sinks).expect("strings");
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM outbox o WHERE EXISTS (SELECT 1 FROM json_each(?1) s
               WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alarm_id = o.id AND d.sink = s.value))",
            [sinks],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = super::SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        crate::store::conformance::run(&mut store);
    }
}
