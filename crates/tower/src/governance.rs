//! What a client's guardians decide: panics (sweep every vault to the deep vault) and policy
//! changes (tightening at once, anything else after [`GOVERNANCE_DELAY_BLOCKS`]).
//!
//! A panic is signed by the guardian quorum over a fresh id and a validity window, and each
//! id is acted on once, so no guardian can replay an old one. A policy change is signed by the
//! quorum over the client and the new file; submitting the same change again changes nothing
//! (it cannot postpone itself), and a change that applies drops any waiting change it
//! supersedes.

use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::Policy;

use crate::client::{
    ladder_out_of_reach, only_tightens, Client, ClientRecord, PolicyChange, GOVERNANCE_DELAY_BLOCKS,
    MAX_GOVERNANCE_DELAY_BLOCKS,
};
use crate::daemon::{Tower, TowerState};
use crate::error::Refusal;
use crate::registration::{ack, client, stale_nonce, verified_signers};
use crate::store::{Enrollment, NonceCheck};
use crate::vault::{Action, AlarmKind};
use crate::watch::Lift;
use crate::wire::{
    lift_digest, policy_change_digest, Ack, ChangePolicy, EnrollClient, LiftLockdown, LockdownRequest,
    PanicRequest, MAX_LOCKDOWN_BLOCKS, MAX_PANIC_WINDOW_BLOCKS,
};

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::BadRequest(message.into())
}

/// A panic request's id checked, and who signed it (every signature verified).
pub fn panic_signers(req: &PanicRequest) -> Result<Vec<XOnlyPublicKey>, Refusal> {
    if <[u8; 32]>::from_hex(&req.panic.id).is_err() {
        return Err(bad("panic.id: 32 random bytes in hex (64 characters), fresh for each panic"));
    }
    verified_signers(&req.signatures, &req.panic.digest())
}

/// `POST /v1/panic`.
pub(crate) fn panic(tower: &Tower, signer: &XOnlyPublicKey, req: &PanicRequest) -> Result<Ack, Refusal> {
    let p = &req.panic;
    let client = client(tower, &p.policy_id)?;
    // The guardians' quorum signatures authorise it; any party may hand it in (the
    // co-signer relays the guardians' decision to every tower).
    if !client.is_party(signer) {
        return Err(Refusal::Forbidden("only a party of this client may submit its panic".into()));
    }
    let signers = panic_signers(req)?;
    if !client.has_guardian_quorum(&signers) {
        return Err(bad(format!(
            "a panic needs {} guardian signatures, {} verify",
            client.policy.guardians.threshold,
            client.guardians_among(&signers)
        )));
    }
    let mut state = tower.lock();
    let tip = state.watcher.tip();
    if p.not_after_height < tip {
        return Err(bad(format!("panic.not_after_height {} has passed (tip {tip})", p.not_after_height)));
    }
    if p.not_after_height > tip + MAX_PANIC_WINDOW_BLOCKS {
        return Err(bad(format!(
            "panic.not_after_height {} is more than {MAX_PANIC_WINDOW_BLOCKS} blocks ahead of the tip {tip}",
            p.not_after_height
        )));
    }
    // Used once per client: another client's panic under the same id (its guardians read
    // this one's in a feed) must not stop this one. A bare id is a panic acted on before
    // ids were kept per client.
    let used = format!("{}/{}", client.id, p.id);
    if state.store.panic_used(&used)? || state.store.panic_used(&p.id)? {
        return Err(Refusal::Conflict(format!("panic {} was already acted on", p.id)));
    }
    if let NonceCheck::Refused { last } = state.store.consume_nonce(&signer.to_string(), req.nonce)? {
        return Err(stale_nonce(req.nonce, last));
    }
    let actions = state.watcher.panic(&client.id);
    if let Some(e) = state.watcher.take_graph_error() {
        // The store failed: a tower that cannot read its vaults must not look alive.
        return Err(tower.fail(e).into());
    }
    state.used_panics.push(used);
    tower.act(state, &actions)?;
    Ok(ack(tower, format!("panic {}", p.id)))
}

