//! The co-signer's durable state, behind one trait with two implementations: embedded SQLite
//! by default, PostgreSQL for providers. Both hold the same two tables: records (JSON
//! documents by kind and id) and the alarm outbox. A request's effects (its nonce, the
//! records it changes, the alarms it raises) commit in one [`Batch`], atomically, before the
//! request is acknowledged; the batch's preconditions make a lost race a clean refusal.
//!
//! A store serves many request threads at once: reads from a pool of connections, and
//! commits grouped (SQLite: one writer commits every batch waiting, each under its own
//! savepoint, with one sync; PostgreSQL: concurrent transactions, which the server syncs
//! together), so one request's sync does not hold up every other client's.

use std::sync::{Condvar, Mutex};

use crate::error::StoreError;

mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

/// The kinds of record.
pub mod kind {
    /// A client: its pinned policy, lockdown, heartbeat secrets' hashes.
    pub const CLIENT: &str = "client";
    /// An enrollment token (by its sha256).
    pub const TOKEN: &str = "token";
    /// The last nonce of a signing key.
    pub const NONCE: &str = "nonce";
    /// A vault the co-signer took part in (by V's outpoint).
    pub const VAULT: &str = "vault";
    /// A vault some tower has not acknowledged yet (by V's outpoint; its client's id): what
    /// the background pass retries, without reading every vault.
    pub const UNREGISTERED: &str = "unregistered";
    /// A client whose policy change waits for its height (by client id; the height): what the
    /// background pass applies, without reading every client.
    pub const WAITING_CHANGE: &str = "waiting_change";
    /// An intake coin committed to one funding (by its outpoint).
    pub const INTAKE: &str = "intake";
    /// A spend request (by client id and sequence number).
    pub const SPEND: &str = "spend";
    /// A vault index taken (by client id and index).
    pub const VAULT_INDEX: &str = "vault_index";
    /// Orders every tower of a client must acknowledge (by client id).
    pub const ORDERS: &str = "orders";
    /// Guardians' signatures gathered for a panic (by client, id and window).
    pub const PANIC_VOTES: &str = "panic_votes";
    /// Guardians' signatures gathered for a policy change (by client and the file's sha256).
    pub const POLICY_VOTES: &str = "policy_votes";
    /// A panic already relayed (by client id and panic id).
    pub const PANIC: &str = "panic";
    /// Small counters (the next account number).
    pub const META: &str = "meta";
    /// A tower not given a vault, kept by the towers watching it (by V's outpoint and the
    /// tower's name; the name): its refusal of the vault's approvals is expected, not alarmed.
    pub const KEPT_FROM: &str = "kept_from";
}

/// Writes that commit together, or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Each record must hold exactly this (`None`: must not exist), or nothing is written.
    pub expect: Vec<(&'static str, String, Option<String>)>,
    /// Records written (inserted or replaced).
    pub put: Vec<(&'static str, String, String)>,
    /// Records deleted (after the writes).
    pub delete: Vec<(&'static str, String)>,
    /// Alarms appended to the outbox (JSON).
    pub alarms: Vec<String>,
}

impl Batch {
    /// Requires `kind/id` to hold `value` (or not to exist).
    pub fn expect(&mut self, kind: &'static str, id: impl Into<String>, value: Option<String>) -> &mut Self {
        self.expect.push((kind, id.into(), value));
        self
    }

    /// Writes `kind/id`.
    pub fn put(&mut self, kind: &'static str, id: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.put.push((kind, id.into(), value.into()));
        self
    }

    /// Deletes `kind/id`.
    pub fn delete(&mut self, kind: &'static str, id: impl Into<String>) -> &mut Self {
        self.delete.push((kind, id.into()));
        self
    }

    /// Queues an alarm.
    pub fn alarm(&mut self, alarm: impl Into<String>) -> &mut Self {
        self.alarms.push(alarm.into());
        self
    }
}

/// An alarm in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its sequence number.
    pub id: i64,
    /// Its JSON.
    pub body: String,
}

/// Builds an index a store of an earlier release lacks, once (the mark `done` in
/// [`kind::META`] says it was): reads every record of kind `read` a single time, and puts under
/// `index` what `entry` makes of each (id, value), if anything. A record that does not parse is
/// logged and skipped: one must not keep every client from its co-signer.
pub(crate) fn index_once<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    done: &'static str,
    read: &'static str,
    index: &'static str,
    entry: impl Fn(&str, T) -> Option<(String, String)>,
) -> Result<(), StoreError> {
    if store.get(kind::META, done)?.is_some() {
        return Ok(());
    }
    let mut batch = Batch::default();
    for (id, body) in store.list(read, "")? {
        match serde_json::from_str::<T>(&body) {
            Ok(record) => {
                if let Some((key, value)) = entry(&id, record) {
                    batch.put(index, key, value);
                }
            }
            Err(e) => tracing::error!(kind = %read, %id, error = %e, "a stored record does not parse"),
        }
    }
    batch.expect(kind::META, done, None).put(kind::META, done, "1");
    match store.commit(&batch) {
        // Another co-signer on the same database indexed it first.
        Err(_) if store.get(kind::META, done)?.is_some() => Ok(()),
        committed => committed,
    }
}

