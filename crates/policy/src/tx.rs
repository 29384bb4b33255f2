//! The one place Vigil's transactions are assembled (before signing), and the anchor output
//! the pre-signed ones carry.

use bitcoin::transaction::Version;
use bitcoin::{absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut};

/// The anchor's value: P2A's dust threshold, so the anchor relays in a fee-paying transaction.
pub const ANCHOR_SAT: u64 = 240;

/// Pay-to-anchor output script (`OP_1 <0x4e73>`): anyone can spend it to bump a parent by CPFP.
pub fn pay_to_anchor() -> ScriptBuf {
    ScriptBuf::from_bytes(vec![0x51, 0x02, 0x4e, 0x73])
}

/// The anchor output.
pub fn anchor_output() -> TxOut {
    TxOut { value: Amount::from_sat(ANCHOR_SAT), script_pubkey: pay_to_anchor() }
}

/// An unsigned transaction: `version`, nLockTime 0, `inputs` as (outpoint, nSequence), empty
/// scriptSigs and witnesses.
pub fn unsigned_tx(
    version: Version,
    inputs: impl IntoIterator<Item = (OutPoint, Sequence)>,
    outputs: Vec<TxOut>,
) -> Transaction {
    Transaction {
        version,
        lock_time: absolute::LockTime::ZERO,
        input: inputs
            .into_iter()
            .map(|(previous_output, sequence)| TxIn { previous_output, sequence, ..Default::default() })
            .collect(),
        output: outputs,
    }
}
