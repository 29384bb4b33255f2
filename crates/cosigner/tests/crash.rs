//! SIGKILL at every step of the vault ceremony leaves either "not funded" or "protected",
//! never "funded and unprotected"; and a co-signer killed mid-approval loses no request,
//! approval or alarm.

mod common;

use common::*;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::{Amount, Transaction};
use vigil_policy::VaultKind;
use vigil_testenv::cosigner::CosignerProcess;
use vigil_testenv::family::Family;
use vigil_testenv::process::{free_port, vigil_node, Node};
use vigil_testenv::wallet::spend_of;
use vigil_testenv::webhook::webhook_on;
use vigil_testenv::{eventually, Vault};

/// Whether `vault`'s funding exists anywhere: on chain, in the mempool, or handed out.
fn funded(node: &Node, vault: &Vault, released: Option<&String>) -> bool {
    released.is_some() || node.rpc.transaction(&vault.funding.compute_txid()).unwrap().is_some()
}

fn watched(f: &Family) -> Vec<u64> {
    f.towers.iter().map(|t| t.metric("vigil_tower_vaults_watched").unwrap_or(0)).collect()
}

fn status(f: &Family, vault: &Vault) -> vigil_cosigner::wire::VaultStatus {
    status_of(f, &vault.outpoint().to_string())
}

fn status_of(f: &Family, outpoint: &str) -> vigil_cosigner::wire::VaultStatus {
    serde_json::from_value(f.get(&format!("/v1/vaults/{outpoint}"), &f.owner()).unwrap()).unwrap()
}

/// How many `vault-unregistered` alarms the guardians' feed holds.
fn unregistered(f: &Family) -> usize {
    let feed = f.get("/v1/alarms", &f.guardian(0)).unwrap();
    feed.as_array().unwrap().iter().filter(|a| a["kind"] == "vault-unregistered").count()
}

#[test]
fn sigkill_at_each_step_of_the_ceremony_leaves_a_vault_unfunded_or_protected() {
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner crash"), 2, None);
    let amount = Amount::from_sat(2_000_000);

    // 1. Killed after `begin`: the one-time key died with the process; nothing was funded,
    //    and the coin is free for a new ceremony.
    let coin = f.intake_coin(&node, amount);
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    co.kill9();
    co.start();
    let lost = f.complete(&coin, amount, VaultKind::Standard, once, &begun).unwrap_err();
    assert_eq!(lost.0, 404, "{lost:?}");
    assert_eq!(watched(&f), vec![0, 0]);
    assert!(node.rpc.unspent_output(&coin.outpoint).unwrap().is_some(), "the coin was never spent");
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();

    // 2. A tower is down when the owner completes: the vault is committed and registered
    //    where it can be, but its funding is withheld. Killed there, and restarted: the
    //    co-signer registers it with the missing tower by itself, then releases the funding.
    f.towers[1].kill9();
    let (answer, vault) = f.complete(&coin, amount, VaultKind::Standard, once, &begun).unwrap();
    assert_eq!(answer.state, "registering");
    assert_eq!(answer.funding, None, "no funding while a tower lacks the graph");
    assert!(!funded(&node, &vault, answer.funding.as_ref()));
    // The guardians hear of it once, not at every retry.
    assert_eq!(unregistered(&f), 1);
    co.kill9();
    co.start();
    assert_eq!(status(&f, &vault).funding, None);
    f.towers[1].start();
    let released = eventually("the co-signer finishes the registration", || {
        let s = status(&f, &vault);
        (s.state == "protected").then_some(s.funding)
    })
    .expect("the funding, once protected");
    assert_eq!(watched(&f), vec![1, 1], "every tower holds the graph before the funding is out");
    assert_eq!(unregistered(&f), 1);
    let funding: Transaction = deserialize_hex(&released).unwrap();
    assert_eq!(funding.compute_txid(), vault.funding.compute_txid());
    node.rpc.broadcast(&funding).unwrap();
    block(&node, &f, 1);

    // 3. Killed after it is protected: still protected, its funding still there.
    co.kill9();
    co.start();
    let s = status(&f, &vault);
    assert_eq!((s.state.as_str(), s.funding.as_deref()), ("protected", Some(released.as_str())));
    assert!(s.towers.iter().all(|t| t.acknowledged));

    // 4. Killed in the middle of `complete` (a burst of kills while it runs): whenever the
    //    funding exists, every tower holds the vault.
    for round in 0..3 {
        let coin = f.intake_coin(&node, amount);
        let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
        let begun_outpoint = begun.vault_outpoint.clone();
        let before = watched(&f);
        let family = &f;
        let outcome = std::thread::scope(|s| {
            let h = s.spawn(move || family.complete(&coin, amount, VaultKind::Standard, once, &begun));
            std::thread::sleep(std::time::Duration::from_millis(5 + 10 * round));
            co.kill9();
            h.join().unwrap()
        });
        co.start();
        let committed = f.get(&format!("/v1/vaults/{}", begun_outpoint), &f.owner());
        match (outcome, committed) {
            (Ok((answer, _)), _) if answer.funding.is_some() => {
                assert!(watched(&f).iter().zip(&before).all(|(a, b)| a > b), "funded and unprotected");
            }
            (_, Err((404, _))) => {
                // Nothing was committed: nothing funded, no tower holds anything new.
                assert_eq!(watched(&f), before);
            }
            (_, _) => {
                // Committed: the co-signer finishes it, and only then is the funding out.
                let s = eventually("the co-signer finishes it", || {
                    let s = status_of(&f, &begun_outpoint);
                    (s.state == "protected").then_some(s)
                });
                assert!(s.funding.is_some());
                assert!(watched(&f).iter().zip(&before).all(|(a, b)| a > b), "funded and unprotected");
            }
        }
        eprintln!("round {round}: towers watch {:?}", watched(&f));
    }
}

