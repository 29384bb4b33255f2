//! The owner's half of a vault ceremony with a co-signer (DESIGN.md §4): a fresh one-time
//! key, the co-signer's half of the graph checked against the graph rebuilt here, the owner's
//! signatures and the funding signature handed over; the co-signer registers the vault with
//! every tower and only then releases the funding, which the owner broadcasts last.

use std::str::FromStr;

use base64::Engine;
use vigil_cosigner::wire::{self, BeginVault, Coin, CompleteVault};
use vigil_policy::bitcoin::bip32::Xpub;
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction};
use vigil_policy::{
    ChangeTo, CompiledPolicy, FundingInput, GraphSignatures, OneTimeKey, PolicyError, VaultKind, VaultPlan,
};

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
    /// A funding signed elsewhere is not the one prepared, or lacks the owner's signatures.
    #[error("{0}")]
    SignedElsewhere(String),
}

/// One vault to make: which coins, how much, which kind.
#[derive(Debug, Clone)]
pub struct VaultOrder<'a> {
    /// The household's policy, as it applies now.
    pub compiled: &'a CompiledPolicy,
    /// Its earlier versions: coins paid to their intake addresses fund the vault too.
    pub earlier: &'a [&'a CompiledPolicy],
    /// Intake coins funding it.
    pub coins: &'a [FundingInput],
    /// The vault's index (each used once; the first coin's intake index by convention).
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

/// The first half: a fresh one-time key for the owner, and the co-signer's half.
pub fn begin(
    co: &CosignerClient,
    order: &VaultOrder<'_>,
) -> Result<(OneTimeKey, wire::VaultBegun), VaultingError> {
    let network = order.compiled.policy().network;
    let owner_once = OneTimeKey::for_vault(network.into(), order.index)?;
    let req = BeginVault {
        index: order.index,
        amount_sat: order.amount.to_sat(),
        kind: order.kind.name().into(),
        owner_once: owner_once.public().to_string(),
        owner_once_xpub: owner_once.xpub().map(|x| x.to_string()),
        coins: order
            .coins
            .iter()
            .map(|c| Coin {
                outpoint: c.outpoint.to_string(),
                intake_index: c.intake_index,
                change: c.change,
            })
            .collect(),
        change_index: order.change.index,
        change_branch: order.change.change_branch,
        funding_sat_per_vb: order.funding_sat_per_vb,
    };
    let begun = co.post("/v1/vaults", &req)?;
    Ok((owner_once, begun))
}

/// The owner's half, signed and not yet sent: what to record before sending it, so that an
/// interrupted ceremony can be finished ([`rebuild`]) once the co-signer says it holds it.
pub struct Prepared {
    /// The vault's plan.
    pub plan: VaultPlan,
    /// V.
    pub outpoint: OutPoint,
    /// The owner's one-time key's signatures.
    pub mine: GraphSignatures,
    /// The co-signer's.
    pub theirs: GraphSignatures,
    /// The funding, signed by the owner.
    pub funding: Psbt,
    /// As [`crate::wallet::VaultRecord::once_xpubs`].
    pub once_xpubs: Option<[String; 2]>,
}

