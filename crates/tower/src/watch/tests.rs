//! The watcher's decisions, block by block.

use super::*;
use crate::vault::{Action, ApprovalTerms, Vault};
use vigil_policy::bitcoin::block::{Header, Version};
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, Transaction};
use vigil_policy::bitcoin::{BlockHash, CompactTarget, TxMerkleNode};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};

pub(super) fn vault(index: u32, sat: u64) -> Vault {
    vault_of_kind(index, sat, VaultKind::Standard)
}

/// A guarded vault: its spend leaf needs the guardians' quorum too.
fn guarded_vault(index: u32, sat: u64) -> Vault {
    vault_of_kind(index, sat, VaultKind::Guarded)
}

fn vault_of_kind(index: u32, sat: u64, kind: VaultKind) -> Vault {
    let compiled = CompiledPolicy::new(
        Policy::from_toml(&ExamplePolicy { delay: 20, ..ExamplePolicy::default() }.to_toml()).unwrap(),
    )
    .unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let plan = compiled.plan(index, Amount::from_sat(sat), kind, o.public(), c.public()).unwrap();
    let v = OutPoint { txid: Txid::from_byte_array([index as u8 + 1; 32]), vout: 0 };
    let g = compiled.build_graph(&plan, v).unwrap();
    Vault::from_signed("p", 20, &g.finalize(&o.sign(&g).unwrap(), &c.sign(&g).unwrap()).unwrap())
}

pub(super) fn terms(expiry_height: u32) -> ApprovalTerms {
    ApprovalTerms {
        spend: Txid::all_zeros(),
        expiry_height,
        counter: 1,
        guardian_quorum: false,
        under_duress: false,
    }
}

#[test]
fn the_fee_wallet_alarms_when_short_and_bumps_a_cancel_stuck_at_the_top_rung() {
    use crate::fees::{FeePolicy, FeeWallet};
    use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[3; 32]).unwrap();
    let wallet = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 100, bump_sat_per_vb: 50 });
    let script = wallet.script().clone();
    w.set_fee_wallet(wallet);
    // Empty: the first block alarms, once.
    assert!(alarms(&w.on_block_connected(1, &block(vec![]))).contains(&"fee-wallet-low".to_string()));
    assert!(!alarms(&w.on_block_connected(2, &block(vec![]))).contains(&"fee-wallet-low".to_string()));
    // Funded with enough: no alarm; a later shortfall would alarm again.
    let mut funding = v.cancels[0].clone();
    funding.input[0].previous_output = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 };
    funding.output =
        vec![vigil_policy::bitcoin::TxOut { value: Amount::from_sat(1_000_000), script_pubkey: script }];
    w.on_block_connected(3, &block(vec![funding]));
    assert_eq!(w.fee_wallet().unwrap().balance(), 1_000_000);
    assert!(w.take_wallet_dirty());
    // With three more open vaults, the single coin is split so each bump has its own.
    let others: Vec<Vault> = (1..4).map(|i| vault(i, 5_000_000)).collect();
    for o in &others {
        w.add_vault(o.clone());
    }
    let split = split_in(&w.on_block_connected(4, &block(vec![]))).expect("a split");
    assert!(split.output.len() >= 4, "{} outputs", split.output.len());
    assert_eq!(split.input[0].witness.len(), 1, "signed");
    w.on_block_connected(5, &block(vec![split]));
    assert!(w.fee_wallet().unwrap().free_coins() >= 4);
    // An unapproved unvault: the ladder climbs to the top, then the anchor is bumped.
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    let top = v.cancel_top();
    let mut bumps = Vec::new();
    let mut ceiling_alarms = 0;
    for h in 11..40 {
        let actions = w.on_block_connected(h, &block(vec![]));
        ceiling_alarms += alarms(&actions).iter().filter(|k| *k == "bump-ceiling").count();
        for a in actions {
            if let Action::BroadcastPackage { what, parent, child, .. } = a {
                assert_eq!(parent, v.cancels[top], "the child rides with its parent");
                if what == "cancel anchor bump" {
                    bumps.push((h, child));
                }
            }
        }
    }
    let (h, child) = &bumps[0];
    assert_eq!(*h, 10 + top as u32 + 2, "two blocks after reaching the top rung");
    assert_eq!(child.input[0].previous_output, OutPoint { txid: v.cancels[top].compute_txid(), vout: 1 });
    assert!(child.input[1].witness.len() == 1, "the fee coin is signed");
    // Still unconfirmed: a replacement every two blocks, on the same anchor and coin, each
    // paying more, until the coin can pay no more; then one alarm and no more bumps.
    assert!(bumps.len() >= 2, "{} bumps", bumps.len());
    for pair in bumps.windows(2) {
        let ((h0, a), (h1, b)) = (&pair[0], &pair[1]);
        assert_eq!(*h1, h0 + BUMP_RETRY_BLOCKS);
        assert_eq!(
            a.input.iter().map(|i| i.previous_output).collect::<Vec<_>>(),
            b.input.iter().map(|i| i.previous_output).collect::<Vec<_>>()
        );
        assert!(b.output[0].value < a.output[0].value, "the replacement pays more: {a:?} {b:?}");
    }
    assert_eq!(ceiling_alarms, 1);
    assert!(w.vault(&v.outpoint).unwrap().state.bump.as_ref().unwrap().ceiling);
}

