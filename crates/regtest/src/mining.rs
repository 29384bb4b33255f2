//! Mining: blocks assembled here (BIP34 height, witness commitment, regtest proof of work) and
//! handed to the kernel, which alone decides; the chain's own view (UTXOs, confirmations, the
//! pending pool) follows the kernel's active tip, block by block, across reorgs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::blockdata::block::{Header, Version as BlockVersion};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness,
};
use bitcoinkernel::prelude::*;

use crate::chain::*;
use crate::{kernel_log, ChainError};

/// Regtest halves the subsidy every 150 blocks.
const REGTEST_HALVING_INTERVAL: u32 = 150;
/// Regtest's proof-of-work limit, which every block we mine uses.
const REGTEST_BITS: u32 = 0x207f_ffff;
/// Weight kept free for the coinbase when filling a block from the pool.
const COINBASE_RESERVED_WEIGHT: u64 = 8_000;
const MAX_BLOCK_WEIGHT: u64 = 4_000_000;

/// What to mine; see [`RegtestChain::block`].
pub struct BlockBuilder<'a> {
    chain: &'a mut RegtestChain,
    parent: Option<BlockHash>,
    txs: Vec<Transaction>,
    take_pending: bool,
    coinbase_script: Option<ScriptBuf>,
    time: Option<u32>,
}

impl BlockBuilder<'_> {
    /// Builds on `parent` instead of the tip: a competing branch.
    pub fn on(mut self, parent: BlockHash) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Includes these transactions (after any pending ones), unchecked: the kernel judges them.
    pub fn with_transactions(mut self, txs: impl IntoIterator<Item = Transaction>) -> Self {
        self.txs.extend(txs);
        self
    }

    /// Fills the block from the pending pool first (the default for blocks on the tip).
    pub fn with_pending(mut self, yes: bool) -> Self {
        self.take_pending = yes;
        self
    }

    /// Pays the coinbase to `script` instead of the chain's faucet.
    pub fn coinbase_to(mut self, script: ScriptBuf) -> Self {
        self.coinbase_script = Some(script);
        self
    }

    /// Uses this block timestamp.
    pub fn time(mut self, unix_seconds: u32) -> Self {
        self.time = Some(unix_seconds);
        self
    }

    /// Mines the block and hands it to the kernel.
    pub fn mine(self) -> Result<MinedBlock, ChainError> {
        let BlockBuilder { chain, parent, txs, take_pending, coinbase_script, time } = self;
        chain.mine_block(parent, txs, take_pending, coinbase_script, time)
    }
}