/// `POST /v1/clients`: pins a client with an operator's single-use token.
pub(crate) fn enroll(tower: &Tower, signer: &XOnlyPublicKey, req: &EnrollClient) -> Result<Ack, Refusal> {
    let token = <[u8; 32]>::from_hex(&req.token)
        .map_err(|_| bad("token: 64 hex characters, as `vigil tower token` printed it"))?;
    let id = crate::client::policy_id(&req.policy);
    let hash = vigil_policy::bitcoin::hashes::sha256::Hash::hash(&token).to_string();
    // The token first: a chain of changes takes work to check (a stranger's own policy, its
    // own guardians signing, up to the enrollment's 4 MiB), and only the operator's tokens buy
    // it. The token is used (or found used) atomically below.
    match tower.read_store.lock().expect("read store").token(&hash)? {
        None => return Err(Refusal::Unauthorized("unknown enrollment token".into())),
        Some(Some(pinned)) if pinned != id => {
            return Err(Refusal::Unauthorized("this enrollment token was already used".into()))
        }
        Some(_) => {}
    }
    let client = followed(tower, &id, req)?;
    if !client.registrars.contains(signer) {
        return Err(Refusal::Forbidden("the policy is pinned by one of its owner or co-signer keys".into()));
    }
    // Only the co-signer knows which of the signed changes applied (a captive owner could
    // stop the chain before a tightening, or end it at a loosening still waiting); the
    // guardians are told of every such enrollment, and read the version here.
    if !req.changes.is_empty() && *signer != client.cosigner {
        return Err(Refusal::Forbidden(
            "changes: a client is enrolled by its chain of changes through its co-signer (`POST /v1/towers` there)"
                .into(),
        ));
    }
    let mut state = tower.lock();
    if let Some(reason) =
        state.watcher.fee_wallet().and_then(|w| ladder_out_of_reach(&client.policy, w.stress_rate()))
    {
        return Err(bad(format!("policy: {reason}")));
    }
    if let NonceCheck::Refused { last } = state.store.consume_nonce(&signer.to_string(), req.nonce)? {
        return Err(stale_nonce(req.nonce, last));
    }
    // The version followed to, not the first: a restart serves what the chain led to. Taken
    // in place of a client held already in the token's own transaction, so a retry of the
    // same token (its answer lost) has nothing left to do, and a token used before moves
    // nothing.
    let held = tower.client(&id);
    let waiting = state.pending.get(&id).cloned();
    let takes =
        held.as_ref().is_some_and(|held| takes_chain(held, &client, waiting.as_ref(), &tower.public_key()));
    let record = ClientRecord {
        id: id.clone(),
        policy: client.text.clone(),
        pending: waiting.filter(|_| takes),
        earlier: client.earlier.clone(),
    };
    // Raised in the token's transaction: the guardians hear of every version taken this way.
    let alarm = held.as_ref().filter(|_| takes).map(|held| {
        Action::client_alarm(
            &id,
            AlarmKind::PolicyApplied,
            format!(
                "client {id} enrolled again by its chain of changes: version {} and {} before it (this tower \
                 held version {} and {} before it)",
                client.policy.version,
                client.earlier.len(),
                held.policy.version,
                held.earlier.len()
            ),
        )
    });
    let replaced = match state.store.enroll(&hash, &record, alarm.as_ref())? {
        Enrollment::Unknown => return Err(Refusal::Unauthorized("unknown enrollment token".into())),
        Enrollment::Used => {
            return Err(Refusal::Unauthorized("this enrollment token was already used".into()))
        }
        Enrollment::Pinned => {
            if takes {
                crate::daemon::log_actions(alarm.as_slice());
            }
            takes
        }
        // The same token again: its first use pinned the client, and memory follows what it
        // wrote (a commit the store retried on a new connection, or an answer lost after it,
        // may have left it out of memory).
        Enrollment::Same => {
            takes && state.store.applied_policy(&id)?.as_deref() == Some(client.text.as_str())
        }
    };
    if held.is_none() || replaced {
        let (from, to) = (held.map(|h| h.policy.version), client.policy.version);
        state.watcher.set_limits(&id, client.limits());
        tower.clients.write().expect("clients").insert(id.clone(), std::sync::Arc::new(client));
        tracing::info!(client = %id, ?from, to, "client enrolled");
    } else if let Some(held) = held.filter(|held| !follows(held, &client, state.pending.get(&id))) {
        // Acknowledged, the co-signer would count this tower as serving a version it does not
        // hold: one pinned first (the token the owner hands the co-signer is seen by whoever
        // holds the owner's device), or a store that lost the changes since.
        tracing::warn!(client = %id, held = held.policy.version, asked = client.policy.version, "enrollment refused: this tower holds an earlier version");
        return Err(Refusal::Conflict(format!(
            "this tower holds client {id} at version {} and has not heard of the changes to version {} (the \
             first policy may have been pinned here by whoever saw the token): the guardians hand it the \
             changes, or, if one removed this tower, the operator's new token takes them",
            held.policy.version, client.policy.version
        )));
    }
    Ok(ack(tower, format!("client {id}")))
}