/// The first bump takes the smallest coin that pays the rate of the day; the replacement that
/// doubles it past what that coin can pay moves on to a bigger free coin (same anchor: it
/// replaces the child on the small coin), and the small coin is free again once that child
/// left the mempool.
#[test]
fn a_bump_at_its_coins_ceiling_moves_on_to_a_coin_that_pays_more() {
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    // The top rung pays 250 sat/vB: the first bump aims at 500, which the small coin pays.
    let (small, big) = (200_000, 2_000_000);
    w.set_fee_wallet(fee_wallet_with_coins(&v, 100, &[small, big]));
    let coin_of = |value: u64, w: &Watcher| {
        *w.fee_wallet().unwrap().coins().iter().find(|(_, c)| c.value == value).unwrap().0
    };
    let (small_coin, big_coin) = (coin_of(small, &w), coin_of(big, &w));
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    let top = v.cancel_top();
    let anchor = OutPoint { txid: v.cancels[top].compute_txid(), vout: 1 };
    let (mut bumps, mut ceiling_alarms) = (Vec::new(), 0);
    for h in 11..60 {
        let actions = w.on_block_connected(h, &block(vec![]));
        ceiling_alarms += alarms(&actions).iter().filter(|k| *k == "bump-ceiling").count();
        for a in actions {
            if let Action::BroadcastPackage { child, .. } = a {
                // The tower sees its child in the mempool; the one it replaced is gone.
                w.on_mempool_tx(&child);
                w.on_mempool_snapshot(&HashSet::from([v.cancels[top].compute_txid(), child.compute_txid()]));
                bumps.push(child);
            }
        }
    }
    let coins: Vec<OutPoint> = bumps.iter().map(|b| b.input[1].previous_output).collect();
    let moved = coins.iter().position(|c| *c == big_coin).expect("a bump on the big coin");
    assert_eq!((moved, coins[0]), (1, small_coin), "{coins:?}");
    assert!(coins[moved..].iter().all(|c| *c == big_coin), "{coins:?}");
    assert!(bumps.iter().all(|b| b.input[0].previous_output == anchor), "every child spends the anchor");
    // Each child pays more than the one it replaces, the move included.
    let fee = |b: &Transaction| {
        let coin = if b.input[1].previous_output == small_coin { small } else { big };
        vigil_policy::ANCHOR_SAT + coin - b.output[0].value.to_sat()
    };
    for pair in bumps.windows(2) {
        assert!(fee(&pair[1]) > fee(&pair[0]), "{} then {}", fee(&pair[0]), fee(&pair[1]));
    }
    // One alarm, when the big coin paid all it can.
    assert_eq!(ceiling_alarms, 1);
    let wallet = w.fee_wallet().unwrap();
    assert!(wallet.coins()[&small_coin].spent_by.is_none(), "the small coin is free again");
    assert!(wallet.coins()[&big_coin].spent_by.is_some());
}

#[test]
fn every_open_vault_gets_a_fee_coin_of_its_own_so_thirty_stuck_cancels_are_bumped_at_once() {
    let vaults: Vec<Vault> = (0..30).map(|i| vault(i, 5_000_000)).collect();
    let mut w = watcher(&vaults.iter().collect::<Vec<_>>(), 100_000_000);
    w.set_fee_wallet(fee_wallet(&vaults[0], 100, 2_000_000));
    // One split, confirmed: a coin for each of the thirty.
    let split = split_in(&w.on_block_connected(2, &block(vec![]))).expect("a split");
    w.on_block_connected(3, &block(vec![split]));
    assert!(w.fee_wallet().unwrap().free_coins() >= 30, "{} coins", w.fee_wallet().unwrap().free_coins());
    // Thirty unapproved unvaults at once (a compromised co-signer): every cancel reaches the
    // top rung and is bumped in the same block, none left without a coin.
    w.on_block_connected(10, &block(vaults.iter().map(|v| v.unvault.clone()).collect()));
    let mut bumped = HashSet::new();
    for h in 11..40 {
        let actions = w.on_block_connected(h, &block(vec![]));
        // A vault whose bump holds its coin needs no other: no shortfall, no new split.
        for quiet in ["fee-wallet-empty", "fee-wallet-low"] {
            assert!(!alarms(&actions).contains(&quiet.to_string()), "{quiet} at block {h}");
        }
        assert!(split_in(&actions).is_none(), "block {h}");
        for a in actions {
            if let Action::BroadcastPackage { vault, what, .. } = a {
                if what == "cancel anchor bump" {
                    bumped.insert(vault);
                }
            }
        }
    }
    assert_eq!(bumped.len(), 30);
}

#[test]
fn the_fee_reserve_is_coins_that_each_pay_a_stress_bump_and_a_split_under_way_is_no_shortfall() {
    let vaults: Vec<Vault> = (0..4).map(|i| vault(i, 5_000_000)).collect();
    let low = |actions: &[Action]| alarms(actions).contains(&"fee-wallet-low".to_string());
    // One coin worth every vault's bump: split, and no alarm while the split confirms.
    let mut w = watcher(&vaults.iter().collect::<Vec<_>>(), 100_000_000);
    w.set_fee_wallet(fee_wallet(&vaults[0], 100, 2_000_000));
    let actions = w.on_block_connected(2, &block(vec![]));
    let split = split_in(&actions).expect("a split");
    assert!(!low(&actions), "a split under way is no shortfall");
    assert!(!low(&w.on_block_connected(3, &block(vec![]))), "nor a block later, still unconfirmed");
    assert!(!low(&w.on_block_connected(4, &block(vec![split]))));
    // Many coins worth every vault's bump together, none of them one bump alone (a bump
    // spends one coin): short, alarmed.
    let mut w = watcher(&vaults.iter().collect::<Vec<_>>(), 100_000_000);
    let each = fee_wallet(&vaults[0], 100, 0).reserve_per_vault();
    w.set_fee_wallet(fee_wallet_with_coins(&vaults[0], 100, &[each / 2; 40]));
    assert!(low(&w.on_block_connected(2, &block(vec![]))), "forty half coins hold no reserve");
}

