//! The embedded chain behaves like a node whose only judge is the kernel.

mod common;

use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, Sequence, Transaction};
use common::{spend, TestKey};
use vigil_regtest::{ChainError, ChainEvent, RegtestChain, SubmitError, TxStatus};

#[test]
fn genesis_is_rust_bitcoins_regtest_genesis() {
    let chain = RegtestChain::new_temporary().unwrap();
    assert_eq!(chain.height(), 0);
    assert_eq!(chain.tip(), bitcoin::constants::genesis_block(bitcoin::Network::Regtest).block_hash());
}

#[test]
fn submit_then_mine_confirms_and_answers_queries() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(1);
    let funded = chain.fund(&key.script(), Amount::from_sat(100_000)).unwrap();
    assert_eq!(chain.tx_status(&funded.txid), Some(TxStatus::Pending));
    assert_eq!(chain.confirmations(&funded.txid), Some(0));
    chain.mine(1).unwrap();
    let height = chain.height();
    assert_eq!(chain.tx_status(&funded.txid), Some(TxStatus::Confirmed { height, confirmations: 1 }));
    let coin = chain.coin(&funded).unwrap();
    assert_eq!(coin.txout.value, Amount::from_sat(100_000));
    assert_eq!(coin.height, height);

    let tx = spend(&key, funded, &coin.txout, Amount::from_sat(1_000), Sequence::MAX, 2);
    let txid = chain.submit(&tx).unwrap();
    assert_eq!(chain.spend_of(&funded).unwrap().height, None);
    chain.mine(2).unwrap();
    assert_eq!(chain.spend_of(&funded).unwrap().txid, txid);
    assert_eq!(chain.spend_of(&funded).unwrap().height, Some(height + 1));
    assert_eq!(chain.confirmations(&txid), Some(2));
    assert!(chain.coin(&funded).is_none());
    assert_eq!(chain.block_at(height + 1).unwrap().txdata[1].compute_txid(), txid);
}

#[test]
fn a_block_the_kernel_rejects_changes_nothing_and_says_why() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(2);
    let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(50_000)).unwrap();
    let txout = chain.coin(&funded).unwrap().txout;
    // A spend whose signature is made by another key: the pool refuses it...
    let wrong = TestKey::new(3);
    let mut bad = spend(&key, funded, &txout, Amount::from_sat(1_000), Sequence::MAX, 2);
    bad.input[0].witness =
        spend(&wrong, funded, &txout, Amount::from_sat(1_000), Sequence::MAX, 2).input[0].witness.clone();
    assert!(matches!(chain.submit(&bad), Err(SubmitError::Script { input: 0, .. })));
    // ...and a block carrying it is rejected by the kernel, with the kernel's reason.
    let (tip, height) = (chain.tip(), chain.height());
    let err = chain.block().with_transactions([bad]).mine().unwrap_err();
    match err {
        ChainError::BlockRejected { reason, .. } => {
            assert!(reason.contains("Invalid Schnorr signature") || reason.contains("script"), "{reason}")
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!((chain.tip(), chain.height()), (tip, height));
    assert!(chain.coin(&funded).is_some());
}

#[test]
fn premature_coinbase_spend_is_rejected_in_a_block() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(4);
    chain.block().coinbase_to(key.script()).mine().unwrap();
    let coinbase = chain.block_at(1).unwrap().txdata[0].clone();
    let outpoint = OutPoint { txid: coinbase.compute_txid(), vout: 0 };
    chain.mine(10).unwrap();
    let tx = spend(&key, outpoint, &coinbase.output[0], Amount::from_sat(10_000), Sequence::MAX, 2);
    assert!(matches!(chain.submit(&tx), Err(SubmitError::ImmatureCoinbase { .. })));
    let err = chain.block().with_transactions([tx.clone()]).mine().unwrap_err();
    assert!(err.to_string().contains("premature-spend-of-coinbase"), "{err}");
    chain.mine_to_height(100).unwrap();
    // Mined at height 101, the coinbase of height 1 has 100 confirmations: accepted.
    chain.submit(&tx).unwrap();
    chain.mine(1).unwrap();
    assert!(chain.confirmations(&tx.compute_txid()).is_some());
}

