//! The co-signer as a family and its provider meet it: real `vigil node`, `vigil cosigner`
//! and `vigil tower` processes over signed HTTP on loopback.

mod common;

use common::*;
use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::Amount;
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, Policy, VaultKind};
use vigil_testenv::cosigner::CosignerProcess;
use vigil_testenv::family::Family;
use vigil_testenv::household::DELAY;
use vigil_testenv::process::vigil_node;
use vigil_testenv::wallet::{confirmations, spend_of};
use vigil_testenv::webhook::webhook;
use vigil_testenv::{eventually, Vault};

#[test]
fn a_standard_spend_within_limits_is_approved_at_once_and_co_signed_only_after_delay() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner standard"), 2, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    for t in &f.towers {
        assert_eq!(
            eventually("the tower watches the vault", || t
                .metric("vigil_tower_vaults_watched")
                .filter(|n| *n == 1)),
            1
        );
    }
    let approved = spend(&f, &vault).unwrap();
    assert_eq!(approved["state"], "approved", "{approved}");
    assert!(approved["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true), "{approved}");
    let id = approved["id"].as_u64().unwrap();
    // Before the unvault confirms, and one block before DELAY: nothing is signed.
    assert_eq!(f.sign(id).unwrap_err().0, 409);
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 2);
    let early = f.sign(id).unwrap_err();
    assert!(early.1.contains("can be signed from block"), "{early:?}");
    block(&node, &f, 1);
    let tx = f.sign(id).unwrap();
    assert_eq!(tx.compute_txid().to_string(), approved["spend_txid"].as_str().unwrap());
    node.rpc.broadcast(&tx).unwrap();
    block(&node, &f, 1);
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1);
    // No tower cancelled it: it was approved at each.
    assert_eq!(spend_of(&node.rpc, vault.unvault_outpoint()).unwrap().compute_txid(), tx.compute_txid());
}

#[test]
fn the_per_spend_limit_and_velocity_decide_what_needs_the_guardians() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut e = example("cosigner limits");
    e.velocity_limit_sat = 5_000_000;
    e.services.velocity_window_blocks = Some(30);
    // The unvault of a 2,000,000-sat vault releases this much (its fee and anchor aside).
    let mut probe = Family::new(&node, &co, e.clone(), 1, None);
    let released =
        probe.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard).unvault_txout().value.to_sat();
    e.seed = "cosigner limits 2".into();
    e.services.spend_limit_sat = Some(released);
    let mut f = Family::new(&node, &co, e, 1, None);
    f.use_coins_from(40);
    let at_limit = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let over = f.vault(&node, Amount::from_sat(2_000_001), VaultKind::Standard);
    let a = spend(&f, &at_limit).unwrap();
    assert_eq!(a["state"], "approved", "just under (at) the limit: {a}");
    let b = spend(&f, &over).unwrap();
    assert_eq!(b["state"], "waiting", "one sat over the limit: {b}");
    assert_eq!(b["approvals_needed"], 2);
    // Velocity: 5,000,000 sat a window of 30 blocks, each unvault counted as the towers count
    // it: from the height it confirmed at, for the window and that height.
    let v: Vec<Vault> =
        (0..4).map(|_| f.vault(&node, Amount::from_sat(1_900_000), VaultKind::Standard)).collect();
    unvault(&node, &f, &at_limit);
    block(&node, &f, 30); // it leaves the window
    assert_eq!(spend(&f, &v[0]).unwrap()["state"], "approved");
    unvault(&node, &f, &v[0]);
    let first_at = tip(&node);
    block(&node, &f, 5);
    assert_eq!(spend(&f, &v[1]).unwrap()["state"], "approved");
    unvault(&node, &f, &v[1]);
    // Two unvaults (~3.8M) plus ~1.9M: over budget until the first leaves the window. A
    // standard vault's spend leaf does not need the guardians, so their approval would not
    // lift the towers' count: refused, saying from when it fits.
    // (A block more than the towers count it: a tower's node may be a block behind.)
    block(&node, &f, first_at + 30 - tip(&node));
    let (status, why) = spend(&f, &v[2]).unwrap_err();
    assert_eq!(status, 409, "{why}");
    assert!(
        why.contains("velocity budget") && why.contains(&format!("from block {}", first_at + 31)),
        "the window's last block still counts the first approval: {why}"
    );
    // The guardians' quorum on a standard vault's spend counts too: their last vote, over
    // the budget, is refused and not counted...
    let b_id = b["id"].as_u64().unwrap();
    assert_eq!(f.vote(0, b_id, true).unwrap()["state"], "waiting");
    let (status, why) = f.vote(1, b_id, true).unwrap_err();
    assert!(status == 409 && why.contains("your vote is not counted"), "{status} {why}");
    block(&node, &f, 1);
    // ...and taken once the first approval left the window; it uses the budget up.
    let approved = f.vote(1, b_id, true).unwrap();
    assert_eq!(approved["state"], "approved", "the first approval left the window: {approved}");
    let (status, why) = spend(&f, &v[3]).unwrap_err();
    assert!(status == 409 && why.contains("velocity budget"), "{status} {why}");
}

/// The co-signer counts an approval as the towers count its unvault: from the height it
/// confirmed at (a slow one counts later), for the window and that height, and a block more
/// (a tower's node may be a block behind). Approved as soon as the co-signer allows, the next
/// unvault is not cancelled as over the budget.
#[test]
fn velocity_is_counted_as_the_towers_count_it_from_the_unvaults_confirmation() {
    const WINDOW: u32 = 30;
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut e = example("cosigner velocity as the towers count it");
    e.velocity_limit_sat = 2_500_000;
    e.services.velocity_window_blocks = Some(WINDOW);
    let mut f = Family::new(&node, &co, e, 1, None);
    let (first, next) = (
        f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard),
        f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard),
    );
    assert_eq!(spend(&f, &first).unwrap()["state"], "approved");
    let approved_at = tip(&node);
    // Its unvault goes out ten blocks later: the towers count it from there.
    block(&node, &f, 10);
    unvault(&node, &f, &first);
    let confirmed = tip(&node);
    assert_eq!(confirmed, approved_at + 11);
    block(&node, &f, approved_at + WINDOW + 2 - tip(&node));
    let (status, why) = spend(&f, &next).unwrap_err();
    assert!(
        status == 409 && why.contains(&format!("from block {}", confirmed + WINDOW + 1)),
        "past its approval's window, inside its unvault's: {status} {why}"
    );
    block(&node, &f, confirmed + WINDOW - tip(&node));
    assert_eq!(spend(&f, &next).unwrap_err().0, 409, "one block early");
    block(&node, &f, 1);
    assert_eq!(spend(&f, &next).unwrap()["state"], "approved");
    // Sent at once: the tower sees it as within the budget.
    node.rpc.broadcast(next.graph.unvault()).unwrap();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        block(&node, &f, 1);
    }
    assert!(spend_of(&node.rpc, next.unvault_outpoint()).is_none(), "the tower did not cancel it");
}

/// A vault asked for again (its approval lapsed unused) is not counted beside itself: its
/// coins leave it once.
#[test]
fn a_vault_asked_again_after_its_approval_lapsed_is_not_counted_beside_itself() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 4");
    let mut e = example("cosigner asked again");
    e.velocity_limit_sat = 2_500_000;
    let mut f = Family::new(&node, &co, e, 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let first = spend(&f, &vault).unwrap();
    assert_eq!(first["state"], "approved");
    // Lapsed: past its expiry and the co-signer's margin, its unvault never sent.
    block(&node, &f, 4 + 6);
    let again = spend(&f, &vault).unwrap();
    assert_eq!(again["state"], "approved", "{again}");
    assert_ne!(again["id"], first["id"]);
}

