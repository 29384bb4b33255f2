//! Why the chain or its pending pool refused something. Nothing changed when they did.

use bitcoin::{Amount, BlockHash, OutPoint, Txid};

use crate::relay::RelayError;

/// Errors from the chain itself (opening, mining, the faucet).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The data directory could not be created or used.
    #[error("data directory: {0}")]
    DataDir(String),
    /// The kernel failed (not a validation verdict: an internal or I/O failure).
    #[error("kernel: {0}")]
    Kernel(String),
    /// The kernel refused a block; nothing changed.
    #[error("block {hash} rejected by the kernel: {reason}")]
    BlockRejected {
        /// The refused block.
        hash: BlockHash,
        /// The kernel's reason, from its log.
        reason: String,
    },
    /// A block was asked to build on a parent the chain has never seen.
    #[error("unknown block {0}")]
    UnknownBlock(BlockHash),
    /// A transaction given for a block spends an output of a transaction the chain never saw.
    #[error("cannot price input {0}: the transaction it spends is unknown")]
    UnknownInput(OutPoint),
    /// The faucet has less than was asked for.
    #[error("the faucet has {available} mature, wanted {wanted} plus fee: mine more blocks")]
    FaucetEmpty {
        /// Asked for.
        wanted: Amount,
        /// What mature coins hold.
        available: Amount,
    },
    /// The faucet's own transaction was refused (a bug).
    #[error("faucet transaction refused: {0}")]
    Faucet(SubmitError),
}

/// Why the pending pool refused a transaction. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A context-free consensus rule is broken (Core's reason).
    #[error("{0}")]
    Invalid(&'static str),
    /// Already confirmed or pending.
    #[error("txn-already-known: {0}")]
    AlreadyKnown(Txid),
    /// An input spends an output that is neither unspent on the chain nor pending.
    #[error("missing-inputs: input {input} spends {outpoint}, which is not an unspent output")]
    MissingInput {
        /// The input index.
        input: usize,
        /// What it spends.
        outpoint: OutPoint,
    },
    /// An input spends a coinbase younger than 100 blocks.
    #[error(
        "bad-txns-premature-spend-of-coinbase: input {input} has {confirmations} confirmations, needs 100"
    )]
    ImmatureCoinbase {
        /// The input index.
        input: usize,
        /// Confirmations the coinbase would have in the next block.
        confirmations: u32,
    },
    /// Outputs are worth more than inputs.
    #[error("bad-txns-in-belowout: outputs {outputs} exceed inputs {inputs}")]
    OutputsExceedInputs {
        /// Sum of inputs.
        inputs: Amount,
        /// Sum of outputs.
        outputs: Amount,
    },
    /// nLockTime not reached by the next block.
    #[error("non-final: lock time {lock_time} not reached by the next block (height {next_height})")]
    NonFinal {
        /// The transaction's nLockTime.
        lock_time: u32,
        /// The height the transaction would be mined at.
        next_height: u32,
    },
    /// A relative lock (BIP68, in blocks) is not met by the next block.
    #[error("non-BIP68-final: input {input} can be mined from height {first_valid_height}, the next block is {next_height}")]
    SequenceLock {
        /// The input index.
        input: usize,
        /// The first height at which the input may be mined.
        first_valid_height: u32,
        /// The height the transaction would be mined at.
        next_height: u32,
    },
    /// A relative lock (BIP68, in time) is not met.
    #[error("non-BIP68-final: input {input} needs median time past {required_mtp}, it is {mtp}")]
    SequenceLockTime {
        /// The input index.
        input: usize,
        /// The MTP required.
        required_mtp: i64,
        /// The tip's MTP.
        mtp: u32,
    },
    /// Bitcoin Core's relay policy refuses it.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The kernel's script verification failed for an input.
    #[error("mandatory-script-verify-flag-failed: input {input} fails the kernel's script verification ({detail})")]
    Script {
        /// The input index.
        input: usize,
        /// The kernel's verdict.
        detail: String,
    },
    /// The kernel could not even look at the transaction.
    #[error("kernel: {0}")]
    Kernel(String),
}
