//! The flaws a security review of the tower confirmed, each shown fixed against real
//! processes (`vigil node`, `vigil tower` over HTTP on loopback). Each test is named after the
//! finding it covers (`fNN_`, or `low_` for the low-severity ones) and fails on the code before
//! its fix.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_client::{Ceremony, Vault};
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::secp256k1::{Keypair, Message, Secp256k1};
use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use vigil_policy::bitcoin::taproot::{LeafVersion, TapLeafHash};
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut, Txid, Witness};
use vigil_policy::example::auth_keypair;
use vigil_policy::{FundingInput, OneTimeKey, VaultKind};
use vigil_testenv::household::{example, get, post, Household, DELAY};
use vigil_testenv::process::{vigil_node, Node, TowerOptions, TowerProcess};
use vigil_testenv::wallet::{confirmations, mine, spend_of};
use vigil_testenv::webhook::{black_hole, webhook, Received};
use vigil_testenv::{eventually, force_leaf_witness, vigil_policy};
use vigil_tower::wire::{self, ChangePolicy, Panic, PanicRequest};

/// Mines a block to the household's wallet.
fn block(node: &Node, h: &Household) {
    mine(&node.rpc, 1, &h.wallet.address());
}

/// Whether `kind` reached the webhook (for `vault`, when given).
fn alarmed(alarms: &Received, kind: &str, vault: Option<&Vault>) -> bool {
    let vault = vault.map(|v| v.outpoint().to_string());
    alarms
        .lock()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == kind && vault.as_ref().is_none_or(|v| a["vault"] == *v.as_str()))
}

/// Mines a block every 150 ms until `vault`'s unvault is spent by one of its cancels, confirmed;
/// returns (U's height, C's height).
fn cancelled(node: &Node, h: &Household, vault: &Vault) -> (u32, u32) {
    let rpc = &node.rpc;
    for _ in 0..DELAY + 5 {
        std::thread::sleep(Duration::from_millis(150));
        block(node, h);
        if let Some(c) =
            spend_of(rpc, vault.unvault_outpoint()).filter(|c| confirmations(rpc, &c.compute_txid()) > 0)
        {
            assert!(
                vault.graph.graph().cancels.iter().any(|p| p.tx.compute_txid() == c.compute_txid()),
                "a cancel"
            );
            let tip = rpc.tip().unwrap().height;
            let height = |t: &Txid| tip + 1 - confirmations(rpc, t) as u32;
            return (height(&vault.graph.unvault().compute_txid()), height(&c.compute_txid()));
        }
    }
    panic!("vault {} was never cancelled", vault.outpoint());
}

fn tip(rpc: &BitcoindRpc) -> u32 {
    rpc.tip().unwrap().height
}

/// A guardian-signed policy change of `h`'s client to `text`.
fn change(
    h: &mut Household,
    tower: &TowerProcess,
    text: &str,
    guardians: &[usize],
) -> Result<Value, (u16, String)> {
    let by = auth_keypair(&h.keys.guardians[0]);
    change_not_before(h, tower, text, guardians, None, &by)
}

/// [`change`] handed in `by` a party, naming `not_before_height` (the co-signer's height).
fn change_not_before(
    h: &mut Household,
    tower: &TowerProcess,
    text: &str,
    guardians: &[usize],
    not_before_height: Option<u32>,
    by: &Keypair,
) -> Result<Value, (u16, String)> {
    let req = ChangePolicy { not_before_height, ..h.policy_change(text, guardians) };
    post(&tower.api, "/v1/policy", &serde_json::to_vec(&req).unwrap(), by)
}

fn client_view(h: &Household, tower: &TowerProcess) -> Value {
    get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &h.owner_auth()).unwrap()
}

/// Waits until `tower` has seen `vault`'s unvault: one broadcast after it is judged after it
/// (a tower that polled the mempool before the block confirming this one would not be).
fn unvault_seen(h: &Household, tower: &TowerProcess, vault: &Vault) {
    let path = format!("/v1/vaults/{}", vault.outpoint());
    eventually("the tower saw the unvault", || {
        let view = get(&tower.api, &path, &h.owner_auth()).unwrap();
        (view["state"]["unvault_seen"] == true).then_some(())
    });
}

/// Guardian `g` locks the client down at `tower` until `until`, quietly or not.
fn lock_down(h: &Household, tower: &TowerProcess, g: usize, until: u32, quiet: bool) {
    let req = wire::LockdownRequest {
        nonce: h.next_nonce(),
        policy_id: h.policy_id.clone(),
        until_height: until,
        quiet,
    };
    post(&tower.api, "/v1/lockdown", &serde_json::to_vec(&req).unwrap(), &auth_keypair(&h.keys.guardians[g]))
        .unwrap();
}

