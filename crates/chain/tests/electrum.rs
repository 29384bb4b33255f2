//! The Electrum backend against a real electrs indexing a real bitcoind (both from the cache
//! `scripts/test.sh` fills; skipped, saying so, when `ELECTRS_EXE` or `BITCOIND_EXE` is unset):
//! following filtered blocks through a reorg, the mempool by script, and after the server
//! restarts.

use serde_json::json;
use vigil_chain::bitcoin::key::{Keypair, Secp256k1};
use vigil_chain::bitcoin::{Address, Amount, Network, Transaction};
use vigil_chain::{BlockEvent, ChainBackend, ElectrumBackend, Follower};
use vigil_testenv::process::bitcoind_with_electrs;
use vigil_testenv::wallet::{mine, Wallet};
use vigil_testenv::{eventually, summary};

#[test]
fn the_electrum_backend_follows_filtered_blocks_through_a_reorg_and_the_mempool_by_script() {
    let Some((core, electrs)) = bitcoind_with_electrs() else { return };
    let rpc = &core.rpc;
    let wallet = Wallet::new();
    let watched = Keypair::from_seckey_slice(&Secp256k1::new(), &[7; 32]).unwrap();
    let script = Address::p2tr(&Secp256k1::new(), watched.x_only_public_key().0, None, Network::Regtest)
        .script_pubkey();
    let backend = ElectrumBackend::new(&electrs.address);
    backend.watch_scripts(std::slice::from_ref(&script));
    let mut follower = Follower::new(Vec::new(), 100);
    let events = follower.poll(&backend).unwrap();
    assert_eq!(events.len(), 102, "genesis and 101 blocks");
    assert!(events.iter().all(|e| e.block().is_some_and(|b| b.txdata.is_empty())), "nothing watched yet");

    // A payment to the watched script: in the mempool by script, then in its block, alone
    // (the coinbase and the rest are filtered out) and proven.
    let (outpoint, _) = wallet.pay(rpc, 1, script.clone(), Amount::from_sat(100_000));
    let paid = outpoint.txid;
    let seen = eventually("the payment in the mempool", || {
        let txs = follower.poll_mempool(&backend).unwrap();
        (!txs.is_empty()).then_some(txs)
    });
    assert_eq!(seen.iter().map(Transaction::compute_txid).collect::<Vec<_>>(), vec![paid]);
    let mined = mine(rpc, 1, &wallet.address()).remove(0);
    let block = eventually("the block", || match follower.poll(&backend).unwrap().as_slice() {
        [e @ BlockEvent::Connected { height: 102, hash, .. }] => {
            assert_eq!(hash.to_string(), mined);
            e.block()
        }
        [] => None,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(block.txdata.iter().map(Transaction::compute_txid).collect::<Vec<_>>(), vec![paid]);

    // A reorg: the block is invalidated, the payment goes back to the mempool and is mined in
    // the replacement branch. The follower unwinds, then reports the payment in its new block.
    rpc.call("invalidateblock", json!([mined])).unwrap();
    // Paid elsewhere, or the first block would be the invalidated one again, byte for byte.
    let other = Keypair::from_seckey_slice(&Secp256k1::new(), &[8; 32]).unwrap();
    let elsewhere = Address::p2tr(&Secp256k1::new(), other.x_only_public_key().0, None, Network::Regtest);
    let branch = mine(rpc, 2, &elsewhere);
    // Both blocks indexed, so one poll sees the whole branch.
    vigil_testenv::process::wait_indexed(&electrs, &core);
    let events = eventually("the reorg", || {
        let events = follower.poll(&backend).unwrap();
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(
        summary(&events),
        vec![format!("-102:{mined}"), format!("+102:{}", branch[0]), format!("+103:{}", branch[1])]
    );
    assert_eq!(events[1].block().unwrap().txdata[0].compute_txid(), paid);
    assert!(events[2].block().unwrap().txdata.is_empty());

    // A spend of the watched output is in the script's history too.
    let spend = {
        let prev = block.txdata[0].output[0].clone();
        let signer = Wallet { key: watched };
        signer.spend(outpoint, &prev, 1_000)
    };
    let txid = backend.broadcast(&spend).unwrap();
    let seen = eventually("the spend in the mempool", || {
        let txs = follower.poll_mempool(&backend).unwrap();
        (!txs.is_empty()).then_some(txs)
    });
    assert_eq!(seen[0].compute_txid(), txid);
}

#[test]
fn the_electrum_backend_reconnects_and_resubscribes_after_the_server_restarts() {
    let Some((core, mut electrs)) = bitcoind_with_electrs() else { return };
    let rpc = &core.rpc;
    let wallet = Wallet::new();
    let watched = Keypair::from_seckey_slice(&Secp256k1::new(), &[9; 32]).unwrap();
    let script = Address::p2tr(&Secp256k1::new(), watched.x_only_public_key().0, None, Network::Regtest)
        .script_pubkey();
    let backend = ElectrumBackend::new(&electrs.address);
    backend.watch_scripts(std::slice::from_ref(&script));
    let mut follower = Follower::new(Vec::new(), 100);
    follower.poll(&backend).unwrap();

    electrs.kill();
    assert!(matches!(follower.poll(&backend), Err(vigil_chain::FollowError::Backend(_))));
    // While it is down, the watched script is paid and the payment confirmed.
    let (outpoint, _) = wallet.pay(rpc, 1, script.clone(), Amount::from_sat(100_000));
    let mined = mine(rpc, 1, &wallet.address()).remove(0);
    electrs.start();
    vigil_testenv::process::wait_indexed(&electrs, &core);
    // Back: a new connection, the subscription renewed, and the block with the payment.
    let block =
        eventually("the block after the restart", || match follower.poll(&backend).ok()?.as_slice() {
            [e @ BlockEvent::Connected { height: 102, hash, .. }] => {
                assert_eq!(hash.to_string(), mined);
                e.block()
            }
            [] => None,
            other => panic!("unexpected {other:?}"),
        });
    assert_eq!(block.txdata.iter().map(Transaction::compute_txid).collect::<Vec<_>>(), vec![outpoint.txid]);
}

#[test]
fn a_script_watched_after_a_poll_counts_in_the_next_block_read() {
    let Some((core, electrs)) = bitcoind_with_electrs() else { return };
    let rpc = &core.rpc;
    let wallet = Wallet::new();
    let secp = Secp256k1::new();
    let [first, later] = [10u8, 11].map(|seed| {
        let key = Keypair::from_seckey_slice(&secp, &[seed; 32]).unwrap();
        Address::p2tr(&secp, key.x_only_public_key().0, None, Network::Regtest).script_pubkey()
    });
    let paid: Vec<_> = [(1, &first), (2, &later)]
        .map(|(c, s)| wallet.pay(rpc, c, s.clone(), Amount::from_sat(50_000)).0.txid)
        .into();
    mine(rpc, 1, &wallet.address());
    vigil_testenv::process::wait_indexed(&electrs, &core);
    let backend = ElectrumBackend::new(&electrs.address);
    backend.watch_scripts(std::slice::from_ref(&first));
    let tip = backend.tip().unwrap();
    // A wallet scan finds a coin and moves its window on: the next block it reads must show
    // the new scripts' transactions, without waiting for another poll of the tip.
    backend.watch_scripts(std::slice::from_ref(&later));
    let block = backend.block(&tip.hash).unwrap();
    let mut seen: Vec<_> = block.txdata.iter().map(Transaction::compute_txid).collect();
    seen.sort();
    let mut paid = paid;
    paid.sort();
    assert_eq!(seen, paid, "both payments, the later-watched one included");
}
