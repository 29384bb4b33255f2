//! The same behaviour from both stores, against the real servers: SQLite (embedded) and
//! PostgreSQL (`VIGIL_TEST_POSTGRES`, a libpq connection string; `scripts/test.sh` starts one).

use vigil_chain::BlockId;
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, BlockHash, OutPoint, Txid};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};
use vigil_testenv::process::{postgres, unique_schema};
use vigil_tower::client::{ClientRecord, PolicyChange};
use vigil_tower::store::{
    Enrollment, NonceCheck, OutboxAlarm, PostgresStore, Registered, SqliteStore, Step, StoredApproval,
    TowerStore, MAX_NONCE_STEP,
};
use vigil_tower::vault::{Action, AlarmKind, ApprovalTerms, Vault};

fn vault(client: &str, index: u32) -> Vault {
    let compiled =
        CompiledPolicy::new(Policy::from_toml(&ExamplePolicy::default().to_toml()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let plan = compiled
        .plan(index, Amount::from_sat(1_000_000), VaultKind::Standard, o.public(), c.public())
        .unwrap();
    let v = OutPoint { txid: Txid::from_byte_array([index as u8 + 1; 32]), vout: 0 };
    let g = compiled.build_graph(&plan, v).unwrap();
    Vault::from_signed(client, 144, &g.finalize(&o.sign(&g).unwrap(), &c.sign(&g).unwrap()).unwrap())
}

fn terms(spend: Txid) -> ApprovalTerms {
    // Every flag set, so that a store dropping one fails the round trip.
    ApprovalTerms { spend, expiry_height: 500, counter: 3, guardian_quorum: true, under_duress: true }
}

/// Everything a tower relies on its store for; `reopen` gives a fresh connection to the
/// same data, as after a crash.
fn conformance(reopen: &dyn Fn() -> Box<dyn TowerStore>) {
    let mut store = reopen();
    let (a, b) = (vault("p", 0), vault("p", 1));
    const MAX: u32 = 3;
    assert_eq!(store.register_vault("owner", 1, &a, "{}", MAX).unwrap(), Registered::New);
    assert_eq!(
        store.register_vault("owner", 1, &b, "{}", MAX).unwrap(),
        Registered::Replay { last: Some(1) }
    );
    assert_eq!(store.register_vault("owner", 2, &a, "{}", MAX).unwrap(), Registered::Same, "a retry");
    let mut other = b.clone();
    other.outpoint = a.outpoint;
    assert_eq!(store.register_vault("owner", 3, &other, "{}", MAX).unwrap(), Registered::Conflict);
    // An index is used once per client; another client has its own indexes.
    let mut reused = b.clone();
    reused.index = a.index;
    assert_eq!(store.register_vault("owner", 4, &reused, "{}", MAX).unwrap(), Registered::IndexUsed);
    let elsewhere = vault("q", a.index + 10);
    let mut elsewhere_same_index = elsewhere.clone();
    elsewhere_same_index.index = a.index;
    assert_eq!(store.register_vault("owner", 5, &elsewhere_same_index, "{}", MAX).unwrap(), Registered::New);
    assert_eq!(
        store.register_vault("cosigner", 1, &b, "{}", MAX).unwrap(),
        Registered::New,
        "nonces are per key"
    );
    // The cap counts one client's vaults.
    assert_eq!(store.register_vault("owner", 6, &vault("p", 2), "{}", MAX).unwrap(), Registered::New);
    assert_eq!(store.register_vault("owner", 7, &vault("p", 3), "{}", MAX).unwrap(), Registered::TooMany);
    // Nonces: above the last, and not absurdly so (u64::MAX would lock the key out for good).
    let u = a.unvault.compute_txid();
    let approval = StoredApproval { unvault: u, terms: terms(Txid::from_byte_array([7; 32])) };
    assert_eq!(store.register_approval("cosigner", 2, &approval, "{}").unwrap(), NonceCheck::Fresh);
    assert!(matches!(
        store.register_approval("cosigner", 2, &approval, "{}").unwrap(),
        NonceCheck::Refused { .. }
    ));
    assert!(matches!(store.consume_nonce("guardian", u64::MAX).unwrap(), NonceCheck::Refused { last: None }));
    assert!(matches!(
        store.consume_nonce("guardian", MAX_NONCE_STEP + 1).unwrap(),
        NonceCheck::Refused { .. }
    ));
    assert_eq!(store.consume_nonce("guardian", 5).unwrap(), NonceCheck::Fresh);
    assert!(matches!(store.consume_nonce("guardian", 4).unwrap(), NonceCheck::Refused { last: Some(5) }));
    assert_eq!(store.consume_nonce("guardian", 5 + MAX_NONCE_STEP).unwrap(), NonceCheck::Fresh);
    // Clients: pinned once, their applied policy and pending change kept.
    assert!(store.pin_client("p", "policy v1").unwrap());
    assert!(!store.pin_client("p", "another text").unwrap(), "a known client keeps its policy");
    let pending =
        PolicyChange { client: "p".into(), policy: "policy v2".into(), version: 2, effective_height: 1_200 };
    let client = ClientRecord {
        id: "p".into(),
        policy: "policy v1b".into(),
        pending: Some(pending),
        earlier: vec!["policy v0".into(), "policy v1".into()],
    };
    // A client enrolled by a chain of changes keeps the versions before the one applied.
    store.issue_token("token").unwrap();
    let first = ClientRecord {
        id: "q".into(),
        policy: "policy q2".into(),
        pending: None,
        earlier: vec!["policy q1".into()],
    };
    assert_eq!((store.token("token").unwrap(), store.token("no token").unwrap()), (Some(None), None));
    assert_eq!(store.enroll("token", &first, None).unwrap(), Enrollment::Pinned);
    assert_eq!(store.token("token").unwrap(), Some(Some(first.id.clone())));
    assert_eq!(store.enroll("token", &first, None).unwrap(), Enrollment::Same);
    // A client held already is kept, unless the tower takes the chain in its place.
    let later = ClientRecord {
        policy: "policy q4".into(),
        earlier: vec!["policy q1".into(), "policy q2".into(), "policy q3".into()],
        ..first.clone()
    };
    store.issue_token("token 2").unwrap();
    store.enroll("token 2", &later, None).unwrap();
    store.issue_token("token 3").unwrap();
    let ignored = ClientRecord { policy: "policy q9".into(), ..later.clone() };
    let taken = Action::client_alarm("q", AlarmKind::PolicyApplied, "taken");
    assert_eq!(
        store.enroll("token 2", &ignored, Some(&taken)).unwrap(),
        Enrollment::Same,
        "a used token moves nothing"
    );
    assert!(store.client_alarms("q", 10).unwrap().is_empty(), "and raises nothing");
    assert_eq!(store.enroll("token 3", &later, Some(&taken)).unwrap(), Enrollment::Pinned);
    let enrolled = later;
    // Its alarm is raised with it, in the client's feed.
    let raised = store.client_alarms("q", 10).unwrap();
    let seen: Vec<_> = raised.iter().map(|a| (a.kind, a.client.as_deref(), a.vault.as_deref())).collect();
    assert_eq!(seen, [(AlarmKind::PolicyApplied, Some("q"), None)]);
    let hooks = ["hook-a".to_string(), "hook-b".to_string()];
    for hook in &hooks {
        store.alarm_attempted(raised[0].id, hook, true, &hooks).unwrap();
    }

    // A step: a vault's new state, the follower's position, a client, a panic, a broadcast
    // and an alarm.
    let mut changed = a.clone();
    changed.state.unvault_seen = true;
    changed.state.cancel_rung = Some(2);
    let recent = vec![BlockId { height: 7, hash: BlockHash::from_byte_array([3; 32]) }];
    let actions = vec![
        Action::Broadcast { vault: a.outpoint, what: "cancel rung 2".into(), tx: a.cancels[2].clone() },
        Action::alarm(Some(a.outpoint), AlarmKind::UnvaultCancelled, "m"),
    ];
    assert!(!store.panic_used("cafe").unwrap());
    let step = Step {
        vaults: std::slice::from_ref(&changed),
        recent: Some(&recent),
        records: &[("fee_wallet", "[1]".to_string())],
        clients: std::slice::from_ref(&client),
        panics: &["cafe".to_string()],
        actions: &actions,
    };
    let done = store.commit_step(step).unwrap();
    assert_eq!(done.len(), 1);
    assert!(store.panic_used("cafe").unwrap());
    let second = store.commit_step(Step { actions: &actions[..1], ..Step::default() }).unwrap();
    store.broadcast_done(second[0].0).unwrap();
    // Each endpoint has its own view of the outbox.
    let alarm = store.undelivered_alarms("hook-a").unwrap();
    assert_eq!(alarm.len(), 1);
    assert_eq!(
        (alarm[0].kind, alarm[0].vault.clone()),
        (AlarmKind::UnvaultCancelled, Some(a.outpoint.to_string()))
    );
    // The client's feed has it (by its vault), another client's does not.
    let ids = |feed: Vec<OutboxAlarm>| feed.iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(ids(store.client_alarms("p", 10).unwrap()), [alarm[0].id]);
    assert_eq!(
        ids(store.client_alarms("q", 10).unwrap()),
        [raised[0].id],
        "q's feed has its own alarm alone"
    );
    store.alarm_attempted(alarm[0].id, "hook-a", false, &hooks).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 1);
    drop(store);

    // After a "crash": everything is there.
    let mut store = reopen();
    let loaded = store.load().unwrap();
    let mut vaults = Vec::new();
    store.load_vaults(&mut |v| vaults.push(v)).unwrap();
    assert_eq!(vaults.len(), 4, "a, b, the third of p, and q's");
    let reloaded = vaults.iter().find(|v| v.outpoint == a.outpoint).unwrap();
    let one = store.vault(&a.outpoint).unwrap().expect("stored");
    assert_eq!(
        serde_json::to_string(&one).unwrap(),
        serde_json::to_string(reloaded).unwrap(),
        "one vault, whole"
    );
    assert!(store.vault(&OutPoint::null()).unwrap().is_none());
    // A vault without its transactions (the watcher's paged-out copy) is never written.
    let mut hollow = one.clone();
    hollow.cancels.clear();
    let vaults = [hollow];
    assert!(store.commit_step(Step { vaults: &vaults, ..Step::default() }).is_err());
    assert!(!store.vault(&a.outpoint).unwrap().unwrap().cancels.is_empty(), "the stored graph is intact");
    assert_eq!(reloaded.state, changed.state);
    assert_eq!(reloaded.cancels, a.cancels);
    assert_eq!(loaded.approvals, vec![approval]);
    assert_eq!(loaded.recent, recent);
    assert_eq!(loaded.records.get("fee_wallet").map(String::as_str), Some("[1]"));
    assert_eq!(loaded.clients, vec![client, enrolled]);
    assert_eq!(loaded.pending_broadcasts.len(), 1, "one decided, not done");
    assert_eq!(loaded.pending_broadcasts[0], done[0]);
    // Delivered to one endpoint, the alarm waits for the other; then it leaves the outbox.
    let alarm = store.undelivered_alarms("hook-a").unwrap();
    assert_eq!(alarm[0].attempts, 1);
    let hooks = ["hook-a".to_string(), "hook-b".to_string()];
    store.alarm_attempted(alarm[0].id, "hook-a", true, &hooks).unwrap();
    assert!(store.undelivered_alarms("hook-a").unwrap().is_empty());
    assert_eq!(store.undelivered_alarms("hook-b").unwrap().len(), 1);
    assert_eq!(store.outbox_len().unwrap(), 1);
    // A delivery to an endpoint no longer configured does not count for hook-b.
    store.alarm_attempted(alarm[0].id, "hook-old", true, &hooks).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 1);
    assert_eq!(store.settle_alarms(&hooks).unwrap(), 0, "hook-b has not heard it");
    store.alarm_attempted(alarm[0].id, "hook-b", true, &hooks).unwrap();
    assert!(store.undelivered_alarms("hook-b").unwrap().is_empty());
    assert_eq!(store.outbox_len().unwrap(), 0);
    // Another alarm reaches hook-a; then the tower restarts with hook-b removed from its
    // configuration: nobody else is owed it, so it leaves the outbox.
    store.commit_step(Step { actions: &actions[1..], ..Step::default() }).unwrap();
    let alarm = store.undelivered_alarms("hook-a").unwrap();
    store.alarm_attempted(alarm[0].id, "hook-a", true, &hooks).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 1);
    assert_eq!(store.settle_alarms(&[]).unwrap(), 0, "with no endpoint, alarms wait for one");
    assert_eq!(store.settle_alarms(&hooks[..1]).unwrap(), 1);
    assert_eq!(store.outbox_len().unwrap(), 0);
}

