//! Duress and panic, end to end: a duress heartbeat changes nothing the holder of the
//! owner's device can see, while the guardians are alarmed and every tower cancels the
//! coerced unvault late and quietly; a guardians' panic reaches every tower once.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::Amount;
use vigil_policy::VaultKind;
use vigil_testenv::cosigner::CosignerProcess;
use vigil_testenv::eventually;
use vigil_testenv::family::Family;
use vigil_testenv::household::DELAY;
use vigil_testenv::process::vigil_node;
use vigil_testenv::wallet::{confirmations, spend_of};
use vigil_testenv::webhook::webhook;

/// A JSON value's shape: its keys and value kinds, recursively, with each leaf's length.
fn shape(v: &Value) -> String {
    match v {
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter().map(|(k, v)| format!("{k}:{}", shape(v))).collect::<Vec<_>>().join(",")
        ),
        Value::Array(a) => format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(",")),
        other => format!("{}", other.to_string().len()),
    }
}

#[test]
fn a_duress_code_changes_no_answer_alarms_the_guardians_and_the_unvault_is_cancelled_late_and_quietly() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let smtp = vigil_testenv::smtp::smtp_server();
    let mail = smtp.as_ref().map(|s| {
        format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"alarms@cosigner.example\"\n",
            s.port
        )
    });
    let co =
        CosignerProcess::new(&node, &format!("[alarms]\nwebhooks = [{url:?}]\n{}", mail.unwrap_or_default()));
    let mut f = Family::new(&node, &co, example("cosigner duress"), 2, None);
    let normal = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let coerced = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let guarded = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let later = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);

    // What the owner's device reads at each tower (the tip aside, which moves).
    let tower_views = |f: &Family| -> Vec<Value> {
        f.towers
            .iter()
            .map(|t| {
                let path = format!("/v1/clients/{}", f.cosigner.client);
                let mut v = vigil_testenv::household::get(&t.api, &path, &f.owner()).unwrap();
                v.as_object_mut().unwrap().remove("tip");
                v
            })
            .collect()
    };
    let towers_before = tower_views(&f);
    assert!(towers_before.iter().all(|v| v["locked_until"].is_null()), "{towers_before:?}");

    // A normal session: unlock, ask for a spend.
    let real = f.heartbeat(false);
    let asked = spend(&f, &normal).unwrap();
    assert_eq!(asked["state"], "approved");

    // The duress code: the same answer, byte for byte; the guardians hear within 60 s.
    let typed = Instant::now();
    let duress = f.heartbeat(true);
    assert_eq!(duress, real, "the heartbeat's answer");
    eventually("the guardians are alarmed", || alarmed(&alarms, "duress").then_some(()));
    let latency = typed.elapsed();
    assert!(latency.as_secs() < 60, "{latency:?}");
    eprintln!("duress alarm delivered {latency:?} after the code was typed");
    // The guardians' feed has it too; the owner's keys (the device under duress) are refused.
    let feed = f.get("/v1/alarms", &f.guardian(0)).unwrap();
    assert!(feed.as_array().unwrap().iter().any(|a| a["kind"] == "duress"), "{feed}");
    assert_eq!(f.get("/v1/alarms", &f.owner()).unwrap_err().0, 403);
    // Nothing public moved: the API's address serves no metrics, and the operator's gauge of
    // lockdowns counts plain ones only.
    let public = ureq::get(&format!("{}/metrics", co.url)).call();
    assert!(matches!(public, Err(ureq::Error::Status(404, _))), "{public:?}");
    assert_eq!(co.metric("vigil_cosigner_lockdowns"), Some(0));
    if let Some(smtp) = &smtp {
        let mail = eventually("the guardians get the e-mail", || {
            let text = smtp.received();
            text.contains("DURESS").then_some(text)
        });
        assert!(mail.contains("To: guardians@family.example"), "{mail}");
        assert!(mail.contains("Subject: Vigil alarm: duress"), "{mail}");
        assert!(mail.contains(&f.cosigner.client), "{mail}");
        eprintln!("duress e-mail received {:?} after the code was typed", typed.elapsed());
    }
    eventually("every tower has the quiet lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    assert_eq!(tower_views(&f), towers_before, "a quiet lockdown does not show at the towers");
    // A guardian who locks down now, at the co-signer and at each tower directly (as the
    // guardian's page does), keeps it quiet: the owner's device sees nothing more. The
    // co-signer tells the guardian so, who tells the towers (one the duress order has not
    // reached yet would take a plain lockdown).
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 30}), &f.guardian(0)).unwrap();
    assert!(
        locked["until_height"].as_u64() > Some(u64::from(tip(&node) + 30)),
        "the duress lockdown's end: {locked}"
    );
    assert_eq!(locked["quiet"], true, "{locked}");
    // It ends nothing later, but the other guardians learn that one of them reacted.
    let reacted = f.get("/v1/alarms", &f.guardian(1)).unwrap().as_array().unwrap().iter().any(|a| {
        a["kind"] == "lockdown"
            && a["message"].as_str().is_some_and(|m| m.contains("Guardian(0) asked") && m.contains("quietly"))
    });
    assert!(reacted, "{}", f.get("/v1/alarms", &f.guardian(1)).unwrap());
    for (i, t) in f.towers.iter().enumerate() {
        let order = vigil_tower::wire::LockdownRequest {
            nonce: f.next_nonce(),
            policy_id: f.cosigner.client.clone(),
            until_height: tip(&node) + 30,
            // As a guardian's client sends it; and as one that did not ask the co-signer.
            quiet: i == 0,
        };
        let body = serde_json::to_vec(&order).unwrap();
        vigil_testenv::household::post(&t.api, "/v1/lockdown", &body, &f.guardian(0)).unwrap();
    }
    eventually("every tower has the guardian's lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    assert_eq!(tower_views(&f), towers_before, "a guardian's lockdown under duress does not show");

    // Under duress, a spend is answered exactly as in a normal session: same shape, same size.
    let coerced_answer = spend(&f, &coerced).unwrap();
    assert_eq!(shape(&coerced_answer), shape(&asked), "{coerced_answer}\n{asked}");
    assert_eq!(coerced_answer.to_string().len(), asked.to_string().len());
    assert_eq!(coerced_answer["state"], "approved");
    // A guarded vault's request waits for the guardians, as it would.
    assert_eq!(spend(&f, &guarded).unwrap()["state"], "waiting");

    // The attacker broadcasts the "approved" unvault. Nothing happens on chain for a while...
    let opens = cancelled_late(&node, &f, &coerced);
    // And nothing is ever co-signed for it; the answer is the one any cancelled unvault gets.
    let id = coerced_answer["id"].as_u64().unwrap();
    block(&node, &f, opens.saturating_sub(tip(&node)));
    let refused = f.sign(id).unwrap_err();
    assert!(refused.1.contains("a tower cancelled it"), "{refused:?}");
    // The owner's own lockdown still looks like one: its own length, spends refused openly.
    let now = tip(&node);
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 3}), &f.owner()).unwrap();
    assert_eq!(locked["until_height"].as_u64(), Some(u64::from(now + 3)), "not the duress lockdown's end");
    assert!(locked.get("quiet").is_none(), "the owner's answer never says: {locked}");
    assert_eq!(spend(&f, &later).unwrap_err().0, 403);
    // ...and shows at every tower, where the owner's status reads it.
    eventually("every tower shows the plain lockdown", || {
        tower_views(&f).iter().all(|v| v["locked_until"].as_u64() == Some(u64::from(now + 3))).then_some(())
    });
}

