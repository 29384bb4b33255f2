//! `vigil node`: the embedded regtest chain as its own process, speaking the subset of Bitcoin
//! Core's JSON-RPC that Vigil's bitcoind backend and a user's `bitcoin-cli` need, so towers,
//! co-signer and clients are separate processes sharing one chain exactly as they would share
//! a bitcoind, and the bitcoind backend's code path runs for real in every test.
//!
//! Methods, each answered with every field an isolated regtest bitcoind gives, at every
//! verbosity (the process tests compare them key by key with a real one):
//! - blockchain: `getblockcount`, `getbestblockhash`, `getblockhash`, `getblock` (0 to 3),
//!   `getblockheader`, `getblockchaininfo`, `gettxout`, `waitfornewblock`;
//! - mempool: `getrawmempool` (txids, with `mempool_sequence`, verbose), `getmempoolentry`,
//!   `getmempoolinfo`, `testmempoolaccept` (one transaction), `submitpackage`;
//! - raw transactions: `getrawtransaction` (0 to 2, optionally in a given block),
//!   `sendrawtransaction`;
//! - mining: `generatetoaddress`; network: `getnetworkinfo` (no peers, ever);
//! - util: `estimatesmartfee` (no fee market: Core's answer on a fresh chain),
//!   `getdescriptorinfo`; control: `stop`.
//!
//! Same method names, parameters, result shapes, error codes and HTTP behaviour as Core
//! (JSON-RPC 1.0: errors with HTTP 500, unknown methods 404; JSON-RPC 2.0: always 200; bad
//! credentials 401), and the same credentials: `rpcuser`/`rpcpassword`, or a `.cookie` file
//! ([`auth`]). Like a node started with `-txindex`, confirmed transactions are found without a
//! block hash. Core's ZMQ notifications are published with Core's flags and format ([`zmq`]);
//! without them clients follow with `waitfornewblock` long-polls and `getrawmempool` with
//! `mempool_sequence`, as they must against a bitcoind built without ZMQ.
//!
//! Requests are parsed into typed calls before anything touches the chain ([`rpc`]). One
//! method is Vigil's own, named so it cannot collide with Core's: `vigil_generateblock` mines on
//! any known parent (competing branches, reorgs) with given transactions.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

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
use serde_json::{json, Value};
use tokio::sync::watch;
use vigil_regtest::bitcoin::{BlockHash, Txid};
use vigil_regtest::RegtestChain;

pub mod auth;
mod descriptor;
mod json;
pub mod rpc;
pub mod zmq;

pub use auth::Credentials;
pub use zmq::ZmqConfig;

use rpc::{code, err, Call, RpcError};

/// How to run the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The chain's data directory.
    pub datadir: PathBuf,
    /// Where to listen (loopback by default).
    pub bind: SocketAddr,
    /// RPC user; with no user and password, a cookie file is written.
    pub rpcuser: Option<String>,
    /// RPC password (never empty).
    pub rpcpassword: Option<String>,
    /// ZMQ notifications to publish.
    pub zmq: ZmqConfig,
}

struct Node {
    chain: Mutex<RegtestChain>,
    /// When each pool transaction arrived (taken under the chain's lock).
    arrivals: Mutex<rpc::Arrivals>,
    tip: watch::Sender<(BlockHash, u32)>,
    credentials: Credentials,
    shutdown: watch::Sender<bool>,
}

impl rpc::Control for Node {
    fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    fn arrival(&self, txid: &Txid) -> Option<rpc::Arrival> {
        self.arrivals.lock().expect("arrivals lock").get(txid)
    }
}

/// Runs the node until `stop` is called or the process is signalled.
pub async fn run(config: NodeConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut chain = RegtestChain::open(&config.datadir)?;
    let credentials =
        Credentials::new(config.rpcuser.as_deref(), config.rpcpassword.as_deref(), &config.datadir)?;
    if !config.zmq.is_empty() {
        zmq::start(&config.zmq, chain.subscribe()).await?;
    }
    let (tip, _) = watch::channel((chain.tip(), chain.height()));
    let (shutdown, mut stopped) = watch::channel(false);
    let arrivals = Mutex::new(rpc::Arrivals::default());
    let node = Arc::new(Node { chain: Mutex::new(chain), arrivals, tip, credentials, shutdown });
    let app = Router::new()
        .route("/", post(handle))
        .route("/wallet/{name}", post(handle))
        .route("/rest/block/{file}", axum::routing::get(rest_block))
        .with_state(node.clone());
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    tracing::info!(address = %listener.local_addr()?, "vigil node listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await;
    node.credentials.remove_cookie();
    Ok(served?)
}

/// Core's REST `GET /rest/block/<hash>.bin` (as with `-rest`): the raw block, no auth, no hex.
async fn rest_block(
    State(node): State<Arc<Node>>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let Some(hash) = rest_block_hash(&file) else {
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

/// The block a REST path names (`<hash>.bin`).
pub fn rest_block_hash(file: &str) -> Option<BlockHash> {
    file.strip_suffix(".bin").and_then(|h| BlockHash::from_str(h).ok())
}

async fn handle(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok());
    if !node.credentials.allows(authorization) {
        return (StatusCode::UNAUTHORIZED, [("WWW-Authenticate", "Basic realm=\"jsonrpc\"")]).into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return reply(rpc::response(&Value::Null, false, Err(err(code::PARSE, "Parse error")))),
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
    reply(call_one(&node, &request).await)
}

fn reply((status, body): (u16, Value)) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
        .into_response()
}

/// Runs a parsed call on the chain, noting what entered the pool and telling long-pollers
/// when the tip moved.
fn dispatch(node: &Node, call: Call) -> Result<Value, RpcError> {
    let mut chain = node.chain.lock().expect("chain lock");
    let before = chain.tip();
    let sequence = chain.pool_sequence();
    let broadcast = matches!(call, Call::SendRawTransaction(_) | Call::SubmitPackage(_));
    let result = rpc::execute(&mut chain, node, call);
    if chain.pool_sequence() != sequence {
        node.arrivals.lock().expect("arrivals lock").observe(&chain, broadcast);
    }
    if chain.tip() != before {
        // `send` would drop the value while no long-poll is waiting.
        node.tip.send_replace((chain.tip(), chain.height()));
    }
    result
}

/// One request answered on the calling (blocking) thread.
fn call_sync(node: &Node, request: &Value) -> (u16, Value) {
    let e = rpc::envelope(request);
    let result =
        e.call.and_then(|(method, params)| Call::parse(&method, &params)).and_then(|call| match call {
            Call::WaitForNewBlock(_) => {
                Err(err(code::INVALID_PARAMETER, "waitfornewblock cannot be batched"))
            }
            call => dispatch(node, call),
        });
    rpc::response(&e.id, e.v2, result)
}

async fn call_one(node: &Arc<Node>, request: &Value) -> (u16, Value) {
    let e = rpc::envelope(request);
    let call = match e.call.and_then(|(method, params)| Call::parse(&method, &params)) {
        Ok(c) => c,
        Err(error) => return rpc::response(&e.id, e.v2, Err(error)),
    };
    let result = match call {
        Call::WaitForNewBlock(timeout_ms) => wait_for_new_block(node, timeout_ms).await,
        call => {
            let node = node.clone();
            tokio::task::spawn_blocking(move || dispatch(&node, call))
                .await
                .unwrap_or_else(|e| Err(err(code::MISC, format!("internal error: {e}"))))
        }
    };
    rpc::response(&e.id, e.v2, result)
}

async fn wait_for_new_block(node: &Arc<Node>, timeout_ms: u64) -> Result<Value, RpcError> {
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
