//! Errors of the policy crate. Each names what to fix, and keeps its source.

use bitcoin::{Amount, OutPoint};

/// Why a policy, a vault or a transaction could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file is not valid TOML or does not have the expected shape.
    #[error("policy file: {0}")]
    Syntax(#[from] toml::de::Error),
    /// The policy file is too large for the requests that carry it.
    #[error("policy file: {bytes} bytes; at most {limit}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The largest allowed.
        limit: usize,
    },
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
    /// An output a hardware signer must register as a BIP-388 wallet policy cannot be.
    #[error("the {output} output cannot be registered on a hardware signer: {reason}")]
    NotRegistrable {
        /// Which output (`intake`, `guarded unvault`).
        output: String,
        /// The limit it breaks, named.
        reason: String,
    },
    /// A funding input is not a native segwit output, so the funding txid could change.
    #[error("funding input {input} ({outpoint}) is not a native segwit output: its txid could be malleated, which would orphan the pre-signed graph")]
    NonSegwitFundingInput {
        /// The input index.
        input: usize,
        /// The outpoint.
        outpoint: OutPoint,
    },
    /// A funding input is not at the intake address it claims.
    #[error("funding input {input} is not intake address #{intake_index}{}", if *change { " of the change branch" } else { "" })]
    NotIntakeAddress {
        /// The input index.
        input: usize,
        /// The intake index it claims.
        intake_index: u32,
        /// Whether it claims the change branch.
        change: bool,
    },
    /// Format 1 has no change branch for the intake (its `/1` is the vault chain).
    #[error("this policy (format 1) has no change branch: its change goes to a receive address")]
    NoChangeBranch,
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
    Signatures(#[from] SignatureError),
    /// A descriptor could not be built from the policy's keys.
    #[error("descriptor: {0}")]
    Descriptor(Box<DescriptorError>),
    /// A taproot output could not be built.
    #[error("taproot: {0}")]
    Taproot(#[from] TaprootError),
    /// A PSBT could not be built, updated or extracted.
    #[error("psbt: {0}")]
    Psbt(Box<PsbtError>),
}

// Boxed: these sources are large, and every `Result` of the crate carries the error's size.
impl From<DescriptorError> for PolicyError {
    fn from(e: DescriptorError) -> PolicyError {
        PolicyError::Descriptor(Box::new(e))
    }
}

impl From<PsbtError> for PolicyError {
    fn from(e: PsbtError) -> PolicyError {
        PolicyError::Psbt(Box::new(e))
    }
}

/// Why a set of signatures was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// They are not from this vault's one-time keys.
    #[error("signatures are not from this vault's one-time keys")]
    NotTheVaultsKeys,
    /// A one-time key that is not part of the vault was asked to sign it.
    #[error("this one-time key is not part of the vault")]
    KeyNotInVault,
    /// Not one signature per transaction.
    #[error("{given} signatures for {expected} transactions")]
    Count {
        /// Transactions in the graph.
        expected: usize,
        /// Signatures given.
        given: usize,
    },
    /// A signature does not verify.
    #[error("signature {index} ({role}) does not verify")]
    Invalid {
        /// Its position in canonical order.
        index: usize,
        /// The transaction it signs.
        role: &'static str,
    },
    /// A PSBT could not be finalized: the signatures (or timelocks) do not satisfy any leaf.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Unsatisfied(Vec<miniscript::psbt::Error>),
}

/// Why a descriptor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// A template does not parse or is not sane miniscript (a bug, or a policy beyond limits).
    #[error("{descriptor}: {source}")]
    Template {
        /// The template.
        descriptor: String,
        /// Miniscript's reason.
        source: miniscript::Error,
    },
    /// A template names a key the policy has no key for.
    #[error("no key for placeholder {0}")]
    NoKey(String),
    /// Hash locks are not part of Vigil's descriptors.
    #[error("hash locks are not part of Vigil's descriptors")]
    HashLock,
    /// A key could not be derived.
    #[error("deriving a key: {0}")]
    Derive(#[from] bitcoin::bip32::Error),
    /// A hardened index was asked for public derivation.
    #[error("index {0} is hardened: the policy holds public keys only")]
    HardenedIndex(u32),
    /// BIP32 gives no key at this index (probability below 2^-127).
    #[error("BIP32 child {0} is invalid")]
    InvalidChild(u32),
    /// A descriptor still has a wildcard.
    #[error("{0}")]
    NotDefinite(#[from] miniscript::descriptor::ConversionError),
    /// Its worst-case satisfaction cannot be sized.
    #[error("sizing its satisfaction: {0}")]
    Weight(miniscript::Error),
    /// Its script is no address of the network.
    #[error("{0}")]
    Address(#[from] bitcoin::address::FromScriptError),
}

/// Why a taproot output could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TaprootError {
    /// The descriptor is not `tr()`.
    #[error("not a taproot descriptor")]
    NotTaproot,
    /// The script tree does not build.
    #[error("{0}")]
    Builder(#[from] bitcoin::taproot::TaprootBuilderError),
    /// The script tree is incomplete.
    #[error("incomplete script tree")]
    IncompleteTree,
    /// The tweak gave the point at infinity (probability below 2^-127).
    #[error("the tweak failed")]
    Tweak,
    /// A leaf is missing from its own tree.
    #[error("a leaf is missing from its own tree")]
    LeafMissing,
}

/// Why a PSBT could not be built, updated or extracted.
#[derive(Debug, thiserror::Error)]
pub enum PsbtError {
    /// The unsigned transaction is not one a PSBT can hold.
    #[error("{0}")]
    Create(#[from] bitcoin::psbt::Error),
    /// An input could not be filled in from its descriptor.
    #[error("input {input}: {source}")]
    Input {
        /// The input index.
        input: usize,
        /// Why.
        source: miniscript::psbt::UtxoUpdateError,
    },
    /// An output could not be filled in from its descriptor.
    #[error("output {output}: {source}")]
    Output {
        /// The output index.
        output: usize,
        /// Why.
        source: miniscript::psbt::OutputUpdateError,
    },
    /// A sighash could not be computed.
    #[error("sighash: {0}")]
    Sighash(#[from] bitcoin::sighash::TaprootError),
    /// The finalized transaction could not be extracted.
    #[error("{0}")]
    Extract(#[from] bitcoin::psbt::ExtractTxError),
    /// An input does not say which output it spends (its witness UTXO).
    #[error("an input has no witness UTXO")]
    MissingUtxo,
    /// The transaction does not spend the coins it was checked against.
    #[error("its inputs are not the coins named")]
    OtherInputs,
}
