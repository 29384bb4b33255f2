//! Bad input and attacks on a running co-signer: each is refused with a clear 4xx and changes
//! nothing (the client's requests and the co-signer's counters are compared before and after).

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use vigil_cosigner::wire::{BeginVault, Coin, Signed};
use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
use vigil_policy::bitcoin::Amount;
use vigil_policy::VaultKind;
use vigil_testenv::cosigner::{post_raw, unix_now, CosignerProcess};
use vigil_testenv::family::Family;
use vigil_testenv::process::vigil_node;
use vigil_tower::wire::sign_request;

/// What must not change: the client's requests as a guardian sees them, and the counters.
fn snapshot(f: &Family, co: &CosignerProcess) -> (Value, Vec<Option<u64>>) {
    // (Ceremonies in progress live in RAM only: a restart ends them, by design.)
    let metrics = ["clients", "spends_waiting", "spends_approved", "lockdowns", "alarm_outbox"]
        .iter()
        .map(|m| co.metric(&format!("vigil_cosigner_{m}")))
        .collect();
    (f.get("/v1/spends", &f.guardian(0)).unwrap(), metrics)
}

fn body<T: serde::Serialize>(nonce: u64, time: u64, request: T) -> Vec<u8> {
    serde_json::to_vec(&Signed { nonce, time, request }).unwrap()
}

/// A POST whose headers name `claimed` while `signer` signed it.
fn forged(f: &Family, path: &str, bytes: &[u8], signer: &Keypair, claimed: &Keypair) -> (u16, Vec<u8>) {
    let (_, sig) = sign_request(signer, &f.cosigner.key, path, bytes);
    let answer = ureq::post(&format!("{}{path}", f.cosigner.url))
        .set("x-vigil-client", &f.cosigner.client)
        .set("x-vigil-key", &claimed.x_only_public_key().0.to_string())
        .set("x-vigil-signature", &sig)
        .timeout(Duration::from_secs(10))
        .send_bytes(bytes);
    match answer {
        Ok(r) => (r.status(), Vec::new()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default().into_bytes()),
        Err(e) => (0, e.to_string().into_bytes()),
    }
}