#[test]
fn a_guarded_spend_waits_for_the_quorum_and_one_denial_is_final() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let co = CosignerProcess::new(&node, &format!("[alarms]\nwebhooks = [{url:?}]\n"));
    let mut f = Family::new(&node, &co, example("cosigner guardians"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let denied = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let asked = spend(&f, &vault).unwrap();
    assert_eq!(asked["state"], "waiting");
    eventually("the guardians are asked", || alarmed(&alarms, "approval-needed").then_some(()));
    let id = asked["id"].as_u64().unwrap();
    // An owner cannot approve its own spend.
    assert_eq!(
        f.post(&format!("/v1/spends/{id}/vote"), &serde_json::json!({"approve": true}), &f.owner())
            .unwrap_err()
            .0,
        403
    );
    // m - 1 = 1 approval: still waiting; the same guardian again changes nothing.
    let one = f.vote(0, id, true).unwrap();
    assert_eq!((one["state"].as_str(), one["approvals"].as_u64()), (Some("waiting"), Some(1)));
    assert_eq!(f.vote(0, id, true).unwrap_err().0, 409);
    let two = f.vote(1, id, true).unwrap();
    assert_eq!(two["state"], "approved", "{two}");
    assert!(two["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true), "{two}");
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    block(&node, &f, 1);
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1, "the guarded spend completes at DELAY + 1");

    // A denial after m - 1 approvals is final.
    let asked = spend(&f, &denied).unwrap();
    let id = asked["id"].as_u64().unwrap();
    f.vote(0, id, true).unwrap();
    let no = f.vote(2, id, false).unwrap();
    assert_eq!(no["state"], "denied");
    assert_eq!(f.vote(1, id, true).unwrap_err().0, 409, "nothing approves a denied request");
    assert_eq!(f.sign(id).unwrap_err().0, 409);
}

#[test]
fn a_request_past_its_approvals_expiry_frees_its_vault_unless_its_unvault_confirmed_in_time() {
    const EXPIRY: u32 = 6;
    // Blocks past an approval's expiry before the co-signer judges it from the chain.
    const MARGIN: u32 = 6;
    let node = vigil_node();
    let co = CosignerProcess::new(&node, &format!("approval_expiry_blocks = {EXPIRY}"));
    // Room for four of these vaults' releases, not five: each vault's coins count once,
    // however many approvals it had (below, two vaults get a second).
    let mut e = example("cosigner expiry");
    e.velocity_limit_sat = 9_000_000;
    let mut f = Family::new(&node, &co, e, 1, None);
    let late = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let in_time = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let pending = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let guarded = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let other_spend = |v: &Vault| f.request_spend(v, &f.spend_psbt(v, &f.wallet.address(), 2_000));
    let acknowledged = |s: &Value| s["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true);
    let held = |v: &Vault| {
        let held = other_spend(v).unwrap_err();
        assert!(held.0 == 409 && held.1.contains("one spend per vault"), "{held:?}");
    };
    let id = |s: &Value| s["id"].as_u64().unwrap();
    // A block of `txs` only: what else is pending stays so.
    let block_of = |txs: &[&vigil_policy::bitcoin::Transaction]| {
        let txs: Vec<String> =
            txs.iter().map(|t| vigil_policy::bitcoin::consensus::encode::serialize_hex(*t)).collect();
        node.rpc
            .call(
                "vigil_generateblock",
                serde_json::json!([null, f.wallet.address().to_string(), txs, false]),
            )
            .unwrap();
    };
    let empty_blocks = |n: u32| (0..n).for_each(|_| block_of(&[]));

    let late_1 = spend(&f, &late).unwrap();
    let in_time_1 = spend(&f, &in_time).unwrap();
    let pending_1 = spend(&f, &pending).unwrap();
    for s in [&late_1, &in_time_1, &pending_1] {
        assert!(s["state"] == "approved" && acknowledged(s), "{s}");
    }
    unvault(&node, &f, &in_time);
    let guarded_1 = spend(&f, &guarded).unwrap();
    assert_eq!(f.vote(0, id(&guarded_1), true).unwrap()["state"], "waiting");
    // Sent at once, but not mined until well after the expiry (the tower saw it in time).
    node.rpc.broadcast(pending.graph.unvault()).unwrap();
    let path = format!("/v1/vaults/{}", pending.outpoint());
    eventually("the tower sees the unvault in the mempool", || {
        let v = vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).ok()?;
        (v["state"]["unvault_seen"] == true).then_some(())
    });
    // Before the expiry, each request holds its vault.
    for v in [&late, &in_time, &pending, &guarded] {
        held(v);
    }
    empty_blocks(EXPIRY);

    // Waited for its guardians past the expiry: no vote approves it; guardians see it expired;
    // the vault is asked for again and the quorum approves the new request.
    let refused = f.vote(1, id(&guarded_1), true).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains("expired at block"), "{refused:?}");
    let shown = f.get(&format!("/v1/spends/{}", id(&guarded_1)), &f.guardian(1)).unwrap();
    assert_eq!((shown["state"].as_str(), shown["approvals"].as_u64()), (Some("expired"), Some(1)));
    assert_eq!(co.metric("vigil_cosigner_spends_waiting"), Some(0), "an expired request is not pending");
    let guarded_2 = spend(&f, &guarded).unwrap();
    assert_ne!(id(&guarded_2), id(&guarded_1), "the same spend asked again is a new request");
    let stale = f.vote(1, id(&guarded_1), true).unwrap_err();
    assert!(stale.0 == 409 && stale.1.contains("is expired already"), "{stale:?}");
    f.vote(0, id(&guarded_2), true).unwrap();
    let guarded_2 = f.vote(1, id(&guarded_2), true).unwrap();
    assert!(guarded_2["state"] == "approved" && acknowledged(&guarded_2), "{guarded_2}");
    block_of(&[guarded.graph.unvault()]);

    // An approval is judged from the chain only a margin past its expiry (a reorg could still
    // confirm its unvault in time).
    held(&late);
    empty_blocks(MARGIN);
    // Its vault's output unspent: the unvault never went out. Asked for again, and the towers
    // take the new approval in the old one's place.
    let late_2 = other_spend(&late).unwrap();
    assert!(late_2["state"] == "approved" && acknowledged(&late_2), "{late_2}");
    assert!(late_2["approval"]["counter"].as_u64() > late_1["approval"]["counter"].as_u64());
    // Its unvault confirmed before the expiry: the approved spend goes on, and holds the vault.
    held(&in_time);
    // Its unvault still pending: nothing is certain, so it holds the vault (the same spend
    // asked again is the same request); once mined after the expiry, it no longer does.
    assert_eq!(id(&spend(&f, &pending).unwrap()), id(&pending_1));
    block(&node, &f, 1);
    let pending_2 = spend(&f, &pending).unwrap();
    assert_ne!(id(&pending_2), id(&pending_1));
    assert!(pending_2["state"] == "approved" && acknowledged(&pending_2), "{pending_2}");

    unvault(&node, &f, &late);
    block(&node, &f, DELAY - 1);
    for lapsed in [&late_1, &pending_1] {
        let refused = f.sign(id(lapsed)).unwrap_err();
        assert!(refused.0 == 409 && refused.1.contains("is expired, not approved"), "{refused:?}");
    }
    for (vault, status) in
        [(&late, &late_2), (&in_time, &in_time_1), (&pending, &pending_2), (&guarded, &guarded_2)]
    {
        // Each tower holds the approval the spend was signed under.
        signed_and_spent(&node, &f, vault, id(status));
    }
}

#[test]
fn a_lockdown_refuses_spends_and_only_the_guardians_quorum_lifts_it_after_the_wait() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner lockdown"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let second = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let third = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    // Any one guardian may lock the client down, at once.
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 2000}), &f.guardian(2)).unwrap();
    let until = locked["until_height"].as_u64().unwrap() as u32;
    let refused = spend(&f, &vault).unwrap_err();
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("locked down"), "{refused:?}");
    // The owner cannot lift it; a height sooner than the governance wait is refused; one
    // guardian does not lift it; the quorum lifts it at the height they signed.
    let at = tip(&node) + 1_009 + 6; // the wait, and room for the quorum to gather
    assert_eq!(
        f.post(
            "/v1/lockdown/lift",
            &serde_json::json!({"lift_at_height": at, "lockdown_until": until, "signature": "00"}),
            &f.owner()
        )
        .unwrap_err()
        .0,
        403
    );
    assert_eq!(f.lift(0, at - 1, until).unwrap_err().0, 400);
    let other = f.lift(0, at, until + 1).unwrap_err();
    assert!(other.0 == 409 && other.1.contains(&format!("ends at block {until}")), "{other:?}");
    // Nor at or past the lockdown's end: that first vote would fix a height lifting nothing.
    let past = f.lift(0, until, until).unwrap_err();
    assert!(past.0 == 400 && past.1.contains("an earlier block"), "{past:?}");
    // Nor more than a week past the earliest: a lift far ahead would end, at a tower, a
    // lockdown taken long after the quorum decided (one it held before the lift came).
    let far = f.lift(0, at + 1_008 + 1, until).unwrap_err();
    assert!(far.0 == 400 && far.1.contains(&format!("block {} at the latest", at + 1_008)), "{far:?}");
    let one = f.lift(0, at, until).unwrap();
    assert_eq!(one["until_height"].as_u64().unwrap() as u32, until);
    assert_eq!(f.lift(1, at + 5, until).unwrap_err().0, 409, "the quorum signs one height");
    // A proposal the chain caught up with is void: a later height starts over, with its votes.
    block(&node, &f, 7);
    assert_eq!(f.lift(1, at, until).unwrap_err().0, 400, "the old height is too soon now");
    let at = tip(&node) + 1_009 + 6;
    let restarted = f.lift(1, at, until).unwrap();
    assert_eq!(restarted["until_height"].as_u64().unwrap() as u32, until, "one vote is not the quorum");
    let quorum = f.lift(0, at, until).unwrap();
    assert_eq!(quorum["until_height"].as_u64().unwrap() as u32, at);
    block(&node, &f, at - tip(&node) - 1);
    assert_eq!(spend(&f, &vault).unwrap_err().0, 403, "still locked the block before");
    block(&node, &f, 1);
    assert_eq!(spend(&f, &vault).unwrap()["state"], "approved");
    // Once lifted, a new lockdown ending before the lifted one's first end locks again: what
    // it must outlast is the lift.
    assert!(tip(&node) + 100 < until);
    let again = f.post("/v1/lockdown", &serde_json::json!({"blocks": 100}), &f.guardian(2)).unwrap();
    assert_eq!(again["until_height"].as_u64().unwrap() as u32, tip(&node) + 100);
    assert_eq!(spend(&f, &third).unwrap_err().0, 403, "locked again");
    block(&node, &f, 100);
    // A duress code starts a duress lockdown and leaves the lifted one lifted: the owner's
    // spend is answered as after the real code (the lockdown does not come back into view).
    f.heartbeat(true);
    assert_eq!(spend(&f, &second).unwrap()["state"], "approved", "the lift stands under duress");

    // A lift names the lockdown it ends: the quorum's lift of the first one, handed to a tower
    // after a newer lockdown, does not end that one.
    let later = tip(&node) + 1_009 + 6;
    let digest = vigil_tower::wire::lift_digest(&f.cosigner.client, later, until);
    let old_lift = vigil_tower::wire::LiftLockdown {
        nonce: 7_000_000_000,
        policy_id: f.cosigner.client.clone(),
        lift_at_height: later,
        lockdown_until: until,
        signatures: (0..2).map(|g| vigil_cosigner::wire::sign(&digest, &f.guardian(g))).collect(),
    };
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 3000}), &f.guardian(2)).unwrap();
    eventually("the tower has the new lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    let replayed = vigil_testenv::household::post(
        &f.towers[0].api,
        "/v1/lockdown/lift",
        &serde_json::to_vec(&old_lift).unwrap(),
        &f.guardian(0),
    )
    .unwrap_err();
    assert!(replayed.0 == 409 && replayed.1.contains("was set since"), "{replayed:?}");
}

/// A lockdown set after a lift, ending sooner than the one lifted: its own quorum lift is
/// taken by the towers too (they took it for a replay of an older lift, and kept cancelling
/// every unvault the co-signer approved until it ended).
#[test]
fn a_lockdown_set_after_a_lift_is_lifted_at_the_towers_though_it_ends_sooner() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner second lift"), 1, None);
    let lifted = |until: u32| quorum_lifts_after_the_wait(&node, &f, until);
    let first = f.post("/v1/lockdown", &serde_json::json!({"blocks": 4000}), &f.guardian(2)).unwrap();
    let at = lifted(first["until_height"].as_u64().unwrap() as u32);
    block(&node, &f, at - tip(&node));
    let second = f.post("/v1/lockdown", &serde_json::json!({"blocks": 2500}), &f.guardian(2)).unwrap();
    let until = second["until_height"].as_u64().unwrap() as u32;
    assert!(until < first["until_height"].as_u64().unwrap() as u32);
    let at = lifted(until);
    let path = format!("/v1/clients/{}", f.cosigner.client);
    eventually("the tower takes the second lift", || {
        let view = vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).ok()?;
        (view["locked_until"].as_u64() == Some(at as u64)).then_some(())
    });
    // The tower acknowledged it (the co-signer records the answer a moment after the tower
    // took it): nothing stays owed.
    eventually("no order owed", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
}

