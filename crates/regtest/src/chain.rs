//! [`RegtestChain`]: a private regtest chain judged by Bitcoin Core's validation engine.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::blockdata::block::{Header, Version as BlockVersion};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, Secp256k1, TapTweak};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness,
};
use bitcoinkernel::prelude::*;
use bitcoinkernel::{ChainType, ChainstateManager, Context, ContextBuilder};

use crate::pool::{Pool, PoolEntry};
use crate::relay::{self, RelayError};
use crate::{kernel_log, ChainError, SubmitError};

/// Coinbase outputs mature after this many blocks (`COINBASE_MATURITY`).
pub const COINBASE_MATURITY: u32 = 100;
/// Regtest halves the subsidy every 150 blocks.
const REGTEST_HALVING_INTERVAL: u32 = 150;
/// Regtest's proof-of-work limit, which every block we mine uses.
const REGTEST_BITS: u32 = 0x207f_ffff;
/// Weight kept free for the coinbase when filling a block from the pool.
const COINBASE_RESERVED_WEIGHT: u64 = 8_000;
const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
/// `SEQUENCE_LOCKTIME_DISABLE_FLAG`, `..._TYPE_FLAG`, `..._MASK`, `..._GRANULARITY`.
const SEQ_DISABLE: u32 = 1 << 31;
const SEQ_TYPE_TIME: u32 = 1 << 22;
const SEQ_MASK: u32 = 0x0000_ffff;
const SEQ_GRANULARITY: u32 = 9;

/// An unspent output on the active chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    /// The output.
    pub txout: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    /// Whether a coinbase created it (it then matures after 100 blocks).
    pub is_coinbase: bool,
}

/// Who spends an outpoint, and whether that spend is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// The spending transaction.
    pub txid: Txid,
    /// Height of the block confirming it, or `None` while it waits in the pending pool.
    pub height: Option<u32>,
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Waiting in the pending pool.
    Pending,
    /// In the active chain.
    Confirmed {
        /// Height of its block.
        height: u32,
        /// 1 when its block is the tip.
        confirmations: u32,
    },
}

/// What the chain reports to subscribers, in the order it happened.
#[derive(Debug, Clone)]
pub enum ChainEvent {
    /// A block joined the active chain.
    BlockConnected {
        /// Its height.
        height: u32,
        /// The block.
        block: Arc<Block>,
    },
    /// A block left the active chain (a reorg); disconnections come tip first.
    BlockDisconnected {
        /// The height it had.
        height: u32,
        /// The block.
        block: Arc<Block>,
    },
    /// A transaction entered the pending pool through [`RegtestChain::submit`].
    TransactionAccepted {
        /// The transaction.
        tx: Arc<Transaction>,
        /// The pool's sequence number after it entered (Core's `mempool_sequence`).
        sequence: u64,
    },
}

/// A block the kernel accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinedBlock {
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Whether it is on the active chain now (a block on a lighter branch is stored, not
    /// connected, exactly as a node would do).
    pub active: bool,
}

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

enum DataDir {
    Temporary(tempfile::TempDir),
    Persistent(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(t) => t.path(),
            DataDir::Persistent(p) => p,
        }
    }
}

/// A private regtest chain whose only judge of validity is Bitcoin Core's validation engine,
/// running in-process. See the crate documentation.
pub struct RegtestChain {
    // Field order is drop order: the chainstate manager must go before its context.
    chainman: ChainstateManager,
    _context: Context,
    data_dir: DataDir,
    secp: Secp256k1<bitcoin::secp256k1::All>,

    /// Every block seen, on any branch.
    blocks: HashMap<BlockHash, Arc<Block>>,
    /// The same blocks as the kernel stored them: served as they are, never re-serialized
    /// (Core's REST and `getblock` verbosity 0 read the bytes from disk the same way).
    raw_blocks: HashMap<BlockHash, Arc<Vec<u8>>>,
    heights: HashMap<BlockHash, u32>,
    /// Every transaction seen in a block or the pool, to price inputs on any branch.
    known_txs: HashMap<Txid, Arc<Transaction>>,

    /// The active chain as last read from the kernel, index = height.
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    confirmed_spends: HashMap<OutPoint, (Txid, u32)>,
    confirmed_txs: HashMap<Txid, u32>,
    /// Per block: the coins its transactions spent, to put back on disconnect.
    undo: HashMap<BlockHash, Vec<(OutPoint, Coin)>>,

