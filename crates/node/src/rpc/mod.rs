//! The JSON-RPC dialect: a request is parsed into a typed [`Call`] (every parameter checked as
//! Core checks it, with Core's error codes and messages) before anything touches the chain;
//! then executed by method group, as Core groups them: [`blockchain`], [`mempool`],
//! [`rawtransactions`], [`mining`], [`network`], [`util`].

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::deserialize;
use vigil_regtest::bitcoin::hashes::Hash;
use vigil_regtest::bitcoin::hex::FromHex;
use vigil_regtest::bitcoin::{Address, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};
use vigil_regtest::RegtestChain;

pub mod blockchain;
pub mod mempool;
pub mod mining;
pub mod network;
pub mod rawtransactions;
pub mod util;

pub use mempool::{Arrival, Arrivals};

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

/// Blocks one `generatetoaddress` may mine: the chain lock is held while it does.
pub const MAX_BLOCKS_PER_CALL: u64 = 100_000;

/// `estimatesmartfee`'s highest `conf_target`: the longest horizon Core's fee estimator
/// tracks (`HighestTargetTracked(LONG_HALFLIFE)`).
pub const MAX_CONF_TARGET: i64 = 1008;

/// An RPC error: Core's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// Core's code.
    pub code: i64,
    /// The message.
    pub message: String,
}

pub(crate) fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into() }
}

/// One request's envelope: its id, whether it is JSON-RPC 2.0, and its method and positional
/// parameters (or the error to answer).
pub struct Envelope {
    /// The id to answer with.
    pub id: Value,
    /// JSON-RPC 2.0 (always HTTP 200) rather than 1.0.
    pub v2: bool,
    /// The method and its parameters.
    pub call: Result<(String, Vec<Value>), RpcError>,
}

/// Reads a request object's envelope.
pub fn envelope(request: &Value) -> Envelope {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let v2 = request.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return Envelope { id, v2, call: Err(err(code::INVALID_REQUEST, "Method must be a string")) };
    };
    let params = match request.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Envelope {
                id,
                v2,
                call: Err(err(code::INVALID_REQUEST, "Params must be an array or object")),
            }
        }
    };
    Envelope { id, v2, call: Ok((method.to_owned(), params)) }
}

/// A request, its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    // blockchain
    /// `getblockcount`
    GetBlockCount,
    /// `getbestblockhash`
    GetBestBlockHash,
    /// `getblockhash height`
    GetBlockHash(i64),
    /// `getblock hash (verbosity)`: 0 hex, 1 txids, 2 transactions, 3 with prevouts.
    GetBlock(BlockHash, i64),
    /// `getblockheader hash (verbose)`
    GetBlockHeader(BlockHash, bool),
    /// `getblockchaininfo`
    GetBlockchainInfo,
    /// `getrawmempool (verbose) (mempool_sequence)`
    GetRawMempool {
        /// Entries keyed by txid rather than txids.
        verbose: bool,
        /// With `mempool_sequence` (txids only).
        sequence: bool,
    },
    /// `getmempoolentry txid`
    GetMempoolEntry(Txid),
    /// `getmempoolinfo`
    GetMempoolInfo,
    /// `gettxout txid n (include_mempool)`
    GetTxOut(OutPoint, bool),
    /// `estimatesmartfee conf_target (estimate_mode)`
    EstimateSmartFee(u32),
    /// `waitfornewblock (timeout)`, ms.
    WaitForNewBlock(u64),
    // rawtransactions
    /// `getrawtransaction txid (verbosity) (blockhash)`: 0 hex, 1 decoded, 2 with fee and
    /// prevouts.
    GetRawTransaction(Txid, i64, Option<BlockHash>),
    /// `sendrawtransaction hex (maxfeerate)`
    SendRawTransaction(Transaction),
    /// `submitpackage [hex, ...]`
    SubmitPackage(Vec<Transaction>),
    /// `testmempoolaccept [hex]`
    TestMempoolAccept(Transaction),
    // mining
    /// `generatetoaddress n address`
    GenerateToAddress(u64, ScriptBuf),
    /// `vigil_generateblock (parent) address ([hex, ...]) (take_pending)`: Vigil's own.
    GenerateBlock {
        /// Mine on this block instead of the tip.
        parent: Option<BlockHash>,
        /// The coinbase's destination.
        to: ScriptBuf,
        /// Transactions to include.
        txs: Vec<Transaction>,
        /// Fill from the pending pool first.
        take_pending: bool,
    },
    // network
    /// `getnetworkinfo`
    GetNetworkInfo,
    // util
    /// `getdescriptorinfo descriptor`
    GetDescriptorInfo(String),
    // control
    /// `stop`
    Stop,
}