#[test]
fn sqlite_store_keeps_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tower.sqlite");
    conformance(&|| Box::new(SqliteStore::open(&path).unwrap()));
}

#[test]
fn postgres_store_keeps_every_decision() {
    let Some(url) = postgres() else { return };
    let schema = unique_schema("test_conformance");
    conformance(&|| Box::new(PostgresStore::connect(&url, &schema).unwrap()));
    drop_schema(&url, &schema);
}

fn drop_schema(url: &str, schema: &str) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}

#[test]
fn a_postgres_store_whose_connection_the_server_dropped_reconnects() {
    let Some(url) = postgres() else { return };
    let schema = unique_schema("test_reconnect");
    let tagged = format!("{url} application_name={schema}");
    let mut store = PostgresStore::connect(&tagged, &schema).unwrap();
    assert!(store.pin_client("p", "policy").unwrap());
    // The server ends the idle connection (a restart, an idle timeout, an administrator).
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let ended: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&schema],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The next operation reconnects and works; so does every one after.
    assert_eq!(store.load().unwrap().clients.len(), 1);
    assert_eq!(store.consume_nonce("k", 1).unwrap(), NonceCheck::Fresh);
    drop_schema(&url, &schema);
}

/// The first release's schema, as it wrote it.
const SCHEMA_1: &str = "
    CREATE TABLE vaults (outpoint TEXT PRIMARY KEY, registration TEXT NOT NULL, vault TEXT NOT NULL);
    CREATE TABLE approvals (unvault_txid TEXT PRIMARY KEY, spend_txid TEXT NOT NULL, body TEXT NOT NULL);
    CREATE TABLE nonces (key TEXT PRIMARY KEY, nonce INTEGER NOT NULL);
    CREATE TABLE progress (id INTEGER PRIMARY KEY CHECK (id = 0), recent TEXT NOT NULL);
    CREATE TABLE records (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE broadcasts (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, message TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0);";

#[test]
fn a_store_of_the_first_release_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tower.sqlite");
    let v = vault("old-client", 0);
    let spend = Txid::from_byte_array([7; 32]);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        let mut row: serde_json::Value = serde_json::to_value(&v).unwrap();
        row.as_object_mut().unwrap().remove("index");
        row.as_object_mut().unwrap().remove("guarded");
        conn.execute(
            "INSERT INTO vaults (outpoint, registration, vault) VALUES (?1, 'digest', ?2)",
            [v.outpoint.to_string(), row.to_string()],
        )
        .unwrap();
        let body = serde_json::json!({"nonce": 1, "policy_id": "old-client",
            "approval": {"vault_outpoint": v.outpoint.to_string(), "unvault_txid": v.unvault.compute_txid().to_string(),
                "spend_txid": spend.to_string(), "policy_version": 1, "expiry_height": 900, "counter": 4},
            "signatures": []});
        conn.execute(
            "INSERT INTO approvals (unvault_txid, spend_txid, body) VALUES (?1, ?2, ?3)",
            [v.unvault.compute_txid().to_string(), spend.to_string(), body.to_string()],
        )
        .unwrap();
        conn.execute("INSERT INTO alarms (kind, message) VALUES ('panic', 'old')", []).unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    let mut vaults = Vec::new();
    store.load_vaults(&mut |v| vaults.push(v)).unwrap();
    assert_eq!(vaults.len(), 1);
    assert_eq!(vaults[0].cancels, v.cancels);
    let loaded = store.load().unwrap();
    let old =
        ApprovalTerms { spend, expiry_height: 900, counter: 4, guardian_quorum: false, under_duress: false };
    assert_eq!(loaded.approvals, vec![StoredApproval { unvault: v.unvault.compute_txid(), terms: old }]);
    assert_eq!(store.undelivered_alarms("hook").unwrap()[0].kind, AlarmKind::Panic);
    // The migrated vault keeps its client; new vaults register beside it.
    assert_eq!(store.register_vault("k", 1, &vault("old-client", 1), "{}", 10).unwrap(), Registered::New);
    // A second open finds the current schema and changes nothing.
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap().approvals.len(), 1);
}