#[test]
fn f01_an_approval_is_judged_by_the_vaults_own_client() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Household::new(dir.path(), &node, example("client alice"));
    let mut mallory = Household::new(dir.path(), &node, example("client mallory"));
    mallory.use_coins_from(150);
    let (hook, alarms) = webhook();
    let policies = [alice.policy_path.clone(), mallory.policy_path.clone()];
    let tower = TowerProcess::new(&node, &policies, 1, Some(&hook));
    let vault = alice.create_vault(&node.rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    alice.protect(&node.rpc, &tower.api, &vault);
    block(&node, &alice);
    let spend = Txid::from_byte_array([0x66; 32]);
    // Another client of the same tower approves Alice's unvault with its own co-signer...
    let own = mallory.approval(&vault, spend);
    let body = serde_json::to_vec(&own).unwrap();
    let r = post(&tower.api, "/v1/approvals", &body, &mallory.owner_auth());
    assert!(matches!(&r, Err((404, t)) if t.contains("is not registered for client")), "{r:?}");
    // (Answered as a vault the tower does not know: Mallory learns nothing of Alice's.)
    let mut unknown = own.clone();
    let unknown_outpoint = OutPoint::new(Txid::from_byte_array([0x77; 32]), 0).to_string();
    unknown.approval.vault_outpoint = unknown_outpoint.clone();
    unknown.signatures = vec![wire::sign(&unknown.approval.digest(), &auth_keypair(&mallory.keys.cosigner))];
    let body_unknown = serde_json::to_vec(&unknown).unwrap();
    let unknown = post(&tower.api, "/v1/approvals", &body_unknown, &mallory.owner_auth()).unwrap_err();
    let theirs = r.unwrap_err();
    assert_eq!(
        (theirs.0, theirs.1.replace(&vault.outpoint().to_string(), "V")),
        (unknown.0, unknown.1.replace(&unknown_outpoint, "V"))
    );
    let view = get(&tower.api, &format!("/v1/vaults/{}", vault.outpoint()), &mallory.owner_auth());
    assert!(matches!(&view, Err((404, t)) if t.contains("not registered for a client of yours")), "{view:?}");
    // ...or naming Alice's client...
    let mut named = mallory.approval(&vault, spend);
    named.policy_id = alice.policy_id.clone();
    let body = serde_json::to_vec(&named).unwrap();
    let r = post(&tower.api, "/v1/approvals", &body, &mallory.owner_auth());
    assert!(matches!(&r, Err((403, t)) if t.contains("owner or co-signer")), "{r:?}");
    // (Whether the outpoint is one of Alice's vaults or not: the signer is judged first.)
    let mut named_unknown = named.clone();
    named_unknown.approval.vault_outpoint = unknown_outpoint.clone();
    named_unknown.signatures =
        vec![wire::sign(&named_unknown.approval.digest(), &auth_keypair(&mallory.keys.cosigner))];
    let body_unknown = serde_json::to_vec(&named_unknown).unwrap();
    assert_eq!(
        post(&tower.api, "/v1/approvals", &body_unknown, &mallory.owner_auth()).unwrap_err(),
        r.unwrap_err()
    );
    // ...or through Alice's own key, with Mallory's co-signer's signature.
    let r = post(&tower.api, "/v1/approvals", &body, &alice.owner_auth());
    assert!(matches!(&r, Err((400, t)) if t.contains("co-signer's signature")), "{r:?}");
    // Nothing covers the unvault: it is cancelled, and the guardians hear of it.
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    let (u, c) = cancelled(&node, &alice, &vault);
    assert!(c < u + DELAY);
    eventually("the alarm", || alarmed(&alarms, "unvault-cancelled", Some(&vault)).then_some(()));
}

#[test]
fn f02_a_guarded_vault_approved_by_the_guardians_is_spent_at_delay() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("guarded spend"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 2, None);
    // Twice the velocity limit: only a guarded vault may hold it.
    let vault = h.create_vault(rpc, Amount::from_sat(20_000_000), VaultKind::Guarded);
    h.protect(&node.rpc, &tower.api, &vault);
    block(&node, &h);
    let spend = h.delayed_spend(&vault);
    h.approve(&tower.api, &vault, spend.compute_txid()).unwrap();
    rpc.broadcast(vault.graph.unvault()).unwrap();
    block(&node, &h);
    let u_height = tip(rpc);
    while tip(rpc) < u_height + DELAY - 1 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            spend_of(rpc, vault.unvault_outpoint()).is_none(),
            "the tower left the approved unvault alone"
        );
        // One block early, the spend leaf is still closed.
        if tip(rpc) == u_height + DELAY - 2 {
            assert!(rpc.broadcast(&spend).is_err(), "refused one block early");
        }
        block(&node, &h);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(spend_of(rpc, vault.unvault_outpoint()).is_none());
    rpc.broadcast(&spend).unwrap();
    block(&node, &h);
    assert_eq!(confirmations(rpc, &spend.compute_txid()), 1);
    assert_eq!(tip(rpc), u_height + DELAY, "spent in the first block the spend leaf allows");
}

/// A standard vault's spend leaf needs only the owner and the co-signer: a compromised
/// co-signer could sign another spend than the one the guardians approved and hand it to a
/// miner. So its unvault counts against velocity even with the guardians' quorum; a guarded
/// vault's, whose leaf needs them on chain, does not.
#[test]
fn f02_the_guardians_approval_lifts_velocity_for_a_guarded_vault_only() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("quorum and velocity"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 2, None);
    // The velocity limit is 10 M sat.
    let standard: Vec<Vault> =
        (0..2).map(|_| h.create_vault(rpc, Amount::from_sat(6_000_000), VaultKind::Standard)).collect();
    let guarded = h.create_vault(rpc, Amount::from_sat(20_000_000), VaultKind::Guarded);
    for v in standard.iter().chain([&guarded]) {
        h.protect(&node.rpc, &tower.api, v);
        let spend = h.delayed_spend(v).compute_txid();
        let quorum = h.approval_signed_by(v, spend, h.example.guardian_threshold as usize);
        post(&tower.api, "/v1/approvals", &serde_json::to_vec(&quorum).unwrap(), &h.owner_auth()).unwrap();
    }
    block(&node, &h);
    rpc.broadcast(standard[0].graph.unvault()).unwrap();
    rpc.broadcast(guarded.graph.unvault()).unwrap();
    block(&node, &h);
    // Judged in that order (a busy tower could see the next one first).
    unvault_seen(&h, &tower, &standard[0]);
    unvault_seen(&h, &tower, &guarded);
    // 6 M counted, the guarded 20 M not: 6 M more are over the budget, quorum or not.
    rpc.broadcast(standard[1].graph.unvault()).unwrap();
    cancelled(&node, &h, &standard[1]);
    assert!(spend_of(rpc, standard[0].unvault_outpoint()).is_none(), "within the budget: left alone");
    assert!(spend_of(rpc, guarded.unvault_outpoint()).is_none(), "the guardians' own release: left alone");
}

