//! The bitcoind backend and the follower against `vigil node` and a real bitcoind, each its
//! own process: blocks through reorgs, the mempool, ZMQ doorbells.

use std::time::Duration;

use serde_json::json;
use vigil_chain::bitcoin::hashes::Hash;
use vigil_chain::bitcoin::key::{Keypair, Secp256k1};
use vigil_chain::bitcoin::{Address, Network};
use vigil_chain::{BlockEvent, ChainBackend, Follower};
use vigil_testenv::process::{bitcoind, vigil_node};
use vigil_testenv::wallet::{mature_coin, mine, Wallet};

#[test]
fn the_bitcoind_backend_follows_vigil_node_through_reorgs_and_the_mempool() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let wallet = Wallet::new();
    let mut follower = Follower::new(Vec::new(), 100);
    mine(rpc, 101, &wallet.address());
    let events = follower.poll(rpc).unwrap();
    assert_eq!(events.len(), 102, "genesis and 101 blocks");
    for (i, e) in events.iter().enumerate() {
        assert!(matches!(e, BlockEvent::Connected { height, .. } if *height == i as u32));
    }

    // A transaction through the backend: seen in the mempool, then in a block.
    let (outpoint, prev) = mature_coin(rpc);
    let tx = wallet.spend(outpoint, &prev, 1_000);
    let txid = rpc.broadcast(&tx).unwrap();
    assert_eq!(rpc.broadcast(&tx).unwrap(), txid, "re-broadcast answers the txid, like Core");
    let seen = follower.poll_mempool(rpc).unwrap();
    assert_eq!(seen.iter().map(|t| t.compute_txid()).collect::<Vec<_>>(), vec![txid]);
    assert!(follower.poll_mempool(rpc).unwrap().is_empty(), "nothing new");
    mine(rpc, 1, &wallet.address());
    match follower.poll(rpc).unwrap().as_slice() {
        [e @ BlockEvent::Connected { height: 102, .. }] => {
            let block = e.block().unwrap();
            assert!(block.txdata.iter().any(|t| t.compute_txid() == txid))
        }
        other => panic!("unexpected {other:?}"),
    }

    // A competing branch from height 100, heavier: the follower unwinds, then follows it.
    let fork = rpc.block_hash(100).unwrap().unwrap();
    let mut parent = fork.to_string();
    let mut branch = Vec::new();
    for _ in 0..3 {
        let mined = rpc
            .call("vigil_generateblock", json!([parent, wallet.address().to_string(), [], false]))
            .unwrap();
        parent = mined["hash"].as_str().unwrap().to_owned();
        branch.push(parent.clone());
    }
    let events = follower.poll(rpc).unwrap();
    let summary = vigil_testenv::summary(&events);
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert!(summary[0].starts_with("-102:") && summary[1].starts_with("-101:"), "{summary:?}");
    assert_eq!(
        &summary[2..],
        &[format!("+101:{}", branch[0]), format!("+102:{}", branch[1]), format!("+103:{}", branch[2])]
    );
    // The reorged-out spend is back in the mempool.
    let pool = rpc.mempool().unwrap();
    assert_eq!(pool.txids, vec![txid]);

    // Long-poll: waitfornewblock returns when a block arrives.
    let waiting = rpc.clone();
    let waiter = std::thread::spawn(move || waiting.wait_for_new_block(Duration::from_secs(20)).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let new = mine(rpc, 1, &wallet.address());
    let got = waiter.join().unwrap();
    assert_eq!(got.hash.to_string(), new[0]);
    assert_eq!(got.height, 104);
}

#[test]
fn a_reorg_deeper_than_the_follower_remembers_moves_nothing_and_says_so() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let wallet = Wallet::new();
    let mut follower = Follower::new(Vec::new(), 3);
    mine(rpc, 10, &wallet.address());
    follower.poll(rpc).unwrap();
    let before = follower.recent().to_vec();
    assert_eq!(before.len(), 3);
    // Five blocks replaced, six mined on height 5: deeper than the three remembered.
    let mut parent = rpc.block_hash(5).unwrap().unwrap().to_string();
    for _ in 0..6 {
        let mined = rpc
            .call("vigil_generateblock", json!([parent, wallet.address().to_string(), [], false]))
            .unwrap();
        parent = mined["hash"].as_str().unwrap().to_owned();
    }
    for _ in 0..2 {
        assert!(matches!(follower.poll(rpc), Err(vigil_chain::FollowError::TooDeep(3))));
        assert_eq!(follower.recent(), before.as_slice(), "nothing moved");
    }
}