/// Signatures of `signer` from hex (recorded, or on the wire).
pub fn signatures_from_hex(signer: XOnlyPublicKey, hex: &[String]) -> Result<GraphSignatures, VaultingError> {
    let signatures = hex
        .iter()
        .map(|s| {
            <[u8; 64]>::from_hex(s)
                .ok()
                .and_then(|b| schnorr::Signature::from_slice(&b).ok())
                .ok_or_else(|| VaultingError::Mismatch("a signature does not parse".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GraphSignatures { signer, signatures })
}

/// Signatures as hex, for the record and the wire.
pub fn signatures_hex(sigs: &GraphSignatures) -> Vec<String> {
    sigs.signatures.iter().map(|s| s.as_ref().to_lower_hex_string()).collect()
}

/// The owner's half: rebuilds the funding and the graph, checks the co-signer's signatures
/// over it, signs with the one-time key (consumed, wiped) and signs the funding with
/// `sign_funding`.
pub fn prepare(
    order: &VaultOrder<'_>,
    owner_once: OneTimeKey,
    begun: &wire::VaultBegun,
    sign_funding: &dyn Fn(&mut Psbt),
) -> Result<Prepared, VaultingError> {
    let mismatch = |what: &str| VaultingError::Mismatch(what.to_owned());
    let cosigner_once = XOnlyPublicKey::from_str(&begun.cosigner_once)
        .map_err(|_| mismatch("its one-time key does not parse"))?;
    // The extended keys a hardware signer registers the unvault output with: the co-signer's
    // must be the one its one-time key comes from, at this vault's index.
    // A format 2 vault without them could be funded and then never spent on the device.
    let once_xpubs = match (owner_once.xpub(), &begun.cosigner_once_xpub) {
        (Some(ours), Some(theirs)) => {
            let xpub =
                Xpub::from_str(theirs).map_err(|_| mismatch("its one-time extended key does not parse"))?;
            if xpub.network != order.compiled.policy().network.into()
                || !vigil_policy::is_vault_child(&xpub, order.index, cosigner_once)
            {
                return Err(mismatch("its one-time key is not its extended key's at this vault's index"));
            }
            Some([ours.to_string(), theirs.clone()])
        }
        _ if order.compiled.policy().format == vigil_policy::PolicyFormat::PerLeaf => {
            return Err(mismatch(
                "it gave no one-time extended key, which a hardware signer needs to spend the vault",
            ))
        }
        _ => None,
    };
    let compiled = order.compiled;
    let plan = compiled.plan(order.index, order.amount, order.kind, owner_once.public(), cosigner_once)?;
    let mut funding = compiled.funding_psbt_from(
        order.earlier,
        &plan,
        order.coins,
        order.change,
        order.funding_sat_per_vb,
    )?;
    let outpoint = OutPoint { txid: funding.unsigned_tx.compute_txid(), vout: 0 };
    if outpoint.to_string() != begun.vault_outpoint {
        return Err(mismatch("it built another funding transaction"));
    }
    let graph = compiled.build_graph(&plan, outpoint)?;
    let theirs = signatures_from_hex(cosigner_once, &begun.signatures)?;
    theirs.verify(&graph).map_err(|e| VaultingError::Mismatch(format!("its graph signatures: {e}")))?;
    let mine = owner_once.sign(&graph)?;
    drop(owner_once);
    sign_funding(&mut funding);
    Ok(Prepared { plan, outpoint, mine, theirs, funding, once_xpubs })
}

/// Takes back the funding `unsigned` (spending `coins`, of `compiled` or its `earlier`
/// versions) signed elsewhere (a hardware signer): it must be that transaction and carry the
/// owner's valid signatures on every input. Only those signatures are kept; whatever else the
/// file holds is dropped.
pub fn take_signed_funding(
    compiled: &CompiledPolicy,
    earlier: &[&CompiledPolicy],
    coins: &[FundingInput],
    unsigned: &Psbt,
    signed: &Psbt,
) -> Result<Psbt, VaultingError> {
    let refused = |m: String| VaultingError::SignedElsewhere(m);
    if signed.unsigned_tx != unsigned.unsigned_tx {
        return Err(refused(format!(
            "the PSBT is not the funding waiting for a signature (its transaction is {}, not {})",
            signed.unsigned_tx.compute_txid(),
            unsigned.unsigned_tx.compute_txid()
        )));
    }
    let mut candidate = unsigned.clone();
    for (ours, theirs) in candidate.inputs.iter_mut().zip(&signed.inputs) {
        ours.tap_script_sigs.clone_from(&theirs.tap_script_sigs);
    }
    let mut funding = unsigned.clone();
    let found = compiled.owner_funding_signatures_from(earlier, coins, &candidate)?;
    for (input, (ours, owner)) in funding.inputs.iter_mut().zip(found).enumerate() {
        if !owner.enough() {
            return Err(refused(format!(
                "input {input} of the PSBT carries {} valid signature(s) of the owner's keys, {} needed \
                 (was it signed by the right device, for this wallet?)",
                owner.valid.len(),
                owner.needed
            )));
        }
        ours.tap_script_sigs.extend(owner.valid);
    }
    Ok(funding)
}

/// Sends the owner's half; the co-signer registers the vault with every tower and releases
/// the funding once all acknowledged. Returns its answer and the vault (its funding the
/// fully signed one once "protected", else the unsigned one).
pub fn finish(
    co: &CosignerClient,
    compiled: &CompiledPolicy,
    prepared: &Prepared,
) -> Result<(wire::VaultStatus, Vault), VaultingError> {
    let req = CompleteVault {
        vault_outpoint: prepared.outpoint.to_string(),
        owner_signatures: signatures_hex(&prepared.mine),
        funding_psbt: base64::engine::general_purpose::STANDARD.encode(prepared.funding.serialize()),
    };
    let status: wire::VaultStatus = co.post("/v1/vaults/complete", &req)?;
    let vault = rebuild(
        compiled,
        &prepared.plan,
        prepared.outpoint,
        &prepared.mine,
        &prepared.theirs,
        &status,
        &prepared.funding.unsigned_tx,
    )?;
    Ok((status, vault))
}

/// The vault from its recorded halves and the co-signer's answer.
pub fn rebuild(
    compiled: &CompiledPolicy,
    plan: &VaultPlan,
    outpoint: OutPoint,
    mine: &GraphSignatures,
    theirs: &GraphSignatures,
    status: &wire::VaultStatus,
    unsigned_funding: &Transaction,
) -> Result<Vault, VaultingError> {
    let mismatch = |what: &str| VaultingError::Mismatch(what.to_owned());
    let signed = compiled.build_graph(plan, outpoint)?.finalize(mine, theirs)?;
    let funding: Transaction = match &status.funding {
        Some(hex) => deserialize_hex(hex).map_err(|_| mismatch("the released funding does not parse"))?,
        None => unsigned_funding.clone(),
    };
    if funding.compute_txid() != outpoint.txid {
        return Err(mismatch("it released another funding transaction"));
    }
    let descriptors = compiled.vault_descriptors(plan)?;
    Ok(Vault { plan: plan.clone(), graph: signed, descriptors, funding })
}

/// Both halves at once: [`prepare`] then [`finish`].
pub fn complete(
    co: &CosignerClient,
    order: &VaultOrder<'_>,
    owner_once: OneTimeKey,
    begun: &wire::VaultBegun,
    sign_funding: &dyn Fn(&mut Psbt),
) -> Result<(wire::VaultStatus, Vault), VaultingError> {
    let prepared = prepare(order, owner_once, begun, sign_funding)?;
    finish(co, order.compiled, &prepared)
}
