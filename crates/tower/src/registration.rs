//! Registration: what the tower checks before it takes a vault (or an approval of a vault's
//! spend) into its care. Every refusal names the problem, and stores nothing.
//!
//! A vault is taken only when:
//! - the signer is the owner or the co-signer of the client it names;
//! - every transaction is the one the client's pinned policy builds for the vault's
//!   parameters (so a cancel paying anywhere but the vault's recovery output is refused),
//!   signed with SIGHASH_DEFAULT only (any other type would let someone change it), and valid
//!   by Bitcoin Core's script verification;
//! - V is real: on chain or in the mempool paying exactly the graph's output, or created by a
//!   fully signed funding transaction from coins that exist now;
//! - its index is new for the client, and the client has room under the tower's cap.
//!
//! What already happened to the vault (its unvault confirmed before this tower watched it)
//! is acted on at once. An approval is checked against the vault's own client: its signer,
//! its co-signer and guardians, its pinned version.

use std::str::FromStr;
use std::sync::MutexGuard;

use vigil_policy::bitcoin::consensus::deserialize;
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{schnorr, Message};
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid};
use vigil_policy::{PresignedTx, VaultKind};

use crate::client::Client;
use crate::daemon::{Tower, TowerState};
use crate::error::Refusal;
use crate::store::{NonceCheck, Registered, StoredApproval};
use crate::vault::{ApprovalTerms, Vault, VaultState};
use crate::wire::{ack_digest, Ack, KeySignature, RegisterApproval, RegisterVault};

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::BadRequest(message.into())
}

/// The tower's signed acknowledgement of `subject`.
pub(crate) fn ack(tower: &Tower, subject: String) -> Ack {
    let sig = vigil_policy::secp().sign_schnorr(&ack_digest(&tower.public_key(), &subject), &tower.key);
    Ack { subject, tower_key: tower.public_key().to_string(), signature: sig.as_ref().to_lower_hex_string() }
}

/// The client `id`, or a 404 naming it.
pub(crate) fn client(tower: &Tower, id: &str) -> Result<std::sync::Arc<Client>, Refusal> {
    tower
        .client(id)
        .ok_or_else(|| Refusal::NotFound(format!("unknown client {id}: this tower does not serve it")))
}

/// The refusal of a nonce that is not above the last one, or too far above it.
pub(crate) fn stale_nonce(nonce: u64, last: Option<u64>) -> Refusal {
    Refusal::Conflict(match last {
        Some(last) => format!(
            "replayed request: nonce {nonce} must be above the last one from this key ({last}) and at most {} above it",
            crate::store::MAX_NONCE_STEP
        ),
        None => format!("nonce {nonce}: a key's first nonce is at most {}", crate::store::MAX_NONCE_STEP),
    })
}

/// The keys of `signatures`, each of which must verify over `digest`.
pub fn verified_signers(
    signatures: &[KeySignature],
    digest: &Message,
) -> Result<Vec<XOnlyPublicKey>, Refusal> {
    let secp = vigil_policy::secp();
    signatures
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = XOnlyPublicKey::from_str(&s.key)
                .map_err(|_| bad(format!("signatures[{i}].key: not an x-only key")))?;
            let sig = <[u8; 64]>::from_hex(&s.signature)
                .ok()
                .and_then(|b| schnorr::Signature::from_slice(&b).ok())
                .ok_or_else(|| bad(format!("signatures[{i}].signature: not a 64-byte hex signature")))?;
            secp.verify_schnorr(&sig, digest, &key)
                .map_err(|_| bad(format!("signatures[{i}] does not verify")))?;
            Ok(key)
        })
        .collect()
}

fn decode_tx(field: &str, hex: &str) -> Result<Transaction, Refusal> {
    let bytes = Vec::<u8>::from_hex(hex).map_err(|_| bad(format!("{field}: not hex")))?;
    deserialize(&bytes).map_err(|e| bad(format!("{field}: not a transaction: {e}")))
}

/// Only SIGHASH_DEFAULT (64-byte) signatures: a one-time-key spend's witness is its
/// signatures, then the leaf script and the control block. Any other sighash type (65 bytes)
/// would let someone change the transaction after the keys are gone.
fn default_sighash_only(tx: &Transaction) -> bool {
    tx.input.iter().all(|input| {
        let items: Vec<&[u8]> = input.witness.iter().collect();
        items.len() > 2 && items[..items.len() - 2].iter().all(|sig| sig.len() == 64)
    })
}

