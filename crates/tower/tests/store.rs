//! The same behaviour from both stores, against the real servers: SQLite (embedded) and
//! PostgreSQL (`VIGIL_TEST_POSTGRES`, a libpq connection string; `scripts/test.sh` starts one).

use vigil_chain::BlockId;
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, BlockHash, OutPoint, Txid};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};
use vigil_tower::store::{PostgresStore, Registered, SqliteStore, Step, TowerStore};
use vigil_tower::watch::{Action, Vault};

fn vault(index: u32) -> Vault {
    let compiled =
        CompiledPolicy::new(Policy::from_toml(&ExamplePolicy::default().to_toml()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let plan = compiled
        .plan(index, Amount::from_sat(1_000_000), VaultKind::Standard, o.public(), c.public())
        .unwrap();
    let v = OutPoint { txid: Txid::from_byte_array([index as u8 + 1; 32]), vout: 0 };
    let g = compiled.build_graph(&plan, v).unwrap();
    Vault::from_signed("p", 144, &g.finalize(&o.sign(&g).unwrap(), &c.sign(&g).unwrap()).unwrap())
}

/// Everything a tower relies on its store for; `reopen` gives a fresh connection to the
/// same data, as after a crash.
fn conformance(reopen: &dyn Fn() -> Box<dyn TowerStore>) {
    let mut store = reopen();
    let (a, b) = (vault(0), vault(1));
    assert_eq!(store.register_vault("owner", 1, &a, "{}").unwrap(), Registered::New);
    assert_eq!(store.register_vault("owner", 1, &b, "{}").unwrap(), Registered::Replay, "same nonce");
    assert_eq!(store.register_vault("owner", 2, &a, "{}").unwrap(), Registered::Same, "a retry");
    let mut other = b.clone();
    other.outpoint = a.outpoint;
    assert_eq!(store.register_vault("owner", 3, &other, "{}").unwrap(), Registered::Conflict);
    assert_eq!(store.register_vault("cosigner", 1, &b, "{}").unwrap(), Registered::New, "nonces are per key");
    let (u, s) = (a.unvault.compute_txid(), Txid::from_byte_array([7; 32]));
    assert!(store.register_approval("cosigner", 2, &u, &s, "{}").unwrap());
    assert!(!store.register_approval("cosigner", 2, &u, &s, "{}").unwrap(), "replayed approval");
    assert!(store.consume_nonce("guardian", 5).unwrap());
    assert!(!store.consume_nonce("guardian", 4).unwrap());

    // A step: a vault's new state, the follower's position, a broadcast and an alarm.
    let mut changed = a.clone();
    changed.state.unvault_seen = true;
    changed.state.cancel_rung = Some(2);
    let recent = vec![BlockId { height: 7, hash: BlockHash::from_byte_array([3; 32]) }];
    let actions = vec![
        Action::Broadcast { vault: a.outpoint, what: "cancel rung 2".into(), tx: a.cancels[2].clone() },
        Action::Alarm { vault: Some(a.outpoint), kind: "unvault-cancelled".into(), message: "m".into() },
    ];
    let step = Step {
        vaults: std::slice::from_ref(&changed),
        recent: Some(&recent),
        records: &[("fee_wallet", "[1]".to_string())],
        actions: &actions,
    };
    let done = store.commit_step(step).unwrap();
    assert_eq!(done.len(), 1);
    let second = store.commit_step(Step { actions: &actions[..1], ..Step::default() }).unwrap();
    store.broadcast_done(second[0].0).unwrap();
    let alarm = store.undelivered_alarms().unwrap();
    assert_eq!(alarm.len(), 1);
    store.alarm_attempted(alarm[0].id, false).unwrap();
    drop(store);

    // After a "crash": everything is there.
    let mut store = reopen();
    let loaded = store.load().unwrap();
    let mut vaults = Vec::new();
    store.load_vaults(&mut |v| vaults.push(v)).unwrap();
    assert_eq!(vaults.len(), 2);
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
    assert_eq!(loaded.approvals, vec![(u, s, "{}".to_string())]);
    assert_eq!(loaded.recent, recent);
    assert_eq!(loaded.records.get("fee_wallet").map(String::as_str), Some("[1]"));
    assert_eq!(loaded.pending_broadcasts.len(), 1, "one decided, not done");
    assert_eq!(loaded.pending_broadcasts[0], done[0]);
    let alarm = store.undelivered_alarms().unwrap();
    assert_eq!(alarm[0].attempts, 1);
    store.alarm_attempted(alarm[0].id, true).unwrap();
    assert!(store.undelivered_alarms().unwrap().is_empty());
}

#[test]
fn sqlite_store_keeps_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tower.sqlite");
    conformance(&|| Box::new(SqliteStore::open(&path).unwrap()));
}

#[test]
fn postgres_store_keeps_every_decision() {
    let Ok(url) = std::env::var("VIGIL_TEST_POSTGRES") else {
        assert!(std::env::var("VIGIL_REQUIRE_POSTGRES").is_err(), "VIGIL_TEST_POSTGRES is not set");
        eprintln!("SKIPPED: VIGIL_TEST_POSTGRES is not set (scripts/test.sh starts PostgreSQL and sets it)");
        return;
    };
    let schema = format!(
        "test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    conformance(&|| Box::new(PostgresStore::connect(&url, &schema).unwrap()));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}
