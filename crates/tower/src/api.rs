//! The registration API. Every refusal is a 4xx naming the problem, and stores nothing.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use vigil_policy::bitcoin::consensus::{deserialize, serialize};
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{schnorr, Secp256k1};
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid};
use vigil_policy::VaultKind;

use crate::store::Registered;
use crate::watch::{Vault, VaultState};
use crate::wire::{self, Ack, ApiError, RegisterApproval, RegisterVault};
use crate::{Client, Tower};

/// Largest request body: a vault with 32-rung ladders fits many times over.
pub const MAX_BODY: usize = 256 * 1024;

/// The API's routes.
pub fn router(tower: Arc<Tower>) -> Router {
    Router::new()
        .route("/v1/vaults", post(register_vault))
        .route("/v1/vaults/{outpoint}", get(vault_state))
        .route("/v1/approvals", post(register_approval))
        .route("/v1/panic", post(panic))
        .route("/v1/policy", post(change_policy))
        .route("/v1/clients/{policy_id}", get(client_state))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(tower)
}

/// A refusal.
#[derive(Debug)]
pub struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    eprintln!("level=error event=api_internal error={e}");
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// The signer of a request, after checking the signature.
fn authenticate(headers: &HeaderMap, path: &str, body: &[u8]) -> Result<XOnlyPublicKey, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let unauthorized = |m: &str| Refusal(StatusCode::UNAUTHORIZED, m.to_owned());
    let key = header("x-vigil-key").ok_or_else(|| unauthorized("missing x-vigil-key header"))?;
    let sig = header("x-vigil-signature").ok_or_else(|| unauthorized("missing x-vigil-signature header"))?;
    let key = XOnlyPublicKey::from_str(&key)
        .map_err(|_| unauthorized("x-vigil-key is not an x-only public key"))?;
    let sig = wire::unhex(&sig)
        .and_then(|b| schnorr::Signature::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("x-vigil-signature is not a 64-byte hex signature"))?;
    if !wire::verify_request(&key, &sig, path, body) {
        return Err(unauthorized("the request signature does not verify"));
    }
    Ok(key)
}

fn client(tower: &Tower, policy_id: &str) -> Result<Arc<Client>, Refusal> {
    tower.client(policy_id).ok_or_else(|| {
        Refusal(StatusCode::NOT_FOUND, format!("unknown policy {policy_id}: this tower does not serve it"))
    })
}

fn ack(tower: &Tower, subject: String) -> Ack {
    let sig = Secp256k1::new().sign_schnorr(&wire::request_digest("ack", subject.as_bytes()), &tower.key);
    Ack {
        subject,
        tower_key: tower.key.x_only_public_key().0.to_string(),
        signature: wire::hex(sig.as_ref()),
    }
}

fn decode_tx(field: &str, hex: &str) -> Result<Transaction, Refusal> {
    let bytes = wire::unhex(hex).ok_or_else(|| bad(format!("{field}: not hex")))?;
    deserialize(&bytes).map_err(|e| bad(format!("{field}: not a transaction: {e}")))
}

/// The kernel's script verification of input 0 against `prevout`, all consensus flags.
fn kernel_verifies(tx: &Transaction, prevout: &TxOut) -> bool {
    use bitcoinkernel::{
        verify, PrecomputedTransactionData, ScriptPubkey, Transaction as KTx, TxOut as KTxOut, VERIFY_ALL,
    };
    let Ok(ktx) = KTx::new(&serialize(tx)) else { return false };
    let Ok(spk) = ScriptPubkey::new(prevout.script_pubkey.as_bytes()) else { return false };
    let spent = [KTxOut::new(&spk, prevout.value.to_sat() as i64)];
    let Ok(data) = PrecomputedTransactionData::new(&ktx, &spent) else { return false };
    tx.input.len() == 1
        && verify(&spk, Some(prevout.value.to_sat() as i64), &ktx, 0, Some(VERIFY_ALL), &data).is_ok()
}

