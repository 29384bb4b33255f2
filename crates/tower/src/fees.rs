//! The tower's fee wallet: a small hot wallet whose only use is to pay, through a cancel's or
//! emergency's pay-to-anchor output, for what the pre-signed ladder cannot (ADR 0002).
//!
//! It holds coins at one key-path taproot address, kept pre-split (it splits its largest coin
//! itself) so that each concurrent bump has its own confirmed coin (a TRUC child cannot chain
//! on another unconfirmed child), and sized for every watched vault at a stress feerate: below
//! that, the tower alarms. A leaked fee key loses the fee wallet, never a vault.
//!
//! A coin spent by a transaction still in the mempool stays the wallet's until that spend
//! confirms: if the spend leaves the mempool (refused, evicted, outbid), the coin is free
//! again, and the change of a spend that vanished is forgotten.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::key::Keypair;
use vigil_policy::bitcoin::secp256k1::Secp256k1;
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use vigil_policy::{pay_to_anchor, sign_key_path, unsigned_tx, ANCHOR_SAT, GRAPH_TX_VERSION, P2TR_DUST_SAT};

/// Virtual size of a bump: the anchor and one key-path input, one key-path output.
pub const BUMP_VBYTES: u64 = 11 + 41 + 58 + 43;

/// Coins one split makes at most: about 21.5 kvB, well within the standard size (a tower
/// watching more vaults splits again once this one confirmed).
pub const MAX_SPLIT_OUTPUTS: usize = 500;

/// How the fee wallet is sized and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePolicy {
    /// The feerate the wallet must be able to pay for every vault at once, sat/vB.
    pub stress_sat_per_vb: u64,
    /// The package feerate a bump aims for, sat/vB.
    pub bump_sat_per_vb: u64,
}

/// Blocks a coin's spend (or its creator) must be missing from the mempool before the wallet
/// believes it gone. Counted in blocks, not polls: a spend just made may not be in a snapshot
/// taken a moment earlier, and a spend just mined leaves the mempool before the tower has
/// processed its block; reusing the coin then would only build a child that spends nothing.
const MISSING_GRACE_BLOCKS: u32 = 2;

/// A coin of the fee wallet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeCoin {
    /// Its value, sat.
    pub value: u64,
    /// Confirmed at this height (None while pending).
    pub height: Option<u32>,
    /// The unconfirmed transaction spending it (a bump or a split of ours).
    #[serde(default)]
    pub spent_by: Option<Txid>,
    /// The tip when `spent_by` (or, for a pending coin, the transaction creating it) was
    /// first missing from the mempool, while it still is.
    #[serde(default)]
    pub missing_since: Option<u32>,
    /// For an output of a split of ours, and the coin a split spends: the tip when that coin
    /// was first split. The outputs count in the reserve before they confirm (a bump's change,
    /// which its replacement takes away, does not) for [`SPLIT_GRACE_BLOCKS`] after it; the
    /// same coin split again (the first split vanished) keeps the first height, so a split
    /// that never confirms leaves the wallet short, and alarmed.
    #[serde(default)]
    pub split_at: Option<u32>,
}

/// Blocks a split's outputs count in the reserve unconfirmed.
const SPLIT_GRACE_BLOCKS: u32 = 6;

impl FeeCoin {
    fn free(&self) -> bool {
        self.height.is_some() && self.spent_by.is_none()
    }
}

/// The fee wallet.
#[derive(Debug, Clone)]
pub struct FeeWallet {
    keypair: Keypair,
    script: ScriptBuf,
    policy: FeePolicy,
    coins: BTreeMap<OutPoint, FeeCoin>,
    /// The backend's feerate estimate, sat/vB, when it has one.
    market_sat_per_vb: Option<u64>,
}

impl FeeWallet {
    /// The wallet of `keypair`.
    pub fn new(keypair: Keypair, policy: FeePolicy) -> FeeWallet {
        let secp = Secp256k1::new();
        let script = ScriptBuf::new_p2tr(&secp, keypair.x_only_public_key().0, None);
        FeeWallet { keypair, script, policy, coins: BTreeMap::new(), market_sat_per_vb: None }
    }

    /// Where to send it coins.
    pub fn script(&self) -> &ScriptBuf {
        &self.script
    }

    /// Its coins (for persistence).
    pub fn coins(&self) -> &BTreeMap<OutPoint, FeeCoin> {
        &self.coins
    }

