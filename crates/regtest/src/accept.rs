//! The pending pool's door: what `submit` checks before a transaction may wait for the next
//! block, as Bitcoin Core's `AcceptToMemoryPool` does: context-free rules, finality and BIP68
//! for the next block, coinbase maturity, Core's relay policy (standardness, TRUC topology,
//! replacement), then every script by the kernel.

use std::collections::HashSet;
use std::sync::Arc;

use bitcoin::{absolute, Amount, Sequence, Transaction, TxOut, Txid};

use crate::chain::{ChainEvent, RegtestChain, COINBASE_MATURITY};
use crate::pool::PoolEntry;
use crate::relay::{self, RelayError};
use crate::SubmitError;

/// `SEQUENCE_LOCKTIME_DISABLE_FLAG`, `..._TYPE_FLAG`, `..._MASK`, `..._GRANULARITY`.
const SEQ_DISABLE: u32 = 1 << 31;
const SEQ_TYPE_TIME: u32 = 1 << 22;
const SEQ_MASK: u32 = 0x0000_ffff;
const SEQ_GRANULARITY: u32 = 9;

impl RegtestChain {
    /// Offers a transaction to the pending pool, as `sendrawtransaction` would: it must be
    /// valid for the next block (scripts verified by the kernel with all consensus flags
    /// including taproot, timelocks, coinbase maturity) and pass Bitcoin Core's relay policy.
    /// A replacement must pay for what it evicts. Refused transactions change nothing.
    pub fn submit(&mut self, tx: &Transaction) -> Result<Txid, SubmitError> {
        self.accept(tx, true).map(|(txid, _)| txid)
    }

    /// [`RegtestChain::submit`], answering the fee the transaction pays.
    pub fn submit_for_fee(&mut self, tx: &Transaction) -> Result<Amount, SubmitError> {
        self.accept(tx, true).map(|(_, fee)| fee)
    }

    /// Runs every check of [`RegtestChain::submit`] without adding the transaction, as
    /// `testmempoolaccept` does. Returns the fee.
    pub fn test_accept(&self, tx: &Transaction) -> Result<Amount, SubmitError> {
        self.check(tx).map(|checked| checked.fee)
    }

    pub(crate) fn accept(&mut self, tx: &Transaction, announce: bool) -> Result<(Txid, Amount), SubmitError> {
        let checked = self.check(tx)?;
        let txid = tx.compute_txid();
        self.pool_sequence += checked.evicts.len() as u64 + 1;
        self.pool.remove_all(&checked.evicts);
        let tx = Arc::new(tx.clone());
        self.known_txs.insert(txid, tx.clone());
        self.pool.insert(PoolEntry { tx: tx.clone(), fee: checked.fee, vsize: checked.vsize });
        if announce {
            let sequence = self.pool_sequence;
            self.emit(ChainEvent::TransactionAccepted { tx, sequence });
        }
        Ok((txid, checked.fee))
    }