    pool: Pool,
    subscribers: Vec<Sender<ChainEvent>>,
    faucet: Keypair,
    faucet_script: ScriptBuf,
    extra_nonce: u64,
    /// Counts every entry into and removal from the pool (Core's `mempool_sequence`).
    pool_sequence: u64,
}

impl RegtestChain {
    /// A fresh chain (genesis only) in a temporary directory removed on drop; the kernel's
    /// databases live in memory.
    pub fn new_temporary() -> Result<Self, ChainError> {
        let dir = tempfile::Builder::new()
            .prefix("vigil-regtest-")
            .tempdir()
            .map_err(|e| ChainError::DataDir(e.to_string()))?;
        Self::open_in(DataDir::Temporary(dir), true)
    }

    /// Opens (or creates) a persistent chain in `dir`; blocks mined earlier are still there.
    /// The pending pool is not persisted.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ChainError> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("blocks"))
            .map_err(|e| ChainError::DataDir(format!("{}: {e}", dir.display())))?;
        Self::open_in(DataDir::Persistent(dir), false)
    }

    fn open_in(data_dir: DataDir, in_memory: bool) -> Result<Self, ChainError> {
        kernel_log::install();
        let kernel = |e: bitcoinkernel::KernelError| ChainError::Kernel(e.to_string());
        let context = ContextBuilder::new().chain_type(ChainType::Regtest).build().map_err(kernel)?;
        let root = data_dir.path().to_path_buf();
        let blocks_dir = root.join("blocks");
        std::fs::create_dir_all(&blocks_dir).map_err(|e| ChainError::DataDir(e.to_string()))?;
        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| ChainError::DataDir(format!("{} is not UTF-8", p.display())))
        };
        let chainman = ChainstateManager::builder(&context, &utf8(&root)?, &utf8(&blocks_dir)?)
            .map_err(kernel)?
            .block_tree_db_in_memory(in_memory)
            .chainstate_db_in_memory(in_memory)
            .build()
            .map_err(kernel)?;
        chainman.import_blocks().map_err(kernel)?;

        let secp = Secp256k1::new();
        let faucet = Keypair::from_seckey_slice(
            &secp,
            &bitcoin::hashes::sha256::Hash::hash(b"vigil-regtest faucet").to_byte_array(),
        )
        .expect("a hash is a valid secret key");
        let faucet_script = ScriptBuf::new_p2tr(&secp, faucet.x_only_public_key().0, None);

        let mut chain = RegtestChain {
            chainman,
            _context: context,
            data_dir,
            secp,
            blocks: HashMap::new(),
            raw_blocks: HashMap::new(),
            heights: HashMap::new(),
            known_txs: HashMap::new(),
            active: Vec::new(),
            utxos: HashMap::new(),
            confirmed_spends: HashMap::new(),
            confirmed_txs: HashMap::new(),
            undo: HashMap::new(),
            pool: Pool::default(),
            subscribers: Vec::new(),
            faucet,
            faucet_script,
            extra_nonce: 0,
            pool_sequence: 0,
        };
        if chain.chainman.active_chain().height() < 0 {
            let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Regtest);
            let kblock = bitcoinkernel::Block::new(&serialize(&genesis)).map_err(kernel)?;
            chain.chainman.process_block(&kblock);
        }
        chain.sync_with_kernel()?;
        if chain.active.is_empty() {
            return Err(ChainError::Kernel("the kernel has no active chain, not even genesis".into()));
        }
        Ok(chain)
    }

    /// The directory holding the chain's block files.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    // ----- reading the chain -------------------------------------------------------------

    /// Height of the tip.
    pub fn height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    /// Hash of the tip.
    pub fn tip(&self) -> BlockHash {
        *self.active.last().expect("genesis is always there")
    }

    /// Hash of the active block at `height`.
    pub fn block_hash(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    /// Any block seen (active or on a branch), by hash.
    pub fn block_by_hash(&self, hash: &BlockHash) -> Option<Arc<Block>> {
        self.blocks.get(hash).cloned()
    }

    /// Any block seen, by hash, serialized (as stored: no serialization per call).
    pub fn raw_block(&self, hash: &BlockHash) -> Option<Arc<Vec<u8>>> {
        self.raw_blocks.get(hash).cloned()
    }

    /// The active block at `height`.
    pub fn block_at(&self, height: u32) -> Option<Arc<Block>> {
        self.block_hash(height).and_then(|h| self.block_by_hash(&h))
    }

    /// Height of a known block (on any branch).
    pub fn block_height(&self, hash: &BlockHash) -> Option<u32> {
        self.heights.get(hash).copied()
    }

    /// Whether `hash` is on the active chain.
    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.heights.get(hash).is_some_and(|h| self.active.get(*h as usize) == Some(hash))
    }

    /// The confirmed, unspent output at `outpoint`, if any.
    pub fn coin(&self, outpoint: &OutPoint) -> Option<Coin> {
        self.utxos.get(outpoint).cloned()
    }

    /// Who spends `outpoint`: a confirmed spend first, else a pending one.
    pub fn spend_of(&self, outpoint: &OutPoint) -> Option<Spend> {
        if let Some((txid, height)) = self.confirmed_spends.get(outpoint) {
            return Some(Spend { txid: *txid, height: Some(*height) });
        }
        self.pool.spender(outpoint).map(|txid| Spend { txid, height: None })
    }

    /// Where a transaction stands, or `None` if neither confirmed nor pending.
    pub fn tx_status(&self, txid: &Txid) -> Option<TxStatus> {
        if let Some(height) = self.confirmed_txs.get(txid) {
            return Some(TxStatus::Confirmed { height: *height, confirmations: self.height() - height + 1 });
        }
        self.pool.contains(txid).then_some(TxStatus::Pending)
    }

    /// Confirmations of a transaction (0 while pending), or `None` if unknown.
    pub fn confirmations(&self, txid: &Txid) -> Option<u32> {
        self.tx_status(txid).map(|s| match s {
            TxStatus::Pending => 0,
            TxStatus::Confirmed { confirmations, .. } => confirmations,
        })
    }

    /// A confirmed or pending transaction.
    pub fn transaction(&self, txid: &Txid) -> Option<Arc<Transaction>> {
        if self.confirmed_txs.contains_key(txid) || self.pool.contains(txid) {
            return self.known_txs.get(txid).cloned();
        }
        None
    }

    /// The pending pool's transactions, parents before children.
    pub fn pending(&self) -> Vec<PoolEntry> {
        self.pool.iter().cloned().collect()
    }

    /// Increases with every transaction entering or leaving the pending pool, as Core's
    /// `mempool_sequence`: a follower polling the pool knows whether it missed something.
    pub fn pool_sequence(&self) -> u64 {
        self.pool_sequence
    }

    /// Median time past of the tip (`GetMedianTimePast`).
    pub fn median_time_past(&self) -> u32 {
        self.mtp_at(self.height())
    }

    fn mtp_at(&self, height: u32) -> u32 {
        let lo = height.saturating_sub(10);
        let mut times: Vec<u32> =
            (lo..=height).filter_map(|h| self.block_at(h)).map(|b| b.header.time).collect();
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Receives every later [`ChainEvent`], in order.
    pub fn subscribe(&mut self) -> Receiver<ChainEvent> {
        let (tx, rx) = channel();
        self.subscribers.push(tx);
        rx
    }

    fn emit(&mut self, event: ChainEvent) {
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }

    // ----- mining ----------------------------------------------------------------------

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
    fn sync_with_kernel(&mut self) -> Result<(), ChainError> {
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

    // ----- the pending pool -------------------------------------------------------------

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

    fn accept(&mut self, tx: &Transaction, announce: bool) -> Result<(Txid, Amount), SubmitError> {
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
        let internal = |e: bitcoinkernel::KernelError| SubmitError::Kernel(e.to_string());
        let ktx = bitcoinkernel::Transaction::new(&serialize(tx)).map_err(internal)?;
        let kspent: Vec<bitcoinkernel::TxOut> = spent
            .iter()
            .map(|(o, _)| {
                bitcoinkernel::ScriptPubkey::new(o.script_pubkey.as_bytes())
                    .map(|s| bitcoinkernel::TxOut::new(&s, o.value.to_sat() as i64))
            })
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let precomputed = bitcoinkernel::PrecomputedTransactionData::new(&ktx, &kspent).map_err(internal)?;
        for (index, (prevout, _)) in spent.iter().enumerate() {
            let spk = bitcoinkernel::ScriptPubkey::new(prevout.script_pubkey.as_bytes()).map_err(internal)?;
            bitcoinkernel::verify(
                &spk,
                Some(prevout.value.to_sat() as i64),
                &ktx,
                index,
                Some(bitcoinkernel::VERIFY_ALL),
                &precomputed,
            )
            .map_err(|e| SubmitError::Script { input: index, detail: format!("{e:?}") })?;
        }
        Ok(())
    }

    // ----- the faucet --------------------------------------------------------------------

    /// The script the chain's own coinbases pay to (a key only the chain holds).
    pub fn faucet_script(&self) -> &ScriptBuf {
        &self.faucet_script
    }

    /// Mature, unspent faucet coins (not spent in the pending pool either).
    fn faucet_coins(&self) -> Vec<(OutPoint, Coin)> {
        let next_height = self.height() + 1;
        let mut coins: Vec<(OutPoint, Coin)> = self
            .utxos
            .iter()
            .filter(|(op, c)| {
                c.txout.script_pubkey == self.faucet_script
                    && (!c.is_coinbase || next_height - c.height >= COINBASE_MATURITY)
                    && self.pool.spender(op).is_none()
            })
            .map(|(op, c)| (*op, c.clone()))
            .collect();
        coins.sort_by_key(|(op, c)| (c.height, op.txid, op.vout));
        coins
    }

    /// Pays `amount` to `script` from the chain's mature coinbases, through the pending pool
    /// (mine a block to confirm it). Mines the 101 blocks that mature the first coinbase if
    /// the faucet has nothing to spend yet.
    pub fn fund(&mut self, script: &ScriptBuf, amount: Amount) -> Result<OutPoint, ChainError> {
        if self.faucet_coins().is_empty() && self.height() < COINBASE_MATURITY + 1 {
            self.mine_to_height(COINBASE_MATURITY + 1)?;
        }
        let feerate_sat_per_vb = 2;
        let mut chosen = Vec::new();
        let mut total = Amount::ZERO;
        for (op, coin) in self.faucet_coins() {
            let fee = Amount::from_sat(feerate_sat_per_vb * (70 + 58 * (chosen.len() as u64 + 1)));
            if total >= amount + fee {
                break;
            }
            total += coin.txout.value;
            chosen.push((op, coin.txout));
        }
        let fee = Amount::from_sat(feerate_sat_per_vb * (70 + 58 * chosen.len() as u64));
        if total < amount + fee {
            return Err(ChainError::FaucetEmpty { wanted: amount, available: total });
        }
        let mut outputs = vec![TxOut { value: amount, script_pubkey: script.clone() }];
        let change = total - amount - fee;
        if change.to_sat() > 1_000 {
            outputs.push(TxOut { value: change, script_pubkey: self.faucet_script.clone() });
        }
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: chosen
                .iter()
                .map(|(op, _)| TxIn {
                    previous_output: *op,
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    ..Default::default()
                })
                .collect(),
            output: outputs,
        };
        let prevouts: Vec<TxOut> = chosen.iter().map(|(_, o)| o.clone()).collect();
        let tweaked = self.faucet.tap_tweak(&self.secp, None).to_keypair();
        let mut signatures = Vec::new();
        {
            let mut cache = SighashCache::new(&tx);
            for index in 0..tx.input.len() {
                let sighash = cache
                    .taproot_key_spend_signature_hash(
                        index,
                        &Prevouts::All(&prevouts),
                        TapSighashType::Default,
                    )
                    .expect("inputs and prevouts match");
                let msg = Message::from_digest(sighash.to_byte_array());
                signatures.push(self.secp.sign_schnorr(&msg, &tweaked));
            }
        }
        for (input, sig) in tx.input.iter_mut().zip(signatures) {
            input.witness = Witness::from_slice(&[sig.as_ref()]);
        }
        let txid = self.submit(&tx).map_err(ChainError::Faucet)?;
        Ok(OutPoint { txid, vout: 0 })
    }

    /// [`RegtestChain::fund`], then mines one block to confirm it.
    pub fn fund_confirmed(&mut self, script: &ScriptBuf, amount: Amount) -> Result<OutPoint, ChainError> {
        let outpoint = self.fund(script, amount)?;
        self.mine(1)?;
        Ok(outpoint)
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
