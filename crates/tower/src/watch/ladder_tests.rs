//! Fee ladders across an outage: what a tower catching up sends.

use super::tests::{alarms, block, broadcasts, fee_wallet, vault, watcher};
use super::{deadline_floor, Watcher, TOP_RUNG_MARGIN};
use crate::vault::Action;

/// Connects the empty blocks `heights`, returning what each sent.
fn connect(w: &mut Watcher, heights: std::ops::RangeInclusive<u32>) -> Vec<(u32, Vec<String>)> {
    heights.map(|h| (h, broadcasts(&w.on_block_connected(h, &block(vec![]))))).collect()
}

#[test]
fn the_floor_reaches_the_top_rung_in_time_and_never_binds_a_ladder_climbing_since_the_unvault() {
    // DELAY 20, U confirmed at 10: the spend leaf opens at 30.
    assert_eq!(deadline_floor(7, 30, 10), 0);
    assert_eq!(deadline_floor(7, 30, 14), 0);
    assert_eq!(deadline_floor(7, 30, 15), 1);
    assert_eq!(deadline_floor(7, 30, 30 - TOP_RUNG_MARGIN), 7, "the top, with time for a bump");
    assert_eq!(deadline_floor(7, 30, 40), 7, "past the deadline");
    // One rung a block from the bottom at U's confirmation, up to the top, stays at or above it.
    for h in 10..40 {
        assert!(((h - 10) as usize).min(7) >= deadline_floor(7, 30, h), "at {h}");
    }
}

#[test]
fn a_tower_catching_up_climbs_a_ladder_only_as_far_as_the_deadline_requires() {
    let (early, late, live) = (vault(0, 1_000_000), vault(1, 1_000_000), vault(2, 1_000_000));
    let mut w = watcher(&[&early, &late, &live], 100_000_000);
    let top = early.cancel_top();
    // `live`'s cancel went out before the outage, at rung 0 (U in the mempool at 9).
    w.set_chain_tip(9);
    w.on_block_connected(9, &block(vec![]));
    assert_eq!(broadcasts(&w.on_mempool_tx(&live.unvault)), vec!["cancel rung 0"]);
    // Back at 24: `early`'s U confirmed at 10 (its spend leaf opens at 30), `late`'s and
    // `live`'s at 20 (at 40); none was approved.
    w.set_chain_tip(24);
    let first = w.on_block_connected(10, &block(vec![early.unvault.clone()]));
    assert_eq!(broadcasts(&first), vec![format!("cancel rung {top}"), "cancel rung 1".into()]);
    assert_eq!(alarms(&first), vec!["unvault-cancelled"]);
    // `early` at the top at once; `live` climbed once (its rung 0 was on the network when 10
    // was mined), and no more: what it sends now was on the network for no block since.
    let sent: Vec<_> = connect(&mut w, 11..=19).into_iter().filter(|(_, b)| !b.is_empty()).collect();
    assert!(sent.is_empty(), "nothing new while catching up: {sent:?}");
    let actions = w.on_block_connected(20, &block(vec![late.unvault.clone(), live.unvault.clone()]));
    assert_eq!(broadcasts(&actions), vec!["cancel rung 0"], "`late` starts at the bottom: 16 blocks left");
    assert!(connect(&mut w, 21..=23).iter().all(|(_, b)| b.is_empty()));
    // At the tip, what stands is sent again; after it, each ladder climbs a rung a block.
    let mut at_tip = broadcasts(&w.on_block_connected(24, &block(vec![])));
    at_tip.sort();
    assert_eq!(at_tip, vec!["cancel rung 0", "cancel rung 1", &format!("cancel rung {top}")]);
    w.set_chain_tip(25);
    let mut next = broadcasts(&w.on_block_connected(25, &block(vec![])));
    next.sort();
    assert_eq!(next, vec!["cancel rung 1", "cancel rung 2", &format!("cancel rung {top}")]);
    // A tower that saw every block one at a time would stand at the top for all three.
    let mut one_by_one = watcher(&[&early, &late, &live], 100_000_000);
    one_by_one.on_block_connected(9, &block(vec![]));
    one_by_one.on_mempool_tx(&live.unvault);
    one_by_one.on_block_connected(10, &block(vec![early.unvault.clone()]));
    connect(&mut one_by_one, 11..=19);
    one_by_one.on_block_connected(20, &block(vec![late.unvault.clone(), live.unvault.clone()]));
    connect(&mut one_by_one, 21..=25);
    let rungs = |w: &Watcher| {
        [&early, &late, &live].map(|v| w.vault(&v.outpoint).unwrap().state.cancel_rung.unwrap())
    };
    assert_eq!(rungs(&one_by_one), [top, 5, top]);
    assert_eq!(rungs(&w), [top, 1, 2]);
}

