//! Lockdowns, block by block.

use super::tests::{alarms, block, broadcasts, terms, vault, watcher};
use super::Lift;

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
    // The same lockdown again, or one ending sooner, changes nothing the guardians need to
    // hear: no alarm (any party may send them, again and again). One ending later is alarmed.
    let alarmed = |w: &mut super::Watcher, client: &str, until: u32| {
        alarms(&w.lock_down(client, until, false)).contains(&"lockdown".to_string())
    };
    assert!(!alarmed(&mut w, "p", 100));
    assert!(!alarmed(&mut w, "p", 50));
    assert!(alarmed(&mut w, "q", 10) && !alarmed(&mut w, "q", 10) && alarmed(&mut w, "q", 11));
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
    // Late, so at the rung from which one a block reaches the top in time (the 8-rung ladder
    // is at its top 9 blocks before the leaf opens): rung 4.
    let top = a.cancel_top();
    assert_eq!((top, super::deadline_floor(top, 30, 18)), (7, 4));
    assert_eq!(broadcasts(&w.on_block_connected(18, &block(vec![]))), vec!["cancel rung 4"]);
    assert_eq!(broadcasts(&w.on_block_connected(19, &block(vec![]))), vec!["cancel rung 5"], "and climbs");
    // An unapproved unvault is cancelled at once, as in any session, from the bottom rung.
    assert_eq!(
        broadcasts(&w.on_block_connected(20, &block(vec![b.unvault.clone()]))),
        vec!["cancel rung 0", "cancel rung 6"]
    );
}

/// An approval of a spend asked under duress (so the co-signer says) is never signed: its
/// unvault is cancelled late even once the quiet lockdown ended (lifted, or run out), not left
/// for its coins to wait on the recovery path. Another approval is left alone.
#[test]
fn an_unvault_approved_under_duress_is_cancelled_late_after_the_quiet_lockdown_ended() {
    use crate::vault::ApprovalTerms;
    let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
    let mut w = watcher(&[&a, &b], 100_000_000);
    w.set_duress_margin(12);
    w.set_tip(8);
    w.lock_down("p", 12, true);
    w.add_approval(a.unvault.compute_txid(), ApprovalTerms { under_duress: true, ..terms(1_000) });
    w.add_approval(b.unvault.compute_txid(), terms(1_000));
    // U confirms at 10; DELAY 20: the spend leaf opens at 30; the lockdown ends at 12.
    assert!(
        broadcasts(&w.on_block_connected(10, &block(vec![a.unvault.clone(), b.unvault.clone()]))).is_empty()
    );
    for h in 11..18 {
        assert!(broadcasts(&w.on_block_connected(h, &block(vec![]))).is_empty(), "nothing at {h}");
    }
    let actions = w.on_block_connected(18, &block(vec![]));
    assert_eq!(broadcasts(&actions), vec!["cancel rung 4"], "A's, not B's: {actions:?}");
    assert_eq!(w.vault(&b.outpoint).unwrap().state.cancel_rung, None);
}

#[test]
fn a_lift_applies_once_and_a_replay_does_not_cut_short_a_later_lockdown() {
    let a = vault(0, 1_000_000);
    let mut w = watcher(&[&a], 100_000_000);
    w.lock_down("p", 5_000, false);
    assert_eq!(w.lift_lockdown("p", 2_000, 5_000), Lift::Applied);
    assert_eq!(w.lockdowns()["p"].plain_until, 2_000);
    // A new lockdown (duress, say) after the lift: the same lift handed in again changes
    // nothing, one at a lower height (signed before it) is refused, whatever lockdown it
    // names; a lift for the newer lockdown applies, at the same height too.
    w.lock_down("p", 9_000, true);
    w.lock_down("p", 8_000, false);
    assert_eq!(w.lift_lockdown("p", 2_000, 5_000), Lift::AlreadyApplied);
    assert_eq!(w.lift_lockdown("p", 1_999, 5_000), Lift::Superseded { last: 2_000 });
    assert_eq!(w.lift_lockdown("p", 1_999, 9_000), Lift::Superseded { last: 2_000 });
    assert_eq!((w.lockdowns()["p"].plain_until, w.lockdowns()["p"].quiet_until), (8_000, 9_000));
    assert_eq!(w.lift_lockdown("p", 2_000, 9_000), Lift::Applied);
    assert_eq!((w.lockdowns()["p"].plain_until, w.lockdowns()["p"].quiet_until), (2_000, 2_000));
    // At the last lift's height, one naming a sooner end is a replay of an older lift.
    assert_eq!(w.lift_lockdown("p", 2_000, 8_000), Lift::Superseded { last: 2_000 });
    // A lockdown set after that lift, ending sooner than the one lifted: its own lift applies.
    w.lock_down("p", 4_000, false);
    assert_eq!(w.lift_lockdown("p", 3_100, 4_000), Lift::Applied);
    assert_eq!(w.lockdowns()["p"].plain_until, 3_100);
}

#[test]
fn a_lockdown_dates_its_last_request_and_an_undated_one_is_dated_once_the_height_is_known() {
    let a = vault(0, 1_000_000);
    let mut w = watcher(&[&a], 100_000_000);
    w.on_block_connected(40, &block(vec![]));
    w.lock_down("p", 5_000, false);
    w.on_block_connected(41, &block(vec![]));
    // One that ends nothing later is dated too: absorbed, it is still a lockdown taken then.
    w.lock_down("p", 4_000, false);
    assert_eq!(w.lockdowns()["p"].last_set_at, 41);
    let mut record = serde_json::to_value(w.lockdowns()["p"]).unwrap();
    record.as_object_mut().unwrap().remove("last_set_at");
    let earlier: crate::watch::Lockdown = serde_json::from_value(record).unwrap();
    assert_eq!(earlier.last_set_at, u32::MAX, "unknown: as recent as can be");
    // Taken while the tower could not tell the height: dated once it can, never lowered.
    w.lock_down_at("q", 5_000, false, u32::MAX);
    w.take_lockdowns_dirty();
    assert!(!w.has_changes());
    w.date_undated_lockdowns(50);
    // The date is a change of its own, recorded with the round that made it (a crash before
    // the next block would date it later, and refuse a lift signed since).
    assert!(w.has_changes(), "the date awaits recording");
    assert_eq!((w.lockdowns()["p"].last_set_at, w.lockdowns()["q"].last_set_at), (41, 50));
    w.lock_down_at("q", 5_000, false, 45);
    assert_eq!(w.lockdowns()["q"].last_set_at, 50);
}