/// Whether a tower holding a client as `held` (with its change `waiting`) serves `chain`, the
/// version an enrollment led to: it holds it, or a later one, or it is waiting out a change on
/// the chain by its own clock.
fn follows(held: &Client, chain: &Client, waiting: Option<&PolicyChange>) -> bool {
    held.text == chain.text
        || held.earlier.contains(&chain.text)
        || waiting.is_some_and(|w| w.policy == chain.text || chain.earlier.contains(&w.policy))
}

/// Whether this tower, holding a client as `held` (with its change `waiting`, if any), takes
/// `chain` instead: the version an enrollment's chain of changes led to, with every version
/// before it. A tower a change removed stops hearing of the client's changes once nothing it
/// watches is left (and its guardians may have been replaced since, so it could not check a
/// later change itself): on the operator's new token it takes the chain's version, as a tower
/// the client never had would. One counting its own wait for a change hears the changes: it
/// keeps that wait. One that heard of the change naming it again itself keeps its version,
/// and learns the versions it missed (the vaults made under them are registered under them).
/// A tower named by every version since keeps its own: it hears each change and applies it
/// by its own wait. The chain must pass through every version it holds.
fn takes_chain(held: &Client, chain: &Client, waiting: Option<&PolicyChange>, me: &XOnlyPublicKey) -> bool {
    let on_chain = |text: &String| *text == chain.text || chain.earlier.contains(text);
    if !on_chain(&held.text) || !held.earlier.iter().all(on_chain) {
        return false;
    }
    if chain.text == held.text {
        return chain.earlier.len() > held.earlier.len();
    }
    if waiting.is_some() {
        return false;
    }
    let at = chain.earlier.iter().position(|text| *text == held.text).expect("on the chain");
    chain.earlier[at..].iter().any(|text| {
        Policy::from_toml(text).is_ok_and(|p| !p.towers.iter().any(|t| t.key.x_only_public_key().0 == *me))
    })
}

/// The client an enrollment pins: its first policy, then each change in turn, every one
/// signed by the guardian quorum of the version before it. It must lead to a version naming
/// this tower: one stopping short of the change that added it would enroll it under a version
/// it does not serve (and a captor who saw the token would use it so first).
fn followed(tower: &Tower, id: &str, req: &EnrollClient) -> Result<Client, Refusal> {
    let mut client = Client::new(id, &req.policy).map_err(|e| bad(format!("policy: {e}")))?;
    for (i, change) in req.changes.iter().enumerate() {
        let field = format!("changes[{i}]");
        let signers = verified_signers(&change.signatures, &policy_change_digest(id, &change.policy))
            .map_err(|e| bad(format!("{field}: {}", e.message())))?;
        if !client.has_guardian_quorum(&signers) {
            return Err(bad(format!(
                "{field}: a change needs {} signatures of the guardians of version {}, {} verify",
                client.policy.guardians.threshold,
                client.policy.version,
                client.guardians_among(&signers)
            )));
        }
        let next = client.changed_to(&change.policy).map_err(|e| bad(format!("{field}.policy: {e}")))?;
        if next.policy.network != client.policy.network {
            return Err(bad(format!("{field}.policy: another network")));
        }
        if next.policy.version <= client.policy.version {
            return Err(bad(format!(
                "{field}.policy: version {} is not above {}, the version before it",
                next.policy.version, client.policy.version
            )));
        }
        client = next;
    }
    let me = tower.public_key();
    if !client.policy.towers.iter().any(|t| t.key.x_only_public_key().0 == me) {
        let version = client.policy.version;
        return Err(bad(if req.changes.is_empty() {
            format!("policy: version {version} does not name this tower: give the changes up to the one that added it")
        } else {
            format!(
                "changes: version {version}, the last, does not name this tower: give the changes up to the one \
                 that added it"
            )
        }));
    }
    Ok(client)
}

