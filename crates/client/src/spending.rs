//! A vault spend as a resumable state machine: the request to the co-signer (the owner's
//! signature on the spend of U's output), the guardians' approvals when the policy needs
//! them, the unvault broadcast, DELAY blocks of waiting while the towers watch, then the
//! co-signer's signature and the broadcast, repeated until it confirms. Every step is
//! recorded in the wallet's state before it is taken (the caller saves it), so a restart
//! picks up where it stopped: a request whose answer was lost is sent again unchanged, and
//! the co-signer answers it with the same id.

use base64::Engine;
use vigil_chain::ChainBackend;
use vigil_cosigner::wire::{SignSpend, SignedSpend, SpendRequest, SpendStatus};
use vigil_policy::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use vigil_policy::bitcoin::{Address, Amount, OutPoint, Sequence, Transaction, TxOut};
use vigil_policy::{spend_psbt, SpendInput};

use crate::cosigner::ClientError;
use crate::owner::VaultKey;
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
    /// The co-signer refused or cannot be reached: the step is retried next time.
    #[error(transparent)]
    Cosigner(#[from] ClientError),
    /// The chain backend failed: the step is retried next time.
    #[error("the node: {0}")]
    Chain(String),
    /// The policy could not build the spend.
    #[error(transparent)]
    Policy(#[from] vigil_policy::PolicyError),
    /// The wallet's records cannot be used.
    #[error(transparent)]
    Wallet(#[from] crate::wallet::WalletError),
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
    /// Approved, but these towers have not acknowledged the approval yet: a tower that sees
    /// the unvault first cancels it. The unvault is sent once they have, or at `send_anyway_at`.
    WaitingForTowers {
        /// The towers it waits for.
        towers: Vec<String>,
        /// The height it is sent at all the same.
        send_anyway_at: u32,
    },
    /// Approved, but a lockdown holds until `until`: sent now, the unvault would be cancelled
    /// back into custody. It waits; the approval may run out meanwhile (then ask again).
    LockedDown {
        /// The block the lockdown ends at.
        until: u32,
    },
    /// Approved; the unvault is broadcast; the spend can be signed from `from_height`
    /// (unknown until the unvault confirms).
    Waiting {
        /// The first height the co-signer signs at.
        from_height: Option<u32>,
    },
    /// The payment is broadcast, not yet confirmed.
    Sent {
        /// Its txid.
        txid: String,
    },
    /// The payment confirmed.
    Done {
        /// Its txid.
        txid: String,
    },
    /// The PSBT waits for the owner's signature from elsewhere (`take_signed`).
    Unsigned,
    /// A guardian denied it: final.
    Denied,
    /// It cannot complete (the unvault was cancelled, the approval expired): why.
    Stopped(String),
}

impl Progress {
    /// Where the spend stands, in words, at height `tip`.
    pub fn describe(&self, tip: u32) -> String {
        match self {
            Progress::WaitingForGuardians { approvals, needed } => {
                format!("waiting for your guardians: {approvals} of {needed} approved")
            }
            Progress::WaitingForTowers { towers, send_anyway_at } => format!(
                "approved; waiting for watchtower {} to take the approval before the coins unlock \
                 (they unlock without it from block {send_anyway_at}, now {tip})",
                towers.join(", ")
            ),
            Progress::LockedDown { until } => format!(
                "approved, but the wallet is locked down until block {until} (now {tip}): the coins stay in \
                 their vault, since the watchtowers would cancel their unlocking meanwhile"
            ),
            Progress::Waiting { from_height: Some(h) } => format!(
                "approved; the coins are unlocking: spendable from block {h}, in about {} blocks (now {tip})",
                h.saturating_sub(tip)
            ),
            Progress::Waiting { from_height: None } => {
                "approved; the unlocking transaction is on its way to a block".into()
            }
            Progress::Sent { txid } => format!("sent: transaction {txid}, waiting for a block"),
            Progress::Done { txid } => format!("done: transaction {txid} confirmed"),
            Progress::Unsigned => {
                "waiting for your signature: sign its PSBT, then `vigil spend --signed FILE`".into()
            }
            Progress::Denied => "a guardian denied this spend".into(),
            Progress::Stopped(why) => format!("stopped: {why}"),
        }
    }

    /// Whether waiting longer changes nothing by itself (sent, done, denied, stopped, or
    /// waiting for a signature from elsewhere).
    pub fn finished(&self) -> bool {
        matches!(
            self,
            Progress::Sent { .. }
                | Progress::Done { .. }
                | Progress::Denied
                | Progress::Stopped(_)
                | Progress::Unsigned
        )
    }
}

/// Builds a spend of `amount` to `destination` from the smallest confirmed vault that
/// covers it with the fee and has no spend under way (the rest goes to a fresh intake
/// address, to be vaulted again), signs it with the owner's vault key and records it as
/// "requesting". Returns its position in `state.spends`; send it with [`request`].
pub fn prepare(
    session: &Session,
    state: &mut WalletState,
    vault_key: Option<&VaultKey>,
    destination: &Address,
    amount: Amount,
) -> Result<usize, SpendError> {
    let dust = destination.script_pubkey().minimal_non_dust();
    if amount < dust {
        return Err(SpendError::Refused(format!(
            "{amount} is below what the network relays to that address ({dust})"
        )));
    }
    let need = amount.to_sat() + SPEND_FEE_SAT;
    let busy: Vec<OutPoint> = state.spends.iter().filter(|s| s.active()).map(|s| s.vault).collect();
    let mut candidates: Vec<_> = state
        .vaults
        .iter()
        .filter(|v| v.confirmed_height.is_some() && !v.unvaulted && !busy.contains(&v.outpoint))
        .filter_map(|v| {
            let unvault: Transaction = deserialize_hex(&v.unvault).ok()?;
            Some((v.clone(), unvault.output[0].clone(), unvault.compute_txid()))
        })
        .filter(|(_, out, _)| out.value.to_sat() >= need)
        .collect();
    candidates.sort_by_key(|(_, out, _)| out.value);
    let Some((vault, unvault_out, unvault_txid)) = candidates.into_iter().next() else {
        return Err(SpendError::Refused(format!(
            "no vault holds {} (with the fee) and is free: spend less, or vault more first",
            Amount::from_sat(need)
        )));
    };
    let plan = vault.plan().ok_or_else(|| SpendError::Refused("the vault's record is damaged".into()))?;
    // The vault's own version's scripts and DELAY; the change goes to an address of today's.
    let compiled = session.policies.version(vault.policy_version)?;
    let descriptors = compiled.vault_descriptors(&plan)?;
    let input = SpendInput {
        outpoint: OutPoint { txid: unvault_txid, vout: 0 },
        txout: unvault_out.clone(),
        descriptor: descriptors.unvault,
        sequence: Sequence::from_height(compiled.policy().delays.unvault),
    };
    let mut outputs = vec![TxOut { value: amount, script_pubkey: destination.script_pubkey() }];
    // Change below the dust limit is left to the fee.
    let rest = unvault_out.value.to_sat() - need;
    if rest >= vigil_policy::P2TR_DUST_SAT {
        let change = session.current().intake_descriptor(state.next_intake)?.script_pubkey();
        state.next_intake += 1;
        outputs.push(TxOut { value: Amount::from_sat(rest), script_pubkey: change });
    }
    let mut psbt = spend_psbt(&[input], outputs)?;
    // Without the key here, the PSBT waits for a signer elsewhere (`take_signed`).
    let stage = match vault_key {
        Some(key) => {
            key.sign_psbt(&mut psbt);
            "requesting"
        }
        None => "unsigned",
    };
    state.spends.push(PendingSpend {
        id: 0,
        vault: vault.outpoint,
        destination: destination.to_string(),
        amount_sat: amount.to_sat(),
        psbt: base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
        stage: stage.into(),
        tx: None,
        towers_awaited_since: None,
    });
    Ok(state.spends.len() - 1)
}

/// Takes back a spend PSBT signed elsewhere (a hardware signer): it must be the unsigned
/// spend recorded (same transaction) and carry the owner's valid signatures on the spend
/// leaf; then the spend is "requesting". Returns its position.
pub fn take_signed(
    session: &Session,
    state: &mut WalletState,
    signed: &vigil_policy::bitcoin::psbt::Psbt,
) -> Result<usize, SpendError> {
    use vigil_policy::bitcoin::psbt::Psbt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let txid = signed.unsigned_tx.compute_txid();
    let pos = state
        .spends
        .iter()
        .position(|s| {
            s.stage == "unsigned"
                && b64
                    .decode(&s.psbt)
                    .ok()
                    .and_then(|b| Psbt::deserialize(&b).ok())
                    .map(|p| p.unsigned_tx.compute_txid())
                    == Some(txid)
        })
        .ok_or_else(|| {
            SpendError::Refused(format!("no spend waiting for a signature has this transaction ({txid})"))
        })?;
    let record = state
        .vaults
        .iter()
        .find(|v| v.outpoint == state.spends[pos].vault)
        .ok_or_else(|| SpendError::Refused("the vault is not in this wallet".into()))?;
    let vault = record.plan().ok_or_else(|| SpendError::Refused("the vault's record is damaged".into()))?;
    let compiled = session.policies.version(record.policy_version)?;
    let mut ours = Psbt::deserialize(&b64.decode(&state.spends[pos].psbt).map_err(|_| damaged())?)
        .map_err(|_| damaged())?;
    let mut candidate = ours.clone();
    candidate.inputs[0].tap_script_sigs.clone_from(&signed.inputs[0].tap_script_sigs);
    // Only the owner's valid signatures on the spend leaf are kept; anything else the device
    // or the file added is dropped.
    let owner = compiled.owner_spend_signatures(&vault, &candidate, 0)?;
    if !owner.enough() {
        return Err(SpendError::Refused(format!(
            "the PSBT carries {} valid signature(s) of the owner's keys on the spend, {} needed \
             (was it signed by the right device, for this wallet?)",
            owner.valid.len(),
            owner.needed
        )));
    }
    ours.inputs[0].tap_script_sigs.extend(owner.valid);
    state.spends[pos].psbt = b64.encode(ours.serialize());
    state.spends[pos].stage = "requesting".into();
    Ok(pos)
}

fn damaged() -> SpendError {
    SpendError::Refused("the spend's record is damaged".into())
}

/// Sends the recorded request at `pos` (again, unchanged, if its answer was lost).
pub fn request(session: &Session, state: &mut WalletState, pos: usize) -> Result<u64, SpendError> {
    let spend = &state.spends[pos];
    let req = SpendRequest { vault_outpoint: spend.vault.to_string(), psbt: spend.psbt.clone() };
    let status: SpendStatus = session.cosigner.post("/v1/spends", &req)?;
    let spend = &mut state.spends[pos];
    spend.id = status.id;
    spend.stage = status.state.clone();
    let what = format!(
        "spend request {} of {} to {} from vault {}",
        status.id,
        Amount::from_sat(spend.amount_sat),
        spend.destination,
        spend.vault
    );
    state.note(what);
    Ok(status.id)
}

/// Blocks before an approval's expiry from which its unvault is not sent: every tower must
/// see it by the expiry (a tower's node may be a block ahead of ours), and the co-signer signs
/// only if it confirms by then.
const SEND_MARGIN: u32 = 3;
// The co-signer refuses an expiry that leaves no block to send in.
const _: () = assert!(SEND_MARGIN < vigil_cosigner::config::MIN_APPROVAL_EXPIRY_BLOCKS);

/// Blocks an approved unvault waits for a tower that has not acknowledged the approval (about
/// an hour). A tower restarting or briefly unreachable has it by then: the co-signer pushes it
/// until it acknowledges, and a tower that saw the unvault first would cancel it. One down
/// longer must not keep the owner from their coins for good; sent without it, the unvault is
/// still watched by the others, and cancelled only if that tower comes back before the push
/// reaches it.
const TOWER_WAIT_BLOCKS: u32 = 6;

/// The end of a lockdown holding at `tip` that a tower shows (the latest), or, when no tower
/// answers, the one this wallet set (a tower's counts a lift the guardians signed).
fn locked_until(session: &Session, state: &WalletState, tip: u32) -> Option<u32> {
    let views = session.tower_views();
    let answered: Vec<_> = views.iter().filter_map(|(_, v)| v.as_ref().ok()).collect();
    let shown =
        if answered.is_empty() { state.lockdown_until } else { crate::towers::shown_lockdown(answered) };
    shown.filter(|h| *h > tip)
}

/// Moves the spend at `pos` on as far as it can go now. Records each step in `state`.
pub fn advance(
    session: &Session,
    state: &mut WalletState,
    chain: &dyn ChainBackend,
    pos: usize,
) -> Result<Progress, SpendError> {
    let again = state.spends[pos].stage == "asking again";
    if again || state.spends[pos].stage == "requesting" {
        match request(session, state, pos) {
            // Asked again, and another request holds the vault: this spend is over.
            Err(SpendError::Cosigner(ClientError::Refused { status: 409, message, .. })) if again => {
                return Ok(cancelled(state, pos, message));
            }
            // The co-signer refused the request itself (over the velocity budget, a lockdown,
            // another request holding the vault): it is over, said as an error; sent again by
            // every `--resume`, it would hold up the spends after it. Asking again is a new
            // request.
            Err(SpendError::Cosigner(ClientError::Refused { status, message, url }))
                if (400..500).contains(&status) && status != 401 && !message.contains("try again") =>
            {
                cancelled(state, pos, message.clone());
                return Err(SpendError::Cosigner(ClientError::Refused { status, message, url }));
            }
            other => {
                other?;
            }
        }
    }
    let spend = state.spends[pos].clone();
    match spend.stage.as_str() {
        "unsigned" => return Ok(Progress::Unsigned),
        "signed" | "sent" | "done" => return payment(state, chain, pos),
        "denied" => return Ok(Progress::Denied),
        "cancelled" => return Ok(Progress::Stopped("the spend was cancelled".into())),
        "expired" => return Ok(Progress::Stopped("its approval expired: ask for the spend again".into())),
        _ => {}
    }
    let vault_pos = state
        .vaults
        .iter()
        .position(|v| v.outpoint == spend.vault)
        .ok_or_else(|| SpendError::Refused("the vault is not in this wallet".into()))?;
    let unvault: Transaction = deserialize_hex(&state.vaults[vault_pos].unvault)
        .map_err(|_| SpendError::Refused("the vault's record is damaged".into()))?;
    let unvault_txid = unvault.compute_txid();
    // Whether the unvault never went out: the vault's output unspent, counting the mempool.
    let in_vault = || Ok::<_, SpendError>(chain.unspent_output(&spend.vault).map_err(chain_err)?.is_some());
    let id = spend.id;
    let status: SpendStatus = session.cosigner.get(&format!("/v1/spends/{id}"))?;
    match status.state.as_str() {
        "denied" => {
            state.spends[pos].stage = "denied".into();
            return Ok(Progress::Denied);
        }
        "expired" if in_vault()? => {
            let when = if status.approvals < status.approvals_needed {
                "before the guardians' quorum"
            } else {
                "unused"
            };
            return Ok(expired(state, pos, when, &status));
        }
        // Its unvault out: only the same spend asked again completes it, while the
        // unvault's output is there to spend.
        "expired" => {
            let unvault_out = OutPoint { txid: unvault_txid, vout: 0 };
            if chain.unspent_output(&unvault_out).map_err(chain_err)?.is_none() {
                return Ok(cancelled(
                    state,
                    pos,
                    format!("the unvault's output {unvault_out} is spent already"),
                ));
            }
            return Ok(ask_again(state, pos, "its request expired"));
        }
        "approved" => {}
        _ => {
            return Ok(Progress::WaitingForGuardians {
                approvals: status.approvals,
                needed: status.approvals_needed,
            })
        }
    }
    // Sent now, the unvault would be seen or confirmed after the approval's expiry: the
    // towers would cancel it and the co-signer would sign no spend of it. The vault stays
    // put, free to ask again. Not if the unvault is out already (sent by a run killed before
    // it saved its stage, or by another device): then the spend goes on.
    let tip = chain.tip().map_err(chain_err)?.height;
    if tip + SEND_MARGIN >= status.approval.expiry_height && in_vault()? {
        return Ok(expired(state, pos, "before its unvault was sent", &status));
    }
    // A lockdown the owner may know of (its own, or one a tower shows: a guardian's) holds:
    // the towers would cancel the unvault at once, its coins then waiting for the recovery
    // path. A quiet one is never shown, and then nothing differs.
    if spend.stage != "unvault sent" {
        if let Some(until) = locked_until(session, state, tip) {
            if in_vault()? {
                return Ok(Progress::LockedDown { until });
            }
        }
    }
    let missing: Vec<String> =
        status.towers.iter().filter(|t| !t.acknowledged).map(|t| t.name.clone()).collect();
    if spend.stage != "unvault sent" && !missing.is_empty() {
        let since = *state.spends[pos].towers_awaited_since.get_or_insert(tip);
        // The last block it can be sent at before its approval runs out, or the wait is over.
        let send_anyway_at = (since + TOWER_WAIT_BLOCKS).min(status.approval.expiry_height - SEND_MARGIN - 1);
        if tip < send_anyway_at && in_vault()? {
            return Ok(Progress::WaitingForTowers { towers: missing, send_anyway_at });
        }
        tracing::warn!(spend = id, towers = ?missing, "unvault sent although these towers have not acknowledged its approval");
        state.note(format!(
            "spend {id}: unvault sent without the acknowledgement of watchtower {} (waited since block {since})",
            missing.join(", ")
        ));
    }
    let vault = &mut state.vaults[vault_pos];
    let delay = session.policies.version(vault.policy_version)?.policy().delays.unvault;
    if spend.stage != "unvault sent" {
        // Recorded first: a crash after the broadcast sends it again, which is harmless.
        vault.unvaulted = true;
        state.spends[pos].stage = "unvault sent".into();
        state.note(format!("unvault {unvault_txid} of vault {} broadcast", spend.vault));
    }
    let confirmed = match chain.transaction_info(&unvault_txid).map_err(chain_err)? {
        Some((_, Some(height))) => height,
        _ => {
            if let Err(e) = chain.broadcast(&unvault) {
                tracing::warn!(error = %e, "unvault broadcast (it may be known already)");
            }
            return Ok(Progress::Waiting { from_height: None });
        }
    };
    let from = confirmed + delay as u32 - 1;
    let tip = chain.tip().map_err(chain_err)?.height;
    if tip < from {
        return Ok(Progress::Waiting { from_height: Some(from) });
    }
    let signed: SignedSpend = match session.cosigner.post(&format!("/v1/spends/{id}/sign"), &SignSpend {}) {
        Ok(s) => s,
        // The co-signer's node may be a block behind this one, or the request changed while
        // it signed: not final.
        Err(ClientError::Refused { status: 409, message, .. })
            if message.contains("can be signed from block")
                || message.contains("not confirmed yet")
                || message.contains("try again") =>
        {
            return Ok(Progress::Waiting { from_height: Some(from) });
        }
        // Its unvault was slow to confirm: the approval no longer covers it, a new request of
        // the same spend does (the co-signer frees the vault a few blocks past the expiry).
        Err(ClientError::Refused { status: 409, message, .. })
            if message.contains("after the approval expired") =>
        {
            return Ok(ask_again(state, pos, &message));
        }
        Err(ClientError::Refused { status: 409, message, .. }) => return Ok(cancelled(state, pos, message)),
        Err(e) => return Err(e.into()),
    };
    let tx: Transaction = deserialize_hex(&signed.tx)
        .map_err(|_| SpendError::Chain("the co-signer's transaction does not parse".into()))?;
    // Kept before it is broadcast: it is sent again until it confirms.
    state.spends[pos].tx = Some(serialize_hex(&tx));
    state.spends[pos].stage = "signed".into();
    state.note(format!("spend {id} co-signed: {}", tx.compute_txid()));
    payment(state, chain, pos)
}

/// Ends the spend at `pos`, whose approval expired `when`.
fn expired(state: &mut WalletState, pos: usize, when: &str, status: &SpendStatus) -> Progress {
    let why = format!(
        "spend request {} expired at block {} {when}: ask for the spend again",
        status.id, status.approval.expiry_height
    );
    state.spends[pos].stage = "expired".into();
    // Its unvault never went out: the vault can be spent again.
    let vault = state.spends[pos].vault;
    state.vaults.iter_mut().filter(|v| v.outpoint == vault).for_each(|v| v.unvaulted = false);
    state.note(why.clone());
    Progress::Stopped(why)
}

/// Ends the spend at `pos`, for `why`.
fn cancelled(state: &mut WalletState, pos: usize, why: String) -> Progress {
    state.spends[pos].stage = "cancelled".into();
    state.note(format!("spend {} stopped: {why}", state.spends[pos].id));
    Progress::Stopped(why)
}

/// Sends the spend at `pos` again, the same PSBT, at the next step: its approval can no
/// longer be used, and its unvault is out.
fn ask_again(state: &mut WalletState, pos: usize, why: &str) -> Progress {
    state.spends[pos].stage = "asking again".into();
    state.note(format!("spend {}: {why}; asked for again", state.spends[pos].id));
    Progress::Waiting { from_height: None }
}

/// The co-signed payment: broadcast (again) until it confirms.
fn payment(state: &mut WalletState, chain: &dyn ChainBackend, pos: usize) -> Result<Progress, SpendError> {
    let hex = state.spends[pos]
        .tx
        .clone()
        .ok_or_else(|| SpendError::Refused("the payment is not recorded".into()))?;
    let tx: Transaction =
        deserialize_hex(&hex).map_err(|_| SpendError::Refused("the payment's record is damaged".into()))?;
    let txid = tx.compute_txid();
    if let Some((_, Some(_))) = chain.transaction_info(&txid).map_err(chain_err)? {
        if state.spends[pos].stage != "done" {
            state.spends[pos].stage = "done".into();
            state.note(format!("spend {} confirmed: {txid}", state.spends[pos].id));
        }
        return Ok(Progress::Done { txid: txid.to_string() });
    }
    match chain.broadcast(&tx) {
        Ok(_) => {
            state.spends[pos].stage = "sent".into();
            Ok(Progress::Sent { txid: txid.to_string() })
        }
        // Already in the mempool: sent.
        Err(_) if state.spends[pos].stage == "sent" => Ok(Progress::Sent { txid: txid.to_string() }),
        Err(e) => Err(chain_err(e)),
    }
}
