//! Lockdowns, block by block.

use super::tests::{alarms, block, broadcasts, terms, vault, watcher};

#[test]
fn a_plain_lockdown_cancels_approved_unvaults_at_once_and_those_to_come() {
    let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let mut w = watcher(&[&a, &b], 100_000_000);
    w.add_approval(a.unvault.compute_txid(), terms(1_000));
    w.add_approval(b.unvault.compute_txid(), terms(1_000));
    assert!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))).is_empty());
    let actions = w.lock_down("p", 100, false);
    assert_eq!(broadcasts(&actions), vec!["cancel rung 0"], "the approved unvault under way");
    assert!(alarms(&actions).contains(&"lockdown".to_string()));
    assert!(w.take_lockdowns_dirty());
    let next = broadcasts(&w.on_block_connected(6, &block(vec![b.unvault.clone()])));
    assert_eq!(next, vec!["cancel rung 0", "cancel rung 1"], "the new unvault's, and the first climbs");
    // After it ends, an approved unvault is left alone again.
    let c = vault(2, 1_000_000);
    w.add_vault(c.clone());
    w.add_approval(c.unvault.compute_txid(), terms(1_000));
    w.on_block_connected(100, &block(vec![c.unvault.clone()]));
    assert_eq!(w.vault(&c.outpoint).unwrap().state.cancel_rung, None);
}

#[test]
fn a_quiet_lockdown_cancels_an_approved_unvault_late_but_before_the_deadline() {
    let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let mut w = watcher(&[&a, &b], 100_000_000);
    w.set_duress_margin(12);
    assert!(w.lock_down("p", 10_000, true).is_empty(), "nothing shows when it arrives");
    w.add_approval(a.unvault.compute_txid(), terms(1_000));
    // U confirms at 10; DELAY 20: the spend leaf opens at 30; the cancel goes out at 18.
    assert!(broadcasts(&w.on_block_connected(10, &block(vec![a.unvault.clone()]))).is_empty());
    for h in 11..18 {
        assert!(broadcasts(&w.on_block_connected(h, &block(vec![]))).is_empty(), "nothing at {h}");
    }
    assert_eq!(broadcasts(&w.on_block_connected(18, &block(vec![]))), vec!["cancel rung 0"]);
    assert_eq!(broadcasts(&w.on_block_connected(19, &block(vec![]))), vec!["cancel rung 1"], "and climbs");
    // An unapproved unvault is cancelled at once, as in any session.
    assert_eq!(
        broadcasts(&w.on_block_connected(20, &block(vec![b.unvault.clone()]))),
        vec!["cancel rung 0", "cancel rung 2"]
    );
}
