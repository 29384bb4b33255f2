//! What a transaction means for a vault: its unvault (approved? within the velocity budget?),
//! its cancel or emergency confirming, the approved spend, or something else (an alarm).

use vigil_policy::bitcoin::{OutPoint, Transaction, Txid};

use super::{cancel_broadcast, emergency_broadcast, top_rung_since, vault_floor, Watcher};
use crate::vault::{Action, AlarmKind, Role, VaultState};

impl Watcher {
    pub(super) fn observe(
        &mut self,
        tx: &Transaction,
        height: Option<u32>,
        fee: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        let txid = tx.compute_txid();
        for input in &tx.input {
            let prev = input.previous_output;
            let touched = if self.vaults.contains_key(&prev) {
                Some(prev)
            } else {
                self.by_unvault.get(&prev).copied()
            };
            if touched.is_some_and(|id| !self.ensure_graph(id)) {
                continue;
            }
            if let Some(vault) = self.vaults.get(&prev) {
                let id = vault.outpoint;
                match vault.role_of(&txid) {
                    Some(Role::Unvault) => self.unvault_seen(id, height, actions),
                    Some(Role::Emergency(_)) => self.emergency_seen(id, txid, height, actions),
                    _ => self.foreign_vault_spend(id, txid, height, actions),
                }
            } else if let Some(id) = self.by_unvault.get(&prev).copied() {
                let vault = &self.vaults[&id];
                match vault.role_of(&txid) {
                    Some(Role::Cancel(_)) => {
                        if let Some(h) = height {
                            self.cancel_confirmed(id, h);
                        }
                    }
                    Some(Role::UnvaultEmergency(_)) => self.emergency_seen(id, txid, height, actions),
                    // The approved spend, unless this tower decided to cancel the unvault (over
                    // the budget, locked down, expired): then it is a rival like any other.
                    _ if self.approvals.get(&prev.txid).map(|a| a.spend) == Some(txid)
                        && vault.state.cancel_rung.is_none() =>
                    {
                        self.update(id, |s| {
                            if let Some(h) = height {
                                s.spent_height = Some(h);
                            }
                        })
                    }
                    _ => self.unapproved_spend(id, tx, height, fee, actions),
                }
            }
        }
    }