#[test]
fn a_bump_holding_a_coin_smaller_than_a_stress_bump_leaves_the_wallet_short() {
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    let each = fee_wallet(&v, 100, 0).reserve_per_vault();
    w.set_fee_wallet(fee_wallet(&v, 100, each / 2));
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    let bumped_at = (11..40).find(|h| {
        w.on_block_connected(*h, &block(vec![]))
            .iter()
            .any(|a| matches!(a, Action::BroadcastPackage { what, .. } if what == "cancel anchor bump"))
    });
    let next = bumped_at.expect("the coin pays what it can") + 1;
    w.on_block_connected(next, &block(vec![]));
    assert!(w.fee_wallet_low(), "its replacements stop below the stress feerate");
}

#[test]
fn an_emergency_stuck_at_the_top_rung_is_bumped_through_its_anchor() {
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.set_fee_wallet(fee_wallet(&v, 100, 100_000));
    let coin = *w.fee_wallet().unwrap().coins().keys().next().unwrap();
    w.panic("p");
    let top = v.emergency_top();
    let bump = (2..20)
        .find_map(|h| {
            w.on_block_connected(h, &block(vec![])).into_iter().find_map(|a| match a {
                Action::BroadcastPackage { what, child, .. } if what == "emergency anchor bump" => {
                    Some((h, child))
                }
                _ => None,
            })
        })
        .expect("an emergency bump");
    assert_eq!(bump.0, 1 + top as u32 + BUMP_RETRY_BLOCKS, "two blocks after reaching the top rung");
    assert_eq!(
        bump.1.input[0].previous_output,
        OutPoint { txid: v.emergencies[top].compute_txid(), vout: 1 }
    );
    assert_eq!(bump.1.input[1].previous_output, coin);
    // The package leaves the mempool (evicted): its coin stays this vault's, which bumps again
    // with it; no other vault's bump may take it meanwhile.
    for _ in 0..4 {
        w.set_tip(w.tip() + 1);
        w.on_mempool_snapshot(&std::collections::HashSet::new());
    }
    assert_eq!(w.fee_wallet().unwrap().free_coins(), 0, "still reserved for this vault's bumps");
}

#[test]
fn an_expired_approval_does_not_cover_the_unvault() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.add_approval(v.unvault.compute_txid(), terms(5));
    assert_eq!(broadcasts(&w.on_block_connected(6, &block(vec![v.unvault.clone()]))), vec!["cancel rung 0"]);
}

pub(super) fn block(txs: Vec<Transaction>) -> Block {
    let header = Header {
        version: Version::TWO,
        prev_blockhash: BlockHash::all_zeros(),
        merkle_root: TxMerkleNode::all_zeros(),
        time: 0,
        bits: CompactTarget::from_consensus(0x207fffff),
        nonce: 0,
    };
    Block { header, txdata: txs }
}

pub(super) fn broadcasts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| if let Action::Broadcast { what, .. } = a { Some(what.clone()) } else { None })
        .collect()
}

/// The fee wallet's split among `actions`, if any.
fn split_in(actions: &[Action]) -> Option<Transaction> {
    actions.iter().find_map(|a| match a {
        Action::Broadcast { what, tx, .. } if what == "fee wallet split" => Some(tx.clone()),
        _ => None,
    })
}

pub(super) fn alarms(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(
            |a| if let Action::Alarm { kind, .. } = a { Some(kind.as_str().to_owned()) } else { None },
        )
        .collect()
}

pub(super) fn watcher(vaults: &[&Vault], limit: u64) -> Watcher {
    let mut w = Watcher::new();
    w.set_limits("p", PolicyLimits { velocity_limit_sat: limit, velocity_window_blocks: 100 });
    for v in vaults {
        w.add_vault((*v).clone());
    }
    w
}

/// `w` as a restart rebuilds it from the store: its tip, its `vaults` with their states,
/// then `approvals` (in that order, as the daemon loads them), with what the approvals did.
fn restarted(
    w: &Watcher,
    vaults: &[&Vault],
    limit: u64,
    approvals: &[(vigil_policy::bitcoin::Txid, ApprovalTerms)],
) -> (Watcher, Vec<Action>) {
    let mut r = watcher(&[], limit);
    r.set_tip(w.tip());
    for v in vaults {
        r.add_vault(w.vault(&v.outpoint).unwrap().clone());
    }
    let actions = approvals.iter().flat_map(|(txid, terms)| r.add_approval(*txid, *terms)).collect();
    (r, actions)
}

#[test]
fn unapproved_unvault_is_cancelled_and_escalated_each_block_until_buried() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    let a = w.on_mempool_tx(&v.unvault);
    assert_eq!(broadcasts(&a), vec!["cancel rung 0"]);
    assert_eq!(alarms(&a), vec!["unvault-cancelled"]);
    assert_eq!(broadcasts(&w.on_block_connected(10, &block(vec![v.unvault.clone()]))), vec!["cancel rung 1"]);
    assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 2"]);
    let c = v.cancels[2].clone();
    assert!(broadcasts(&w.on_block_connected(12, &block(vec![c]))).is_empty());
    for h in 13..18 {
        w.on_block_connected(h, &block(vec![]));
        assert!(!w.vault(&v.outpoint).unwrap().state.done);
    }
    w.on_block_connected(18, &block(vec![]));
    assert!(w.vault(&v.outpoint).unwrap().state.done, "buried six deep");
}

/// The store, as far as the watcher can tell: graphs by vault, or a failure.
struct Shelf(HashMap<OutPoint, Vault>, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Graphs for Shelf {
    fn graph(&mut self, vault: &OutPoint) -> Result<Vault, StoreError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.get(vault).cloned().ok_or(StoreError::MissingVault(*vault))
    }
}