/// Takes a store back to schema 2 (alarms named no client), with one alarm in it;
/// `downgrade` runs SQL on it.
fn schema_2_then_current(downgrade: &mut dyn FnMut(&str), reopen: &dyn Fn() -> Box<dyn TowerStore>) {
    // Schema 2 named the client of an alarm about it only in the message.
    let client = "ab".repeat(32);
    let vault = format!("{}:1", "cd".repeat(32));
    let old = [
        Action::alarm(None, AlarmKind::BackendOutage, "outage"),
        Action::alarm(
            None,
            AlarmKind::PolicyChange,
            format!("policy of client {client} changes to version 2"),
        ),
        Action::alarm(None, AlarmKind::Panic, format!("panic for client {client}: sweeping {vault}")),
    ];
    reopen().commit_step(Step { actions: &old, ..Step::default() }).unwrap();
    downgrade("DROP INDEX alarms_by_client; ALTER TABLE alarms DROP COLUMN client;");
    let mut store = reopen();
    let lockdown = Action::client_alarm(&client, AlarmKind::Lockdown, "after");
    store.commit_step(Step { actions: std::slice::from_ref(&lockdown), ..Step::default() }).unwrap();
    let outbox = store.undelivered_alarms("hook").unwrap();
    let named: Vec<_> = outbox.iter().map(|a| a.client.as_deref()).collect();
    assert_eq!(named, [None, Some(client.as_str()), Some(client.as_str()), Some(client.as_str())]);
    assert_eq!(store.client_alarms(&client, 10).unwrap().len(), 3, "the old ones are in the feed");
}

