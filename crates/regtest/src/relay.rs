//! Bitcoin Core's relay policy, as far as Vigil's transactions can meet it.
//!
//! The kernel validates consensus only; a node's mempool also refuses transactions that are
//! valid but non-standard, and a cancel no node relays is a cancel that never confirms. These
//! checks mirror `policy/policy.cpp`, `policy/truc_policy.cpp` and the fee rules of
//! `validation.cpp` in the Bitcoin Core version the kernel crate vendors (31.99); the constants
//! below are copied from there by value. Each refusal carries Core's own reject reason so it can
//! be compared with a real bitcoind's `testmempoolaccept`.
//!
//! Not covered here (a real bitcoind is the judge for these): sigop limits, the standard-only
//! script flags beyond consensus (the kernel's `verify` exposes consensus flags only), cluster
//! limits beyond TRUC's, and package relay.

use bitcoin::blockdata::script::Instruction;
use bitcoin::{Amount, Script, Transaction, TxOut};

/// `MAX_STANDARD_TX_WEIGHT`.
pub const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
/// `MIN_STANDARD_TX_NONWITNESS_SIZE`, in bytes.
pub const MIN_STANDARD_TX_NONWITNESS_SIZE: usize = 65;
/// `DEFAULT_MIN_RELAY_TX_FEE`, in sat per 1,000 vbytes.
pub const MIN_RELAY_FEE_SAT_PER_KVB: u64 = 100;
/// `DEFAULT_INCREMENTAL_RELAY_FEE`, in sat per 1,000 vbytes.
pub const INCREMENTAL_RELAY_FEE_SAT_PER_KVB: u64 = 100;
/// `DUST_RELAY_TX_FEE`, in sat per 1,000 vbytes.
pub const DUST_RELAY_FEE_SAT_PER_KVB: u64 = 3_000;
/// `MAX_STANDARD_SCRIPTSIG_SIZE`, in bytes.
pub const MAX_STANDARD_SCRIPTSIG_SIZE: usize = 1_650;
/// `MAX_STANDARD_P2WSH_SCRIPT_SIZE`, in bytes.
pub const MAX_STANDARD_P2WSH_SCRIPT_SIZE: usize = 3_600;
/// `MAX_STANDARD_P2WSH_STACK_ITEMS`.
pub const MAX_STANDARD_P2WSH_STACK_ITEMS: usize = 100;
/// `MAX_STANDARD_P2WSH_STACK_ITEM_SIZE`, in bytes.
pub const MAX_STANDARD_P2WSH_STACK_ITEM_SIZE: usize = 80;
/// `MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE`, in bytes.
pub const MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE: usize = 80;
/// `MAX_OP_RETURN_RELAY`: all of a transaction's OP_RETURN outputs together, in bytes.
pub const MAX_OP_RETURN_RELAY: usize = (MAX_STANDARD_TX_WEIGHT / 4) as usize;
/// `TX_MAX_STANDARD_VERSION`.
pub const TX_MAX_STANDARD_VERSION: i32 = 3;
/// `TRUC_VERSION`.
pub const TRUC_VERSION: i32 = 3;
/// `TRUC_MAX_VSIZE`.
pub const TRUC_MAX_VSIZE: u64 = 10_000;
/// `TRUC_CHILD_MAX_VSIZE`.
pub const TRUC_CHILD_MAX_VSIZE: u64 = 1_000;
/// `MAX_DUST_OUTPUTS_PER_TX` (ephemeral dust).
pub const MAX_DUST_OUTPUTS_PER_TX: usize = 1;

/// Why a relay-policy check refused a transaction. The `Display` text starts with the reject
/// reason Bitcoin Core's `testmempoolaccept` gives for the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The version is outside 1..=3.
    #[error("version: transaction version {0} is not standard (1 to 3 relay)")]
    Version(i32),
    /// Heavier than `MAX_STANDARD_TX_WEIGHT`.
    #[error("tx-size: weight {weight} WU exceeds the standard limit of {MAX_STANDARD_TX_WEIGHT} WU")]
    TooHeavy {
        /// The transaction's weight.
        weight: u64,
    },
    /// Smaller than `MIN_STANDARD_TX_NONWITNESS_SIZE` without its witness.
    #[error("tx-size-small: {size} bytes without witness, the minimum is {MIN_STANDARD_TX_NONWITNESS_SIZE}")]
    TooSmall {
        /// Serialized size without witness.
        size: usize,
    },
    /// An input's scriptSig is too large or not push-only.
    #[error("scriptsig-not-pushonly or scriptsig-size: input {input} has a non-standard scriptSig")]
    ScriptSig {
        /// The input index.
        input: usize,
    },
    /// An output's script is not one of the standard templates.
    #[error("scriptpubkey: output {output} pays to a non-standard script")]
    OutputScript {
        /// The output index.
        output: usize,
    },
    /// OP_RETURN outputs together are larger than `MAX_OP_RETURN_RELAY`.
    #[error("datacarrier: OP_RETURN outputs total {size} bytes, the limit is {MAX_OP_RETURN_RELAY}")]
    DataCarrier {
        /// Total size of OP_RETURN scripts.
        size: usize,
    },
    /// An output is below its dust threshold (and the ephemeral-dust exception does not apply).
    #[error("dust: output {output} of {value} sat is below its dust threshold of {threshold} sat")]
    Dust {
        /// The output index.
        output: usize,
        /// The output's value, in sat.
        value: u64,
        /// The dust threshold for its script, in sat.
        threshold: u64,
    },
    /// A witness does not meet the standard witness rules.
    #[error("bad-witness-nonstandard: input {input}: {reason}")]
    Witness {
        /// The input index.
        input: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Fee below the minimum relay feerate.
    #[error("min relay fee not met: {fee} sat < {required} sat for {vsize} vB at {MIN_RELAY_FEE_SAT_PER_KVB} sat/kvB")]
    FeeBelowMinRelay {
        /// The fee paid, in sat.
        fee: u64,
        /// The fee required, in sat.
        required: u64,
        /// The transaction's virtual size.
        vsize: u64,
    },
    /// A TRUC (version 3) topology or size rule is broken.
    #[error("TRUC-violation: {0}")]
    Truc(String),
    /// A replacement does not pay enough to evict what it conflicts with.
    #[error("insufficient fee: {0}")]
    Replacement(String),
}