#[test]
fn idle_vaults_keep_their_graphs_in_the_store_and_get_them_back_when_touched() {
    let (v, other) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut w = watcher(&[], 100_000_000);
    let shelf = [(v.outpoint, v.clone())].into_iter().collect();
    w.set_graphs(Box::new(Shelf(shelf, reads.clone())));
    w.add_vault(v.clone());
    w.add_vault(other.clone());
    let idle = w.vault(&v.outpoint).unwrap();
    assert!(idle.cancels.is_empty() && idle.emergencies.is_empty(), "paged out");
    assert_eq!(w.graphs_in_memory(), 0);
    assert_eq!(idle.unvault, v.unvault, "U stays: it is what the index watches for");
    // Unrelated blocks read nothing back.
    w.on_block_connected(9, &block(vec![]));
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The unvault: read back, cancelled with the right transaction, kept while active.
    let actions = w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(w.graphs_in_memory(), 1);
    assert!(actions.contains(&Action::Broadcast {
        vault: v.outpoint,
        what: "cancel rung 0".into(),
        tx: v.cancels[0].clone()
    }));
    assert_eq!(w.take_dirty()[0].cancels, v.cancels, "stored whole");
    assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 1"]);
    // Buried: paged out again once its last state is taken for the store.
    w.on_block_connected(12, &block(vec![v.cancels[1].clone()]));
    for h in 13..=18 {
        w.on_block_connected(h, &block(vec![]));
    }
    assert!(w.vault(&v.outpoint).unwrap().state.done);
    let last = w.take_dirty();
    assert!(last.iter().all(|x| !x.cancels.is_empty()), "never stored without its transactions");
    assert!(w.vault(&v.outpoint).unwrap().cancels.is_empty());
    assert_eq!(w.graphs_in_memory(), 0);
    // A reorg that undoes the cancel reads it back before changing it.
    w.on_block_disconnected(18);
    w.on_block_disconnected(12);
    assert!(!w.vault(&v.outpoint).unwrap().cancels.is_empty());
    assert!(w.take_graph_error().is_none());
    // A graph the store cannot give: no decision, an error for the tower to stop on.
    let actions = w.on_mempool_tx(&other.unvault);
    assert!(broadcasts(&actions).is_empty());
    assert!(matches!(w.take_graph_error(), Some(StoreError::MissingVault(v)) if v == other.outpoint));
}

#[test]
fn approved_unvault_is_left_alone_unless_over_the_velocity_budget() {
    let (a, b) = (vault(0, 3_000_000), vault(1, 3_000_000));
    let mut w = watcher(&[&a, &b], 5_000_000);
    w.add_approval(a.unvault.compute_txid(), terms(1_000));
    w.add_approval(b.unvault.compute_txid(), terms(1_000));
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))).is_empty());
    // The second approved unvault would release 6 M sat in the window: cancelled anyway.
    let actions = w.on_block_connected(6, &block(vec![b.unvault.clone()]));
    assert_eq!(broadcasts(&actions), vec!["cancel rung 0"]);
    assert!(actions
        .iter()
        .any(|x| matches!(x, Action::Alarm { message, .. } if message.contains("velocity"))));
}

#[test]
fn a_foreign_spend_of_a_vault_alarms_the_guardians_and_sweeps_nothing_by_itself() {
    let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let mut w = watcher(&[&a, &b], 100_000_000);
    // Some transaction spending V that is neither U nor E (a registrar could make one of a
    // decoy vault: it must not be able to force a sweep of every real vault).
    let mut thief = a.emergencies[0].clone();
    thief.output[0].value = Amount::from_sat(1);
    let actions = w.on_mempool_tx(&thief);
    assert_eq!(alarms(&actions), vec!["foreign-vault-spend"]);
    assert!(broadcasts(&actions).is_empty(), "{actions:?}");
    assert!(w.on_mempool_tx(&thief).is_empty(), "alarmed once");
    // Still watched while the spend is only in the mempool: the guardians' panic tries E on
    // it too (it may yet replace the thief's), and sweeps the others.
    assert!(!w.vault(&a.outpoint).unwrap().state.done);
    let sweep = w.panic("p");
    for v in [&a, &b] {
        assert!(sweep.iter().any(|x| matches!(x, Action::Broadcast { vault, .. } if *vault == v.outpoint)));
    }
    // Confirmed: nothing is left to protect.
    let confirmed = w.on_block_connected(5, &block(vec![thief]));
    assert!(!alarms(&confirmed).contains(&"foreign-vault-spend".to_string()), "alarmed once");
    assert!(w.vault(&a.outpoint).unwrap().state.done, "nothing left to protect");
    let next = w.on_block_connected(6, &block(vec![]));
    assert!(
        !next.iter().any(|x| matches!(x, Action::Broadcast { vault, .. } if *vault == a.outpoint)),
        "{next:?}"
    );
    // A reorganisation takes the spend out of the chain: the vault is watched again, and the
    // panic's E for it goes out again.
    w.on_block_disconnected(6);
    w.on_block_disconnected(5);
    assert!(!w.vault(&a.outpoint).unwrap().state.done, "V may be unspent again");
    let next = w.on_block_connected(5, &block(vec![]));
    assert!(
        next.iter().any(|x| matches!(x, Action::Broadcast { vault, .. } if *vault == a.outpoint)),
        "{next:?}"
    );
}