#[test]
fn a_guardians_panic_reaches_every_tower_once() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner panic"), 2, None);
    let idle = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let unvaulted = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    assert_eq!(spend(&f, &unvaulted).unwrap()["state"], "approved");
    unvault(&node, &f, &unvaulted);
    let id = [7u8; 32];
    let not_after = tip(&node) + 10;
    // Another family at the same co-signer and towers uses the same id first (its guardians
    // may have read it in a feed): that stops nothing of this family's.
    let towers = [&f.towers[0], &f.towers[1]];
    let other = Family::sharing(&node, &co, example("cosigner panic, another family"), &towers);
    let theirs = other.panic(&[0, 2], id, not_after).unwrap();
    assert!(theirs["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true), "{theirs}");
    // One guardian alone is not a quorum: the panic waits for another.
    let one = f.panic(&[0], id, not_after).unwrap();
    assert_eq!((one["approvals"].as_u64(), one["needed"].as_u64()), (Some(1), Some(2)));
    assert!(one["towers"].as_array().unwrap().is_empty());
    let relayed = f.panic(&[2], id, not_after).unwrap();
    let towers = relayed["towers"].as_array().unwrap();
    assert_eq!(towers.len(), 2);
    assert!(towers.iter().all(|t| t["acknowledged"] == true), "{relayed}");
    // E for the idle vault, UE for the unvaulted one.
    eventually("E and UE are broadcast", || {
        let e = spend_of(&node.rpc, idle.outpoint())?;
        let ue = spend_of(&node.rpc, unvaulted.unvault_outpoint())?;
        let g = (idle.graph.graph(), unvaulted.graph.graph());
        (g.0.emergencies.iter().any(|p| p.tx.compute_txid() == e.compute_txid())
            && g.1.unvault_emergencies.iter().any(|p| p.tx.compute_txid() == ue.compute_txid()))
        .then_some(())
    });
    // The same panic again is refused, here as at every tower.
    assert_eq!(f.panic(&[0, 2], id, not_after).unwrap_err().0, 409);
}

/// Whoever holds the owner's key cannot push a guardian's proposal out of the guardians' feed
/// (a guardian joins it from there), nor mail the guardians without end: a heartbeat with no
/// known token, a lockdown or a plea to sweep is alarmed once a block at most (a lockdown ending
/// nothing later not at all), and past a hundred alarms the proposal is still in the feed.
#[test]
fn the_owners_key_cannot_push_a_panic_proposal_out_of_the_guardians_feed() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner feed"), 1, None);
    let one = f.panic(&[0], [8u8; 32], tip(&node) + 10).unwrap();
    assert_eq!((one["approvals"].as_u64(), one["needed"].as_u64()), (Some(1), Some(2)));
    // Handed in again, it is answered with the count and alarms nobody again.
    let again = f.panic(&[0], [8u8; 32], tip(&node) + 10).unwrap();
    assert_eq!(again["approvals"].as_u64(), Some(1));
    let feed = |f: &Family| f.get("/v1/alarms", &f.guardian(2)).unwrap().as_array().unwrap().clone();
    let count = |f: &Family, kind: &str| feed(f).iter().filter(|a| a["kind"] == kind).count();
    assert_eq!(count(&f, "panic-proposed"), 1);
    let real = f.heartbeat.0;
    f.heartbeat.0 = [9; 32];
    for _ in 0..3 {
        assert_eq!(f.heartbeat(false).0, 200);
    }
    f.heartbeat.0 = real;
    assert_eq!(count(&f, "heartbeat-unrecognised"), 1);
    let lockdown = |blocks: u32, sweep: bool| {
        f.post("/v1/lockdown", &serde_json::json!({ "blocks": blocks, "sweep": sweep }), &f.owner()).unwrap()
    };
    for blocks in [5, 5, 3, 6, 7] {
        lockdown(blocks, true);
    }
    assert_eq!((count(&f, "lockdown"), count(&f, "panic-requested")), (1, 1), "once a block");
    for blocks in 8..=110 {
        block(&node, &f, 1);
        lockdown(blocks, false);
    }
    assert!(count(&f, "lockdown") >= 100);
    assert_eq!(count(&f, "panic-proposed"), 1, "the proposal is still in the feed");
    // In a block of its own, one ending sooner than the lockdown holding is not alarmed.
    let last = feed(&f)[0]["id"].clone();
    block(&node, &f, 1);
    lockdown(1, false);
    assert_eq!(feed(&f)[0]["id"], last, "nothing new in the feed");
}

