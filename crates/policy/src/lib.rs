//! Vigil's pure core: a custody policy file in, descriptors and the pre-signed vault
//! transaction graph out. No I/O, no clock, no chain: every other Vigil crate builds on this
//! one, and every party (owner client, co-signer, towers) runs the same code to rebuild and
//! check the same bytes.
//!
//! - [`config`]: the policy file (TOML) and its validation; each refusal names the field.
//! - [`descriptors`]: the outputs of DESIGN.md §4 as taproot miniscript (ADR 0001).
//! - [`graph`]: V's funding, then U, C, E, UE with their fee ladders (ADR 0002), signed by
//!   per-vault one-time keys that are wiped when dropped; spends of the other leaves as PSBTs.
//! - [`example`]: the deterministic regtest keys behind `examples/policy.toml`.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
pub mod descriptors;
pub mod error;
pub mod example;
mod fast;
pub mod graph;

pub use bitcoin;
pub use miniscript;

pub use config::{KeyChain, Policy, PolicyKey, MAX_RELATIVE_LOCK, P2TR_DUST_SAT};
pub use descriptors::{nums, taproot_leaves, VaultKind, NUMS_POINT};
pub use error::PolicyError;
pub use graph::{
    finalize, pay_to_anchor, sign_key_path, spend_psbt, CompiledPolicy, FundingInput, GraphRole,
    GraphSignatures, OneTimeKey, PresignedTx, RangedDescriptors, SignedGraph, SpendInput, UnsignedGraph,
    VaultDescriptors, VaultPlan, ANCHOR_SAT, GRAPH_TX_VERSION,
};