/// Sat per 1,000 vbytes times vbytes, rounded up, as Core's `CFeeRate::GetFee` does.
pub fn fee_for(sat_per_kvb: u64, vsize: u64) -> u64 {
    (sat_per_kvb * vsize).div_ceil(1000)
}

/// Virtual size as policy counts it (weight / 4, rounded up; sigops ignored).
pub fn vsize(tx: &Transaction) -> u64 {
    tx.weight().to_vbytes_ceil()
}

/// Whether `script` is one of the output templates Core relays (`IsStandard` in policy.cpp).
pub fn is_standard_output(script: &Script) -> bool {
    script.is_p2pkh()
        || script.is_p2sh()
        || script.is_p2wpkh()
        || script.is_p2wsh()
        || script.is_p2tr()
        || is_pay_to_anchor(script)
        || script.is_op_return()
        || is_standard_bare_multisig(script)
        || is_future_witness_program(script)
}

/// Pay-to-anchor: `OP_1 <0x4e73>`.
pub fn is_pay_to_anchor(script: &Script) -> bool {
    script.as_bytes() == [0x51, 0x02, 0x4e, 0x73]
}

/// Witness versions 2..16 (and non-standard lengths of v1) are relayed as outputs ("future
/// soft forks"), though spending them is non-standard.
fn is_future_witness_program(script: &Script) -> bool {
    script.witness_version().is_some() && !script.is_p2wpkh() && !script.is_p2wsh()
}

fn is_standard_bare_multisig(script: &Script) -> bool {
    // m-of-n with n <= 3, as `Solver` + `IsStandard` allow.
    let bytes = script.as_bytes();
    if bytes.len() < 37 || *bytes.last().unwrap() != 0xae {
        return false;
    }
    let n = bytes[bytes.len() - 2];
    let m = bytes[0];
    (0x51..=0x53).contains(&n) && (0x51..=n).contains(&m) && script.is_multisig()
}

/// The dust threshold of an output, as `GetDustThreshold` computes it at `DUST_RELAY_TX_FEE`.
pub fn dust_threshold(txout: &TxOut) -> u64 {
    let script = &txout.script_pubkey;
    if script.is_op_return() {
        return 0;
    }
    let output_size = txout.size() as u64;
    let spend_size = if script.witness_version().is_some() {
        // 32 + 4 + 1 + (107 / WITNESS_SCALE_FACTOR) + 4
        32 + 4 + 1 + 107 / 4 + 4
    } else {
        32 + 4 + 1 + 107 + 4
    };
    fee_for(DUST_RELAY_FEE_SAT_PER_KVB, output_size + spend_size)
}