impl Call {
    /// Parses `method` with positional `params`.
    pub fn parse(method: &str, params: &[Value]) -> Result<Call, RpcError> {
        Ok(match method {
            "getblockcount" => Call::GetBlockCount,
            "getbestblockhash" => Call::GetBestBlockHash,
            "getblockhash" => {
                let v = param(params, 0, "height")?;
                Call::GetBlockHash(v.as_i64().ok_or_else(|| type_error(v, "number"))?)
            }
            "getblock" => Call::GetBlock(
                BlockHash::from_byte_array(hash_param(params, 0, "blockhash")?),
                verbosity(params, 1, 1)?,
            ),
            "getblockheader" => Call::GetBlockHeader(
                BlockHash::from_byte_array(hash_param(params, 0, "blockhash")?),
                opt_bool(params, 1)?.unwrap_or(true),
            ),
            "getblockchaininfo" => Call::GetBlockchainInfo,
            "getrawmempool" => {
                let verbose = opt_bool(params, 0)?.unwrap_or(false);
                let sequence = opt_bool(params, 1)?.unwrap_or(false);
                if verbose && sequence {
                    return Err(err(
                        code::INVALID_PARAMETER,
                        "Verbose results cannot contain mempool sequence values.",
                    ));
                }
                Call::GetRawMempool { verbose, sequence }
            }
            "getmempoolentry" => Call::GetMempoolEntry(Txid::from_byte_array(hash_param(params, 0, "txid")?)),
            "getmempoolinfo" => Call::GetMempoolInfo,
            "gettxout" => {
                let txid = Txid::from_byte_array(hash_param(params, 0, "txid")?);
                let vout = opt_u64(params, 1, "n")?
                    .ok_or_else(|| err(code::MISC, "Missing required parameter n"))?;
                let vout = u32::try_from(vout).map_err(|_| err(code::INVALID_PARAMETER, "n out of range"))?;
                let include_mempool = match params.get(2) {
                    None | Some(Value::Null) => true,
                    Some(v) => v.as_bool().ok_or_else(|| type_error(v, "bool"))?,
                };
                Call::GetTxOut(OutPoint { txid, vout }, include_mempool)
            }
            "estimatesmartfee" => {
                let v = param(params, 0, "conf_target")?;
                let target = v.as_i64().ok_or_else(|| type_error(v, "number"))?;
                if !(1..=MAX_CONF_TARGET).contains(&target) {
                    return Err(err(
                        code::INVALID_PARAMETER,
                        format!("Invalid conf_target, must be between 1 and {MAX_CONF_TARGET}"),
                    ));
                }
                match params.get(1) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(m))
                        if ["unset", "economical", "conservative"].contains(&m.to_lowercase().as_str()) => {}
                    Some(Value::String(_)) => {
                        return Err(err(
                            code::INVALID_PARAMETER,
                            r#"Invalid estimate_mode parameter, must be one of: "unset", "economical", "conservative""#,
                        ))
                    }
                    Some(v) => return Err(type_error(v, "string")),
                }
                Call::EstimateSmartFee(target as u32)
            }
            "waitfornewblock" => Call::WaitForNewBlock(opt_u64(params, 0, "timeout")?.unwrap_or(0)),
            "getrawtransaction" => Call::GetRawTransaction(
                Txid::from_byte_array(hash_param(params, 0, "txid")?),
                verbosity(params, 1, 0)?,
                match params.get(2) {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(BlockHash::from_byte_array(hash_param(params, 2, "parameter 3")?)),
                },
            ),
            "sendrawtransaction" => Call::SendRawTransaction(decode_tx(params, 0)?),
            "submitpackage" => {
                let v = param(params, 0, "package")?;
                let raws = v.as_array().ok_or_else(|| err(code::TYPE, "Expected type array"))?;
                if raws.is_empty() || raws.len() > 25 {
                    return Err(err(
                        code::INVALID_PARAMETER,
                        "Array must contain between 1 and 25 transactions.",
                    ));
                }
                Call::SubmitPackage((0..raws.len()).map(|i| decode_tx(raws, i)).collect::<Result<_, _>>()?)
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
                Call::TestMempoolAccept(decode_tx(raws, 0)?)
            }
            "generatetoaddress" => {
                let n = opt_u64(params, 0, "nblocks")?
                    .ok_or_else(|| err(code::MISC, "Missing required parameter nblocks"))?;
                if n > MAX_BLOCKS_PER_CALL {
                    return Err(err(
                        code::INVALID_PARAMETER,
                        format!("nblocks: at most {MAX_BLOCKS_PER_CALL} per call"),
                    ));
                }
                Call::GenerateToAddress(n, address_param(params, 1)?)
            }
            "vigil_generateblock" => {
                let parent = match params.first() {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(BlockHash::from_byte_array(hash_param(params, 0, "parent")?)),
                };
                let to = address_param(params, 1)?;
                let txs = match params.get(2) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(raws)) => {
                        (0..raws.len()).map(|i| decode_tx(raws, i)).collect::<Result<_, _>>()?
                    }
                    Some(v) => return Err(type_error(v, "array")),
                };
                let take_pending = match params.get(3) {
                    None | Some(Value::Null) => parent.is_none(),
                    Some(v) => v.as_bool().ok_or_else(|| type_error(v, "bool"))?,
                };
                Call::GenerateBlock { parent, to, txs, take_pending }
            }
            "getnetworkinfo" => Call::GetNetworkInfo,
            "getdescriptorinfo" => {
                let v = param(params, 0, "descriptor")?;
                Call::GetDescriptorInfo(v.as_str().ok_or_else(|| type_error(v, "string"))?.to_owned())
            }
            "stop" => Call::Stop,
            _ => return Err(err(code::METHOD_NOT_FOUND, "Method not found")),
        })
    }
}

