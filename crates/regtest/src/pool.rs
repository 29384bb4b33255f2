//! The pending pool: what a node's mempool holds between `submit` and `mine`.
//!
//! Only bookkeeping lives here (entries, who spends what, parents and children); the checks a
//! transaction must pass to enter are in [`crate::chain`], which has the chain state they need.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bitcoin::{Amount, OutPoint, Transaction, Txid};

/// A transaction waiting in the pending pool.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    /// The transaction.
    pub tx: Arc<Transaction>,
    /// Inputs minus outputs.
    pub fee: Amount,
    /// Virtual size, in vbytes.
    pub vsize: u64,
}

impl PoolEntry {
    /// Fee per 1,000 vbytes, in sat.
    pub fn feerate_sat_per_kvb(&self) -> u64 {
        self.fee.to_sat() * 1000 / self.vsize.max(1)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Insertion order, which is also a topological order (parents enter before children).
    order: Vec<Txid>,
    entries: HashMap<Txid, PoolEntry>,
    /// Outpoint -> the pool transaction spending it.
    spends: HashMap<OutPoint, Txid>,
}

impl Pool {
    pub fn get(&self, txid: &Txid) -> Option<&PoolEntry> {
        self.entries.get(txid)
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// Entries in topological order.
    pub fn iter(&self) -> impl Iterator<Item = &PoolEntry> {
        self.order.iter().map(|t| &self.entries[t])
    }

    pub fn insert(&mut self, entry: PoolEntry) {
        let txid = entry.tx.compute_txid();
        for input in &entry.tx.input {
            self.spends.insert(input.previous_output, txid);
        }
        self.order.push(txid);
        self.entries.insert(txid, entry);
    }

    /// Pool transactions whose outputs `tx` spends.
    pub fn parents_of(&self, tx: &Transaction) -> Vec<Txid> {
        let mut parents: Vec<Txid> = tx
            .input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect();
        parents.sort();
        parents.dedup();
        parents
    }

    /// Pool transactions spending an output of `txid`.
    pub fn children_of(&self, txid: &Txid) -> Vec<Txid> {
        let Some(entry) = self.entries.get(txid) else { return Vec::new() };
        let mut children: Vec<Txid> = (0..entry.tx.output.len() as u32)
            .filter_map(|vout| self.spends.get(&OutPoint { txid: *txid, vout }).copied())
            .collect();
        children.sort();
        children.dedup();
        children
    }

    /// `txid` and everything in the pool descending from it.
    pub fn with_descendants(&self, txid: &Txid) -> HashSet<Txid> {
        let mut found = HashSet::new();
        let mut stack = vec![*txid];
        while let Some(t) = stack.pop() {
            if found.insert(t) {
                stack.extend(self.children_of(&t));
            }
        }
        found
    }

    /// Removes the given transactions.
    pub fn remove_all(&mut self, txids: &HashSet<Txid>) {
        for txid in txids {
            if let Some(entry) = self.entries.remove(txid) {
                for input in &entry.tx.input {
                    if self.spends.get(&input.previous_output) == Some(txid) {
                        self.spends.remove(&input.previous_output);
                    }
                }
            }
        }
        self.order.retain(|t| !txids.contains(t));
    }

    /// Empties the pool, returning its transactions in order.
    pub fn drain(&mut self) -> Vec<Arc<Transaction>> {
        let order = std::mem::take(&mut self.order);
        let mut entries = std::mem::take(&mut self.entries);
        self.spends.clear();
        order.into_iter().filter_map(|t| entries.remove(&t)).map(|e| e.tx).collect()
    }
}