#[test]
fn velocity_bounds_the_cosigner_alone_and_a_guardian_approved_unvault_is_not_counted() {
    // Two vaults above the velocity limit (guarded), one standard within it.
    let (g1, g2, s) = (guarded_vault(0, 9_000_000), guarded_vault(1, 9_000_000), vault(2, 3_000_000));
    let mut w = watcher(&[&g1, &g2, &s], 5_000_000);
    let quorum = |expiry| ApprovalTerms { guardian_quorum: true, ..terms(expiry) };
    w.add_approval(g1.unvault.compute_txid(), quorum(1_000));
    w.add_approval(g2.unvault.compute_txid(), quorum(1_000));
    w.add_approval(s.unvault.compute_txid(), terms(1_000));
    // The guarded vaults' unvaults, each far above the budget, are left alone...
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![g1.unvault.clone()]))).is_empty());
    assert!(broadcasts(&w.on_block_connected(6, &block(vec![g2.unvault.clone()]))).is_empty());
    // ...and do not eat the budget of what the co-signer approves alone.
    assert!(broadcasts(&w.on_block_connected(7, &block(vec![s.unvault.clone()]))).is_empty());
    // A co-signer-only approval of a vault above the budget is still cancelled.
    let big = guarded_vault(3, 9_000_000);
    w.add_vault(big.clone());
    w.add_approval(big.unvault.compute_txid(), terms(1_000));
    assert_eq!(
        broadcasts(&w.on_block_connected(8, &block(vec![big.unvault.clone()]))),
        vec!["cancel rung 0"]
    );
}

/// A standard vault's spend leaf needs only the owner and the co-signer: a compromised
/// co-signer could sign another spend than the one the guardians approved. So its unvault
/// counts against velocity, approved by the guardians' quorum or not.
#[test]
fn a_standard_vault_counts_for_velocity_even_with_the_guardians_approval() {
    let (a, b) = (vault(0, 3_000_000), vault(1, 3_000_000));
    let mut w = watcher(&[&a, &b], 5_000_000);
    let quorum = ApprovalTerms { guardian_quorum: true, ..terms(1_000) };
    w.add_approval(a.unvault.compute_txid(), quorum);
    w.add_approval(b.unvault.compute_txid(), quorum);
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))).is_empty());
    assert_eq!(w.vault(&a.outpoint).unwrap().state.counted_for_velocity, Some(true));
    // 3 M counted: 3 M more are over the 5 M budget, guardians or not.
    assert_eq!(broadcasts(&w.on_block_connected(6, &block(vec![b.unvault.clone()]))), vec!["cancel rung 0"]);

    // A standard vault above a budget lowered since it was made leaves with the quorum's
    // approval alone in its window, and not beside anything else counted.
    let (big, other) = (vault(3, 3_000_000), vault(4, 3_000_000));
    let mut w = watcher(&[&big, &other], 2_000_000);
    w.add_approval(big.unvault.compute_txid(), quorum);
    w.add_approval(other.unvault.compute_txid(), quorum);
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![big.unvault.clone()]))).is_empty());
    assert_eq!(
        broadcasts(&w.on_block_connected(6, &block(vec![other.unvault.clone()]))),
        vec!["cancel rung 0"]
    );
    let (lone, cosigner_alone) = (vault(5, 3_000_000), vault(6, 3_000_000));
    let mut w = watcher(&[&lone, &cosigner_alone], 2_000_000);
    w.add_approval(lone.unvault.compute_txid(), quorum);
    w.add_approval(cosigner_alone.unvault.compute_txid(), terms(1_000));
    assert_eq!(
        broadcasts(&w.on_block_connected(5, &block(vec![cosigner_alone.unvault.clone()]))),
        vec!["cancel rung 0"],
        "the co-signer alone never releases more than the budget"
    );
    w.on_block_connected(6, &block(vec![lone.unvault.clone()]));
    assert_eq!(
        w.vault(&lone.outpoint).unwrap().state.cancel_rung,
        Some(0),
        "the cancelled unvault still counts in the window"
    );
}

#[test]
fn an_unvault_is_judged_when_first_seen_and_counted_for_velocity_across_a_restart() {
    let (g, s1, s2) = (guarded_vault(0, 9_000_000), vault(1, 3_000_000), vault(2, 3_000_000));
    let mut w = watcher(&[&g, &s1, &s2], 5_000_000);
    w.set_tip(9);
    let quorum = ApprovalTerms { guardian_quorum: true, ..terms(10) };
    w.add_approval(g.unvault.compute_txid(), quorum);
    // Seen in the mempool within its approval, confirmed after the approval expired: still
    // the guardians' release, which the co-signer's budget does not pay for.
    assert!(broadcasts(&w.on_mempool_tx(&g.unvault)).is_empty());
    assert!(broadcasts(&w.on_block_connected(12, &block(vec![g.unvault.clone()]))).is_empty());
    w.add_approval(s1.unvault.compute_txid(), terms(1_000));
    w.add_approval(s2.unvault.compute_txid(), terms(1_000));
    assert!(broadcasts(&w.on_mempool_tx(&s1.unvault)).is_empty(), "within the budget");
    // A restart while s1's unvault is unconfirmed: it still counts, so s2's is over budget.
    let approvals = [(g.unvault.compute_txid(), quorum), (s2.unvault.compute_txid(), terms(1_000))];
    let (mut restarted, _) = restarted(&w, &[&g, &s1, &s2], 5_000_000, &approvals);
    assert_eq!(broadcasts(&restarted.on_mempool_tx(&s2.unvault)), vec!["cancel rung 0"]);
}

