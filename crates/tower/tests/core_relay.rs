//! The pre-signed graph against a real Bitcoin Core's mempool (the relay policy the kernel
//! lacks): every rung relays, the ladder and the anchors bump, and the pinning analysis's
//! attacks (ADR 0002) are tried, each outcome printed.

use serde_json::json;
use std::collections::BTreeMap;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::consensus::encode::serialize_hex;
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut};
use vigil_testenv::eventually;
use vigil_testenv::household::{example, Household, DELAY};
use vigil_testenv::process::{bitcoind, Node, TowerOptions, TowerProcess};
use vigil_testenv::wallet::{confirmations, mine, spend_of};

use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
use vigil_policy::VaultKind;
use vigil_testenv::Vault;
use vigil_tower::fees::{FeeCoin, FeePolicy, FeeWallet};

fn accept(core: &Node, tx: &Transaction) -> (bool, String) {
    let r = core.rpc.call("testmempoolaccept", json!([[serialize_hex(tx)]])).unwrap();
    (
        r[0]["allowed"].as_bool().unwrap_or(false),
        r[0]["reject-reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn send(core: &Node, tx: &Transaction) -> Result<(), String> {
    core.rpc.call("sendrawtransaction", json!([serialize_hex(tx), 0])).map(|_| ()).map_err(|e| e.to_string())
}

fn in_mempool(core: &Node, tx: &Transaction) -> bool {
    core.rpc.mempool().unwrap().txids.contains(&tx.compute_txid())
}

fn setup(seed: &str) -> Option<(Node, Household, tempfile::TempDir)> {
    let core = bitcoind()?;
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &core, example(seed));
    Some((core, client, dir))
}

fn funded_vault(core: &Node, client: &mut Household, sat: u64) -> Vault {
    let v = client.create_vault(&core.rpc, Amount::from_sat(sat), VaultKind::Standard);
    mine(&core.rpc, 1, &client.wallet.address());
    core.rpc.broadcast(&v.funding).unwrap();
    mine(&core.rpc, 1, &client.wallet.address());
    v
}

/// A child spending `anchor` (P2A, anyone can) and optionally a wallet coin, paying `fee`,
/// padded with OP_RETURN outputs to about `vbytes`.
fn anchor_child(
    client: &Household,
    anchor: OutPoint,
    coin: Option<(OutPoint, TxOut)>,
    fee: u64,
    vbytes: usize,
) -> Transaction {
    let mut inputs = vec![(anchor, vigil_policy::anchor_output())];
    inputs.extend(coin);
    let total: u64 = inputs.iter().map(|(_, o)| o.value.to_sat()).sum();
    let mut output = Vec::new();
    if total - fee >= vigil_policy::P2TR_DUST_SAT {
        output.push(TxOut {
            value: Amount::from_sat(total - fee),
            script_pubkey: client.wallet.address().script_pubkey(),
        });
    }
    let padding = ScriptBuf::from_bytes([vec![0x6a, 0x4c, 75], vec![0u8; 75]].concat());
    while output.len() * 86 < vbytes.saturating_sub(120) || output.is_empty() {
        output.push(TxOut { value: Amount::ZERO, script_pubkey: padding.clone() });
    }
    let mut tx = vigil_policy::unsigned_tx(
        vigil_policy::GRAPH_TX_VERSION,
        inputs.iter().map(|(op, _)| (*op, Sequence::ENABLE_RBF_NO_LOCKTIME)),
        output,
    );
    if inputs.len() == 2 {
        let prevouts: Vec<TxOut> = inputs.iter().map(|(_, o)| o.clone()).collect();
        vigil_policy::sign_key_path(&mut tx, 1, &prevouts, &client.wallet.key).unwrap();
    }
    tx
}

#[test]
fn every_rung_of_every_presigned_transaction_relays_on_a_real_bitcoind() {
    let Some((core, mut client, _dir)) = setup("core relay rungs") else { return };
    let v = funded_vault(&core, &mut client, 5_000_000);
    let g = v.graph.graph();
    let mut rows = Vec::new();
    let mut check = |role: &str, p: &vigil_policy::PresignedTx| {
        let (ok, why) = accept(&core, &p.tx);
        rows.push(format!(
            "{role:>18} {:>4} sat/vB {:>4} vB  {}",
            p.feerate_sat_per_vb,
            p.tx.vsize(),
            if ok { "relayed".into() } else { why.clone() }
        ));
        assert!(ok, "{role} at {} sat/vB: {why}", p.feerate_sat_per_vb);
    };
    check("unvault", &g.unvault);
    for e in &g.emergencies {
        check("emergency", e);
    }
    send(&core, v.graph.unvault()).unwrap();
    mine(&core.rpc, 1, &client.wallet.address());
    for c in &g.cancels {
        check("cancel", c);
    }
    for e in &g.unvault_emergencies {
        check("unvault-emergency", e);
    }
    println!("{}", rows.join("\n"));
}

#[test]
fn bumping_and_the_pinning_attacks_of_adr_0002() {
    let Some((core, mut client, _dir)) = setup("core relay pinning") else { return };
    let mut outcomes = Vec::new();
    // Confirmed wallet coins for the attacker's and the tower's children, made up front so
    // that no later block confirms an unvault by accident.
    let mut coins: Vec<(OutPoint, TxOut)> = (0..5)
        .map(|i| {
            client.wallet.pay(
                &core.rpc,
                150 + i,
                client.wallet.address().script_pubkey(),
                Amount::from_sat(100_000),
            )
        })
        .collect();
    mine(&core.rpc, 1, &client.wallet.address());
    let mut coin = move || coins.pop();

    // 1. C as U's TRUC child while U is unconfirmed; a higher rung replaces it.
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    send(&core, v.graph.cancel(0).unwrap()).unwrap();
    send(&core, v.graph.cancel(3).unwrap()).expect("a higher rung replaces the lower one");
    assert!(in_mempool(&core, v.graph.cancel(3).unwrap()) && !in_mempool(&core, v.graph.cancel(0).unwrap()));
    outcomes
        .push("C rung 0 as the unconfirmed U's TRUC child, replaced by rung 3 (RBF): relayed".to_string());
    mine(&core.rpc, 1, &client.wallet.address());

    // 2. The attacker pins U's anchor first; C then needs sibling eviction.
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    let u_anchor = OutPoint { txid: v.graph.unvault().compute_txid(), vout: 1 };
    let pin = anchor_child(&client, u_anchor, coin(), 2_000, 900);
    send(&core, &pin).expect("the attacker's child enters");
    let rung = (0..v.graph.graph().cancels.len()).find(|r| send(&core, v.graph.cancel(*r).unwrap()).is_ok());
    let rung = rung.expect("some rung of C evicts the attacker's child on U's anchor");
    assert!(!in_mempool(&core, &pin));
    outcomes.push(format!(
        "attacker child ({} vB, 2,000 sat) on U's anchor: C rung {rung} ({} sat/vB) evicted it by sibling eviction",
        pin.vsize(),
        v.graph.graph().cancels[rung].feerate_sat_per_vb
    ));
    mine(&core.rpc, 1, &client.wallet.address());

    // 3. After U confirms: the attacker hangs a big cheap child on C's anchor; the tower
    //    climbs the ladder, paying for the evicted child.
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    mine(&core.rpc, 1, &client.wallet.address());
    send(&core, v.graph.cancel(0).unwrap()).unwrap();
    let c_anchor = OutPoint { txid: v.graph.cancel(0).unwrap().compute_txid(), vout: 1 };
    let (c1, c2) = (coin(), coin());
    // TRUC caps the child at 1,000 vB: a bigger pin is refused outright.
    let too_big = anchor_child(&client, c_anchor, c1, 1_000, 990);
    let refused = send(&core, &too_big).expect_err("a child over 1,000 vB");
    assert!(refused.contains("too big"), "{refused}");
    outcomes.push(format!(
        "attacker child of {} vB on C's anchor: refused by Core (TRUC child limit)",
        too_big.vsize()
    ));
    let pin = anchor_child(&client, c_anchor, c2, 1_000, 900);
    send(&core, &pin).expect("a 900 vB child enters");
    let rung = (1..v.graph.graph().cancels.len()).find(|r| send(&core, v.graph.cancel(*r).unwrap()).is_ok());
    let rung = rung.expect("a higher rung replaces C and the attacker's child");
    assert!(!in_mempool(&core, &pin));
    outcomes.push(format!(
        "attacker child ({} vB, 1,000 sat) on C's anchor: C rung {rung} ({} sat/vB, {} sat) replaced C and the child",
        pin.vsize(),
        v.graph.graph().cancels[rung].feerate_sat_per_vb,
        v.graph.graph().cancels[rung].fee.to_sat()
    ));
    mine(&core.rpc, 1, &client.wallet.address());

    // 4. Beyond the ladder: the tower bumps C through its anchor, as a package.
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    mine(&core.rpc, 1, &client.wallet.address());
    let c0 = v.graph.cancel(0).unwrap().clone();
    let bump = anchor_child(&client, OutPoint { txid: c0.compute_txid(), vout: 1 }, coin(), 20_000, 0);
    let r = core.rpc.call("submitpackage", json!([[serialize_hex(&c0), serialize_hex(&bump)]])).unwrap();
    assert_eq!(r["package_msg"], "success", "{r}");
    let feerate =
        (v.graph.graph().cancels[0].fee.to_sat() + 20_000) as f64 / (c0.vsize() + bump.vsize()) as f64;
    outcomes.push(format!("C rung 0 + the tower's anchor child via submitpackage: accepted, package feerate {feerate:.1} sat/vB"));
    mine(&core.rpc, 1, &client.wallet.address());

    // 5. Panic while an unconfirmed U carries the attacker's CPFP: E must outbid both.
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    let u_anchor = OutPoint { txid: v.graph.unvault().compute_txid(), vout: 1 };
    let cpfp = anchor_child(&client, u_anchor, coin(), 5_000, 0);
    send(&core, &cpfp).unwrap();
    let rung =
        (0..v.graph.graph().emergencies.len()).find(|r| send(&core, v.graph.emergency(*r).unwrap()).is_ok());
    match rung {
        Some(r) => outcomes.push(format!(
            "E racing an unconfirmed U with a 5,000 sat CPFP: E rung {r} ({} sat) replaced U and its child",
            v.graph.graph().emergencies[r].fee.to_sat()
        )),
        None => {
            // The attacker outbid the whole E ladder: U confirms, and UE takes over.
            mine(&core.rpc, 1, &client.wallet.address());
            send(&core, v.graph.unvault_emergency(0).unwrap()).expect("UE after U confirms");
            outcomes.push("E racing an unconfirmed U with a 5,000 sat CPFP: no E rung outbids it; U confirmed, UE rung 0 relayed".into());
        }
    }
    mine(&core.rpc, 1, &client.wallet.address());

    // 6. The tower's own fee wallet: a child for the top-rung C, then its replacement at twice
    //    the package feerate (same anchor, same coin), then one at all that coin can pay, then
    //    one on a bigger coin replacing it through the same anchor; then a child for the
    //    top-rung E.
    let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[44; 32]).unwrap();
    let mut wallet = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 100, bump_sat_per_vb: 50 });
    let coins: BTreeMap<OutPoint, FeeCoin> = [2_000_000, 2_000_000, 4_000_000]
        .into_iter()
        .enumerate()
        .map(|(i, sat)| {
            let (op, out) =
                client.wallet.pay(&core.rpc, 160 + i as u32, wallet.script().clone(), Amount::from_sat(sat));
            (op, FeeCoin { value: out.value.to_sat(), height: Some(1), ..FeeCoin::default() })
        })
        .collect();
    wallet.restore(coins);
    let v = funded_vault(&core, &mut client, 5_000_000);
    send(&core, v.graph.unvault()).unwrap();
    mine(&core.rpc, 1, &client.wallet.address());
    let c = v.graph.graph().cancels.last().unwrap().clone();
    send(&core, &c.tx).unwrap();
    let first = wallet.bump(&c.tx, c.fee.to_sat(), 2 * c.feerate_sat_per_vb, None).unwrap();
    send(&core, &first.tx).expect("the tower's child of the top-rung C");
    let again = Some((first.coin, first.coin_value));
    let second = wallet.bump(&c.tx, c.fee.to_sat(), 2 * first.sat_per_vb, again).unwrap();
    send(&core, &second.tx).expect("its replacement at twice the feerate");
    assert!(in_mempool(&core, &second.tx) && !in_mempool(&core, &first.tx));
    let topped = wallet.bump(&c.tx, c.fee.to_sat(), 100 * second.sat_per_vb, again).unwrap();
    assert!(topped.ceiling, "{} sat/vB", topped.sat_per_vb);
    send(&core, &topped.tx).expect("the replacement at all its coin can pay");
    assert!(in_mempool(&core, &topped.tx) && !in_mempool(&core, &second.tx));
    let again = Some((topped.coin, topped.coin_value));
    let bigger = wallet.coin_for(&c.tx, c.fee.to_sat(), 2 * topped.sat_per_vb, again);
    assert_eq!(bigger.map(|(_, sat)| sat), Some(4_000_000), "the bigger coin, not the other small one");
    let moved = wallet.bump(&c.tx, c.fee.to_sat(), 2 * topped.sat_per_vb, bigger).unwrap();
    send(&core, &moved.tx).expect("a child on the bigger coin replaces the one at its ceiling");
    assert!(in_mempool(&core, &moved.tx) && !in_mempool(&core, &topped.tx));
    outcomes.push(format!(
        "the tower's child of C rung {} ({} sat/vB): package at {} sat/vB relayed; its replacement at {} sat/vB \
         replaced it, then one at {} sat/vB (all its coin pays); a child on a bigger coin at {} sat/vB replaced that",
        v.graph.graph().cancels.len() - 1,
        c.feerate_sat_per_vb,
        first.sat_per_vb,
        second.sat_per_vb,
        topped.sat_per_vb,
        moved.sat_per_vb
    ));
    mine(&core.rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(&core.rpc, &moved.tx.compute_txid()), 1);
    let v = funded_vault(&core, &mut client, 5_000_000);
    let e = v.graph.graph().emergencies.last().unwrap().clone();
    send(&core, &e.tx).unwrap();
    let child = wallet.bump(&e.tx, e.fee.to_sat(), 2 * e.feerate_sat_per_vb, None).unwrap();
    send(&core, &child.tx).expect("the tower's child of the top-rung E");
    outcomes.push(format!(
        "the tower's child of E rung {} ({} sat/vB): package at {} sat/vB relayed",
        v.graph.graph().emergencies.len() - 1,
        e.feerate_sat_per_vb,
        child.sat_per_vb
    ));
    println!("{}", outcomes.join("\n"));
}