/// Issues a single-use enrollment token into a tower's store (`vigil tower token`).
pub fn issue_token(config: &crate::TowerConfig) -> Result<String, crate::TowerError> {
    use vigil_policy::bitcoin::hex::DisplayHex;
    use vigil_policy::bitcoin::secp256k1::rand::RngCore;
    let mut bytes = [0u8; 32];
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut bytes);
    let mut store = crate::daemon::open_store(config)?;
    store.issue_token(&vigil_policy::bitcoin::hashes::sha256::Hash::hash(&bytes).to_string())?;
    Ok(bytes.to_lower_hex_string())
}

/// `POST /v1/lockdown`: any one party of the client; it applies at once.
pub(crate) fn lockdown(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    req: &LockdownRequest,
) -> Result<Ack, Refusal> {
    let client = client(tower, &req.policy_id)?;
    if !client.is_party(signer) {
        return Err(Refusal::Forbidden("not a party of this client".into()));
    }
    // The owner never sends one quiet (its duress goes through the co-signer): taken from the
    // owner's key, a captor holding it would make the guardians' own lockdowns quiet too.
    if req.quiet && !(client.guardians.contains(signer) || *signer == client.cosigner) {
        return Err(Refusal::Forbidden(
            "quiet: only the co-signer or a guardian keeps a lockdown quiet".into(),
        ));
    }
    let mut state = tower.lock();
    let tip = state.watcher.tip();
    if req.until_height <= tip || req.until_height > tip + MAX_LOCKDOWN_BLOCKS {
        return Err(bad(format!(
            "until_height {} must be above the tip {tip} and at most {MAX_LOCKDOWN_BLOCKS} blocks ahead",
            req.until_height
        )));
    }
    if let NonceCheck::Refused { last } = state.store.consume_nonce(&signer.to_string(), req.nonce)? {
        return Err(stale_nonce(req.nonce, last));
    }
    // A guardian's lockdown while a quiet one holds (the owner typed the duress code) is kept
    // quiet: one the owner's device could see would tell whoever holds it.
    let quiet = req.quiet
        || (client.guardians.contains(signer)
            && state.watcher.lockdowns().get(&client.id).is_some_and(|l| l.quiet_until > tip));
    let taken_at = state.followed_height().unwrap_or(u32::MAX);
    let actions = state.watcher.lock_down_at(&client.id, req.until_height, quiet, taken_at);
    if let Some(e) = state.watcher.take_graph_error() {
        return Err(tower.fail(e).into());
    }
    tower.act(state, &actions)?;
    Ok(ack(tower, format!("lockdown {} {}", client.id, req.until_height)))
}

/// Blocks a lift may fall short of the governance wait at a tower.
pub const LIFT_SLACK_BLOCKS: u32 = 6;

