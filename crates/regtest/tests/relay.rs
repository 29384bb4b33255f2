//! Each relay-policy check of the pending pool refuses a transaction that breaks it, with
//! Bitcoin Core's reject reason, while consensus alone would accept it.

mod common;

use bitcoin::transaction::Version;
use bitcoin::{absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use common::{spend, TestKey};
use vigil_regtest::{RegtestChain, RelayError, SubmitError};

fn funded(chain: &mut RegtestChain, key: &TestKey, sat: u64) -> (OutPoint, TxOut) {
    let op = chain.fund_confirmed(&key.script(), Amount::from_sat(sat)).unwrap();
    (op, chain.coin(&op).unwrap().txout)
}

fn tx(version: i32, input: OutPoint, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: Version(version),
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: input,
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..Default::default()
        }],
        output: outputs,
    }
}

fn relay_err(chain: &RegtestChain, tx: &Transaction) -> RelayError {
    match chain.test_accept(tx) {
        Err(SubmitError::Relay(e)) => e,
        other => panic!("expected a relay refusal, got {other:?}"),
    }
}

/// Consensus accepts it: a block carrying it connects.
fn block_accepts(chain: &mut RegtestChain, tx: &Transaction) {
    chain.block().with_pending(false).with_transactions([tx.clone()]).mine().unwrap();
}

#[test]
fn each_relay_check_refuses_what_breaks_it() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(9);
    let out = |sat: u64| TxOut { value: Amount::from_sat(sat), script_pubkey: key.script() };

    // Version.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let t = key.resign(tx(4, op, vec![out(99_000)]), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::Version(4)));
    assert!(relay_err(&chain, &t).to_string().starts_with("version"));
    block_accepts(&mut chain, &t);

    // Non-standard output script.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let weird =
        TxOut { value: Amount::from_sat(99_000), script_pubkey: ScriptBuf::from_bytes(vec![0x61; 30]) };
    let t = key.resign(tx(2, op, vec![weird]), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::OutputScript { output: 0 }));
    block_accepts(&mut chain, &t);

    // Dust.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let t = key.resign(tx(2, op, vec![out(98_000), out(329)]), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::Dust { output: 1, value: 329, threshold: 330 }));
    block_accepts(&mut chain, &t);

    // Below the minimum relay feerate (zero fee, no dust to make it ephemeral).
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let t = key.resign(tx(2, op, vec![out(100_000)]), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::FeeBelowMinRelay { fee: 0, .. }));
    block_accepts(&mut chain, &t);

    // Too heavy: more than 400,000 WU.
    let (op, prev) = funded(&mut chain, &key, 100_000_000);
    let many: Vec<TxOut> = (0..2_400).map(|_| out(40_000)).collect();
    let t = key.resign(tx(2, op, many), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::TooHeavy { .. }));

    // Too small without witness (< 65 bytes): one OP_RETURN output.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let tiny = TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(vec![0x6a]) };
    let t = key.resign(tx(2, op, vec![tiny]), &prev);
    assert!(matches!(relay_err(&chain, &t), RelayError::TooSmall { .. }));
    block_accepts(&mut chain, &t);

    // Non-standard witness: a taproot annex.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let mut t = key.resign(tx(2, op, vec![out(99_000)]), &prev);
    let sig = t.input[0].witness.to_vec()[0].clone();
    t.input[0].witness = Witness::from_slice(&[sig, vec![0x50, 0x01]]);
    assert!(matches!(relay_err(&chain, &t), RelayError::Witness { input: 0, .. }));

    // A scriptSig that is not push-only.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let mut t = key.resign(tx(2, op, vec![out(99_000)]), &prev);
    t.input[0].script_sig = ScriptBuf::from_bytes(vec![0x61]); // OP_NOP
    assert!(matches!(relay_err(&chain, &t), RelayError::ScriptSig { input: 0 }));
}

