//! Core's mempool RPCs that read the pending pool: `getrawmempool` (plain, with
//! `mempool_sequence`, verbose), `getmempoolentry` and `getmempoolinfo`.
//!
//! Entries carry what Core computes from its transaction graph: ancestors and descendants
//! (each counting the transaction itself), and the chunk the transaction is mined in, found as
//! Core's cluster mempool finds it (see `Pool::chunks`).

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use vigil_regtest::bitcoin::{Amount, Txid};
use vigil_regtest::relay::{
    INCREMENTAL_RELAY_FEE_SAT_PER_KVB, MAX_OP_RETURN_RELAY, MIN_RELAY_FEE_SAT_PER_KVB,
};
use vigil_regtest::{PoolEntry, RegtestChain};

use super::{code, err, Call, Control, RpcError};
use crate::json::btc;

/// `DEFAULT_MAX_MEMPOOL_SIZE_MB`, in bytes.
const MAX_MEMPOOL_BYTES: u64 = 300_000_000;
/// `DEFAULT_CLUSTER_LIMIT`.
const CLUSTER_LIMIT: u64 = 64;
/// `DEFAULT_CLUSTER_SIZE_LIMIT_KVB`, in vbytes.
const CLUSTER_SIZE_LIMIT: u64 = 101_000;

/// When a pool transaction arrived, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Unix time, seconds.
    pub time: u64,
    /// The tip's height then.
    pub height: u32,
    /// Sent by an RPC call (`sendrawtransaction`, `submitpackage`): Core keeps such a
    /// transaction "unbroadcast" until a peer asks for it, which on a node without peers is
    /// never. One that came back from a disconnected block is not.
    pub unbroadcast: bool,
}

/// The arrival of each pool transaction, kept beside the chain (which does not record it).
#[derive(Debug, Default)]
pub struct Arrivals(HashMap<Txid, Arrival>);

impl Arrivals {
    /// Notes the transactions that entered the pool since the last look, and forgets those
    /// that left; `broadcast` when the call that ran was an RPC broadcast.
    pub fn observe(&mut self, chain: &RegtestChain, broadcast: bool) {
        let pending: Vec<Txid> = chain.pending().iter().map(|e| e.tx.compute_txid()).collect();
        self.0.retain(|t, _| pending.contains(t));
        let arrival = Arrival { time: now(), height: chain.height(), unbroadcast: broadcast };
        for txid in pending {
            self.0.entry(txid).or_insert(arrival);
        }
    }

