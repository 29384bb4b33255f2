//! Vigil's chain interface: what a tower, co-signer or client needs from the chain, behind one
//! trait ([`ChainBackend`]), with a reorg-aware [`Follower`] on top.
//!
//! Backends:
//! - [`BitcoindRpc`]: Bitcoin Core's JSON-RPC (and REST for blocks), no wallet needed: blocks by
//!   hashes, the mempool by `getrawmempool` with `mempool_sequence`. `vigil node` speaks the
//!   same dialect, so every test that runs against the embedded chain runs this code. Where the
//!   node publishes ZMQ, [`zmq::subscribe`] rings the follower as soon as something happens;
//!   where it does not (the Core that the kernel crate vendors has no ZMQ), it polls.
//! - [`ElectrumBackend`]: an Electrum server, by scripthash subscriptions; its blocks are
//!   filtered to the watched scripts, each transaction proven by its merkle branch.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bitcoin::consensus::{deserialize, encode::serialize_hex};
use bitcoin::{Block, BlockHash, Transaction, Txid};
use serde_json::{json, Value};

pub use bitcoin;

pub mod electrum;
mod electrum_backend;
pub use electrum_backend::ElectrumBackend;
pub mod zmq;

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
    /// Waits until the tip changes or `timeout` passes; returns the tip.
    fn wait_for_new_block(&self, timeout: Duration) -> Result<BlockId, BackendError>;
    /// Adds scripts the consumer cares about. A node backend sees every transaction anyway;
    /// a backend that watches by script (Electrum) includes their transactions in the blocks
    /// and mempool it reports from the next poll on, history included.
    fn watch_scripts(&self, _scripts: &[bitcoin::ScriptBuf]) {}
}

/// Bitcoin Core's JSON-RPC (or `vigil node`'s).
pub struct BitcoindRpc {
    url: String,
    auth: String,
    agent: ureq::Agent,
    next_id: AtomicU64,
    rest: bool,
}

impl BitcoindRpc {
    /// A client for `url` (e.g. `http://127.0.0.1:18443`) with Core's `rpcuser`/`rpcpassword`.
    pub fn new(url: &str, user: &str, password: &str) -> BitcoindRpc {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build();
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        BitcoindRpc { url: url.to_owned(), auth, agent, next_id: AtomicU64::new(1), rest: false }
    }

    /// Fetches blocks through Core's REST interface (`-rest`): raw bytes instead of hex in
    /// JSON, which matters when catching up on many blocks.
    pub fn with_rest(mut self, rest: bool) -> BitcoindRpc {
        self.rest = rest;
        self
    }

    fn rest_block(&self, hash: &BlockHash) -> Result<Vec<u8>, BackendError> {
        let url = format!("{}/rest/block/{hash}.bin", self.url.trim_end_matches('/'));
        let response = self.agent.get(&url).call().map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                BackendError::Rpc { code: -(code as i64), message: r.into_string().unwrap_or_default() }
            }
            e => BackendError::Unreachable(e.to_string()),
        })?;
        let mut bytes = Vec::new();
        // A block is at most 4 MB; refuse to buffer more from a misbehaving server.
        std::io::Read::read_to_end(&mut std::io::Read::take(response.into_reader(), 8_000_000), &mut bytes)
            .map_err(|e| BackendError::Unreachable(e.to_string()))?;
        Ok(bytes)
    }

    /// Calls `method` with positional `params`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let response = match self.agent.post(&self.url).set("Authorization", &self.auth).send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(401, _)) => return Err(BackendError::Unauthorized),
            // Core answers RPC errors with HTTP 500 (404 for unknown methods) and a JSON body.
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(BackendError::Unreachable(e.to_string())),
        };
        let reply: Value = response.into_json().map_err(|e| BackendError::Decode(e.to_string()))?;
        if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
            return Err(BackendError::Rpc {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: error.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
            });
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Calls several methods in one JSON-RPC batch; answers in order.
    pub fn call_batch(
        &self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Value, BackendError>>, BackendError> {
        let body: Vec<Value> = calls
            .iter()
            .map(|(method, params)| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params})
            })
            .collect();
        let response =
            match self.agent.post(&self.url).set("Authorization", &self.auth).send_json(Value::Array(body)) {
                Ok(r) => r,
                Err(ureq::Error::Status(401, _)) => return Err(BackendError::Unauthorized),
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => return Err(BackendError::Unreachable(e.to_string())),
            };
        let replies: Vec<Value> = response.into_json().map_err(|e| BackendError::Decode(e.to_string()))?;
        if replies.len() != calls.len() {
            return Err(BackendError::Decode(format!("{} answers to {} calls", replies.len(), calls.len())));
        }
        Ok(replies
            .into_iter()
            .map(|reply| match reply.get("error").filter(|e| !e.is_null()) {
                Some(error) => Err(BackendError::Rpc {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
                }),
                None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
            })
            .collect())
    }

    fn hash<T: std::str::FromStr>(v: &Value) -> Result<T, BackendError> {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BackendError::Decode(format!("not a hash: {v}")))
    }

    pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, BackendError> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let b = s.as_bytes();
        if !b.len().is_multiple_of(2) {
            return Err(BackendError::Decode("odd hex".into()));
        }
        b.chunks_exact(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| BackendError::Decode("bad hex".into()))
    }

    fn hex<T: bitcoin::consensus::Decodable>(v: &Value) -> Result<T, BackendError> {
        let s = v.as_str().ok_or_else(|| BackendError::Decode("expected hex".into()))?;
        deserialize(&Self::unhex(s)?).map_err(|e| BackendError::Decode(e.to_string()))
    }
}

