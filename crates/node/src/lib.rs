//! `vigil node`: the embedded regtest chain as its own process, speaking the subset of Bitcoin
//! Core's JSON-RPC that Vigil's bitcoind backend uses, so towers, co-signer and clients are
//! separate processes sharing one chain exactly as they would share a bitcoind, and the
//! bitcoind backend's code path runs for real in every test.
//!
//! Same method names, parameters, result shapes, error codes and HTTP behaviour as Core
//! (JSON-RPC 1.0: errors with HTTP 500, unknown methods 404; JSON-RPC 2.0: always 200; bad
//! credentials 401). Like a node started with `-txindex`, confirmed transactions are found
//! without a block hash. Core's ZMQ notifications are published with Core's flags and format
//! ([`zmq`]); without them clients follow with `waitfornewblock` long-polls and `getrawmempool`
//! with `mempool_sequence`, as they must against a bitcoind built without ZMQ.
//!
//! One method is Vigil's own, named so it cannot collide with Core's: `vigil_generateblock`
//! mines on any known parent (competing branches, reorgs) with given transactions.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::watch;
use vigil_regtest::bitcoin::consensus::{deserialize, encode::serialize_hex};
use vigil_regtest::bitcoin::hashes::Hash;
use vigil_regtest::bitcoin::hex::DisplayHex;
use vigil_regtest::bitcoin::{
    Address, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid,
};
use vigil_regtest::{ChainError, RegtestChain, SubmitError, TxStatus};

pub mod zmq;
pub use zmq::ZmqConfig;

/// Core's RPC error codes (`rpc/protocol.h`).
pub mod code {
    /// `RPC_MISC_ERROR`
    pub const MISC: i64 = -1;
    /// `RPC_TYPE_ERROR`
    pub const TYPE: i64 = -3;
    /// `RPC_INVALID_ADDRESS_OR_KEY`
    pub const INVALID_ADDRESS_OR_KEY: i64 = -5;
    /// `RPC_INVALID_PARAMETER`
    pub const INVALID_PARAMETER: i64 = -8;
    /// `RPC_DESERIALIZATION_ERROR`
    pub const DESERIALIZATION: i64 = -22;
    /// `RPC_VERIFY_ERROR`
    pub const VERIFY: i64 = -25;
    /// `RPC_VERIFY_REJECTED`
    pub const VERIFY_REJECTED: i64 = -26;
    /// `RPC_VERIFY_ALREADY_IN_UTXO_SET`
    pub const ALREADY_IN_CHAIN: i64 = -27;
    /// `RPC_METHOD_NOT_FOUND`
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// `RPC_INVALID_REQUEST`
    pub const INVALID_REQUEST: i64 = -32600;
    /// `RPC_PARSE_ERROR`
    pub const PARSE: i64 = -32700;
}

/// How to run the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The chain's data directory.
    pub datadir: PathBuf,
    /// Where to listen (loopback by default).
    pub bind: SocketAddr,
    /// RPC user.
    pub rpcuser: String,
    /// RPC password.
    pub rpcpassword: String,
    /// ZMQ notifications to publish.
    pub zmq: ZmqConfig,
}

/// An RPC error: Core's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// Core's code.
    pub code: i64,
    /// The message.
    pub message: String,
}

fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into() }
}

struct Node {
    chain: Mutex<RegtestChain>,
    tip: watch::Sender<(BlockHash, u32)>,
    auth: String,
    shutdown: watch::Sender<bool>,
}