#[test]
fn f03_applied_policy_changes_survive_a_restart_and_a_rewritten_file() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("policy persistence"));
    let mut tower = TowerProcess::new(&node, &[h.policy_path.clone()], 3, None);
    let vaults: Vec<Vault> =
        (0..3).map(|_| h.create_vault(rpc, Amount::from_sat(1_500_000), VaultKind::Standard)).collect();
    for v in &vaults {
        h.protect(&node.rpc, &tower.api, v);
    }
    block(&node, &h);
    // The guardians tighten the velocity limit to 2 M sat: it applies at once.
    let tightened = h.policy_at(2, 2_000_000);
    change(&mut h, &tower, &tightened, &[0, 1]).unwrap();
    assert_eq!(client_view(&h, &tower)["version"], 2);
    tower.kill9();
    tower.start();
    assert_eq!(client_view(&h, &tower)["version"], 2, "the applied change survives the restart");
    // The co-signer approves two unvaults of 1.5 M sat: under the tightened budget, the first
    // passes and the second is cancelled.
    h.policy_version = 2;
    for v in &vaults[..2] {
        let spend = h.delayed_spend(v);
        h.approve(&tower.api, v, spend.compute_txid()).unwrap();
    }
    rpc.broadcast(vaults[0].graph.unvault()).unwrap();
    block(&node, &h);
    unvault_seen(&h, &tower, &vaults[0]);
    rpc.broadcast(vaults[1].graph.unvault()).unwrap();
    cancelled(&node, &h, &vaults[1]);
    assert!(spend_of(rpc, vaults[0].unvault_outpoint()).is_none(), "within the budget: left alone");
    // The operator rewrites the file the configuration names: a new client is pinned beside,
    // and the vaults keep the policy they are enforced under.
    std::fs::write(&h.policy_path, format!("{}\n# edited\n", h.example.to_toml())).unwrap();
    tower.kill9();
    tower.start();
    assert_eq!(client_view(&h, &tower)["version"], 2);
    assert_eq!(tower.metric("vigil_tower_vaults_watched"), Some(3));
    rpc.broadcast(vaults[2].graph.unvault()).unwrap();
    cancelled(&node, &h, &vaults[2]);
}

#[test]
fn f04_after_a_restart_the_tower_decides_at_the_real_tip() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("tip after restart"));
    let mut tower = TowerProcess::new(&node, &[h.policy_path.clone()], 4, None);
    let vault = h.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    mine(rpc, 30, &h.wallet.address());
    let height = tip(rpc) as u64;
    eventually("the tower followed", || {
        (tower.metric("vigil_tower_tip_height") == Some(height)).then_some(())
    });
    tower.kill9();
    tower.start();
    // The first requests after the restart: an approval that expired is refused...
    let mut expired = h.approval(&vault, Txid::from_byte_array([1; 32]));
    expired.approval.expiry_height = height as u32 - 1;
    expired.signatures = vec![wire::sign(&expired.approval.digest(), &auth_keypair(&h.keys.cosigner))];
    let r = post(&tower.api, "/v1/approvals", &serde_json::to_vec(&expired).unwrap(), &h.owner_auth());
    assert!(matches!(&r, Err((400, t)) if t.contains("has passed")), "{r:?}");
    // ...and a loosening waits its full delay from the tip, not from height 0.
    let loosened = h.policy_at(2, 20_000_000);
    change(&mut h, &tower, &loosened, &[0, 1]).unwrap();
    let pending = &client_view(&h, &tower)["pending"][0];
    assert_eq!(
        pending["effective_height"].as_u64(),
        Some(height + vigil_tower::GOVERNANCE_DELAY_BLOCKS as u64)
    );
}

#[test]
fn f05_a_dead_webhook_delays_no_other() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("webhooks"));
    let (live, alarms) = webhook();
    let dead = black_hole();
    // The black hole first: it never answers, and each attempt at it takes its full timeout.
    let options = TowerOptions { webhooks: &[&dead, &live], ..TowerOptions::default() };
    let tower = TowerProcess::configured(&node, &[h.policy_path.clone()], 5, options);
    let vault = h.create_vault(&node.rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    block(&node, &h);
    let start = Instant::now();
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    eventually("the live endpoint heard the alarm", || {
        alarmed(&alarms, "unvault-cancelled", Some(&vault)).then_some(())
    });
    assert!(start.elapsed() < Duration::from_secs(10), "heard after {:?}", start.elapsed());
    assert!(tower.metric("vigil_tower_alarm_outbox").unwrap() >= 1, "still owed to the dead endpoint");
}