#[test]
fn vault_and_spend_requests_wait_for_an_unlock_whose_heartbeat_arrived() {
    // A network that drops the unlock's heartbeat (the duress alarm's channel), and only it,
    // gets no vault made and no spend asked: those need a recent heartbeat, real or duress.
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "heartbeat_fresh_secs = 2\n");
    let mut f = Family::new(&node, &co, example("cosigner heartbeat"), 1, None);
    let coin = f.intake_coin(&node, Amount::from_sat(2_000_000));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let stale = f.begin(&coin, Amount::from_sat(2_000_000), VaultKind::Standard).err().unwrap();
    assert_eq!(stale.0, 401, "{stale:?}");
    assert!(stale.1.contains("unlock again"), "{stale:?}");
    assert_eq!(f.heartbeat(true).0, 200);
    f.begin(&coin, Amount::from_sat(2_000_000), VaultKind::Standard).unwrap();
    // Lockdowns never wait: a frightened owner must always be able to freeze everything.
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &f.owner()).unwrap();
}

/// A spend asked under duress is never co-signed, not even after the guardians lift the duress
/// lockdown: its approval may outlive the lockdown, and the towers cancel only while it holds.
#[test]
fn a_spend_asked_under_duress_is_never_cosigned_even_once_the_duress_is_lifted() {
    let node = vigil_node();
    // Approvals that outlive the governance wait.
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut f = Family::new(&node, &co, example("cosigner duress lifted"), 1, None);
    let coerced = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let also_coerced = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    f.heartbeat(true);
    let until = tip(&node) + vigil_cosigner::service::DURESS_LOCKDOWN_BLOCKS;
    let asked = spend(&f, &coerced).unwrap();
    assert_eq!(asked["state"], "approved");
    let also_asked = spend(&f, &also_coerced).unwrap();
    assert_eq!(also_asked["state"], "approved");
    // The guardians' quorum lifts the lockdown after the governance wait.
    let at = quorum_lifts_after_the_wait(&node, &f, until);
    block(&node, &f, at - tip(&node));
    f.heartbeat(false);
    // The unvault confirms within the approval's life, after the lift. The co-signer marked
    // the approval as asked under duress: the tower cancels the unvault all the same, late,
    // and the co-signer's answer is then the one any cancelled unvault gets.
    let opens = cancelled_late(&node, &f, &coerced);
    block(&node, &f, opens.saturating_sub(tip(&node)));
    let refused = f.sign(asked["id"].as_u64().unwrap()).unwrap_err();
    assert_eq!(refused.0, 409, "{refused:?}");
    assert!(refused.1.contains("a tower cancelled it"), "the answer any cancelled unvault gets: {refused:?}");
    // No tower left to cancel the other: the co-signer alone refuses, its spend leaf open, and
    // says so only once a cancel is out.
    f.towers[0].kill9();
    node.rpc.broadcast(also_coerced.graph.unvault()).unwrap();
    block(&node, &f, 1 + DELAY);
    let refused = f.sign(also_asked["id"].as_u64().unwrap()).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains("try again"), "{refused:?}");
}

