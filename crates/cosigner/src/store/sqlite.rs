//! The embedded store: one SQLite file, WAL, full sync; commits grouped by one writer.

use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{Batch, OutboxEntry, Pool, Store};
use crate::error::StoreError;

const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (kind, id));
    CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS outbox_by_client ON outbox (json_extract(body, '$.client'), id);
    CREATE TABLE IF NOT EXISTS deliveries (alarm_id INTEGER NOT NULL, sink TEXT NOT NULL,
        PRIMARY KEY (alarm_id, sink));
    CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS pending (sink TEXT NOT NULL, alarm_id INTEGER NOT NULL,
        PRIMARY KEY (sink, alarm_id));";

/// The embedded store: readers from a pool; one writer thread that commits every batch
/// waiting in one transaction (one sync for the group), each batch under its own savepoint
/// so a failed precondition undoes that batch alone.
pub struct SqliteStore {
    readers: Pool<Connection>,
    writer: Mutex<mpsc::Sender<Write>>,
}

/// Most connections reading at once.
const READERS: usize = 8;
/// Most batches in one group commit.
const GROUP: usize = 256;

/// What the writer thread is asked to do, and where to answer.
enum Write {
    Batch(Batch, mpsc::SyncSender<Result<(), StoreError>>),
    Delivered(i64, String, mpsc::SyncSender<Result<(), StoreError>>),
    Sinks(Vec<String>, mpsc::SyncSender<Result<(), StoreError>>),
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let writer = connect(path)?;
        writer.execute_batch(TABLES)?;
        let reader = connect(path)?;
        let (send, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("cosigner-store-writer".into())
            .spawn(move || write_loop(writer, jobs))
            .map_err(|e| StoreError::Unavailable(format!("the store's writer thread: {e}")))?;
        let path = path.to_owned();
        Ok(SqliteStore {
            readers: Pool::new(READERS, reader, move || connect(&path)),
            writer: Mutex::new(send),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.readers.with(|_, _| true, |conn| Ok(f(conn)?))
    }

    fn write(
        &self,
        job: impl FnOnce(mpsc::SyncSender<Result<(), StoreError>>) -> Write,
    ) -> Result<(), StoreError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let gone = || StoreError::Unavailable("the store's writer thread stopped".into());
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).send(job(answer)).map_err(|_| gone())?;
        answered.recv().map_err(|_| gone())?
    }
}

/// The writer thread: takes whatever is waiting, commits it as one group, answers each.
fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Write>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group);
        for (job, result) in group.into_iter().zip(results) {
            let (Write::Batch(_, answer) | Write::Delivered(_, _, answer) | Write::Sinks(_, answer)) = job;
            let _ = answer.send(result);
        }
    }
}

/// Each job's own result, or every job's failure if the group's commit failed.
fn commit_group(conn: &mut Connection, group: &[Write]) -> Vec<Result<(), StoreError>> {
    let failed = |e: &dyn std::fmt::Display| {
        group.iter().map(|_| Err(StoreError::Unavailable(format!("sqlite: {e}")))).collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return failed(&e),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let result = tx.savepoint().map_err(StoreError::from).and_then(|mut sp| {
            // Dropped without commit, the savepoint rolls back: that job writes nothing.
            sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
            match job {
                Write::Batch(batch, _) => apply(&sp, batch)?,
                Write::Delivered(id, sink, _) => {
                    sp.prepare_cached(
                        "INSERT OR IGNORE INTO deliveries (alarm_id, sink) VALUES (?1, ?2)",
                    )?
                    .execute(params![id, sink])?;
                    sp.prepare_cached("DELETE FROM pending WHERE sink = ?1 AND alarm_id = ?2")?.execute(params![sink, id])?;
                }
                Write::Sinks(sinks, _) => {
                    for sink in sinks {
                        sp.prepare_cached("INSERT OR IGNORE INTO sinks (name) VALUES (?1)")?.execute([sink])?;
                        sp.prepare_cached(
                            "INSERT OR IGNORE INTO pending (sink, alarm_id) SELECT ?1, o.id FROM outbox o
                               WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alarm_id = o.id AND d.sink = ?1)",
                        )?
                        .execute([sink])?;
                    }
                    // Delivered by a release that kept no such rows: not owed again.
                    sp.prepare_cached(
                        "DELETE FROM pending WHERE EXISTS (SELECT 1 FROM deliveries d
                           WHERE d.alarm_id = pending.alarm_id AND d.sink = pending.sink)",
                    )?
                    .execute([])?;
                }
            }
            sp.commit()?;
            Ok(())
        });
        // An I/O or full-disk error can make SQLite roll the whole transaction back; a
        // later SAVEPOINT would then open and commit a transaction of its own. Every job of
        // the group fails instead.
        if result.is_err() && tx.is_autocommit() {
            return failed(&"the group's transaction was rolled back");
        }
        results.push(result);
    }
    let outcome = match tx.commit() {
        Ok(()) => results,
        Err(e) => failed(&e),
    };
    // Never left inside a failed transaction: the next group could not begin.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