#[test]
fn f06_registration_checks_v_on_chain_and_a_registrar_cannot_force_a_sweep() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("v on chain"));
    let (hook, alarms) = webhook();
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 6, Some(&hook));
    let register_as = |h: &mut Household, v: &Vault, funding: Option<&Transaction>| {
        let nonce = h.next_nonce();
        let req = wire::RegisterVault::new(&h.policy_id, nonce, &v.plan, &v.graph, funding);
        post(&tower.api, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &h.owner_auth())
    };
    // A vault whose V exists nowhere, and no funding to show: refused.
    let phantom = h.create_vault(rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    let r = register_as(&mut h, &phantom, None);
    assert!(matches!(&r, Err((400, t)) if t.contains("neither on chain nor in the mempool")), "{r:?}");
    // A funding spending a coin that does not exist: refused.
    let fake_coin = FundingInput {
        outpoint: OutPoint { txid: Txid::from_byte_array([0x42; 32]), vout: 0 },
        txout: TxOut {
            value: Amount::from_sat(3_000_000),
            script_pubkey: h.compiled.intake_descriptor(90).unwrap().script_pubkey(),
        },
        intake_index: 90,
        change: false,
    };
    let keys = h.keys.clone();
    let ghost = Ceremony {
        compiled: &h.compiled,
        coins: std::slice::from_ref(&fake_coin),
        index: 90,
        change: vigil_policy::ChangeTo { index: 91, change_branch: false },
        amount: Amount::from_sat(2_000_000),
        kind: VaultKind::Standard,
        funding_sat_per_vb: 2,
    }
    .run(
        OneTimeKey::generate(),
        OneTimeKey::generate(),
        &mut |p| {
            keys.sign_psbt(
                p,
                &[vigil_policy::example::Signer::Owner(0), vigil_policy::example::Signer::Cosigner],
            )
        },
        &mut vigil_client::no_towers,
    )
    .unwrap();
    let r = register_as(&mut h, &ghost, Some(&ghost.funding));
    assert!(matches!(&r, Err((400, t)) if t.contains("not an unspent output")), "{r:?}");
    // The registrar keeps the one-time keys of a vault of its own making...
    let (owner_once, cosigner_once) = (OneTimeKey::generate(), OneTimeKey::generate());
    let secp = Secp256k1::new();
    let kept = [
        Keypair::from_seckey_slice(&secp, &owner_once.secret_bytes_for_tests()).unwrap(),
        Keypair::from_seckey_slice(&secp, &cosigner_once.secret_bytes_for_tests()).unwrap(),
    ];
    let decoy =
        h.vault_at(rpc, 40, Amount::from_sat(2_000_000), VaultKind::Standard, owner_once, cosigner_once);
    let real = h.create_vault(rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    for v in [&decoy, &real] {
        h.protect(&node.rpc, &tower.api, v);
    }
    // ...and the same index twice is refused.
    let twin = h.vault_at(
        rpc,
        40,
        Amount::from_sat(2_000_000),
        VaultKind::Standard,
        OneTimeKey::generate(),
        OneTimeKey::generate(),
    );
    let r = h.register(&tower.api, &twin);
    assert!(matches!(&r, Err((409, t)) if t.contains("already used")), "{r:?}");
    block(&node, &h);
    // It spends the decoy's V itself: the guardians are alarmed; nothing is swept.
    let mut theft = vigil_policy::unsigned_tx(
        vigil_policy::GRAPH_TX_VERSION,
        [(decoy.outpoint(), vigil_policy::bitcoin::Sequence::ENABLE_RBF_NO_LOCKTIME)],
        vec![TxOut { value: Amount::from_sat(1_990_000), script_pubkey: h.wallet.address().script_pubkey() }],
    );
    let prevout = decoy.graph.graph().vault_txout.clone();
    force_leaf_witness(&mut theft, &prevout, &decoy.descriptors.vault, 0, &kept).unwrap();
    rpc.broadcast(&theft).unwrap();
    eventually("the alarm", || alarmed(&alarms, "foreign-vault-spend", Some(&decoy)).then_some(()));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        block(&node, &h);
    }
    assert!(spend_of(rpc, real.outpoint()).is_none(), "a registrar's own spend swept nothing");
    assert!(!alarmed(&alarms, "panic", None));
}

#[test]
fn f06_a_client_has_at_most_the_vaults_the_tower_takes() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("vault cap"));
    let options =
        TowerOptions { top: "poll_interval_ms = 50\nmax_vaults_per_client = 2\n", ..TowerOptions::default() };
    let tower = TowerProcess::configured(&node, &[h.policy_path.clone()], 16, options);
    for i in 0..3 {
        let v = h.create_vault(&node.rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
        let r = h.register(&tower.api, &v);
        match i {
            2 => assert!(matches!(&r, Err((409, t)) if t.contains("as many as this tower takes")), "{r:?}"),
            _ => assert!(r.is_ok(), "{r:?}"),
        }
    }
}

#[test]
fn f07_submitting_a_waiting_change_again_does_not_postpone_it() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("no postponing"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 7, None);
    let loosening = h.policy_at(2, 20_000_000);
    change(&mut h, &tower, &loosening, &[0, 1]).unwrap();
    let first = client_view(&h, &tower)["pending"][0]["effective_height"].as_u64().unwrap();
    mine(&node.rpc, 5, &h.wallet.address());
    let height = tip(&node.rpc) as u64;
    eventually("the tower followed", || {
        (tower.metric("vigil_tower_tip_height") == Some(height)).then_some(())
    });
    change(&mut h, &tower, &loosening, &[1, 2]).unwrap();
    assert_eq!(
        client_view(&h, &tower)["pending"][0]["effective_height"].as_u64(),
        Some(first),
        "not restarted"
    );
}

/// The co-signer applies a loosening when its wait ends there and stamps approvals with the
/// new version; a tower whose wait began a little later (when the change reached it) takes
/// them: refused, the owner's unvault, sent on "approved", would be cancelled there.
#[test]
fn f07_an_approval_of_the_version_still_waiting_here_is_taken() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("approval of a waiting version"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 7, None);
    let vault = h.create_vault(&node.rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    block(&node, &h);
    let loosening = h.policy_at(2, 20_000_000);
    change(&mut h, &tower, &loosening, &[0, 1]).unwrap();
    assert_eq!(client_view(&h, &tower)["pending"][0]["version"], 2);
    h.policy_version = 3;
    let r = h.approve(&tower.api, &vault, Txid::from_byte_array([0x66; 32]));
    assert!(matches!(&r, Err((400, t)) if t.contains("the pinned one is 1, 2 waits")), "{r:?}");
    h.policy_version = 2;
    h.approve(&tower.api, &vault, Txid::from_byte_array([0x66; 32])).unwrap();
}

