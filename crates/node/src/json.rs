//! Core's JSON shapes for scripts, transactions, headers and blocks.

use serde_json::{json, Value};
use vigil_regtest::bitcoin::consensus::encode::serialize_hex;
use vigil_regtest::bitcoin::hex::DisplayHex;
use vigil_regtest::bitcoin::{
    Address, Amount, Block, Network, Script, ScriptBuf, Transaction, TxOut, VarInt, WitnessVersion,
};
use vigil_regtest::{RegtestChain, TxStatus};

use crate::descriptor;

/// Regtest's target, as Core prints it.
pub(crate) const REGTEST_TARGET: &str = "7fffff0000000000000000000000000000000000000000000000000000000000";
/// Regtest's difficulty, as Core prints it.
pub(crate) const REGTEST_DIFFICULTY: f64 = 4.656542373906925e-10;

/// An amount as Core prints it: a number with 8 decimals.
pub(crate) fn btc(amount: Amount) -> Value {
    serde_json::from_str(&format!("{}.{:08}", amount.to_sat() / 100_000_000, amount.to_sat() % 100_000_000))
        .expect("a number")
}

/// A script as Core writes it (`ScriptToAsmStr`): pushes of up to four bytes as numbers,
/// longer ones in hex, opcodes by Core's names; in a scriptSig (`sighashes`), a signature's
/// sighash byte spelled out.
pub(crate) fn asm(script: &Script, sighashes: bool) -> String {
    use vigil_regtest::bitcoin::blockdata::script::Instruction;
    let mut words = Vec::new();
    for instruction in script.instructions() {
        let word = match instruction {
            Err(_) => {
                words.push("[error]".to_owned());
                break;
            }
            Ok(Instruction::PushBytes(data)) if data.len() <= 4 => script_num(data.as_bytes()).to_string(),
            Ok(Instruction::PushBytes(data)) => {
                let data = data.as_bytes();
                let signature = (sighashes && !script.is_op_return())
                    .then(|| vigil_regtest::bitcoin::ecdsa::Signature::from_slice(data).ok())
                    .flatten();
                match signature {
                    Some(sig) => {
                        use vigil_regtest::bitcoin::EcdsaSighashType as T;
                        let name = match sig.sighash_type {
                            T::All => "ALL",
                            T::None => "NONE",
                            T::Single => "SINGLE",
                            T::AllPlusAnyoneCanPay => "ALL|ANYONECANPAY",
                            T::NonePlusAnyoneCanPay => "NONE|ANYONECANPAY",
                            T::SinglePlusAnyoneCanPay => "SINGLE|ANYONECANPAY",
                        };
                        format!("{}[{name}]", data[..data.len() - 1].to_lower_hex_string())
                    }
                    None => data.to_lower_hex_string(),
                }
            }
            Ok(Instruction::Op(op)) => match op.to_u8() {
                0x4f => "-1".to_owned(),
                n @ 0x51..=0x60 => (n - 0x50).to_string(),
                0xb1 => "OP_CHECKLOCKTIMEVERIFY".to_owned(),
                0xb2 => "OP_CHECKSEQUENCEVERIFY".to_owned(),
                0xbb..=0xfe => "OP_UNKNOWN".to_owned(),
                _ => op.to_string(),
            },
        };
        words.push(word);
    }
    words.join(" ")
}

/// A push of up to four bytes read as Core's `CScriptNum` (little-endian, sign bit on top).
fn script_num(bytes: &[u8]) -> i64 {
    let Some(&last) = bytes.last() else { return 0 };
    let magnitude = bytes.iter().rev().fold(0i64, |n, &b| (n << 8) | b as i64);
    if last & 0x80 != 0 {
        -(magnitude & !(0x80i64 << (8 * (bytes.len() - 1))))
    } else {
        magnitude
    }
}

/// Core's name for a script's template (`GetTxnOutputType`).
pub(crate) fn script_type(script: &Script) -> &'static str {
    let push_only_after_return =
        || script.is_op_return() && Script::from_bytes(&script.as_bytes()[1..]).is_push_only();
    if script.is_p2sh() {
        "scripthash"
    } else if let Some(version) = script.witness_version() {
        let program = script.len() - 2;
        match (version, program) {
            (WitnessVersion::V0, 20) => "witness_v0_keyhash",
            (WitnessVersion::V0, 32) => "witness_v0_scripthash",
            (WitnessVersion::V1, 32) => "witness_v1_taproot",
            _ if vigil_regtest::relay::is_pay_to_anchor(script) => "anchor",
            (WitnessVersion::V0, _) => "nonstandard",
            _ => "witness_unknown",
        }
    } else if push_only_after_return() {
        "nulldata"
    } else if script.is_p2pk() {
        "pubkey"
    } else if script.is_p2pkh() {
        "pubkeyhash"
    } else if descriptor::bare_multisig(script).is_some() {
        "multisig"
    } else {
        "nonstandard"
    }
}

/// A script as Core shows an output's: with its inferred descriptor and, when it pays one
/// (bare keys do not count), its address.
pub(crate) fn script_json(script: &ScriptBuf) -> Value {
    let kind = script_type(script);
    let mut v = json!({
        "asm": asm(script, false),
        "desc": descriptor::infer(script),
        "hex": script.to_hex_string(),
        "type": kind,
    });
    if !matches!(kind, "pubkey" | "multisig" | "nulldata" | "nonstandard") {
        if let Ok(a) = Address::from_script(script, Network::Regtest) {
            v["address"] = json!(a.to_string());
        }
    }
    v
}

/// A coin a transaction spent, as Core's undo data keeps it.
pub(crate) struct SpentCoin {
    txout: TxOut,
    height: u32,
    coinbase: bool,
}

