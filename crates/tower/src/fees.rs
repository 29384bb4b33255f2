//! The tower's fee wallet: a small hot wallet whose only use is to pay, through a cancel's or
//! emergency's pay-to-anchor output, for what the pre-signed ladder cannot (ADR 0002).
//!
//! It holds coins at one key-path taproot address, kept pre-split (it splits its largest coin
//! itself) so that each concurrent bump has its own confirmed coin (a TRUC child cannot chain on another unconfirmed child), and
//! sized for every watched vault at a stress feerate: below that, the tower alarms. A leaked
//! fee key loses the fee wallet, never a vault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::key::Keypair;
use vigil_policy::bitcoin::secp256k1::Secp256k1;
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut};
use vigil_policy::{pay_to_anchor, sign_key_path};

/// Virtual size of a bump: the anchor and one key-path input, one key-path output.
pub const BUMP_VBYTES: u64 = 11 + 41 + 58 + 43;

/// How the fee wallet is sized and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePolicy {
    /// The feerate the wallet must be able to pay for every vault at once, sat/vB.
    pub stress_sat_per_vb: u64,
    /// The package feerate a bump aims for, sat/vB.
    pub bump_sat_per_vb: u64,
}

/// A coin of the fee wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeCoin {
    /// Its value, sat.
    pub value: u64,
    /// Confirmed at this height (None while pending).
    pub height: Option<u32>,
    /// Spent by a bump the tower made and not yet confirmed.
    pub reserved: bool,
}

/// The fee wallet.
#[derive(Debug, Clone)]
pub struct FeeWallet {
    keypair: Keypair,
    script: ScriptBuf,
    policy: FeePolicy,
    coins: BTreeMap<OutPoint, FeeCoin>,
}

impl FeeWallet {
    /// The wallet of `keypair`.
    pub fn new(keypair: Keypair, policy: FeePolicy) -> FeeWallet {
        let secp = Secp256k1::new();
        let script = ScriptBuf::new_p2tr(&secp, keypair.x_only_public_key().0, None);
        FeeWallet { keypair, script, policy, coins: BTreeMap::new() }
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
        self.coins.values().filter(|c| c.height.is_some() && !c.reserved).map(|c| c.value).sum()
    }

    /// Confirmed coins free for a bump.
    pub fn free_coins(&self) -> usize {
        self.coins.values().filter(|c| c.height.is_some() && !c.reserved).count()
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
        for input in &tx.input {
            changed |= self.coins.remove(&input.previous_output).is_some();
        }
        let txid = tx.compute_txid();
        for (vout, out) in tx.output.iter().enumerate() {
            if out.script_pubkey == self.script {
                let coin = FeeCoin { value: out.value.to_sat(), height, reserved: false };
                self.coins.insert(OutPoint { txid, vout: vout as u32 }, coin);
                changed = true;
            }
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
    /// change), so concurrent bumps each have their own confirmed coin. `None` when no coin is
    /// big enough.
    pub fn split(&mut self, count: usize) -> Option<Transaction> {
        let each = self.reserve_per_vault();
        let (coin_op, coin) = self
            .coins
            .iter()
            .filter(|(_, c)| c.height.is_some() && !c.reserved)
            .max_by_key(|(_, c)| c.value)
            .map(|(op, c)| (*op, *c))?;
        // 2 sat/vB: a split is not urgent; it only has to confirm before it is needed.
        let fee = (11 + 58 + 43 * (count as u64 + 1)) * 2;
        let count = count.min(((coin.value.saturating_sub(fee)) / each) as usize);
        if count < 2 {
            return None;
        }
        let change = coin.value - fee - each * count as u64;
        let mut output =
            vec![TxOut { value: Amount::from_sat(each), script_pubkey: self.script.clone() }; count];
        if change >= 330 {
            output.push(TxOut { value: Amount::from_sat(change), script_pubkey: self.script.clone() });
        }
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin_op,
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..Default::default()
            }],
            output,
        };
        let prevout = TxOut { value: Amount::from_sat(coin.value), script_pubkey: self.script.clone() };
        sign_key_path(&mut tx, 0, &[prevout], &self.keypair).ok()?;
        if let Some(c) = self.coins.get_mut(&coin_op) {
            c.reserved = true;
        }
        Some(tx)
    }

    /// A child of `parent` (which pays `parent_fee`) spending its anchor (output 1) and a fee
    /// coin, so the package reaches `sat_per_vb`. With `coin`, that coin is spent again (a
    /// replacement of an earlier child, or a new parent for the same vault); without, the
    /// smallest free coin that covers it, else the largest. The feerate is lowered to what the
    /// coin affords (and the result says so).
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
            None => {
                // The smallest coin that pays the whole feerate, else the largest there is.
                let free = || self.coins.iter().filter(|(_, c)| c.height.is_some() && !c.reserved);
                let covers = |c: &&FeeCoin| c.value + 240 >= child_fee_at(sat_per_vb) + 330;
                free()
                    .filter(|(_, c)| covers(c))
                    .min_by_key(|(_, c)| c.value)
                    .or_else(|| free().max_by_key(|(_, c)| c.value))
                    .map(|(op, c)| (*op, c.value))?
            }
        };
        // The change output stays above dust: that bounds what this coin can pay.
        let affordable = (coin_value + 240).checked_sub(330 + BUMP_VBYTES)? + BUMP_VBYTES;
        let rate = sat_per_vb.min((affordable + parent_fee) / package_vbytes);
        if rate == 0 {
            return None;
        }
        let child_fee = child_fee_at(rate);
        let anchor = OutPoint { txid: parent.compute_txid(), vout: 1 };
        let prevouts = [
            TxOut { value: Amount::from_sat(240), script_pubkey: pay_to_anchor() },
            TxOut { value: Amount::from_sat(coin_value), script_pubkey: self.script.clone() },
        ];
        let mut tx = Transaction {
            version: Version(3),
            lock_time: absolute::LockTime::ZERO,
            input: [anchor, coin_op]
                .iter()
                .map(|op| TxIn {
                    previous_output: *op,
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    ..Default::default()
                })
                .collect(),
            output: vec![TxOut {
                value: Amount::from_sat(coin_value + 240 - child_fee),
                script_pubkey: self.script.clone(),
            }],
        };
        sign_key_path(&mut tx, 1, &prevouts, &self.keypair).ok()?;
        if let Some(c) = self.coins.get_mut(&coin_op) {
            c.reserved = true;
        }
        let reached = (parent_fee + child_fee) / package_vbytes;
        Some(AnchorBump { tx, sat_per_vb: reached, coin: coin_op, coin_value, ceiling: rate < sat_per_vb })
    }

    /// The feerate a bump starts at, sat/vB.
    pub fn first_rate(&self) -> u64 {
        self.policy.bump_sat_per_vb
    }
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