/// Checks a registration completely; returns the vault to watch.
fn check_registration(tower: &Tower, signer: &XOnlyPublicKey, req: &RegisterVault) -> Result<Vault, Refusal> {
    let client = client(tower, &req.policy_id)?;
    if !client.registrars.contains(signer) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "only the owner or the co-signer of this policy may register vaults".into(),
        ));
    }
    let p = &req.vault;
    let kind = match p.kind.as_str() {
        "standard" => VaultKind::Standard,
        "guarded" => VaultKind::Guarded,
        other => return Err(bad(format!("vault.kind: {other:?} is neither \"standard\" nor \"guarded\""))),
    };
    let key = |field: &str, s: &str| {
        XOnlyPublicKey::from_str(s).map_err(|_| bad(format!("vault.{field}: not an x-only public key")))
    };
    let outpoint =
        OutPoint::from_str(&p.vault_outpoint).map_err(|_| bad("vault.vault_outpoint: expected txid:vout"))?;
    let plan = client
        .compiled
        .plan(
            p.index,
            Amount::from_sat(p.amount_sat),
            kind,
            key("owner_once", &p.owner_once)?,
            key("cosigner_once", &p.cosigner_once)?,
        )
        .map_err(|e| bad(format!("vault: {e}")))?;
    let graph = client.compiled.build_graph(&plan, outpoint).map_err(|e| bad(format!("vault: {e}")))?;

    // Same transactions as the graph rebuilt from the pinned policy, and fully signed.
    let given = |field: &str,
                 list: &[String],
                 expected: &[vigil_policy::PresignedTx]|
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
                if !kernel_verifies(&tx, &exp.prevout) {
                    return Err(bad(format!("{name} is not fully signed: the kernel's script verification fails")));
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
    Ok(Vault {
        outpoint,
        policy_id: req.policy_id.clone(),
        amount: plan.amount,
        vault_script: graph.vault_txout.script_pubkey.clone(),
        delay: client.policy.delays.unvault,
        unvault,
        cancels,
        emergencies,
        unvault_emergencies,
        state: VaultState::default(),
    })
}