    /// Restores coins from the store.
    pub fn restore(&mut self, coins: BTreeMap<OutPoint, FeeCoin>) {
        self.coins = coins;
    }

    /// Confirmed value, sat, not counting coins spent by a pending bump.
    pub fn balance(&self) -> u64 {
        self.coins.values().filter(|c| c.free()).map(|c| c.value).sum()
    }

    /// Confirmed coins free for a bump.
    pub fn free_coins(&self) -> usize {
        self.coins.values().filter(|c| c.free()).count()
    }

    /// The wallet's reserve at `tip`: its coins that each pay a bump at the stress feerate (a
    /// bump spends one coin, so smaller ones hold none, however many there are), confirmed and
    /// not spent by a bump, or on their way from a recent split of ours: how many, and their
    /// value.
    pub fn reserve(&self, tip: u32) -> (usize, u64) {
        let each = self.reserve_per_vault();
        let on_its_way =
            |c: &FeeCoin| c.split_at.is_some_and(|at| tip < at.saturating_add(SPLIT_GRACE_BLOCKS));
        let big = self
            .coins
            .values()
            .filter(|c| c.spent_by.is_none() && c.value >= each && (c.height.is_some() || on_its_way(c)));
        big.fold((0, 0), |(n, sum), c| (n + 1, sum + c.value))
    }

    /// Whether a split of ours is on its way (not yet confirmed).
    pub fn split_pending(&self) -> bool {
        self.coins.values().any(|c| c.height.is_none() && c.split_at.is_some())
    }

    /// The stress feerate, sat/vB: what the wallet is sized to pay for every vault at once.
    pub fn stress_rate(&self) -> u64 {
        self.policy.stress_sat_per_vb
    }

    /// The backend's current estimate, sat/vB, at most the stress feerate: a backend that lies
    /// about the market must not make the wallet's housekeeping burn its coins in fees.
    pub fn set_market_feerate(&mut self, sat_per_vb: u64) {
        self.market_sat_per_vb = Some(sat_per_vb.clamp(1, self.policy.stress_sat_per_vb.max(1)));
    }

    /// What a split pays, sat/vB: the market's rate; without an estimate, the bump feerate
    /// (a split has to confirm before the bumps it prepares are needed).
    pub fn split_rate(&self) -> u64 {
        self.market_sat_per_vb.unwrap_or(self.policy.bump_sat_per_vb).max(1)
    }

    /// What one bump at the stress feerate costs, sat (the child pays for itself and a
    /// cancel of 174 vB that paid nothing).
    pub fn reserve_per_vault(&self) -> u64 {
        (BUMP_VBYTES + 174) * self.policy.stress_sat_per_vb
    }

    /// A transaction seen (in a block at `height`, or `None` in the mempool): coins in, coins out.
    /// Returns whether the wallet changed.
    pub fn observe(&mut self, tx: &Transaction, height: Option<u32>) -> bool {
        let mut changed = false;
        let txid = tx.compute_txid();
        for input in &tx.input {
            match height {
                // Confirmed: the coin is gone for good.
                Some(_) => changed |= self.coins.remove(&input.previous_output).is_some(),
                // Pending: it is the wallet's until the spend confirms.
                None => {
                    if let Some(c) = self.coins.get_mut(&input.previous_output) {
                        changed |= c.spent_by != Some(txid);
                        c.spent_by = Some(txid);
                        c.missing_since = None;
                    }
                }
            }
        }
        for (vout, out) in tx.output.iter().enumerate() {
            if out.script_pubkey == self.script {
                let op = OutPoint { txid, vout: vout as u32 };
                let coin = self.coins.entry(op).or_insert(FeeCoin {
                    value: out.value.to_sat(),
                    height,
                    ..FeeCoin::default()
                });
                if height.is_some() {
                    coin.height = height;
                }
                coin.missing_since = None;
                changed = true;
            }
        }
        changed
    }