#[test]
fn a_zmq_subscriber_started_before_the_node_hears_it_once_it_is_up() {
    let endpoint = format!("tcp://127.0.0.1:{}", vigil_testenv::process::free_port());
    let bell = vigil_chain::zmq::subscribe(&endpoint, &["hashblock"]).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let node = vigil_testenv::process::vigil_node_with(&[&format!("--zmqpubhashblock={endpoint}")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mined = loop {
        let hash = mine(&node.rpc, 1, &Wallet::new().address()).remove(0);
        if let Ok(n) = bell.recv_timeout(Duration::from_millis(500)) {
            break (n, hash);
        }
        assert!(std::time::Instant::now() < deadline, "the subscriber never connected");
    };
    let (notification, _) = mined;
    assert_eq!(notification.topic, "hashblock");
    // The hash of a block we mined (possibly an earlier one, before the subscription landed).
    let mut hash = notification.body.clone();
    hash.reverse();
    let hash = vigil_chain::bitcoin::BlockHash::from_slice(&hash).unwrap();
    assert!(node.rpc.call("getblockheader", json!([hash.to_string()])).is_ok());
}

#[test]
fn the_bitcoind_backend_follows_a_real_bitcoind_through_a_reorg() {
    let Some(core) = bitcoind() else { return };
    let rpc = &core.rpc;
    let wallet = Wallet::new();
    let mut follower = Follower::new(Vec::new(), 100);
    mine(rpc, 110, &wallet.address());
    assert_eq!(follower.poll(rpc).unwrap().len(), 111);
    let (outpoint, prev) = mature_coin(rpc);
    let txid = rpc.broadcast(&wallet.spend(outpoint, &prev, 1_000)).unwrap();
    assert_eq!(follower.poll_mempool(rpc).unwrap()[0].compute_txid(), txid);
    mine(rpc, 1, &wallet.address());
    follower.poll(rpc).unwrap();
    // Invalidate the last two blocks, mine three others (to another address: new hashes).
    let h110 = rpc.block_hash(110).unwrap().unwrap();
    rpc.call("invalidateblock", json!([h110.to_string()])).unwrap();
    let other = Address::p2tr(
        &Secp256k1::new(),
        Keypair::from_seckey_slice(&Secp256k1::new(), &[6u8; 32]).unwrap().x_only_public_key().0,
        None,
        Network::Regtest,
    );
    let new = mine(rpc, 3, &other);
    let events = follower.poll(rpc).unwrap();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            BlockEvent::Connected { height, hash, .. } => format!("+{height}:{hash}"),
            BlockEvent::Disconnected { height, .. } => format!("-{height}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "-111".to_string(),
            "-110".into(),
            format!("+110:{}", new[0]),
            format!("+111:{}", new[1]),
            format!("+112:{}", new[2])
        ]
    );
}

#[test]
fn a_follower_from_the_tip_reports_only_what_comes_after_it() {
    let node = vigil_node();
    let to = Wallet::new().address();
    mine(&node.rpc, 50, &to);
    let mut follower = Follower::from_tip(100);
    assert!(follower.poll(&node.rpc).unwrap().is_empty(), "nothing of the 51 blocks before it");
    assert_eq!(follower.last().map(|b| b.height), Some(50));
    mine(&node.rpc, 2, &to);
    let heights: Vec<u32> = follower
        .poll(&node.rpc)
        .unwrap()
        .iter()
        .map(|e| match e {
            BlockEvent::Connected { height, .. } => *height,
            BlockEvent::Disconnected { .. } => panic!("no reorg"),
        })
        .collect();
    assert_eq!(heights, vec![51, 52]);
}