async fn register_vault(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Ack>, Refusal> {
    let signer = authenticate(&headers, "/v1/vaults", &body)?;
    let req: RegisterVault = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let t = tower.clone();
    tokio::task::spawn_blocking(move || {
        let vault = check_registration(&t, &signer, &req)?;
        // The vault row holds every transaction; the request itself is kept as its digest.
        let text = vigil_policy::bitcoin::hashes::sha256::Hash::hash(&body).to_string();
        let mut state = t.state.lock().expect("tower state");
        let outpoint = vault.outpoint;
        match state.store.register_vault(&signer.to_string(), req.nonce, &vault, &text).map_err(internal)? {
            Registered::Replay => Err(Refusal(
                StatusCode::CONFLICT,
                format!("replayed request: nonce {} is not above the last one from this key", req.nonce),
            )),
            Registered::Conflict => Err(Refusal(
                StatusCode::CONFLICT,
                format!("vault {outpoint} is already registered with other transactions"),
            )),
            Registered::New | Registered::Same => {
                if state.watcher.vault(&outpoint).is_none() {
                    // Watched before it is acknowledged: from the next poll on, history included.
                    t.backend.watch_scripts(&vault.watched_scripts());
                    state.watcher.add_vault(vault);
                }
                eprintln!("level=info event=vault_registered vault={outpoint}");
                Ok(Json(ack(&t, outpoint.to_string())))
            }
        }
    })
    .await
    .map_err(internal)?
}

async fn register_approval(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Ack>, Refusal> {
    let signer = authenticate(&headers, "/v1/approvals", &body)?;
    let req: RegisterApproval = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let client = client(&tower, &req.policy_id)?;
    if !client.registrars.contains(&signer) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "only the owner or the co-signer may submit approvals".into(),
        ));
    }
    let a = &req.approval;
    if a.policy_version != client.policy.version {
        return Err(bad(format!(
            "approval.policy_version {} is not the pinned version {}",
            a.policy_version, client.policy.version
        )));
    }
    let outpoint = OutPoint::from_str(&a.vault_outpoint)
        .map_err(|_| bad("approval.vault_outpoint: expected txid:vout"))?;
    let unvault_txid =
        Txid::from_str(&a.unvault_txid).map_err(|_| bad("approval.unvault_txid: not a txid"))?;
    let spend_txid = Txid::from_str(&a.spend_txid).map_err(|_| bad("approval.spend_txid: not a txid"))?;
    let (expiry_height, counter) = (a.expiry_height, a.counter);
    // Who signed the approval itself: every signature must verify.
    let mut signers = Vec::new();
    for (i, (key, verifies)) in checked_signatures(&req.signatures, &a.digest())?.into_iter().enumerate() {
        if !verifies {
            return Err(bad(format!("signatures[{i}] does not verify")));
        }
        signers.push(key);
    }
    let t = tower.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = t.state.lock().expect("tower state");
        let vault = state
            .watcher
            .vault(&outpoint)
            .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("vault {outpoint} is not registered")))?;
        if vault.unvault.compute_txid() != unvault_txid {
            return Err(bad("approval.unvault_txid is not this vault's unvault"));
        }
        if let Some(existing) = state.watcher.approval(&unvault_txid) {
            if existing.counter >= counter {
                return Err(Refusal(
                    StatusCode::CONFLICT,
                    format!("stale approval: counter {counter} is not above {}", existing.counter),
                ));
            }
        }
        if expiry_height < state.watcher.tip() {
            return Err(bad(format!(
                "approval.expiry_height {expiry_height} is already past (tip {})",
                state.watcher.tip()
            )));
        }
        if !signers.contains(&client.cosigner) {
            return Err(bad("the approval lacks the co-signer's signature"));
        }
        let guarded = vault.amount.to_sat() > client.policy.allowance.velocity_limit_sat
            || client.compiled.kind_for(vault.amount) == VaultKind::Guarded;
        let guardians = client.guardians.iter().filter(|g| signers.contains(g)).count() as u32;
        if guarded && guardians < client.policy.guardians.threshold {
            return Err(bad(format!(
                "a guarded vault's approval needs {} guardian signatures, it has {guardians}",
                client.policy.guardians.threshold
            )));
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let fresh = state
            .store
            .register_approval(&signer.to_string(), req.nonce, &unvault_txid, &spend_txid, &text)
            .map_err(internal)?;
        if !fresh {
            return Err(Refusal(
                StatusCode::CONFLICT,
                format!("replayed request: nonce {} is not above the last one from this key", req.nonce),
            ));
        }
        state.watcher.add_approval(
            unvault_txid,
            crate::watch::ApprovalTerms { spend: spend_txid, expiry_height, counter },
        );
        Ok(Json(ack(&t, unvault_txid.to_string())))
    })
    .await
    .map_err(internal)?
}

/// `POST /v1/panic`: `{nonce, policy_id, signatures}` with the guardian quorum's signatures
/// over `request_digest("panic", policy_id)`.
async fn panic(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Ack>, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PanicRequest {
        nonce: u64,
        policy_id: String,
        signatures: Vec<wire::KeySignature>,
    }
    let signer = authenticate(&headers, "/v1/panic", &body)?;
    let req: PanicRequest = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let client = client(&tower, &req.policy_id)?;
    if !client.guardians.contains(&signer) {
        return Err(Refusal(StatusCode::FORBIDDEN, "only a guardian may submit a panic".into()));
    }
    let quorum =
        guardian_quorum(&client, &req.signatures, &wire::request_digest("panic", req.policy_id.as_bytes()))?;
    if (quorum as u32) < client.policy.guardians.threshold {
        return Err(bad(format!(
            "a panic needs {} guardian signatures, {quorum} verify",
            client.policy.guardians.threshold
        )));
    }
    let t = tower.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = t.state.lock().expect("tower state");
        let fresh = state.store.consume_nonce(&signer.to_string(), req.nonce).map_err(internal)?;
        if !fresh {
            return Err(Refusal(StatusCode::CONFLICT, "replayed request".into()));
        }
        let actions = state.watcher.panic(&req.policy_id);
        if let Some(e) = state.watcher.take_graph_error() {
            // The store failed: a tower that cannot read its vaults must not look alive.
            eprintln!("level=error event=store error={e:?}");
            t.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(internal(e));
        }
        let broadcasts = state.record(None, &actions).map_err(internal)?;
        drop(state);
        for (id, action) in &broadcasts {
            t.broadcast(*id, action);
        }
        Ok(Json(ack(&t, format!("panic {}", req.policy_id))))
    })
    .await
    .map_err(internal)?
}