    fn check(&self, tx: &Transaction) -> Result<Checked, SubmitError> {
        let txid = tx.compute_txid();
        check_transaction(tx)?;
        if self.confirmed_txs.contains_key(&txid) || self.pool.contains(&txid) {
            return Err(SubmitError::AlreadyKnown(txid));
        }
        let next_height = self.height() + 1;
        let mtp = self.median_time_past();
        if !is_final(tx, next_height, mtp) {
            return Err(SubmitError::NonFinal { lock_time: tx.lock_time.to_consensus_u32(), next_height });
        }

        // Find every spent output: confirmed coins, or outputs of pool transactions.
        let mut spent = Vec::with_capacity(tx.input.len());
        let mut conflicts: HashSet<Txid> = HashSet::new();
        for (index, input) in tx.input.iter().enumerate() {
            let prev = input.previous_output;
            if let Some(coin) = self.utxos.get(&prev) {
                if coin.is_coinbase && next_height - coin.height < COINBASE_MATURITY {
                    return Err(SubmitError::ImmatureCoinbase {
                        input: index,
                        confirmations: next_height - coin.height,
                    });
                }
                spent.push((coin.txout.clone(), Some(coin.height)));
            } else if let Some(parent) = self.pool.get(&prev.txid) {
                let txout = parent
                    .tx
                    .output
                    .get(prev.vout as usize)
                    .ok_or(SubmitError::MissingInput { input: index, outpoint: prev })?;
                spent.push((txout.clone(), None));
            } else {
                return Err(SubmitError::MissingInput { input: index, outpoint: prev });
            }
            if let Some(other) = self.pool.spender(&prev) {
                conflicts.insert(other);
            }
        }

        let input_value: Amount = spent.iter().map(|(o, _)| o.value).sum();
        let output_value: Amount = tx.output.iter().map(|o| o.value).sum();
        let fee = input_value
            .checked_sub(output_value)
            .ok_or(SubmitError::OutputsExceedInputs { inputs: input_value, outputs: output_value })?;

        // BIP68 relative locks, against the block this transaction would go in.
        if tx.version.0 >= 2 {
            for (index, (input, (_, coin_height))) in tx.input.iter().zip(&spent).enumerate() {
                let seq = input.sequence.0;
                if seq & SEQ_DISABLE != 0 {
                    continue;
                }
                let coin_height = coin_height.unwrap_or(next_height);
                let value = seq & SEQ_MASK;
                if seq & SEQ_TYPE_TIME != 0 {
                    let coin_time = self.mtp_at(coin_height.saturating_sub(1).min(self.height()));
                    let min_time = (coin_time as i64) + ((value as i64) << SEQ_GRANULARITY) - 1;
                    if (mtp as i64) <= min_time {
                        return Err(SubmitError::SequenceLockTime {
                            input: index,
                            required_mtp: min_time + 1,
                            mtp,
                        });
                    }
                } else if (next_height as i64) < coin_height as i64 + value as i64 {
                    return Err(SubmitError::SequenceLock {
                        input: index,
                        first_valid_height: coin_height + value,
                        next_height,
                    });
                }
            }
        }

        // Relay policy.
        relay::check_standard(tx, fee)?;
        for (index, (prevout, _)) in spent.iter().enumerate() {
            relay::check_witness(index, tx, prevout)?;
        }
        let vsize = relay::vsize(tx);
        // A zero-fee TRUC parent needs package relay (its child pays); alone it is refused.
        relay::check_min_relay_fee(fee, vsize)?;
        let pool_parents = self.pool.parents_of(tx);
        let mut evicts: HashSet<Txid> = HashSet::new();
        for c in &conflicts {
            evicts.extend(self.pool.with_descendants(c));
        }
        if let Some(sibling) = self.check_truc(tx, &pool_parents, vsize, &evicts)? {
            evicts.extend(self.pool.with_descendants(&sibling));
        }
        if !evicts.is_empty() {
            self.check_replacement(&pool_parents, fee, vsize, &conflicts, &evicts)?;
        }

        // Consensus scripts, by the kernel.
        self.verify_scripts(tx, &spent)?;
        Ok(Checked { fee, vsize, evicts })
    }

    /// `SingleTRUCChecks`. Returns a sibling to evict when sibling eviction applies.
    fn check_truc(
        &self,
        tx: &Transaction,
        parents: &[Txid],
        vsize: u64,
        evicting: &HashSet<Txid>,
    ) -> Result<Option<Txid>, RelayError> {
        let truc = |v: i32| v == relay::TRUC_VERSION;
        let txid = tx.compute_txid();
        if !truc(tx.version.0) {
            if let Some(p) = parents.iter().find(|p| truc(self.pool.get(p).expect("parent").tx.version.0)) {
                return Err(RelayError::Truc(format!(
                    "non-version=3 tx {txid} cannot spend from version=3 tx {p}"
                )));
            }
            return Ok(None);
        }
        if vsize > relay::TRUC_MAX_VSIZE {
            return Err(RelayError::Truc(format!(
                "version=3 tx {txid} is too big: {vsize} > {} virtual bytes",
                relay::TRUC_MAX_VSIZE
            )));
        }
        if parents.len() > 1 {
            return Err(RelayError::Truc(format!("tx {txid} would have too many ancestors")));
        }
        let Some(parent) = parents.first() else { return Ok(None) };
        let parent_entry = self.pool.get(parent).expect("parent");
        if !truc(parent_entry.tx.version.0) {
            return Err(RelayError::Truc(format!(
                "version=3 tx {txid} cannot spend from non-version=3 tx {parent}"
            )));
        }
        if !self.pool.parents_of(&parent_entry.tx).is_empty() {
            return Err(RelayError::Truc(format!("tx {txid} would have too many ancestors")));
        }
        if vsize > relay::TRUC_CHILD_MAX_VSIZE {
            return Err(RelayError::Truc(format!(
                "version=3 child tx {txid} is too big: {vsize} > {} virtual bytes",
                relay::TRUC_CHILD_MAX_VSIZE
            )));
        }
        let siblings: Vec<Txid> =
            self.pool.children_of(parent).into_iter().filter(|c| !evicting.contains(c)).collect();
        match siblings.as_slice() {
            [] => Ok(None),
            // Sibling eviction: the newcomer may replace the only other child, paying for it.
            [sibling] => Ok(Some(*sibling)),
            _ => Err(RelayError::Truc(format!("tx {parent} would exceed descendant count limit"))),
        }
    }