impl RegtestChain {
    /// Starts a block on the tip, filled from the pending pool, paying the faucet.
    pub fn block(&mut self) -> BlockBuilder<'_> {
        BlockBuilder {
            chain: self,
            parent: None,
            txs: Vec::new(),
            take_pending: true,
            coinbase_script: None,
            time: None,
        }
    }

    /// Mines `n` blocks on the tip (the first takes the pending pool), paying the faucet.
    pub fn mine(&mut self, n: u32) -> Result<Vec<BlockHash>, ChainError> {
        (0..n).map(|_| self.block().mine().map(|b| b.hash)).collect()
    }

    /// Mines until the tip is at `height`.
    pub fn mine_to_height(&mut self, height: u32) -> Result<(), ChainError> {
        let n = height.saturating_sub(self.height());
        self.mine(n).map(|_| ())
    }

    fn mine_block(
        &mut self,
        parent: Option<BlockHash>,
        extra: Vec<Transaction>,
        take_pending: bool,
        coinbase_script: Option<ScriptBuf>,
        time: Option<u32>,
    ) -> Result<MinedBlock, ChainError> {
        let parent = parent.unwrap_or_else(|| self.tip());
        let parent_height = self.block_height(&parent).ok_or(ChainError::UnknownBlock(parent))?;
        let parent_time = self.blocks[&parent].header.time;
        let height = parent_height + 1;

        let mut txs: Vec<Transaction> = Vec::new();
        let mut weight = COINBASE_RESERVED_WEIGHT;
        if take_pending && parent == self.tip() {
            for entry in self.pool.iter() {
                let w = entry.tx.weight().to_wu();
                if weight + w > MAX_BLOCK_WEIGHT {
                    break;
                }
                weight += w;
                txs.push((*entry.tx).clone());
            }
        }
        txs.extend(extra);

        // Fees, priced from every transaction we know (this block's own earlier ones too).
        let mut fees = Amount::ZERO;
        let mut in_block: HashMap<Txid, &Transaction> = HashMap::new();
        for tx in &txs {
            let mut input_value = Amount::ZERO;
            for input in &tx.input {
                let prev = input.previous_output;
                let value = in_block
                    .get(&prev.txid)
                    .map(|t| &**t)
                    .or_else(|| self.known_txs.get(&prev.txid).map(|t| &**t))
                    .and_then(|t| t.output.get(prev.vout as usize))
                    .map(|o| o.value)
                    .ok_or(ChainError::UnknownInput(prev))?;
                input_value += value;
            }
            let output_value: Amount = tx.output.iter().map(|o| o.value).sum();
            fees += input_value.checked_sub(output_value).unwrap_or(Amount::ZERO);
            in_block.insert(tx.compute_txid(), tx);
        }

        let subsidy = Amount::from_sat((50 * 100_000_000) >> (height / REGTEST_HALVING_INTERVAL).min(63));
        self.extra_nonce += 1;
        let script_sig = Builder::new()
            .push_int(height as i64)
            .push_slice(PushBytesBuf::try_from(self.extra_nonce.to_le_bytes().to_vec()).expect("8 bytes"))
            .into_script();
        let mut coinbase = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[[0u8; 32]]),
            }],
            output: vec![TxOut {
                value: subsidy + fees,
                script_pubkey: coinbase_script.unwrap_or_else(|| self.faucet_script.clone()),
            }],
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0);
        // Ten minutes per block, but never past the wall clock unless the chain already is.
        let time = time.unwrap_or_else(|| (parent_time + 600).min(now.max(parent_time + 1)));
        let mut block = Block {
            header: Header {
                version: BlockVersion::from_consensus(0x2000_0000),
                prev_blockhash: parent,
                merkle_root: TxMerkleNode::all_zeros(),
                time,
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase.clone()).chain(txs).collect(),
        };
        let witness_root = block.witness_root().expect("a block with a coinbase has a witness root");
        let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
        let mut commitment_script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        commitment_script.extend_from_slice(commitment.as_byte_array());
        coinbase
            .output
            .push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(commitment_script) });
        block.txdata[0] = coinbase;
        block.header.merkle_root = block.compute_merkle_root().expect("non-empty");
        let target = block.header.target();
        while block.header.validate_pow(target).is_err() {
            block.header.nonce += 1;
        }
        self.process(block, height)
    }

    /// Hands a block to the kernel and follows whatever it decides.
    fn process(&mut self, block: Block, height: u32) -> Result<MinedBlock, ChainError> {
        let hash = block.block_hash();
        let bytes = serialize(&block);
        let kblock = bitcoinkernel::Block::new(&bytes).map_err(|e| ChainError::Kernel(e.to_string()))?;
        let old_tip_height = self.height();
        let block = Arc::new(block);
        self.blocks.insert(hash, block.clone());
        self.raw_blocks.insert(hash, Arc::new(bytes));
        self.heights.insert(hash, height);
        for tx in &block.txdata {
            self.known_txs.entry(tx.compute_txid()).or_insert_with(|| Arc::new(tx.clone()));
        }

        // `process_block` says "new block" for many invalid blocks: the active tip is the verdict.
        let (_, lines) = kernel_log::capture(|| self.chainman.process_block(&kblock));
        self.sync_with_kernel()?;

        if self.is_active(&hash) {
            return Ok(MinedBlock { hash, height, active: true });
        }
        if height <= old_tip_height
            && !lines.iter().any(|l| l.contains(&hash.to_string()) && l.to_lowercase().contains("invalid"))
        {
            // A lighter (or equal-work) branch: stored, not connected, as a node would.
            return Ok(MinedBlock { hash, height, active: false });
        }
        self.blocks.remove(&hash);
        self.raw_blocks.remove(&hash);
        self.heights.remove(&hash);
        Err(ChainError::BlockRejected { hash, reason: kernel_log::reject_reason(&lines, &hash.to_string()) })
    }

    /// Brings our view of the active chain in line with the kernel's, emitting disconnections
    /// (tip first) and connections (in height order), then re-checks the pending pool.
    pub(crate) fn sync_with_kernel(&mut self) -> Result<(), ChainError> {
        let kernel_hashes = {
            let chain = self.chainman.active_chain();
            let kheight = chain.height();
            // Walk back from the kernel's tip until we meet our view.
            let mut hashes = Vec::new();
            let mut h = kheight;
            while h >= 0 {
                let entry = chain
                    .at_height(h as usize)
                    .ok_or_else(|| ChainError::Kernel(format!("no block at height {h}")))?;
                let hash = BlockHash::from_byte_array(entry.block_hash().to_bytes());
                if self.active.get(h as usize) == Some(&hash) {
                    break;
                }
                hashes.push(hash);
                h -= 1;
            }
            hashes.reverse();
            (h, hashes)
        };
        let (fork, new_hashes) = kernel_hashes;
        let fork_len = (fork + 1) as usize;
        if fork_len == self.active.len() && new_hashes.is_empty() {
            return Ok(());
        }

        let mut returned_to_pool: Vec<Arc<Transaction>> = Vec::new();
        while self.active.len() > fork_len {
            let hash = self.active.pop().expect("longer than the fork");
            let height = self.active.len() as u32;
            let block = self.blocks[&hash].clone();
            self.disconnect(&block, &hash);
            returned_to_pool.splice(0..0, block.txdata.iter().skip(1).map(|t| Arc::new(t.clone())));
            self.emit(ChainEvent::BlockDisconnected { height, block });
        }
        let reorged = !returned_to_pool.is_empty() || fork_len < self.active.len();
        for hash in new_hashes {
            let block = match self.blocks.get(&hash) {
                Some(b) => b.clone(),
                None => self.read_block_from_kernel(&hash)?,
            };
            let height = self.active.len() as u32;
            self.connect(&block, hash, height);
            self.emit(ChainEvent::BlockConnected { height, block });
        }
        self.refresh_pool(returned_to_pool, reorged);
        Ok(())
    }

    fn read_block_from_kernel(&mut self, hash: &BlockHash) -> Result<Arc<Block>, ChainError> {
        let kernel = |e: bitcoinkernel::KernelError| ChainError::Kernel(e.to_string());
        let khash = bitcoinkernel::BlockHash::new(hash.as_byte_array()).map_err(kernel)?;
        let entry = self.chainman.get_block_tree_entry(&khash).ok_or(ChainError::UnknownBlock(*hash))?;
        let bytes =
            self.chainman.read_block_data(&entry).map_err(kernel)?.consensus_encode().map_err(kernel)?;
        let block: Block = deserialize(&bytes).map_err(|e| ChainError::Kernel(e.to_string()))?;
        let block = Arc::new(block);
        let height = entry.height() as u32;
        self.blocks.insert(*hash, block.clone());
        self.raw_blocks.insert(*hash, Arc::new(bytes));
        self.heights.insert(*hash, height);
        for tx in &block.txdata {
            self.known_txs.entry(tx.compute_txid()).or_insert_with(|| Arc::new(tx.clone()));
        }
        Ok(block)
    }

    fn connect(&mut self, block: &Block, hash: BlockHash, height: u32) {
        let mut undo = Vec::new();
        let own: HashSet<Txid> = block.txdata.iter().map(|t| t.compute_txid()).collect();
        for (i, tx) in block.txdata.iter().enumerate() {
            let txid = tx.compute_txid();
            if i > 0 {
                for input in &tx.input {
                    let coin = self.utxos.remove(&input.previous_output);
                    // A coin created and spent in this block must not come back on disconnect.
                    if let Some(coin) = coin.filter(|_| !own.contains(&input.previous_output.txid)) {
                        undo.push((input.previous_output, coin));
                    }
                    self.confirmed_spends.insert(input.previous_output, (txid, height));
                }
            }
            for (vout, txout) in tx.output.iter().enumerate() {
                if txout.script_pubkey.is_op_return() {
                    continue;
                }
                self.utxos.insert(
                    OutPoint { txid, vout: vout as u32 },
                    Coin { txout: txout.clone(), height, is_coinbase: i == 0 },
                );
            }
            self.confirmed_txs.insert(txid, height);
        }
        self.undo.insert(hash, undo);
        self.heights.insert(hash, height);
        self.active.push(hash);
    }

    fn disconnect(&mut self, block: &Block, hash: &BlockHash) {
        for tx in block.txdata.iter().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() as u32 {
                self.utxos.remove(&OutPoint { txid, vout });
            }
            self.confirmed_txs.remove(&txid);
            for input in &tx.input {
                self.confirmed_spends.remove(&input.previous_output);
            }
        }
        for (outpoint, coin) in self.undo.remove(hash).unwrap_or_default() {
            self.utxos.insert(outpoint, coin);
        }
    }

    /// After the chain moved: drop what got confirmed or conflicted, and after a reorg put the
    /// disconnected transactions back first, re-checking everything against the new tip.
    fn refresh_pool(&mut self, returned: Vec<Arc<Transaction>>, reorged: bool) {
        if !reorged {
            // Only connections: remove confirmed transactions and those now conflicting.
            let mut gone = HashSet::new();
            for entry in self.pool.iter() {
                let txid = entry.tx.compute_txid();
                let conflicted =
                    entry.tx.input.iter().any(|i| self.confirmed_spends.contains_key(&i.previous_output));
                if self.confirmed_txs.contains_key(&txid) || conflicted {
                    gone.extend(self.pool.with_descendants(&txid));
                }
            }
            self.pool_sequence += gone.len() as u64;
            self.pool.remove_all(&gone);
            // Timelocks only loosen as the chain grows, so nothing else can become invalid.
            return;
        }
        let mut candidates = returned;
        let drained = self.pool.drain();
        self.pool_sequence += drained.len() as u64;
        candidates.extend(drained);
        for tx in candidates {
            let _ = self.accept(&tx, false);
        }
    }
}