#[test]
fn a_cosigner_killed_mid_approval_loses_no_request_approval_or_alarm() {
    let node = vigil_node();
    // The webhook is down at first: alarms wait in the outbox across the kill.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/alarm");
    let mut co = CosignerProcess::new(&node, &format!("[alarms]\nwebhooks = [{url:?}]\n"));
    let mut f = Family::new(&node, &co, example("cosigner restart"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let asked = spend(&f, &vault).unwrap();
    let id = asked["id"].as_u64().unwrap();
    f.vote(0, id, true).unwrap();
    assert_eq!(co.metric("vigil_cosigner_alarm_outbox"), Some(1));
    co.kill9();
    co.start();
    let shown = f.get(&format!("/v1/spends/{id}"), &f.guardian(1)).unwrap();
    assert_eq!((shown["state"].as_str(), shown["approvals"].as_u64()), (Some("waiting"), Some(1)));
    let (_, alarms) = webhook_on(port);
    eventually("the alarm raised before the kill is delivered", || {
        alarmed(&alarms, "approval-needed").then_some(())
    });
    let approved = f.vote(1, id, true).unwrap();
    assert_eq!(approved["state"], "approved");
    co.kill9();
    co.start();
    assert_eq!(f.get(&format!("/v1/spends/{id}"), &f.owner()).unwrap()["state"], "approved");
    unvault(&node, &f, &vault);
    block(&node, &f, vigil_testenv::household::DELAY - 1);
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    eventually("the quorum's alarm too", || alarmed(&alarms, "spend-approved").then_some(()));
}

/// Killed after committing an approval and before its tower acknowledged it: the approval is
/// owed to the tower with the decision, pushed after the restart, and the owner's unvault is
/// not cancelled as unapproved.
#[test]
fn an_approval_the_cosigner_was_killed_pushing_reaches_the_tower_after_the_restart() {
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner killed pushing"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    // The tower stopped, not gone: the co-signer's push waits on it.
    let tower = f.towers[0].pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &tower]).status().unwrap().success())
    };
    signal("-STOP");
    let id = std::thread::scope(|scope| {
        let asking = scope.spawn(|| spend(&f, &vault));
        // The decision is committed; its answer waits for the tower.
        let id = eventually("the spend is approved, its tower not told yet", || {
            let all = f.get("/v1/spends", &f.guardian(0)).ok()?;
            let s = all.as_array()?.first()?.clone();
            (s["state"] == "approved").then(|| s["id"].as_u64().unwrap())
        });
        co.kill9();
        assert!(asking.join().unwrap().is_err(), "no answer from a killed co-signer");
        id
    });
    // Killed stopped, the tower never reads the request waiting in its socket.
    f.towers[0].kill9();
    f.towers[0].start();
    co.start();
    eventually("the approval reached the tower", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    // The tower, once it has seen the unvault's block, lets it through (an unapproved one it
    // cancels at once); the spend is signed once DELAY has passed.
    unvault(&node, &f, &vault);
    let height = u64::from(tip(&node));
    eventually("the tower saw the unvault's block", || {
        (f.towers[0].metric("vigil_tower_tip_height") >= Some(height)).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(spend_of(&node.rpc, vault.unvault_outpoint()).is_none(), "the unvault was cancelled");
    block(&node, &f, vigil_testenv::household::DELAY - 1);
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
}

/// Rewrites every record of `kind` in a stopped co-signer's store as an earlier release
/// wrote it: without `fields` (added since, with defaults), its keys in another order.
fn as_an_earlier_release_wrote(co: &CosignerProcess, kind: &str, fields: &[&str]) -> usize {
    let db = rusqlite::Connection::open(co.dir.path().join("data/cosigner.sqlite")).unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT id, body FROM records WHERE kind = ?1")
        .unwrap()
        .query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, body) in &rows {
        let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
        for field in fields {
            assert!(value.as_object_mut().unwrap().remove(*field).is_some(), "{kind} {id} has no {field}");
        }
        let older = serde_json::to_string(&value).unwrap();
        assert_ne!(&older, body);
        db.execute("UPDATE records SET body = ?1 WHERE kind = ?2 AND id = ?3", (older, kind, id)).unwrap();
    }
    rows.len()
}

#[test]
fn records_an_earlier_release_wrote_are_acted_on_after_an_upgrade() {
    // A write expects a record as it was read: one of today's form would never match a
    // record an earlier release wrote, and every decision on it would fail as a conflict.
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner upgrade"), 1, None);
    let standard = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let guarded = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let id = spend(&f, &guarded).unwrap()["id"].as_u64().unwrap();
    // A loosening waits for its height; the earlier release kept no index of waiting changes.
    let loosened =
        version_2(&f.policy_text, "velocity_limit_sat = 10000000", "velocity_limit_sat = 20000000");
    let change = f.change_policy(&loosened, &[0, 1]).unwrap();
    let effective = change["effective_height"].as_u64().unwrap() as u32;
    co.kill9();
    let db = rusqlite::Connection::open(co.dir.path().join("data/cosigner.sqlite")).unwrap();
    let unindexed = db
        .execute(
            "DELETE FROM records WHERE kind = 'waiting_change' OR (kind = 'meta' AND id LIKE '%indexed')",
            [],
        )
        .unwrap();
    assert_eq!(unindexed, 3, "the change's entry, and both indexes' marks");
    let old_client = [
        "last_heartbeat",
        "past_policies",
        "restore_unconfirmed",
        "restore_confirmations",
        "restores",
        "changes",
    ];
    assert_eq!(as_an_earlier_release_wrote(&co, "client", &old_client), 1);
    assert_eq!(as_an_earlier_release_wrote(&co, "vault", &["policy_id"]), 2);
    assert_eq!(as_an_earlier_release_wrote(&co, "spend", &["under_duress", "delay"]), 1);
    co.start();
    // The unlock's heartbeat (the earlier release kept none) writes the client, a spend its
    // vault and the client, a vote the spend request.
    assert_eq!(f.heartbeat(false).0, 200);
    assert_eq!(spend(&f, &standard).unwrap()["state"], "approved");
    let voted = f.vote(0, id, true).unwrap();
    assert_eq!((voted["state"].as_str(), voted["approvals"].as_u64()), (Some("waiting"), Some(1)));
    // Indexed at start, the waiting change is applied by the background pass at its height.
    block(&node, &f, effective - tip(&node));
    eventually("the co-signer applies the waiting change", || {
        let body: String =
            db.query_row("SELECT body FROM records WHERE kind = 'client'", [], |r| r.get(0)).unwrap();
        let client: serde_json::Value = serde_json::from_str(&body).unwrap();
        (client["pending_policy"].is_null() && client["policy"] == loosened.as_str()).then_some(())
    });
}