    /// Given the transactions now in the mempool at `tip`: a coin whose pending spend has been
    /// out of it for [`MISSING_GRACE_BLOCKS`] is free again, and a pending coin whose creator
    /// has been out of it as long never existed. A coin in `bumping` (a vault's live bump
    /// spends it, and its next replacement will again) stays reserved: freed, another
    /// vault's bump would take it and the two children would replace each other. Returns
    /// whether the wallet changed.
    pub fn forget_missing_spends(
        &mut self,
        mempool: &std::collections::HashSet<Txid>,
        tip: u32,
        bumping: &std::collections::HashSet<OutPoint>,
    ) -> bool {
        let mut changed = false;
        let mut gone = Vec::new();
        for (op, c) in self.coins.iter_mut() {
            let awaited = match (c.height, c.spent_by) {
                (_, Some(_)) if bumping.contains(op) => continue,
                (_, Some(spend)) => spend,
                (None, None) => op.txid,
                (Some(_), None) => continue,
            };
            if mempool.contains(&awaited) {
                changed |= c.missing_since.take().is_some();
                continue;
            }
            let since = *c.missing_since.get_or_insert_with(|| {
                changed = true;
                tip
            });
            if tip >= since + MISSING_GRACE_BLOCKS {
                c.missing_since = None;
                changed = true;
                match c.spent_by.take() {
                    Some(_) => {}
                    None => gone.push(*op),
                }
            }
        }
        for op in gone {
            self.coins.remove(&op);
        }
        changed
    }

    /// Forgets confirmations at `height` and above (a reorg).
    pub fn disconnect(&mut self, height: u32) {
        for c in self.coins.values_mut() {
            if c.height.is_some_and(|h| h >= height) {
                c.height = None;
            }
        }
    }

    /// Splits the largest free coin into `count` coins of one stress-feerate bump each (plus
    /// change), so concurrent bumps each have their own confirmed coin: at most
    /// [`MAX_SPLIT_OUTPUTS`]. `None` when no coin is big enough. `tip` dates it (see
    /// [`FeeCoin::split_at`]).
    pub fn split(&mut self, count: usize, tip: u32) -> Option<Transaction> {
        let count = count.min(MAX_SPLIT_OUTPUTS);
        let each = self.reserve_per_vault();
        let (coin_op, coin) = self
            .coins
            .iter()
            .filter(|(_, c)| c.free())
            .max_by_key(|(_, c)| c.value)
            .map(|(op, c)| (*op, *c))?;
        let fee = (11 + 58 + 43 * (count as u64 + 1)) * self.split_rate();
        let count = count.min(((coin.value.saturating_sub(fee)) / each) as usize);
        if count < 2 {
            return None;
        }
        let change = coin.value - fee - each * count as u64;
        let mut output =
            vec![TxOut { value: Amount::from_sat(each), script_pubkey: self.script.clone() }; count];
        if change >= P2TR_DUST_SAT {
            output.push(TxOut { value: Amount::from_sat(change), script_pubkey: self.script.clone() });
        }
        let mut tx = unsigned_tx(Version::TWO, [(coin_op, Sequence::ENABLE_RBF_NO_LOCKTIME)], output);
        let prevout = TxOut { value: Amount::from_sat(coin.value), script_pubkey: self.script.clone() };
        sign_key_path(&mut tx, 0, &[prevout], &self.keypair).ok()?;
        // Its coin spent and its outputs on their way at once: the reserve holds while it
        // confirms (no shortfall is alarmed), and no second split starts meanwhile.
        self.observe(&tx, None);
        let (txid, at) = (tx.compute_txid(), Some(coin.split_at.unwrap_or(tip)));
        let split = self.coins.iter_mut().filter(|(op, _)| op.txid == txid || **op == coin_op);
        split.for_each(|(_, c)| c.split_at = at);
        Some(tx)
    }

