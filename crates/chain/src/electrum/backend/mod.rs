//! [`ChainBackend`] over an Electrum server, for towers and clients without a node of their own.
//!
//! Electrum serves headers and per-script histories, not blocks. So the consumer names the
//! scripts it cares about ([`ChainBackend::watch_scripts`]), and a "block" from this backend is
//! *filtered*: the real header, followed by exactly the watched scripts' transactions confirmed
//! in it, in block order. Each is proven to be in that block by its merkle branch against the
//! header, so a server cannot place a transaction in a block it is not in; a server can still
//! hide one, which is why a tower should have more than one source (other towers, another
//! backend).
//!
//! Every header is checked as far as a light client can ([`super::headers`]): the server's
//! genesis names the network, and the server's chain is followed header by header from a block
//! Bitcoin Core ships as trusted, each carrying the proof of work its height requires, so a
//! merkle proof against it is a proof of confirmation.
//!
//! Freshness: the server pushes a status for each subscribed script when its history changes.
//! Those pushes are a hint; whenever the tip changes every status is asked again (pipelined,
//! one round trip), so a block's transactions are never missed for want of a notification.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize_hex, serialize};
use bitcoin::hashes::{sha256, sha256d, Hash, HashEngine};
use bitcoin::hex::FromHex;
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf, Transaction, TxMerkleNode, TxOut, Txid};
use serde_json::{json, Value};

use super::client::{parse_history, scripthash, ElectrumClient, HistoryItem, LineStream, Notification};
use super::headers::{network_of, Anchor, HeaderChain, HeaderRules};
use crate::{btc_per_kvb_to_sat_per_vb, BackendError, BlockId, ChainBackend, MempoolSnapshot};

/// An Electrum server as a chain backend (plain TCP, `host:port`).
pub struct ElectrumBackend {
    address: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    client: Option<ElectrumClient<LineStream>>,
    /// By scripthash.
    scripts: HashMap<String, Watched>,
    tip: Option<BlockId>,
    /// The server's headers from its network's anchor on, checked (known once connected).
    chain: Option<HeaderChain>,
    /// Watched transactions fetched so far.
    txs: HashMap<Txid, Transaction>,
}

struct Watched {
    subscribed: bool,
    status: Option<String>,
    history: Vec<HistoryItem>,
    stale: bool,
}

/// Watched transactions kept fetched, at most.
const TXS_KEPT: usize = 100_000;

/// Headers per `blockchain.block.headers` request (the protocol's maximum).
const HEADERS_PER_REQUEST: u32 = 2_016;

impl ElectrumBackend {
    /// A backend for the server at `address` (`127.0.0.1:50001`); connects on first use and
    /// reconnects (resubscribing everything) after the connection drops.
    pub fn new(address: &str) -> ElectrumBackend {
        let address = address.trim_start_matches("tcp://").to_owned();
        ElectrumBackend { address, state: Mutex::new(State::default()) }
    }

    /// Runs `f` with a connected client. A connection that failed or returned garbage is
    /// dropped, so the next call starts afresh.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut State, &mut ElectrumClient<LineStream>) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut state = self.state.lock().map_err(|_| BackendError::Unreachable("poisoned".into()))?;
        let mut client = match state.client.take() {
            Some(c) => c,
            None => {
                let mut c = ElectrumClient::connect(&self.address)?;
                for w in state.scripts.values_mut() {
                    w.subscribed = false;
                }
                state.tip = None;
                if state.chain.is_none() {
                    let genesis = header_from_hex(&c.call("blockchain.block.header", json!([0]))?)?;
                    let network = network_of(&genesis.block_hash()).ok_or_else(|| {
                        BackendError::Invalid(format!(
                            "the server's genesis {} is no network's",
                            genesis.block_hash()
                        ))
                    })?;
                    let anchor = Anchor::of(network);
                    let start = anchor.period_start();
                    let headers = fetch_headers(&mut c, start, anchor.height - start + 1)?;
                    let chain = HeaderChain::from_anchor(HeaderRules::new(network), anchor, &headers);
                    state.chain = Some(chain.map_err(BackendError::Invalid)?);
                }
                c
            }
        };
        let result = f(&mut state, &mut client);
        if !matches!(
            result,
            Err(BackendError::Unreachable(_)) | Err(BackendError::Decode(_)) | Err(BackendError::Invalid(_))
        ) {
            state.client = Some(client);
        }
        result
    }
}