#[test]
fn truc_topology_rules_are_enforced() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(10);
    let out = |sat: u64| TxOut { value: Amount::from_sat(sat), script_pubkey: key.script() };
    let (op, prev) = funded(&mut chain, &key, 1_000_000);

    // A v3 parent with two outputs, unconfirmed.
    let parent = key.resign(tx(3, op, vec![out(400_000), out(599_000)]), &prev);
    let pid = chain.submit(&parent).unwrap();
    let child_of = |vout: u32, version: i32, fee: u64| {
        let prevout = parent.output[vout as usize].clone();
        key.resign(
            tx(version, OutPoint { txid: pid, vout }, vec![out(prevout.value.to_sat() - fee)]),
            &prevout,
        )
    };
    // A non-v3 child of a v3 parent.
    assert!(relay_err(&chain, &child_of(0, 2, 1_000)).to_string().contains("non-version=3 tx"));
    // A v3 child: fine.
    let first = child_of(0, 3, 1_000);
    chain.submit(&first).unwrap();
    // A grandchild: too many ancestors.
    let grandchild = key.resign(
        tx(
            3,
            OutPoint { txid: first.compute_txid(), vout: 0 },
            vec![out(first.output[0].value.to_sat() - 1_000)],
        ),
        &first.output[0],
    );
    assert!(relay_err(&chain, &grandchild).to_string().contains("too many ancestors"));
    // A second child of the same parent: sibling eviction only if it pays for the first.
    let cheap_sibling = child_of(1, 3, 1_000);
    assert!(matches!(relay_err(&chain, &cheap_sibling), RelayError::Replacement(_)));
    let rich_sibling = child_of(1, 3, 5_000);
    let sid = chain.submit(&rich_sibling).unwrap();
    assert!(chain.tx_status(&first.compute_txid()).is_none(), "the first child was evicted");
    assert!(chain.tx_status(&sid).is_some());
    // A child over 1,000 vB is refused.
    let big: Vec<TxOut> = (0..30).map(|_| out(10_000)).collect();
    let prevout = parent.output[0].clone();
    let t = key.resign(tx(3, OutPoint { txid: pid, vout: 0 }, big), &prevout);
    assert!(relay_err(&chain, &t).to_string().contains("child tx"));

    // A v3 transaction may not spend an unconfirmed non-v3 one.
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let v2 = key.resign(tx(2, op, vec![out(99_000)]), &prev);
    let v2id = chain.submit(&v2).unwrap();
    let t = key.resign(tx(3, OutPoint { txid: v2id, vout: 0 }, vec![out(98_000)]), &v2.output[0]);
    assert!(relay_err(&chain, &t).to_string().contains("cannot spend from non-version=3"));

    // A v3 transaction over 10,000 vB.
    let (op, prev) = funded(&mut chain, &key, 100_000_000);
    let many: Vec<TxOut> = (0..300).map(|_| out(100_000)).collect();
    let t = key.resign(tx(3, op, many), &prev);
    assert!(relay_err(&chain, &t).to_string().contains("too big"));
}

#[test]
fn replacement_must_pay_for_what_it_evicts() {
    let mut chain = RegtestChain::new_temporary().unwrap();
    let key = TestKey::new(11);
    let (op, prev) = funded(&mut chain, &key, 100_000);
    let low = spend(&key, op, &prev, Amount::from_sat(500), Sequence::ENABLE_RBF_NO_LOCKTIME, 2);
    chain.submit(&low).unwrap();
    let same = spend(&key, op, &prev, Amount::from_sat(510), Sequence::ENABLE_RBF_NO_LOCKTIME, 2);
    assert!(matches!(relay_err(&chain, &same), RelayError::Replacement(_)));
    let high = spend(&key, op, &prev, Amount::from_sat(2_000), Sequence::ENABLE_RBF_NO_LOCKTIME, 2);
    chain.submit(&high).unwrap();
    assert!(chain.tx_status(&low.compute_txid()).is_none());
    chain.mine(1).unwrap();
    assert_eq!(chain.confirmations(&high.compute_txid()), Some(1));
}