/// A co-signer whose governance wait is longer than the towers' names the height it applies
/// a change from: no tower applies it sooner (the guardians' cancel of it would then be
/// judged there by the guardians it put in). A height absurdly far ahead is refused, and
/// changes nothing.
#[test]
fn f07_a_change_applies_no_sooner_than_the_cosigner_applies_it() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("co-signer's longer wait"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 7, None);
    let loosening = h.policy_at(2, 20_000_000);
    let tip = tip(&node.rpc);
    let (cosigner, guardian) = (auth_keypair(&h.keys.cosigner), auth_keypair(&h.keys.guardians[2]));
    let waits_until = |h: &Household| client_view(h, &tower)["pending"][0]["effective_height"].as_u64();
    let far = tip + vigil_tower::client::MAX_GOVERNANCE_DELAY_BLOCKS + 7; // beyond its slack
    let refused = change_not_before(&mut h, &tower, &loosening, &[0, 1], Some(far), &cosigner).unwrap_err();
    assert!(refused.0 == 400 && refused.1.contains("not_before_height"), "{refused:?}");
    assert!(client_view(&h, &tower)["pending"].as_array().is_none_or(|p| p.is_empty()), "nothing waits");
    // Handed in first by another party naming a height: the guardians sign the file, not the
    // height, so only the co-signer's counts. The co-signer's, after it, moves it later.
    change_not_before(&mut h, &tower, &loosening, &[0, 1], Some(tip + 9_000), &guardian).unwrap();
    assert_eq!(waits_until(&h), Some(tip as u64 + 1_009), "a guardian does not postpone it");
    change_not_before(&mut h, &tower, &loosening, &[0, 1], Some(tip + 2_016), &cosigner).unwrap();
    assert_eq!(waits_until(&h), Some(tip as u64 + 2_016));
    change_not_before(&mut h, &tower, &loosening, &[0, 1], Some(tip + 1_500), &cosigner).unwrap();
    assert_eq!(waits_until(&h), Some(tip as u64 + 2_016), "nor earlier again");
    // A height sooner than the tower's own wait moves nothing earlier.
    let other = h.policy_at(3, 30_000_000);
    change_not_before(&mut h, &tower, &other, &[0, 1], Some(tip + 5), &cosigner).unwrap();
    assert_eq!(waits_until(&h), Some(tip as u64 + 1_009));
}

/// A lift names the lockdown it ends: once a later lift cut that lockdown short, another
/// lift the quorum signed for it does not end a lockdown set since, ending sooner.
#[test]
fn f07_a_lift_for_a_lockdown_cut_short_since_does_not_end_another() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("a lift for another lockdown"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 7, None);
    let t = tip(&node.rpc);
    let lock = |h: &mut Household, until: u32| lock_down(h, &tower, 2, until, false);
    let lift = |h: &mut Household, at: u32, until: u32| {
        let req = serde_json::to_vec(&h.lift(at, until)).unwrap();
        post(&tower.api, "/v1/lockdown/lift", &req, &auth_keypair(&h.keys.guardians[0]))
    };
    lock(&mut h, t + 3_000);
    lift(&mut h, t + 1_015, t + 3_000).unwrap();
    lock(&mut h, t + 2_000);
    assert_eq!(client_view(&h, &tower)["locked_until"].as_u64(), Some(t as u64 + 2_000));
    let r = lift(&mut h, t + 1_020, t + 3_000).unwrap_err();
    assert!(r.0 == 409 && r.1.contains("not this lift's"), "{r:?}");
    assert_eq!(client_view(&h, &tower)["locked_until"].as_u64(), Some(t as u64 + 2_000), "still locked");
    // Its own lift ends it.
    lift(&mut h, t + 1_020, t + 2_000).unwrap();
    assert_eq!(client_view(&h, &tower)["locked_until"].as_u64(), Some(t as u64 + 1_020));
}

/// A guardian's lockdown sent quiet (the co-signer told the guardian the owner typed the
/// duress code) stays quiet at a tower the co-signer's duress order has not reached yet: the
/// owner's view shows no lockdown.
#[test]
fn f07_a_guardians_quiet_lockdown_is_quiet_at_a_tower_without_the_duress_order() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let h = Household::new(dir.path(), &node, example("a guardian's quiet lockdown"));
    let tower = TowerProcess::new(&node, std::slice::from_ref(&h.policy_path), 7, None);
    let until = tip(&node.rpc) + 100;
    // Not on the owner's word: a captor holding its key would make the guardians' quiet too.
    let by_owner = wire::LockdownRequest {
        nonce: h.next_nonce(),
        policy_id: h.policy_id.clone(),
        until_height: until,
        quiet: true,
    };
    let refused = post(&tower.api, "/v1/lockdown", &serde_json::to_vec(&by_owner).unwrap(), &h.owner_auth());
    assert!(matches!(&refused, Err((403, t)) if t.contains("quiet")), "{refused:?}");
    lock_down(&h, &tower, 2, until, true);
    let shown = |h: &Household| client_view(h, &tower).get("locked_until").is_some_and(|v| !v.is_null());
    assert!(!shown(&h), "{}", client_view(&h, &tower));
    // It holds: a guardian's plain lockdown sent after it is kept quiet too.
    lock_down(&h, &tower, 1, until, false);
    assert!(!shown(&h), "{}", client_view(&h, &tower));
}