/// A tower down while the guardians' quorum lifted a lockdown gets the lift when it is back,
/// after its wait would have begun: it applies it a full wait from then, rather than refusing
/// it and cancelling every unvault the co-signer approves until the lockdown runs out.
#[test]
fn a_tower_down_at_a_lift_applies_it_a_full_wait_from_its_return() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner late lift"), 1, None);
    // The tower caught up with the chain, so that it dates the lockdown at once.
    let path = format!("/v1/clients/{}", f.cosigner.client);
    eventually("the tower at the tip", || {
        let view = vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).ok()?;
        (view["tip"].as_u64() == Some(tip(&node) as u64)).then_some(())
    });
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 4000}), &f.guardian(2)).unwrap();
    let until = locked["until_height"].as_u64().unwrap() as u32;
    eventually("the tower has the lockdown", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    f.towers[0].kill9();
    let at = quorum_lifts_after_the_wait(&node, &f, until);
    block(&node, &f, 30);
    f.towers[0].start();
    let back = tip(&node);
    eventually("the tower acknowledged the lift", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    let view = vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).unwrap();
    let ends = view["locked_until"].as_u64().unwrap() as u32;
    assert!(
        ends >= back + 1_009 && ends > at && ends < until,
        "lifted at {ends}: signed for {at}, back at {back}"
    );
}

/// A lockdown the guardians lifted stays lifted when their quorum then lifts a duress
/// lockdown: were it held again until the later lift, the owner's spends would be refused
/// openly soon after the duress code, which must change nothing a captor can see.
#[test]
fn lifting_a_duress_lockdown_leaves_a_lifted_lockdown_lifted() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner duress after lift"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 4000}), &f.guardian(2)).unwrap();
    let until = locked["until_height"].as_u64().unwrap() as u32;
    let at = quorum_lifts_after_the_wait(&node, &f, until);
    block(&node, &f, at - tip(&node));
    f.heartbeat(true);
    let duress_until = tip(&node) + vigil_cosigner::service::DURESS_LOCKDOWN_BLOCKS;
    quorum_lifts_after_the_wait(&node, &f, until.max(duress_until));
    assert_eq!(spend(&f, &vault).unwrap()["state"], "approved", "answered as after the real code");
    assert_eq!(co.metric("vigil_cosigner_lockdowns"), Some(0));
    // The tower takes the lift the quorum signed.
    eventually("the tower acknowledges every order", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
}

/// The towers take a lift at a lower height than one they applied, or at its height for a
/// lockdown ending no later, for a replay of an older lift: the co-signer refuses to gather
/// such a lift (it would lift here and not there), and names the height a lift must reach.
#[test]
fn a_lift_sooner_than_one_the_quorum_signed_before_is_refused_as_the_towers_would() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner sooner lift"), 1, None);
    let locked = f.post("/v1/lockdown", &serde_json::json!({"blocks": 4000}), &f.guardian(2)).unwrap();
    let until = locked["until_height"].as_u64().unwrap() as u32;
    let far = tip(&node) + 1_009 + 6 + 1_000;
    quorum_lifts(&f, far, until);
    f.heartbeat(true);
    let held = until.max(tip(&node) + vigil_cosigner::service::DURESS_LOCKDOWN_BLOCKS);
    let refused = f.lift(0, tip(&node) + 1_009 + 6, held).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains(&format!("at block {far} before")), "{refused:?}");
    quorum_lifts(&f, far, held);
    eventually("the tower takes both lifts", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    // At that lift's height the towers take only the lift of a lockdown ending later than
    // the one it ended (else the same lift again, or a replay of it): a newer lockdown ending
    // sooner is lifted a block later, and a guardian is told so before signing. (The owner's,
    // a plain one: the towers show it.)
    let newer = f.post("/v1/lockdown", &serde_json::json!({"blocks": 3000}), &f.owner()).unwrap();
    let newer_until = newer["until_height"].as_u64().unwrap() as u32;
    assert!(newer_until > far && newer_until < held, "{far} < {newer_until} < {held}");
    let state = f.get("/v1/lockdown", &f.guardian(0)).unwrap();
    assert_eq!(state["earliest_lift"].as_u64(), Some(far as u64 + 1), "{state}");
    let refused = f.lift(0, far, newer_until).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains(&format!("names block {}", far + 1)), "{refused:?}");
    quorum_lifts(&f, far + 1, newer_until);
    let path = format!("/v1/clients/{}", f.cosigner.client);
    eventually("the tower takes the newer lockdown's lift", || {
        let view = vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).ok()?;
        (view["locked_until"].as_u64() == Some(far as u64 + 1)).then_some(())
    });
}

/// One guardian gone rogue locks the family down again and again: the others' quorum can
/// still replace it (after the wait), though no change that lets more leave is taken.
#[test]
fn a_lockdown_refuses_loosening_but_not_replacing_the_guardian_who_keeps_locking() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner rogue guardian"), 1, None);
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 2000}), &f.guardian(2)).unwrap();
    let loosened =
        version_2(&f.policy_text, "velocity_limit_sat = 10000000", "velocity_limit_sat = 20000000");
    let refused = f.change_policy(&loosened, &[0, 1]).unwrap_err();
    assert!(refused.0 == 403 && refused.1.contains("raises a limit"), "{refused:?}");
    let (ours, stranger) =
        (guardian_lines(&f.policy_text), guardian_lines(&example("the rogue's successor").to_toml()));
    let replaced = version_2(&f.policy_text, &ours[2], &stranger[2]);
    let change = f.change_policy(&replaced, &[0, 1]).unwrap();
    assert_eq!(change["effective_height"].as_u64().unwrap() as u32, tip(&node) + 1_009, "it waits: {change}");
    until_applied(&node, &f, &change);
    let again = f.post("/v1/lockdown", &serde_json::json!({"blocks": 2000}), &f.guardian(2)).unwrap_err();
    assert!(again.0 == 401 || again.0 == 403, "the replaced guardian locks no more: {again:?}");
}

#[test]
fn loosening_waits_the_governance_delay_and_tightening_applies_at_once() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut e = example("cosigner governance");
    e.services.spend_limit_sat = Some(1_000_000);
    let mut f = Family::new(&node, &co, e, 1, None);
    let first = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    assert_eq!(spend(&f, &first).unwrap()["state"], "waiting", "over the 1,000,000-sat limit");
    let loosened = version_2(&f.policy_text, "spend_limit_sat = 1000000", "spend_limit_sat = 3000000");
    let one = f.change_policy(&loosened, &[0]).unwrap();
    assert_eq!(
        (one["approvals"].as_u64(), one["effective_height"].as_u64()),
        (Some(1), Some(0)),
        "one guardian is not the quorum"
    );
    // The owner cannot sign for a guardian.
    let forged = vigil_cosigner::wire::PolicyChange {
        policy: loosened.clone(),
        signatures: vec![vigil_cosigner::wire::sign(
            &vigil_tower::wire::policy_change_digest(&f.cosigner.client, &loosened),
            &f.owner(),
        )],
    };
    assert_eq!(f.post("/v1/policy", &forged, &f.owner()).unwrap_err().0, 400);
    // Nor propose one no guardian signed (the guardians would see it as one of theirs); a
    // guardian's signature counted already, handed in again, is answered with the count and
    // alarms nobody again.
    let feed = || f.get("/v1/alarms", &f.guardian(1)).unwrap().as_array().unwrap().len();
    let alarms = feed();
    let unsigned = vigil_cosigner::wire::PolicyChange {
        policy: version_2(&f.policy_text, "= 1000000", "= 9000000"),
        signatures: vec![],
    };
    let refused = f.post("/v1/policy", &unsigned, &f.owner()).unwrap_err();
    assert!((refused.0, refused.1.contains("none by a guardian")) == (400, true), "{refused:?}");
    let again = f.change_policy(&loosened, &[0]).unwrap();
    assert_eq!(again["approvals"].as_u64(), Some(1), "the count, as it stands: {again}");
    assert_eq!(feed(), alarms, "nothing was proposed");
    let change = f.change_policy(&loosened, &[1]).unwrap();
    let effective = change["effective_height"].as_u64().unwrap() as u32;
    assert_eq!(effective, tip(&node) + 1_009, "loosening waits: {change}");
    assert!(change["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true), "{change}");
    let before = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    assert_eq!(spend(&f, &before).unwrap()["state"], "waiting", "not before the wait");
    block(&node, &f, effective - tip(&node));
    let after = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let approved = spend(&f, &after).unwrap();
    assert_eq!(
        (approved["state"].as_str(), approved["policy_version"].as_u64()),
        (Some("approved"), Some(2))
    );
    // Tightening back applies at once.
    let tightened = loosened
        .replace("version = 2", "version = 3")
        .replace("spend_limit_sat = 3000000", "spend_limit_sat = 1000000");
    let change = f.change_policy(&tightened, &[1, 2]).unwrap();
    assert_eq!(change["effective_height"].as_u64().unwrap() as u32, tip(&node));
    let last = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    assert_eq!(spend(&f, &last).unwrap()["state"], "waiting");
    // An older version, or the same again, changes nothing.
    assert_eq!(f.change_policy(&tightened, &[1, 2]).unwrap_err().0, 409);
    // A party holding only the first version follows the chain the co-signer kept, checking
    // each step itself, to where the co-signer is.
    let followed = follow_served(&f, &node);
    assert_eq!((followed.current.version, followed.history.len()), (3, 3));
    assert_eq!(followed.current_text, tightened);
}

/// A tower down when the quorum signed a loosening hears of it later, and its wait ends
/// later than the co-signer's: it takes the co-signer's approvals of the new version while
/// the change still waits there (refused, it would cancel the owner's unvault).
#[test]
fn a_tower_that_heard_of_a_loosening_late_takes_approvals_of_its_version() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut e = example("cosigner loosening heard late");
    e.services.spend_limit_sat = Some(1_000_000);
    let mut f = Family::new(&node, &co, e, 2, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let loosened = version_2(&f.policy_text, "spend_limit_sat = 1000000", "spend_limit_sat = 3000000");
    f.towers[1].kill9();
    let change = f.change_policy(&loosened, &[0, 1]).unwrap();
    let effective = change["effective_height"].as_u64().unwrap() as u32;
    block(&node, &f, 3);
    f.towers[1].start();
    eventually("tower-b hears of the change", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    block(&node, &f, effective - tip(&node));
    let approved = spend(&f, &vault).unwrap();
    assert_eq!(
        (approved["state"].as_str(), approved["policy_version"].as_u64()),
        (Some("approved"), Some(2))
    );
    let path = format!("/v1/clients/{}", f.cosigner.client);
    let at_b = vigil_testenv::household::get(&f.towers[1].api, &path, &f.owner()).unwrap();
    assert_eq!((at_b["version"].as_u64(), at_b["pending"][0]["version"].as_u64()), (Some(1), Some(2)));
    assert_eq!(acknowledged_by(&approved), ["tower-a", "tower-b"], "{approved}");
}

/// A provider waiting longer than the towers' least wait: the towers apply a change from the
/// co-signer's height, not sooner (the guardians' cancel of it would then be judged there by
/// the guardians it put in, and refused).
#[test]
fn the_towers_apply_a_change_no_sooner_than_a_cosigner_waiting_longer() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "governance_delay_blocks = 2016\n");
    let f = Family::new(&node, &co, example("cosigner longer wait"), 2, None);
    let loosened =
        version_2(&f.policy_text, "velocity_limit_sat = 10000000", "velocity_limit_sat = 20000000");
    let change = f.change_policy(&loosened, &[0, 1]).unwrap();
    let effective = change["effective_height"].as_u64().unwrap();
    assert_eq!(effective, tip(&node) as u64 + 2_016, "{change}");
    assert_eq!(acknowledged_by(&change), ["tower-a", "tower-b"], "{change}");
    let path = format!("/v1/clients/{}", f.cosigner.client);
    for t in &f.towers {
        let view = vigil_testenv::household::get(&t.api, &path, &f.owner()).unwrap();
        assert_eq!(view["pending"][0]["effective_height"].as_u64(), Some(effective), "{view}");
    }
}

