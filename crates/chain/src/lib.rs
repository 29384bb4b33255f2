//! Vigil's chain interface: what a tower, co-signer or client needs from the chain, behind one
//! trait ([`ChainBackend`]), with a reorg-aware [`Follower`] on top.
//!
//! Backends:
//! - [`BitcoindRpc`] ([`bitcoind`]): Bitcoin Core's JSON-RPC (and REST for blocks), no wallet
//!   needed: blocks by hashes, the mempool by `getrawmempool` with `mempool_sequence`.
//!   `vigil node` speaks the same dialect, so every test that runs against the embedded chain
//!   runs this code. Where the node publishes ZMQ, [`zmq::subscribe`] rings the follower as
//!   soon as something happens; where it does not, it polls.
//! - [`ElectrumBackend`] ([`electrum`]): an Electrum server, by scripthash subscriptions; its
//!   blocks are filtered to the watched scripts, each transaction proven by its merkle branch
//!   against a header that carries the proof of work the network's rules require.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use bitcoin::consensus::deserialize;
use bitcoin::{Amount, Block, BlockHash, OutPoint, Transaction, TxOut, Txid};

pub use bitcoin;

pub mod bitcoind;
pub mod electrum;
mod follower;
pub mod zmq;

pub use bitcoind::BitcoindRpc;
pub use electrum::ElectrumBackend;
pub use follower::{BlockEvent, FollowError, Follower};

/// A block's place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId {
    /// Height.
    pub height: u32,
    /// Hash.
    pub hash: BlockHash,
}

/// What went wrong talking to the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached (connection refused, timeout): retry later.
    #[error("chain backend unreachable: {0}")]
    Unreachable(String),
    /// The backend refused the credentials.
    #[error("chain backend refused the RPC credentials")]
    Unauthorized,
    /// The backend answered with an error.
    #[error("chain backend error {code}: {message}")]
    Rpc {
        /// Core's error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("chain backend answered something unexpected: {0}")]
    Decode(String),
    /// The answer breaks the chain's rules (a header without its proof of work, a
    /// transaction not proven in its block): the backend is lying or broken.
    #[error("chain backend answered something the chain's rules forbid: {0}")]
    Invalid(String),
}

/// The mempool as one poll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolSnapshot {
    /// Every transaction in it.
    pub txids: Vec<Txid>,
    /// Core's `mempool_sequence`: changes whenever anything entered or left.
    pub sequence: u64,
}

/// Chain access for Vigil's services.
pub trait ChainBackend: Send + Sync {
    /// The best block.
    fn tip(&self) -> Result<BlockId, BackendError>;
    /// The active block at `height`, if the chain is that long.
    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, BackendError>;
    /// A block by hash.
    fn block(&self, hash: &BlockHash) -> Result<Block, BackendError> {
        deserialize(&self.raw_block(hash)?).map_err(|e| BackendError::Decode(e.to_string()))
    }
    /// A block by hash, serialized (a tower scans it without deserializing it). A backend that
    /// watches by script returns it filtered: the header and, in block order, the transactions
    /// of the watched scripts only.
    fn raw_block(&self, hash: &BlockHash) -> Result<Vec<u8>, BackendError>;
    /// Active block hashes at `heights`, as far as the chain reaches (one round trip where
    /// the backend allows it).
    fn block_hashes(&self, heights: std::ops::Range<u32>) -> Result<Vec<BlockHash>, BackendError> {
        let mut out = Vec::new();
        for h in heights {
            match self.block_hash(h)? {
                Some(hash) => out.push(hash),
                None => break,
            }
        }
        Ok(out)
    }
    /// Several serialized blocks (one round trip where the backend allows it).
    fn raw_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Vec<u8>>, BackendError> {
        hashes.iter().map(|h| self.raw_block(h)).collect()
    }
    /// Broadcasts a transaction; returns its txid (also when it was already pending).
    fn broadcast(&self, tx: &Transaction) -> Result<Txid, BackendError>;
    /// Broadcasts a parent and its child as one package, judged by their combined feerate
    /// (Core's `submitpackage`). Where the backend has no package relay, one after the other.
    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, BackendError> {
        txs.iter().map(|tx| self.broadcast(tx)).collect()
    }
    /// The mempool's contents.
    fn mempool(&self) -> Result<MempoolSnapshot, BackendError>;
    /// A pending or confirmed transaction, if the backend knows it.
    fn transaction(&self, txid: &Txid) -> Result<Option<Transaction>, BackendError>;
    /// A pending or confirmed transaction with its confirmation height (`None` while it is
    /// in the mempool), if the backend knows it.
    fn transaction_info(&self, txid: &Txid) -> Result<Option<(Transaction, Option<u32>)>, BackendError>;
    /// An output that exists and is unspent, counting the mempool: created by a confirmed or
    /// pending transaction, spent by neither.
    fn unspent_output(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, BackendError>;
    /// The feerate to confirm within `blocks`, sat/vB, when the backend has an estimate.
    fn fee_estimate(&self, _blocks: u16) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    /// The fee a mempool transaction pays, sat, when the backend can tell (by default from
    /// the transactions it spends).
    fn mempool_fee(&self, tx: &Transaction) -> Result<Option<u64>, BackendError> {
        let mut spent = Amount::ZERO;
        for input in &tx.input {
            let Some(parent) = self.transaction(&input.previous_output.txid)? else { return Ok(None) };
            let Some(out) = parent.output.get(input.previous_output.vout as usize) else { return Ok(None) };
            spent += out.value;
        }
        let paid: Amount = tx.output.iter().map(|o| o.value).sum();
        Ok(spent.checked_sub(paid).map(|f| f.to_sat()))
    }
    /// Waits until the tip changes or `timeout` passes; returns the tip.
    fn wait_for_new_block(&self, timeout: Duration) -> Result<BlockId, BackendError>;
    /// Adds scripts the consumer cares about. A node backend sees every transaction anyway;
    /// a backend that watches by script (Electrum) includes their transactions in the blocks
    /// and mempool it reports from the next call on, history included.
    fn watch_scripts(&self, _scripts: &[bitcoin::ScriptBuf]) {}
}

/// A feerate in BTC per 1,000 vbytes (Core's and Electrum's unit), in sat/vB, rounded up.
pub(crate) fn btc_per_kvb_to_sat_per_vb(btc_per_kvb: f64) -> Option<u64> {
    (btc_per_kvb.is_finite() && btc_per_kvb > 0.0).then(|| (btc_per_kvb * 100_000.0).ceil() as u64)
}

/// An amount in BTC as JSON gives it, in satoshis.
pub(crate) fn btc_to_sat(btc: f64) -> Option<Amount> {
    (btc.is_finite() && btc >= 0.0).then(|| Amount::from_sat((btc * 100_000_000.0).round() as u64))
}
