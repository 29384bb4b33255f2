//! A vault spend as a resumable state machine: the request to the co-signer (the owner's
//! signature on the spend of U's output), the guardians' approvals when the policy needs
//! them, the unvault broadcast, DELAY blocks of waiting while the towers watch, then the
//! co-signer's signature and the broadcast. Every step is recorded in the wallet's state
//! before it is taken, so a restart picks up where it stopped; asking again is harmless (the
//! co-signer answers a repeated request with the same id).

use base64::Engine;
use vigil_chain::ChainBackend;
use vigil_cosigner::wire::{SignSpend, SignedSpend, SpendRequest, SpendStatus};
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::{Address, Amount, OutPoint, Sequence, Transaction, TxOut};
use vigil_policy::{spend_psbt, SpendInput};

use crate::cosigner::ClientError;
use crate::session::Session;
use crate::wallet::{PendingSpend, WalletState};

/// The fee a vault spend pays, sat (a one-input, two-output taproot spend at a few sat/vB).
pub const SPEND_FEE_SAT: u64 = 1_000;

/// Why a spend did not start or move on.
#[derive(Debug, thiserror::Error)]
pub enum SpendError {
    /// Bad input: nothing was done.
    #[error("{0}; nothing was done")]
    Refused(String),
    /// The co-signer refused or cannot be reached: nothing changed, ask again later.
    #[error(transparent)]
    Cosigner(#[from] ClientError),
    /// The chain backend failed: nothing changed, ask again later.
    #[error("the node: {0}")]
    Chain(String),
    /// The policy could not build the spend.
    #[error(transparent)]
    Policy(#[from] vigil_policy::PolicyError),
}

fn chain_err(e: vigil_chain::BackendError) -> SpendError {
    SpendError::Chain(e.to_string())
}

/// Where a spend stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The guardians have not all approved yet.
    WaitingForGuardians {
        /// Approvals so far.
        approvals: u32,
        /// How many are needed.
        needed: u32,
    },
    /// Approved; the unvault is broadcast; the spend can be signed from `from_height`
    /// (unknown until the unvault confirms).
    Waiting {
        /// The first height the co-signer signs at.
        from_height: Option<u32>,
    },
    /// Spent: the transaction is broadcast.
    Done {
        /// Its txid.
        txid: String,
    },
    /// A guardian denied it: final.
    Denied,
    /// It cannot complete (the unvault was cancelled, the approval expired): why.
    Stopped(String),
}

/// Starts a spend of `amount` to `destination` from the smallest confirmed vault that covers
/// it with the fee; the rest goes to a fresh intake address (to be vaulted again).
pub fn start(
    session: &Session,
    state: &mut WalletState,
    destination: &Address,
    amount: Amount,
) -> Result<PendingSpend, SpendError> {
    let compiled = &session.compiled;
    let need = amount.to_sat() + SPEND_FEE_SAT;
    let mut candidates: Vec<_> = state
        .vaults
        .iter()
        .filter(|v| v.confirmed_height.is_some() && !v.unvaulted)
        .filter_map(|v| {
            let unvault: Transaction = deserialize_hex(&v.unvault).ok()?;
            Some((v.clone(), unvault.output[0].clone(), unvault.compute_txid()))
        })
        .filter(|(_, out, _)| out.value.to_sat() >= need)
        .collect();
    candidates.sort_by_key(|(_, out, _)| out.value);
    let Some((vault, unvault_out, unvault_txid)) = candidates.into_iter().next() else {
        return Err(SpendError::Refused(format!(
            "no vault holds {} (with the fee): spend less, or vault more first",
            Amount::from_sat(need)
        )));
    };
    let plan = vault.plan().ok_or_else(|| SpendError::Refused("the vault's record is damaged".into()))?;
    let descriptors = compiled.vault_descriptors(&plan)?;
    let input = SpendInput {
        outpoint: OutPoint { txid: unvault_txid, vout: 0 },
        txout: unvault_out.clone(),
        descriptor: descriptors.unvault,
        sequence: Sequence::from_height(compiled.policy().delays.unvault),
    };
    let mut outputs = vec![TxOut { value: amount, script_pubkey: destination.script_pubkey() }];
    let rest = unvault_out.value.to_sat() - need;
    if rest >= vigil_policy::P2TR_DUST_SAT {
        let change = compiled.intake_descriptor(state.next_intake)?.script_pubkey();
        state.next_intake += 1;
        outputs.push(TxOut { value: Amount::from_sat(rest), script_pubkey: change });
    }
    let mut psbt = spend_psbt(&[input], outputs)?;
    session.keys.sign_vault_psbt(&mut psbt);
    let req = SpendRequest {
        vault_outpoint: vault.outpoint.to_string(),
        psbt: base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
    };
    let status: SpendStatus = session.cosigner.post("/v1/spends", &req)?;
    let spend = PendingSpend {
        id: status.id,
        vault: vault.outpoint,
        destination: destination.to_string(),
        amount_sat: amount.to_sat(),
        stage: status.state.clone(),
        txid: None,
    };
    state.spends.push(spend.clone());
    state.note(format!(
        "spend request {} of {amount} to {destination} from vault {}",
        status.id, vault.outpoint
    ));
    Ok(spend)
}

/// Moves `spend` on as far as it can go now: broadcasts the unvault once approved, and the
/// co-signed spend once DELAY has passed. Records each step in `state` (the caller saves it).
pub fn advance(
    session: &Session,
    state: &mut WalletState,
    chain: &dyn ChainBackend,
    id: u64,
) -> Result<Progress, SpendError> {
    let pos = state
        .spends
        .iter()
        .position(|s| s.id == id)
        .ok_or_else(|| SpendError::Refused(format!("no spend {id}")))?;
    let status: SpendStatus = session.cosigner.get(&format!("/v1/spends/{id}"))?;
    let spend = state.spends[pos].clone();
    match status.state.as_str() {
        "denied" => {
            state.spends[pos].stage = "denied".into();
            return Ok(Progress::Denied);
        }
        "approved" => {}
        _ => {
            return Ok(Progress::WaitingForGuardians {
                approvals: status.approvals,
                needed: status.approvals_needed,
            })
        }
    }
    if spend.stage == "done" {
        return Ok(Progress::Done { txid: spend.txid.unwrap_or_default() });
    }
    let vault = state
        .vaults
        .iter_mut()
        .find(|v| v.outpoint == spend.vault)
        .ok_or_else(|| SpendError::Refused("the vault is not in this wallet".into()))?;
    let unvault: Transaction = deserialize_hex(&vault.unvault)
        .map_err(|_| SpendError::Refused("the vault's record is damaged".into()))?;
    let unvault_txid = unvault.compute_txid();
    if spend.stage != "unvault sent" {
        // Recorded first: a crash after the broadcast sends it again, which is harmless.
        vault.unvaulted = true;
        state.spends[pos].stage = "unvault sent".into();
        state.note(format!("unvault {unvault_txid} of vault {} broadcast", spend.vault));
        if let Err(e) = chain.broadcast(&unvault) {
            tracing::warn!(error = %e, "unvault broadcast (it may be known already)");
        }
    }
    let confirmed = match chain.transaction_info(&unvault_txid).map_err(chain_err)? {
        Some((_, Some(height))) => height,
        _ => {
            let _ = chain.broadcast(&unvault);
            return Ok(Progress::Waiting { from_height: None });
        }
    };
    let from = confirmed + session.compiled.policy().delays.unvault as u32 - 1;
    let tip = chain.tip().map_err(chain_err)?.height;
    if tip < from {
        return Ok(Progress::Waiting { from_height: Some(from) });
    }
    let signed: SignedSpend = match session.cosigner.post(&format!("/v1/spends/{id}/sign"), &SignSpend {}) {
        Ok(s) => s,
        // The co-signer's node may be a block behind this one: not final.
        Err(ClientError::Refused { status: 409, message, .. })
            if message.contains("can be signed from block") || message.contains("not confirmed yet") =>
        {
            return Ok(Progress::Waiting { from_height: Some(from) });
        }
        Err(ClientError::Refused { status: 409, message, .. }) => {
            state.spends[pos].stage = "cancelled".into();
            state.note(format!("spend {id} stopped: {message}"));
            return Ok(Progress::Stopped(message));
        }
        Err(e) => return Err(e.into()),
    };
    let tx: Transaction = deserialize_hex(&signed.tx)
        .map_err(|_| SpendError::Chain("the co-signer's transaction does not parse".into()))?;
    let txid = tx.compute_txid().to_string();
    state.spends[pos].txid = Some(txid.clone());
    state.spends[pos].stage = "done".into();
    state.note(format!("spend {id} broadcast: {txid}"));
    chain.broadcast(&tx).map_err(chain_err)?;
    Ok(Progress::Done { txid })
}