/// `POST /v1/lockdown/lift`: the guardian quorum, at least the governance wait ahead.
pub(crate) fn lift_lockdown(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    req: &LiftLockdown,
) -> Result<Ack, Refusal> {
    let client = client(tower, &req.policy_id)?;
    if !client.is_party(signer) {
        return Err(Refusal::Forbidden("not a party of this client".into()));
    }
    let signers =
        verified_signers(&req.signatures, &lift_digest(&client.id, req.lift_at_height, req.lockdown_until))?;
    if !client.has_guardian_quorum(&signers) {
        return Err(bad(format!(
            "lifting a lockdown needs {} guardian signatures, {} verify",
            client.policy.guardians.threshold,
            client.guardians_among(&signers)
        )));
    }
    let mut state = tower.lock();
    let tip = state.watcher.tip();
    let subject = format!("lockdown lift {} {}", client.id, req.lift_at_height);
    match state.watcher.check_lift(&client.id, req.lift_at_height, req.lockdown_until) {
        // Delivered again (its acknowledgement was lost): acknowledged, whatever the height.
        Lift::AlreadyApplied => return Ok(ack(tower, subject)),
        Lift::Superseded { last } => {
            return Err(Refusal::Conflict(format!(
                "a later lift (at height {last}) was applied since this one was signed: replaying it would cut short a newer lockdown"
            )))
        }
        Lift::Applied => {}
    }
    chain_in_sight(&state, "an early lift")?;
    // A few blocks of slack: the quorum signed a height the co-signer checked against its own
    // tip, and this tower may be a block or two ahead of it. A lift sooner than that comes
    // late (this tower was down when the quorum signed it, or someone kept it back): taken
    // then, it was signed by `signed_by`, and it applies a full wait from now, if no lockdown
    // was taken here after that: such a lockdown is not its to end, and, absorbed into an
    // older, longer one, cannot be told apart from it. The wait counts from the highest
    // height known, and only once the tower has caught up with it.
    let known = state.known_height();
    let ends_at = if req.lift_at_height + LIFT_SLACK_BLOCKS < known + GOVERNANCE_DELAY_BLOCKS {
        let Some(now) = state.followed_height() else {
            return Err(Refusal::Unavailable(
                "the tower is catching up with the chain: a lift delivered late waits a number of blocks counted \
                 from a tip it has not reached; retry"
                    .into(),
            ));
        };
        let signed_by = (req.lift_at_height + LIFT_SLACK_BLOCKS).saturating_sub(GOVERNANCE_DELAY_BLOCKS);
        let set_at = state.watcher.lockdowns().get(&client.id).map_or(0, |l| l.last_set_at);
        if set_at > signed_by {
            return Err(bad(format!(
                "lift_at_height {} is sooner than the governance wait allows ({} blocks after the tip {now}), \
                 and a lockdown was taken here after it can have been signed",
                req.lift_at_height, GOVERNANCE_DELAY_BLOCKS
            )));
        }
        now + GOVERNANCE_DELAY_BLOCKS
    } else {
        req.lift_at_height
    };
    // A lift names the lockdown it ends: one set (or lengthened) since, here, is not its to
    // end; nor is a lockdown that ends well before the one it names (a lift cut it since, and
    // this one is for an older lockdown).
    let held = state.watcher.lockdowns().get(&client.id).map_or(0, |l| l.plain_until.max(l.quiet_until));
    if held > req.lockdown_until + LIFT_SLACK_BLOCKS {
        return Err(Refusal::Conflict(format!(
            "this lift ends the lockdown until block {}, but a lockdown until block {held} was set since: it \
             is not lifted",
            req.lockdown_until
        )));
    }
    if held + LIFT_SLACK_BLOCKS < req.lockdown_until && held > tip {
        return Err(Refusal::Conflict(format!(
            "this lift ends the lockdown until block {}, but the lockdown held here ends at block {held}: it is \
             not this lift's",
            req.lockdown_until
        )));
    }
    if let NonceCheck::Refused { last } = state.store.consume_nonce(&signer.to_string(), req.nonce)? {
        return Err(stale_nonce(req.nonce, last));
    }
    state.watcher.lift_lockdown_at(&client.id, req.lift_at_height, req.lockdown_until, ends_at);
    if ends_at != req.lift_at_height {
        tracing::info!(client = %client.id, lift_at_height = req.lift_at_height, ends_at, "a lift delivered late applies a full wait from now");
    }
    tower.act(state, &[])?;
    Ok(ack(tower, subject))
}

