//! Every block: each cancel or emergency under way climbs its fee ladder until it is buried;
//! deadlines are watched.

use vigil_policy::bitcoin::OutPoint;

use super::{cancel_broadcast, emergency_broadcast, top_rung_since, vault_floor, Watcher, BURY_MARGIN};
use crate::vault::{Action, AlarmKind};

impl Watcher {
    /// Every block: escalate what is unconfirmed, re-broadcast after reorgs, watch deadlines,
    /// retire what is buried.
    ///
    /// A rung climbs on a block mined after it was sent; a block caught up after an outage was
    /// mined before, so catching up raises a ladder only as far as the deadline requires
    /// ([`super::deadline_floor`]), and sends nothing new for the blocks in between.
    pub(super) fn each_block(&mut self, height: u32, actions: &mut Vec<Action>) {
        self.check_fee_wallet(actions);
        self.quiet_cancels(height, actions);
        let now = self.on_network_at(height);
        let caught_up = height >= self.chain_tip;
        let active: Vec<OutPoint> = self.active.iter().filter(|v| !self.fresh.contains(v)).copied().collect();
        for id in active {
            let vault = self.vaults.get_mut(&id).expect("watched");
            let s = vault.state.clone();
            let buried = |h: Option<u32>| h.is_some_and(|h| height >= h + BURY_MARGIN);
            if buried(s.cancel_height) || buried(s.emergency_height) || buried(s.spent_height) {
                vault.state.done = true;
                self.active.remove(&id);
                self.dirty.insert(id);
                continue;
            }
            let climbs = s.rung_sent_at.is_none_or(|sent| height > sent);
            if let Some(rung) = s.emergency_rung.filter(|_| s.emergency_height.is_none()) {
                let top = vault.emergency_top();
                let climbed = if climbs { (rung + 1).min(top) } else { rung };
                // UE spends U's output: the cancel's deadline is its own.
                let next = if s.unvault_seen { climbed.max(vault_floor(vault, top, now)) } else { climbed };
                if next == rung && !climbs && !caught_up {
                    continue;
                }
                vault.state.emergency_rung = Some(next);
                vault.state.rung_sent_at = Some(now);
                actions.push(emergency_broadcast(vault, next));
                self.dirty.insert(id);
                if next == top {
                    vault.state.top_rung_since.get_or_insert(top_rung_since(vault, now));
                    // UE's parent U must be confirmed for a child of UE to relay (TRUC).
                    let (parent, parent_value, label) = if vault.state.unvault_seen {
                        (
                            vault.unvault_emergencies[top].clone(),
                            vault.unvault.output[0].value,
                            "unvault-emergency",
                        )
                    } else {
                        (vault.emergencies[top].clone(), vault.amount, "emergency")
                    };
                    if !vault.state.unvault_seen || s.unvault_height.is_some() {
                        self.bump(id, parent, parent_value, label, height, None, actions);
                    }
                }
            } else if let Some(rung) = s.cancel_rung.filter(|_| s.cancel_height.is_none()) {
                let top = vault.cancel_top();
                let climbed = if climbs { (rung + 1).min(top) } else { rung };
                let next = climbed.max(vault_floor(vault, top, now));
                if next == rung && !climbs && !caught_up {
                    continue;
                }
                vault.state.cancel_rung = Some(next);
                vault.state.rung_sent_at = Some(now);
                actions.push(cancel_broadcast(vault, next));
                self.dirty.insert(id);
                if next == top {
                    vault.state.top_rung_since.get_or_insert(top_rung_since(vault, now));
                }
                // C's parent U must be confirmed for a child of C to relay (TRUC).
                if next == top && s.unvault_height.is_some() {
                    self.bump_cancel(id, height, None, actions);
                }
                let vault = self.vaults.get(&id).expect("watched");
                if let Some(u) = s.unvault_height.filter(|_| caught_up) {
                    let deadline = u + vault.delay as u32;
                    if height + BURY_MARGIN >= deadline {
                        actions.push(Action::alarm(
                            Some(id),
                            AlarmKind::Deadline,
                            format!(
                                "cancel of vault {id} unconfirmed at height {height}; the spend leaf opens at {deadline}: funds at risk"
                            ),
                        ));
                    }
                }
            }
        }
    }
}