/// The co-signer's duress mark, on an approval the tower holds already without it (the owner's
/// copy came first), is taken and kept across a restart: the unvault is cancelled late, though
/// no lockdown holds at this tower.
#[test]
fn f07_a_duress_mark_after_an_unmarked_copy_is_taken_and_kept_across_a_restart() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("a late duress mark"));
    let mut tower = TowerProcess::new(&node, std::slice::from_ref(&h.policy_path), 17, None);
    let vault = h.create_vault(&node.rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    block(&node, &h);
    let unmarked = h.approval(&vault, h.delayed_spend(&vault).compute_txid());
    post(&tower.api, "/v1/approvals", &serde_json::to_vec(&unmarked).unwrap(), &h.owner_auth()).unwrap();
    let marked = wire::RegisterApproval { nonce: h.next_nonce(), duress: true, ..unmarked.clone() };
    let cosigner = auth_keypair(&h.keys.cosigner);
    post(&tower.api, "/v1/approvals", &serde_json::to_vec(&marked).unwrap(), &cosigner).unwrap();
    tower.kill9();
    tower.start();
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    block(&node, &h);
    let opens = tip(&node.rpc) + DELAY;
    let cancelled = || spend_of(&node.rpc, vault.unvault_outpoint()).is_some();
    // Nothing on chain soon after the unvault (an attacker watching learns nothing)...
    while tip(&node.rpc) + vigil_tower::watch::DURESS_MARGIN_BLOCKS + 1 < opens {
        block(&node, &h);
        let height = tip(&node.rpc);
        eventually("the tower followed", || {
            (tower.metric("vigil_tower_tip_height") == Some(height as u64)).then_some(())
        });
        assert!(!cancelled(), "cancelled early, at {height}");
    }
    // ...then its cancel, before the spend leaf opens.
    block(&node, &h);
    eventually("the unvault was cancelled late", || cancelled().then_some(()));
    assert!(tip(&node.rpc) < opens);
}

#[test]
fn f08_a_panic_is_bound_to_a_fresh_id_and_a_window() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("panic window"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 8, None);
    let vault = h.create_vault(&node.rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    block(&node, &h);
    let height = tip(&node.rpc);
    eventually("the tower followed", || {
        (tower.metric("vigil_tower_tip_height") == Some(height as u64)).then_some(())
    });
    let guardians: Vec<Keypair> = (0..3).map(|g| auth_keypair(&h.keys.guardians[g])).collect();
    let send = |h: &mut Household, decision: &Panic, poster: usize| {
        let signatures = [0, 1].iter().map(|g| wire::sign(&decision.digest(), &guardians[*g])).collect();
        let req = PanicRequest { nonce: h.next_nonce(), panic: decision.clone(), signatures };
        post(&tower.api, "/v1/panic", &serde_json::to_vec(&req).unwrap(), &guardians[poster])
    };
    let client = h.policy_id.clone();
    let decision = |id: u8, not_after: u32| Panic {
        policy_id: client.clone(),
        id: format!("{id:02x}").repeat(32),
        not_after_height: not_after,
    };
    let r = send(&mut h, &decision(1, height - 1), 0);
    assert!(matches!(&r, Err((400, t)) if t.contains("has passed")), "{r:?}");
    let r = send(&mut h, &decision(1, height + 1_000), 0);
    assert!(matches!(&r, Err((400, t)) if t.contains("blocks ahead")), "{r:?}");
    let r = send(&mut h, &Panic { id: "not hex".into(), ..decision(1, height + 5) }, 0);
    assert!(matches!(&r, Err((400, t)) if t.contains("panic.id")), "{r:?}");
    let valid = decision(2, height + 5);
    send(&mut h, &valid, 0).unwrap();
    // One guardian replays it later, under a fresh nonce: the tower acted on that id already.
    let r = send(&mut h, &valid, 1);
    assert!(matches!(&r, Err((409, t)) if t.contains("already acted on")), "{r:?}");
}

#[test]
fn f09_a_vault_registered_after_its_unvault_confirmed_is_cancelled_at_once() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("late registration"));
    let (hook, alarms) = webhook();
    let vault = h.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    rpc.broadcast(&vault.funding).unwrap();
    block(&node, &h);
    rpc.broadcast(vault.graph.unvault()).unwrap();
    mine(rpc, 3, &h.wallet.address());
    let u_height = tip(rpc) - 2;
    // A tower joins afterwards (a fresh store starts at the tip) and is handed the vault.
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 9, Some(&hook));
    assert_eq!(tower.metric("vigil_tower_tip_height"), Some(tip(rpc) as u64), "it starts at the tip");
    h.register(&tower.api, &vault).unwrap();
    let (u, c) = cancelled(&node, &h, &vault);
    assert_eq!(u, u_height);
    assert!(c < u + DELAY, "cancelled at {c}, DELAY ends at {}", u + DELAY);
    eventually("the alarm", || alarmed(&alarms, "unvault-cancelled", Some(&vault)).then_some(()));
}