/// Runs the node until `stop` is called or the process is signalled. Prints the bound address.
pub async fn run(config: NodeConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut chain = RegtestChain::open(&config.datadir)?;
    if !config.zmq.is_empty() {
        zmq::start(&config.zmq, chain.subscribe()).await?;
    }
    let (tip, _) = watch::channel((chain.tip(), chain.height()));
    let (shutdown, mut stopped) = watch::channel(false);
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", config.rpcuser, config.rpcpassword));
    let node = Arc::new(Node { chain: Mutex::new(chain), tip, auth, shutdown });
    let app = Router::new()
        .route("/", post(handle))
        .route("/wallet/{name}", post(handle))
        .route("/rest/block/{file}", axum::routing::get(rest_block))
        .with_state(node);
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    println!("vigil node listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

/// Core's REST `GET /rest/block/<hash>.bin` (as with `-rest`): the raw block, no auth, no hex.
async fn rest_block(
    State(node): State<Arc<Node>>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let Some(hash) = file.strip_suffix(".bin").and_then(|h| BlockHash::from_str(h).ok()) else {
        return (StatusCode::BAD_REQUEST, "Invalid hash or format: use <hash>.bin").into_response();
    };
    let block = node.chain.lock().expect("chain lock").raw_block(&hash);
    match block {
        Some(bytes) => {
            ([("content-type", "application/octet-stream")], bytes.as_ref().clone()).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("{hash} not found")).into_response(),
    }
}

async fn handle(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .is_some_and(|b| b.trim() == node.auth);
    if !authorized {
        return (StatusCode::UNAUTHORIZED, [("WWW-Authenticate", "Basic realm=\"jsonrpc\"")]).into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let (status, body) = body_of(&Value::Null, false, Err(err(code::PARSE, "Parse error")));
            return (status, axum::Json(body)).into_response();
        }
    };
    if let Value::Array(batch) = request {
        // A batch runs on one blocking thread, in order (long-polls cannot be batched).
        let out = tokio::task::spawn_blocking(move || {
            batch.iter().map(|r| call_sync(&node, r).1).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        return (StatusCode::OK, axum::Json(Value::Array(out))).into_response();
    }
    let (status, body) = call_one(&node, &request).await;
    (status, axum::Json(body)).into_response()
}

/// A request's id, version, method and positional parameters, or the error to answer.
type Parsed = (Value, bool, Result<(String, Vec<Value>), RpcError>);

fn parse_request(request: &Value) -> Parsed {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let v2 = request.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return (id, v2, Err(err(code::INVALID_REQUEST, "Method must be a string")));
    };
    let params = match request.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return (id, v2, Err(err(code::INVALID_REQUEST, "Params must be an array or object"))),
    };
    (id, v2, Ok((method.to_owned(), params)))
}

/// One request answered on the calling (blocking) thread.
fn call_sync(node: &Node, request: &Value) -> (StatusCode, Value) {
    let (id, v2, parsed) = parse_request(request);
    let result = parsed.and_then(|(method, params)| {
        if method == "waitfornewblock" {
            return Err(err(code::INVALID_PARAMETER, "waitfornewblock cannot be batched"));
        }
        dispatch(node, &method, &params)
    });
    body_of(&id, v2, result)
}

async fn call_one(node: &Arc<Node>, request: &Value) -> (StatusCode, Value) {
    let (id, v2, parsed) = parse_request(request);
    let (method, params) = match parsed {
        Ok(p) => p,
        Err(e) => return body_of(&id, v2, Err(e)),
    };
    let result = if method == "waitfornewblock" {
        wait_for_new_block(node, &params).await
    } else {
        let node = node.clone();
        tokio::task::spawn_blocking(move || dispatch(&node, &method, &params))
            .await
            .unwrap_or_else(|e| Err(err(code::MISC, format!("internal error: {e}"))))
    };
    body_of(&id, v2, result)
}

fn body_of(id: &Value, v2: bool, result: Result<Value, RpcError>) -> (StatusCode, Value) {
    let status = match &result {
        _ if v2 => StatusCode::OK,
        Ok(_) => StatusCode::OK,
        Err(e) if e.code == code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let error = |e: &RpcError| json!({"code": e.code, "message": e.message});
    let body = match (&result, v2) {
        (Ok(r), false) => json!({"result": r, "error": null, "id": id}),
        (Err(e), false) => json!({"result": null, "error": error(e), "id": id}),
        (Ok(r), true) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        (Err(e), true) => json!({"jsonrpc": "2.0", "error": error(e), "id": id}),
    };
    (status, body)
}

async fn wait_for_new_block(node: &Arc<Node>, params: &[Value]) -> Result<Value, RpcError> {
    let timeout_ms = opt_u64(params, 0, "timeout")?.unwrap_or(0);
    let mut rx = node.tip.subscribe();
    let start = rx.borrow_and_update().0;
    let changed = rx.wait_for(|(hash, _)| *hash != start);
    let result = if timeout_ms == 0 {
        changed.await.map(|v| *v).ok()
    } else {
        tokio::time::timeout(Duration::from_millis(timeout_ms), changed)
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|v| *v)
    };
    let (hash, height) = result.unwrap_or_else(|| *node.tip.borrow());
    Ok(json!({"hash": hash.to_string(), "height": height}))
}

// ----- parameters, as Core parses them ----------------------------------------------------

fn param<'a>(params: &'a [Value], i: usize, name: &str) -> Result<&'a Value, RpcError> {
    params
        .get(i)
        .filter(|v| !v.is_null())
        .ok_or_else(|| err(code::MISC, format!("Missing required parameter {name}")))
}