impl State {
    /// Subscribes new scripts, takes pushed statuses, asks every status again if `recheck`,
    /// and fetches the histories that changed.
    fn refresh(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        recheck: bool,
    ) -> Result<(), BackendError> {
        for n in client.notifications() {
            if let Notification::Scripthash { scripthash, status } = n {
                if let Some(w) = self.scripts.get_mut(&scripthash) {
                    w.stale |= w.status != status;
                    w.status = status;
                }
            }
        }
        let ask: Vec<String> =
            self.scripts.iter().filter(|(_, w)| recheck || !w.subscribed).map(|(h, _)| h.clone()).collect();
        let calls: Vec<(&str, Value)> =
            ask.iter().map(|h| ("blockchain.scripthash.subscribe", json!([h]))).collect();
        for (hash, answer) in ask.iter().zip(client.call_many(&calls)?) {
            let status = answer?.as_str().map(str::to_owned);
            let w = self.scripts.get_mut(hash).expect("asked for a watched script");
            w.stale |= !w.subscribed || w.status != status;
            w.subscribed = true;
            w.status = status;
        }
        let stale: Vec<String> =
            self.scripts.iter().filter(|(_, w)| w.stale).map(|(h, _)| h.clone()).collect();
        let calls: Vec<(&str, Value)> =
            stale.iter().map(|h| ("blockchain.scripthash.get_history", json!([h]))).collect();
        for (hash, answer) in stale.iter().zip(client.call_many(&calls)?) {
            let w = self.scripts.get_mut(hash).expect("asked for a watched script");
            w.history = parse_history(&answer?)?;
            w.stale = false;
        }
        Ok(())
    }

    fn chain(&mut self) -> &mut HeaderChain {
        self.chain.as_mut().expect("known once connected")
    }

    /// Checks that `header`, which the server sent for `height`, is on the server's chain as
    /// verified, following the server's chain up to it first.
    fn accept(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        height: u32,
        header: Header,
    ) -> Result<BlockHash, BackendError> {
        let hash = header.block_hash();
        if self.chain().hash(height) == Some(hash) {
            return Ok(hash);
        }
        if height <= self.chain().tip() {
            // The server's chain changed beneath what is known: follow it to its tip.
            let (tip_height, tip) = server_tip(client)?;
            if self.chain().hash(tip_height) != Some(tip.block_hash()) {
                self.follow(client, tip_height, tip)?;
            }
        } else {
            self.follow(client, height, header)?;
        }
        if self.chain().hash(height) != Some(hash) {
            return Err(BackendError::Invalid(format!(
                "the server's header at height {height} is not on its own chain"
            )));
        }
        Ok(hash)
    }

    /// Adds the server's chain up to `header` at `height`, a batch of headers at a time, each
    /// checked before the next is asked for (a server announcing an absurd height gets no
    /// further than the headers it can show).
    fn follow(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        height: u32,
        header: Header,
    ) -> Result<(), BackendError> {
        if height > self.chain().tip() + 1 && !self.sync_to(client, height - 1)? {
            return Err(BackendError::Invalid(format!(
                "the server announces height {height} but has no headers up to it"
            )));
        }
        self.extend(client, height, vec![header])
    }

    /// Makes the chain reach down to `height`, below its base, a batch at a time: the server's
    /// headers from there must link up to the base, so they are the real ones.
    fn reach_down(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        height: u32,
    ) -> Result<(), BackendError> {
        while self.chain().base() > height {
            let base = self.chain().base();
            let from = base.saturating_sub(HEADERS_PER_REQUEST).max(height);
            let headers = fetch_headers(client, from, base - from)?;
            self.chain().prepend(from, &headers).map_err(BackendError::Invalid)?;
        }
        Ok(())
    }

    /// Brings the chain up to `height`; false if the server has no header there.
    fn sync_to(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        height: u32,
    ) -> Result<bool, BackendError> {
        while self.chain().tip() < height {
            let start = self.chain().tip() + 1;
            let headers = fetch_headers(client, start, (height - start + 1).min(HEADERS_PER_REQUEST))?;
            if headers.is_empty() {
                return Ok(false);
            }
            self.extend(client, start, headers)?;
        }
        Ok(true)
    }