#[test]
fn low_nonces_are_bounded_and_requests_bound_to_their_tower() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("binding"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 10, None);
    let other = TowerProcess::new(&node, &[h.policy_path.clone()], 11, None);
    let vault = h.create_vault(&node.rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    // A nonce of u64::MAX would lock the key out for good: refused, and the key still works.
    let req =
        wire::RegisterVault::new(&h.policy_id, u64::MAX, &vault.plan, &vault.graph, Some(&vault.funding));
    let r = post(&tower.api, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &h.owner_auth());
    assert!(matches!(&r, Err((409, t)) if t.contains("first nonce")), "{r:?}");
    // A request signed for one tower does not verify at another.
    let req = wire::RegisterVault::new(&h.policy_id, 1, &vault.plan, &vault.graph, Some(&vault.funding));
    let body = serde_json::to_vec(&req).unwrap();
    let (key, sig) = wire::sign_request(&h.owner_auth(), &tower.api.key, "/v1/vaults", &body);
    let replayed = ureq::post(&format!("{}/v1/vaults", other.api.url))
        .set("x-vigil-key", &key)
        .set("x-vigil-signature", &sig)
        .send_bytes(&body);
    assert!(matches!(replayed, Err(ureq::Error::Status(401, _))));
    post(&tower.api, "/v1/vaults", &body, &h.owner_auth()).unwrap();
    // A signed GET expires: the same request two minutes later is refused.
    let path = format!("/v1/clients/{}", h.policy_id);
    let old = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 600)
        .to_string();
    let (key, sig) = wire::sign_request(&h.owner_auth(), &tower.api.key, &path, old.as_bytes());
    let stale = ureq::get(&format!("{}{path}", tower.api.url))
        .set("x-vigil-key", &key)
        .set("x-vigil-signature", &sig)
        .set("x-vigil-time", &old)
        .call();
    assert!(matches!(stale, Err(ureq::Error::Status(401, _))));
    assert_eq!(client_view(&h, &tower)["version"], 1);
}

#[test]
fn low_a_signature_with_another_sighash_type_is_refused() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("sighash"));
    let tower = TowerProcess::new(&node, &[h.policy_path.clone()], 12, None);
    let (owner_once, cosigner_once) = (OneTimeKey::generate(), OneTimeKey::generate());
    let secp = Secp256k1::new();
    let owner = Keypair::from_seckey_slice(&secp, &owner_once.secret_bytes_for_tests()).unwrap();
    let cosigner = Keypair::from_seckey_slice(&secp, &cosigner_once.secret_bytes_for_tests()).unwrap();
    let vault =
        h.vault_at(&node.rpc, 0, Amount::from_sat(2_000_000), VaultKind::Standard, owner_once, cosigner_once);
    // The cheapest cancel, signed again with SIGHASH_ALL spelled out (65-byte signatures):
    // valid for the kernel, but not the DEFAULT the graph commits to.
    let nonce = h.next_nonce();
    let mut req =
        wire::RegisterVault::new(&h.policy_id, nonce, &vault.plan, &vault.graph, Some(&vault.funding));
    let mut cancel = vault.graph.cancel(0).unwrap().clone();
    let items: Vec<Vec<u8>> = cancel.input[0].witness.iter().map(<[u8]>::to_vec).collect();
    let (script, control) = (ScriptBuf::from_bytes(items[2].clone()), items[3].clone());
    let leaf = TapLeafHash::from_script(&script, LeafVersion::TapScript);
    let prevout = vault.unvault_txout();
    let sighash = SighashCache::new(&cancel)
        .taproot_script_spend_signature_hash(0, &Prevouts::All(&[&prevout]), leaf, TapSighashType::All)
        .unwrap();
    let message = Message::from_digest(sighash.to_byte_array());
    let sign = |k: &Keypair| {
        let mut sig = secp.sign_schnorr(&message, k).as_ref().to_vec();
        sig.push(TapSighashType::All as u8);
        sig
    };
    cancel.input[0].witness =
        Witness::from_slice(&[sign(&cosigner), sign(&owner), script.to_bytes(), control]);
    vigil_regtest::kernel::verify_inputs(&cancel, std::slice::from_ref(&prevout))
        .expect("valid for consensus");
    req.cancels[0] = vigil_policy::bitcoin::consensus::encode::serialize_hex(&cancel);
    let r = post(&tower.api, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &h.owner_auth());
    assert!(matches!(&r, Err((400, t)) if t.contains("sighash type other than DEFAULT")), "{r:?}");
    assert_eq!(tower.metric("vigil_tower_vaults_watched"), Some(0));
}

