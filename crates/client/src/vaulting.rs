//! The owner's half of a vault ceremony with a co-signer (DESIGN.md §4): a fresh one-time
//! key, the co-signer's half of the graph checked against the graph rebuilt here, the owner's
//! signatures and the funding signature handed over; the co-signer registers the vault with
//! every tower and only then releases the funding, which the owner broadcasts last.

use std::str::FromStr;

use base64::Engine;
use vigil_cosigner::wire::{self, BeginVault, Coin, CompleteVault};
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction};
use vigil_policy::{CompiledPolicy, FundingInput, GraphSignatures, OneTimeKey, PolicyError, VaultKind};

use crate::cosigner::{ClientError, CosignerClient};
use crate::Vault;

/// Why a vault was not made.
#[derive(Debug, thiserror::Error)]
pub enum VaultingError {
    /// The co-signer refused or could not be reached.
    #[error(transparent)]
    Cosigner(#[from] ClientError),
    /// The policy cannot build it.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The co-signer answered something that does not match the graph built here: nothing
    /// was signed with it.
    #[error("the co-signer's answer does not match this vault: {0}")]
    Mismatch(String),
}

/// One vault to make: which coins, how much, which kind.
#[derive(Debug, Clone)]
pub struct VaultOrder<'a> {
    /// The household's policy.
    pub compiled: &'a CompiledPolicy,
    /// Intake coins funding it.
    pub coins: &'a [FundingInput],
    /// The vault's index (each used once; the first coin's intake index by convention).
    pub index: u32,
    /// Where the funding's change goes.
    pub change_index: u32,
    /// V's value.
    pub amount: Amount,
    /// Standard or guarded.
    pub kind: VaultKind,
    /// The funding's feerate, sat/vB.
    pub funding_sat_per_vb: u64,
}

fn kind_name(kind: VaultKind) -> &'static str {
    if kind == VaultKind::Guarded {
        "guarded"
    } else {
        "standard"
    }
}

/// The first half: a fresh one-time key for the owner, and the co-signer's half.
pub fn begin(
    co: &CosignerClient,
    order: &VaultOrder<'_>,
) -> Result<(OneTimeKey, wire::VaultBegun), VaultingError> {
    let owner_once = OneTimeKey::generate();
    let req = BeginVault {
        index: order.index,
        amount_sat: order.amount.to_sat(),
        kind: kind_name(order.kind).into(),
        owner_once: owner_once.public().to_string(),
        coins: order
            .coins
            .iter()
            .map(|c| Coin { outpoint: c.outpoint.to_string(), intake_index: c.intake_index })
            .collect(),
        change_index: order.change_index,
        funding_sat_per_vb: order.funding_sat_per_vb,
    };
    let begun = co.post("/v1/vaults", &req)?;
    Ok((owner_once, begun))
}

/// The owner's half: rebuilds the funding and the graph, checks the co-signer's signatures
/// over it, signs with the one-time key (consumed, wiped) and signs the funding with
/// `sign_funding`. Returns the co-signer's answer and the vault; its funding is the fully
/// signed one once the co-signer released it ("protected"), else the unsigned one.
pub fn complete(
    co: &CosignerClient,
    order: &VaultOrder<'_>,
    owner_once: OneTimeKey,
    begun: &wire::VaultBegun,
    sign_funding: &dyn Fn(&mut Psbt),
) -> Result<(wire::VaultStatus, Vault), VaultingError> {
    let mismatch = |what: &str| VaultingError::Mismatch(what.to_owned());
    let cosigner_once = XOnlyPublicKey::from_str(&begun.cosigner_once)
        .map_err(|_| mismatch("its one-time key does not parse"))?;
    let compiled = order.compiled;
    let plan = compiled.plan(order.index, order.amount, order.kind, owner_once.public(), cosigner_once)?;
    let mut funding =
        compiled.funding_psbt(&plan, order.coins, order.change_index, order.funding_sat_per_vb)?;
    let outpoint = OutPoint { txid: funding.unsigned_tx.compute_txid(), vout: 0 };
    if outpoint.to_string() != begun.vault_outpoint {
        return Err(mismatch("it built another funding transaction"));
    }
    let graph = compiled.build_graph(&plan, outpoint)?;
    let signatures = begun
        .signatures
        .iter()
        .map(|s| {
            <[u8; 64]>::from_hex(s)
                .ok()
                .and_then(|b| schnorr::Signature::from_slice(&b).ok())
                .ok_or_else(|| mismatch("a signature does not parse"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let theirs = GraphSignatures { signer: cosigner_once, signatures };
    theirs.verify(&graph).map_err(|e| VaultingError::Mismatch(format!("its graph signatures: {e}")))?;
    let mine = owner_once.sign(&graph)?;
    drop(owner_once);
    sign_funding(&mut funding);
    let req = CompleteVault {
        vault_outpoint: begun.vault_outpoint.clone(),
        owner_signatures: mine.signatures.iter().map(|s| s.as_ref().to_lower_hex_string()).collect(),
        funding_psbt: base64::engine::general_purpose::STANDARD.encode(funding.serialize()),
    };
    let status: wire::VaultStatus = co.post("/v1/vaults/complete", &req)?;
    let signed = graph.finalize(&mine, &theirs)?;
    let funding_tx: Transaction = match &status.funding {
        Some(hex) => deserialize_hex(hex).map_err(|_| mismatch("the released funding does not parse"))?,
        None => funding.unsigned_tx.clone(),
    };
    if funding_tx.compute_txid() != outpoint.txid {
        return Err(mismatch("it released another funding transaction"));
    }
    let descriptors = compiled.vault_descriptors(&plan)?;
    Ok((status, Vault { plan, graph: signed, descriptors, funding: funding_tx }))
}