/// The coins a confirmed transaction spent, when every one is on the active chain (Core has
/// undo data for connected blocks only); `None` for a coinbase, which spends none.
pub(crate) fn spent_coins(chain: &RegtestChain, tx: &Transaction) -> Option<Vec<SpentCoin>> {
    if tx.is_coinbase() {
        return None;
    }
    tx.input
        .iter()
        .map(|i| {
            let prev = i.previous_output;
            let Some(TxStatus::Confirmed { height, .. }) = chain.tx_status(&prev.txid) else { return None };
            let tx = chain.transaction(&prev.txid)?;
            Some(SpentCoin {
                txout: tx.output.get(prev.vout as usize)?.clone(),
                height,
                coinbase: tx.is_coinbase(),
            })
        })
        .collect()
}

/// A transaction as `getrawtransaction` and `getblock` show it. With the coins it spent, its
/// fee too (Core: verbosity 2), and with `prevouts` each input's coin (verbosity 3).
pub(crate) fn tx_json(tx: &Transaction, spent: Option<&[SpentCoin]>, prevouts: bool) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let mut v = if tx.is_coinbase() {
                json!({"coinbase": i.script_sig.to_hex_string()})
            } else {
                json!({
                    "txid": i.previous_output.txid.to_string(),
                    "vout": i.previous_output.vout,
                    "scriptSig": {"asm": asm(&i.script_sig, true), "hex": i.script_sig.to_hex_string()},
                })
            };
            if !i.witness.is_empty() {
                v["txinwitness"] =
                    json!(i.witness.iter().map(|w| w.to_lower_hex_string()).collect::<Vec<_>>());
            }
            if let Some(coin) = spent.filter(|_| prevouts).and_then(|s| s.get(n)) {
                v["prevout"] = json!({
                    "generated": coin.coinbase,
                    "height": coin.height,
                    "value": btc(coin.txout.value),
                    "scriptPubKey": script_json(&coin.txout.script_pubkey),
                });
            }
            v["sequence"] = json!(i.sequence.0);
            v
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": btc(o.value), "n": n, "scriptPubKey": script_json(&o.script_pubkey)}))
        .collect();
    let mut v = json!({
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
    });
    if let Some(spent) = spent {
        let input: Amount = spent.iter().map(|c| c.txout.value).sum();
        let output: Amount = tx.output.iter().map(|o| o.value).sum();
        v["fee"] = btc(input.checked_sub(output).unwrap_or(Amount::ZERO));
    }
    v
}

/// Median time past of a block on any branch: the median of its own and its ten
/// predecessors' timestamps.
fn median_time(chain: &RegtestChain, block: &Block) -> u32 {
    let mut times = vec![block.header.time];
    let mut prev = block.header.prev_blockhash;
    while times.len() < 11 {
        let Some(b) = chain.block_by_hash(&prev) else { break };
        times.push(b.header.time);
        prev = b.header.prev_blockhash;
    }
    times.sort_unstable();
    times[times.len() / 2]
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
        "mediantime": median_time(chain, block),
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

/// A block at `getblock` verbosity 1 (txids), 2 (transactions, with fees) or 3 (and each
/// input's coin).
pub(crate) fn block_json(chain: &RegtestChain, block: &Block, verbosity: i64) -> Value {
    let mut v = header_json(chain, block);
    let stripped = block.txdata.iter().map(|t| t.base_size()).sum::<usize>()
        + 80
        + VarInt::from(block.txdata.len()).size();
    v["strippedsize"] = json!(stripped);
    v["size"] = json!(block.total_size());
    v["weight"] = json!(block.weight().to_wu());
    let coinbase = &block.txdata[0];
    let input = &coinbase.input[0];
    v["coinbase_tx"] = json!({
        "version": coinbase.version.0,
        "locktime": coinbase.lock_time.to_consensus_u32(),
        "sequence": input.sequence.0,
        "coinbase": input.script_sig.to_hex_string(),
    });
    if let Some(reserved) = input.witness.nth(0) {
        v["coinbase_tx"]["witness"] = json!(reserved.to_lower_hex_string());
    }
    let active = chain.is_active(&block.block_hash());
    v["tx"] = if verbosity <= 1 {
        json!(block.txdata.iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>())
    } else {
        let txs = block.txdata.iter().map(|t| {
            let spent = if active { spent_coins(chain, t) } else { None };
            tx_json(t, spent.as_deref(), verbosity >= 3)
        });
        json!(txs.collect::<Vec<_>>())
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_written_as_core_writes_them() {
        let p2tr = ScriptBuf::from_hex(&format!("5120{}", "ab".repeat(32))).unwrap();
        assert_eq!(asm(&p2tr, false), format!("1 {}", "ab".repeat(32)));
        let p2wpkh = ScriptBuf::from_hex(&format!("0014{}", "cd".repeat(20))).unwrap();
        assert_eq!(asm(&p2wpkh, false), format!("0 {}", "cd".repeat(20)));
        // A coinbase's height push, a negative number, CLTV, a truncated push.
        assert_eq!(asm(&ScriptBuf::from_hex("03e80300").unwrap(), false), "1000");
        assert_eq!(asm(&ScriptBuf::from_hex("0181b1").unwrap(), false), "-1 OP_CHECKLOCKTIMEVERIFY");
        assert_eq!(asm(&ScriptBuf::from_hex("4c05ab").unwrap(), false), "[error]");
        assert_eq!(script_type(&p2tr), "witness_v1_taproot");
        assert_eq!(script_type(&ScriptBuf::from_hex("6a0401020304").unwrap()), "nulldata");
    }
}