impl Clone for BitcoindRpc {
    fn clone(&self) -> Self {
        BitcoindRpc {
            url: self.url.clone(),
            auth: self.auth.clone(),
            agent: self.agent.clone(),
            next_id: AtomicU64::new(self.next_id.load(Ordering::Relaxed)),
            rest: self.rest,
        }
    }
}

impl ChainBackend for BitcoindRpc {
    fn tip(&self) -> Result<BlockId, BackendError> {
        // Two calls can straddle a new block; retry until they agree.
        loop {
            let hash: BlockHash = Self::hash(&self.call("getbestblockhash", json!([]))?)?;
            let header = self.call("getblockheader", json!([hash.to_string(), true]))?;
            let height = header
                .get("height")
                .and_then(Value::as_u64)
                .ok_or_else(|| BackendError::Decode("no height".into()))?;
            if header.get("confirmations").and_then(Value::as_i64) == Some(1) {
                return Ok(BlockId { height: height as u32, hash });
            }
        }
    }

    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, BackendError> {
        match self.call("getblockhash", json!([height])) {
            Ok(v) => Self::hash(&v).map(Some),
            Err(BackendError::Rpc { code: -8, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn raw_block(&self, hash: &BlockHash) -> Result<Vec<u8>, BackendError> {
        if self.rest {
            return self.rest_block(hash);
        }
        let v = self.call("getblock", json!([hash.to_string(), 0]))?;
        Self::unhex(v.as_str().ok_or_else(|| BackendError::Decode("expected hex".into()))?)
    }

    fn block_hashes(&self, heights: std::ops::Range<u32>) -> Result<Vec<BlockHash>, BackendError> {
        let calls: Vec<(&str, Value)> = heights.map(|h| ("getblockhash", json!([h]))).collect();
        let mut out = Vec::new();
        for r in self.call_batch(&calls)? {
            match r {
                Ok(v) => out.push(Self::hash(&v)?),
                Err(BackendError::Rpc { code: -8, .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn raw_blocks(&self, hashes: &[BlockHash]) -> Result<Vec<Vec<u8>>, BackendError> {
        if self.rest {
            // Several requests in flight: each costs a round trip, not bandwidth.
            let chunk = hashes.len().div_ceil(8).max(1);
            return std::thread::scope(|scope| {
                let workers: Vec<_> = hashes
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter().map(|h| self.rest_block(h)).collect::<Result<Vec<_>, _>>()
                        })
                    })
                    .collect();
                let mut out = Vec::with_capacity(hashes.len());
                for w in workers {
                    out.extend(w.join().map_err(|_| BackendError::Decode("fetch thread panicked".into()))??);
                }
                Ok(out)
            });
        }
        let calls: Vec<(&str, Value)> =
            hashes.iter().map(|h| ("getblock", json!([h.to_string(), 0]))).collect();
        self.call_batch(&calls)?
            .into_iter()
            .map(|r| Self::unhex(r?.as_str().ok_or_else(|| BackendError::Decode("expected hex".into()))?))
            .collect()
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, BackendError> {
        // maxfeerate 0: pre-signed transactions pay what they pay; refusing a high-fee cancel
        // would be the node second-guessing the fee ladder.
        Self::hash(&self.call("sendrawtransaction", json!([serialize_hex(tx), 0]))?)
    }

    fn broadcast_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, BackendError> {
        let hexes: Vec<String> = txs.iter().map(serialize_hex).collect();
        // maxfeerate 0, as for single transactions.
        let v = match self.call("submitpackage", json!([hexes, 0])) {
            Ok(v) => v,
            // A node without package relay: one after the other.
            Err(BackendError::Rpc { code: -32601, .. }) => {
                return txs.iter().map(|tx| self.broadcast(tx)).collect();
            }
            Err(e) => return Err(e),
        };
        let message = v["package_msg"].as_str().unwrap_or_default();
        if message != "success" {
            let errors: Vec<String> = v["tx-results"]
                .as_object()
                .map(|r| r.values().filter_map(|t| t["error"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            return Err(BackendError::Rpc {
                code: -26,
                message: format!("{message}: {}", errors.join("; ")),
            });
        }
        Ok(txs.iter().map(Transaction::compute_txid).collect())
    }

    fn mempool(&self) -> Result<MempoolSnapshot, BackendError> {
        let v = self.call("getrawmempool", json!([false, true]))?;
        let txids = v
            .get("txids")
            .and_then(Value::as_array)
            .ok_or_else(|| BackendError::Decode("no txids".into()))?
            .iter()
            .map(Self::hash)
            .collect::<Result<_, _>>()?;
        let sequence = v
            .get("mempool_sequence")
            .and_then(Value::as_u64)
            .ok_or_else(|| BackendError::Decode("no mempool_sequence".into()))?;
        Ok(MempoolSnapshot { txids, sequence })
    }

    fn transaction(&self, txid: &Txid) -> Result<Option<Transaction>, BackendError> {
        match self.call("getrawtransaction", json!([txid.to_string(), false])) {
            Ok(v) => Self::hex(&v).map(Some),
            Err(BackendError::Rpc { code: -5, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn wait_for_new_block(&self, timeout: Duration) -> Result<BlockId, BackendError> {
        let v = self.call("waitfornewblock", json!([timeout.as_millis().max(1) as u64]))?;
        let hash = Self::hash(v.get("hash").unwrap_or(&Value::Null))?;
        let height = v
            .get("height")
            .and_then(Value::as_u64)
            .ok_or_else(|| BackendError::Decode("no height".into()))?;
        Ok(BlockId { height: height as u32, hash })
    }
}

/// What the follower reports, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    /// A block joined the active chain.
    Connected {
        /// Its height.
        height: u32,
        /// Its hash.
        hash: BlockHash,
        /// The block, serialized.
        raw: Vec<u8>,
    },
    /// A block left the active chain; reported tip first.
    Disconnected {
        /// The height it had.
        height: u32,
        /// Its hash.
        hash: BlockHash,
    },
}

impl BlockEvent {
    /// A connected block, deserialized (tests and small consumers; a tower scans `raw`).
    pub fn block(&self) -> Option<Block> {
        match self {
            BlockEvent::Connected { raw, .. } => deserialize(raw).ok(),
            BlockEvent::Disconnected { .. } => None,
        }
    }
}

/// Blocks fetched per round trip when catching up.
const FETCH_BATCH: u32 = 500;

/// Follows the active chain through any backend, turning polls into an ordered stream of
/// connections and disconnections, across reorgs (up to the depth it remembers).
pub struct Follower {
    /// The most recent active blocks we reported, oldest first.
    recent: Vec<BlockId>,
    depth: usize,
    seen_mempool: HashSet<Txid>,
    mempool_sequence: Option<u64>,
}

/// The follower met a reorg deeper than it remembers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Every remembered block was reorged out; the follower did not move.
    #[error("reorg deeper than the {0} blocks remembered")]
    TooDeep(usize),
}

impl Follower {
    /// Starts after `last_processed` (a checkpoint), remembering `depth` blocks for reorgs.
    /// `known` may hold the checkpoint's recent ancestors, oldest first, ending with it.
    pub fn new(known: Vec<BlockId>, depth: usize) -> Follower {
        Follower { recent: known, depth: depth.max(1), seen_mempool: HashSet::new(), mempool_sequence: None }
    }

    /// The blocks remembered for reorgs, oldest first (persist them to resume after a restart).
    pub fn recent(&self) -> &[BlockId] {
        &self.recent
    }

    /// The last block reported connected.
    pub fn last(&self) -> Option<BlockId> {
        self.recent.last().copied()
    }

    /// Brings the follower to the backend's tip, returning what changed in order.
    pub fn poll(&mut self, backend: &dyn ChainBackend) -> Result<Vec<BlockEvent>, FollowError> {
        let mut events = Vec::new();
        self.poll_each(backend, &mut |e| {
            events.push(e);
            true
        })?;
        Ok(events)
    }

    /// Like [`Follower::poll`], handing each event to `on_event` as soon as it is known, while
    /// the next batch of blocks is already being fetched: catching up costs the fetching or
    /// the processing, whichever is slower, not both. `on_event` returns false to stop; the
    /// follower then stands at the last event handed over.
    pub fn poll_each(
        &mut self,
        backend: &dyn ChainBackend,
        on_event: &mut dyn FnMut(BlockEvent) -> bool,
    ) -> Result<(), FollowError> {
        let tip = backend.tip()?;
        if self.last() == Some(tip) {
            return Ok(());
        }
        // Find the newest remembered block still active; everything above it was reorged out.
        // Nothing changes until the fork point is known, so a reorg deeper than the window
        // leaves the follower where it was (and its caller decides, knowing that).
        let mut keep = self.recent.len();
        while keep > 0 {
            let top = self.recent[keep - 1];
            if backend.block_hash(top.height)? == Some(top.hash) {
                break;
            }
            keep -= 1;
        }
        if keep == 0 && !self.recent.is_empty() {
            return Err(FollowError::TooDeep(self.recent.len()));
        }
        while self.recent.len() > keep {
            let gone = self.recent.pop().expect("above the fork point");
            if !on_event(BlockEvent::Disconnected { height: gone.height, hash: gone.hash }) {
                return Ok(());
            }
        }
        let first = self.last().map(|b| b.height + 1).unwrap_or(0);
        if first > tip.height {
            return Ok(());
        }
        // Far behind (a restart, an outage): batches of blocks, one round trip each, fetched
        // one batch ahead of the consumer.
        std::thread::scope(|scope| {
            let (batches, received) = std::sync::mpsc::sync_channel::<Result<_, BackendError>>(1);
            scope.spawn(move || {
                let mut next = first;
                while next <= tip.height {
                    let count = (tip.height - next + 1).min(FETCH_BATCH);
                    let fetched = backend
                        .block_hashes(next..next + count)
                        .and_then(|hashes| Ok((next, backend.raw_blocks(&hashes)?, hashes)));
                    let done = match &fetched {
                        Ok((_, _, hashes)) => hashes.len() < count as usize,
                        Err(_) => true,
                    };
                    next += count;
                    // The consumer stopped (or failed): stop fetching.
                    if batches.send(fetched).is_err() || done {
                        break;
                    }
                }
            });
            for batch in received {
                let (mut height, raws, hashes) = batch?;
                for (hash, raw) in hashes.into_iter().zip(raws) {
                    let header: bitcoin::block::Header =
                        deserialize(raw.get(..80).ok_or_else(|| BackendError::Decode("short block".into()))?)
                            .map_err(|e| BackendError::Decode(e.to_string()))?;
                    if header.block_hash() != hash {
                        return Err(
                            BackendError::Decode(format!("block {hash} does not hash to itself")).into()
                        );
                    }
                    // The chain moved while we walked it: stop here, the next poll continues.
                    if self.last().is_some_and(|prev| header.prev_blockhash != prev.hash) {
                        return Ok(());
                    }
                    self.recent.push(BlockId { height, hash });
                    if !on_event(BlockEvent::Connected { height, hash, raw }) {
                        return Ok(());
                    }
                    height += 1;
                }
                let excess = self.recent.len().saturating_sub(self.depth);
                self.recent.drain(..excess);
            }
            Ok(())
        })
    }

    /// Transactions that entered the mempool since the last call (fetched in full).
    pub fn poll_mempool(&mut self, backend: &dyn ChainBackend) -> Result<Vec<Transaction>, BackendError> {
        let snapshot = backend.mempool()?;
        if self.mempool_sequence == Some(snapshot.sequence) {
            return Ok(Vec::new());
        }
        self.mempool_sequence = Some(snapshot.sequence);
        let now: HashSet<Txid> = snapshot.txids.iter().copied().collect();
        let mut new = Vec::new();
        for txid in &snapshot.txids {
            if !self.seen_mempool.contains(txid) {
                if let Some(tx) = backend.transaction(txid)? {
                    new.push(tx);
                }
            }
        }
        self.seen_mempool = now;
        Ok(new)
    }
}