#[test]
fn low_vigil_node_credentials_are_cores() {
    let dir = tempfile::tempdir().unwrap();
    let exe = vigil_testenv::process::vigil_exe();
    // An empty password would let anyone in: the node refuses to start.
    let out = std::process::Command::new(&exe)
        .args(["node", "--datadir", dir.path().join("a").to_str().unwrap(), "--rpcport", "1"])
        .args(["--rpcuser", "u", "--rpcpassword", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty RPC password"));
    // Without credentials it writes a cookie only its owner can read, as Core does, and a
    // client reads it.
    let datadir = dir.path().join("b");
    let port = vigil_testenv::process::free_port();
    let mut child = std::process::Command::new(&exe)
        .args(["node", "--datadir", datadir.to_str().unwrap(), "--rpcport", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cookie = datadir.join(".cookie");
    eventually("the cookie", || cookie.exists().then_some(()));
    let rpc = BitcoindRpc::with_cookie(&format!("http://127.0.0.1:{port}"), &cookie);
    vigil_testenv::process::wait_ready(&rpc);
    assert_eq!(rpc.call("getblockcount", json!([])).unwrap(), 0);
    let wrong = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "__cookie__", "guess");
    assert!(matches!(wrong.call("getblockcount", json!([])), Err(vigil_chain::BackendError::Unauthorized)));
    rpc.call("stop", json!([])).unwrap();
    child.wait().unwrap();
    assert!(!cookie.exists(), "removed at shutdown");
}

#[test]
fn h1_a_policy_change_cannot_raise_the_ladder_beyond_the_fee_wallet() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("ladder ceiling"));
    let fee_wallet = "[fee_wallet]\nkey_file = \"{dir}/fee.key\"\nstress_sat_per_vb = 300\n";
    let mut tower = TowerProcess::with_fee_key(&node, &[h.policy_path.clone()], 12, fee_wallet, &[0x43; 32]);
    let steep = h.policy_at(2, 10_000_000).replace("250]", "250, 500]");
    let r = change(&mut h, &tower, &steep, &[0, 1]);
    assert!(matches!(&r, Err((400, t)) if t.contains("stress feerate")), "{r:?}");
    // A ladder still below the stress feerate is accepted, and the tower restarts.
    let steeper = h.policy_at(2, 10_000_000).replace("250]", "250, 299]");
    change(&mut h, &tower, &steeper, &[0, 1]).unwrap();
    tower.kill9();
    tower.start();
    assert_eq!(client_view(&h, &tower)["pending"][0]["version"], 2);
}

#[test]
fn m3_registration_needs_no_transaction_index() {
    let Some(core) = vigil_testenv::process::bitcoind_without_txindex() else { return };
    let rpc = &core.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &core, example("no txindex"));
    let tower = TowerProcess::new(&core, &[h.policy_path.clone()], 14, None);
    // V confirmed before it is registered: found through the UTXO set.
    let vault = h.create_vault(rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    rpc.broadcast(&vault.funding).unwrap();
    block(&core, &h);
    h.register(&tower.api, &vault).unwrap();
    // And it is protected: an unapproved unvault is cancelled.
    rpc.broadcast(vault.graph.unvault()).unwrap();
    block(&core, &h);
    eventually("a cancel", || {
        block(&core, &h);
        let spend = spend_of(rpc, vault.unvault_outpoint())?;
        vault.graph.graph().cancels.iter().any(|c| c.tx.compute_txid() == spend.compute_txid()).then_some(())
    });
}

#[test]
fn m4_registering_again_after_a_crash_catches_up_with_the_vaults_history() {
    use vigil_tower::store::{SqliteStore, TowerStore};
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("crash between store and history"));
    let mut tower = TowerProcess::new(&node, &[h.policy_path.clone()], 15, None);
    let vault = h.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    rpc.broadcast(&vault.funding).unwrap();
    block(&node, &h);
    rpc.broadcast(vault.graph.unvault()).unwrap();
    mine(rpc, 2, &h.wallet.address());
    let height = tip(rpc) as u64;
    eventually("the tower followed", || {
        (tower.metric("vigil_tower_tip_height") == Some(height)).then_some(())
    });
    // The tower died after storing the vault, before recording what its history meant: the
    // vault is in the store, the unvault already behind the tower's position.
    tower.kill9();
    let nonce = h.next_nonce();
    let req = wire::RegisterVault::new(&h.policy_id, nonce, &vault.plan, &vault.graph, Some(&vault.funding));
    let body = serde_json::to_vec(&req).unwrap();
    let client = vigil_tower::Client::new(&h.policy_id, &h.example.to_toml()).unwrap();
    let (stored, _) = vigil_tower::registration::checked_vault(&client, &req).unwrap();
    let digest = vigil_policy::bitcoin::hashes::sha256::Hash::hash(&body).to_string();
    let mut store = SqliteStore::open(&tower.dir.path().join("data/tower.sqlite")).unwrap();
    let owner = auth_keypair(&h.keys.owners[0]).x_only_public_key().0.to_string();
    store.register_vault(&owner, nonce, &stored, &digest, 10).unwrap();
    drop(store);
    tower.start();
    // The owner's device, never acknowledged, sends the very request again: the same
    // registration (not a replay), and the history is caught up.
    post(&tower.api, "/v1/vaults", &body, &h.owner_auth()).unwrap();
    // Another request for it is a replay still.
    let mut other = req.clone();
    other.funding = None;
    let r = post(&tower.api, "/v1/vaults", &serde_json::to_vec(&other).unwrap(), &h.owner_auth());
    assert!(matches!(&r, Err((409, t)) if t.contains("replayed")), "{r:?}");
    cancelled(&node, &h, &vault);
}

#[test]
fn low_metrics_waiting_on_the_store_hold_up_nothing_else() {
    let Some(url) = vigil_testenv::process::postgres() else { return };
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let h = Household::new(dir.path(), &node, example("metrics off the lock"));
    let schema = vigil_testenv::process::unique_schema("tower_metrics");
    let store = format!("[store]\nkind = \"postgres\"\nurl = {url:?}\nschema = \"{schema}\"\n");
    let tower = TowerProcess::with_store(&node, std::slice::from_ref(&h.policy_path), 16, &store);
    assert_eq!(tower.metric("vigil_tower_alarm_outbox"), Some(0));
    // An operator's long query holds the alarm table: counting the outbox has to wait.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut hold = admin.transaction().unwrap();
    hold.batch_execute(&format!("LOCK TABLE {schema}.alarms IN ACCESS EXCLUSIVE MODE")).unwrap();
    let api = tower.api.clone();
    let scrape = std::thread::spawn(move || ureq::get(&format!("{}/metrics", api.url)).call().is_ok());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!scrape.is_finished(), "the scrape waits for the table");
    // Meanwhile the tower still answers its clients (it decides under the same lock).
    let start = Instant::now();
    let view = client_view(&h, &tower);
    assert!(start.elapsed() < Duration::from_secs(2), "answered after {:?}", start.elapsed());
    assert_eq!(view["version"], 1, "{view}");
    hold.rollback().unwrap();
    assert!(scrape.join().unwrap(), "the scrape completes once the table is free");
    drop(tower);
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}