#[test]
fn relative_timelock_refused_one_block_early_accepted_on_time() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(5);
    let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(50_000)).unwrap();
    let confirmed_at = chain.height();
    let txout = chain.coin(&funded).unwrap().txout;
    let tx = spend(&key, funded, &txout, Amount::from_sat(1_000), Sequence::from_height(10), 2);
    // First valid in block confirmed_at + 10.
    chain.mine_to_height(confirmed_at + 8).unwrap();
    match chain.submit(&tx) {
        Err(SubmitError::SequenceLock { first_valid_height, next_height, .. }) => {
            assert_eq!((first_valid_height, next_height), (confirmed_at + 10, confirmed_at + 9))
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = chain.block().with_transactions([tx.clone()]).mine().unwrap_err();
    assert!(
        err.to_string().contains("non-BIP68-final") || err.to_string().contains("bad-txns-nonfinal"),
        "{err}"
    );
    assert_eq!(chain.height(), confirmed_at + 8, "the rejected block changed nothing");
    chain.mine(1).unwrap();
    chain.submit(&tx).unwrap();
    chain.mine(1).unwrap();
    assert_eq!(chain.height(), confirmed_at + 10);
    assert_eq!(chain.confirmations(&tx.compute_txid()), Some(1));
}

#[test]
fn absolute_locktime_is_enforced() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(6);
    let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(50_000)).unwrap();
    let txout = chain.coin(&funded).unwrap().txout;
    let mut tx: Transaction =
        spend(&key, funded, &txout, Amount::from_sat(1_000), Sequence::ENABLE_RBF_NO_LOCKTIME, 2);
    let lock = chain.height() + 5;
    tx.lock_time = bitcoin::absolute::LockTime::from_height(lock).unwrap();
    let tx = key.resign(tx, &txout);
    assert!(matches!(chain.submit(&tx), Err(SubmitError::NonFinal { .. })));
    chain.mine_to_height(lock).unwrap();
    chain.submit(&tx).unwrap();
}

#[test]
fn heavier_branch_reorgs_and_subscribers_see_it_in_order() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(7);
    let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(70_000)).unwrap();
    let txout = chain.coin(&funded).unwrap().txout;
    let fork = chain.tip();
    let fork_height = chain.height();
    let events = chain.subscribe();

    let tx = spend(&key, funded, &txout, Amount::from_sat(1_000), Sequence::MAX, 2);
    let txid = chain.submit(&tx).unwrap();
    let a1 = chain.mine(1).unwrap()[0];
    let a2 = chain.mine(1).unwrap()[0];
    assert_eq!(chain.confirmations(&txid), Some(2));

    // A competing branch: equal length is stored, not active; longer wins.
    let b1 = chain.block().on(fork).with_pending(false).mine().unwrap();
    assert!(!b1.active);
    let b2 = chain.block().on(b1.hash).mine().unwrap();
    assert!(!b2.active);
    let b3 = chain.block().on(b2.hash).mine().unwrap();
    assert!(b3.active);
    assert_eq!(chain.tip(), b3.hash);
    assert_eq!(chain.height(), fork_height + 3);
    // The spend was disconnected and went back to the pending pool.
    assert_eq!(chain.tx_status(&txid), Some(TxStatus::Pending));
    assert!(chain.coin(&funded).is_some());

    let seen: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            ChainEvent::BlockConnected { height, block } => Some(format!("+{height}:{}", block.block_hash())),
            ChainEvent::BlockDisconnected { height, block } => {
                Some(format!("-{height}:{}", block.block_hash()))
            }
            ChainEvent::TransactionAccepted { .. } => None,
        })
        .collect();
    let expected = vec![
        format!("+{}:{a1}", fork_height + 1),
        format!("+{}:{a2}", fork_height + 2),
        format!("-{}:{a2}", fork_height + 2),
        format!("-{}:{a1}", fork_height + 1),
        format!("+{}:{}", fork_height + 1, b1.hash),
        format!("+{}:{}", fork_height + 2, b2.hash),
        format!("+{}:{}", fork_height + 3, b3.hash),
    ];
    assert_eq!(seen, expected);
    chain.mine(1).unwrap();
    assert_eq!(chain.confirmations(&txid), Some(1));
}