    /// Adds the server's `headers` from `start` on. If they do not follow the known chain, the
    /// server reorganised below `start`: earlier headers are fetched until they do.
    fn extend(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        mut start: u32,
        mut headers: Vec<Header>,
    ) -> Result<(), BackendError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().min(u32::MAX.into()) as u32);
        let mut back = 8;
        loop {
            let chain = self.chain();
            if start <= chain.base() {
                return Err(BackendError::Invalid(format!(
                    "the server's chain leaves the anchored one at height {start}"
                )));
            }
            let below = chain.hash(start - 1);
            if headers.first().is_none_or(|h| Some(h.prev_blockhash) == below) {
                return chain.extend(start, &headers, now).map_err(BackendError::Invalid);
            }
            if start <= chain.base() + 1 {
                return Err(BackendError::Invalid(format!(
                    "the server's chain leaves the anchored one below height {start}"
                )));
            }
            let back_to = start.saturating_sub(back).max(chain.base() + 1);
            let earlier = fetch_headers(client, back_to, start - back_to)?;
            if earlier.len() as u32 != start - back_to {
                return Err(BackendError::Decode(format!("the server has no headers from {back_to}")));
            }
            headers.splice(0..0, earlier);
            start = back_to;
            back *= 4;
        }
    }

    /// Watched transactions, fetched once each.
    fn fetch(&mut self, client: &mut ElectrumClient<LineStream>, txids: &[Txid]) -> Result<(), BackendError> {
        let missing: Vec<Txid> = txids.iter().filter(|t| !self.txs.contains_key(*t)).copied().collect();
        let calls: Vec<(&str, Value)> =
            missing.iter().map(|t| ("blockchain.transaction.get", json!([t.to_string()]))).collect();
        if self.txs.len() + missing.len() > TXS_KEPT {
            self.txs.retain(|t, _| txids.contains(t));
        }
        for (txid, answer) in missing.iter().zip(client.call_many(&calls)?) {
            let tx: Transaction = answer?
                .as_str()
                .ok_or_else(|| BackendError::Decode("transaction is not hex".into()))
                .and_then(|h| deserialize_hex(h).map_err(|e| BackendError::Decode(e.to_string())))?;
            if tx.compute_txid() != *txid {
                return Err(BackendError::Decode(format!(
                    "the server answered another transaction for {txid}"
                )));
            }
            self.txs.insert(*txid, tx);
        }
        Ok(())
    }
}

/// `count` headers from `start` on, fewer where the server's chain ends.
fn fetch_headers(
    client: &mut ElectrumClient<LineStream>,
    start: u32,
    count: u32,
) -> Result<Vec<Header>, BackendError> {
    let mut out = Vec::with_capacity(count.min(HEADERS_PER_REQUEST) as usize);
    while (out.len() as u32) < count {
        let from = start + out.len() as u32;
        let ask = (count - out.len() as u32).min(HEADERS_PER_REQUEST);
        let v = client.call("blockchain.block.headers", json!([from, ask]))?;
        let hex = v["hex"].as_str().ok_or_else(|| BackendError::Decode(format!("no headers in {v}")))?;
        let bytes = Vec::<u8>::from_hex(hex).map_err(|e| BackendError::Decode(format!("headers: {e}")))?;
        if bytes.len() % 80 != 0 || bytes.len() / 80 > ask as usize {
            return Err(BackendError::Decode(format!("{} bytes are not at most {ask} headers", bytes.len())));
        }
        for raw in bytes.chunks_exact(80) {
            out.push(
                bitcoin::consensus::deserialize(raw)
                    .map_err(|e| BackendError::Decode(format!("header: {e}")))?,
            );
        }
        if bytes.len() / 80 < ask as usize {
            break;
        }
    }
    Ok(out)
}

/// The server's tip: its height and header.
fn server_tip(client: &mut ElectrumClient<LineStream>) -> Result<(u32, Header), BackendError> {
    let v = client.call("blockchain.headers.subscribe", json!([]))?;
    let height = v
        .get("height")
        .and_then(Value::as_u64)
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| BackendError::Decode(format!("no height in {v}")))?;
    Ok((height, header_from_hex(&v["hex"])?))
}