/// `POST /v1/policy`.
pub(crate) fn change_policy(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    req: &ChangePolicy,
) -> Result<Ack, Refusal> {
    let current = client(tower, &req.policy_id)?;
    if !current.is_party(signer) {
        return Err(Refusal::Forbidden("not a party of this client".into()));
    }
    // One it applied already (a tightening applies at once, and its answer may have been
    // lost): the sender asks again, and must not be told it was refused. Before the quorum is
    // counted: a change of the guardians was signed by those it replaced.
    if current.text == req.policy || current.earlier.contains(&req.policy) {
        let version = Policy::from_toml(&req.policy).map(|p| p.version).unwrap_or_default();
        return Ok(ack(tower, format!("policy {} version {version} applied", current.id)));
    }
    let signers = verified_signers(&req.signatures, &policy_change_digest(&current.id, &req.policy))?;
    if !current.has_guardian_quorum(&signers) {
        return Err(bad(format!(
            "a policy change needs {} guardian signatures, {} verify",
            current.policy.guardians.threshold,
            current.guardians_among(&signers)
        )));
    }
    let new = Policy::from_new_toml(&req.policy).map_err(|e| bad(format!("policy: {e}")))?;
    if new.network != current.policy.network {
        return Err(bad("policy: another network"));
    }
    Client::new(&current.id, &req.policy).map_err(|e| bad(format!("policy: {e}")))?;
    let tightening = only_tightens(&current.policy, &new);
    let mut state = tower.lock();
    // A change applied while this request was checked: the request was weighed against a
    // policy that is no longer the current one.
    if !std::sync::Arc::ptr_eq(&current, &client(tower, &req.policy_id)?) {
        return Err(Refusal::Conflict("the client's policy changed meanwhile: check and sign again".into()));
    }
    // A ladder the fee wallet cannot outbid would leave cancels unpaid in a fee spike, and
    // would stop the tower from restarting for every client.
    if let Some(reason) = state.watcher.fee_wallet().and_then(|w| ladder_out_of_reach(&new, w.stress_rate()))
    {
        return Err(bad(format!("policy: {reason}")));
    }
    // A new wait is counted from the tip: not from one this tower cannot check (before the
    // height the co-signer names is judged against it, or a stale tip would refuse it for good).
    let waiting = state.pending.get(&current.id).cloned();
    let same = waiting.as_ref().filter(|w| w.policy == req.policy);
    if !tightening && same.is_none() {
        chain_in_sight(&state, "a loosening")?;
    }
    // The highest tip known: a loosening's delay never counts from a height the chain passed.
    let tip = state.watcher.tip().max(state.backend_tip);
    // The height the co-signer applies it from, which may be later than this tower's own wait
    // (a provider may wait longer). Taken from the co-signer only: the guardians sign the file,
    // not the height, and any other party could otherwise postpone a change here.
    let named = req.not_before_height.filter(|_| *signer == current.cosigner && !tightening);
    // A few blocks of slack: the co-signer counted from its own tip, which may be ahead.
    if let Some(h) = named.filter(|h| *h > tip + MAX_GOVERNANCE_DELAY_BLOCKS + LIFT_SLACK_BLOCKS) {
        return Err(bad(format!(
            "not_before_height {h} is more than {MAX_GOVERNANCE_DELAY_BLOCKS} blocks ahead of the tip {tip}"
        )));
    }
    let subject =
        |c: &PolicyChange| format!("policy {} version {} at {}", c.client, c.version, c.effective_height);
    // The same change again is the same change: it must not restart its own delay. Only the
    // co-signer may name a later height for it (another party handed it in first).
    if let Some(w) = same {
        if named.is_none_or(|h| h <= w.effective_height) {
            return Ok(ack(tower, subject(w)));
        }
    } else {
        let floor = waiting.as_ref().map(|w| w.version).unwrap_or(0).max(current.policy.version);
        if new.version <= floor {
            return Err(bad(format!(
                "policy: version {} is not above {floor}, the current or waiting one",
                new.version
            )));
        }
    }
    let effective_height = match same {
        Some(w) => w.effective_height.max(named.unwrap_or(0)),
        None if tightening => tip,
        None => (tip + GOVERNANCE_DELAY_BLOCKS).max(named.unwrap_or(0)),
    };
    if let NonceCheck::Refused { last } = state.store.consume_nonce(&signer.to_string(), req.nonce)? {
        return Err(stale_nonce(req.nonce, last));
    }
    let change = PolicyChange {
        client: current.id.clone(),
        policy: req.policy.clone(),
        version: new.version,
        effective_height,
    };
    let alarm = Action::client_alarm(
        &current.id,
        AlarmKind::PolicyChange,
        format!(
            "policy of client {} changes to version {}{}: applies at height {effective_height}",
            current.id,
            new.version,
            if tightening { " (tightening)" } else { "" }
        ),
    );
    state.pending.insert(current.id.clone(), change.clone());
    let record = state.client_record(&current);
    state.changed_clients.push(record);
    tower.record(&mut state, std::slice::from_ref(&alarm))?;
    if tightening {
        tower.apply_policy_changes(&mut state)?;
    }
    Ok(ack(tower, subject(&change)))
}