/// An unvault nobody approved (sent from a backup while the co-signer was down) is cancelled:
/// once the cancel confirms it released nothing, and the co-signer, which counts only what it
/// approved, never counted it. It must not get the next spend the co-signer approves within
/// the budget cancelled, nor after a restart; a reorganisation undoing the cancel counts it
/// again.
#[test]
fn an_unvault_whose_cancel_confirmed_stops_counting_for_velocity() {
    let (a, b) = (vault(0, 3_000_000), vault(1, 3_000_000));
    let mut w = watcher(&[&a, &b], 5_000_000);
    assert_eq!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))), vec!["cancel rung 0"]);
    w.add_approval(b.unvault.compute_txid(), terms(1_000));
    // While A's cancel is unconfirmed A counts: B's 3 M more would be over the 5 M budget.
    let approval = [(b.unvault.compute_txid(), terms(1_000))];
    let (mut unconfirmed, _) = restarted(&w, &[&a, &b], 5_000_000, &approval);
    assert_eq!(broadcasts(&unconfirmed.on_mempool_tx(&b.unvault)), vec!["cancel rung 0"]);
    w.on_block_connected(6, &block(vec![a.cancels[0].clone()]));
    let (mut after_restart, _) = restarted(&w, &[&a, &b], 5_000_000, &approval);
    let (mut reorged, _) = restarted(&w, &[&a, &b], 5_000_000, &approval);
    assert!(broadcasts(&w.on_block_connected(7, &block(vec![b.unvault.clone()]))).is_empty());
    assert!(broadcasts(&after_restart.on_mempool_tx(&b.unvault)).is_empty(), "after a restart too");
    reorged.on_block_disconnected(6);
    assert_eq!(broadcasts(&reorged.on_mempool_tx(&b.unvault)), vec!["cancel rung 0"]);
}

#[test]
fn an_unvault_seen_after_its_quorum_approval_expired_still_counts_after_a_restart() {
    let (g, s) = (vault(0, 4_000_000), vault(1, 3_000_000));
    let mut w = watcher(&[&g, &s], 5_000_000);
    w.set_tip(20);
    let expired = ApprovalTerms { guardian_quorum: true, ..terms(10) };
    w.add_approval(g.unvault.compute_txid(), expired);
    assert_eq!(broadcasts(&w.on_mempool_tx(&g.unvault)), vec!["cancel rung 0"], "not approved any more");
    let approvals = [(g.unvault.compute_txid(), expired), (s.unvault.compute_txid(), terms(1_000))];
    let (mut restarted, _) = restarted(&w, &[&g, &s], 5_000_000, &approvals);
    // g's 4 M counted at first sight still do: s's 3 M more are over the 5 M budget.
    assert_eq!(broadcasts(&restarted.on_mempool_tx(&s.unvault)), vec!["cancel rung 0"]);
}

/// A spend of U's output other than C's, to an attacker (it pays one sat less to U's script).
fn rival_of(v: &Vault) -> Transaction {
    let mut rival = v.cancels[0].clone();
    rival.output[0].value -= Amount::from_sat(1);
    rival
}

#[test]
fn the_approved_spend_of_an_unvault_the_tower_is_cancelling_is_fought_as_a_rival() {
    // The co-signer's approval, over the velocity budget: cancelled at once; the cancel has
    // not confirmed by DELAY when the approved spend appears (the co-signer signed it).
    let a = vault(0, 3_000_000);
    let mut w = watcher(&[&a], 1_000_000);
    let spend = rival_of(&a);
    w.add_approval(a.unvault.compute_txid(), ApprovalTerms { spend: spend.compute_txid(), ..terms(1_000) });
    assert_eq!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))), vec!["cancel rung 0"]);
    let actions = w.on_mempool_tx(&spend);
    assert!(alarms(&actions).contains(&"unapproved-spend".to_string()), "{actions:?}");
    let top = format!("cancel rung {}", a.cancel_top());
    assert!(broadcasts(&actions).contains(&top), "outbid at the top rung: {actions:?}");
    // Confirmed all the same: the race is lost, and said so; the vault is not "spent" as approved.
    let lost = w.on_block_connected(6, &block(vec![spend.clone()]));
    assert!(alarms(&lost).contains(&"unapproved-spend".to_string()), "{lost:?}");
    assert_eq!(w.vault(&a.outpoint).unwrap().state.spent_height, None);
}

#[test]
fn a_quorum_approval_replaced_by_the_cosigner_alone_counts_its_unvault_then() {
    let (g, s) = (guarded_vault(0, 3_000_000), vault(1, 3_000_000));
    let mut w = watcher(&[&g, &s], 5_000_000);
    let quorum = ApprovalTerms { guardian_quorum: true, ..terms(1_000) };
    w.add_approval(g.unvault.compute_txid(), quorum);
    w.add_approval(s.unvault.compute_txid(), terms(1_000));
    // g's unvault is the guardians' (not counted): s's fits the 5 M budget beside it.
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![g.unvault.clone()]))).is_empty());
    assert!(broadcasts(&w.on_block_connected(6, &block(vec![s.unvault.clone()]))).is_empty());
    // The co-signer alone replaces g's approval (another spend): g now counts, 6 M in the
    // window, and it is cancelled.
    let alone = ApprovalTerms { counter: 2, spend: rival_of(&g).compute_txid(), ..terms(1_000) };
    let approvals = [(g.unvault.compute_txid(), alone), (s.unvault.compute_txid(), terms(1_000))];
    // A restart that finds the replacement committed and nothing done about it yet does it.
    let (_, after_restart) = restarted(&w, &[&g, &s], 5_000_000, &approvals);
    assert_eq!(broadcasts(&after_restart), vec!["cancel rung 0"]);
    let actions = w.add_approval(g.unvault.compute_txid(), alone);
    assert_eq!(broadcasts(&actions), vec!["cancel rung 0"]);
    assert!(actions
        .iter()
        .any(|x| matches!(x, Action::Alarm { message, .. } if message.contains("replaced"))));
    // Done once: the same approval again changes nothing.
    assert!(w.add_approval(g.unvault.compute_txid(), alone).is_empty());
    // Another quorum approval, replaced by the co-signer alone within the budget, only counts.
    let q = guarded_vault(2, 1_000_000);
    w.add_vault(q.clone());
    w.add_approval(q.unvault.compute_txid(), quorum);
    w.on_block_connected(7, &block(vec![q.unvault.clone()]));
    assert_eq!(w.vault(&q.outpoint).unwrap().state.cancel_rung, None);
    let mut roomy = restarted(&w, &[&q], 100_000_000, &[]).0;
    assert!(roomy
        .add_approval(q.unvault.compute_txid(), ApprovalTerms { counter: 2, ..terms(1_000) })
        .is_empty());
    assert_eq!(roomy.vault(&q.outpoint).unwrap().state.counted_for_velocity, Some(true));
}