    /// A child of `parent` (which pays `parent_fee`) spending its anchor (output 1) and a fee
    /// coin, so the package reaches `sat_per_vb`: `coin`, else the one [`Self::coin_for`]
    /// picks. The feerate is lowered to what the coin affords (and the result says so).
    pub fn bump(
        &mut self,
        parent: &Transaction,
        parent_fee: u64,
        sat_per_vb: u64,
        coin: Option<(OutPoint, u64)>,
    ) -> Option<AnchorBump> {
        let package_vbytes = parent.vsize() as u64 + BUMP_VBYTES;
        let child_fee_at = |rate: u64| (package_vbytes * rate).saturating_sub(parent_fee).max(BUMP_VBYTES);
        let (coin_op, coin_value) = match coin {
            Some(c) => c,
            None => self.coin_for(parent, parent_fee, sat_per_vb, None)?,
        };
        let rate = sat_per_vb.min(affordable_rate(coin_value, parent_fee, package_vbytes)?);
        if rate == 0 {
            return None;
        }
        let child_fee = child_fee_at(rate);
        let anchor = OutPoint { txid: parent.compute_txid(), vout: 1 };
        let prevouts = [
            TxOut { value: Amount::from_sat(ANCHOR_SAT), script_pubkey: pay_to_anchor() },
            TxOut { value: Amount::from_sat(coin_value), script_pubkey: self.script.clone() },
        ];
        // A TRUC child, as its parent is.
        let mut tx = unsigned_tx(
            GRAPH_TX_VERSION,
            [anchor, coin_op].map(|op| (op, Sequence::ENABLE_RBF_NO_LOCKTIME)),
            vec![TxOut {
                value: Amount::from_sat(coin_value + ANCHOR_SAT - child_fee),
                script_pubkey: self.script.clone(),
            }],
        );
        sign_key_path(&mut tx, 1, &prevouts, &self.keypair).ok()?;
        self.spend(coin_op, tx.compute_txid());
        let reached = (parent_fee + child_fee) / package_vbytes;
        Some(AnchorBump { tx, sat_per_vb: reached, coin: coin_op, coin_value, ceiling: rate < sat_per_vb })
    }

    /// The coin for a child of `parent` (which pays `parent_fee`) aiming at `sat_per_vb`:
    /// `current` (the coin the vault's bump spends) while it pays that feerate; else the free
    /// coin that takes the package highest above what `current` pays (the smallest of those
    /// that reach the feerate), so a bump moves on when the market climbs past its coin (its
    /// child spends the same anchor, so it replaces the old one, whose coin is free again once
    /// that left the mempool); else `current`. A `current` no longer in the wallet (spent on
    /// the chain by a replaced child mined after all) counts as none.
    pub fn coin_for(
        &self,
        parent: &Transaction,
        parent_fee: u64,
        sat_per_vb: u64,
        current: Option<(OutPoint, u64)>,
    ) -> Option<(OutPoint, u64)> {
        let package_vbytes = parent.vsize() as u64 + BUMP_VBYTES;
        let pays =
            |value: u64| affordable_rate(value, parent_fee, package_vbytes).map_or(0, |r| r.min(sat_per_vb));
        let current = current.filter(|(op, _)| self.coins.contains_key(op));
        let own = current.map_or(0, |(_, value)| pays(value));
        if own >= sat_per_vb {
            return current;
        }
        let better = self.coins.iter().filter(|(_, c)| c.free() && pays(c.value) > own);
        // The highest feerate, then the smallest coin (the first of equal ones) that pays it.
        let best = better.min_by_key(|(_, c)| (std::cmp::Reverse(pays(c.value)), c.value));
        best.map(|(op, c)| (*op, c.value)).or(current)
    }

    /// Marks `coin` spent by our pending `spend`.
    fn spend(&mut self, coin: OutPoint, spend: Txid) {
        if let Some(c) = self.coins.get_mut(&coin) {
            c.spent_by = Some(spend);
            c.missing_since = None;
        }
    }

    /// The feerate a bump starts at, sat/vB.
    pub fn first_rate(&self) -> u64 {
        self.policy.bump_sat_per_vb
    }
}

/// The package feerate, sat/vB, a child spending the anchor and a coin of `coin_value` pays
/// at most for a package of `package_vbytes` whose parent pays `parent_fee`: its change stays
/// above dust. `None` when the coin cannot even pay that.
fn affordable_rate(coin_value: u64, parent_fee: u64, package_vbytes: u64) -> Option<u64> {
    let affordable = (coin_value + ANCHOR_SAT).checked_sub(P2TR_DUST_SAT + BUMP_VBYTES)? + BUMP_VBYTES;
    Some((affordable + parent_fee) / package_vbytes)
}