/// The co-signer's store, shared by every request thread.
pub trait Store: Send + Sync {
    /// One record.
    fn get(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Every record of `kind` whose id starts with `prefix`, by id.
    fn list(&self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// How many records of `kind` there are.
    fn count(&self, kind: &str) -> Result<u64, StoreError>;
    /// Commits `batch` atomically and durably; [`StoreError::Conflict`] if a precondition
    /// fails (then nothing of it is written).
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Names sinks alarms go to, at start: each alarm committed from now on waits for each
    /// of them, and so does every stored alarm one of them has not had (all of them, for a
    /// sink new to this store). A sink named once stays owed its alarms (another co-signer
    /// process on the same database may deliver to it). Reading what a sink has not had then
    /// costs what it has not had, not every alarm ever raised.
    fn deliver_to(&self, sinks: &[String]) -> Result<(), StoreError>;
    /// Alarms `sink` has not had yet, oldest first.
    fn undelivered(&self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Alarms `sink` has not had yet, at most `per_client` of each client, oldest first: one
    /// client's backlog never hides another's.
    fn undelivered_by_client(&self, sink: &str, per_client: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Records that `sink` has alarm `id`.
    fn delivered(&self, id: i64, sink: &str) -> Result<(), StoreError>;
    /// Alarms some of `sinks` has not had.
    fn outbox_depth(&self, sinks: &[String]) -> Result<u64, StoreError>;
    /// The latest `limit` alarms about `client` (of the kinds `kinds` only, if given),
    /// delivered or not, newest first: its guardians' feed.
    fn client_alarms(
        &self,
        client: &str,
        kinds: Option<&[&str]>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
}

/// Connections handed to one thread at a time: at most `max` open, opened when first
/// needed, a broken one dropped.
pub(crate) struct Pool<C> {
    idle: Mutex<(Vec<C>, usize)>,
    freed: Condvar,
    max: usize,
    open: Box<dyn Fn() -> Result<C, StoreError> + Send + Sync>,
}

impl<C> Pool<C> {
    pub(crate) fn new(
        max: usize,
        first: C,
        open: impl Fn() -> Result<C, StoreError> + Send + Sync + 'static,
    ) -> Pool<C> {
        Pool { idle: Mutex::new((vec![first], 1)), freed: Condvar::new(), max, open: Box::new(open) }
    }

    /// Runs `f` on a connection; `healthy` says, from the connection and what `f` gave,
    /// whether it may be used again afterwards.
    pub(crate) fn with<T>(
        &self,
        healthy: impl Fn(&C, &Result<T, StoreError>) -> bool,
        f: impl FnOnce(&mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = idle.0.pop() {
                    break c;
                }
                if idle.1 < self.max {
                    idle.1 += 1;
                    drop(idle);
                    match (self.open)() {
                        Ok(c) => break c,
                        Err(e) => {
                            self.release(None);
                            return Err(e);
                        }
                    }
                }
                idle = self.freed.wait(idle).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panic in `f` gives its slot back too.
        struct Slot<'p, C> {
            pool: &'p Pool<C>,
            conn: Option<C>,
        }
        impl<C> Drop for Slot<'_, C> {
            fn drop(&mut self) {
                self.pool.release(self.conn.take());
            }
        }
        let mut slot = Slot { pool: self, conn: None };
        let result = f(&mut conn);
        slot.conn = healthy(&conn, &result).then_some(conn);
        result
    }

    fn release(&self, conn: Option<C>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match conn {
            Some(c) => idle.0.push(c),
            None => idle.1 -= 1,
        }
        drop(idle);
        self.freed.notify_one();
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! What every store must do; run against SQLite here and against a real PostgreSQL in
    //! the crate's tests.
    use super::*;

    /// Runs every check against a fresh store.
    pub fn run(store: &dyn Store) {
        let mut b = Batch::default();
        b.put(kind::CLIENT, "a", "1")
            .put(kind::CLIENT, "ab", "2")
            .put(kind::VAULT, "a", "3")
            .alarm("{\"x\":1}");
        store.commit(&b).unwrap();
        assert_eq!(store.get(kind::CLIENT, "a").unwrap().as_deref(), Some("1"));
        assert_eq!(store.get(kind::CLIENT, "zz").unwrap(), None);
        assert_eq!(store.list(kind::CLIENT, "a").unwrap().len(), 2);
        assert_eq!(store.list(kind::CLIENT, "ab").unwrap(), vec![("ab".to_owned(), "2".to_owned())]);
        assert_eq!(store.count(kind::CLIENT).unwrap(), 2);
        // A prefix is matched as it is written: no wildcards, nothing of a neighbouring kind.
        let mut listed = Batch::default();
        for id in ["x_1", "x%2", "xa1", "x\\3", "y"] {
            listed.put("listed", id, id);
        }
        store.commit(&listed).unwrap();
        let ids = |prefix: &str| -> Vec<String> {
            store.list("listed", prefix).unwrap().into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(ids("x_"), ["x_1"]);
        assert_eq!(ids("x%"), ["x%2"]);
        assert_eq!(ids("x\\"), ["x\\3"]);
        assert_eq!(ids("").len(), 5);
        assert_eq!(ids("z"), Vec::<String>::new());
        // A failed precondition writes nothing, alarms included.
        let mut bad = Batch::default();
        bad.expect(kind::CLIENT, "a", Some("0".into())).put(kind::CLIENT, "c", "9").alarm("{}");
        assert!(matches!(store.commit(&bad), Err(StoreError::Conflict(_))));
        assert_eq!(store.get(kind::CLIENT, "c").unwrap(), None);
        let mut absent = Batch::default();
        absent.expect(kind::CLIENT, "a", None);
        assert!(matches!(store.commit(&absent), Err(StoreError::Conflict(_))));
        let mut ok = Batch::default();
        ok.expect(kind::CLIENT, "a", Some("1".into())).expect(kind::CLIENT, "n", None).put(
            kind::CLIENT,
            "a",
            "4",
        );
        store.commit(&ok).unwrap();
        assert_eq!(store.get(kind::CLIENT, "a").unwrap().as_deref(), Some("4"));
        // Written twice in one batch, a record holds the last write; written and deleted,
        // it is gone.
        let mut twice = Batch::default();
        twice
            .put(kind::SPEND, "t", "1")
            .put(kind::SPEND, "d", "1")
            .put(kind::SPEND, "t", "2")
            .delete(kind::SPEND, "d");
        store.commit(&twice).unwrap();
        assert_eq!(store.list(kind::SPEND, "").unwrap(), vec![("t".to_owned(), "2".to_owned())]);
        // The outbox: one delivery per sink. An alarm raised before its sinks were named
        // waits for them too.
        let sinks = vec!["s1".to_owned(), "s2".to_owned()];
        store.deliver_to(&["s1".into(), "s2".into(), "s3".into()]).unwrap();
        assert_eq!(store.outbox_depth(&sinks).unwrap(), 1);
        let pending = store.undelivered("s1", 10).unwrap();
        assert_eq!(pending.len(), 1);
        store.delivered(pending[0].id, "s1").unwrap();
        store.delivered(pending[0].id, "s1").unwrap();
        assert!(store.undelivered("s1", 10).unwrap().is_empty());
        assert_eq!(store.undelivered("s2", 10).unwrap().len(), 1);
        assert_eq!(store.outbox_depth(&sinks).unwrap(), 1);
        store.delivered(pending[0].id, "s2").unwrap();
        assert_eq!(store.outbox_depth(&sinks).unwrap(), 0);
        // A sink not named at a later start stays owed what it has not had; a new one is
        // owed every stored alarm.
        store.deliver_to(&["s1".into(), "s3".into()]).unwrap();
        let mut later = Batch::default();
        later.alarm("{\"later\":1}");
        store.commit(&later).unwrap();
        let s2: Vec<String> = store.undelivered("s2", 10).unwrap().into_iter().map(|e| e.body).collect();
        assert_eq!(s2, ["{\"later\":1}"]);
        store.deliver_to(&["s4".into()]).unwrap();
        assert_eq!(store.undelivered("s4", 10).unwrap().len(), 2);
        let s1 = store.undelivered("s1", 10).unwrap();
        store.delivered(s1[0].id, "s1").unwrap();
        store.delivered(s1[0].id, "s2").unwrap();
        assert_eq!(store.outbox_depth(&sinks).unwrap(), 0);
        // A client's feed holds its own alarms only, newest first.
        let mut feed = Batch::default();
        feed.alarm("{\"client\":\"c1\",\"n\":1}")
            .alarm("{\"client\":\"c2\"}")
            .alarm("{\"client\":\"c1\",\"n\":2}");
        store.commit(&feed).unwrap();
        let c1: Vec<String> =
            store.client_alarms("c1", None, 10).unwrap().into_iter().map(|e| e.body).collect();
        assert_eq!(c1, ["{\"client\":\"c1\",\"n\":2}", "{\"client\":\"c1\",\"n\":1}"]);
        assert_eq!(store.client_alarms("c1", None, 1).unwrap().len(), 1);
        assert!(store.client_alarms("c3", None, 10).unwrap().is_empty());
        let mut kinds = Batch::default();
        kinds.alarm("{\"client\":\"c2\",\"kind\":\"a\"}").alarm("{\"client\":\"c1\",\"kind\":\"b\"}");
        store.commit(&kinds).unwrap();
        let of = |kinds: &[&str]| -> Vec<String> {
            store.client_alarms("c2", Some(kinds), 10).unwrap().into_iter().map(|e| e.body).collect()
        };
        assert_eq!(of(&["a", "b"]), ["{\"client\":\"c2\",\"kind\":\"a\"}"]);
        assert!(of(&["b"]).is_empty());
        // Per client, the oldest first, and no more than asked of each.
        let fair: Vec<String> =
            store.undelivered_by_client("s3", 1).unwrap().into_iter().map(|e| e.body).collect();
        assert_eq!(fair, ["{\"x\":1}", "{\"client\":\"c1\",\"n\":1}", "{\"client\":\"c2\"}"]);
        let c1_first = store.client_alarms("c1", None, 10).unwrap().pop().unwrap();
        store.delivered(c1_first.id, "s3").unwrap();
        let fair: Vec<String> =
            store.undelivered_by_client("s3", 1).unwrap().into_iter().map(|e| e.body).collect();
        assert_eq!(fair, ["{\"x\":1}", "{\"client\":\"c2\"}", "{\"client\":\"c1\",\"n\":2}"]);
        concurrent(store);
    }

    /// Many threads committing at once: every precondition still holds. Each thread bumps a
    /// shared counter by compare-and-set until it wins, and claims fresh ids that must not
    /// exist; no increment is lost and no id is claimed twice.
    fn concurrent(store: &dyn Store) {
        const THREADS: usize = 16;
        const ROUNDS: usize = 10;
        let mut first = Batch::default();
        first.put(kind::META, "counter", "0");
        store.commit(&first).unwrap();
        let claimed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let claimed = &claimed;
                s.spawn(move || {
                    for r in 0..ROUNDS {
                        loop {
                            let have = store.get(kind::META, "counter").unwrap().unwrap();
                            let next = (have.parse::<u64>().unwrap() + 1).to_string();
                            let mut b = Batch::default();
                            b.expect(kind::META, "counter", Some(have)).put(kind::META, "counter", next);
                            match store.commit(&b) {
                                Ok(()) => break,
                                Err(StoreError::Conflict(_)) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        // Every thread races for the same id each round: one wins.
                        let mut claim = Batch::default();
                        claim.expect(kind::INTAKE, format!("race/{r}"), None).put(
                            kind::INTAKE,
                            format!("race/{r}"),
                            t.to_string(),
                        );
                        if store.commit(&claim).is_ok() {
                            claimed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let total = store.get(kind::META, "counter").unwrap().unwrap();
        assert_eq!(total, (THREADS * ROUNDS).to_string(), "an increment was lost");
        assert_eq!(claimed.into_inner(), ROUNDS, "an id was claimed twice");
        assert_eq!(store.list(kind::INTAKE, "race/").unwrap().len(), ROUNDS);
    }
}