#[test]
fn panic_sends_e_for_unspent_vaults_and_ue_for_unvaulted_ones() {
    let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let mut w = watcher(&[&a, &b], 100_000_000);
    w.add_approval(b.unvault.compute_txid(), terms(1_000));
    w.on_block_connected(3, &block(vec![b.unvault.clone()]));
    let actions = w.panic("p");
    let mut what: Vec<(OutPoint, String)> = actions
        .iter()
        .filter_map(|x| {
            if let Action::Broadcast { vault, what, .. } = x {
                Some((*vault, what.clone()))
            } else {
                None
            }
        })
        .collect();
    what.sort();
    let mut expected = vec![
        (a.outpoint, "emergency rung 0".to_string()),
        (b.outpoint, "unvault-emergency rung 0".to_string()),
    ];
    expected.sort();
    assert_eq!(what, expected);
    // E falls back to UE once U shows up.
    let after = w.on_mempool_tx(&a.unvault);
    assert_eq!(broadcasts(&after), vec!["unvault-emergency rung 0"]);
}

#[test]
fn a_sweep_under_way_keeps_climbing_its_ladder_after_a_restart() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.on_block_connected(3, &block(vec![]));
    assert_eq!(broadcasts(&w.panic("p")), vec!["emergency rung 0"]);
    // A restart before the next block: the sweep is still this tower's to push through (a
    // second panic would not restart it: the vault's sweep is under way).
    let (mut r, _) = restarted(&w, &[&v], 100_000_000, &[]);
    assert!(broadcasts(&r.panic("p")).is_empty());
    assert_eq!(broadcasts(&w.on_block_connected(4, &block(vec![]))), vec!["emergency rung 1"]);
    assert_eq!(broadcasts(&r.on_block_connected(4, &block(vec![]))), vec!["emergency rung 1"]);
    // And it is done once E is buried, as it is for a tower that kept running.
    let e = v.emergencies[1].clone();
    for w in [&mut w, &mut r] {
        w.on_block_connected(5, &block(vec![e.clone()]));
        for h in 6..=11 {
            w.on_block_connected(h, &block(vec![]));
        }
        assert!(w.vault(&v.outpoint).unwrap().state.done);
    }
}

#[test]
fn an_emergency_no_panic_ordered_is_alarmed_once_and_explained_when_the_panic_arrives_late() {
    let (a, b, c) = (vault(0, 1_000_000), vault(1, 1_000_000), vault(2, 1_000_000));
    let mut w = watcher(&[&a, &b, &c], 100_000_000);
    // E of `a` from somewhere else: alarmed at first sight, not again when it confirms.
    assert_eq!(alarms(&w.on_mempool_tx(&a.emergencies[0])), vec!["unordered-emergency"]);
    assert!(alarms(&w.on_block_connected(5, &block(vec![a.emergencies[0].clone()]))).is_empty());
    assert_eq!(w.vault(&a.outpoint).unwrap().state.emergency_height, Some(5));
    // U then UE of `b`, sent by someone holding its graph: the UE is alarmed too.
    w.on_mempool_tx(&b.unvault);
    assert_eq!(alarms(&w.on_mempool_tx(&b.unvault_emergencies[0])), vec!["unordered-emergency"]);
    // The panic reaches this tower after it saw those sweeps (another tower got it first):
    // it says they were the panic's.
    let panic = w.panic("p");
    assert_eq!(alarms(&panic), vec!["panic", "panic"]);
    assert!(format!("{panic:?}").contains("alarmed earlier as unordered were this panic's"));
    assert!(!w.vault(&a.outpoint).unwrap().state.unordered_emergency);
    // The sweep this tower sends for the panic is not alarmed as unordered.
    assert!(alarms(&w.on_block_connected(6, &block(vec![c.emergencies[0].clone()]))).is_empty());
}

#[test]
fn a_reorg_forgets_confirmations_and_the_next_block_rebroadcasts() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    w.on_block_connected(11, &block(vec![v.cancels[1].clone()]));
    assert_eq!(w.vault(&v.outpoint).unwrap().state.cancel_height, Some(11));
    w.on_block_disconnected(11);
    w.on_block_disconnected(10);
    let s = &w.vault(&v.outpoint).unwrap().state;
    assert_eq!((s.unvault_height, s.cancel_height), (None, None));
    assert!(!broadcasts(&w.on_block_connected(10, &block(vec![]))).is_empty(), "cancel re-broadcast");
}

#[test]
fn the_deadline_alarm_fires_before_the_spend_leaf_opens() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.on_block_connected(100, &block(vec![v.unvault.clone()]));
    let mut fired_at = None;
    for h in 101..120 {
        if alarms(&w.on_block_connected(h, &block(vec![]))).contains(&"deadline".to_string()) {
            fired_at.get_or_insert(h);
        }
    }
    assert_eq!(fired_at, Some(100 + 20 - BURY_MARGIN));
}

/// A fee wallet sized at `stress` sat/vB (bumps at 50) holding one confirmed coin of `sat`,
/// paid by a transaction shaped after `v`'s cancel.
pub(super) fn fee_wallet(v: &Vault, stress: u64, sat: u64) -> crate::fees::FeeWallet {
    fee_wallet_with_coins(v, stress, &[sat])
}

