//! The providers' store: a PostgreSQL schema with the same two tables as SQLite.

use postgres::{Client, NoTls};

use super::{Batch, OutboxEntry, Store};
use crate::error::StoreError;

/// A PostgreSQL schema.
pub struct PostgresStore {
    client: Client,
}

impl PostgresStore {
    /// Connects, creating the schema and its tables if missing.
    pub fn connect(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        // `schema` is checked to be letters, digits and _ when the configuration is parsed.
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET search_path TO {schema};
             CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, id));
             CREATE TABLE IF NOT EXISTS outbox (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS outbox_by_client ON outbox (((body::jsonb)->>'client'), id);
             CREATE TABLE IF NOT EXISTS deliveries (alarm_id BIGINT NOT NULL, sink TEXT NOT NULL,
                 PRIMARY KEY (alarm_id, sink));"
        ))?;
        Ok(PostgresStore { client })
    }
}

impl Store for PostgresStore {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        let row =
            self.client.query_opt("SELECT body FROM records WHERE kind = $1 AND id = $2", &[&kind, &id])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn list(&mut self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.client.query(
            "SELECT id, body FROM records WHERE kind = $1 AND left(id, length($2)) = $2 ORDER BY id",
            &[&kind, &prefix],
        )?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn count(&mut self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 = self.client.query_one("SELECT count(*) FROM records WHERE kind = $1", &[&kind])?.get(0);
        Ok(n as u64)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        for (kind, id, want) in &batch.expect {
            // FOR UPDATE: a concurrent writer of the same record waits for this transaction.
            let have: Option<String> = tx
                .query_opt("SELECT body FROM records WHERE kind = $1 AND id = $2 FOR UPDATE", &[kind, id])?
                .map(|r| r.get(0));
            if &have != want {
                return Err(StoreError::Conflict(format!("{kind} {id}")));
            }
        }
        for (kind, id, body) in &batch.put {
            tx.execute(
                "INSERT INTO records (kind, id, body) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                &[kind, id, body],
            )?;
        }
        for (kind, id) in &batch.delete {
            tx.execute("DELETE FROM records WHERE kind = $1 AND id = $2", &[kind, id])?;
        }
        for alarm in &batch.alarms {
            tx.execute("INSERT INTO outbox (body) VALUES ($1)", &[alarm])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn undelivered(&mut self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.client.query(
            "SELECT id, body FROM outbox WHERE id NOT IN (SELECT alarm_id FROM deliveries WHERE sink = $1)
             ORDER BY id LIMIT $2",
            &[&sink, &(limit as i64)],
        )?;
        Ok(rows.into_iter().map(|r| OutboxEntry { id: r.get(0), body: r.get(1) }).collect())
    }

    fn delivered(&mut self, id: i64, sink: &str) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO deliveries (alarm_id, sink) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&id, &sink],
        )?;
        Ok(())
    }

    fn client_alarms(&mut self, client: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = self.client.query(
            "SELECT id, body FROM outbox WHERE (body::jsonb)->>'client' = $1 ORDER BY id DESC LIMIT $2",
            &[&client, &(limit as i64)],
        )?;
        Ok(rows.into_iter().map(|r| OutboxEntry { id: r.get(0), body: r.get(1) }).collect())
    }

    fn outbox_depth(&mut self, sinks: &[String]) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM outbox o WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) s(sink)
                   WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alarm_id = o.id AND d.sink = s.sink))",
                &[&sinks],
            )?
            .get(0);
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    /// Against a real PostgreSQL (`VIGIL_TEST_POSTGRES`), in a schema of its own.
    #[test]
    fn postgres_passes_the_conformance_suite() {
        let Ok(url) = std::env::var("VIGIL_TEST_POSTGRES") else {
            assert!(std::env::var("VIGIL_REQUIRE_POSTGRES").is_err(), "VIGIL_TEST_POSTGRES is not set");
            return;
        };
        let schema = format!("cosigner_conformance_{}", std::process::id());
        let mut store = super::PostgresStore::connect(&url, &schema).unwrap();
        crate::store::conformance::run(&mut store);
        store.client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
    }
}