/// A vault's transactions, rebuilt from the client's policy, compared and verified (no state
/// involved); with V's expected output.
pub fn checked_vault(client: &Client, req: &RegisterVault) -> Result<(Vault, TxOut), Refusal> {
    checked_vault_waiting(client, None, req)
}

/// [`checked_vault`], also under `waiting`, the text of a change the tower accepted and
/// applies within a few blocks (the co-signer applies it by its own tip, which may be a block
/// or two ahead of this tower's).
pub fn checked_vault_waiting(
    client: &Client,
    waiting: Option<&str>,
    req: &RegisterVault,
) -> Result<(Vault, TxOut), Refusal> {
    let p = &req.vault;
    let kind = VaultKind::from_name(&p.kind)
        .ok_or_else(|| bad(format!("vault.kind: {:?} is neither \"standard\" nor \"guarded\"", p.kind)))?;
    let key = |field: &str, s: &str| {
        XOnlyPublicKey::from_str(s).map_err(|_| bad(format!("vault.{field}: not an x-only public key")))
    };
    let outpoint =
        OutPoint::from_str(&p.vault_outpoint).map_err(|_| bad("vault.vault_outpoint: expected txid:vout"))?;
    let from_waiting;
    let compiled = match req.policy_version {
        None => &client.compiled,
        Some(v) => match client.version(v) {
            Some(held) => held,
            None => {
                from_waiting = waiting
                    .and_then(|text| vigil_policy::Policy::from_toml(text).ok())
                    .filter(|p| p.version == v)
                    .and_then(|p| vigil_policy::CompiledPolicy::new(p).ok());
                from_waiting.as_ref().ok_or_else(|| {
                    bad(format!(
                        "policy_version: {v} is not a version this tower holds of the client (it holds {})",
                        client
                            .versions()
                            .map(|c| c.policy().version.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?
            }
        },
    };
    let plan = compiled
        .plan(
            p.index,
            Amount::from_sat(p.amount_sat),
            kind,
            key("owner_once", &p.owner_once)?,
            key("cosigner_once", &p.cosigner_once)?,
        )
        .map_err(|e| bad(format!("vault: {e}")))?;
    let graph = compiled.build_graph(&plan, outpoint).map_err(|e| bad(format!("vault: {e}")))?;

    // Same transactions as the graph rebuilt from the pinned policy, and fully signed.
    let given = |field: &str,
                 list: &[String],
                 expected: &[PresignedTx]|
     -> Result<Vec<Transaction>, Refusal> {
        if list.len() != expected.len() {
            return Err(bad(format!(
                "{field}: {} transactions given, the graph has {}",
                list.len(),
                expected.len()
            )));
        }
        list.iter()
            .zip(expected)
            .enumerate()
            .map(|(i, (hex, exp))| {
                let name = format!("{field}[{i}]");
                let tx = decode_tx(&name, hex)?;
                if tx.compute_txid() != exp.tx.compute_txid() {
                    return Err(bad(format!(
                        "{name} is not the transaction the pinned policy builds for this vault (it spends or pays something else)"
                    )));
                }
                vigil_regtest::kernel::verify_inputs(&tx, std::slice::from_ref(&exp.prevout)).map_err(|e| {
                    bad(format!("{name} is not fully signed: Bitcoin Core's script verification fails ({e})"))
                })?;
                if !default_sighash_only(&tx) {
                    return Err(bad(format!(
                        "{name} carries a signature with a sighash type other than DEFAULT: anyone could change it"
                    )));
                }
                Ok(tx)
            })
            .collect()
    };
    let unvault =
        given("unvault", std::slice::from_ref(&req.unvault), std::slice::from_ref(&graph.unvault))?.remove(0);
    let cancels = given("cancels", &req.cancels, &graph.cancels)?;
    let emergencies = given("emergencies", &req.emergencies, &graph.emergencies)?;
    let unvault_emergencies =
        given("unvault_emergencies", &req.unvault_emergencies, &graph.unvault_emergencies)?;
    let vault = Vault {
        outpoint,
        policy_id: client.id.clone(),
        index: p.index,
        amount: plan.amount,
        guarded: kind == VaultKind::Guarded,
        vault_script: graph.vault_txout.script_pubkey.clone(),
        delay: compiled.policy().delays.unvault,
        unvault,
        cancels,
        emergencies,
        unvault_emergencies,
        state: VaultState::default(),
    };
    Ok((vault, graph.vault_txout.clone()))
}

/// Checks that V is real, and returns what already happened to it (its unvault, and what
/// spends the unvault's output), oldest first, each with its confirmation height.
fn on_chain(
    tower: &Tower,
    vault: &Vault,
    expected: &TxOut,
    funding: Option<&str>,
) -> Result<Vec<(Transaction, Option<u32>)>, Refusal> {
    let backend = tower.backend.as_ref();
    let v = vault.outpoint;
    let not_ours = || {
        bad(format!(
            "vault.vault_outpoint: {v} on chain is not this vault's output (another script or amount)"
        ))
    };
    // The common case first, through the UTXO set: a node needs no transaction index for it.
    if let Some(out) = backend.unspent_output(&v)? {
        return if out == *expected { Ok(Vec::new()) } else { Err(not_ours()) };
    }
    // Spent, or not broadcast yet. A node without -txindex finds a spent V only while its
    // transactions are in the mempool; once confirmed, such a vault is refused as unfunded
    // (docs/tower.md).
    match backend.transaction_info(&v.txid)? {
        Some((tx, _)) => {
            if tx.output.get(v.vout as usize) != Some(expected) {
                return Err(not_ours());
            }
            // Spent: by this vault's unvault, or it cannot be protected.
            let u = vault.unvault.compute_txid();
            let Some((unvault, u_height)) = backend.transaction_info(&u)? else {
                return Err(bad(format!(
                    "vault {v} is already spent by a transaction other than its unvault: nothing is left to protect"
                )));
            };
            let mut history = vec![(unvault, u_height)];
            if backend.unspent_output(&vault.unvault_outpoint())?.is_none() {
                let ours = vault.cancels.iter().chain(&vault.unvault_emergencies);
                let mut found = None;
                for candidate in ours {
                    if let Some(seen) = backend.transaction_info(&candidate.compute_txid())? {
                        found = Some(seen);
                        break;
                    }
                }
                match found {
                    Some(spend) => history.push(spend),
                    None => {
                        return Err(bad(format!(
                            "the unvault of {v} is already spent by a transaction this tower does not hold: nothing is left to protect"
                        )))
                    }
                }
            }
            Ok(history)
        }
        None => {
            // Not broadcast yet (towers acknowledge before the funding goes out): its funding
            // must create V from coins that exist now, fully signed.
            let funding = funding.ok_or_else(|| {
                bad(format!("vault.vault_outpoint: {v} is neither on chain nor in the mempool, and no funding was given"))
            })?;
            let tx = decode_tx("funding", funding)?;
            if tx.compute_txid() != v.txid {
                return Err(bad(format!(
                    "funding: its txid is {}, not the vault's {}",
                    tx.compute_txid(),
                    v.txid
                )));
            }
            if tx.output.get(v.vout as usize) != Some(expected) {
                return Err(bad("funding: it does not pay this vault's output (another script or amount)"));
            }
            let mut spent = Vec::with_capacity(tx.input.len());
            for (i, input) in tx.input.iter().enumerate() {
                match backend.unspent_output(&input.previous_output)? {
                    Some(prevout) => spent.push(prevout),
                    None => {
                        return Err(bad(format!(
                            "funding input {i} ({}) is not an unspent output on chain or in the mempool",
                            input.previous_output
                        )))
                    }
                }
            }
            vigil_regtest::kernel::verify_inputs(&tx, &spent).map_err(|e| {
                bad(format!("funding is not fully signed: Bitcoin Core's script verification fails ({e})"))
            })?;
            Ok(Vec::new())
        }
    }
}

/// `POST /v1/vaults`.
pub(crate) fn register_vault(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    req: &RegisterVault,
    body: &[u8],
) -> Result<Ack, Refusal> {
    let client = client(tower, &req.policy_id)?;
    if !client.registrars.contains(signer) {
        return Err(Refusal::Forbidden(
            "only the owner or the co-signer of this client may register vaults".into(),
        ));
    }
    // A change still waiting counts only in the last blocks before it applies: the co-signer
    // may apply it a block or two before this tower does.
    let waiting = {
        let state = tower.lock();
        let tip = state.watcher.tip().max(state.backend_tip);
        state
            .pending
            .get(&client.id)
            .filter(|c| c.effective_height <= tip + crate::governance::LIFT_SLACK_BLOCKS)
            .map(|c| c.policy.clone())
    };
    let (vault, expected) = checked_vault_waiting(&client, waiting.as_deref(), req)?;
    let outpoint = vault.outpoint;
    let looked_up = tower.lock().watcher.events();
    let history = on_chain(tower, &vault, &expected, req.funding.as_deref())?;
    // The vault row holds every transaction; the request itself is kept as its digest.
    let digest = sha256::Hash::hash(body).to_string();
    let mut state = tower.lock();
    let max = tower.config.max_vaults_per_client;
    match state.store.register_vault(&signer.to_string(), req.nonce, &vault, &digest, max)? {
        Registered::Replay { last } => Err(stale_nonce(req.nonce, last)),
        Registered::Conflict => {
            Err(Refusal::Conflict(format!("vault {outpoint} is already registered with other transactions")))
        }
        Registered::IndexUsed => Err(Refusal::Conflict(format!(
            "vault.index: {} is already used by another vault of this client (each index is used once)",
            req.vault.index
        ))),
        Registered::TooMany => Err(Refusal::Conflict(format!(
            "this client already has {max} vaults, as many as this tower takes from one client"
        ))),
        Registered::New | Registered::Same => {
            let watched = vault.watched_scripts();
            if state.watcher.vault(&outpoint).is_none() {
                // Watched before it is acknowledged: from the next poll on.
                tower.backend.watch_scripts(&watched);
                state.watcher.add_vault(vault.clone());
            }
            // What already happened is fed even to a vault watched since an earlier attempt:
            // a crash may have come between storing it and recording what its history meant
            // (feeding a transaction twice changes nothing).
            state = feed(tower, state, &outpoint, &history)?;
            // Something the watcher ignored went by while the vault was looked up (it was not
            // watched yet): look again. The vault is watched now, so once is enough.
            if state.watcher.events() != looked_up {
                drop(state);
                let again = on_chain(tower, &vault, &expected, req.funding.as_deref());
                state = tower.lock();
                // Unacknowledged unless the second look succeeded: the vault is stored and
                // watched, and the same request sent again is taken as this registration.
                let history = again.map_err(|e| {
                    tracing::warn!(vault = %outpoint, error = %e, "looking the vault up again failed");
                    Refusal::Unavailable(format!(
                        "the chain moved while vault {outpoint} was looked up, and looking again failed ({}): send the same request again",
                        e.message()
                    ))
                })?;
                state = feed(tower, state, &outpoint, &history)?;
            }
            tracing::info!(vault = %outpoint, client = %client.id, already = history.len(), "vault registered");
            drop(state);
            Ok(ack(tower, outpoint.to_string()))
        }
    }
}

/// Feeds a vault's history (transactions with their confirmation height) to the watcher and
/// acts on what it decides.
fn feed<'a>(
    tower: &'a Tower,
    mut state: MutexGuard<'a, TowerState>,
    outpoint: &OutPoint,
    history: &[(Transaction, Option<u32>)],
) -> Result<MutexGuard<'a, TowerState>, Refusal> {
    let mut actions = Vec::new();
    for (tx, height) in history {
        actions.extend(state.watcher.on_known_tx(tx, *height));
    }
    if let Some(e) = state.watcher.take_graph_error() {
        return Err(tower.fail(e).into());
    }
    if actions.is_empty() && !state.watcher.has_changes() {
        return Ok(state);
    }
    tracing::debug!(vault = %outpoint, actions = actions.len(), "history of a registered vault");
    tower.act(state, &actions)?;
    Ok(tower.lock())
}

/// `POST /v1/approvals`.
/// An approval's fields, parsed, and who signed it (every signature verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFields {
    /// V.
    pub vault: OutPoint,
    /// U's txid.
    pub unvault: Txid,
    /// The approved spend.
    pub spend: Txid,
    /// The signers of the approval.
    pub signers: Vec<XOnlyPublicKey>,
}

/// Parses an approval request's fields and verifies its signatures (no state involved).
pub fn parse_approval(req: &RegisterApproval) -> Result<ApprovalFields, Refusal> {
    let a = &req.approval;
    Ok(ApprovalFields {
        vault: OutPoint::from_str(&a.vault_outpoint)
            .map_err(|_| bad("approval.vault_outpoint: expected txid:vout"))?,
        unvault: Txid::from_str(&a.unvault_txid).map_err(|_| bad("approval.unvault_txid: not a txid"))?,
        spend: Txid::from_str(&a.spend_txid).map_err(|_| bad("approval.spend_txid: not a txid"))?,
        signers: verified_signers(&req.signatures, &a.digest())?,
    })
}

pub(crate) fn register_approval(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    req: &RegisterApproval,
    body: &[u8],
) -> Result<Ack, Refusal> {
    let a = &req.approval;
    let ApprovalFields { vault: outpoint, unvault: unvault_txid, spend, signers } = parse_approval(req)?;
    // Everything is judged by the vault's own client, whatever the request claims. The
    // signer is checked before the vault is looked up, and another client's vault is answered
    // as an unknown one: no probing for which outpoints are vaults here.
    let client = client(tower, &req.policy_id)?;
    if !client.registrars.contains(signer) {
        return Err(Refusal::Forbidden(
            "only the vault's owner or co-signer may submit its approvals".into(),
        ));
    }
    let mut state = tower.lock();
    let unknown =
        || Refusal::NotFound(format!("vault {outpoint} is not registered for client {}", req.policy_id));
    let vault = state.watcher.vault(&outpoint).ok_or_else(unknown)?;
    if req.policy_id != vault.policy_id {
        return Err(unknown());
    }
    // An earlier version too: an approval given just before a change applied may arrive
    // after it (a tower that was down, or one the change added). The waiting change's too:
    // the co-signer applies it when its wait ends there, this tower a little later (its wait
    // began when the change reached it), and the owner's unvault goes out on "approved".
    // Its signers are judged by today's keys all the same.
    let waiting = state.pending.get(&client.id).map_or(0, |w| w.version);
    let known = client.policy.version.max(waiting);
    if a.policy_version == 0 || a.policy_version > known {
        return Err(bad(format!(
            "approval.policy_version {} is not a version of this client (the pinned one is {}{})",
            a.policy_version,
            client.policy.version,
            if waiting > client.policy.version { format!(", {waiting} waits") } else { String::new() }
        )));
    }
    if vault.unvault.compute_txid() != unvault_txid {
        return Err(bad("approval.unvault_txid is not this vault's unvault"));
    }
    let tip = state.watcher.tip();
    if a.expiry_height <= tip {
        return Err(bad(format!(
            "approval.expiry_height {} has passed: an unvault now would be seen at height {} or later",
            a.expiry_height,
            tip + 1
        )));
    }
    if let Some(existing) = state.watcher.approval(&unvault_txid) {
        // The very approval again (its acknowledgement lost, or given twice to a tower that
        // joined late): the same approval, nothing changes, unless it now says duress (a copy
        // without the co-signer's word came first).
        let same =
            (existing.counter, existing.spend, existing.expiry_height) == (a.counter, spend, a.expiry_height);
        if same && (existing.under_duress || !req.duress) {
            return Ok(ack(tower, unvault_txid.to_string()));
        }
        if !same && existing.counter >= a.counter {
            return Err(Refusal::Conflict(format!(
                "stale approval: counter {} is not above {}",
                a.counter, existing.counter
            )));
        }
    }
    if !signers.contains(&client.cosigner) {
        return Err(bad("the approval lacks the co-signer's signature"));
    }
    let guardian_quorum = client.has_guardian_quorum(&signers);
    let needs_quorum = vault.guarded || vault.amount.to_sat() > client.policy.allowance.velocity_limit_sat;
    if needs_quorum && !guardian_quorum {
        return Err(bad(format!(
            "a guarded vault's approval needs {} guardian signatures, it has {}",
            client.policy.guardians.threshold,
            client.guardians_among(&signers)
        )));
    }
    let terms = ApprovalTerms {
        spend,
        expiry_height: a.expiry_height,
        counter: a.counter,
        guardian_quorum,
        under_duress: req.duress,
    };
    let record = StoredApproval { unvault: unvault_txid, terms };
    let text = String::from_utf8_lossy(body);
    if let NonceCheck::Refused { last } =
        state.store.register_approval(&signer.to_string(), req.nonce, &record, &text)?
    {
        return Err(stale_nonce(req.nonce, last));
    }
    let actions = state.watcher.add_approval(unvault_txid, terms);
    if let Some(e) = state.watcher.take_graph_error() {
        return Err(tower.fail(e).into());
    }
    tower.act(state, &actions)?;
    Ok(ack(tower, unvault_txid.to_string()))
}