/// A header as Electrum sends it: hex in a JSON string.
pub fn header_from_hex(v: &Value) -> Result<Header, BackendError> {
    let hex = v.as_str().ok_or_else(|| BackendError::Decode(format!("header is not hex: {v}")))?;
    deserialize_hex(hex).map_err(|e| BackendError::Decode(format!("header: {e}")))
}

/// `txid`'s position in the block at `height`, from the server's merkle `proof`, once that
/// proves it against the block's `header`.
fn proven_position(txid: Txid, height: u32, proof: &Value, header: &Header) -> Result<u64, BackendError> {
    let pos = proof["pos"].as_u64().ok_or_else(|| BackendError::Decode(format!("no pos in {proof}")))?;
    let branch = proof["merkle"].as_array().map(Vec::as_slice).unwrap_or_default();
    if merkle_root(txid, pos, branch)? != header.merkle_root {
        return Err(BackendError::Invalid(format!("{txid} is not proven in the block at height {height}")));
    }
    Ok(pos)
}

/// The merkle root that `txid` at `pos` with `branch` (Electrum's display-order hex) proves.
pub fn merkle_root(txid: Txid, pos: u64, branch: &[Value]) -> Result<TxMerkleNode, BackendError> {
    let mut node = txid.to_raw_hash();
    for (level, sibling) in branch.iter().enumerate() {
        let sibling: sha256d::Hash = sibling
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BackendError::Decode(format!("bad merkle branch entry {sibling}")))?;
        let mut engine = sha256d::Hash::engine();
        if (pos >> level) & 1 == 1 {
            engine.input(sibling.as_byte_array());
            engine.input(node.as_byte_array());
        } else {
            engine.input(node.as_byte_array());
            engine.input(sibling.as_byte_array());
        }
        node = sha256d::Hash::from_engine(engine);
    }
    Ok(TxMerkleNode::from_raw_hash(node))
}

impl ChainBackend for ElectrumBackend {
    fn tip(&self) -> Result<BlockId, BackendError> {
        self.with(|state, client| {
            let (height, header) = server_tip(client)?;
            let hash = state.accept(client, height, header)?;
            let moved = state.tip.map(|t| t.hash) != Some(hash);
            state.refresh(client, moved)?;
            let tip = BlockId { height, hash };
            state.tip = Some(tip);
            Ok(tip)
        })
    }

    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, BackendError> {
        Ok(self.block_hashes(height..height + 1)?.pop())
    }

    fn block_hashes(&self, heights: std::ops::Range<u32>) -> Result<Vec<BlockHash>, BackendError> {
        self.with(|state, client| {
            if !heights.is_empty() {
                state.reach_down(client, heights.start)?;
                state.sync_to(client, heights.end - 1)?;
            }
            let chain = state.chain();
            Ok(heights.map_while(|h| chain.hash(h)).collect())
        })
    }

    fn raw_block(&self, hash: &BlockHash) -> Result<Vec<u8>, BackendError> {
        self.with(|state, client| {
            // Scripts watched since the last poll count in this block already (a wallet scan
            // moves its window on mid-way).
            if state.scripts.values().any(|w| !w.subscribed) {
                state.refresh(client, false)?;
            }
            let chain = state.chain();
            let height = chain
                .height_of(hash)
                .ok_or_else(|| BackendError::Decode(format!("block {hash} is not on the server's chain")))?;
            let header = *chain.header(height).expect("a height on the chain");
            let txids: Vec<Txid> = state
                .scripts
                .values()
                .flat_map(|w| &w.history)
                .filter(|item| item.height == i64::from(height))
                .map(|item| item.txid)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            state.fetch(client, &txids)?;
            let calls: Vec<(&str, Value)> = txids
                .iter()
                .map(|t| ("blockchain.transaction.get_merkle", json!([t.to_string(), height])))
                .collect();
            let mut placed = Vec::new();
            for (txid, answer) in txids.iter().zip(client.call_many(&calls)?) {
                // A reorg between the history and the proof, or a lying server: either way
                // this block cannot be trusted now; the follower asks again.
                let pos = proven_position(*txid, height, &answer?, &header)?;
                let tx = state.txs.get(txid).cloned();
                placed
                    .push((pos, tx.ok_or_else(|| BackendError::Decode(format!("{txid} was not fetched")))?));
            }
            placed.sort_by_key(|(pos, _)| *pos);
            Ok(serialize(&Block { header, txdata: placed.into_iter().map(|(_, tx)| tx).collect() }))
        })
    }