/// Broadcasts `coerced`'s unvault and mines until a cancel of it confirms, checking that it
/// came late (not minutes after the code) and buried before the spend leaf opens; returns the
/// height the spend leaf opens at.
fn cancelled_late(node: &vigil_testenv::process::Node, f: &Family, coerced: &vigil_testenv::Vault) -> u32 {
    node.rpc.broadcast(coerced.graph.unvault()).unwrap();
    block(node, f, 1);
    let confirmed = tip(node);
    let opens = confirmed + DELAY;
    let mut cancelled_at = None;
    for _ in 0..DELAY {
        std::thread::sleep(std::time::Duration::from_millis(300));
        if let Some(c) = spend_of(&node.rpc, coerced.unvault_outpoint()) {
            assert!(
                coerced.graph.graph().cancels.iter().any(|p| p.tx.compute_txid() == c.compute_txid()),
                "a cancel"
            );
            if confirmations(&node.rpc, &c.compute_txid()) > 0 {
                cancelled_at = Some(tip(node) + 1 - confirmations(&node.rpc, &c.compute_txid()) as u32);
                break;
            }
        }
        block(node, f, 1);
    }
    let cancelled_at = cancelled_at.expect("the coerced unvault was cancelled");
    assert!(
        cancelled_at > confirmed + 5,
        "not minutes after the code: U at {confirmed}, C at {cancelled_at}"
    );
    assert!(cancelled_at + 6 <= opens, "buried before the spend leaf opens at {opens}: C at {cancelled_at}");
    eprintln!("coerced unvault confirmed at {confirmed}, quietly cancelled at {cancelled_at}, spend leaf at {opens}");
    opens
}