/// The changes the co-signer serves, followed from the family's pinned policy.
fn follow_served(f: &Family, node: &vigil_testenv::process::Node) -> vigil_client::policy_chain::Followed {
    let served = f.get("/v1/policy/changes", &f.guardian(0)).unwrap();
    let changes: Vec<vigil_cosigner::wire::SignedChange> =
        serde_json::from_value(served["changes"].clone()).unwrap();
    vigil_client::policy_chain::follow(&f.policy_text, &changes, tip(node)).unwrap()
}

#[test]
fn the_votes_of_a_guardian_the_quorum_replaced_no_longer_count() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner replaced guardian"), 1, None);
    let (ours, stranger) =
        (guardian_lines(&f.policy_text), guardian_lines(&example("a stranger guardian").to_toml()));
    // Version 2 replaces the third guardian; it waits the governance delay.
    let v2 = version_2(&f.policy_text, &ours[2], &stranger[2]);
    let change = f.change_policy(&v2, &[0, 1]).unwrap();
    let effective = change["effective_height"].as_u64().unwrap() as u32;
    // Meanwhile the third guardian signs version 3, while still a guardian.
    let v3 = v2.replace("version = 2", "version = 3");
    assert_eq!(f.change_policy(&v3, &[2]).unwrap()["approvals"], 1);
    block(&node, &f, effective - tip(&node));
    // Once version 2 applies, that vote no longer counts: one more is not the quorum.
    let second = f.change_policy(&v3, &[0]).unwrap();
    assert_eq!(
        (second["approvals"].as_u64(), second["effective_height"].as_u64()),
        (Some(1), Some(0)),
        "{second}"
    );
    assert_eq!(follow_served(&f, &node).current.version, 2);
    let third = f.change_policy(&v3, &[1]).unwrap();
    assert_eq!(third["approvals"], 2, "{third}");
    assert_eq!(follow_served(&f, &node).current.version, 3);
}

#[test]
fn a_vault_keeps_the_scripts_and_delay_of_the_policy_it_was_made_under() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner old vaults"), 1, None);
    let standard = f.vault(&node, Amount::from_sat(500_000), VaultKind::Standard);
    let guarded = f.vault(&node, Amount::from_sat(600_000), VaultKind::Guarded);
    // A longer DELAY, and the first two guardians trading places (each guardian's key in the
    // spend leaf is the vault's policy's, found by the voter's auth key), change every new
    // vault's scripts; not an allowance tightening, it waits the governance delay.
    let longer = DELAY + 6;
    let changed = f
        .policy_text
        .replace("version = 1", "version = 2")
        .replace(&format!("unvault = {DELAY}\n"), &format!("unvault = {longer}\n"));
    assert!(changed.contains(&format!("unvault = {longer}\n")), "{changed}");
    let mut lines: Vec<&str> = changed.lines().collect();
    let first = lines.iter().position(|l| *l == "[guardians]").unwrap() + 3;
    assert!(lines[first].contains("tpub") && lines[first + 1].contains("tpub"), "{changed}");
    lines.swap(first, first + 1);
    let changed = lines.join("\n") + "\n";
    let change = f.change_policy(&changed, &[0, 1]).unwrap();
    // Every tower at version 2 too: a vault made now must be registered under it.
    until_applied(&node, &f, &change);

    // The standard vault made before: its spend carries its own DELAY, not the new one.
    f.example.delay = longer;
    let wrong = spend(&f, &standard).unwrap_err();
    assert!(wrong.0 == 400 && wrong.1.contains(&format!("vault's DELAY ({DELAY} blocks")), "{wrong:?}");
    f.example.delay = DELAY;
    let approved = spend(&f, &standard).unwrap();
    assert_eq!(
        (approved["state"].as_str(), approved["spendable_after_blocks"].as_u64()),
        (Some("approved"), Some(DELAY as u64)),
        "{approved}"
    );
    let spent = |f: &Family, vault: &Vault, id: u64, delay: u32| {
        unvault(&node, f, vault);
        block(&node, f, delay - 1);
        let tx = f.sign(id).unwrap();
        node.rpc.broadcast(&tx).unwrap();
        block(&node, f, 1);
        assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1);
    };
    spent(&f, &standard, approved["id"].as_u64().unwrap(), DELAY);
    // The guarded one: the guardians sign its spend leaf, whose keys are its policy's.
    let asked = spend(&f, &guarded).unwrap();
    let id = asked["id"].as_u64().unwrap();
    assert_eq!(f.vote(0, id, true).unwrap()["state"], "waiting");
    assert_eq!(f.vote(1, id, true).unwrap()["state"], "approved");
    spent(&f, &guarded, id, DELAY);

    // A vault made now has the new DELAY.
    f.compiled = CompiledPolicy::new(Policy::from_toml(&changed).unwrap()).unwrap();
    f.policy_text = changed;
    f.example.delay = longer;
    let new = f.vault(&node, Amount::from_sat(500_000), VaultKind::Standard);
    let approved = spend(&f, &new).unwrap();
    assert_eq!(approved["spendable_after_blocks"].as_u64(), Some(longer as u64), "{approved}");
    spent(&f, &new, approved["id"].as_u64().unwrap(), longer);
}

#[test]
fn a_guarded_vault_most_of_whose_guardians_were_replaced_is_refused_at_once_not_left_waiting() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner replaced guardians"), 1, None);
    let guarded = f.vault(&node, Amount::from_sat(600_000), VaultKind::Guarded);
    // Two of the three guardians replaced by others: only one of the vault's own is left to
    // vote, and its spend needs two.
    let (ours, others) =
        (guardian_lines(&f.policy_text), guardian_lines(&example("someone else's guardians").to_toml()));
    let v2 = f
        .policy_text
        .replace("version = 1", "version = 2")
        .replace(&ours[1], &others[1])
        .replace(&ours[2], &others[2]);
    let change = f.change_policy(&v2, &[0, 1]).unwrap();
    block(&node, &f, change["effective_height"].as_u64().unwrap() as u32 - tip(&node));
    let refused = spend(&f, &guarded).unwrap_err();
    assert!(
        refused.0 == 409 && refused.1.contains("only 1 of its guardians are guardians today"),
        "{refused:?}"
    );
}

#[test]
fn after_a_restore_nothing_approved_without_the_guardians_is_signed_until_they_confirm_it() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner restore hold"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(500_000), VaultKind::Standard);
    let later = f.vault(&node, Amount::from_sat(500_000), VaultKind::Standard);
    // Approved at once, before anyone restored the wallet.
    let approved = spend(&f, &vault).unwrap();
    assert_eq!(approved["state"], "approved", "{approved}");
    let id = approved["id"].as_u64().unwrap();
    // Someone holding the phrase restores it with codes of their own.
    // Its answer names it, for the owner to tell the guardians.
    assert_eq!(restore(&f, "11", "22")["restore"], 1);
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    let held = f.sign(id).unwrap_err();
    assert!(held.0 == 403 && held.1.contains("guardians have not confirmed"), "{held:?}");
    assert_eq!(spend(&f, &later).unwrap()["state"], "waiting", "a new request waits for the guardians");
    // A confirmation names the restore it confirms: one of an earlier restore is refused.
    let state = f.get("/v1/restore", &f.guardian(0)).unwrap();
    assert_eq!((state["restore"].as_u64(), state["unconfirmed"].as_bool()), (Some(1), Some(true)), "{state}");
    let confirm = |g: usize, restore: u32| confirm_restore(&f, g, restore);
    let none = confirm(0, 2).unwrap_err();
    assert!(none.0 == 409 && none.1.contains("there is no restore 2"), "{none:?}");
    // One guardian confirms; then the wallet is restored again (a captor, between the owner's
    // call and the next guardian's confirmation): the earlier confirmation counts no more.
    assert_eq!(confirm(0, 1).unwrap()["held"], true);
    assert_eq!(restore(&f, "33", "44")["restore"], 2);
    let stale = confirm(1, 1).unwrap_err();
    assert!(stale.0 == 409 && stale.1.contains("restored again since"), "{stale:?}");
    let state = f.get("/v1/restore", &f.guardian(0)).unwrap();
    assert_eq!((state["restore"].as_u64(), state["confirmations"].as_u64()), (Some(2), Some(0)), "{state}");
    assert_eq!(
        f.post("/v1/restore/confirm", &vigil_cosigner::wire::ConfirmRestore { restore: 1 }, &f.owner())
            .unwrap_err()
            .0,
        403
    );
    assert_eq!(confirm(0, 2).unwrap()["held"], true);
    let one = f.sign(id).unwrap_err();
    assert!(one.0 == 403 && one.1.contains("guardians have not confirmed"), "one is not the quorum: {one:?}");
    assert_eq!(confirm(1, 2).unwrap()["held"], false);
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    block(&node, &f, 1);
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1);
}

