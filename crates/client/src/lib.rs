//! The household's side of Vigil: what the owner's client does, as a library the `vigil`
//! command, the test environment and the benchmarks share.
//!
//! Today it holds the vault ceremony ([`Ceremony`], DESIGN.md §4) for a household that holds
//! both one-time keys itself (the demo, tests): fresh one-time keys, the funding PSBT built
//! unsigned (its txid is already fixed), the graph built on that outpoint and signed by both
//! one-time keys, each party's signatures checked, the funding signed, the graph handed to
//! every tower, and only once they all acknowledged are the keys dropped (wiped) and the vault
//! returned. Broadcasting the funding is the caller's last step. With a co-signer, its server
//! runs the co-signer's half (`vigil-cosigner`).

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub use bip39;

pub mod allowance;
pub mod cosigner;
pub mod guardian;
pub mod lift;
pub mod overview;
pub mod owner;
pub mod policies;
pub mod policy_chain;
pub mod recovery;
pub mod session;
pub mod spending;
pub mod towers;
pub mod vaulting;
pub mod wallet;

use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction, TxOut};
use vigil_policy::{
    finalize, ChangeTo, CompiledPolicy, FundingInput, OneTimeKey, PolicyError, SignedGraph, VaultDescriptors,
    VaultKind, VaultPlan,
};

/// What a ceremony needs to know: which vault, from which coins.
#[derive(Debug, Clone)]
pub struct Ceremony<'a> {
    /// The client's compiled policy.
    pub compiled: &'a CompiledPolicy,
    /// Intake coins to fund the vault with.
    pub coins: &'a [FundingInput],
    /// The vault's derivation index (each used once).
    pub index: u32,
    /// Where the funding's change goes.
    pub change: ChangeTo,
    /// V's value.
    pub amount: Amount,
    /// Standard or guarded.
    pub kind: VaultKind,
    /// The funding's feerate, sat/vB.
    pub funding_sat_per_vb: u64,
}

/// A vault the ceremony created.
#[derive(Debug, Clone)]
pub struct Vault {
    /// Its plan (index, amount, kind, one-time public keys).
    pub plan: VaultPlan,
    /// The signed graph (what towers hold).
    pub graph: SignedGraph,
    /// Its outputs' descriptors.
    pub descriptors: VaultDescriptors,
    /// The funding transaction, signed, not yet broadcast.
    pub funding: Transaction,
}

impl Vault {
    /// V.
    pub fn outpoint(&self) -> OutPoint {
        self.graph.graph().vault_outpoint
    }

    /// U's output (what C, UE and the delayed spend consume).
    pub fn unvault_outpoint(&self) -> OutPoint {
        OutPoint { txid: self.graph.unvault().compute_txid(), vout: 0 }
    }

    /// U's output.
    pub fn unvault_txout(&self) -> TxOut {
        self.graph.unvault().output[0].clone()
    }
}

impl Ceremony<'_> {
    /// Runs it with the two one-time keys (consumed); `sign_funding` signs the funding PSBT
    /// with the owner's and the co-signer's keys; `register` hands the vault to every tower
    /// and returns once all acknowledged durably. Only then are the one-time keys wiped and
    /// the vault (with its funding) returned: a refusal leaves nothing that could be funded.
    pub fn run<E>(
        &self,
        owner_once: OneTimeKey,
        cosigner_once: OneTimeKey,
        sign_funding: &mut dyn FnMut(&mut Psbt),
        register: &mut dyn FnMut(&Vault) -> Result<(), E>,
    ) -> Result<Vault, CeremonyError<E>> {
        let compiled = self.compiled;
        let plan =
            compiled.plan(self.index, self.amount, self.kind, owner_once.public(), cosigner_once.public())?;
        let mut psbt = compiled.funding_psbt(&plan, self.coins, self.change, self.funding_sat_per_vb)?;
        let vault_outpoint = OutPoint { txid: psbt.unsigned_tx.compute_txid(), vout: 0 };
        let unsigned = compiled.build_graph(&plan, vault_outpoint)?;
        let owner_sigs = owner_once.sign(&unsigned)?;
        let cosigner_sigs = cosigner_once.sign(&unsigned)?;
        owner_sigs.verify(&unsigned)?;
        cosigner_sigs.verify(&unsigned)?;
        let graph = unsigned.finalize(&owner_sigs, &cosigner_sigs)?;
        sign_funding(&mut psbt);
        let funding = finalize(psbt)?;
        let descriptors = compiled.vault_descriptors(&plan)?;
        let vault = Vault { plan, graph, descriptors, funding };
        register(&vault).map_err(CeremonyError::Tower)?;
        drop(owner_once);
        drop(cosigner_once);
        Ok(vault)
    }
}

/// Why a ceremony stopped.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError<E> {
    /// The policy refused to build or sign it.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A tower did not acknowledge the vault: it is not protected, so not funded.
    #[error("a tower did not acknowledge the vault: {0:?}")]
    Tower(E),
}

/// A ceremony with no tower to wait for (the in-process demo and tests) fails only on policy.
impl From<CeremonyError<std::convert::Infallible>> for PolicyError {
    fn from(e: CeremonyError<std::convert::Infallible>) -> PolicyError {
        match e {
            CeremonyError::Policy(p) => p,
            CeremonyError::Tower(never) => match never {},
        }
    }
}

/// For [`Ceremony::run`] where no tower is involved.
pub fn no_towers(_: &Vault) -> Result<(), std::convert::Infallible> {
    Ok(())
}