/// What executing a call may need beyond the chain.
pub trait Control {
    /// Asks the node to stop.
    fn stop(&self);
    /// When and how a pool transaction arrived, which the chain does not record.
    fn arrival(&self, txid: &Txid) -> Option<Arrival>;
}

/// Executes a call on the chain (everything but `waitfornewblock`, which waits outside it).
pub fn execute(chain: &mut RegtestChain, control: &dyn Control, call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GetBlockCount
        | Call::GetBestBlockHash
        | Call::GetBlockHash(_)
        | Call::GetBlock(..)
        | Call::GetBlockHeader(..)
        | Call::GetBlockchainInfo
        | Call::GetTxOut(..) => blockchain::execute(chain, call),
        Call::GetRawMempool { .. } | Call::GetMempoolEntry(_) | Call::GetMempoolInfo => {
            mempool::execute(chain, control, call)
        }
        Call::GetRawTransaction(..)
        | Call::SendRawTransaction(_)
        | Call::SubmitPackage(_)
        | Call::TestMempoolAccept(_) => rawtransactions::execute(chain, call),
        Call::GenerateToAddress(..) | Call::GenerateBlock { .. } => mining::execute(chain, call),
        Call::GetNetworkInfo => network::execute(call),
        Call::EstimateSmartFee(_) | Call::GetDescriptorInfo(_) => util::execute(call),
        Call::WaitForNewBlock(_) => {
            Err(err(code::INVALID_PARAMETER, "waitfornewblock waits outside the chain"))
        }
        Call::Stop => {
            control.stop();
            Ok(json!("vigil node stopping"))
        }
    }
}

/// The response body, and the HTTP status Core would answer with.
pub fn response(id: &Value, v2: bool, result: Result<Value, RpcError>) -> (u16, Value) {
    let status = match &result {
        _ if v2 => 200,
        Ok(_) => 200,
        Err(e) if e.code == code::METHOD_NOT_FOUND => 404,
        Err(_) => 500,
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

// ----- parameters, as Core parses them ----------------------------------------------------

fn param<'a>(params: &'a [Value], i: usize, name: &str) -> Result<&'a Value, RpcError> {
    params
        .get(i)
        .filter(|v| !v.is_null())
        .ok_or_else(|| err(code::MISC, format!("Missing required parameter {name}")))
}

fn type_error(v: &Value, expected: &str) -> RpcError {
    err(code::TYPE, format!("JSON value of type {} is not of expected type {expected}", type_name(v)))
}

/// A hash in RPC byte order (as displayed), as 32 internal-order bytes.
fn hash_param(params: &[Value], i: usize, name: &str) -> Result<[u8; 32], RpcError> {
    let v = param(params, i, name)?;
    let s = v.as_str().ok_or_else(|| type_error(v, "string"))?;
    if s.len() != 64 {
        return Err(err(
            code::INVALID_PARAMETER,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    let mut bytes = <[u8; 32]>::from_hex(s).map_err(|_| {
        err(code::INVALID_PARAMETER, format!("{name} must be hexadecimal string (not '{s}')"))
    })?;
    bytes.reverse();
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

/// Core's `ParseVerbosity`: a number (any below 1 means hex), or a bool for 0 and 1.
fn verbosity(params: &[Value], i: usize, default: i64) -> Result<i64, RpcError> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b as i64),
        Some(v) => v.as_i64().ok_or_else(|| type_error(v, "number")),
    }
}

fn opt_bool(params: &[Value], i: usize) -> Result<Option<bool>, RpcError> {
    match params.get(i) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| type_error(v, "bool")),
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
    let failed = || err(code::DESERIALIZATION, "TX decode failed. Make sure the tx has at least one input.");
    let bytes = Vec::<u8>::from_hex(s).map_err(|_| failed())?;
    deserialize(&bytes).map_err(|_| failed())
}