/// A captor who had the owner type the duress code makes the owner restore the wallet on a
/// device of their own and ask the guardians to confirm it. Refusing would show on that device
/// (its spends would keep waiting); confirming costs nothing while the duress lockdown holds
/// (nothing is co-signed). Once it is over, the restore waits for the guardians anew: the
/// captor's codes get nothing from that confirmation.
#[test]
fn a_restore_confirmed_under_duress_waits_for_the_guardians_again_once_the_duress_is_over() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner restore under duress"), 1, None);
    let vaults: Vec<_> =
        (0..3).map(|_| f.vault(&node, Amount::from_sat(500_000), VaultKind::Standard)).collect();
    f.heartbeat(true);
    restore(&f, "55", "66");
    assert_eq!(spend(&f, &vaults[0]).unwrap()["state"], "waiting", "held for the guardians");
    let confirm = |g: usize| confirm_restore(&f, g, 1);
    assert_eq!(confirm(0).unwrap()["held"], true);
    assert_eq!(confirm(1).unwrap()["held"], false);
    // As after any confirmation: approved at once (and never co-signed, under duress).
    let approved = spend(&f, &vaults[1]).unwrap();
    assert_eq!(approved["state"], "approved", "the device sees it confirmed");
    unvault(&node, &f, &vaults[1]);
    // The guardians' quorum lifts the duress lockdown: the restore waits for them again.
    let held = f.get("/v1/lockdown", &f.guardian(0)).unwrap()["lockdown_until"].as_u64().unwrap() as u32;
    let at = quorum_lifts_after_the_wait(&node, &f, held);
    block(&node, &f, at - tip(&node));
    let state = f.get("/v1/restore", &f.guardian(0)).unwrap();
    assert_eq!(
        (state["unconfirmed"].as_bool(), state["confirmations"].as_u64()),
        (Some(true), Some(0)),
        "{state}"
    );
    // The spend approved under duress gets the answer any duress spend gets, not one naming
    // the restore (a normal session's confirmed restore never comes back).
    let refused = f.sign(approved["id"].as_u64().unwrap()).unwrap_err();
    assert!(refused.0 == 409 && !refused.1.contains("restored"), "{refused:?}");
    // A later duress code does not make the confirmation count again.
    f.heartbeat(true);
    assert_eq!(spend(&f, &vaults[2]).unwrap()["state"], "waiting", "held again");
    assert_eq!(f.get("/v1/restore", &f.guardian(0)).unwrap()["unconfirmed"], true);
    assert_eq!(confirm(0).unwrap()["held"], true, "confirmed anew, from none");
    assert_eq!(confirm(1).unwrap()["held"], false);
    assert_eq!(f.get("/v1/restore", &f.guardian(0)).unwrap()["unconfirmed"], false);
}

/// The owner's device is lost and the wallet restored on a new one; a captor finds the old
/// device and makes the owner open it: its duress code still locks the client down.
#[test]
fn a_lost_devices_duress_code_still_locks_the_client_down_after_a_restore() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner old duress code"), 1, None);
    restore(&f, "99", "aa");
    let state = || f.get("/v1/lockdown", &f.guardian(0)).unwrap();
    assert_eq!(state()["duress"], false);
    f.heartbeat(true);
    assert_eq!(state()["duress"], true, "{}", state());
    let feed = f.get("/v1/alarms", &f.guardian(0)).unwrap();
    assert!(feed.as_array().unwrap().iter().any(|a| a["kind"] == "duress"), "{feed}");
}

/// Whoever holds the owner's key can restore the wallet again and again, each restore an
/// alarm: the guardians' feed keeps the duress alarm in view all the same.
#[test]
fn restores_do_not_push_a_duress_alarm_out_of_the_guardians_feed() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner restore flood"), 1, None);
    f.heartbeat(true);
    let restores = vigil_cosigner::emergency::ALARM_FEED_LEN + 1;
    for _ in 0..restores {
        restore(&f, "77", "88");
    }
    let feed = f.get("/v1/alarms", &f.guardian(0)).unwrap();
    let kinds: Vec<&str> = feed.as_array().unwrap().iter().filter_map(|a| a["kind"].as_str()).collect();
    assert!(kinds.contains(&"duress"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "owner-restored").count() as u32, restores - 1);
}

#[test]
fn an_order_a_tower_keeps_refusing_is_settled_with_an_alarm_not_sent_forever() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let config = format!("tower_refusal_give_up_secs = 2\n[alarms]\nwebhooks = [{url:?}]\n");
    let co = CosignerProcess::new(&node, &config);
    let mut f = Family::new(&node, &co, example("cosigner refused order"), 2, None);
    // One tower is down while a short lockdown comes and goes.
    f.towers[1].kill9();
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 3}), &f.guardian(0)).unwrap();
    block(&node, &f, 5);
    assert_eq!(
        co.metric("vigil_cosigner_tower_orders_pending"),
        Some(1),
        "waiting for the tower that is down"
    );
    // Back up, it refuses a lockdown that has ended: that answer will not change, so after
    // the give-up time the order is settled and the guardians are told, instead of being
    // sent forever.
    f.towers[1].start();
    eventually("the order is settled", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    // (On a loaded machine the live tower may also have answered only once the lockdown had
    // ended, and be named in an alarm of its own.)
    let about_b = || {
        let alarms = alarms.lock().unwrap();
        alarms
            .iter()
            .find(|a| {
                a["kind"] == "tower-refused"
                    && a["message"].as_str().is_some_and(|m| m.contains("tower tower-b"))
            })
            .cloned()
    };
    eventually("the guardians are told of tower-b", about_b);
}

#[test]
fn a_cosigner_restored_from_an_older_backup_still_reaches_its_towers() {
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cosigner backup"), 1, None);
    let data = co.dir.path().join("data");
    let backup = co.dir.path().join("backup");
    let copy_all = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    };
    // A backup of the store, taken with the co-signer stopped.
    co.kill9();
    copy_all(&data, &backup);
    co.start();
    let delivered = |co: &CosignerProcess| {
        eventually("every tower has the lockdown", || {
            (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
        })
    };
    // Ten orders after the backup: ten nonces the restored store never saw. Retries would
    // walk past them one per push, every 5 s: longer than `delivered` waits.
    for blocks in 10..20 {
        f.post("/v1/lockdown", &serde_json::json!({"blocks": blocks}), &f.guardian(0)).unwrap();
        delivered(&co);
    }
    // The store goes back to the backup. Its counter starts at the clock, so once the clock
    // has passed the nonces used since, the next ones are above them at once.
    co.kill9();
    copy_all(&backup, &data);
    std::thread::sleep(std::time::Duration::from_secs(12));
    co.start();
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 30}), &f.guardian(0)).unwrap();
    delivered(&co);
}

#[test]
fn a_tower_a_change_removed_still_hears_of_the_approvals_of_older_vaults() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let co = CosignerProcess::new(&node, &format!("[alarms]\nwebhooks = [{url:?}]\n"));
    let mut f = Family::new(&node, &co, example("cosigner removed tower"), 2, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    // The quorum removes tower-b (not a tightening: it waits the governance delay). Tower-1
    // still watches the vault made before, and would cancel its unvault if no approval came.
    let marker = "\n[[towers]]\nname = \"tower-b\"";
    let start = f.policy_text.find(marker).expect("tower-b's entry");
    let end = f.policy_text[start + 1..].find("\n[").map_or(f.policy_text.len(), |e| start + 1 + e);
    let changed =
        format!("{}{}", &f.policy_text[..start], &f.policy_text[end..]).replace("version = 1", "version = 2");
    assert!(!changed.contains("tower-b") && changed.contains("tower-a"), "{changed}");
    let change = f.change_policy(&changed, &[0, 1]).unwrap();
    until_applied(&node, &f, &change);

    let approved = spend(&f, &vault).unwrap();
    assert_eq!(acknowledged_by(&approved), ["tower-a", "tower-b"], "{approved}");
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    let tx = signed_and_spent(&node, &f, &vault, approved["id"].as_u64().unwrap());

    // A tower's name is its identity across versions: a later version giving tower-b's name to
    // another key, or tower-b's key another name, would hide the tower still watching the
    // vaults of version 1; both are refused, naming the field.
    let tower_b = f.policy_text[start..end].to_owned();
    let key = tower_b.lines().find(|l| l.starts_with("key = ")).unwrap().to_owned();
    let stranger = "key = \"0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\"";
    for (returned, why) in [
        (tower_b.replace(&key, stranger), "had another key in version 1"),
        (tower_b.replace("\"tower-b\"", "\"tower-c\""), "in version 1; a tower keeps its name"),
    ] {
        let v3 = format!("{changed}{returned}").replace("version = 2", "version = 3");
        let refused = f.change_policy(&v3, &[0, 1]).unwrap_err();
        assert!(refused.0 == 400 && refused.1.contains(why), "{refused:?}");
    }

    // Tower-b is taken down. Until the spend that ended the only vault it may watch is
    // buried as deep as a tower buries it, a lockdown is still owed to it, one block short
    // included.
    f.towers[1].kill9();
    let amount = Amount::from_sat(2_000_000);
    let coin = f.intake_coin(&node, amount);
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &f.guardian(0)).unwrap();
    let mined = node.rpc.transaction_info(&tx.compute_txid()).unwrap().unwrap().1.unwrap();
    block(&node, &f, (mined + vigil_tower::watch::BURY_MARGIN - 1).saturating_sub(tip(&node)));
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(co.metric("vigil_cosigner_tower_orders_pending"), Some(1), "owed to tower-b");
    // One block more: tower-b has nothing left to act on. But a vault ceremony is open: the
    // vault it makes was not judged, so nothing is retired until it is over.
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    block(&node, &f, 1);
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(co.metric("vigil_cosigner_tower_orders_pending"), Some(1), "held by the open ceremony");
    let (status, _) = f.complete(&coin, amount, VaultKind::Standard, once, &begun).unwrap();
    assert_eq!(status.state, "protected", "{status:?}");
    // The vault made is of version 2, which tower-b never watches: it is retired for this
    // client, and the guardians are told once.
    eventually("tower-b is retired", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    let retired = || {
        let alarms = alarms.lock().unwrap();
        let about_b = |a: &&Value| {
            a["kind"] == "tower-retired" && a["message"].as_str().is_some_and(|m| m.contains("tower tower-b"))
        };
        alarms.iter().filter(about_b).count()
    };
    eventually("the guardians are told tower-b is retired", || (retired() > 0).then_some(()));
    // A panic is neither held up by it nor reports it as not acting.
    // Each tower an answer reports, and whether it acknowledged.
    let reports = |answer: &Value| -> Vec<(String, bool)> {
        let towers = answer["towers"].as_array().unwrap().iter();
        towers.map(|t| (t["name"].as_str().unwrap().to_owned(), t["acknowledged"] == true)).collect()
    };
    let relayed = f.panic(&[0, 1], [9u8; 32], tip(&node) + 10).unwrap();
    assert_eq!(reports(&relayed), [("tower-a".to_owned(), true)], "{relayed}");

    // A version naming tower-b again reaches it from the moment it is signed, long before it
    // applies: tower-b must hear of the change it waits for, and of all that follows.
    block(&node, &f, 10);
    f.towers[1].start();
    let v3 = format!("{changed}{tower_b}").replace("version = 2", "version = 3");
    let back = f.change_policy(&v3, &[0, 1]).unwrap();
    assert_eq!(reports(&back), [("tower-a".to_owned(), true), ("tower-b".to_owned(), true)], "{back}");
    // While that change waits, tower-b is not retired again: a lockdown stays owed to it.
    f.towers[1].kill9();
    f.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &f.guardian(0)).unwrap();
    block(&node, &f, 1);
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(co.metric("vigil_cosigner_tower_orders_pending"), Some(1), "owed to tower-b");
    assert_eq!(retired(), 1, "told once");
}