/// `GET /v1/clients/{id}`: the applied version, the change waiting if any, and the end of a
/// plain lockdown holding now (the owner's, a guardian's; never a quiet one).
pub(crate) fn client_view(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    id: &str,
) -> Result<serde_json::Value, Refusal> {
    let client = client(tower, id)?;
    if !client.is_party(signer) {
        return Err(Refusal::Forbidden("not a party of this client".into()));
    }
    let state = tower.lock();
    let pending: Vec<_> = state
        .pending
        .get(id)
        .map(|c| serde_json::json!({"version": c.version, "effective_height": c.effective_height}))
        .into_iter()
        .collect();
    // Only a plain lockdown shows: a quiet one (duress) must leave the owner's view unchanged.
    let tip = state.watcher.tip();
    let locked_until = state.watcher.lockdowns().get(id).map(|l| l.plain_until).filter(|h| *h > tip);
    Ok(serde_json::json!({
        "version": client.policy.version,
        "pending": pending,
        "tip": tip,
        "locked_until": locked_until,
    }))
}

/// How many alarms about a client's vaults the feed returns, and how many about the client
/// as a whole.
pub const ALARM_FEED_LEN: u32 = 100;

/// `GET /v1/clients/{id}/alarms`: the latest alarms about the client and its vaults, for
/// its guardians only. Read on a connection of its own: the tower's decisions never wait
/// on it. The owner's own keys are refused: a device opened under the duress code
/// must not learn that its spend was seen (DESIGN §5).
pub(crate) fn alarm_feed(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    id: &str,
) -> Result<Vec<crate::wire::AlarmEntry>, Refusal> {
    let client = client(tower, id)?;
    if !client.guardians.contains(signer) {
        return Err(Refusal::Forbidden("the alarm feed is for the client's guardians".into()));
    }
    let alarms = tower.read_store.lock().expect("read store").client_alarms(id, ALARM_FEED_LEN)?;
    Ok(alarms
        .into_iter()
        .map(|a| crate::wire::AlarmEntry {
            id: a.id,
            kind: a.kind.as_str().to_owned(),
            vault: a.vault,
            client: a.client,
            message: a.message,
        })
        .collect())
}

/// `GET /v1/vaults/{outpoint}`: a vault's state, for its own client's parties.
pub(crate) fn vault_view(
    tower: &Tower,
    signer: &XOnlyPublicKey,
    outpoint: &vigil_policy::bitcoin::OutPoint,
) -> Result<serde_json::Value, Refusal> {
    // Another client's vault is answered as an unknown one: a party of one client must not
    // learn which outpoints are vaults here.
    let unknown = || Refusal::NotFound(format!("vault {outpoint} is not registered for a client of yours"));
    let state = tower.lock();
    let vault = state.watcher.vault(outpoint).ok_or_else(unknown)?;
    if !client(tower, &vault.policy_id).is_ok_and(|c| c.is_party(signer)) {
        return Err(unknown());
    }
    Ok(serde_json::json!({"vault": outpoint.to_string(), "state": vault.state, "tip": state.watcher.tip()}))
}

/// A governance wait is counted in blocks from the tip: not while the tower cannot follow the
/// chain (its backend unreachable, or a reorganisation deeper than it remembers), when the tip
/// may be far behind (a tower started during an outage serves its last recorded one) and
/// `what` would end its wait early. The co-signer sends it again.
fn chain_in_sight(state: &TowerState, what: &str) -> Result<(), Refusal> {
    if state.backend_up && state.reorg_too_deep.is_none() {
        return Ok(());
    }
    Err(Refusal::Unavailable(format!(
        "the tower cannot follow the chain now (its backend is unreachable, or a reorganisation went deeper \
         than it remembers): {what} waits a number of blocks, counted from a tip it cannot check; retry"
    )))
}