fn address_param(params: &[Value], i: usize) -> Result<ScriptBuf, RpcError> {
    let v = param(params, i, "address")?;
    let s = v.as_str().ok_or_else(|| err(code::TYPE, "JSON value is not a string as expected"))?;
    s.parse::<Address<_>>()
        .ok()
        .and_then(|a| a.require_network(Network::Regtest).ok())
        .map(|a| a.script_pubkey())
        .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_as_core_checks_them() {
        let e = |m: &str, p: Value| Call::parse(m, p.as_array().unwrap()).unwrap_err();
        assert_eq!(e("getblockhash", json!([])).code, code::MISC);
        assert_eq!(e("getblockhash", json!(["1"])).code, code::TYPE);
        assert_eq!(e("getblock", json!(["00"])).code, code::INVALID_PARAMETER);
        assert_eq!(e("getblock", json!(["zz".repeat(32)])).code, code::INVALID_PARAMETER);
        assert_eq!(e("sendrawtransaction", json!(["00"])).code, code::DESERIALIZATION);
        assert_eq!(e("submitpackage", json!([[]])).code, code::INVALID_PARAMETER);
        assert_eq!(e("generatetoaddress", json!([1_000_000_000_000u64, "x"])).code, code::INVALID_PARAMETER);
        assert_eq!(e("generatetoaddress", json!([1, "not an address"])).code, code::INVALID_ADDRESS_OR_KEY);
        assert_eq!(e("nosuchmethod", json!([])).code, code::METHOD_NOT_FOUND);
        let hash = "0f".repeat(32);
        let Call::GetBlock(h, 1) = Call::parse("getblock", &[json!(hash)]).unwrap() else { panic!() };
        assert_eq!(h.to_string(), hash, "RPC byte order");
    }

    #[test]
    fn verbosities_and_flags_are_read_as_core_reads_them() {
        let e = |m: &str, p: Value| Call::parse(m, p.as_array().unwrap()).unwrap_err().code;
        let ok = |m: &str, p: Value| Call::parse(m, p.as_array().unwrap()).unwrap();
        let hash = "0f".repeat(32);
        // Any verbosity below 1 is hex; a bool is 0 or 1.
        assert!(matches!(ok("getblock", json!([hash, -1])), Call::GetBlock(_, -1)));
        assert!(matches!(ok("getblock", json!([hash, true])), Call::GetBlock(_, 1)));
        assert!(matches!(
            ok("getrawtransaction", json!([hash, 2, hash])),
            Call::GetRawTransaction(_, 2, Some(_))
        ));
        assert_eq!(e("getrawtransaction", json!([hash, 1, "xyz"])), code::INVALID_PARAMETER);
        // getblockheader's and getrawmempool's flags are bools, not numbers.
        assert_eq!(e("getblockheader", json!([hash, 1])), code::TYPE);
        assert!(matches!(ok("getblockheader", json!([hash])), Call::GetBlockHeader(_, true)));
        assert_eq!(e("getrawmempool", json!([1])), code::TYPE);
        assert_eq!(e("getrawmempool", json!([true, true])), code::INVALID_PARAMETER);
        assert_eq!(
            ok("getrawmempool", json!([true])),
            Call::GetRawMempool { verbose: true, sequence: false }
        );
        assert_eq!(
            ok("getrawmempool", json!([false, true])),
            Call::GetRawMempool { verbose: false, sequence: true }
        );
        assert_eq!(ok("getmempoolinfo", json!([])), Call::GetMempoolInfo);
        assert_eq!(ok("getnetworkinfo", json!([])), Call::GetNetworkInfo);
    }

    #[test]
    fn fee_targets_and_descriptors_are_checked_as_core_checks_them() {
        let e = |m: &str, p: Value| Call::parse(m, p.as_array().unwrap()).unwrap_err().code;
        assert_eq!(Call::parse("estimatesmartfee", &[json!(1008)]).unwrap(), Call::EstimateSmartFee(1008));
        for target in [0, -1, 1009] {
            assert_eq!(e("estimatesmartfee", json!([target])), code::INVALID_PARAMETER, "{target}");
        }
        assert_eq!(e("estimatesmartfee", json!(["6"])), code::TYPE);
        assert_eq!(e("estimatesmartfee", json!([])), code::MISC);
        assert_eq!(e("estimatesmartfee", json!([6, "bogus"])), code::INVALID_PARAMETER);
        assert!(Call::parse("estimatesmartfee", &[json!(6), json!("ECONOMICAL")]).is_ok());
        assert_eq!(e("getdescriptorinfo", json!([])), code::MISC);
        assert_eq!(e("getdescriptorinfo", json!([1])), code::TYPE);
        let Call::GetDescriptorInfo(d) = Call::parse("getdescriptorinfo", &[json!("raw(00)")]).unwrap()
        else {
            panic!()
        };
        assert_eq!(d, "raw(00)");
    }
}