fn hash_param(params: &[Value], i: usize, name: &str) -> Result<[u8; 32], RpcError> {
    let v = param(params, i, name)?;
    let s = v.as_str().ok_or_else(|| {
        err(code::TYPE, format!("JSON value of type {} is not of expected type string", type_name(v)))
    })?;
    if s.len() != 64 {
        return Err(err(
            code::INVALID_PARAMETER,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    let mut bytes = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok().and_then(|c| u8::from_str_radix(c, 16).ok());
        bytes[31 - i] = hex.ok_or_else(|| {
            err(code::INVALID_PARAMETER, format!("{name} must be hexadecimal string (not '{s}')"))
        })?;
    }
    Ok(bytes)
}

fn opt_u64(params: &[Value], i: usize, name: &str) -> Result<Option<u64>, RpcError> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            err(
                code::TYPE,
                format!("{name}: JSON value of type {} is not of expected type number", type_name(v)),
            )
        }),
    }
}

fn verbosity(params: &[Value], i: usize, default: u64) -> Result<u64, RpcError> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b as u64),
        Some(v) => v.as_u64().ok_or_else(|| {
            err(code::TYPE, format!("JSON value of type {} is not of expected type number", type_name(v)))
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn decode_tx(params: &[Value], i: usize) -> Result<Transaction, RpcError> {
    let v = param(params, i, "hexstring")?;
    let s = v.as_str().ok_or_else(|| err(code::TYPE, "JSON value is not a string as expected"))?;
    let bytes = hex_bytes(s).ok_or_else(|| {
        err(code::DESERIALIZATION, "TX decode failed. Make sure the tx has at least one input.")
    })?;
    deserialize(&bytes)
        .map_err(|_| err(code::DESERIALIZATION, "TX decode failed. Make sure the tx has at least one input."))
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn btc(amount: Amount) -> Value {
    // Core prints amounts as numbers with 8 decimals.
    serde_json::from_str(&format!("{}.{:08}", amount.to_sat() / 100_000_000, amount.to_sat() % 100_000_000))
        .expect("a number")
}

// ----- methods ----------------------------------------------------------------------------

fn dispatch(node: &Node, method: &str, params: &[Value]) -> Result<Value, RpcError> {
    let mut chain = node.chain.lock().expect("chain lock");
    let before = chain.tip();
    let result = call(&mut chain, node, method, params);
    if chain.tip() != before {
        let _ = node.tip.send((chain.tip(), chain.height()));
    }
    result
}

fn call(chain: &mut RegtestChain, node: &Node, method: &str, params: &[Value]) -> Result<Value, RpcError> {
    match method {
        "getblockcount" => Ok(json!(chain.height())),
        "getbestblockhash" => Ok(json!(chain.tip().to_string())),
        "getblockhash" => {
            let v = param(params, 0, "height")?;
            let height = v.as_i64().ok_or_else(|| {
                err(code::TYPE, format!("JSON value of type {} is not of expected type number", type_name(v)))
            })?;
            if height < 0 || height > chain.height() as i64 {
                return Err(err(code::INVALID_PARAMETER, "Block height out of range"));
            }
            Ok(json!(chain.block_hash(height as u32).expect("in range").to_string()))
        }
        "getblock" => {
            let hash = BlockHash::from_byte_array(hash_param(params, 0, "blockhash")?);
            let block = chain
                .block_by_hash(&hash)
                .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            match verbosity(params, 1, 1)? {
                0 => Ok(json!(chain.raw_block(&hash).expect("stored with the block").to_lower_hex_string())),
                v => Ok(block_json(chain, &block, v >= 2)),
            }
        }
        "getblockheader" => {
            let hash = BlockHash::from_byte_array(hash_param(params, 0, "blockhash")?);
            let block = chain
                .block_by_hash(&hash)
                .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            if verbosity(params, 1, 1)? == 0 {
                return Ok(json!(serialize_hex(&block.header)));
            }
            Ok(header_json(chain, &block))
        }
        "getblockchaininfo" => {
            let tip = chain.block_at(chain.height()).expect("tip");
            Ok(json!({
                "chain": "regtest",
                "blocks": chain.height(),
                "headers": chain.height(),
                "bestblockhash": chain.tip().to_string(),
                "bits": format!("{:08x}", tip.header.bits.to_consensus()),
                "target": format!("{:064x}", 0x7fffffu128 << 104) ,
                "difficulty": 4.656542373906925e-10,
                "time": tip.header.time,
                "mediantime": chain.median_time_past(),
                "verificationprogress": 1,
                "initialblockdownload": false,
                "chainwork": format!("{:064x}", 2 * (chain.height() as u64 + 1)),
                "size_on_disk": 0,
                "pruned": false,
                "warnings": [],
            }))
        }
        "getrawtransaction" => {
            let txid = Txid::from_byte_array(hash_param(params, 0, "txid")?);
            let tx = chain.transaction(&txid).ok_or_else(|| {
                err(
                    code::INVALID_ADDRESS_OR_KEY,
                    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                )
            })?;
            if verbosity(params, 1, 0)? == 0 {
                return Ok(json!(serialize_hex(&*tx)));
            }
            let mut v = tx_json(&tx);
            if let Some(TxStatus::Confirmed { height, confirmations }) = chain.tx_status(&txid) {
                let block = chain.block_at(height).expect("confirmed");
                v["blockhash"] = json!(block.block_hash().to_string());
                v["confirmations"] = json!(confirmations);
                v["time"] = json!(block.header.time);
                v["blocktime"] = json!(block.header.time);
            }
            Ok(v)
        }
        "sendrawtransaction" => {
            let tx = decode_tx(params, 0)?;
            let txid = tx.compute_txid();
            match chain.submit(&tx) {
                Ok(_) => Ok(json!(txid.to_string())),
                // Core answers an already-pending transaction with its txid.
                Err(SubmitError::AlreadyKnown(_)) if chain.tx_status(&txid) == Some(TxStatus::Pending) => {
                    Ok(json!(txid.to_string()))
                }
                Err(e) => Err(submit_error(chain, &tx, e)),
            }
        }
        "submitpackage" => {
            let v = param(params, 0, "package")?;
            let raws = v.as_array().ok_or_else(|| err(code::TYPE, "Expected type array"))?;
            if raws.is_empty() || raws.len() > 25 {
                return Err(err(
                    code::INVALID_PARAMETER,
                    "Array must contain between 1 and 25 transactions.",
                ));
            }
            let txs = (0..raws.len()).map(|i| decode_tx(raws, i)).collect::<Result<Vec<_>, _>>()?;
            // No package relay here: each in order, as Core first tries them one by one. A
            // parent that only its child's fee could carry is refused, where Core would take
            // the pair.
            let mut results = serde_json::Map::new();
            let mut failed = false;
            for tx in &txs {
                let txid = tx.compute_txid();
                let mut r = json!({"txid": txid.to_string()});
                if failed {
                    r["error"] = json!("package-not-validated");
                } else {
                    let pending = chain.tx_status(&txid) == Some(TxStatus::Pending);
                    match chain.submit_for_fee(tx) {
                        Ok(fee) => {
                            r["vsize"] = json!(tx.weight().to_vbytes_ceil());
                            r["fees"] = json!({"base": btc(fee)});
                        }
                        Err(SubmitError::AlreadyKnown(_)) if pending => {}
                        Err(e) => {
                            failed = true;
                            r["error"] = json!(reject_reason(&e));
                        }
                    }
                }
                results.insert(tx.compute_wtxid().to_string(), r);
            }
            let message = if failed { "transaction failed" } else { "success" };
            Ok(json!({"package_msg": message, "tx-results": results}))
        }
        "testmempoolaccept" => {
            let v = param(params, 0, "rawtxs")?;
            let raws = v.as_array().ok_or_else(|| err(code::TYPE, "Expected type array"))?;
            if raws.len() != 1 {
                return Err(err(
                    code::INVALID_PARAMETER,
                    "Vigil node tests one transaction at a time (no packages)",
                ));
            }
            let tx = decode_tx(raws, 0)?;
            let txid = tx.compute_txid();
            let mut r = json!({"txid": txid.to_string(), "wtxid": tx.compute_wtxid().to_string()});
            match chain.test_accept(&tx) {
                Ok(fee) => {
                    r["allowed"] = json!(true);
                    r["vsize"] = json!(tx.weight().to_vbytes_ceil());
                    r["fees"] = json!({"base": btc(fee)});
                }
                Err(e) => {
                    r["allowed"] = json!(false);
                    r["reject-reason"] = json!(reject_reason(&e));
                }
            }
            Ok(json!([r]))
        }
        "getrawmempool" => {
            if verbosity(params, 0, 0)? != 0 {
                return Err(err(
                    code::INVALID_PARAMETER,
                    "Vigil node answers getrawmempool with verbose=false only",
                ));
            }
            let txids: Vec<String> =
                chain.pending().iter().map(|e| e.tx.compute_txid().to_string()).collect();
            if verbosity(params, 1, 0)? != 0 {
                return Ok(json!({"txids": txids, "mempool_sequence": chain.pool_sequence()}));
            }
            Ok(json!(txids))
        }
        "gettxout" => {
            let txid = Txid::from_byte_array(hash_param(params, 0, "txid")?);
            let vout = opt_u64(params, 1, "n")?
                .ok_or_else(|| err(code::MISC, "Missing required parameter n"))?
                as u32;
            let include_mempool = params.get(2).and_then(Value::as_bool).unwrap_or(true);
            let outpoint = OutPoint { txid, vout };
            if include_mempool && chain.spend_of(&outpoint).is_some() {
                return Ok(Value::Null);
            }
            let (txout, confirmations, coinbase) = match chain.coin(&outpoint) {
                Some(c) => (c.txout, chain.height() - c.height + 1, c.is_coinbase),
                None if include_mempool => match chain
                    .transaction(&txid)
                    .filter(|_| chain.tx_status(&txid) == Some(TxStatus::Pending))
                {
                    Some(tx) => match tx.output.get(vout as usize) {
                        Some(o) => (o.clone(), 0, false),
                        None => return Ok(Value::Null),
                    },
                    None => return Ok(Value::Null),
                },
                None => return Ok(Value::Null),
            };
            Ok(json!({
                "bestblock": chain.tip().to_string(),
                "confirmations": confirmations,
                "value": btc(txout.value),
                "scriptPubKey": script_json(&txout.script_pubkey),
                "coinbase": coinbase,
            }))
        }
        "generatetoaddress" => {
            let n = opt_u64(params, 0, "nblocks")?
                .ok_or_else(|| err(code::MISC, "Missing required parameter nblocks"))?;
            let script = address_param(params, 1)?;
            let mut hashes = Vec::new();
            for _ in 0..n {
                let mined = chain.block().coinbase_to(script.clone()).mine().map_err(chain_error)?;
                hashes.push(json!(mined.hash.to_string()));
            }
            Ok(json!(hashes))
        }
        "vigil_generateblock" => {
            // [parent hash or null, address, [raw txs], take pending (default true on the tip)]
            let parent = match params.first() {
                None | Some(Value::Null) => None,
                Some(_) => Some(BlockHash::from_byte_array(hash_param(params, 0, "parent")?)),
            };
            let script = address_param(params, 1)?;
            let raws = params.get(2).and_then(Value::as_array).cloned().unwrap_or_default();
            let txs = (0..raws.len()).map(|i| decode_tx(&raws, i)).collect::<Result<Vec<_>, _>>()?;
            let take_pending = params.get(3).and_then(Value::as_bool).unwrap_or(parent.is_none());
            let mut builder =
                chain.block().coinbase_to(script).with_transactions(txs).with_pending(take_pending);
            if let Some(p) = parent {
                builder = builder.on(p);
            }
            let mined = builder.mine().map_err(chain_error)?;
            Ok(json!({"hash": mined.hash.to_string(), "height": mined.height, "active": mined.active}))
        }
        "stop" => {
            let _ = node.shutdown.send(true);
            Ok(json!("vigil node stopping"))
        }
        _ => Err(err(code::METHOD_NOT_FOUND, "Method not found")),
    }
}

fn address_param(params: &[Value], i: usize) -> Result<ScriptBuf, RpcError> {
    let v = param(params, i, "address")?;
    let s = v.as_str().ok_or_else(|| err(code::TYPE, "JSON value is not a string as expected"))?;
    Address::from_str(s)
        .ok()
        .and_then(|a| a.require_network(Network::Regtest).ok())
        .map(|a| a.script_pubkey())
        .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))
}

fn chain_error(e: ChainError) -> RpcError {
    match e {
        ChainError::BlockRejected { reason, .. } => err(code::VERIFY, reason),
        ChainError::UnknownBlock(_) => err(code::INVALID_ADDRESS_OR_KEY, "Block not found"),
        other => err(code::MISC, other.to_string()),
    }
}

/// Core's short reject reason (what `testmempoolaccept` prints).
fn reject_reason(e: &SubmitError) -> String {
    match e {
        SubmitError::MissingInput { .. } => "missing-inputs".into(),
        SubmitError::AlreadyKnown(_) => "txn-already-known".into(),
        SubmitError::Script { .. } => "mandatory-script-verify-flag-failed".into(),
        SubmitError::Relay(r) => r.to_string().split(':').next().unwrap_or_default().to_owned(),
        other => other.to_string().split(':').next().unwrap_or_default().to_owned(),
    }
}

/// `sendrawtransaction`'s error, with Core's codes.
fn submit_error(chain: &RegtestChain, tx: &Transaction, e: SubmitError) -> RpcError {
    match &e {
        SubmitError::MissingInput { .. } => {
            if chain.tx_status(&tx.compute_txid()).is_some() {
                err(code::ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
            } else {
                err(code::VERIFY, "bad-txns-inputs-missingorspent")
            }
        }
        SubmitError::AlreadyKnown(_) => {
            err(code::ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
        }
        _ => err(code::VERIFY_REJECTED, e.to_string()),
    }
}

fn script_json(script: &ScriptBuf) -> Value {
    let kind = if script.is_p2tr() {
        "witness_v1_taproot"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_op_return() {
        "nulldata"
    } else if vigil_regtest::relay::is_pay_to_anchor(script) {
        "anchor"
    } else {
        "nonstandard"
    };
    let mut v =
        json!({"asm": script.to_asm_string(), "desc": "", "hex": script.to_hex_string(), "type": kind});
    if let Ok(a) = Address::from_script(script, Network::Regtest) {
        v["address"] = json!(a.to_string());
    }
    v
}

fn tx_json(tx: &Transaction) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            if i.previous_output.is_null() {
                json!({"coinbase": i.script_sig.to_hex_string(), "sequence": i.sequence.0})
            } else {
                json!({
                    "txid": i.previous_output.txid.to_string(),
                    "vout": i.previous_output.vout,
                    "scriptSig": {"asm": i.script_sig.to_asm_string(), "hex": i.script_sig.to_hex_string()},
                    "txinwitness": i.witness.iter().map(|w| w.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>(),
                    "sequence": i.sequence.0,
                })
            }
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": btc(o.value), "n": n, "scriptPubKey": script_json(&o.script_pubkey)}))
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.weight().to_vbytes_ceil(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
    })
}

fn header_json(chain: &RegtestChain, block: &Block) -> Value {
    let hash = block.block_hash();
    let height = chain.block_height(&hash).expect("known block");
    let active = chain.is_active(&hash);
    let mut v = json!({
        "hash": hash.to_string(),
        "confirmations": if active { (chain.height() - height + 1) as i64 } else { -1 },
        "height": height,
        "version": block.header.version.to_consensus(),
        "versionHex": format!("{:08x}", block.header.version.to_consensus()),
        "merkleroot": block.header.merkle_root.to_string(),
        "time": block.header.time,
        "mediantime": block.header.time,
        "nonce": block.header.nonce,
        "bits": format!("{:08x}", block.header.bits.to_consensus()),
        "target": format!("{:064x}", 0x7fffffu128 << 104),
        "difficulty": 4.656542373906925e-10,
        "chainwork": format!("{:064x}", 2 * (height as u64 + 1)),
        "nTx": block.txdata.len(),
    });
    if height > 0 {
        v["previousblockhash"] = json!(block.header.prev_blockhash.to_string());
    }
    if active {
        if let Some(next) = chain.block_hash(height + 1) {
            v["nextblockhash"] = json!(next.to_string());
        }
    }
    v
}

fn block_json(chain: &RegtestChain, block: &Block, full: bool) -> Value {
    let mut v = header_json(chain, block);
    let stripped = block.txdata.iter().map(|t| t.base_size()).sum::<usize>()
        + 80
        + bitcoin_varint_len(block.txdata.len());
    v["strippedsize"] = json!(stripped);
    v["size"] = json!(block.total_size());
    v["weight"] = json!(block.weight().to_wu());
    v["tx"] = if full {
        json!(block.txdata.iter().map(tx_json).collect::<Vec<_>>())
    } else {
        json!(block.txdata.iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>())
    };
    v
}

fn bitcoin_varint_len(n: usize) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x10000..=0xffff_ffff => 5,
        _ => 9,
    }
}
