//! The hot path: which inputs of a block spend a watched outpoint.
//!
//! A tower for many clients watches two outpoints per vault (V, and U's output) across
//! millions of vaults, and must look at every input of every block. Two choices keep that
//! cheaper than even deserializing the block:
//!
//! - [`OutpointIndex`] stores a 64-bit fingerprint and a 32-bit vault number per outpoint in
//!   one open-addressing table (linear probing, at most half full): about 24 bytes per
//!   outpoint, 48 per vault, where a `HashSet<OutPoint>` alone costs ~67 bytes per outpoint.
//!   Txids are hashes, so their first bytes are already uniform; an attacker would need ~2^64
//!   work to forge a fingerprint match, and a match is only a candidate: the caller checks it
//!   against the vault's real outpoints.
//! - [`scan_block`] walks the block's serialization and looks up each prevout in place,
//!   without allocating a transaction; only transactions with a hit are deserialized.

use vigil_policy::bitcoin::consensus::deserialize;
use vigil_policy::bitcoin::{OutPoint, Transaction};

const EMPTY: u64 = 0;

/// Watched outpoints -> vault numbers, compactly.
#[derive(Debug, Clone)]
pub struct OutpointIndex {
    keys: Vec<u64>,
    values: Vec<u32>,
    len: usize,
}

impl Default for OutpointIndex {
    fn default() -> Self {
        OutpointIndex::with_capacity(16)
    }
}