    /// A pool transaction's arrival.
    pub fn get(&self, txid: &Txid) -> Option<Arrival> {
        self.0.get(txid).copied()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn execute(chain: &RegtestChain, control: &dyn Control, call: Call) -> Result<Value, RpcError> {
    let pool = Pool::new(chain.pending());
    let arrival = |i: usize| {
        control.arrival(&pool.txids[i]).unwrap_or(Arrival {
            time: now(),
            height: chain.height(),
            unbroadcast: false,
        })
    };
    match call {
        Call::GetRawMempool { verbose: true, .. } => {
            let mut entries = Map::new();
            for (i, chunk) in pool.chunks().into_iter().enumerate() {
                entries.insert(pool.txids[i].to_string(), pool.entry_json(i, chunk, arrival(i)));
            }
            Ok(Value::Object(entries))
        }
        Call::GetRawMempool { sequence, .. } => {
            let txids: Vec<String> = pool.txids.iter().map(ToString::to_string).collect();
            if sequence {
                return Ok(json!({"txids": txids, "mempool_sequence": chain.pool_sequence()}));
            }
            Ok(json!(txids))
        }
        Call::GetMempoolEntry(txid) => {
            let i = *pool
                .index
                .get(&txid)
                .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"))?;
            Ok(pool.entry_json(i, pool.chunks()[i], arrival(i)))
        }
        Call::GetMempoolInfo => {
            let kvb = |sat: u64| btc(Amount::from_sat(sat));
            let unbroadcast = (0..pool.entries.len()).filter(|&i| arrival(i).unbroadcast).count();
            Ok(json!({
                // Nothing to load: the pool is not persisted.
                "loaded": true,
                "size": pool.entries.len(),
                "bytes": pool.entries.iter().map(|e| e.vsize).sum::<u64>(),
                // Our own footprint: the transactions as held, and an entry's bookkeeping.
                "usage": pool.entries.iter().map(|e| e.tx.total_size() + 256).sum::<usize>(),
                "total_fee": btc(pool.entries.iter().map(|e| e.fee).sum()),
                "maxmempool": MAX_MEMPOOL_BYTES,
                // Never full, so never above the relay minimum.
                "mempoolminfee": kvb(MIN_RELAY_FEE_SAT_PER_KVB),
                "minrelaytxfee": kvb(MIN_RELAY_FEE_SAT_PER_KVB),
                "incrementalrelayfee": kvb(INCREMENTAL_RELAY_FEE_SAT_PER_KVB),
                "unbroadcastcount": unbroadcast,
                "permitbaremultisig": true,
                "maxdatacarriersize": MAX_OP_RETURN_RELAY,
                "limitclustercount": CLUSTER_LIMIT,
                "limitclustersize": CLUSTER_SIZE_LIMIT,
                // Clusters are linearized whole on every answer.
                "optimal": true,
            }))
        }
        other => unreachable!("not a mempool call: {other:?}"),
    }
}

/// The pool as a graph: entries in topological order, with parents and children by index.
struct Pool {
    entries: Vec<PoolEntry>,
    txids: Vec<Txid>,
    index: HashMap<Txid, usize>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
}

impl Pool {
    fn new(entries: Vec<PoolEntry>) -> Pool {
        let txids: Vec<Txid> = entries.iter().map(|e| e.tx.compute_txid()).collect();
        let index: HashMap<Txid, usize> = txids.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        let mut parents = vec![Vec::new(); entries.len()];
        let mut children = vec![Vec::new(); entries.len()];
        for (i, e) in entries.iter().enumerate() {
            let mut ps: Vec<usize> =
                e.tx.input.iter().filter_map(|i| index.get(&i.previous_output.txid).copied()).collect();
            ps.sort_unstable();
            ps.dedup();
            for &p in &ps {
                children[p].push(i);
            }
            parents[i] = ps;
        }
        Pool { entries, txids, index, parents, children }
    }

    /// `i` and everything reachable from it along `edges`.
    fn closure(&self, i: usize, edges: &[&[Vec<usize>]]) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        let mut stack = vec![i];
        while let Some(t) = stack.pop() {
            if found.insert(t) {
                for e in edges {
                    stack.extend(&e[t]);
                }
            }
        }
        found
    }

    fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, &[&self.parents])
    }

    fn descendants(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, &[&self.children])
    }

    fn weight(&self, i: usize) -> u64 {
        self.entries[i].tx.weight().to_wu()
    }

    /// Fee and weight of a set.
    fn feerate(&self, set: &BTreeSet<usize>) -> (u64, u64) {
        set.iter().fold((0, 0), |(f, w), &i| (f + self.entries[i].fee.to_sat(), w + self.weight(i)))
    }

    /// The fee and weight of the chunk each entry is mined in (`GetMainChunkFeerate`),
    /// cluster by cluster: linearize the cluster by repeatedly taking the remaining ancestor
    /// set with the best feerate, then merge each chunk into the one before while it pays more.
    /// Quadratic in a cluster's size.
    fn chunks(&self) -> Vec<(u64, u64)> {
        let higher =
            |a: (u64, u64), b: (u64, u64)| (a.0 as u128) * (b.1 as u128) > (b.0 as u128) * (a.1 as u128);
        let own = |t: usize| (self.entries[t].fee.to_sat(), self.weight(t));
        let mut out = vec![(0, 0); self.entries.len()];
        let mut done = vec![false; self.entries.len()];
        for start in 0..self.entries.len() {
            if done[start] {
                continue;
            }
            let mut remaining = self.closure(start, &[&self.parents, &self.children]);
            // Each remaining transaction's remaining ancestor set, as fee and weight.
            let mut sets: HashMap<usize, (u64, u64)> =
                remaining.iter().map(|&t| (t, self.feerate(&self.ancestors(t)))).collect();
            let mut order = Vec::new();
            while let Some(&best) =
                remaining.iter().reduce(|a, b| if higher(sets[b], sets[a]) { b } else { a })
            {
                // Indices follow the pool's order, which is topological.
                let taken: Vec<usize> = self.ancestors(best).intersection(&remaining).copied().collect();
                for &t in &taken {
                    remaining.remove(&t);
                    let (fee, weight) = own(t);
                    for d in self.descendants(t) {
                        if let Some(set) = sets.get_mut(&d).filter(|_| remaining.contains(&d)) {
                            *set = (set.0 - fee, set.1 - weight);
                        }
                    }
                }
                order.extend(taken);
            }
            let mut chunks: Vec<((u64, u64), Vec<usize>)> = Vec::new();
            for t in order {
                let mut chunk = (own(t), vec![t]);
                while let Some(last) = chunks.last().filter(|last| higher(chunk.0, last.0)) {
                    chunk.0 = (chunk.0 .0 + last.0 .0, chunk.0 .1 + last.0 .1);
                    chunk.1.extend(chunks.pop().expect("checked").1);
                }
                chunks.push(chunk);
            }
            for (feerate, members) in chunks {
                for t in members {
                    out[t] = feerate;
                    done[t] = true;
                }
            }
        }
        out
    }

    /// Core's mempool entry (`entryToJSON`), without `bip125-replaceable`, which Core gives
    /// only with `-deprecatedrpc=bip125`.
    fn entry_json(&self, i: usize, chunk: (u64, u64), arrival: Arrival) -> Value {
        let e = &self.entries[i];
        let sum = |set: &BTreeSet<usize>| {
            let vsize: u64 = set.iter().map(|&t| self.entries[t].vsize).sum();
            let fee: Amount = set.iter().map(|&t| self.entries[t].fee).sum();
            (set.len(), vsize, fee)
        };
        let (ancestors, ancestor_size, ancestor_fees) = sum(&self.ancestors(i));
        let (descendants, descendant_size, descendant_fees) = sum(&self.descendants(i));
        let (chunk_fee, chunk_weight) = chunk;
        let txids = |ids: &[usize]| {
            let mut v: Vec<String> = ids.iter().map(|&t| self.txids[t].to_string()).collect();
            v.sort();
            v
        };
        json!({
            "vsize": e.vsize,
            "weight": self.weight(i),
            "time": arrival.time,
            "height": arrival.height,
            "descendantcount": descendants,
            "descendantsize": descendant_size,
            "ancestorcount": ancestors,
            "ancestorsize": ancestor_size,
            "wtxid": e.tx.compute_wtxid().to_string(),
            "chunkweight": chunk_weight,
            // No prioritisetransaction here: modified fees are the fees.
            "fees": {
                "base": btc(e.fee),
                "modified": btc(e.fee),
                "ancestor": btc(ancestor_fees),
                "descendant": btc(descendant_fees),
                "chunk": btc(Amount::from_sat(chunk_fee)),
            },
            "depends": txids(&self.parents[i]),
            "spentby": txids(&self.children[i]),
            "unbroadcast": arrival.unbroadcast,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_regtest::bitcoin::absolute::LockTime;
    use vigil_regtest::bitcoin::transaction::Version;
    use vigil_regtest::bitcoin::{OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

    use super::*;

    /// A transaction spending `parents`' first outputs (or a made-up coin), paying `fee`.
    fn entry(parents: &[&PoolEntry], fee: u64, tag: u8) -> PoolEntry {
        let mut input: Vec<TxIn> = parents
            .iter()
            .map(|p| TxIn {
                previous_output: OutPoint { txid: p.tx.compute_txid(), vout: 0 },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            })
            .collect();
        if input.is_empty() {
            input.push(TxIn { script_sig: ScriptBuf::from_bytes(vec![tag]), ..TxIn::default() });
        }
        let output = vec![TxOut { value: Amount::from_sat(1_000), script_pubkey: ScriptBuf::new() }];
        let tx = Transaction { version: Version::TWO, lock_time: LockTime::ZERO, input, output };
        let vsize = tx.weight().to_vbytes_ceil();
        PoolEntry { tx: Arc::new(tx), fee: Amount::from_sat(fee), vsize }
    }

    #[test]
    fn a_child_paying_for_its_parent_shares_its_chunk() {
        let parent = entry(&[], 1_000, 1);
        let rich = entry(&[&parent], 9_000, 0);
        let poor = entry(&[&parent], 100, 0);
        let alone = entry(&[], 500, 2);
        let pool = Pool::new(vec![parent.clone(), rich.clone(), poor.clone(), alone.clone()]);
        let w = |e: &PoolEntry| e.tx.weight().to_wu();
        let chunks = pool.chunks();
        assert_eq!(chunks[0], (10_000, w(&parent) + w(&rich)), "parent and the child paying for it");
        assert_eq!(chunks[1], chunks[0]);
        assert_eq!(chunks[2], (100, w(&poor)), "a cheaper child is mined after");
        assert_eq!(chunks[3], (500, w(&alone)));
        let (ancestors, descendants) = (pool.ancestors(2), pool.descendants(0));
        assert_eq!((ancestors.len(), descendants.len()), (2, 3), "each counting itself");
    }
}