    /// V spent by neither U nor E: a one-time key survived, or the registrar deceived the
    /// tower. Nothing of this vault is left to protect; the guardians are alarmed and decide
    /// whether to panic (a single registrar key must not be able to force a sweep).
    fn foreign_vault_spend(
        &mut self,
        id: OutPoint,
        txid: Txid,
        height: Option<u32>,
        actions: &mut Vec<Action>,
    ) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        // Only a confirmed spend ends the watch: one in the mempool may yet be replaced by the
        // vault's own unvault.
        if height.is_some() && !vault.state.done {
            vault.state.done = true;
            vault.state.foreign_spend_height = height;
            self.active.remove(&id);
            self.dirty.insert(id);
        }
        if vault.state.foreign_spend.as_deref() == Some(&txid) {
            return;
        }
        vault.state.foreign_spend = Some(Box::new(txid));
        self.dirty.insert(id);
        actions.push(Action::alarm(
            Some(id),
            AlarmKind::ForeignVaultSpend,
            format!(
                "vault {id} spent by unknown transaction {txid}: a one-time key was not deleted; \
                 guardians, consider a panic for client {}",
                vault.policy_id
            ),
        ));
    }

    /// U's output spent by something other than C, UE or the approved spend: after DELAY, a
    /// race (ADR 0002's residual risk). In the mempool it is outbid at once by the top-rung
    /// cancel and a child aiming at twice the rival's feerate.
    fn unapproved_spend(
        &mut self,
        id: OutPoint,
        tx: &Transaction,
        height: Option<u32>,
        fee: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        let txid = tx.compute_txid();
        let vault = &self.vaults[&id];
        let top = vault.cancel_top();
        let cancel = vault.state.cancel_height.is_none() && height.is_none();
        let value = vault.unvault.output[0].value;
        let seen = (txid, height.is_some());
        if vault.state.rival_alarmed.as_deref() != Some(&seen) {
            actions.push(Action::alarm(
                Some(id),
                AlarmKind::UnapprovedSpend,
                format!(
                    "unvault of {id} spent by {txid}, not the approved spend{}",
                    if height.is_some() {
                        ": confirmed, the race is lost (residual risk)"
                    } else {
                        ": cancelling at the top rung, bumped through its anchor"
                    }
                ),
            ));
            self.update(id, |s| s.rival_alarmed = Some(Box::new(seen)));
        }
        if !cancel {
            return;
        }
        // The rival's feerate: from its fee when the backend gave it; else what U's output
        // alone pays it, unless it brings inputs of its own, whose value we do not know:
        // then assume the worst the fee wallet is sized for.
        let outputs: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let vsize = tx.vsize().max(1) as u64;
        let rival_rate = match fee {
            Some(fee) => fee / vsize,
            None if tx.input.len() == 1 => value.to_sat().saturating_sub(outputs) / vsize,
            None => self.fee_wallet.as_ref().map(|w| w.stress_rate()).unwrap_or(0),
        };
        let now = self.on_network_at(self.tip);
        let vault = self.vaults.get_mut(&id).expect("watched");
        vault.state.cancel_rung = Some(top);
        vault.state.rung_sent_at = Some(now);
        vault.state.top_rung_since.get_or_insert(now);
        actions.push(cancel_broadcast(vault, top));
        self.fresh.insert(id);
        self.dirty.insert(id);
        self.active.insert(id);
        self.bump_cancel(id, self.tip, Some(rival_rate), actions);
    }

    /// E or UE seen (mempool or chain). One this tower did not broadcast for a panic is
    /// alarmed once, at first sight: the coins are safe in the deep vault, but whoever sent it
    /// (a tower gone rogue, a leaked graph) should be known, and the coins brought back.
    fn emergency_seen(&mut self, id: OutPoint, txid: Txid, height: Option<u32>, actions: &mut Vec<Action>) {
        let vault = self.vaults.get(&id).expect("watched");
        let unordered = vault.state.emergency_rung.is_none() && !vault.state.unordered_emergency;
        let client = vault.policy_id.clone();
        self.update(id, |s| {
            if let Some(h) = height {
                s.emergency_height = Some(h);
            }
            s.unordered_emergency |= unordered;
        });
        if unordered {
            actions.push(Action::alarm(
                Some(id),
                AlarmKind::UnorderedEmergency,
                format!(
                    "vault {id} of client {client} is being swept to the deep vault by {txid}, which no \
                     panic this tower knows of ordered: a tower or a copy of the vault's transactions \
                     was misused; the coins are safe there and come back through the deep vault's fast path"
                ),
            ));
        }
    }

    /// C confirmed: U's coins are back in custody, released to nobody, so U stops counting
    /// for velocity. The co-signer counts only what it approved: an unvault nobody approved
    /// (sent from a backup while it was down, say) counted here only would get the next
    /// spend it approves cancelled. A reorganisation that undoes C counts U again.
    fn cancel_confirmed(&mut self, id: OutPoint, height: u32) {
        self.update(id, |s| s.cancel_height = Some(height));
        let client = &self.vaults[&id].policy_id;
        if let Some(released) = self.released.get_mut(client) {
            released.remove(&id);
        }
    }

    fn update(&mut self, id: OutPoint, f: impl FnOnce(&mut VaultState)) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        let before = vault.state.clone();
        f(&mut vault.state);
        if vault.state != before {
            self.dirty.insert(id);
        }
    }

    fn unvault_seen(&mut self, id: OutPoint, height: Option<u32>, actions: &mut Vec<Action>) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        let first_sight = !vault.state.unvault_seen;
        vault.state.unvault_seen = true;
        if height.is_some() {
            vault.state.unvault_height = height;
        }
        let (client, value) = (vault.policy_id.clone(), vault.unvault.output[0].value.to_sat());
        let guarded = vault.guarded;
        let u_txid = vault.unvault.compute_txid();
        let seen_at = height.unwrap_or(self.tip + 1);
        let approval = self.approvals.get(&u_txid).copied();
        // An approval covers an unvault seen by its expiry height, not later.
        let approved = approval.is_some_and(|a| seen_at <= a.expiry_height);
        let quorum = approved && approval.is_some_and(|a| a.guardian_quorum);
        // Velocity bounds what the co-signer can release alone. A guarded vault's unvault the
        // guardians' quorum approved is not counted: its spend leaf needs them on chain. A
        // standard vault's leaf needs only the owner and the co-signer, who (compromised)
        // could sign another spend than the one the guardians approved and hand it to a
        // miner: it counts, approved by the quorum or not.
        let by_quorum = quorum && guarded;
        self.dirty.insert(id);
        self.active.insert(id);
        if !first_sight {
            // Judged at first sight; its confirmation only dates it for the velocity window
            // (an approval that expired since does not make it count).
            if let Some(entry) = height.and_then(|_| self.released.get_mut(&client)?.get_mut(&id)) {
                entry.0 = seen_at;
            }
            return;
        }
        // A standard vault above the whole budget (a limit lowered since it was made) can only
        // leave with the quorum's approval, and then only alone in its window.
        let over_budget = !by_quorum && self.over_velocity(&client, id, value, seen_at, quorum);
        let lockdown = self.lockdown(&client, seen_at);
        if !by_quorum {
            self.released.entry(client).or_default().insert(id, (seen_at, value));
        }
        let now = self.on_network_at(self.tip);
        let vault = self.vaults.get_mut(&id).expect("watched");
        vault.state.counted_for_velocity = Some(!by_quorum);
        if vault.state.emergency_rung.is_some() {
            // A panic is under way: U gets UE, not C, as high as U's deadline requires.
            let top = vault.emergency_top();
            let rung = vault_floor(vault, top, now);
            vault.state.emergency_rung = Some(rung);
            vault.state.top_rung_since = (rung == top).then(|| top_rung_since(vault, now));
            vault.state.rung_sent_at = Some(now);
            actions.push(emergency_broadcast(vault, rung));
            self.fresh.insert(id);
            return;
        }
        match lockdown {
            // Approved, under a quiet lockdown: cancelled late (see `lockdown`).
            Some(l) if l.quiet && approved && !over_budget => return,
            None if approved && !over_budget => return,
            _ => {}
        }
        let why = if lockdown.is_some_and(|l| !l.quiet) && approved && !over_budget {
            "approved, but the client is locked down"
        } else if approved {
            "over the velocity budget (approved by the co-signer)"
        } else {
            "not approved"
        };
        self.start_cancel(id, &format!(" is {why}"), actions);
    }

    /// Starts `id`'s cancel at the bottom rung, or as high as U's deadline requires, with an
    /// alarm: "unvault U of vault V`why`: cancelling".
    pub(super) fn start_cancel(&mut self, id: OutPoint, why: &str, actions: &mut Vec<Action>) {
        if !self.ensure_graph(id) {
            return;
        }
        let now = self.on_network_at(self.tip);
        let vault = self.vaults.get_mut(&id).expect("watched");
        let u_txid = vault.unvault.compute_txid();
        let top = vault.cancel_top();
        let rung = vault_floor(vault, top, now);
        vault.state.cancel_rung = Some(rung);
        vault.state.rung_sent_at = Some(now);
        if rung == top {
            vault.state.top_rung_since.get_or_insert(top_rung_since(vault, now));
        }
        self.fresh.insert(id);
        self.active.insert(id);
        self.dirty.insert(id);
        actions.push(Action::alarm(
            Some(id),
            AlarmKind::UnvaultCancelled,
            format!("unvault {u_txid} of vault {id}{why}: cancelling"),
        ));
        actions.push(cancel_broadcast(vault, rung));
        // Started late at the top (a quiet cancel at a small margin, a tower back late): the
        // first bump goes with it when the latest schedule's would have gone by now.
        if rung == top && vault.state.unvault_height.is_some() {
            self.bump_cancel(id, self.tip, None, actions);
        }
    }

    /// An approval of an unvault seen already, judged then as the guardians' quorum's (not
    /// counted for velocity), replaced by one without the quorum: the co-signer alone now
    /// names the spend, so the unvault counts now, and is cancelled if over the budget.
    pub(super) fn approval_replaced(&mut self, id: OutPoint, actions: &mut Vec<Action>) {
        let vault = &self.vaults[&id];
        let s = &vault.state;
        if s.counted_for_velocity != Some(false) {
            return;
        }
        let (client, value) = (vault.policy_id.clone(), vault.unvault.output[0].value.to_sat());
        let seen_at = s.unvault_height.unwrap_or(self.tip + 1);
        let untouched = s.untouched();
        let cancelled = s.cancel_height.is_some();
        let over_budget = self.over_velocity(&client, id, value, seen_at, false);
        if !cancelled {
            self.released.entry(client).or_default().insert(id, (seen_at, value));
        }
        self.vaults.get_mut(&id).expect("watched").state.counted_for_velocity = Some(true);
        self.dirty.insert(id);
        if untouched && over_budget {
            let why = " is over the velocity budget (its approval replaced by one without the guardians)";
            self.start_cancel(id, why, actions);
        }
    }

    /// Whether releasing `value` now would exceed the client's velocity budget, counting the
    /// full value of every unvault seen in the window but guarded vaults' the guardians'
    /// quorum approved, and those whose cancel confirmed. `alone_may_exceed`: a standard
    /// vault the quorum approved, let through above the budget when nothing else counts in
    /// the window.
    fn over_velocity(
        &self,
        client: &str,
        vault: OutPoint,
        value: u64,
        now: u32,
        alone_may_exceed: bool,
    ) -> bool {
        let Some(limits) = self.limits.get(client) else { return false };
        let window_start = now.saturating_sub(limits.velocity_window_blocks);
        let others: u64 = self
            .released
            .get(client)
            .map(|m| {
                m.iter().filter(|(v, (h, _))| **v != vault && *h >= window_start).map(|(_, (_, s))| s).sum()
            })
            .unwrap_or(0);
        others + value > limits.velocity_limit_sat && !(alone_may_exceed && others == 0)
    }
}