fn fingerprint_parts(txid: &[u8; 32], vout: u32) -> u64 {
    let head = u64::from_le_bytes(txid[..8].try_into().expect("8 bytes"));
    let f = head ^ (vout as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if f == EMPTY {
        1
    } else {
        f
    }
}

/// The 64-bit fingerprint the index keeps of an outpoint (two outpoints with the same one are
/// one entry: a match is only a candidate).
pub fn fingerprint(op: &OutPoint) -> u64 {
    use vigil_policy::bitcoin::hashes::Hash;
    fingerprint_parts(op.txid.as_byte_array(), op.vout)
}

impl OutpointIndex {
    /// An index sized for `n` outpoints without growing.
    pub fn with_capacity(n: usize) -> OutpointIndex {
        let slots = (n.max(8) * 2).next_power_of_two();
        OutpointIndex { keys: vec![EMPTY; slots], values: vec![0; slots], len: 0 }
    }

    /// Number of outpoints.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory held.
    pub fn memory_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.values.capacity() * 4
    }

    fn slot(&self, f: u64) -> usize {
        // The fingerprint's high bits pick the slot; its low bits are uniform too.
        (f.rotate_left(29) as usize) & (self.keys.len() - 1)
    }

    /// Adds (or replaces) an outpoint.
    pub fn insert(&mut self, op: &OutPoint, vault: u32) {
        if (self.len + 1) * 2 > self.keys.len() {
            self.grow();
        }
        let f = fingerprint(op);
        let mut i = self.slot(f);
        loop {
            if self.keys[i] == EMPTY {
                self.keys[i] = f;
                self.values[i] = vault;
                self.len += 1;
                return;
            }
            if self.keys[i] == f {
                self.values[i] = vault;
                return;
            }
            i = (i + 1) & (self.keys.len() - 1);
        }
    }

    fn grow(&mut self) {
        let old_keys = std::mem::take(&mut self.keys);
        let old_values = std::mem::take(&mut self.values);
        let slots = old_keys.len() * 2;
        self.keys = vec![EMPTY; slots];
        self.values = vec![0; slots];
        for (k, v) in old_keys.into_iter().zip(old_values) {
            if k != EMPTY {
                let mut i = self.slot(k);
                while self.keys[i] != EMPTY {
                    i = (i + 1) & (slots - 1);
                }
                self.keys[i] = k;
                self.values[i] = v;
            }
        }
    }

    fn get_fingerprint(&self, f: u64) -> Option<u32> {
        let mut i = self.slot(f);
        loop {
            let k = self.keys[i];
            if k == f {
                return Some(self.values[i]);
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & (self.keys.len() - 1);
        }
    }

    /// The vault number of a (candidate) watched outpoint.
    pub fn get(&self, op: &OutPoint) -> Option<u32> {
        self.get_fingerprint(fingerprint(op))
    }

    fn get_raw(&self, prevout: &[u8]) -> Option<u32> {
        let txid: &[u8; 32] = prevout[..32].try_into().expect("36 bytes");
        let vout = u32::from_le_bytes(prevout[32..36].try_into().expect("36 bytes"));
        self.get_fingerprint(fingerprint_parts(txid, vout))
    }
}

/// A block that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed block at byte {0}")]
pub struct ScanError(pub usize);

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ScanError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(ScanError(self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<usize, ScanError> {
        let first = self.take(1)?[0];
        let n = match first {
            0xfd => u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64,
            0xfe => u32::from_le_bytes(self.take(4)?.try_into().expect("4")) as u64,
            0xff => u64::from_le_bytes(self.take(8)?.try_into().expect("8")),
            n => n as u64,
        };
        usize::try_from(n).ok().filter(|n| *n <= self.bytes.len()).ok_or(ScanError(self.at))
    }

    fn skip_varbytes(&mut self) -> Result<(), ScanError> {
        let n = self.varint()?;
        self.take(n).map(|_| ())
    }
}

/// The transactions of a serialized block that spend an outpoint in `index` (candidates) or
/// pay to `pays_to` (the tower's fee wallet), with their position in the block. Nothing else
/// is deserialized.
pub fn scan_block(
    raw: &[u8],
    index: &OutpointIndex,
    pays_to: Option<&[u8]>,
) -> Result<Vec<(usize, Transaction)>, ScanError> {
    let mut c = Cursor { bytes: raw, at: 0 };
    c.take(80)?;
    let count = c.varint()?;
    let mut hits = Vec::new();
    for position in 0..count {
        let start = c.at;
        c.take(4)?;
        let segwit = c.bytes.get(c.at) == Some(&0) && c.bytes.get(c.at + 1) == Some(&1);
        if segwit {
            c.take(2)?;
        }
        let inputs = c.varint()?;
        let mut hit = false;
        for _ in 0..inputs {
            let prevout = c.take(36)?;
            hit |= index.get_raw(prevout).is_some();
            c.skip_varbytes()?;
            c.take(4)?;
        }
        let outputs = c.varint()?;
        for _ in 0..outputs {
            c.take(8)?;
            let len = c.varint()?;
            let script = c.take(len)?;
            hit |= pays_to == Some(script);
        }
        if segwit {
            for _ in 0..inputs {
                let items = c.varint()?;
                for _ in 0..items {
                    c.skip_varbytes()?;
                }
            }
        }
        c.take(4)?;
        if hit {
            let tx: Transaction = deserialize(&raw[start..c.at]).map_err(|_| ScanError(start))?;
            hits.push((position, tx));
        }
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_policy::bitcoin::consensus::serialize;
    use vigil_policy::bitcoin::hashes::Hash;
    use vigil_policy::bitcoin::{
        Amount, Block, BlockHash, CompactTarget, ScriptBuf, TxIn, TxMerkleNode, TxOut, Txid, Witness,
    };

    fn op(i: u32) -> OutPoint {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_le_bytes());
        t[31] = 7;
        OutPoint {
            txid: Txid::from_byte_array(
                vigil_policy::bitcoin::hashes::sha256d::Hash::hash(&t).to_byte_array(),
            ),
            vout: i % 3,
        }
    }

    #[test]
    fn index_finds_what_it_holds_and_grows() {
        let mut index = OutpointIndex::with_capacity(4);
        for i in 0..10_000 {
            index.insert(&op(i), i);
        }
        assert_eq!(index.len(), 10_000);
        for i in 0..10_000 {
            assert_eq!(index.get(&op(i)), Some(i));
        }
        assert!((10_000..20_000).all(|i| index.get(&op(i)).is_none()));
    }

    #[test]
    fn scanner_finds_exactly_the_spending_transactions_segwit_or_not() {
        let mut index = OutpointIndex::default();
        index.insert(&op(5), 1);
        index.insert(&op(9), 2);
        let tx = |prev: OutPoint, witness: bool| Transaction {
            version: vigil_policy::bitcoin::transaction::Version::TWO,
            lock_time: vigil_policy::bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: prev,
                witness: if witness { Witness::from_slice(&[vec![1u8; 64]]) } else { Witness::new() },
                script_sig: if witness { ScriptBuf::new() } else { ScriptBuf::from_bytes(vec![0x51; 300]) },
                ..Default::default()
            }],
            output: vec![TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::from_bytes(vec![0x51; 260]),
            }],
        };
        let txs = vec![tx(op(1), true), tx(op(5), true), tx(op(2), false), tx(op(9), false), tx(op(3), true)];
        let block = Block {
            header: vigil_policy::bitcoin::block::Header {
                version: vigil_policy::bitcoin::block::Version::TWO,
                prev_blockhash: BlockHash::all_zeros(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: 0,
                bits: CompactTarget::from_consensus(0),
                nonce: 0,
            },
            txdata: txs.clone(),
        };
        let hits = scan_block(&serialize(&block), &index, None).unwrap();
        assert_eq!(hits, vec![(1, txs[1].clone()), (3, txs[3].clone())]);
        let raw = serialize(&block);
        assert!(scan_block(&raw[..raw.len() - 3], &index, None).is_err());
        let pays = scan_block(&raw, &OutpointIndex::default(), Some(&[0x51; 260])).unwrap();
        assert_eq!(pays.len(), 5, "every output pays that script");
    }
}
