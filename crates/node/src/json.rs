//! Core's JSON shapes for scripts, transactions, headers and blocks.

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::encode::serialize_hex;
use vigil_regtest::bitcoin::hex::DisplayHex;
use vigil_regtest::bitcoin::{Address, Amount, Block, Network, ScriptBuf, Transaction, VarInt};
use vigil_regtest::RegtestChain;

/// Regtest's target, as Core prints it.
pub(crate) const REGTEST_TARGET: &str = "7fffff0000000000000000000000000000000000000000000000000000000000";
/// Regtest's difficulty, as Core prints it.
pub(crate) const REGTEST_DIFFICULTY: f64 = 4.656542373906925e-10;

/// An amount as Core prints it: a number with 8 decimals.
pub(crate) fn btc(amount: Amount) -> Value {
    serde_json::from_str(&format!("{}.{:08}", amount.to_sat() / 100_000_000, amount.to_sat() % 100_000_000))
        .expect("a number")
}

pub(crate) fn script_json(script: &ScriptBuf) -> Value {
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

pub(crate) fn tx_json(tx: &Transaction) -> Value {
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
                    "txinwitness": i.witness.iter().map(|w| w.to_lower_hex_string()).collect::<Vec<_>>(),
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

pub(crate) fn header_json(chain: &RegtestChain, block: &Block) -> Value {
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
        "target": REGTEST_TARGET,
        "difficulty": REGTEST_DIFFICULTY,
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

pub(crate) fn block_json(chain: &RegtestChain, block: &Block, full: bool) -> Value {
    let mut v = header_json(chain, block);
    let stripped = block.txdata.iter().map(|t| t.base_size()).sum::<usize>()
        + 80
        + VarInt::from(block.txdata.len()).size();
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