/// Each signature's key and whether it verifies over `digest`; malformed ones are refused,
/// naming their position.
fn checked_signatures(
    signatures: &[wire::KeySignature],
    digest: &vigil_policy::bitcoin::secp256k1::Message,
) -> Result<Vec<(XOnlyPublicKey, bool)>, Refusal> {
    let secp = Secp256k1::verification_only();
    signatures
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = XOnlyPublicKey::from_str(&s.key)
                .map_err(|_| bad(format!("signatures[{i}].key: not an x-only key")))?;
            let sig = wire::unhex(&s.signature)
                .and_then(|b| schnorr::Signature::from_slice(&b).ok())
                .ok_or_else(|| bad(format!("signatures[{i}].signature: not a signature")))?;
            Ok((key, secp.verify_schnorr(&sig, digest, &key).is_ok()))
        })
        .collect()
}

/// Guardian-quorum signatures among `signatures` over `digest`, counted once per guardian.
fn guardian_quorum(
    client: &Client,
    signatures: &[wire::KeySignature],
    digest: &vigil_policy::bitcoin::secp256k1::Message,
) -> Result<usize, Refusal> {
    let quorum: std::collections::HashSet<XOnlyPublicKey> = checked_signatures(signatures, digest)?
        .into_iter()
        .filter(|(key, verifies)| *verifies && client.guardians.contains(key))
        .map(|(key, _)| key)
        .collect();
    Ok(quorum.len())
}

/// Whether `new` only tightens `old`: same everything but lower limits, a longer window, a
/// shorter whitelist. Tightening applies at once; anything else waits out the governance delay.
fn only_tightens(old: &vigil_policy::Policy, new: &vigil_policy::Policy) -> bool {
    let (a, b) = (&old.allowance, &new.allowance);
    let mut same = new.clone();
    same.version = old.version;
    same.allowance = old.allowance.clone();
    same == *old
        && b.velocity_limit_sat <= a.velocity_limit_sat
        && b.hot_limit_sat <= a.hot_limit_sat
        && b.velocity_window_blocks >= a.velocity_window_blocks
        && b.whitelist.iter().all(|w| a.whitelist.contains(w))
}