/// A fee wallet holding one confirmed coin of each of `sats`.
fn fee_wallet_with_coins(v: &Vault, stress: u64, sats: &[u64]) -> crate::fees::FeeWallet {
    use crate::fees::{FeePolicy, FeeWallet};
    use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
    let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[3; 32]).unwrap();
    let mut wallet = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: stress, bump_sat_per_vb: 50 });
    let mut funding = v.cancels[0].clone();
    funding.input[0].previous_output = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 };
    funding.output = sats
        .iter()
        .map(|sat| vigil_policy::bitcoin::TxOut {
            value: Amount::from_sat(*sat),
            script_pubkey: wallet.script().clone(),
        })
        .collect();
    wallet.observe(&funding, Some(1));
    wallet
}

/// A watcher with a fee wallet holding one confirmed 1,000,000-sat coin.
fn watcher_with_fee_wallet(v: &Vault) -> Watcher {
    let mut w = watcher(&[v], 100_000_000);
    w.set_fee_wallet(fee_wallet(v, 300, 1_000_000));
    w
}

/// A watcher with a fee wallet, `v`'s approved unvault confirmed at 10 and its spend leaf open
/// (DELAY 20): a rival spend of U's output is now a race.
fn spend_leaf_open(v: &Vault) -> Watcher {
    let mut w = watcher_with_fee_wallet(v);
    w.add_approval(v.unvault.compute_txid(), terms(1_000));
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    for h in 11..=31 {
        w.on_block_connected(h, &block(vec![]));
    }
    w
}

/// After DELAY, a rival spend of an approved unvault, with an input of its own besides U's
/// output: the rate its fee pays.
fn rival(v: &Vault, fee: u64) -> Transaction {
    let mut rival = v.cancels[0].clone();
    let mut extra = rival.input[0].clone();
    extra.previous_output = OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 1 };
    rival.input.push(extra);
    // It brings 100,000 sat of its own and pays `fee` out of the total.
    rival.output.truncate(1);
    rival.output[0].value = v.unvault.output[0].value + Amount::from_sat(100_000) - Amount::from_sat(fee);
    rival
}

#[test]
fn a_rival_spend_bringing_inputs_of_its_own_is_outbid_at_its_real_feerate() {
    for (told, expect_at_least) in [(true, None), (false, Some(600))] {
        let v = vault(0, 5_000_000);
        let mut w = spend_leaf_open(&v);
        let r = rival(&v, 60_000);
        let rate = 60_000 / r.vsize() as u64;
        // Counting U's output alone, its outputs exceed its input: the old estimate was 0.
        assert!(r.output[0].value > v.unvault.output[0].value);
        let fee = told.then_some(60_000);
        let actions = w.on_mempool_tx_with_fee(&r, fee);
        let (parent, child) = actions
            .iter()
            .find_map(|a| match a {
                Action::BroadcastPackage { parent, child, .. } => Some((parent.clone(), child.clone())),
                _ => None,
            })
            .expect("the top cancel goes out with a child");
        let parent_fee =
            v.unvault.output[0].value.to_sat() - parent.output.iter().map(|o| o.value.to_sat()).sum::<u64>();
        let child_fee = 1_000_000 + vigil_policy::ANCHOR_SAT - child.output[0].value.to_sat();
        let package_rate = (parent_fee + child_fee) / (parent.vsize() + child.vsize()) as u64;
        let floor = expect_at_least.unwrap_or(2 * rate);
        assert!(
            package_rate >= floor - 1,
            "told {told}: package at {package_rate} sat/vB, rival at {rate}, floor {floor}"
        );
    }
}

#[test]
fn a_rival_claiming_an_absurd_fee_gets_no_bump_above_the_vaults_worth() {
    let v = vault(0, 50_000);
    let mut w = spend_leaf_open(&v);
    // A backend says the rival pays 1 BTC in fees.
    let actions = w.on_mempool_tx_with_fee(&rival(&v, 60_000), Some(100_000_000));
    let child = actions
        .iter()
        .find_map(|a| match a {
            Action::BroadcastPackage { child, .. } => Some(child.clone()),
            _ => None,
        })
        .expect("the top cancel goes out with a child");
    let worth = v.unvault.output[0].value.to_sat();
    let child_fee =
        |child: &Transaction| 1_000_000 + vigil_policy::ANCHOR_SAT - child.output[0].value.to_sat();
    assert!(child_fee(&child) <= worth, "{} sat to save a vault worth less", child_fee(&child));
    // Nor do the replacements that double it while the cancel stays unconfirmed.
    for h in 32..60 {
        for a in w.on_block_connected(h, &block(vec![])) {
            if let Action::BroadcastPackage { child, .. } = a {
                assert!(child_fee(&child) <= worth, "a replacement pays {} sat", child_fee(&child));
            }
        }
    }
}

#[test]
fn the_market_feerate_a_backend_reports_is_capped_at_the_stress_feerate() {
    let v = vault(0, 5_000_000);
    let mut w = watcher_with_fee_wallet(&v);
    w.set_market_feerate(1_000_000);
    assert_eq!(w.fee_wallet().unwrap().split_rate(), 300);
}

#[test]
fn a_rival_spend_seen_again_after_a_restart_is_not_alarmed_again_until_it_confirms() {
    let v = vault(0, 5_000_000);
    let mut w = spend_leaf_open(&v);
    let r = rival(&v, 60_000);
    assert_eq!(alarms(&w.on_mempool_tx_with_fee(&r, Some(60_000))), vec!["unapproved-spend"]);
    // Restarted, the tower sees the mempool anew.
    let (mut w, _) = restarted(&w, &[&v], 100_000_000, &[(v.unvault.compute_txid(), terms(1_000))]);
    let again = w.on_mempool_tx_with_fee(&r, Some(60_000));
    assert!(alarms(&again).is_empty(), "{again:?}");
    // Its confirmation is news: the race is lost.
    let confirmed = alarms(&w.on_block_connected(32, &block(vec![r.clone()])));
    assert!(confirmed.contains(&"unapproved-spend".to_string()), "{confirmed:?}");
}