#[test]
fn a_tower_added_under_duress_holds_the_quiet_lockdown_and_cancels_the_coerced_unvault_late() {
    let node = vigil_node();
    // Approvals that outlive the governance wait.
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut f = Family::new(&node, &co, example("cosigner duress added tower"), 1, None);
    let coerced = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    // The quorum adds tower-b; while the change waits, the duress code, and the coerced
    // "approved" spend. Tower-a takes the quiet lockdown, and the order is done with.
    let b = vigil_testenv::process::TowerProcess::new(&node, &[], 6, None);
    let changed = adding_tower(&f.policy_text, "tower-b", &b);
    let change = f.change_policy(&changed, &[0, 1]).unwrap();
    f.heartbeat(true);
    assert_eq!(spend(&f, &coerced).unwrap()["state"], "approved");
    eventually("tower-a has the quiet lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    until_applied(&node, &f, &change);
    // The captor, holding the owner's device, enrolls the new tower: it is told the quiet
    // lockdown too, and the answer says nothing of it.
    let enrolled = enroll_tower_b(&f, &b.token());
    assert_eq!(
        enrolled,
        serde_json::json!({"tower": "tower-b", "enrolled": true, "vaults": 1, "approvals": 1,
            "kept_elsewhere": [], "complete": true}),
        "no more, no less than without duress"
    );
    // Tower-a gone: tower-b alone cancels the coerced unvault, late and quietly.
    f.towers[0].kill9();
    cancelled_late(&node, &f, &coerced);
}

/// A spend approved before the duress code, its spend leaf open when the owner is made to ask
/// for the signature: until a tower's cancel is out, the co-signer does not answer that a
/// tower cancelled it (the chain would show the unvault's output unspent); once it is, it does.
#[test]
fn a_spend_approved_before_the_duress_code_is_not_called_cancelled_before_the_towers_cancel_it() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner duress after approval"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let asked = spend(&f, &vault).unwrap();
    assert_eq!(asked["state"], "approved");
    let id = asked["id"].as_u64().unwrap();
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    block(&node, &f, DELAY);
    // The tower has decided every block before the code: one it was still deciding when the
    // quiet lockdown came would cancel then.
    f.towers_caught_up(&node);
    f.heartbeat(true);
    let unspent = || node.rpc.unspent_output(&vault.unvault_outpoint()).unwrap().is_some();
    let early = f.sign(id).unwrap_err();
    assert!(early.0 == 409 && early.1.contains("try again"), "{early:?}");
    // A quiet lockdown cancels at a block, not as it arrives: the output was unspent then.
    assert!(unspent());
    // The tower cancels it at its next block, once it has the quiet lockdown.
    eventually("the tower has the quiet lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    block(&node, &f, 1);
    eventually("a tower's cancel is out", || (!unspent()).then_some(()));
    let refused = f.sign(id).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains("a tower cancelled it"), "{refused:?}");
}