#[test]
fn a_tower_a_change_adds_is_enrolled_with_the_signed_changes_and_told_every_live_vault_and_approval() {
    let node = vigil_node();
    // Approvals that outlive the governance wait: one given before the change reaches the
    // tower the change added.
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut f = Family::new(&node, &co, example("cosigner added tower"), 1, None);
    let approved = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let unapproved = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let cancelled = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let in_flight = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let asked = spend(&f, &approved).unwrap();
    assert_eq!((asked["state"].as_str(), asked["policy_version"].as_u64()), (Some("approved"), Some(1)));
    assert_eq!(spend(&f, &in_flight).unwrap()["state"], "approved");
    // A vault that is over (tower-a cancelled its unvault) is not handed to the new tower.
    unvault(&node, &f, &cancelled);
    eventually("tower-a cancels the unapproved unvault", || {
        block(&node, &f, 1);
        spend_of(&node.rpc, cancelled.unvault_outpoint())
            .filter(|c| confirmations(&node.rpc, &c.compute_txid()) > 0)
    });

    // The quorum adds tower-b, and lengthens DELAY: the vaults made before keep version 1's
    // scripts, which tower-b must rebuild from version 1.
    let mut b = vigil_testenv::process::TowerProcess::new(&node, &[], 5, None);
    let longer =
        f.policy_text.replace(&format!("unvault = {DELAY}\n"), &format!("unvault = {}\n", DELAY + 6));
    assert_ne!(longer, f.policy_text);
    let changed = adding_tower(&longer, "tower-b", &b);
    let change = f.change_policy(&changed, &[0, 1]).unwrap();
    let enroll = |tower: &str, token: &str, key: vigil_policy::bitcoin::key::Keypair| {
        f.post("/v1/towers", &serde_json::json!({"tower": tower, "token": token}), &key)
    };
    let early = enroll("tower-b", &b.token(), f.owner()).unwrap_err();
    assert!(early.0 == 409 && early.1.contains("joins with the change that applies at block"), "{early:?}");
    until_applied(&node, &f, &change);
    // An approved unvault already out stays with the towers that hold its approval: a tower
    // learning of the vault first would cancel it at first sight.
    unvault(&node, &f, &in_flight);
    let unknown = enroll("tower-z", &b.token(), f.owner()).unwrap_err();
    assert!(unknown.0 == 400 && unknown.1.contains("tower-a, tower-b"), "{unknown:?}");

    // A token tower-b never issued: its refusal is named, and it holds nothing.
    let refused = enroll("tower-b", &"ab".repeat(32), f.guardian(0)).unwrap();
    assert_eq!((refused["enrolled"].as_bool(), refused["complete"].as_bool()), (Some(false), Some(false)));
    assert!(refused["error"].as_str().unwrap().contains("unknown enrollment token"), "{refused}");
    let view = format!("/v1/clients/{}", f.cosigner.client);
    assert_eq!(vigil_testenv::household::get(&b.api, &view, &f.owner()).unwrap_err().0, 404);

    // Its own token: the first policy and the signed change, checked by the tower itself; the
    // two live vaults and the open approval (of version 1) follow.
    let token = b.token();
    let enrolled = enroll("tower-b", &token, f.owner()).unwrap();
    assert_eq!(
        (
            enrolled["enrolled"].as_bool(),
            enrolled["vaults"].as_u64(),
            enrolled["approvals"].as_u64(),
            enrolled["complete"].as_bool()
        ),
        (Some(true), Some(2), Some(1), Some(true)),
        "{enrolled}"
    );
    assert_eq!(enrolled["kept_elsewhere"], serde_json::json!([in_flight.outpoint().to_string()]));
    // The same request again (its answer lost): the same enrollment, nothing refused.
    let again = enroll("tower-b", &token, f.owner()).unwrap();
    assert_eq!(
        (again["enrolled"].as_bool(), again["complete"].as_bool()),
        (Some(true), Some(true)),
        "{again}"
    );
    // A restart keeps it all, at the version the chain led to.
    b.kill9();
    b.start();
    let at_b = vigil_testenv::household::get(&b.api, &view, &f.owner()).unwrap();
    assert_eq!(at_b["version"], 2, "{at_b}");
    let not_given = format!("/v1/vaults/{}", in_flight.outpoint());
    assert_eq!(vigil_testenv::household::get(&b.api, &not_given, &f.owner()).unwrap_err().0, 404);
    for v in [&approved, &unapproved] {
        vigil_testenv::household::get(&b.api, &format!("/v1/vaults/{}", v.outpoint()), &f.owner()).unwrap();
    }
    // A vault made now (version 2's graph) is registered at both.
    let v1 = (f.compiled.clone(), f.policy_text.clone());
    f.compiled = CompiledPolicy::new(Policy::from_toml(&changed).unwrap()).unwrap();
    f.policy_text = changed.clone();
    let after = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    (f.compiled, f.policy_text) = v1;
    vigil_testenv::household::get(&b.api, &format!("/v1/vaults/{}", after.outpoint()), &f.owner()).unwrap();

    // Tower-a gone, tower-b alone cancels an unapproved unvault, and lets the approved one
    // through to its spend.
    f.towers[0].kill9();
    unvault(&node, &f, &unapproved);
    let cancel = eventually("tower-b cancels the unapproved unvault", || {
        let spent = spend_of(&node.rpc, unapproved.unvault_outpoint());
        if spent.is_none() {
            block(&node, &f, 1);
        }
        spent
    });
    assert!(unapproved.graph.graph().cancels.iter().any(|c| c.tx.compute_txid() == cancel.compute_txid()));
    unvault(&node, &f, &approved);
    block(&node, &f, DELAY - 1);
    let tx = f.sign(asked["id"].as_u64().unwrap()).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    block(&node, &f, 1);
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1, "tower-b knew the approval");
}

#[test]
fn a_tower_added_after_an_approval_expired_is_not_given_the_vault_whose_spend_is_under_way() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 6");
    let mut f = Family::new(&node, &co, example("cosigner added tower late"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let asked = spend(&f, &vault).unwrap();
    assert_eq!(asked["state"], "approved", "{asked}");
    // Its unvault confirms in time; the approval then expires while the spend waits DELAY,
    // and the quorum adds a tower meanwhile.
    unvault(&node, &f, &vault);
    let b = vigil_testenv::process::TowerProcess::new(&node, &[], 5, None);
    let change = f.change_policy(&adding_tower(&f.policy_text, "tower-b", &b), &[0, 1]).unwrap();
    until_applied(&node, &f, &change);
    assert!(tip(&node) > asked["approval"]["expiry_height"].as_u64().unwrap() as u32);
    let enrolled = enroll_tower_b(&f, &b.token());
    // Given the vault without an approval that covers its unvault, tower-b would cancel it.
    assert_eq!(enrolled["kept_elsewhere"], serde_json::json!([vault.outpoint().to_string()]), "{enrolled}");
    block(&node, &f, 3);
    signed_and_spent(&node, &f, &vault, asked["id"].as_u64().unwrap());
}

#[test]
fn a_tower_enrolled_while_a_vault_ceremony_was_open_is_given_the_vault_once_it_is_protected() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner added mid ceremony"), 1, None);
    let amount = Amount::from_sat(2_000_000);
    let coin = f.intake_coin(&node, amount);
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    // The change adding tower-b applies, and tower-b is enrolled, while the ceremony (of
    // version 1, registered at tower-a alone) is still open: not funded, it is not given.
    let b = vigil_testenv::process::TowerProcess::new(&node, &[], 5, None);
    until_applied(
        &node,
        &f,
        &f.change_policy(&adding_tower(&f.policy_text, "tower-b", &b), &[0, 1]).unwrap(),
    );
    let enrolled = enroll_tower_b(&f, &b.token());
    assert_eq!(
        (enrolled["vaults"].as_u64(), enrolled["complete"].as_bool()),
        (Some(0), Some(true)),
        "{enrolled}"
    );
    let (status, vault) = f.complete(&coin, amount, VaultKind::Standard, once, &begun).unwrap();
    assert_eq!(status.state, "protected", "{status:?}");
    let at_b = format!("/v1/vaults/{}", vault.outpoint());
    eventually("tower-b is given the vault", || {
        vigil_testenv::household::get(&b.api, &at_b, &f.owner()).ok()
    });
    eventually("nothing is owed", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
}

#[test]
fn a_tower_added_then_removed_still_hears_of_the_approvals_of_the_vaults_it_was_given() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner added then removed"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    // Version 2 adds tower-b, which is given the vault when it joins.
    let b = vigil_testenv::process::TowerProcess::new(&node, &[], 5, None);
    let v1 = f.policy_text.clone();
    let v2 = adding_tower(&v1, "tower-b", &b);
    until_applied(&node, &f, &f.change_policy(&v2, &[0, 1]).unwrap());
    let enrolled = enroll_tower_b(&f, &b.token());
    assert_eq!(enrolled["vaults"], 1, "{enrolled}");
    // Version 3 removes it again; it still watches the vault, made under version 1.
    let v3 = v1.replace("version = 1", "version = 3");
    until_applied(&node, &f, &f.change_policy(&v3, &[0, 1]).unwrap());
    let approved = spend(&f, &vault).unwrap();
    assert_eq!(acknowledged_by(&approved), ["tower-a", "tower-b"], "{approved}");
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    signed_and_spent(&node, &f, &vault, approved["id"].as_u64().unwrap());
}