#[test]
fn every_bad_request_is_refused_clearly_and_changes_nothing() {
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner attacks"), 1, None);
    let mut other = Family::new(&node, &co, example("cosigner attacks other"), 1, None);
    other.use_coins_from(100);
    let standard = f.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let guarded = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let theirs = other.vault(&node, Amount::from_sat(2_000_000), VaultKind::Standard);
    let their_coin = other.intake_coin(&node, Amount::from_sat(1_000_000));
    let used_coin = f.intake_coin(&node, Amount::from_sat(1_000_000));
    let free_coin = f.intake_coin(&node, Amount::from_sat(3_000_000));
    f.begin(&used_coin, Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    // Vaults whose funding was co-signed but is not on chain yet: their coins are unspent.
    let unbroadcast = |f: &mut Family| {
        let coin = f.intake_coin(&node, Amount::from_sat(1_000_000));
        let (once, begun) = f.begin(&coin, Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
        f.complete(&coin, Amount::from_sat(1_000_000), VaultKind::Standard, once, &begun).unwrap();
        coin
    };
    let pending_coin = unbroadcast(&mut f);
    let their_pending_coin = unbroadcast(&mut other);
    // A request accepted once, kept to be replayed.
    let psbt = f.spend_psbt(&standard, &f.wallet.address(), 1_000);
    let spend_request = json!({
        "vault_outpoint": standard.outpoint().to_string(),
        "psbt": base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
    });
    let accepted = body(f.next_nonce(), unix_now(), &spend_request);
    assert_eq!(post_raw(&f.cosigner, "/v1/spends", &accepted, &f.owner()).0, 200);
    let waiting = vigil_testenv::family::Family::request_spend(
        &f,
        &guarded,
        &f.spend_psbt(&guarded, &f.wallet.address(), 1_000),
    )
    .unwrap();
    let waiting_id = waiting["id"].as_u64().unwrap();

    let stranger = Keypair::new(&Secp256k1::new(), &mut vigil_policy::bitcoin::secp256k1::rand::thread_rng());
    let tried = std::cell::Cell::new(0);
    let check = |what: &str,
                 (status, text): (u16, Vec<u8>),
                 want: u16,
                 f: &Family,
                 co: &CosignerProcess,
                 before: &(Value, Vec<Option<u64>>)| {
        tried.set(tried.get() + 1);
        let text = String::from_utf8_lossy(&text).into_owned();
        assert_eq!(status, want, "{what}: {text}");
        assert!(
            text.contains("\"error\":") && text.len() > 20,
            "{what}: the refusal names the problem: {text}"
        );
        assert_eq!(&snapshot(f, co), before, "{what} changed something");
        eprintln!("refused as it should: {what}: {status} {text}");
    };
    let before = snapshot(&f, &co);
    let owner = f.owner();
    let now = unix_now();

    check("malformed body", post_raw(&f.cosigner, "/v1/spends", b"{not json", &owner), 400, &f, &co, &before);
    let vote = body(f.next_nonce(), now, json!({"approve": false}));
    check(
        "a request id that is not a number",
        post_raw(&f.cosigner, "/v1/spends/1x/vote", &vote, &owner),
        400,
        &f,
        &co,
        &before,
    );
    check(
        "a path the API does not have",
        post_raw(&f.cosigner, "/v1/spend", &vote, &owner),
        404,
        &f,
        &co,
        &before,
    );
    check(
        "a method a path does not take",
        post_raw(&f.cosigner, "/v1/alarms", &vote, &owner),
        405,
        &f,
        &co,
        &before,
    );
    let huge = body(f.next_nonce(), now, json!({"vault_outpoint": "x", "psbt": "A".repeat(300_000)}));
    check("an oversize body", post_raw(&f.cosigner, "/v1/spends", &huge, &owner), 413, &f, &co, &before);
    // The two requests carrying a transaction of many coins (a vault's funding, the deep
    // vault's fast path) are read up to 4 MiB: this one is refused for what it says.
    let many_coins = body(f.next_nonce(), now, json!({"psbt": "A".repeat(300_000)}));
    let read = post_raw(&f.cosigner, "/v1/deep-vault/sign", &many_coins, &owner);
    check("a transaction of many coins, malformed", read, 400, &f, &co, &before);
    // Past it, refused before it is read (so large, the connection may close first).
    let too_many = body(f.next_nonce(), now, json!({"psbt": "A".repeat(4_200_000)}));
    let (status, _) = post_raw(&f.cosigner, "/v1/vaults/complete", &too_many, &owner);
    assert!(status == 413 || status == 0, "an oversize transaction: {status}");
    assert_eq!(snapshot(&f, &co), before, "an oversize transaction changed something");
    let fresh = body(f.next_nonce(), now, &spend_request);
    check(
        "signed by another key than it names",
        forged(&f, "/v1/spends", &fresh, &f.guardian(1), &owner),
        401,
        &f,
        &co,
        &before,
    );
    check(
        "a replayed request",
        post_raw(&f.cosigner, "/v1/spends", &accepted, &owner),
        401,
        &f,
        &co,
        &before,
    );
    check("an unknown key", post_raw(&f.cosigner, "/v1/spends", &fresh, &stranger), 403, &f, &co, &before);
    check(
        "another client's guardian",
        post_raw(
            &f.cosigner,
            "/v1/lockdown",
            &body(f.next_nonce(), now, json!({"blocks": 10})),
            &other.guardian(0),
        ),
        403,
        &f,
        &co,
        &before,
    );
    let vote = body(f.next_nonce(), now, json!({"approve": true, "approval_signature": "00".repeat(64)}));
    check(
        "the owner approving its own spend",
        post_raw(&f.cosigner, &format!("/v1/spends/{waiting_id}/vote"), &vote, &owner),
        403,
        &f,
        &co,
        &before,
    );
    let mut smuggled = spend_request.clone();
    smuggled["policy"] = json!("version = 2");
    check(
        "a policy change inside a spend request",
        post_raw(&f.cosigner, "/v1/spends", &body(f.next_nonce(), now, &smuggled), &owner),
        400,
        &f,
        &co,
        &before,
    );
    let mut envelope: Value = serde_json::from_slice(&body(f.next_nonce(), now, &spend_request)).unwrap();
    envelope["policy"] = json!("version = 2");
    check(
        "a policy change beside a spend request",
        post_raw(&f.cosigner, "/v1/spends", &serde_json::to_vec(&envelope).unwrap(), &owner),
        400,
        &f,
        &co,
        &before,
    );
    let mut unsigned = psbt.clone();
    unsigned.inputs.iter_mut().for_each(|i| i.tap_script_sigs.clear());
    let unsigned_request = json!({
        "vault_outpoint": standard.outpoint().to_string(),
        "psbt": base64::engine::general_purpose::STANDARD.encode(unsigned.serialize()),
    });
    check(
        "a spend request the owner did not sign",
        post_raw(&f.cosigner, "/v1/spends", &body(f.next_nonce(), now, &unsigned_request), &owner),
        400,
        &f,
        &co,
        &before,
    );
    // A guardian's signature on a spend other than the one requested.
    let other_tx = f.spend_psbt(&guarded, &f.wallet.address(), 2_000);
    let digest = serde_json::from_value::<vigil_cosigner::wire::SpendStatus>(waiting.clone())
        .unwrap()
        .approval
        .digest();
    // Guardian 0's approval of the waiting request, carrying `psbt` as its signed spend.
    let vote_with = |psbt: &vigil_policy::bitcoin::psbt::Psbt| {
        let vote = body(
            f.next_nonce(),
            now,
            json!({
                "approve": true,
                "approval_signature": vigil_cosigner::wire::sign(&digest, &f.guardian(0)).signature,
                "psbt": base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
            }),
        );
        post_raw(&f.cosigner, &format!("/v1/spends/{waiting_id}/vote"), &vote, &f.guardian(0))
    };
    let mut signed_other = other_tx.clone();
    f.keys.sign_psbt(&mut signed_other, &[vigil_policy::example::Signer::Guardian(0)]);
    check("a spend that differs from the one approved", vote_with(&signed_other), 400, &f, &co, &before);
    // The right spend, but the guardian's signature on it does not verify: taken, it would
    // leave an approval whose spend can never complete.
    let mut bad_sig = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD.decode(waiting["psbt"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    f.keys.sign_psbt(&mut bad_sig, &[vigil_policy::example::Signer::Guardian(0)]);
    for sig in bad_sig.inputs[0].tap_script_sigs.values_mut() {
        let mut bytes = sig.signature.serialize();
        bytes[10] ^= 1;
        sig.signature = vigil_policy::bitcoin::secp256k1::schnorr::Signature::from_slice(&bytes).unwrap();
    }
    check("a guardian's spend signature that does not verify", vote_with(&bad_sig), 400, &f, &co, &before);
    // An intake coin that funds a vault already (its funding not on chain yet): no second
    // spend of it.
    let funded = pending_coin.outpoint;
    let again = BeginVault {
        index: 40,
        amount_sat: 1_000_000,
        kind: "standard".into(),
        owner_once: standard.plan.owner_once.to_string(),
        owner_once_xpub: None,
        coins: vec![Coin {
            outpoint: funded.to_string(),
            intake_index: pending_coin.intake_index,
            change: false,
        }],
        change_index: 41,
        change_branch: false,
        funding_sat_per_vb: 2,
    };
    check(
        "a second spend of the same intake coin",
        post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &again), &owner),
        409,
        &f,
        &co,
        &before,
    );
    // A one-time extended key whose child at the vault's index is not the one-time key.
    let mut unrelated = again.clone();
    let stranger = vigil_policy::OneTimeKey::for_vault(vigil_policy::bitcoin::NetworkKind::Test, 40).unwrap();
    unrelated.owner_once_xpub = stranger.xpub().map(|x| x.to_string());
    check(
        "an owner's one-time extended key that is not its one-time key's",
        post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &unrelated), &owner),
        400,
        &f,
        &co,
        &before,
    );
    let mut foreign = again.clone();
    foreign.coins = vec![Coin {
        outpoint: their_coin.outpoint.to_string(),
        intake_index: their_coin.intake_index,
        change: false,
    }];
    let (status, text) = post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &foreign), &owner);
    let not_ours = String::from_utf8_lossy(&text).replace(&their_coin.outpoint.to_string(), "C");
    check("another client's coin", (status, text), 400, &f, &co, &before);
    // One funding another client's vault is answered the same: which coins fund vaults here
    // is not for another client to learn.
    foreign.coins[0].outpoint = their_pending_coin.outpoint.to_string();
    foreign.coins[0].intake_index = their_pending_coin.intake_index;
    let (status, text) = post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &foreign), &owner);
    let answer = String::from_utf8_lossy(&text).replace(&their_pending_coin.outpoint.to_string(), "C");
    assert_eq!(
        answer.replace(&format!("address {}", their_pending_coin.intake_index), "address I"),
        not_ours.replace(&format!("address {}", their_coin.intake_index), "address I")
    );
    check("a coin funding another client's vault", (status, text), 400, &f, &co, &before);
    // This family's policy is format 1: its intake has no change branch, for the change or a coin.
    let mut no_branch = again.clone();
    no_branch.coins = vec![Coin {
        outpoint: free_coin.outpoint.to_string(),
        intake_index: free_coin.intake_index,
        change: false,
    }];
    no_branch.change_branch = true;
    let (status, text) = post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &no_branch), &owner);
    assert!(
        String::from_utf8_lossy(&text).contains("no change branch"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    check("a change branch the policy does not have", (status, text), 400, &f, &co, &before);
    let mut claimed = no_branch.clone();
    claimed.change_branch = false;
    claimed.coins[0].change = true;
    let (status, text) = post_raw(&f.cosigner, "/v1/vaults", &body(f.next_nonce(), now, &claimed), &owner);
    assert!(
        String::from_utf8_lossy(&text).contains("of the change branch"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    check("a receive coin claimed as change", (status, text), 400, &f, &co, &before);
    // Sixteen ceremonies open (`used_coin`'s and fifteen more): a seventeenth is refused, and
    // the refusal leaves its nonce unused: sent again, it gets the same answer, not a replay's.
    for i in 0..15 {
        f.begin(&free_coin, Amount::from_sat(1_000_000 + i * 1_000), VaultKind::Standard).unwrap();
    }
    let mut seventeenth = no_branch.clone();
    seventeenth.change_branch = false;
    let seventeenth = body(f.next_nonce(), now, &seventeenth);
    for what in ["a seventeenth open ceremony", "the seventeenth ceremony sent again"] {
        let (status, text) = post_raw(&f.cosigner, "/v1/vaults", &seventeenth, &owner);
        assert!(
            String::from_utf8_lossy(&text).contains("open already"),
            "{}",
            String::from_utf8_lossy(&text)
        );
        check(what, (status, text), 409, &f, &co, &before);
    }
    let theirs_spend = json!({
        "vault_outpoint": theirs.outpoint().to_string(),
        "psbt": base64::engine::general_purpose::STANDARD.encode(other.spend_psbt(&theirs, &f.wallet.address(), 1_000).serialize()),
    });
    check(
        "a spend of another client's vault",
        post_raw(&f.cosigner, "/v1/spends", &body(f.next_nonce(), now, &theirs_spend), &owner),
        404,
        &f,
        &co,
        &before,
    );
    check(
        "a stale request",
        post_raw(
            &f.cosigner,
            "/v1/lockdown",
            &body(f.next_nonce(), now - 600, json!({"blocks": 10})),
            &owner,
        ),
        401,
        &f,
        &co,
        &before,
    );
    let mut unknown = f.cosigner.clone();
    unknown.client = "00".repeat(32);
    check(
        "an unknown client",
        post_raw(&unknown, "/v1/lockdown", &body(f.next_nonce(), now, json!({"blocks": 10})), &owner),
        401,
        &f,
        &co,
        &before,
    );
    let mut wrong_sequence = f.spend_psbt(&guarded, &f.wallet.address(), 1_000);
    wrong_sequence.unsigned_tx.input[0].sequence = vigil_policy::bitcoin::Sequence::from_height(1);
    let req = json!({"vault_outpoint": guarded.outpoint().to_string(), "psbt": base64::engine::general_purpose::STANDARD.encode(wrong_sequence.serialize())});
    check(
        "a spend without the DELAY",
        post_raw(&f.cosigner, "/v1/spends", &body(f.next_nonce(), now, &req), &owner),
        400,
        &f,
        &co,
        &before,
    );
    check(
        "a lockdown of zero blocks",
        post_raw(&f.cosigner, "/v1/lockdown", &body(f.next_nonce(), now, json!({"blocks": 0})), &owner),
        400,
        &f,
        &co,
        &before,
    );
    check(
        "a signature asked for a request still waiting",
        post_raw(
            &f.cosigner,
            &format!("/v1/spends/{waiting_id}/sign"),
            &body(f.next_nonce(), now, json!({})),
            &owner,
        ),
        409,
        &f,
        &co,
        &before,
    );
    let token = co.token();
    let enroll = |t: &str| {
        let r = ureq::post(&format!("{}/v1/enroll", co.url)).send_json(json!({ "token": t }));
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap().into_bytes()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap().into_bytes()),
            Err(e) => panic!("{e}"),
        }
    };
    check("an unknown enrollment token", enroll(&"ab".repeat(32)), 401, &f, &co, &before);
    let used = enroll(&token);
    assert_eq!(used.0, 200);
    // Restarted: the used nonce is still used.
    co.kill9();
    co.start();
    check(
        "a replay after a restart",
        post_raw(&f.cosigner, "/v1/spends", &accepted, &owner),
        401,
        &f,
        &co,
        &before,
    );
    let tried = tried.get();
    eprintln!("{tried} bad requests tried, each refused, none changed anything");
    assert!(tried >= 20, "{tried}");
}

#[test]
fn a_funding_short_of_the_owners_signatures_is_refused_and_the_ceremony_still_completes() {
    use vigil_policy::example::Signer;
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cosigner funding signatures"), 1, None);
    let amount = Amount::from_sat(2_000_000);
    let coin = f.intake_coin(&node, amount);
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    // The owner's one-time signatures are made once (the key is wiped), so each try begins
    // again; the coin stays free while no funding was committed.
    let refused = f.complete_signed_by(&coin, amount, VaultKind::Standard, once, &begun, &[]).unwrap_err();
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(refused.1.contains("input 0 carries 0 valid signature(s) of the owner's keys"), "{refused:?}");
    // A guardian's signature (on the recovery leaf) is not the owner's.
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    let refused = f
        .complete_signed_by(&coin, amount, VaultKind::Standard, once, &begun, &[Signer::Guardian(0)])
        .unwrap_err();
    assert!(refused.1.contains("0 valid signature(s)"), "{refused:?}");
    let (once, begun) = f.begin(&coin, amount, VaultKind::Standard).unwrap();
    let (status, vault) = f.complete(&coin, amount, VaultKind::Standard, once, &begun).unwrap();
    assert_eq!(status.state, "protected");
    vigil_chain::ChainBackend::broadcast(&node.rpc, &vault.funding).unwrap();
}
