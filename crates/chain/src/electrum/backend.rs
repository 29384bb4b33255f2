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
//! genesis names the network, and each header must carry the proof of work its height
//! requires, so a merkle proof against it is a proof of confirmation.
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
use super::headers::{network_of, HeaderRules, Periods};
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
    /// The server's network's header rules, from its genesis.
    rules: Option<HeaderRules>,
    /// The difficulty periods verified so far (on retargeting networks).
    periods: Option<Periods>,
    /// Headers seen and checked, by hash (pruned to recent ones).
    headers: HashMap<BlockHash, (u32, Header)>,
    /// Watched transactions fetched so far.
    txs: HashMap<Txid, Transaction>,
}

struct Watched {
    subscribed: bool,
    status: Option<String>,
    history: Vec<HistoryItem>,
    stale: bool,
}

/// Headers kept for lookups; the follower never asks for older ones than its window.
const HEADERS_KEPT: u32 = 5_000;

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
                if state.rules.is_none() {
                    let genesis = header_from_hex(&c.call("blockchain.block.header", json!([0]))?)?;
                    let network = network_of(&genesis.block_hash()).ok_or_else(|| {
                        BackendError::Invalid(format!(
                            "the server's genesis {} is no network's",
                            genesis.block_hash()
                        ))
                    })?;
                    state.rules = Some(HeaderRules::new(network));
                    state.periods = Some(Periods::new(genesis.bits));
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

    /// Checks a header the server sent for `height` and remembers it.
    fn accept(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        height: u32,
        header: Header,
    ) -> Result<BlockHash, BackendError> {
        let rules = self.rules.clone().expect("known once connected");
        let hash = rules.check_work(height, &header).map_err(BackendError::Invalid)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().min(u32::MAX.into()) as u32);
        rules.check_time(height, &header, now).map_err(BackendError::Invalid)?;
        if rules.retargets() {
            self.verify_periods(client, &rules, height)?;
        }
        let periods = self.periods.as_mut().expect("known once connected");
        if let Err(e) = rules.check_difficulty(height, &header, periods.bits(height)) {
            // A reorganisation across the newest period's boundary may have changed its bits:
            // that one period is verified again, once.
            if !rules.retargets() || !periods.is_newest(height) {
                return Err(BackendError::Invalid(e));
            }
            periods.forget_from(height);
            self.verify_periods(client, &rules, height)?;
            let periods = self.periods.as_ref().expect("known once connected");
            rules.check_difficulty(height, &header, periods.bits(height)).map_err(BackendError::Invalid)?;
        }
        self.headers.insert(hash, (height, header));
        if self.headers.len() > 2 * HEADERS_KEPT as usize {
            let floor = height.saturating_sub(HEADERS_KEPT);
            self.headers.retain(|_, (h, _)| *h >= floor);
        }
        Ok(hash)
    }

    /// Verifies the difficulty periods up to `height`'s, fetching the two headers each new
    /// one needs (on mainnet, once for the whole history at the first connection: ~450 batched
    /// requests of a header each).
    fn verify_periods(
        &mut self,
        client: &mut ElectrumClient<LineStream>,
        rules: &HeaderRules,
        height: u32,
    ) -> Result<(), BackendError> {
        let periods = self.periods.as_mut().expect("known once connected");
        let needed = periods.needed(height);
        let mut fetched = HashMap::new();
        for chunk in needed.chunks(500) {
            let calls: Vec<(&str, Value)> =
                chunk.iter().map(|h| ("blockchain.block.header", json!([h]))).collect();
            for (h, answer) in chunk.iter().zip(client.call_many(&calls)?) {
                fetched.insert(*h, header_from_hex(&answer?)?);
            }
        }
        periods.extend(rules, height, &|h| fetched.get(&h).copied()).map_err(BackendError::Invalid)
    }

    /// Watched transactions, fetched once each.
    fn fetch(&mut self, client: &mut ElectrumClient<LineStream>, txids: &[Txid]) -> Result<(), BackendError> {
        let missing: Vec<Txid> = txids.iter().filter(|t| !self.txs.contains_key(*t)).copied().collect();
        let calls: Vec<(&str, Value)> =
            missing.iter().map(|t| ("blockchain.transaction.get", json!([t.to_string()]))).collect();
        if self.txs.len() + missing.len() > 100_000 {
            self.txs.clear();
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

/// A header as Electrum sends it: hex in a JSON string.
pub fn header_from_hex(v: &Value) -> Result<Header, BackendError> {
    let hex = v.as_str().ok_or_else(|| BackendError::Decode(format!("header is not hex: {v}")))?;
    deserialize_hex(hex).map_err(|e| BackendError::Decode(format!("header: {e}")))
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
            let v = client.call("blockchain.headers.subscribe", json!([]))?;
            let height =
                v.get("height")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| BackendError::Decode(format!("no height in {v}")))? as u32;
            let hash = state.accept(client, height, header_from_hex(&v["hex"])?)?;
            let moved = state.tip.map(|t| t.hash) != Some(hash);
            state.refresh(client, moved)?;
            let tip = BlockId { height, hash };
            state.tip = Some(tip);
            Ok(tip)
        })
    }

    fn block_hash(&self, height: u32) -> Result<Option<BlockHash>, BackendError> {
        self.with(|state, client| match client.call("blockchain.block.header", json!([height])) {
            Ok(v) => Ok(Some(state.accept(client, height, header_from_hex(&v)?)?)),
            // Beyond the server's tip.
            Err(BackendError::Rpc { .. }) if state.tip.is_some_and(|t| height > t.height) => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn block_hashes(&self, heights: std::ops::Range<u32>) -> Result<Vec<BlockHash>, BackendError> {
        self.with(|state, client| {
            let mut out = Vec::new();
            let mut start = heights.start;
            while start < heights.end {
                let count = (heights.end - start).min(2_016);
                let v = client.call("blockchain.block.headers", json!([start, count]))?;
                let hex =
                    v["hex"].as_str().ok_or_else(|| BackendError::Decode(format!("no headers in {v}")))?;
                let bytes =
                    Vec::<u8>::from_hex(hex).map_err(|e| BackendError::Decode(format!("headers: {e}")))?;
                if bytes.len() % 80 != 0 {
                    return Err(BackendError::Decode("headers are not 80 bytes each".into()));
                }
                for (i, raw) in bytes.chunks_exact(80).enumerate() {
                    let header: Header = bitcoin::consensus::deserialize(raw)
                        .map_err(|e| BackendError::Decode(format!("header: {e}")))?;
                    out.push(state.accept(client, start + i as u32, header)?);
                }
                if (bytes.len() / 80) < count as usize {
                    break;
                }
                start += count;
            }
            Ok(out)
        })
    }

    fn raw_block(&self, hash: &BlockHash) -> Result<Vec<u8>, BackendError> {
        self.with(|state, client| {
            let (height, header) = *state
                .headers
                .get(hash)
                .ok_or_else(|| BackendError::Decode(format!("block {hash} was never announced")))?;
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
                let proof = answer?;
                let pos = proof["pos"]
                    .as_u64()
                    .ok_or_else(|| BackendError::Decode(format!("no pos in {proof}")))?;
                let branch = proof["merkle"].as_array().map(Vec::as_slice).unwrap_or_default();
                if merkle_root(*txid, pos, branch)? != header.merkle_root {
                    // A reorg between the history and the proof, or a lying server: either
                    // way this block cannot be trusted now; the follower asks again.
                    return Err(BackendError::Invalid(format!(
                        "{txid} is not proven in block {hash} at height {height}"
                    )));
                }
                placed.push((pos, state.txs[txid].clone()));
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
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use bitcoin::block::Version;
    use bitcoin::consensus::encode::serialize_hex;
    use bitcoin::pow::CompactTarget;

    use super::*;

    /// An Electrum server on loopback that serves `genesis` and announces `tip` at height 1.
    fn lying_server(genesis: Header, tip: Header) -> String {
        server(HashMap::from([(0, genesis), (1, tip)]), 1)
    }

    /// An Electrum server on loopback that serves `headers` by height and announces the one
    /// at `tip`.
    fn server(headers: HashMap<u32, Header>, tip: u32) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let request: Value = serde_json::from_str(&line).unwrap();
                    let result = match request["method"].as_str().unwrap() {
                        "server.version" => json!(["liar", "1.4"]),
                        "blockchain.block.header" => {
                            let height = request["params"][0].as_u64().unwrap() as u32;
                            headers.get(&height).map_or(Value::Null, |h| json!(serialize_hex(h)))
                        }
                        "blockchain.headers.subscribe" => {
                            json!({"height": tip, "hex": serialize_hex(&headers[&tip])})
                        }
                        _ => Value::Null,
                    };
                    let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
                    if writeln!(writer, "{reply}").is_err() {
                        break;
                    }
                }
            }
        });
        address
    }

    /// Mainnet block 1, as mined.
    fn mainnet_block_1() -> Header {
        Header {
            version: Version::ONE,
            prev_blockhash: bitcoin::constants::genesis_block(bitcoin::Network::Bitcoin).block_hash(),
            merkle_root: "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098".parse().unwrap(),
            time: 1_231_469_665,
            bits: CompactTarget::from_consensus(0x1d00ffff),
            nonce: 2_573_394_689,
        }
    }

    #[test]
    fn a_header_without_its_proof_of_work_is_refused_so_no_fake_confirmation_can_hang_on_it() {
        let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Bitcoin).header;
        let honest = ElectrumBackend::new(&lying_server(genesis, mainnet_block_1()));
        assert_eq!(honest.tip().unwrap().height, 1);
        // The same block with another merkle root (one that would "prove" a cancel that never
        // confirmed): its hash no longer meets its target.
        let mut forged = mainnet_block_1();
        forged.merkle_root = TxMerkleNode::from_byte_array([7; 32]);
        let liar = ElectrumBackend::new(&lying_server(genesis, forged));
        assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("proof of work")));
        // A trivial target, as on regtest, is beyond mainnet's limit.
        let mut easy = forged;
        easy.bits = CompactTarget::from_consensus(0x207fffff);
        let liar = ElectrumBackend::new(&lying_server(genesis, easy));
        assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("limit")));
        // A genesis of no known network is no chain at all.
        let unknown = ElectrumBackend::new(&lying_server(forged, forged));
        assert!(matches!(unknown.tip(), Err(BackendError::Invalid(e)) if e.contains("no network")));
    }

    #[test]
    fn a_header_with_the_difficulty_of_an_earlier_period_is_refused() {
        use super::super::headers::tests::{easy, mined, EASY_BITS, PERIOD_SECS};
        // Period 0 was four times too fast: period 1's headers must be four times harder.
        let start = 1_000_000;
        let period_0 = [(0, mined(EASY_BITS, start)), (2015, mined(EASY_BITS, start + PERIOD_SECS / 4))];
        let backend = |tip: Header, extra: &[(u32, Header)]| {
            let headers = period_0.iter().chain(extra).copied().chain([(2020, tip)]).collect();
            let backend = ElectrumBackend::new(&server(headers, 2020));
            let mut state = backend.state.lock().unwrap();
            state.rules = Some(easy());
            state.periods = Some(Periods::new(CompactTarget::from_consensus(EASY_BITS)));
            drop(state);
            backend
        };
        assert_eq!(backend(mined(0x1f1fffff, start + 10), &[]).tip().unwrap().height, 2020);
        let liar = backend(mined(EASY_BITS, start + 10), &[]);
        assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("require 0x1f1fffff")));
        // Easy headers offered as period 1's first: judged by period 0, refused just the same.
        let liar = backend(mined(EASY_BITS, start + 10), &[(2016, mined(EASY_BITS, start + 5))]);
        assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("require 0x1f1fffff")));
        // A header from more than two hours ahead.
        let future = mined(0x1f1fffff, u32::MAX - 1);
        assert!(matches!(backend(future, &[]).tip(), Err(BackendError::Invalid(e)) if e.contains("future")));
    }

    #[test]
    fn a_merkle_branch_proves_its_root_and_nothing_else() {
        // Block 100,000 of mainnet: four transactions; the third one's branch.
        let a: Txid = "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87".parse().unwrap();
        let b: Txid = "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4".parse().unwrap();
        let c: Txid = "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4".parse().unwrap();
        let d: Txid = "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d".parse().unwrap();
        let root: TxMerkleNode =
            "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766".parse().unwrap();
        let pair = |x: sha256d::Hash, y: sha256d::Hash| {
            let mut e = sha256d::Hash::engine();
            e.input(x.as_byte_array());
            e.input(y.as_byte_array());
            sha256d::Hash::from_engine(e)
        };
        let ab = pair(a.to_raw_hash(), b.to_raw_hash());
        let branch = [json!(d.to_string()), json!(ab.to_string())];
        assert_eq!(merkle_root(c, 2, &branch).unwrap(), root);
        assert_ne!(merkle_root(c, 3, &branch).unwrap(), root, "the wrong position proves nothing");
        assert_ne!(merkle_root(d, 2, &branch).unwrap(), root, "another transaction proves nothing");
    }
}