/// A tower process following `core` over RPC and REST, with a fee wallet holding one
/// 2,000,000-sat coin (unconfirmed: paid from the coinbase at height `seed + 100`).
fn tower_with_fee_wallet(core: &Node, client: &mut Household, seed: u8) -> TowerProcess {
    let fee_secret = [seed; 32];
    let key = Keypair::from_seckey_slice(&Secp256k1::new(), &fee_secret).unwrap();
    let fee_script =
        FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 300, bump_sat_per_vb: 50 }).script().clone();
    let chain = format!("{}rest = true\n", core.tower_chain_config());
    let options = TowerOptions {
        chain: &chain,
        rest: "[fee_wallet]\nkey_file = \"{dir}/fee.key\"\nstress_sat_per_vb = 300\n",
        fee_key: Some(fee_secret),
        ..TowerOptions::default()
    };
    let tower =
        TowerProcess::configured(core, std::slice::from_ref(&client.policy_path), seed as usize, options);
    client.wallet.pay(&core.rpc, seed as u32 + 100, fee_script, Amount::from_sat(2_000_000));
    tower
}

/// A tower process following a real bitcoind (JSON-RPC and REST): an unapproved unvault is
/// cancelled, an approved one is left alone; with the blocks full (Core mines empty ones),
/// the cancel climbs its ladder and the tower's fee wallet pays through its anchor, then
/// replaces its child at twice the feerate, all accepted by Core's mempool.
#[test]
fn a_tower_on_a_real_bitcoind_cancels_and_bumps_through_cores_mempool() {
    let Some((core, mut client, _dir)) = setup("tower on core") else { return };
    let rpc = &core.rpc;
    let tower = tower_with_fee_wallet(&core, &mut client, 70);
    let stolen = client.create_vault(rpc, Amount::from_sat(5_000_000), VaultKind::Standard);
    let spent = client.create_vault(rpc, Amount::from_sat(5_000_000), VaultKind::Standard);
    for v in [&stolen, &spent] {
        client.register(&tower.api, v).unwrap();
        send(&core, &v.funding).unwrap();
    }
    let approved_spend = client.delayed_spend(&spent);
    client.approve(&tower.api, &spent, approved_spend.compute_txid()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    // It splits its coin (one per open vault): wait for the split to confirm. The wallet holds
    // exactly 2,000,000 sat before the split, nothing free while it is pending, and that less
    // the split's fee once it confirmed. (Waiting for more than 1,900,000 let the unvaults go
    // out before the split, on a busy machine: the blocks below are empty, the split never
    // confirmed, and no coin was free for the bump.)
    eventually("the tower's fee coins confirmed", || {
        mine(rpc, 1, &client.wallet.address());
        std::thread::sleep(std::time::Duration::from_millis(200));
        tower.metric("vigil_tower_fee_wallet_sat").filter(|sat| (1_900_000..2_000_000).contains(sat))
    });

    // Both unvaults confirm at once (an attacker's, and the owner's approved one).
    send(&core, stolen.graph.unvault()).unwrap();
    send(&core, spent.graph.unvault()).unwrap();
    let anchor = |tx: &Transaction| OutPoint { txid: tx.compute_txid(), vout: 1 };
    let c_top = stolen.graph.graph().cancels.last().unwrap().tx.clone();
    let child_of_top = || {
        rpc.mempool()
            .unwrap()
            .txids
            .into_iter()
            .filter_map(|t| rpc.transaction(&t).unwrap())
            .find(|tx| tx.input.iter().any(|i| i.previous_output == anchor(&c_top)))
    };
    // Each block acted on before the next: a busy machine must not let blocks run past the
    // tower (it bumps once per block it sees).
    let empty_block = || {
        rpc.call("generateblock", json!([client.wallet.address().to_string(), []])).unwrap();
        let height = u64::from(rpc.tip().unwrap().height);
        eventually("the tower at the new block", || {
            (tower.metric("vigil_tower_tip_height") == Some(height)).then_some(())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // The unvaults confirm in a real block; then the blocks are full of others' transactions.
    mine(rpc, 1, &client.wallet.address());
    let unvaulted_at = rpc.tip().unwrap().height;
    let top = stolen.graph.graph().cancels.len() as u32 - 1;
    let mut children: Vec<Transaction> = Vec::new();
    for _ in 0..top + 6 {
        empty_block();
        if let Some(child) = child_of_top() {
            if children.last().map(Transaction::compute_txid) != Some(child.compute_txid()) {
                children.push(child);
            }
        }
        if children.len() == 2 {
            break;
        }
    }
    assert_eq!(children.len(), 2, "a child of the top-rung cancel, then its replacement, in Core's mempool");
    assert_eq!(children[0].input[1].previous_output, children[1].input[1].previous_output, "one fee coin");
    assert!(children[1].output[0].value < children[0].output[0].value, "the replacement pays more");
    assert!(in_mempool(&core, &c_top), "the top rung waits in Core's mempool with its child");
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &c_top.compute_txid()), 1, "cancelled, before DELAY");
    let cancelled_after = rpc.tip().unwrap().height - unvaulted_at;
    assert!(cancelled_after < DELAY);
    assert_eq!(confirmations(rpc, &children[1].compute_txid()), 1);
    // The approved unvault was never touched; its spend goes through at DELAY.
    while rpc.tip().unwrap().height + 1 < unvaulted_at + DELAY {
        mine(rpc, 1, &client.wallet.address());
    }
    assert!(spend_of(rpc, spent.unvault_outpoint()).is_none(), "the approved unvault was left alone");
    send(&core, &approved_spend).unwrap();
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &approved_spend.compute_txid()), 1, "the approved spend confirmed");
    let fee_of = |child: &Transaction| {
        let coin = child.input[1].previous_output;
        let funding = rpc.transaction(&coin.txid).unwrap().unwrap();
        funding.output[coin.vout as usize].value.to_sat() + 240 - child.output[0].value.to_sat()
    };
    println!(
        "tower on Core: cancel rung {top} bumped by a child paying {} sat, replaced by one paying {} sat; confirmed {} blocks after the unvault",
        fee_of(&children[0]),
        fee_of(&children[1]),
        cancelled_after
    );
}