#[test]
fn a_tower_down_when_enrolled_is_not_given_a_vault_unvaulted_meanwhile_under_its_approval() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut f = Family::new(&node, &co, example("cosigner added tower down"), 1, None);
    let vault = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let id = spend(&f, &vault).unwrap()["id"].as_u64().unwrap();
    let mut b = vigil_testenv::process::TowerProcess::new(&node, &[], 5, None);
    until_applied(
        &node,
        &f,
        &f.change_policy(&adding_tower(&f.policy_text, "tower-b", &b), &[0, 1]).unwrap(),
    );
    // Tower-b is down when it is enrolled: the vault and its approval wait for it, and the
    // unvault goes out meanwhile.
    let token = b.token();
    b.kill9();
    let enrolled = enroll_tower_b(&f, &token);
    assert_eq!(
        (enrolled["vaults"].as_u64(), enrolled["complete"].as_bool()),
        (Some(1), Some(false)),
        "{enrolled}"
    );
    unvault(&node, &f, &vault);
    b.start();
    let view = format!("/v1/clients/{}", f.cosigner.client);
    eventually("tower-b takes the client", || vigil_testenv::household::get(&b.api, &view, &f.owner()).ok());
    // Nothing is left for it: given the vault before its approval, it would cancel it.
    eventually("every order is settled", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    let not_given = format!("/v1/vaults/{}", vault.outpoint());
    assert_eq!(vigil_testenv::household::get(&b.api, &not_given, &f.owner()).unwrap_err().0, 404);
    block(&node, &f, DELAY - 1);
    signed_and_spent(&node, &f, &vault, id);
}

/// A guarded vault of `f` approved by the first two guardians; then version 2 replaces the
/// first guardian and adds tower-b, which is enrolled and not given the vault: judged by
/// today's guardians, the approval lacks their quorum, so tower-b would refuse it, and cancel
/// the spend it covers. The vault, the approved request, and tower-b.
fn approved_then_kept_from_a_new_tower(
    node: &vigil_testenv::process::Node,
    f: &mut Family,
) -> (Vault, Value, vigil_testenv::process::TowerProcess) {
    let vault = f.vault(node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let id = spend(f, &vault).unwrap()["id"].as_u64().unwrap();
    f.vote(0, id, true).unwrap();
    let approved = f.vote(1, id, true).unwrap();
    assert_eq!(approved["state"], "approved", "{approved}");
    let (ours, stranger) =
        (guardian_lines(&f.policy_text), guardian_lines(&example("another stranger guardian").to_toml()));
    let b = vigil_testenv::process::TowerProcess::new(node, &[], 5, None);
    let v2 = adding_tower(&f.policy_text.replace(&ours[0], &stranger[0]), "tower-b", &b);
    until_applied(node, f, &f.change_policy(&v2, &[0, 1]).unwrap());
    let enrolled = enroll_tower_b(f, &b.token());
    assert_eq!(enrolled["kept_elsewhere"], serde_json::json!([vault.outpoint().to_string()]), "{enrolled}");
    (vault, approved, b)
}

#[test]
fn a_tower_added_with_new_guardians_is_not_given_a_vault_whose_approval_the_old_ones_signed() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut f = Family::new(&node, &co, example("cosigner added tower new guardians"), 1, None);
    let (vault, approved, _b) = approved_then_kept_from_a_new_tower(&node, &mut f);
    let id = approved["id"].as_u64().unwrap();
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    signed_and_spent(&node, &f, &vault, id);
}

#[test]
fn a_tower_that_joined_without_a_vault_refusing_its_next_approval_raises_no_alarm() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let config = format!(
        "approval_expiry_blocks = 1100\ntower_refusal_give_up_secs = 2\n[alarms]\nwebhooks = [{url:?}]\n"
    );
    let co = CosignerProcess::new(&node, &config);
    let mut f = Family::new(&node, &co, example("cosigner kept, asked again"), 1, None);
    let (vault, first, _b) = approved_then_kept_from_a_new_tower(&node, &mut f);
    // The approval lapses unused; today's guardians approve the owner's next request. Tower-b,
    // which does not hold the vault, refuses it: expected, so settled without an alarm.
    let lapsed = first["approval"]["expiry_height"].as_u64().unwrap() as u32 + 7;
    block(&node, &f, lapsed.saturating_sub(tip(&node)));
    let id = spend(&f, &vault).unwrap()["id"].as_u64().unwrap();
    f.vote(1, id, true).unwrap();
    let approved = f.vote(2, id, true).unwrap();
    assert_eq!(acknowledged_by(&approved), ["tower-a"], "{approved}");
    eventually("every order is settled", || {
        (co.metric("vigil_cosigner_tower_orders_pending") == Some(0)).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let refused: Vec<Value> =
        alarms.lock().unwrap().iter().filter(|a| a["kind"] == "tower-refused").cloned().collect();
    assert!(refused.is_empty(), "{refused:?}");
    unvault(&node, &f, &vault);
    block(&node, &f, DELAY - 1);
    signed_and_spent(&node, &f, &vault, id);
}

#[test]
fn a_format_2_family_vaults_spends_with_its_guardians_and_its_tower_cancels_an_unapproved_unvault() {
    // Format 2 (ADR 0005): every key derives per leaf and the internal key is the policy's
    // NUMS xpub; the co-signer, the tower and the signers all follow the policy crate.
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, ExamplePolicy { format: 2, ..example("cosigner format 2") }, 1, None);
    assert_eq!(f.compiled.policy().format, vigil_policy::PolicyFormat::PerLeaf);
    let guarded = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let unapproved = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let asked = spend(&f, &guarded).unwrap();
    let id = asked["id"].as_u64().unwrap();
    assert_eq!(f.vote(0, id, true).unwrap()["state"], "waiting");
    assert_eq!(f.vote(1, id, true).unwrap()["state"], "approved");
    unvault(&node, &f, &guarded);
    block(&node, &f, DELAY - 1);
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    block(&node, &f, 1);
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1, "the spend leaf's signatures hold");

    // An unvault nobody asked for: the tower cancels it with a pre-signed cancel.
    unvault(&node, &f, &unapproved);
    let cancel = eventually("the tower cancels the unapproved unvault", || {
        let spent = spend_of(&node.rpc, unapproved.unvault_outpoint());
        if spent.is_none() {
            block(&node, &f, 1);
        }
        spent
    });
    assert!(unapproved.graph.graph().cancels.iter().any(|c| c.tx.compute_txid() == cancel.compute_txid()));
}

#[test]
fn spend_requests_arriving_at_once_are_each_decided_once_and_no_client_exceeds_its_velocity() {
    // Decisions lock their client, not the store, and commits are grouped: requests of two
    // families racing each other, and each family's own, must still add up.
    const VAULTS: usize = 6;
    const VAULT_SAT: u64 = 1_000_000;
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let tower = vigil_testenv::process::TowerProcess::new(&node, &[], 0, None);
    let miner = vigil_testenv::wallet::Wallet::new();
    vigil_testenv::wallet::mine(&node.rpc, (2 * VAULTS + 120) as u32, &miner.address());
    let mut families = Vec::new();
    for c in 0..2 {
        let mut e = example(&format!("cosigner at once {c}"));
        // Three unvaults fit (each releases a little less than its vault), a fourth does not.
        e.velocity_limit_sat = 3 * VAULT_SAT;
        let mut f = Family::sharing(&node, &co, e, &[&tower]);
        f.use_coins_from(1 + (c * VAULTS) as u32);
        let vaults: Vec<Vault> =
            (0..VAULTS).map(|_| f.vault(&node, Amount::from_sat(VAULT_SAT), VaultKind::Standard)).collect();
        families.push((f, vaults));
    }
    // Every request signed first (each family's nonces in order), then all sent at once.
    let requests: Vec<_> = families
        .iter()
        .flat_map(|(f, vaults)| {
            vaults.iter().map(move |v| {
                let req = vigil_cosigner::wire::SpendRequest {
                    vault_outpoint: v.outpoint().to_string(),
                    psbt: base64_psbt(&f.spend_psbt(v, &f.wallet.address(), 1_000)),
                };
                (f.cosigner.clone(), req, f.next_nonce(), f.owner())
            })
        })
        .collect();
    let answers: Vec<_> = std::thread::scope(|s| {
        let sent: Vec<_> = requests
            .iter()
            .map(|(api, req, nonce, owner)| {
                s.spawn(move || vigil_testenv::cosigner::post(api, "/v1/spends", req, *nonce, owner))
            })
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(answers.len(), 2 * VAULTS);
    // Those over the budget are refused (the guardians cannot lift it for a standard vault).
    let refused = answers.iter().filter(|a| matches!(a, Err((409, why)) if why.contains("velocity budget")));
    assert_eq!(refused.count(), 2 * (VAULTS - 3), "{answers:?}");
    for (f, _) in &families {
        let recorded = f.get("/v1/spends", &f.guardian(0)).unwrap();
        let recorded = recorded.as_array().unwrap();
        assert_eq!(recorded.len(), 3, "one request per vault approved, none lost: {recorded:?}");
        let mut ids: Vec<u64> = recorded.iter().map(|s| s["id"].as_u64().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "each request has its own number");
        let mut outpoints: Vec<&str> =
            recorded.iter().map(|s| s["vault_outpoint"].as_str().unwrap()).collect();
        outpoints.sort();
        outpoints.dedup();
        assert_eq!(outpoints.len(), 3, "no vault decided twice");
        let approved: Vec<&Value> = recorded.iter().filter(|s| s["state"] == "approved").collect();
        assert_eq!(approved.len(), 3, "exactly the velocity's worth approved: {recorded:?}");
        assert!(approved.iter().all(|s| s["towers"][0]["acknowledged"] == true), "{approved:?}");
        let released: u64 = approved.iter().map(|s| s["amount_sat"].as_u64().unwrap()).sum();
        assert!(released <= 3 * VAULT_SAT, "velocity exceeded: {released}");
    }
}

fn base64_psbt(psbt: &vigil_policy::bitcoin::Psbt) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

#[test]
fn each_familys_alarms_reach_its_own_guardians_webhook_and_no_other_familys() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "client_webhooks = \"any\"");
    let tower = vigil_testenv::process::TowerProcess::new(&node, &[], 0, None);
    let (url_a, to_a) = webhook();
    let (url_b, to_b) = webhook();
    // A third family's webhook takes connections and never answers: the others go on.
    let stuck = vigil_testenv::webhook::black_hole();
    let a = Family::sharing_alarmed(&node, &co, example("own webhooks a"), &[&tower], &[url_a]);
    let b = Family::sharing_alarmed(&node, &co, example("own webhooks b"), &[&tower], &[url_b]);
    let c = Family::sharing_alarmed(&node, &co, example("own webhooks c"), &[&tower], &[stuck]);
    c.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &c.guardian(0)).unwrap();
    a.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &a.guardian(0)).unwrap();
    let of = |received: &vigil_testenv::webhook::Received, f: &Family| {
        received.lock().unwrap().iter().filter(|x| x["client"] == f.cosigner.client.as_str()).count()
    };
    eventually("family A's guardians hear of its lockdown", || (of(&to_a, &a) > 0).then_some(()));
    b.post("/v1/lockdown", &serde_json::json!({"blocks": 10}), &b.guardian(0)).unwrap();
    eventually("family B's guardians hear of its lockdown", || (of(&to_b, &b) > 0).then_some(()));
    // Each heard only its own.
    assert!(to_a.lock().unwrap().iter().all(|x| x["client"] == a.cosigner.client.as_str()));
    assert!(to_b.lock().unwrap().iter().all(|x| x["client"] == b.cosigner.client.as_str()));
}

