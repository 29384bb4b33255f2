//! The fee wallet's part in the watcher's decisions: anchor bumps and keeping the wallet
//! split and funded.

use vigil_policy::bitcoin::{Amount, OutPoint, Transaction};

use super::Watcher;
use crate::vault::{Action, AlarmKind, BumpState};

/// Blocks a bump is given before a replacement at twice the feerate.
pub const BUMP_RETRY_BLOCKS: u32 = 2;

impl Watcher {
    /// Pays through `parent`'s anchor once it has sat at the top of its ladder for
    /// [`BUMP_RETRY_BLOCKS`]: a first child aiming at twice the parent's feerate (at least the
    /// bump feerate); while it stays unconfirmed, a replacement every [`BUMP_RETRY_BLOCKS`] at
    /// twice the feerate on the same coin, or on a free coin that pays more once the feerate
    /// is past what that coin can pay, as high as the wallet goes (then an alarm). A new
    /// parent (E gave way to UE) gets a child at once, on the same coin. With `outbid` (a
    /// rival's feerate, in the post-DELAY race): a first child at once, aiming at twice that.
    #[allow(clippy::too_many_arguments)] // one call per ladder; a struct would only rename them
    pub(super) fn bump(
        &mut self,
        id: OutPoint,
        parent: Transaction,
        parent_value: Amount,
        label: &str,
        height: u32,
        outbid: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        // Recorded as sent when it reaches the network: the next bump waits for blocks mined
        // after that, not for blocks caught up.
        let sent_at = self.on_network_at(height);
        let Some(wallet) = self.fee_wallet.as_mut() else { return };
        let vault = self.vaults.get_mut(&id).expect("watched");
        let parent_txid = parent.compute_txid();
        let parent_fee =
            parent_value.to_sat().saturating_sub(parent.output.iter().map(|o| o.value.to_sat()).sum());
        // Stuck at the top rung means the market pays more than the parent: aim well above it.
        let parent_rate = parent_fee / parent.vsize() as u64;
        // Never more in fees than the vault is worth, first bump or replacement: a rival
        // claiming an absurd fee (or a backend lying about it) must not burn the wallet for a
        // race not worth it. Below that, winning the race is what matters.
        let package_vbytes = parent.vsize() as u64 + crate::fees::BUMP_VBYTES;
        let cap = parent_value.to_sat() / package_vbytes;
        let (rate, current) = match &vault.state.bump {
            None if outbid.is_some()
                || vault.state.top_rung_since.is_some_and(|h| height >= h + BUMP_RETRY_BLOCKS) =>
            {
                (wallet.first_rate().max(2 * parent_rate).max(2 * outbid.unwrap_or(0)), None)
            }
            None => return,
            Some(b) if b.parent != parent_txid => (b.sat_per_vb, Some((b.coin, b.coin_value))),
            Some(b) if height < b.height + BUMP_RETRY_BLOCKS || b.sat_per_vb >= cap => return,
            Some(b) => (b.sat_per_vb * 2, Some((b.coin, b.coin_value))),
        };
        let rate = rate.min(cap);
        // The vault's coin again while it pays the feerate; past that, a free coin that pays
        // more (the market climbed past the coin the first bump took).
        let coin = wallet.coin_for(&parent, parent_fee, rate, current);
        if let (Some(b), Some((op, _))) = (&vault.state.bump, coin) {
            if b.parent == parent_txid && b.ceiling && op == b.coin {
                return; // as high as the wallet goes: alarmed already
            }
        }
        match coin.and_then(|c| wallet.bump(&parent, parent_fee, rate, Some(c))) {
            Some(bump) => {
                if bump.ceiling {
                    actions.push(Action::alarm(
                        Some(id),
                        AlarmKind::BumpCeiling,
                        format!(
                            "{label} of vault {id} is bumped at {} sat/vB, all its fee coin can pay; it is still unconfirmed",
                            bump.sat_per_vb
                        ),
                    ));
                }
                vault.state.bump = Some(Box::new(BumpState {
                    parent: parent_txid,
                    height: sent_at,
                    sat_per_vb: bump.sat_per_vb,
                    coin: bump.coin,
                    coin_value: bump.coin_value,
                    ceiling: bump.ceiling,
                }));
                self.wallet_dirty = true;
                self.dirty.insert(id);
                actions.push(Action::BroadcastPackage {
                    vault: id,
                    what: format!("{label} anchor bump"),
                    parent,
                    child: bump.tx,
                });
            }
            None => actions.push(Action::alarm(
                Some(id),
                AlarmKind::FeeWalletEmpty,
                format!("{label} of vault {id} is stuck at the top rung and the fee wallet cannot bump it"),
            )),
        }
    }

    /// [`Watcher::bump`] for `id`'s top-rung cancel, paid from U's output.
    pub(super) fn bump_cancel(
        &mut self,
        id: OutPoint,
        height: u32,
        outbid: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        let vault = &self.vaults[&id];
        let (parent, value) = (vault.cancels[vault.cancel_top()].clone(), vault.unvault.output[0].value);
        self.bump(id, parent, value, "cancel", height, outbid, actions);
    }

    /// The fee wallet must cover a bump at the stress feerate for every open vault; it alarms
    /// once when it cannot, and again after it recovered and fell short anew.
    pub(super) fn check_fee_wallet(&mut self, actions: &mut Vec<Action>) {
        // Counting open vaults walks them all: only a tower with a fee wallet pays for it.
        let Some(each) = self.fee_wallet.as_ref().map(|w| w.reserve_per_vault()) else { return };
        // A coin for every open vault: a compromised co-signer (or a panic) can start every
        // cancel (or emergency) at once, and a fee spike can hold every bump unconfirmed. One
        // whose bump holds a coin that pays a stress bump is covered (its replacements spend
        // it again); one holding a smaller coin (the first bump takes the smallest that pays
        // the rate of the day) needs another coin to reach the stress feerate, and counts as
        // short.
        let uncovered = self
            .vaults
            .values()
            .filter(|v| !v.state.done && v.state.bump.as_ref().is_none_or(|b| b.coin_value < each))
            .count();
        // Fewer coins able to pay a stress bump than concurrent bumps might need: split the
        // largest (a split makes a bounded number, the next one follows once it confirmed).
        let mut cannot_split = false;
        if let Some(w) = self.fee_wallet.as_mut() {
            let (coins, _) = w.reserve(self.tip);
            if coins < uncovered && !w.split_pending() {
                match w.split(uncovered - coins + 1, self.tip) {
                    Some(split) => {
                        self.wallet_dirty = true;
                        actions.push(Action::Broadcast {
                            vault: OutPoint::null(),
                            what: "fee wallet split".into(),
                            tx: split,
                        });
                    }
                    None => cannot_split = true,
                }
            }
        }
        let Some(w) = self.fee_wallet.as_ref() else { return };
        let needed = uncovered as u64 * each;
        let (coins, balance) = w.reserve(self.tip);
        let short = balance < needed || cannot_split;
        if short && !self.wallet_low {
            actions.push(Action::alarm(
                None,
                AlarmKind::FeeWalletLow,
                format!(
                    "fee wallet holds {balance} sat in {coins} coins that each pay a bump at the stress feerate \
                     (of {} sat confirmed in all); {uncovered} open vaults without a bump under way need {needed} \
                     sat in as many such coins",
                    w.balance()
                ),
            ));
        }
        self.wallet_dirty |= self.wallet_low != short;
        self.wallet_low = short;
    }
}