/// The context-free standardness rules of `IsStandardTx`. `fee` is needed for the
/// ephemeral-dust exception (a zero-fee transaction may carry one dust output).
pub fn check_standard(tx: &Transaction, fee: Amount) -> Result<(), RelayError> {
    if tx.version.0 < 1 || tx.version.0 > TX_MAX_STANDARD_VERSION {
        return Err(RelayError::Version(tx.version.0));
    }
    let weight = tx.weight().to_wu();
    if weight > MAX_STANDARD_TX_WEIGHT {
        return Err(RelayError::TooHeavy { weight });
    }
    let base_size = tx.base_size();
    if base_size < MIN_STANDARD_TX_NONWITNESS_SIZE {
        return Err(RelayError::TooSmall { size: base_size });
    }
    for (input, txin) in tx.input.iter().enumerate() {
        let sig = &txin.script_sig;
        if sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE || !is_push_only(sig) {
            return Err(RelayError::ScriptSig { input });
        }
    }
    let mut data_carrier = 0usize;
    let mut dust_outputs = Vec::new();
    for (output, txout) in tx.output.iter().enumerate() {
        if !is_standard_output(&txout.script_pubkey) {
            return Err(RelayError::OutputScript { output });
        }
        if txout.script_pubkey.is_op_return() {
            data_carrier += txout.script_pubkey.len();
            continue;
        }
        let threshold = dust_threshold(txout);
        if txout.value.to_sat() < threshold {
            dust_outputs.push(RelayError::Dust { output, value: txout.value.to_sat(), threshold });
        }
    }
    if data_carrier > MAX_OP_RETURN_RELAY {
        return Err(RelayError::DataCarrier { size: data_carrier });
    }
    // Ephemeral dust: one dust output is allowed in a zero-fee transaction (it must be spent
    // in the same package, which only package relay can check).
    let ephemeral_ok = fee == Amount::ZERO && dust_outputs.len() <= MAX_DUST_OUTPUTS_PER_TX;
    if !ephemeral_ok {
        if let Some(first) = dust_outputs.into_iter().next() {
            return Err(first);
        }
    }
    Ok(())
}

fn is_push_only(script: &Script) -> bool {
    script.instructions().all(|ins| match ins {
        Ok(Instruction::PushBytes(_)) => true,
        // OP_0 is a push; OP_1NEGATE and OP_1..OP_16 are pushes too (`IsPushOnly`: <= OP_16).
        Ok(Instruction::Op(op)) => op.to_u8() <= 0x60,
        Err(_) => false,
    })
}

/// The witness rules of `IsWitnessStandard` for the input spending `prevout`.
pub fn check_witness(input: usize, tx: &Transaction, prevout: &TxOut) -> Result<(), RelayError> {
    let witness = &tx.input[input].witness;
    let spk = &prevout.script_pubkey;
    let fail = |reason| Err(RelayError::Witness { input, reason });
    if is_pay_to_anchor(spk) {
        if !witness.is_empty() {
            return fail("a pay-to-anchor spend must have an empty witness");
        }
        return Ok(());
    }
    if spk.is_p2wsh() {
        let Some(script) = witness.last() else { return Ok(()) };
        if script.len() > MAX_STANDARD_P2WSH_SCRIPT_SIZE {
            return fail("witness script larger than 3,600 bytes");
        }
        if witness.len() - 1 > MAX_STANDARD_P2WSH_STACK_ITEMS {
            return fail("more than 100 witness stack items");
        }
        if witness.iter().take(witness.len() - 1).any(|i| i.len() > MAX_STANDARD_P2WSH_STACK_ITEM_SIZE) {
            return fail("a witness stack item larger than 80 bytes");
        }
    }
    if spk.is_p2tr() {
        let items: Vec<&[u8]> = witness.iter().collect();
        if items.len() >= 2 && items.last().is_some_and(|a| a.first() == Some(&0x50)) {
            return fail("taproot annex present");
        }
        if items.len() >= 2 {
            // Script path: [stack..., script, control block].
            let control = items[items.len() - 1];
            let leaf_version = control.first().map(|b| b & 0xfe);
            if leaf_version == Some(0xc0)
                && items[..items.len() - 2].iter().any(|i| i.len() > MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE)
            {
                return fail("a tapscript stack item larger than 80 bytes");
            }
        }
    }
    Ok(())
}

/// The minimum relay fee rule.
pub fn check_min_relay_fee(fee: Amount, vsize: u64) -> Result<(), RelayError> {
    let required = fee_for(MIN_RELAY_FEE_SAT_PER_KVB, vsize);
    if fee.to_sat() < required {
        return Err(RelayError::FeeBelowMinRelay { fee: fee.to_sat(), required, vsize });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::ScriptBuf;

    #[test]
    fn dust_thresholds_match_core() {
        // Values Core's policy tests use: P2WPKH 294, P2TR 330, P2PKH 546, P2A 240.
        let p2wpkh = ScriptBuf::from_bytes([&[0x00, 0x14][..], &[0u8; 20]].concat());
        let p2tr = ScriptBuf::from_bytes([&[0x51, 0x20][..], &[0u8; 32]].concat());
        let p2pkh = ScriptBuf::from_bytes([&[0x76, 0xa9, 0x14][..], &[0u8; 20], &[0x88, 0xac]].concat());
        let p2a = ScriptBuf::from_bytes(vec![0x51, 0x02, 0x4e, 0x73]);
        let out = |s: &ScriptBuf| TxOut { value: Amount::ZERO, script_pubkey: s.clone() };
        assert_eq!(dust_threshold(&out(&p2wpkh)), 294);
        assert_eq!(dust_threshold(&out(&p2tr)), 330);
        assert_eq!(dust_threshold(&out(&p2pkh)), 546);
        assert_eq!(dust_threshold(&out(&p2a)), 240);
        assert!(is_standard_output(&p2a));
    }
}