/// The co-signer keeps its connections to the towers open between requests. One a tower
/// closed by dying is not reused: the next approval reaches the restarted tower at once.
#[test]
fn the_first_approval_after_a_tower_restarted_is_acknowledged_by_it_at_once() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner tower restarted"), 2, None);
    let vaults: Vec<_> =
        (0..3).map(|_| f.vault(&node, Amount::from_sat(1_000_000), VaultKind::Standard)).collect();
    assert_eq!(acknowledged(&f, &vaults[0]), [true, true]);
    for v in &vaults[1..] {
        f.towers[1].kill9();
        f.towers[1].start();
        assert_eq!(
            acknowledged(&f, v),
            [true, true],
            "no answer was lost to a connection the tower had closed"
        );
    }
}

/// A tower that hangs (it takes the request and never answers) holds the first approval for
/// the whole timeout, not every one after it: the next give it a short probe only, naming it
/// as not acknowledged. Once it answers again, the next approval reaches it at once, with
/// those it missed.
#[test]
fn a_hung_tower_holds_one_approval_for_the_timeout_not_every_one() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner tower hung"), 2, None);
    let vaults: Vec<_> =
        (0..4).map(|_| f.vault(&node, Amount::from_sat(1_000_000), VaultKind::Standard)).collect();
    f.towers[1].freeze(true);
    // Which towers acknowledged, what tower-b's report says, how long the answer took, and
    // the request's id.
    let timed = |vault: &Vault| {
        let started = std::time::Instant::now();
        let s = spend(&f, vault).unwrap();
        assert_eq!(s["state"], "approved", "{s}");
        let id = s["id"].as_u64().unwrap();
        (acknowledged_by(&s).join(","), s["towers"][1]["error"].to_string(), started.elapsed(), id)
    };
    let (first, said, waited, first_id) = timed(&vaults[0]);
    assert_eq!(first, "tower-a");
    assert!(said.contains("did not answer in time"), "{said}");
    assert!(waited >= std::time::Duration::from_secs(9), "the first waits out the timeout: {waited:?}");
    for v in &vaults[1..3] {
        let (ack, says, waited, _) = timed(v);
        // The same words: whether this request or an earlier one found it hung must not show.
        assert_eq!((ack.as_str(), &says), ("tower-a", &said));
        assert!(waited < std::time::Duration::from_secs(5), "the next do not wait for it: {waited:?}");
    }
    assert_eq!(co.metric("vigil_cosigner_tower_orders_pending"), Some(1), "tower-b's approvals are owed");
    // It answers again: the co-signer's background push gives it the approvals it missed,
    // and the requests say so (the owner's client sends an unvault once every tower has it).
    f.towers[1].freeze(false);
    let status = eventually("tower-b has the first approval", || {
        let s = f.get(&format!("/v1/spends/{first_id}"), &f.owner()).unwrap();
        (acknowledged_by(&s).len() == 2).then_some(s)
    });
    assert_eq!(acknowledged_by(&status), ["tower-a", "tower-b"], "{status}");
    assert!(status["towers"][1]["error"].is_null(), "{status}");
    // The next approval reaches it at once.
    let (ack, ..) = timed(&vaults[3]);
    assert_eq!(ack, "tower-a,tower-b");
    assert_eq!(co.metric("vigil_cosigner_tower_orders_pending"), Some(0), "it has every approval");
}

/// A tower enrolled again with a token it never issued (anyone holding the owner's key can
/// ask) refuses that enrollment for good: the orders after it still reach the tower, which
/// would otherwise cancel every approved unvault and never hear of a lockdown again.
#[test]
fn a_tower_enrolled_again_with_a_bad_token_still_gets_every_order_after_it() {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner bad re-enrollment"), 2, None);
    let vault = f.vault(&node, Amount::from_sat(1_000_000), VaultKind::Standard);
    let junk = "ab".repeat(32);
    let refused =
        f.post("/v1/towers", &serde_json::json!({"tower": "tower-a", "token": junk}), &f.owner()).unwrap();
    assert!(refused["error"].as_str().unwrap().contains("unknown enrollment token"), "{refused}");
    let approved = spend(&f, &vault).unwrap();
    assert_eq!(acknowledged_by(&approved), ["tower-a", "tower-b"], "{approved}");
    // Asked again and again while the tower is down, the orders for it do not pile up: each
    // enrollment replaces the last, with what it owes the tower.
    f.towers[0].kill9();
    let enroll = || f.post("/v1/towers", &serde_json::json!({"tower": "tower-a", "token": junk}), &f.owner());
    // The orders queued for the client, read from the store (they are one record).
    let queued = || -> usize {
        let db = rusqlite::Connection::open(co.dir.path().join("data/cosigner.sqlite")).unwrap();
        let body: String = db
            .query_row(
                "SELECT body FROM records WHERE kind = 'orders' AND id = ?1",
                [&f.cosigner.client],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str::<Vec<Value>>(&body).unwrap().len()
    };
    enroll().unwrap();
    let after_one = queued();
    for _ in 0..3 {
        enroll().unwrap();
    }
    assert_eq!(queued(), after_one);
    assert!(after_one >= 2, "the enrollment and the vault wait: {after_one}");
}

/// Which towers acknowledged the approval of a spend of `vault`.
fn acknowledged(f: &Family, vault: &Vault) -> Vec<bool> {
    let s = spend(f, vault).unwrap();
    assert_eq!(s["state"], "approved", "{s}");
    s["towers"].as_array().unwrap().iter().map(|t| t["acknowledged"] == true).collect()
}

/// A request waiting across a change that replaced a guardian who had voted for it needs the
/// votes of today's guardians: the towers count only theirs, and would not take the approval.
#[test]
fn a_vote_of_a_guardian_replaced_since_no_longer_counts() {
    let node = vigil_node();
    // Requests that outlive the governance wait.
    let co = CosignerProcess::new(&node, "approval_expiry_blocks = 2000");
    let mut e = example("cosigner vote of a replaced guardian");
    e.services.spend_limit_sat = Some(1_000_000);
    let mut f = Family::new(&node, &co, e, 1, None);
    // Above the per-spend limit: it waits for two of the three guardians.
    let vault = f.vault(&node, Amount::from_sat(3_000_000), VaultKind::Standard);
    let asked = spend(&f, &vault).unwrap();
    assert_eq!(asked["state"], "waiting", "{asked}");
    let id = asked["id"].as_u64().unwrap();
    assert_eq!(f.vote(2, id, true).unwrap()["state"], "waiting");
    // Guardian 2 is replaced by someone else.
    let (ours, others) =
        (guardian_lines(&f.policy_text), guardian_lines(&example("someone else's guardians").to_toml()));
    let v2 = version_2(&f.policy_text, &ours[2], &others[2]);
    let change = f.change_policy(&v2, &[0, 1]).unwrap();
    block(&node, &f, change["effective_height"].as_u64().unwrap() as u32 - tip(&node));
    // Guardian 0's vote is the only one of today's guardians.
    let one = f.vote(0, id, true).unwrap();
    assert_eq!((one["state"].as_str(), one["approvals"].as_u64()), (Some("waiting"), Some(1)), "{one}");
    let two = f.vote(1, id, true).unwrap();
    assert_eq!(two["state"], "approved", "{two}");
    assert!(two["towers"].as_array().unwrap().iter().all(|t| t["acknowledged"] == true), "{two}");
}

/// A tower whose store was lost, where whoever holds the owner's device pins the first policy
/// with the operator's new token before the co-signer enrolls it at the version in force: the
/// tower refuses that enrollment (it holds an earlier version), and the guardians are told at
/// once rather than after the give-up time.
#[test]
fn a_tower_pinned_first_at_an_earlier_version_is_alarmed_at_once() {
    let node = vigil_node();
    let (url, alarms) = webhook();
    let co = CosignerProcess::new(&node, &format!("[alarms]\nwebhooks = [{url:?}]\n"));
    let mut f = Family::new(&node, &co, example("cosigner pinned first"), 1, None);
    // A tightening applies at once, and reaches the tower.
    let v2 = f
        .policy_text
        .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000")
        .replace("version = 1", "version = 2");
    assert_ne!(v2, f.policy_text.replace("version = 1", "version = 2"));
    until_applied(&node, &f, &f.change_policy(&v2, &[0, 1]).unwrap());
    f.towers[0].kill9();
    std::fs::remove_dir_all(f.towers[0].dir.path().join("data")).unwrap();
    f.towers[0].start();
    let token = f.towers[0].token();
    let captor = vigil_tower::wire::EnrollClient {
        nonce: f.next_nonce(),
        token: token.clone(),
        policy: f.policy_text.clone(),
        changes: Vec::new(),
    };
    let body = serde_json::to_vec(&captor).unwrap();
    vigil_testenv::household::post(&f.towers[0].api, "/v1/clients", &body, &f.owner()).unwrap();
    let enrolled =
        f.post("/v1/towers", &serde_json::json!({"tower": "tower-a", "token": token}), &f.owner()).unwrap();
    assert_eq!(enrolled["enrolled"], false, "{enrolled}");
    assert!(enrolled["error"].as_str().is_some_and(|e| e.contains("holds client")), "{enrolled}");
    eventually("the guardians are told", || {
        let alarms = alarms.lock().unwrap();
        let refused = |a: &&Value| {
            a["kind"] == "tower-refused" && a["message"].as_str().is_some_and(|m| m.contains("holds client"))
        };
        alarms.iter().find(refused).cloned()
    });
}
