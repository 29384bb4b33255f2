//! Core's raw-transaction RPCs: looking transactions up, and offering them to the pending
//! pool (alone, as a package, or as a test).

use std::sync::Arc;

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::encode::serialize_hex;
use vigil_regtest::bitcoin::{Amount, Network, Transaction, Txid};
use vigil_regtest::{RegtestChain, SubmitError, TxStatus};

use super::{code, err, Call, RpcError};
use crate::json::{btc, spent_coins, tx_json};

pub(super) fn execute(chain: &mut RegtestChain, call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GetRawTransaction(txid, verbosity, in_block) => {
            let genesis = vigil_regtest::bitcoin::constants::genesis_block(Network::Regtest);
            if txid.to_raw_hash() == genesis.header.merkle_root.to_raw_hash() {
                return Err(err(
                    code::INVALID_ADDRESS_OR_KEY,
                    "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
                ));
            }
            let (tx, block) = match in_block {
                Some(hash) => {
                    let block = chain
                        .block_by_hash(&hash)
                        .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Block hash not found"))?;
                    let tx = block.txdata.iter().find(|t| t.compute_txid() == txid).cloned().ok_or_else(|| {
                        err(
                            code::INVALID_ADDRESS_OR_KEY,
                            "No such transaction found in the provided block. Use gettransaction for wallet transactions.",
                        )
                    })?;
                    (Arc::new(tx), Some(hash))
                }
                None => {
                    let tx = chain.transaction(&txid).ok_or_else(|| {
                        err(
                            code::INVALID_ADDRESS_OR_KEY,
                            "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                        )
                    })?;
                    let block = match chain.tx_status(&txid) {
                        Some(TxStatus::Confirmed { height, .. }) => chain.block_hash(height),
                        _ => None,
                    };
                    (tx, block)
                }
            };
            if verbosity <= 0 {
                return Ok(json!(serialize_hex(&*tx)));
            }
            let active = block.is_some_and(|h| chain.is_active(&h));
            // Verbosity 2 adds the fee and each input's coin, from the block's undo data.
            let spent = if verbosity >= 2 && active { spent_coins(chain, &tx) } else { None };
            let mut v = tx_json(&tx, spent.as_deref(), true);
            if in_block.is_some() {
                v["in_active_chain"] = json!(active);
            }
            if let Some(hash) = block {
                v["blockhash"] = json!(hash.to_string());
                if active {
                    let height = chain.block_height(&hash).expect("known block");
                    let time = chain.block_by_hash(&hash).expect("known block").header.time;
                    v["confirmations"] = json!(chain.height() - height + 1);
                    v["time"] = json!(time);
                    v["blocktime"] = json!(time);
                } else {
                    v["confirmations"] = json!(0);
                }
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
            let mut replaced = Vec::new();
            let mut failed = false;
            for tx in &txs {
                let txid = tx.compute_txid();
                let mut r = json!({"txid": txid.to_string()});
                if failed {
                    r["error"] = json!("package-not-validated");
                } else if let Some(entry) = chain.pending().into_iter().find(|e| e.tx.compute_txid() == txid)
                {
                    if entry.tx.compute_wtxid() != tx.compute_wtxid() {
                        // The same transaction with another witness is what stays.
                        r["other-wtxid"] = json!(entry.tx.compute_wtxid().to_string());
                    } else {
                        // Already in the pool: Core gives no effective feerate for it.
                        r["vsize"] = json!(entry.vsize);
                        r["fees"] = json!({"base": btc(entry.fee)});
                    }
                } else {
                    let before = pending_txids(chain);
                    match chain.submit_for_fee(tx) {
                        Ok(fee) => {
                            let vsize = tx.weight().to_vbytes_ceil();
                            r["vsize"] = json!(vsize);
                            r["fees"] = fees_json(tx, fee, vsize);
                            let after = pending_txids(chain);
                            replaced.extend(
                                before.into_iter().filter(|t| !after.contains(t)).map(|t| t.to_string()),
                            );
                        }
                        Err(e) => {
                            failed = true;
                            r["error"] = json!(rejection(chain, tx, &e).1);
                        }
                    }
                }
                results.insert(tx.compute_wtxid().to_string(), r);
            }
            let message = if failed { "transaction failed" } else { "success" };
            Ok(json!({"package_msg": message, "tx-results": results, "replaced-transactions": replaced}))
        }
        Call::TestMempoolAccept(tx) => {
            let txid = tx.compute_txid();
            let mut r = json!({"txid": txid.to_string(), "wtxid": tx.compute_wtxid().to_string()});
            match chain.test_accept(&tx) {
                Ok(fee) => {
                    let vsize = tx.weight().to_vbytes_ceil();
                    r["allowed"] = json!(true);
                    r["vsize"] = json!(vsize);
                    r["fees"] = fees_json(&tx, fee, vsize);
                }
                Err(e) => {
                    let (reason, details) = rejection(chain, &tx, &e);
                    r["allowed"] = json!(false);
                    r["reject-reason"] = json!(reason);
                    // Core details every refusal but a missing input.
                    if !matches!(e, SubmitError::MissingInput { .. }) {
                        r["reject-details"] = json!(details);
                    }
                }
            }
            Ok(json!([r]))
        }
        other => unreachable!("not a raw-transaction call: {other:?}"),
    }
}

/// Fees of a transaction accepted alone: its feerate is its own.
fn fees_json(tx: &Transaction, fee: Amount, vsize: u64) -> Value {
    json!({
        "base": btc(fee),
        "effective-feerate": btc(Amount::from_sat(fee.to_sat() * 1000 / vsize.max(1))),
        "effective-includes": [tx.compute_wtxid().to_string()],
    })
}

fn pending_txids(chain: &RegtestChain) -> Vec<Txid> {
    chain.pending().iter().map(|e| e.tx.compute_txid()).collect()
}

/// Core's reject reason, and the reason with its details (`TxValidationState::ToString`).
fn rejection(chain: &RegtestChain, tx: &Transaction, e: &SubmitError) -> (String, String) {
    if let SubmitError::AlreadyKnown(txid) = e {
        // Core tells a pending transaction (or one differing only in its witness) from a
        // confirmed one, without details.
        let reason = if chain.tx_status(txid) != Some(TxStatus::Pending) {
            "txn-already-known"
        } else if chain.pending().iter().any(|p| p.tx.compute_wtxid() == tx.compute_wtxid()) {
            "txn-already-in-mempool"
        } else {
            "txn-same-nonwitness-data-in-mempool"
        };
        return (reason.to_owned(), reason.to_owned());
    }
    let reason = reject_reason(e);
    let text = match e {
        SubmitError::Relay(r) => r.to_string(),
        other => other.to_string(),
    };
    let details = match text.split_once(':') {
        Some((_, details)) if !details.trim().is_empty() => format!("{reason}, {}", details.trim()),
        _ => reason.clone(),
    };
    (reason, details)
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