    fn broadcast(&self, tx: &Transaction) -> Result<Txid, BackendError> {
        self.with(|_, client| client.broadcast(tx))
    }

    fn mempool(&self) -> Result<MempoolSnapshot, BackendError> {
        self.with(|state, client| {
            // Reads whatever the server pushed since the last call.
            client.call("server.ping", json!([]))?;
            state.refresh(client, false)?;
            let txids: BTreeSet<Txid> = state
                .scripts
                .values()
                .flat_map(|w| &w.history)
                .filter(|item| item.height <= 0)
                .map(|item| item.txid)
                .collect();
            // The set itself is the version: equal sets, equal sequence.
            let mut engine = sha256::Hash::engine();
            for t in &txids {
                engine.input(t.as_byte_array());
            }
            let digest = sha256::Hash::from_engine(engine).to_byte_array();
            let sequence = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
            Ok(MempoolSnapshot { txids: txids.into_iter().collect(), sequence })
        })
    }

    fn transaction(&self, txid: &Txid) -> Result<Option<Transaction>, BackendError> {
        self.with(|state, client| match state.fetch(client, std::slice::from_ref(txid)) {
            Ok(()) => Ok(state.txs.get(txid).cloned()),
            Err(BackendError::Rpc { .. }) => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn transaction_info(&self, txid: &Txid) -> Result<Option<(Transaction, Option<u32>)>, BackendError> {
        let Some(tx) = self.transaction(txid)? else { return Ok(None) };
        // Electrum knows heights by script: its first output's history places it.
        let Some(script) = tx.output.first().map(|o| o.script_pubkey.clone()) else {
            return Ok(Some((tx, None)));
        };
        let history = self.with(|_, client| {
            parse_history(&client.call("blockchain.scripthash.get_history", json!([scripthash(&script)]))?)
        })?;
        let height = history
            .iter()
            .find(|i| i.txid == *txid)
            .and_then(|i| u32::try_from(i.height).ok())
            .filter(|h| *h > 0);
        // A confirmation the server claims is proven against the verified chain.
        if let Some(height) = height {
            self.with(|state, client| {
                state.reach_down(client, height)?;
                let header = match state.sync_to(client, height)? {
                    true => *state.chain().header(height).expect("synced"),
                    false => return Err(BackendError::Invalid(format!("no header at height {height}"))),
                };
                let proof =
                    client.call("blockchain.transaction.get_merkle", json!([txid.to_string(), height]))?;
                proven_position(*txid, height, &proof, &header).map(|_| ())
            })?;
        }
        Ok(Some((tx, height)))
    }

    fn unspent_output(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, BackendError> {
        let Some(parent) = self.transaction(&outpoint.txid)? else { return Ok(None) };
        let Some(out) = parent.output.get(outpoint.vout as usize).cloned() else { return Ok(None) };
        let unspent = self.with(|_, client| {
            let v =
                client.call("blockchain.scripthash.listunspent", json!([scripthash(&out.script_pubkey)]))?;
            let list = v.as_array().ok_or_else(|| BackendError::Decode(format!("listunspent: {v}")))?;
            Ok(list.iter().any(|u| {
                u["tx_hash"].as_str() == Some(&outpoint.txid.to_string())
                    && u["tx_pos"].as_u64() == Some(outpoint.vout.into())
            }))
        })?;
        Ok(unspent.then_some(out))
    }

    fn fee_estimate(&self, blocks: u16) -> Result<Option<u64>, BackendError> {
        self.with(|_, client| {
            let v = client.call("blockchain.estimatefee", json!([blocks]))?;
            Ok(v.as_f64().and_then(btc_per_kvb_to_sat_per_vb))
        })
    }

    fn wait_for_new_block(&self, timeout: Duration) -> Result<BlockId, BackendError> {
        let start = self.tip()?;
        let deadline = Instant::now() + timeout;
        loop {
            let tip = self.tip()?;
            if tip != start || Instant::now() >= deadline {
                return Ok(tip);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn watch_scripts(&self, scripts: &[ScriptBuf]) {
        if let Ok(mut state) = self.state.lock() {
            for script in scripts {
                state.scripts.entry(scripthash(script)).or_insert(Watched {
                    subscribed: false,
                    status: None,
                    history: Vec::new(),
                    stale: true,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
