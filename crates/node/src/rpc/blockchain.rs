//! Core's blockchain RPCs: blocks, headers, the chain's state, the UTXO set.

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::encode::serialize_hex;
use vigil_regtest::bitcoin::hex::DisplayHex;
use vigil_regtest::{RegtestChain, TxStatus};

use super::{code, err, Call, RpcError};
use crate::json::{block_json, btc, header_json, script_json, REGTEST_DIFFICULTY, REGTEST_TARGET};

pub(super) fn execute(chain: &mut RegtestChain, call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GetBlockCount => Ok(json!(chain.height())),
        Call::GetBestBlockHash => Ok(json!(chain.tip().to_string())),
        Call::GetBlockHash(height) => {
            if height < 0 || height > chain.height() as i64 {
                return Err(err(code::INVALID_PARAMETER, "Block height out of range"));
            }
            Ok(json!(chain.block_hash(height as u32).expect("in range").to_string()))
        }
        Call::GetBlock(hash, verbosity) => {
            let block = chain
                .block_by_hash(&hash)
                .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            match verbosity {
                ..=0 => {
                    Ok(json!(chain.raw_block(&hash).expect("stored with the block").to_lower_hex_string()))
                }
                v => Ok(block_json(chain, &block, v)),
            }
        }
        Call::GetBlockHeader(hash, verbose) => {
            let block = chain
                .block_by_hash(&hash)
                .ok_or_else(|| err(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            if !verbose {
                return Ok(json!(serialize_hex(&block.header)));
            }
            Ok(header_json(chain, &block))
        }
        Call::GetBlockchainInfo => {
            let tip = chain.block_at(chain.height()).expect("tip");
            Ok(json!({
                "chain": "regtest",
                "blocks": chain.height(),
                "headers": chain.height(),
                "bestblockhash": chain.tip().to_string(),
                "bits": format!("{:08x}", tip.header.bits.to_consensus()),
                "target": REGTEST_TARGET,
                "difficulty": REGTEST_DIFFICULTY,
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
        Call::GetTxOut(outpoint, include_mempool) => {
            if include_mempool && chain.spend_of(&outpoint).is_some() {
                return Ok(Value::Null);
            }
            let pending_output = || {
                chain
                    .transaction(&outpoint.txid)
                    .filter(|_| chain.tx_status(&outpoint.txid) == Some(TxStatus::Pending))
                    .and_then(|tx| tx.output.get(outpoint.vout as usize).cloned())
            };
            let (txout, confirmations, coinbase) = match chain.coin(&outpoint) {
                Some(c) => (c.txout, chain.height() - c.height + 1, c.is_coinbase),
                None if include_mempool => match pending_output() {
                    Some(o) => (o, 0, false),
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
        other => unreachable!("not a blockchain call: {other:?}"),
    }
}
