//! What the co-signer's process tests share.
#![allow(dead_code)]

use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::Transaction;
use vigil_testenv::family::Family;
use vigil_testenv::process::Node;
use vigil_testenv::wallet::mine;
use vigil_testenv::webhook::Received;
use vigil_testenv::{eventually, Vault};

/// The example policy of the process tests (DELAY 20; the family sets its towers).
pub use vigil_testenv::household::example;

pub fn block(node: &Node, f: &Family, n: u32) {
    mine(&node.rpc, n, &f.wallet.address());
}

/// Mines past a change's effective height, then until every tower has applied it too: each
/// tower dates a change by its own tip when it heard of it, a block or two later.
pub fn until_applied(node: &Node, f: &Family, change: &Value) {
    let version = Some(change["version"].as_u64().expect("a change's version"));
    block(node, f, (change["effective_height"].as_u64().unwrap() as u32).saturating_sub(tip(node)));
    let path = format!("/v1/clients/{}", f.cosigner.client);
    for t in &f.towers {
        vigil_testenv::eventually("the tower applies the change", || {
            let applied = vigil_testenv::household::get(&t.api, &path, &f.owner()).ok()?["version"].as_u64();
            if applied != version {
                block(node, f, 1);
            }
            (applied == version).then_some(())
        });
    }
}

/// Policy `text` as version 2, `from` replaced by `to` (it must be there: a change that
/// replaced nothing would be a different change).
pub fn version_2(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in {text}");
    text.replace("version = 1", "version = 2").replace(from, to)
}

/// The guardians' key lines of policy `text`, as written (swapped between policies to
/// replace a guardian).
pub fn guardian_lines(text: &str) -> Vec<String> {
    let from = text.find("[guardians]").unwrap();
    let lines: Vec<String> =
        text[from..].lines().filter(|l| l.trim_start().starts_with('"')).map(str::to_owned).take(3).collect();
    assert_eq!(lines.len(), 3, "{text}");
    lines
}

pub fn tip(node: &Node) -> u32 {
    node.rpc.tip().unwrap().height
}

/// Guardians 0 and 1, the quorum, lift the lockdown ending at `until` at height `at`: the
/// answer says it is lifted there.
pub fn quorum_lifts(f: &Family, at: u32, until: u32) {
    f.lift(0, at, until).unwrap();
    assert_eq!(f.lift(1, at, until).unwrap()["until_height"].as_u64(), Some(at as u64), "lifted at {at}");
}

/// The same at the first height the governance wait allows, with room for the quorum to
/// gather; that height.
pub fn quorum_lifts_after_the_wait(node: &Node, f: &Family, until: u32) -> u32 {
    let at = tip(node) + 1_009 + 6;
    quorum_lifts(f, at, until);
    at
}

pub fn alarmed(alarms: &Received, kind: &str) -> bool {
    alarms.lock().unwrap().iter().any(|a| a["kind"] == kind)
}

/// The unvault broadcast and confirmed.
pub fn unvault(node: &Node, f: &Family, vault: &Vault) {
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    block(node, f, 1);
}

pub fn spend(f: &Family, vault: &Vault) -> Result<Value, (u16, String)> {
    f.request_spend(vault, &f.spend_psbt(vault, &f.wallet.address(), 1_000))
}

/// `text` as version 2, adding `tower` under `name`: a change that waits the governance delay.
pub fn adding_tower(text: &str, name: &str, tower: &vigil_testenv::process::TowerProcess) -> String {
    format!(
        "{}\n[[towers]]\nname = \"{name}\"\nurl = \"{}\"\nkey = \"{}\"\n",
        text.replace("version = 1", "version = 2"),
        tower.api.url,
        tower.public_key
    )
}

/// Tower-b enrolled through the co-signer, with `token` from its operator, at the owner's
/// request: the co-signer's answer.
pub fn enroll_tower_b(f: &Family, token: &str) -> Value {
    f.post("/v1/towers", &serde_json::json!({"tower": "tower-b", "token": token}), &f.owner()).unwrap()
}

/// Spend request `id` co-signed and sent: it confirms as the spend of `vault`'s unvault, which
/// no tower cancelled. Returns it.
pub fn signed_and_spent(node: &Node, f: &Family, vault: &Vault, id: u64) -> Transaction {
    // As the owner's client does: a "try again" (the client's record written meanwhile by the
    // co-signer's background work, a change applied at a new block say) is asked again.
    let tx = eventually("the spend co-signed", || match f.sign(id) {
        Ok(tx) => Some(tx),
        Err((409, text)) if text.contains("try again") => None,
        Err(other) => panic!("{other:?}"),
    });
    node.rpc.broadcast(&tx).unwrap();
    block(node, f, 1);
    let spent = vigil_testenv::wallet::spend_of(&node.rpc, vault.unvault_outpoint()).unwrap();
    assert_eq!(spent.compute_txid(), tx.compute_txid(), "no tower cancelled the approved spend");
    tx
}

/// The towers an answer reports as having acknowledged its approval.
pub fn acknowledged_by(answer: &Value) -> Vec<&str> {
    let towers = answer["towers"].as_array().unwrap().iter();
    towers.filter(|t| t["acknowledged"] == true).map(|t| t["name"].as_str().unwrap()).collect()
}

/// The owner's wallet restored on a new device whose heartbeat hashes are `real` and
/// `duress` repeated (two hex digits each); the co-signer's answer.
pub fn restore(f: &Family, real: &str, duress: &str) -> Value {
    let hashes = vigil_cosigner::wire::Restore {
        heartbeat_real: real.repeat(32),
        heartbeat_duress: duress.repeat(32),
    };
    f.post("/v1/restore", &hashes, &f.owner()).unwrap()
}

/// Guardian `g` confirms restore number `restore`.
pub fn confirm_restore(f: &Family, g: usize, restore: u32) -> Result<Value, (u16, String)> {
    f.post("/v1/restore/confirm", &vigil_cosigner::wire::ConfirmRestore { restore }, &f.guardian(g))
}