    /// The replacement rules (BIP125 as Core applies them with full RBF).
    fn check_replacement(
        &self,
        parents: &[Txid],
        fee: Amount,
        vsize: u64,
        direct: &HashSet<Txid>,
        evicts: &HashSet<Txid>,
    ) -> Result<(), RelayError> {
        if parents.iter().any(|p| evicts.contains(p)) {
            return Err(RelayError::Replacement(
                "bad-txns-spends-conflicting-tx: spends an output of a transaction it replaces".into(),
            ));
        }
        if evicts.len() > 100 {
            return Err(RelayError::Replacement(format!(
                "too many potential replacements: {}",
                evicts.len()
            )));
        }
        let new_rate = fee.to_sat() * 1000 / vsize.max(1);
        for c in direct {
            let old = self.pool.get(c).expect("conflict");
            if new_rate <= old.feerate_sat_per_kvb() {
                return Err(RelayError::Replacement(format!(
                    "replacement feerate {new_rate} sat/kvB does not beat {c}'s {} sat/kvB",
                    old.feerate_sat_per_kvb()
                )));
            }
        }
        let evicted_fees: u64 = evicts.iter().map(|t| self.pool.get(t).expect("evicted").fee.to_sat()).sum();
        let required = evicted_fees + relay::fee_for(relay::INCREMENTAL_RELAY_FEE_SAT_PER_KVB, vsize);
        if fee.to_sat() < required {
            return Err(RelayError::Replacement(format!(
                "rejecting replacement: fee {} sat < {required} sat (the {evicted_fees} sat it evicts plus the incremental relay fee)",
                fee.to_sat()
            )));
        }
        Ok(())
    }

    fn verify_scripts(&self, tx: &Transaction, spent: &[(TxOut, Option<u32>)]) -> Result<(), SubmitError> {
        let outputs: Vec<TxOut> = spent.iter().map(|(o, _)| o.clone()).collect();
        crate::kernel::verify_inputs(tx, &outputs).map_err(|e| match e {
            crate::kernel::ScriptError::Input { input, detail } => SubmitError::Script { input, detail },
            other => SubmitError::Kernel(other.to_string()),
        })
    }
}

struct Checked {
    fee: Amount,
    vsize: u64,
    evicts: HashSet<Txid>,
}

/// `CheckTransaction`: the context-free consensus rules, refused early with Core's reasons.
fn check_transaction(tx: &Transaction) -> Result<(), SubmitError> {
    let bad = |r: &'static str| Err(SubmitError::Invalid(r));
    if tx.input.is_empty() {
        return bad("bad-txns-vin-empty");
    }
    if tx.output.is_empty() {
        return bad("bad-txns-vout-empty");
    }
    if tx.is_coinbase() {
        return bad("coinbase: a coinbase cannot be submitted");
    }
    let mut total = 0u64;
    for o in &tx.output {
        total = total.saturating_add(o.value.to_sat());
        if o.value > Amount::MAX_MONEY || total > Amount::MAX_MONEY.to_sat() {
            return bad("bad-txns-txouttotal-toolarge");
        }
    }
    let mut seen = HashSet::new();
    if !tx.input.iter().all(|i| seen.insert(i.previous_output)) {
        return bad("bad-txns-inputs-duplicate");
    }
    if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return bad("bad-txns-prevout-null");
    }
    Ok(())
}

/// `IsFinalTx` for the block at `height` whose previous block's MTP is `mtp`.
fn is_final(tx: &Transaction, height: u32, mtp: u32) -> bool {
    let lock = tx.lock_time.to_consensus_u32();
    if lock == 0 {
        return true;
    }
    let reached = if lock < absolute::LOCK_TIME_THRESHOLD { lock < height } else { lock < mtp };
    reached || tx.input.iter().all(|i| i.sequence == Sequence::MAX)
}
