//! A tower that watches through a real electrs (indexing a real bitcoind) alone: it cancels an
//! unapproved unvault and leaves the approved one alone. Skipped, saying so, when
//! `ELECTRS_EXE` or `BITCOIND_EXE` is unset.

use std::time::Duration;

use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::Amount;
use vigil_policy::VaultKind;
use vigil_testenv::household::{example, Household, DELAY};
use vigil_testenv::process::{bitcoind_with_electrs, wait_indexed, TowerOptions, TowerProcess};
use vigil_testenv::wallet::{confirmations, mine, spend_of};
use vigil_testenv::{eventually, vigil_policy};

#[test]
fn a_tower_watching_through_electrs_alone_cancels_an_unapproved_unvault() {
    let Some((core, electrs)) = bitcoind_with_electrs() else { return };
    let rpc = &core.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &core, example("tower over electrum"));
    let chain = format!("kind = \"electrum\"\nurl = {:?}\n", electrs.address);
    let options = TowerOptions { top: "poll_interval_ms = 100\n", chain: &chain, ..TowerOptions::default() };
    let tower = TowerProcess::configured(&core, &[client.policy_path.clone()], 11, options);
    let stolen = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    let spent = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    for v in [&stolen, &spent] {
        client.protect(rpc, &tower.api, v);
    }
    let approved_spend = client.delayed_spend(&spent);
    client.approve(&tower.api, &spent, approved_spend.compute_txid()).unwrap();
    mine(rpc, 1, &client.wallet.address());

    rpc.broadcast(stolen.graph.unvault()).unwrap();
    rpc.broadcast(spent.graph.unvault()).unwrap();
    let cancel =
        eventually("the tower cancelled through electrs", || spend_of(rpc, stolen.unvault_outpoint()));
    assert!(stolen.graph.transactions().any(|p| p.tx.compute_txid() == cancel.compute_txid()));
    // A cancel confirms well before DELAY; the approved unvault is left alone throughout.
    for _ in 0..DELAY - 1 {
        mine(rpc, 1, &client.wallet.address());
        std::thread::sleep(Duration::from_millis(150));
        assert!(spend_of(rpc, spent.unvault_outpoint()).is_none(), "the approved unvault was left alone");
    }
    let cancel = spend_of(rpc, stolen.unvault_outpoint()).unwrap();
    assert!(stolen.graph.transactions().any(|p| p.tx.compute_txid() == cancel.compute_txid()));
    assert!(confirmations(rpc, &cancel.compute_txid()) >= 1, "the cancel confirmed before DELAY");
    wait_indexed(&electrs, &core);
    eventually("the tower followed electrs to the tip", || {
        (tower.metric("vigil_tower_tip_height") == Some(rpc.tip().unwrap().height as u64)).then_some(())
    });
    mine(rpc, 1, &client.wallet.address());
    assert!(spend_of(rpc, spent.unvault_outpoint()).is_none(), "the approved unvault was left alone");
    let txid = rpc.broadcast(&approved_spend).unwrap();
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &txid), 1, "the approved spend went through at DELAY");
}
