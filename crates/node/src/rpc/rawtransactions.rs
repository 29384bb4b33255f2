//! Core's raw-transaction RPCs: looking transactions up, and offering them to the pending
//! pool (alone, as a package, or as a test).

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::encode::serialize_hex;
use vigil_regtest::bitcoin::Transaction;
use vigil_regtest::{RegtestChain, SubmitError, TxStatus};

use super::{code, err, Call, RpcError};
use crate::json::{btc, tx_json};

pub(super) fn execute(chain: &mut RegtestChain, call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GetRawTransaction(txid, verbosity) => {
            let tx = chain.transaction(&txid).ok_or_else(|| {
                err(
                    code::INVALID_ADDRESS_OR_KEY,
                    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                )
            })?;
            if verbosity == 0 {
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
        Call::SendRawTransaction(tx) => {
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
        Call::SubmitPackage(txs) => {
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
        Call::TestMempoolAccept(tx) => {
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
        other => unreachable!("not a raw-transaction call: {other:?}"),
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