/// One batch's checks and writes, inside the group's transaction.
fn apply(conn: &Connection, batch: &Batch) -> Result<(), StoreError> {
    for (kind, id, want) in &batch.expect {
        let have: Option<String> = conn
            .prepare_cached("SELECT body FROM records WHERE kind = ?1 AND id = ?2")?
            .query_row(params![kind, id], |r| r.get(0))
            .optional()?;
        if &have != want {
            return Err(StoreError::Conflict(format!("{kind} {id}")));
        }
    }
    for (kind, id, body) in &batch.put {
        conn.prepare_cached(
            "INSERT INTO records (kind, id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
        )?
        .execute(params![kind, id, body])?;
    }
    for (kind, id) in &batch.delete {
        conn.prepare_cached("DELETE FROM records WHERE kind = ?1 AND id = ?2")?.execute(params![kind, id])?;
    }
    for alarm in &batch.alarms {
        conn.prepare_cached("INSERT INTO outbox (body) VALUES (?1)")?.execute([alarm])?;
        let id = conn.last_insert_rowid();
        conn.prepare_cached("INSERT INTO pending (sink, alarm_id) SELECT name, ?1 FROM sinks")?
            .execute([id])?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT body FROM records WHERE kind = ?1 AND id = ?2")?
                .query_row(params![kind, id], |r| r.get(0))
                .optional()
        })
    }

    fn list(&self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            // A range of the primary key first (ids compare bytewise), so a client's records
            // are found without reading every client's; the prefix test keeps it exact.
            let mut stmt = conn.prepare_cached(
                "SELECT id, body FROM records WHERE kind = ?1 AND id >= ?2 AND id < ?3
                   AND substr(id, 1, length(?2)) = ?2 ORDER BY id",
            )?;
            let end = format!("{prefix}\u{10FFFF}");
            let rows = stmt.query_map(params![kind, prefix, end], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn count(&self, kind: &str) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM records WHERE kind = ?1", [kind], |r| r.get::<_, i64>(0))
        })
        .map(|n| n as u64)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.write(|answer| Write::Batch(batch.clone(), answer))
    }

    fn deliver_to(&self, sinks: &[String]) -> Result<(), StoreError> {
        self.write(|answer| Write::Sinks(sinks.to_vec(), answer))
    }

    fn undelivered(&self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT o.id, o.body FROM pending p JOIN outbox o ON o.id = p.alarm_id WHERE p.sink = ?1
                 ORDER BY p.alarm_id LIMIT ?2",
            )?;
            let rows =
                stmt.query_map(params![sink, limit], |r| Ok(OutboxEntry { id: r.get(0)?, body: r.get(1)? }))?;
            rows.collect()
        })
    }

    fn undelivered_by_client(&self, sink: &str, per_client: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, body FROM (SELECT o.id, o.body, row_number() OVER
                   (PARTITION BY json_extract(o.body, '$.client') ORDER BY o.id) AS n
                   FROM pending p JOIN outbox o ON o.id = p.alarm_id WHERE p.sink = ?1)
                 WHERE n <= ?2 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![sink, per_client], |r| {
                Ok(OutboxEntry { id: r.get(0)?, body: r.get(1)? })
            })?;
            rows.collect()
        })
    }

    fn delivered(&self, id: i64, sink: &str) -> Result<(), StoreError> {
        self.write(|answer| Write::Delivered(id, sink.to_owned(), answer))
    }

    fn client_alarms(
        &self,
        client: &str,
        kinds: Option<&[&str]>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let kinds = kinds.map(|k| serde_json::to_string(k).expect("strings"));
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, body FROM outbox WHERE json_extract(body, '$.client') = ?1
                   AND (?2 IS NULL OR json_extract(body, '$.kind') IN (SELECT value FROM json_each(?2)))
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![client, kinds, limit], |r| {
                Ok(OutboxEntry { id: r.get(0)?, body: r.get(1)? })
            })?;
            rows.collect()
        })
    }

    fn outbox_depth(&self, sinks: &[String]) -> Result<u64, StoreError> {
        let sinks = serde_json::to_string(sinks).expect("strings");
        self.read(|conn| {
            conn.query_row(
                "SELECT count(DISTINCT alarm_id) FROM pending WHERE sink IN (SELECT value FROM json_each(?1))",
                [sinks],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as u64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        crate::store::conformance::run(&store);
    }
}
