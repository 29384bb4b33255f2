//! Errors of the policy crate.

use bitcoin::{Amount, OutPoint};

/// Why a policy, a vault or a transaction could not be built. Each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy file is not valid TOML or does not have the expected shape.
    #[error("policy file: {0}")]
    Syntax(String),
    /// A field of the policy file breaks a rule.
    #[error("policy field `{field}`: {reason}")]
    Field {
        /// The field, as written in the file (`guardians.threshold`, `owner.keys[1]`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The vault amount cannot pay for its own graph and leave non-dust outputs.
    #[error("vault amount {amount} is below the {minimum} this policy's graph needs (fees, anchors and non-dust outputs)")]
    AmountTooSmall {
        /// The amount asked for.
        amount: Amount,
        /// The smallest amount that works.
        minimum: Amount,
    },
    /// More than all bitcoin.
    #[error("vault amount {0} exceeds 21 million BTC")]
    AmountTooLarge(Amount),
    /// A standard vault holds at most the velocity limit; larger ones must be guarded.
    #[error(
        "a standard vault holds at most the velocity limit of {limit}; {amount} must go to a guarded vault"
    )]
    StandardVaultTooLarge {
        /// The amount asked for.
        amount: Amount,
        /// The velocity limit.
        limit: Amount,
    },
    /// A funding input is not a native segwit output, so the funding txid could change.
    #[error("funding input {input} ({outpoint}) is not a native segwit output: its txid could be malleated, which would orphan the pre-signed graph")]
    NonSegwitFundingInput {
        /// The input index.
        input: usize,
        /// The outpoint.
        outpoint: OutPoint,
    },
    /// The funding inputs do not cover the vault and the fee.
    #[error("funding inputs hold {available}, the vault and its fee need {needed}")]
    InsufficientFunds {
        /// What is needed.
        needed: Amount,
        /// What the inputs hold.
        available: Amount,
    },
    /// A signature set was made by the wrong key or for another graph.
    #[error("signatures: {0}")]
    Signatures(String),
    /// Building a descriptor, a witness or a PSBT failed.
    #[error("{0}")]
    Build(String),
}
