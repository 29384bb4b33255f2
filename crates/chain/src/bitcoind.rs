//! [`BitcoindRpc`]: Bitcoin Core's JSON-RPC (or `vigil node`'s), and its REST interface for
//! blocks. Credentials are `rpcuser`/`rpcpassword`, or the `.cookie` file a node writes when
//! it has no password (read again whenever the node refuses it: a restarted node writes a
//! new one).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use base64::Engine;
use bitcoin::consensus::{deserialize, encode::serialize_hex};
use bitcoin::hex::FromHex;
use bitcoin::{BlockHash, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use serde_json::{json, Value};

use crate::{btc_per_kvb_to_sat_per_vb, btc_to_sat, BackendError, BlockId, ChainBackend, MempoolSnapshot};

/// Bitcoin Core's JSON-RPC (or `vigil node`'s).
pub struct BitcoindRpc {
    url: String,
    /// The `Authorization` header.
    auth: RwLock<String>,
    /// Where the node's cookie is, when that is how we authenticate.
    cookie: Option<PathBuf>,
    agent: ureq::Agent,
    next_id: AtomicU64,
    rest: bool,
}

fn basic(user_password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password))
}

/// The `Authorization` header a cookie file gives (`__cookie__:<hex>`); empty when unreadable.
fn cookie_auth(path: &Path) -> String {
    std::fs::read_to_string(path).map(|c| basic(c.trim())).unwrap_or_default()
}

impl BitcoindRpc {
    /// A client for `url` (e.g. `http://127.0.0.1:18443`) with Core's `rpcuser`/`rpcpassword`.
    pub fn new(url: &str, user: &str, password: &str) -> BitcoindRpc {
        Self::with_auth(url, basic(&format!("{user}:{password}")), None)
    }

    /// A client for `url` authenticating with the node's cookie file (`<datadir>/.cookie`).
    pub fn with_cookie(url: &str, cookie: &Path) -> BitcoindRpc {
        Self::with_auth(url, cookie_auth(cookie), Some(cookie.to_owned()))
    }

    fn with_auth(url: &str, auth: String, cookie: Option<PathBuf>) -> BitcoindRpc {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build();
        BitcoindRpc {
            url: url.to_owned(),
            auth: RwLock::new(auth),
            cookie,
            agent,
            next_id: AtomicU64::new(1),
            rest: false,
        }
    }

    /// Posts a JSON-RPC body; with a cookie, a refusal re-reads it once (the node restarted).
    fn post(&self, body: &Value) -> Result<ureq::Response, BackendError> {
        let send = || {
            let auth = self.auth.read().expect("auth").clone();
            self.agent.post(&self.url).set("Authorization", &auth).send_json(body).map_err(Box::new)
        };
        let mut result = send();
        if let (Err(e), Some(cookie)) = (&result, &self.cookie) {
            if matches!(**e, ureq::Error::Status(401, _)) {
                *self.auth.write().expect("auth") = cookie_auth(cookie);
                result = send();
            }
        }
        match result.map_err(|e| *e) {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(401, _)) => Err(BackendError::Unauthorized),
            // Core answers RPC errors with HTTP 500 (404 for unknown methods) and a JSON body.
            Err(ureq::Error::Status(_, r)) => Ok(r),
            Err(e) => Err(BackendError::Unreachable(e.to_string())),
        }
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
        let response = self.post(&json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params}))?;
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
        let response = self.post(&Value::Array(body))?;
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

    fn unhex(s: &str) -> Result<Vec<u8>, BackendError> {
        Vec::<u8>::from_hex(s).map_err(|e| BackendError::Decode(format!("hex: {e}")))
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
            auth: RwLock::new(self.auth.read().expect("auth").clone()),
            cookie: self.cookie.clone(),
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

    fn transaction_info(&self, txid: &Txid) -> Result<Option<(Transaction, Option<u32>)>, BackendError> {
        let v = match self.call("getrawtransaction", json!([txid.to_string(), 1])) {
            Ok(v) => v,
            Err(BackendError::Rpc { code: -5, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tx: Transaction = Self::hex(v.get("hex").unwrap_or(&Value::Null))?;
        let height = match v.get("blockhash").and_then(Value::as_str) {
            None => None,
            Some(hash) => {
                let header = self.call("getblockheader", json!([hash, true]))?;
                // A block off the active chain confirms nothing.
                if header.get("confirmations").and_then(Value::as_i64).unwrap_or(-1) < 1 {
                    None
                } else {
                    let h = header.get("height").and_then(Value::as_u64);
                    Some(h.ok_or_else(|| BackendError::Decode("no height".into()))? as u32)
                }
            }
        };
        Ok(Some((tx, height)))
    }

    fn unspent_output(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, BackendError> {
        let v = self.call("gettxout", json!([outpoint.txid.to_string(), outpoint.vout, true]))?;
        if v.is_null() {
            return Ok(None);
        }
        let value = v
            .get("value")
            .and_then(Value::as_f64)
            .and_then(btc_to_sat)
            .ok_or_else(|| BackendError::Decode(format!("gettxout value: {v}")))?;
        let script = v["scriptPubKey"]["hex"]
            .as_str()
            .ok_or_else(|| BackendError::Decode(format!("gettxout script: {v}")))?;
        Ok(Some(TxOut { value, script_pubkey: ScriptBuf::from_bytes(Self::unhex(script)?) }))
    }

    fn fee_estimate(&self, blocks: u16) -> Result<Option<u64>, BackendError> {
        match self.call("estimatesmartfee", json!([blocks])) {
            Ok(v) => Ok(v.get("feerate").and_then(Value::as_f64).and_then(btc_per_kvb_to_sat_per_vb)),
            Err(BackendError::Rpc { code: -32601, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn mempool_fee(&self, tx: &Transaction) -> Result<Option<u64>, BackendError> {
        match self.call("getmempoolentry", json!([tx.compute_txid().to_string()])) {
            Ok(v) => Ok(v["fees"]["base"].as_f64().and_then(btc_to_sat).map(|a| a.to_sat())),
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