#[test]
fn a_tower_catching_up_with_a_cancel_at_the_top_bumps_it_once_not_once_per_two_blocks_missed() {
    let v = vault(0, 5_000_000);
    let bumps = |outage: bool| {
        let mut w = watcher(&[&v], 100_000_000);
        w.set_fee_wallet(fee_wallet(&v, 300, 1_000_000));
        // U confirmed at 10, unapproved: the top rung at 17, a first bump at 19.
        w.set_chain_tip(10);
        w.on_block_connected(10, &block(vec![v.unvault.clone()]));
        let mut heights = Vec::new();
        for h in 11..=40 {
            // Down from 20 to 29: the tower sees 20 to 29 only once the chain is at 29.
            w.set_chain_tip(if outage && (20..29).contains(&h) { 29 } else { h });
            let actions = w.on_block_connected(h, &block(vec![]));
            if actions.iter().any(|a| matches!(a, Action::BroadcastPackage { .. })) {
                heights.push(h);
            }
        }
        heights
    };
    let steady = bumps(false);
    assert_eq!(steady[..3], [19, 21, 23], "a bump, then a replacement every two blocks");
    let caught_up = bumps(true);
    assert_eq!(caught_up[..3], [19, 29, 31], "one replacement for the outage, at the tip, then as before");
}

#[test]
fn a_sweep_turned_to_the_unvault_while_catching_up_starts_as_high_as_the_deadline_requires() {
    let v = vault(0, 1_000_000);
    let swept = |chain_tip: u32| {
        let mut w = watcher(&[&v], 100_000_000);
        w.on_block_connected(9, &block(vec![]));
        assert_eq!(broadcasts(&w.panic("p")), vec!["emergency rung 0"]);
        // U confirmed at 10, before E: the sweep goes through UE, racing U's spend leaf (30).
        w.set_chain_tip(chain_tip);
        broadcasts(&w.on_block_connected(10, &block(vec![v.unvault.clone()])))
    };
    assert_eq!(swept(10), vec!["unvault-emergency rung 0"]);
    let top = v.emergency_top();
    assert_eq!(swept(24), vec![format!("unvault-emergency rung {top}")], "6 blocks left when it is sent");
}

#[test]
fn a_tower_back_late_bumps_at_once_as_the_latest_schedule_would_have() {
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.set_fee_wallet(fee_wallet(&v, 300, 1_000_000));
    // Back at 23; U, unapproved, confirmed at 10: the spend leaf opens at 30. On the latest
    // schedule the top rung stood from 21 and its first bump went out at 23, to confirm at 24.
    w.set_chain_tip(23);
    let mut bumped = Vec::new();
    for h in 10..=26 {
        w.set_chain_tip(h.max(23));
        let actions = w.on_block_connected(h, &block(if h == 10 { vec![v.unvault.clone()] } else { vec![] }));
        if actions.iter().any(|a| matches!(a, Action::BroadcastPackage { .. })) {
            bumped.push(h);
        }
    }
    assert_eq!(bumped, [23, 25], "a first bump as soon as it is caught up, then every two blocks");
}

#[test]
fn a_rung_sent_on_a_block_a_reorganisation_took_away_climbs_on_the_block_that_replaced_it() {
    let v = vault(0, 1_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.set_chain_tip(10);
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    w.set_chain_tip(11);
    assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 1"]);
    // 11 is replaced by 11': rung 1 was out when 11' was mined, and did not confirm in it.
    w.on_block_disconnected(11);
    assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 2"]);
}

#[test]
fn a_quiet_cancel_at_the_smallest_margin_goes_out_at_the_top_with_its_first_bump() {
    let v = vault(0, 5_000_000);
    let mut w = watcher(&[&v], 100_000_000);
    w.set_fee_wallet(fee_wallet(&v, 300, 1_000_000));
    w.set_duress_margin(super::MIN_DURESS_MARGIN_BLOCKS);
    w.lock_down("p", 10_000, true);
    w.add_approval(v.unvault.compute_txid(), super::tests::terms(1_000));
    // U confirmed at 10: the spend leaf opens at 30, the quiet cancel is due at 23.
    w.on_block_connected(10, &block(vec![v.unvault.clone()]));
    connect(&mut w, 11..=22);
    let actions = w.on_block_connected(23, &block(vec![]));
    let top = v.cancel_top();
    assert_eq!(broadcasts(&actions), vec![format!("cancel rung {top}")]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::BroadcastPackage { what, .. } if what == "cancel anchor bump")),
        "bumped with it, to confirm by 24, six blocks before the leaf opens: {actions:?}"
    );
}