/// A child paying for a parent through its anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorBump {
    /// The child, signed.
    pub tx: Transaction,
    /// The package feerate it reaches (parent and child), sat/vB.
    pub sat_per_vb: u64,
    /// The fee coin it spends.
    pub coin: OutPoint,
    /// The coin's value, sat.
    pub coin_value: u64,
    /// The coin could not pay the feerate asked for: this is as high as it goes.
    pub ceiling: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use vigil_policy::bitcoin::hashes::Hash;
    use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};

    use super::*;

    fn wallet_with_coins(values: &[u64]) -> (FeeWallet, Vec<OutPoint>) {
        let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[3; 32]).unwrap();
        let mut w = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 100, bump_sat_per_vb: 50 });
        let outputs = values
            .iter()
            .map(|v| TxOut { value: Amount::from_sat(*v), script_pubkey: w.script().clone() })
            .collect();
        let coin = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 };
        let funding = unsigned_tx(Version::TWO, [(coin, Sequence::MAX)], outputs);
        w.observe(&funding, Some(1));
        let ops =
            (0..values.len() as u32).map(|vout| OutPoint { txid: funding.compute_txid(), vout }).collect();
        (w, ops)
    }

    #[test]
    fn a_bumps_coin_is_kept_while_it_pays_and_given_up_for_one_that_pays_more_or_when_gone() {
        let (mut w, ops) = wallet_with_coins(&[100_000, 200_000, 2_000_000]);
        let output = TxOut { value: Amount::from_sat(1_000), script_pubkey: w.script().clone() };
        let parent = unsigned_tx(Version::TWO, [(OutPoint::null(), Sequence::MAX)], vec![output]);
        let rate_of = |value| affordable_rate(value, 0, parent.vsize() as u64 + BUMP_VBYTES).unwrap();
        let small = Some((ops[0], 100_000));
        assert_eq!(w.coin_for(&parent, 0, rate_of(100_000), None), small, "the smallest that pays");
        assert_eq!(w.coin_for(&parent, 0, rate_of(100_000), small), small, "kept while it pays");
        assert_eq!(
            w.coin_for(&parent, 0, rate_of(100_000) + 1, small),
            Some((ops[1], 200_000)),
            "past it, the smallest that pays"
        );
        assert_eq!(
            w.coin_for(&parent, 0, 10 * rate_of(2_000_000), small),
            Some((ops[2], 2_000_000)),
            "past every coin, the one that goes highest"
        );
        // Spent on the chain by a transaction not its bump's (a replaced child mined after all).
        w.observe(&unsigned_tx(Version::TWO, [(ops[0], Sequence::MAX)], vec![]), Some(2));
        assert_eq!(w.coin_for(&parent, 0, rate_of(100_000), small), Some((ops[1], 200_000)), "gone: another");
    }

    #[test]
    fn the_reserve_counts_a_splits_outputs_on_their_way_and_no_other_pending_coin() {
        let (mut w, _) = wallet_with_coins(&[200_000]);
        let each = w.reserve_per_vault();
        assert_eq!(w.reserve(10), (1, 200_000));
        let split = w.split(4, 10).expect("a split");
        let outputs = split.output.iter().filter(|o| o.value.to_sat() >= each);
        let (n, sum) = outputs.fold((0, 0), |(n, s), o| (n + 1, s + o.value.to_sat()));
        assert_eq!(w.reserve(10), (n, sum), "the split's outputs, before it is even seen");
        w.observe(&split, None);
        assert_eq!(w.reserve(10), (n, sum), "seen in the mempool");
        // A payment in the mempool (a bump's change, which its replacement takes away) is
        // no reserve until it confirms, and no split on its way.
        let mut payment = split.clone();
        payment.input[0].previous_output = OutPoint { txid: Txid::from_byte_array([7; 32]), vout: 0 };
        payment.output.truncate(1);
        w.observe(&payment, None);
        assert_eq!(w.reserve(10), (n, sum));
        w.observe(&payment, Some(11));
        let paid = payment.output[0].value.to_sat();
        assert_eq!(w.reserve(11), (n + 1, sum + paid));
        // The split stuck unconfirmed: its outputs stop counting.
        assert_eq!(w.reserve(10 + SPLIT_GRACE_BLOCKS), (1, paid));
        assert!(w.split_pending());
        // A payment on its way holds up no split.
        let (mut other, _) = wallet_with_coins(&[200_000]);
        other.observe(&payment, None);
        assert!(!other.split_pending());
    }

    #[test]
    fn a_split_that_keeps_vanishing_counts_from_its_first_attempt() {
        let (mut w, _) = wallet_with_coins(&[200_000]);
        let (mempool, bumping) = (HashSet::new(), HashSet::new());
        let first = w.split(4, 10).expect("a split");
        // Refused: it never enters the mempool, its coin is free again, and split again.
        for tip in 10..=12 {
            w.forget_missing_spends(&mempool, tip, &bumping);
        }
        assert_eq!((w.free_coins(), w.split_pending()), (1, false));
        let again = w.split(4, 12).expect("split again");
        assert_eq!(again.compute_txid(), first.compute_txid());
        assert!(w.reserve(15).0 >= 2);
        assert_eq!(w.reserve(10 + SPLIT_GRACE_BLOCKS), (0, 0), "counted from the first attempt");
    }

    #[test]
    fn a_coin_whose_spend_left_the_mempool_is_free_again_and_vanished_change_is_forgotten() {
        let (mut w, _) = wallet_with_coins(&[200_000]);
        let split = w.split(4, 1).expect("a split");
        assert_eq!(w.free_coins(), 0, "the coin is spent by the pending split");
        // The split is seen in the mempool: its outputs are pending coins.
        w.observe(&split, None);
        assert!(w.split_pending());
        let with_split: HashSet<Txid> = [split.compute_txid()].into();
        let none = HashSet::new();
        assert!(!w.forget_missing_spends(&with_split, 10, &none) || w.free_coins() == 0);
        assert_eq!(w.free_coins(), 0);
        // It leaves the mempool (evicted, or refused after all). Snapshots without it in the
        // same block are not enough (our own spend may have been made after the snapshot was
        // taken, or mined in a block not processed yet): two blocks later it is.
        let empty = HashSet::new();
        for _ in 0..100 {
            w.forget_missing_spends(&empty, 10, &none);
        }
        w.forget_missing_spends(&empty, 11, &none);
        assert_eq!(w.free_coins(), 0);
        // Back in the mempool meanwhile: the count starts again.
        w.forget_missing_spends(&with_split, 11, &none);
        w.forget_missing_spends(&empty, 12, &none);
        assert_eq!(w.free_coins(), 0);
        w.forget_missing_spends(&empty, 14, &none);
        assert_eq!(w.free_coins(), 1, "the coin is free again");
        assert_eq!(w.balance(), 200_000);
        assert!(!w.split_pending(), "the split's outputs are forgotten");
    }

    #[test]
    fn a_coin_a_live_bump_spends_stays_reserved_when_its_child_leaves_the_mempool() {
        let (mut w, ops) = wallet_with_coins(&[200_000]);
        w.split(4, 1).expect("a spend of the coin");
        let (empty, bumping) = (HashSet::new(), HashSet::from([ops[0]]));
        // Its spend left the mempool long ago, but a vault's bump will spend it again.
        for tip in 10..20 {
            w.forget_missing_spends(&empty, tip, &bumping);
        }
        assert_eq!(w.free_coins(), 0, "no other vault's bump may take it");
        // That vault is done with it: free again after the grace.
        w.forget_missing_spends(&empty, 20, &HashSet::new());
        w.forget_missing_spends(&empty, 22, &HashSet::new());
        assert_eq!(w.free_coins(), 1);
    }

    #[test]
    fn one_split_makes_at_most_its_bound_and_stays_standard() {
        // Enough for 2,000 coins at the stress feerate.
        let each = wallet_with_coins(&[]).0.reserve_per_vault();
        let (mut w, _) = wallet_with_coins(&[2_000 * each + 10_000_000]);
        w.set_market_feerate(1);
        let split = w.split(2_000, 1).expect("a split");
        let coins = split.output.iter().filter(|o| o.value.to_sat() == w.reserve_per_vault()).count();
        assert_eq!(coins, MAX_SPLIT_OUTPUTS);
        assert_eq!(split.output.len(), MAX_SPLIT_OUTPUTS + 1, "and its change");
        assert!(split.weight().to_wu() < 400_000, "within the standard weight: {}", split.weight());
    }

    #[test]
    fn a_split_pays_the_market_feerate() {
        let (mut w, _) = wallet_with_coins(&[2_000_000]);
        w.set_market_feerate(40);
        let split = w.split(4, 1).expect("a split");
        let paid = 2_000_000 - split.output.iter().map(|o| o.value.to_sat()).sum::<u64>();
        let vsize = split.vsize() as u64;
        assert!(paid >= 40 * vsize - vsize / 10, "{paid} sat for {vsize} vB");
        assert!(paid < 45 * vsize, "{paid} sat for {vsize} vB");
    }
}
