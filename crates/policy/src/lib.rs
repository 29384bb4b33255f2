//! Vigil's pure core: a custody policy file in, descriptors and the pre-signed vault
//! transaction graph out. No I/O, no clock, no chain: every other Vigil crate builds on this
//! one, and every party (owner client, co-signer, towers) runs the same code to rebuild and
//! check the same bytes.
//!
//! - [`config`]: the policy file (TOML) and its validation; each refusal names the field.
//! - [`descriptors`]: the outputs of DESIGN.md §4 as taproot miniscript (ADR 0001).
//! - [`graph`]: U, C, E, UE with their fee ladders (ADR 0002), signed by per-vault one-time
//!   keys that are wiped when dropped; [`funding`]: V's funding PSBT; [`spends`]: spends of
//!   the other leaves as PSBTs; [`tx`]: the one transaction skeleton they all use.
//! - [`wallet_policy`]: the outputs as BIP-388 wallet policies a hardware signer registers.
//! - [`example`]: the deterministic regtest keys behind `examples/policy.toml`.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod descriptors;
pub mod draft;
pub mod error;
pub mod example;
mod fast;
pub mod funding;
pub mod graph;
pub mod signing;
pub mod spends;
pub mod tx;
pub mod wallet_policy;

pub use bitcoin;
pub use miniscript;

pub use config::{
    secp, KeyChain, Policy, PolicyFormat, PolicyKey, MAX_POLICY_BYTES, MAX_RELATIVE_LOCK, MAX_WHITELIST,
    MIN_PUBLIC_DELAY_BLOCKS, P2TR_DUST_SAT,
};
pub use descriptors::{nums, nums_xpub, taproot_leaves, VaultKind, NUMS_POINT};
pub use error::{DescriptorError, PolicyError, PsbtError, SignatureError, TaprootError};
pub use funding::{ChangeTo, FundingInput};
pub use graph::{
    CompiledPolicy, DeepVaultLeaves, GraphRole, LeafSignature, OwnerSignatures, PresignedTx,
    RangedDescriptors, UnsignedGraph, VaultDescriptors, VaultPlan, GRAPH_TX_VERSION,
};
pub use signing::{is_vault_child, GraphSignatures, OneTimeKey, SignedGraph};
pub use spends::{finalize, sign_key_path, spend_psbt, SpendInput};
pub use tx::{anchor_output, pay_to_anchor, unsigned_tx, ANCHOR_SAT};
pub use wallet_policy::WalletPolicy;
