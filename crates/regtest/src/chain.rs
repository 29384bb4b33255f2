//! [`RegtestChain`]: a private regtest chain judged by Bitcoin Core's validation engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, Secp256k1};
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use bitcoinkernel::{ChainType, ChainstateManager, Context, ContextBuilder};

use crate::pool::{Pool, PoolEntry};
use crate::{kernel_log, ChainError};

/// Coinbase outputs mature after this many blocks (`COINBASE_MATURITY`).
pub const COINBASE_MATURITY: u32 = 100;
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

pub(crate) enum DataDir {
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
    pub(crate) chainman: ChainstateManager,
    pub(crate) _context: Context,
    pub(crate) data_dir: DataDir,
    pub(crate) secp: Secp256k1<bitcoin::secp256k1::All>,

    /// Every block seen, on any branch.
    pub(crate) blocks: HashMap<BlockHash, Arc<Block>>,
    /// The same blocks as the kernel stored them: served as they are, never re-serialized
    /// (Core's REST and `getblock` verbosity 0 read the bytes from disk the same way).
    pub(crate) raw_blocks: HashMap<BlockHash, Arc<Vec<u8>>>,
    pub(crate) heights: HashMap<BlockHash, u32>,
    /// Every transaction seen in a block or the pool, to price inputs on any branch.
    pub(crate) known_txs: HashMap<Txid, Arc<Transaction>>,

    /// The active chain as last read from the kernel, index = height.
    pub(crate) active: Vec<BlockHash>,
    pub(crate) utxos: HashMap<OutPoint, Coin>,
    pub(crate) confirmed_spends: HashMap<OutPoint, (Txid, u32)>,
    pub(crate) confirmed_txs: HashMap<Txid, u32>,
    /// Per block: the coins its transactions spent, to put back on disconnect.
    pub(crate) undo: HashMap<BlockHash, Vec<(OutPoint, Coin)>>,

    pub(crate) pool: Pool,
    pub(crate) subscribers: Vec<Sender<ChainEvent>>,
    pub(crate) faucet: Keypair,
    pub(crate) faucet_script: ScriptBuf,
    pub(crate) extra_nonce: u64,
    /// Counts every entry into and removal from the pool (Core's `mempool_sequence`).
    pub(crate) pool_sequence: u64,
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

    pub(crate) fn mtp_at(&self, height: u32) -> u32 {
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

    pub(crate) fn emit(&mut self, event: ChainEvent) {
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }
}