/// The feed keeps the latest alarms about the client's vaults apart from those about the
/// client as a whole: notices any party can cause never push a vault's alarm out.
fn feed(store: &mut dyn TowerStore) {
    let a = vault("p", 0);
    assert_eq!(store.register_vault("owner", 1, &a, "{}", 3).unwrap(), Registered::New);
    let mut actions = vec![Action::alarm(Some(a.outpoint), AlarmKind::UnvaultCancelled, "cancelled")];
    actions.extend((0..3).map(|i| Action::client_alarm("p", AlarmKind::Lockdown, format!("notice {i}"))));
    actions.push(Action::client_alarm("q", AlarmKind::Lockdown, "another client"));
    store.commit_step(Step { actions: &actions, ..Step::default() }).unwrap();
    let feed = store.client_alarms("p", 2).unwrap();
    let seen: Vec<_> = feed.iter().map(|a| a.message.as_str()).collect();
    assert_eq!(seen, ["notice 2", "notice 1", "cancelled"]);
}

#[test]
fn a_clients_notices_never_push_its_vaults_alarms_out_of_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    feed(&mut SqliteStore::open(&dir.path().join("tower.sqlite")).unwrap());
    let Some(url) = postgres() else { return };
    let schema = unique_schema("test_feed");
    feed(&mut PostgresStore::connect(&url, &schema).unwrap());
    drop_schema(&url, &schema);
}

#[test]
fn a_sqlite_store_of_schema_2_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tower.sqlite");
    let mut downgrade = |sql: &str| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!("{sql} PRAGMA user_version = 2;")).unwrap();
    };
    schema_2_then_current(&mut downgrade, &|| Box::new(SqliteStore::open(&path).unwrap()));
}

#[test]
fn a_postgres_store_of_schema_2_is_migrated_with_nothing_lost() {
    let Some(url) = postgres() else { return };
    let schema = unique_schema("test_schema_2");
    let mut downgrade = |sql: &str| {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let to_2 = "UPDATE meta SET value = '2' WHERE name = 'schema_version';";
        client.batch_execute(&format!("SET search_path TO {schema}; {sql} {to_2}")).unwrap();
    };
    schema_2_then_current(&mut downgrade, &|| Box::new(PostgresStore::connect(&url, &schema).unwrap()));
    drop_schema(&url, &schema);
}