async fn change_policy(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Ack>, Refusal> {
    let signer = authenticate(&headers, "/v1/policy", &body)?;
    let req: wire::ChangePolicy = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let client = client(&tower, &req.policy_id)?;
    if !client.guardians.contains(&signer) && !client.registrars.contains(&signer) {
        return Err(Refusal(StatusCode::FORBIDDEN, "not a party of this policy".into()));
    }
    let quorum = guardian_quorum(&client, &req.signatures, &wire::policy_change_digest(&req.policy))?;
    if (quorum as u32) < client.policy.guardians.threshold {
        return Err(bad(format!(
            "a policy change needs {} guardian signatures, {quorum} verify",
            client.policy.guardians.threshold
        )));
    }
    let new = vigil_policy::Policy::from_toml(&req.policy).map_err(|e| bad(format!("policy: {e}")))?;
    if new.version <= client.policy.version {
        return Err(bad(format!(
            "policy: version {} is not above the current {}",
            new.version, client.policy.version
        )));
    }
    if new.network != client.policy.network {
        return Err(bad("policy: another network"));
    }
    crate::Client::new(&req.policy).map_err(|e| bad(format!("policy: {e}")))?;
    let tightening = only_tightens(&client.policy, &new);
    let t = tower.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = t.state.lock().expect("tower state");
        if !state.store.consume_nonce(&signer.to_string(), req.nonce).map_err(internal)? {
            return Err(Refusal(StatusCode::CONFLICT, "replayed request".into()));
        }
        let tip = state.watcher.tip();
        let effective_height = if tightening { tip } else { tip + crate::GOVERNANCE_DELAY_BLOCKS };
        state.policy_changes.retain(|c| c.client != req.policy_id);
        state.policy_changes.push(crate::PolicyChange {
            client: req.policy_id.clone(),
            policy: req.policy.clone(),
            version: new.version,
            effective_height,
        });
        let alarm = crate::watch::Action::Alarm {
            vault: None,
            kind: "policy-change".into(),
            message: format!(
                "policy of client {} changes to version {}{}: applies at height {effective_height}",
                req.policy_id,
                new.version,
                if tightening { " (tightening)" } else { "" }
            ),
        };
        let records = serde_json::to_string(&state.policy_changes).map_err(internal)?;
        state.pending_records.push(("policy_changes", records));
        state.record(None, std::slice::from_ref(&alarm)).map_err(internal)?;
        crate::log_actions(std::slice::from_ref(&alarm));
        if tightening {
            t.apply_policy_changes(&mut state).map_err(internal)?;
        }
        Ok(Json(ack(&t, format!("policy {} version {} at {effective_height}", req.policy_id, new.version))))
    })
    .await
    .map_err(internal)?
}

async fn client_state(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    Path(policy_id): Path<String>,
) -> Result<Response, Refusal> {
    let signer = authenticate(&headers, &format!("/v1/clients/{policy_id}"), b"")?;
    let client = client(&tower, &policy_id)?;
    if !client.registrars.contains(&signer) && !client.guardians.contains(&signer) {
        return Err(Refusal(StatusCode::FORBIDDEN, "not a party of this policy".into()));
    }
    let state = tower.state.lock().expect("tower state");
    let pending: Vec<_> = state
        .policy_changes
        .iter()
        .filter(|c| c.client == policy_id)
        .map(|c| serde_json::json!({"version": c.version, "effective_height": c.effective_height}))
        .collect();
    Ok(Json(
        serde_json::json!({"version": client.policy.version, "pending": pending, "tip": state.watcher.tip()}),
    )
    .into_response())
}

async fn vault_state(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    Path(outpoint): Path<String>,
) -> Result<Response, Refusal> {
    let path = format!("/v1/vaults/{outpoint}");
    let signer = authenticate(&headers, &path, b"")?;
    let outpoint = OutPoint::from_str(&outpoint).map_err(|_| bad("expected /v1/vaults/<txid:vout>"))?;
    let state = tower.state.lock().expect("tower state");
    let vault = state
        .watcher
        .vault(&outpoint)
        .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("vault {outpoint} is not registered")))?;
    let client = client(&tower, &vault.policy_id)?;
    if !client.registrars.contains(&signer) && !client.guardians.contains(&signer) {
        return Err(Refusal(StatusCode::FORBIDDEN, "not a party of this vault's policy".into()));
    }
    Ok(Json(
        serde_json::json!({"vault": outpoint.to_string(), "state": vault.state, "tip": state.watcher.tip()}),
    )
    .into_response())
}

async fn metrics(State(tower): State<Arc<Tower>>) -> Result<String, Refusal> {
    // The store may be PostgreSQL, whose client blocks: off the async threads.
    tokio::task::spawn_blocking(move || tower.metrics()).await.map_err(internal)
}