/// The race written down as a residual risk (ADR 0002): after DELAY, a spend other than the
/// approved one appears, paying more than the top cancel. The tower answers with the top
/// cancel and its fee wallet's child as one package, and Core's package RBF replaces it.
#[test]
fn after_delay_a_different_spend_is_outbid_by_the_top_cancel_and_its_child_as_a_package() {
    let Some((core, mut client, _dir)) = setup("tower race on core") else { return };
    let rpc = &core.rpc;
    let tower = tower_with_fee_wallet(&core, &mut client, 71);
    let v = client.create_vault(rpc, Amount::from_sat(5_000_000), VaultKind::Standard);
    client.register(&tower.api, &v).unwrap();
    send(&core, &v.funding).unwrap();
    let approved = client.delayed_spend(&v);
    client.approve(&tower.api, &v, approved.compute_txid()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    eventually("the tower saw its fee coin", || {
        tower.metric("vigil_tower_fee_wallet_sat").filter(|sat| *sat == 2_000_000)
    });
    send(&core, v.graph.unvault()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    let unvaulted_at = rpc.tip().unwrap().height;
    while rpc.tip().unwrap().height + 1 < unvaulted_at + DELAY {
        mine(rpc, 1, &client.wallet.address());
    }
    let top = v.graph.graph().cancels.last().unwrap().clone();
    let thief = client.delayed_spend_paying(&v, 2 * top.fee.to_sat());
    send(&core, &thief).expect("the other spend enters Core's mempool");
    let (alone, why) = accept(&core, &top.tx);
    assert!(!alone, "the top cancel alone cannot replace it");
    eventually("the tower's package replaced the other spend", || {
        (!in_mempool(&core, &thief) && in_mempool(&core, &top.tx)).then_some(())
    });
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &top.tx.compute_txid()), 1, "cancelled");
    println!(
        "after DELAY, a spend paying {} sat ({:.0} sat/vB): the top cancel alone is refused ({why}); \
         with the fee wallet's child as a package it replaced the spend and confirmed",
        2 * top.fee.to_sat(),
        (2 * top.fee.to_sat()) as f64 / thief.vsize() as f64
    );
}
