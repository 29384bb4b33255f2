//! Bitcoin Core's script verification, for any Vigil crate: whether a transaction's inputs
//! are validly signed for the outputs they spend, with every consensus rule (taproot
//! included). The only call into the kernel's `verify` in Vigil.

use bitcoin::consensus::serialize;
use bitcoin::{Transaction, TxOut};

/// Why a transaction's scripts were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// Not one spent output per input.
    #[error("{inputs} inputs but {spent} spent outputs given")]
    Prevouts {
        /// The transaction's inputs.
        inputs: usize,
        /// The spent outputs given.
        spent: usize,
    },
    /// An input fails verification.
    #[error("input {input} fails the kernel's script verification ({detail})")]
    Input {
        /// The input index.
        input: usize,
        /// The kernel's verdict.
        detail: String,
    },
    /// The kernel could not read the transaction or a script.
    #[error("the kernel cannot read it: {0}")]
    Kernel(String),
}

/// Verifies every input of `tx` against `spent` (the outputs it spends, in input order) with
/// all consensus flags.
pub fn verify_inputs(tx: &Transaction, spent: &[TxOut]) -> Result<(), ScriptError> {
    if tx.input.len() != spent.len() {
        return Err(ScriptError::Prevouts { inputs: tx.input.len(), spent: spent.len() });
    }
    let internal = |e: bitcoinkernel::KernelError| ScriptError::Kernel(e.to_string());
    let ktx = bitcoinkernel::Transaction::new(&serialize(tx)).map_err(internal)?;
    let scripts = spent
        .iter()
        .map(|o| bitcoinkernel::ScriptPubkey::new(o.script_pubkey.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    let kspent: Vec<bitcoinkernel::TxOut> = scripts
        .iter()
        .zip(spent)
        .map(|(s, o)| bitcoinkernel::TxOut::new(s, o.value.to_sat() as i64))
        .collect();
    let precomputed = bitcoinkernel::PrecomputedTransactionData::new(&ktx, &kspent).map_err(internal)?;
    for (input, (script, prevout)) in scripts.iter().zip(spent).enumerate() {
        bitcoinkernel::verify(
            script,
            Some(prevout.value.to_sat() as i64),
            &ktx,
            input,
            Some(bitcoinkernel::VERIFY_ALL),
            &precomputed,
        )
        .map_err(|e| ScriptError::Input { input, detail: format!("{e:?}") })?;
    }
    Ok(())
}