#[test]
fn a_persistent_chain_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (tip, height, funded) = {
        let mut chain = RegtestChain::open(dir.path()).unwrap();
        let key = TestKey::new(8);
        let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(12_345)).unwrap();
        (chain.tip(), chain.height(), funded)
    };
    let chain = RegtestChain::open(dir.path()).unwrap();
    assert_eq!((chain.tip(), chain.height()), (tip, height));
    assert_eq!(chain.coin(&funded).unwrap().txout.value, Amount::from_sat(12_345));
}

#[test]
fn chosen_timestamps_are_used_and_judged_by_the_kernel() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    chain.mine(11).unwrap();
    let t = chain.block_at(11).unwrap().header.time + 3_600;
    let mined = chain.block().time(t).mine().unwrap();
    assert_eq!(chain.block_by_hash(&mined.hash).unwrap().header.time, t);
    // Not after the median of the last 11 blocks: the kernel refuses it.
    let mtp = chain.median_time_past();
    let err = chain.block().time(mtp).mine().unwrap_err();
    assert!(err.to_string().contains("time-too-old"), "{err}");
    assert_eq!(chain.tip(), mined.hash);
    // More than two hours in the future: refused too.
    let future = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        + 3 * 3600) as u32;
    let err = chain.block().time(future).mine().unwrap_err();
    assert!(err.to_string().contains("time-too-new"), "{err}");
}

#[test]
fn a_block_on_an_unknown_parent_or_with_unknown_inputs_is_refused_before_the_kernel() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let unknown = bitcoin::BlockHash::from_byte_array([9; 32]);
    assert!(matches!(chain.block().on(unknown).mine(), Err(ChainError::UnknownBlock(_))));
    let key = TestKey::new(12);
    let ghost = OutPoint { txid: bitcoin::Txid::from_byte_array([8; 32]), vout: 0 };
    let prev = bitcoin::TxOut { value: Amount::from_sat(10_000), script_pubkey: key.script() };
    let tx = spend(&key, ghost, &prev, Amount::from_sat(500), Sequence::MAX, 2);
    assert!(matches!(chain.submit(&tx), Err(SubmitError::MissingInput { input: 0, .. })));
    assert!(matches!(chain.block().with_transactions([tx]).mine(), Err(ChainError::UnknownInput(_))));
    assert_eq!(chain.height(), 0);
}

#[test]
fn a_reorg_of_a_block_with_a_parent_and_its_child_leaves_no_phantom_coin() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(13);
    let funded = chain.fund_confirmed(&key.script(), Amount::from_sat(80_000)).unwrap();
    let prev = chain.coin(&funded).unwrap().txout;
    let parent = spend(&key, funded, &prev, Amount::from_sat(1_000), Sequence::MAX, 2);
    let child = spend(
        &key,
        OutPoint { txid: parent.compute_txid(), vout: 0 },
        &parent.output[0],
        Amount::from_sat(1_000),
        Sequence::MAX,
        2,
    );
    let fork = chain.tip();
    chain.submit(&parent).unwrap();
    chain.submit(&child).unwrap();
    chain.mine(1).unwrap();
    // A heavier branch without them.
    let b1 = chain.block().on(fork).with_pending(false).mine().unwrap();
    chain.block().on(b1.hash).with_pending(false).mine().unwrap();
    // The parent's output spent inside the disconnected block is not a coin now.
    assert!(chain.coin(&OutPoint { txid: parent.compute_txid(), vout: 0 }).is_none());
    assert_eq!(chain.tx_status(&child.compute_txid()), Some(TxStatus::Pending));
    chain.mine(1).unwrap();
    assert_eq!(chain.confirmations(&child.compute_txid()), Some(1));
}
