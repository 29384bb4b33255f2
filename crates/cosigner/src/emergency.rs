//! What a household does in an emergency, and what the co-signer does about it: a lockdown
//! (any one party, at once; told to every tower), its early lift (the guardians' quorum,
//! after the governance wait), the owner's heartbeat (a duress one locks down silently and
//! alarms the guardians), and the guardians' panic (gathered here until the quorum signed,
//! then relayed to every tower).

use std::sync::Arc;

use serde::Serialize;
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::Policy;

use crate::error::Refusal;
use crate::orders::TowerOrder;
use crate::service::{alarm, Caller, Cosigner, Role, DURESS_LOCKDOWN_BLOCKS, MAX_LOCKDOWN_BLOCKS};
use crate::store::{kind, Store};
use crate::wire::{self, Heartbeat, HeartbeatAck, KeySignature, Lockdown, LockdownStatus, Signed};

/// Blocks a first lift proposal must leave beyond the governance wait, so that the quorum
/// gathering over a few blocks still meets it (and so do towers a block or two ahead).
pub const LIFT_SLACK_BLOCKS: u32 = 6;

/// Blocks past the earliest a first lift proposal may name (a week): time for the others to
/// sign. No more: a tower holding a lockdown taken after the quorum signed but before the
/// lift reached it cannot tell it from one the lift ends, so a lift far ahead would end
/// lockdowns taken long after it was decided.
pub const LIFT_VOTING_BLOCKS: u32 = 1_008;

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

/// Guardians' signatures over `digest`, gathered across requests under `kind/id`: the ones
/// stored there and `given`, each verified and from a guardian of `policy`, one per guardian.
/// Refused when there is none, stored or given: a proposal no guardian signed (one sent with
/// the owner's key, say) would reach the guardians as if one of them had made it.
pub(crate) fn gather(
    store: &dyn Store,
    policy: &Policy,
    record: (&'static str, &str),
    digest: &vigil_policy::bitcoin::secp256k1::Message,
    given: &[KeySignature],
) -> Result<Gathered, Refusal> {
    vigil_tower::registration::verified_signers(given, digest)?;
    let before = store.get(record.0, record.1)?;
    let is_guardian =
        |s: &KeySignature| policy.guardians.keys.iter().any(|g| g.auth_key().to_string() == s.key);
    let mut all: Vec<KeySignature> = before
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| Refusal::Internal)?
        .unwrap_or_default();
    // Votes kept from before a policy change count only if their signer is still a guardian.
    all.retain(is_guardian);
    let stored = all.len();
    for s in given {
        if !is_guardian(s) {
            return Err(bad(format!("signature by {}: not a guardian of this client", s.key)));
        }
        if !all.iter().any(|a| a.key == s.key) {
            all.push(s.clone());
        }
    }
    if all.is_empty() {
        return Err(bad(
            "signatures: none by a guardian of this client (a guardian proposes, with its signature)",
        ));
    }
    Ok(Gathered { count: all.len() as u32, added: all.len() > stored, signatures: all, before })
}

/// What [`gather`] found.
pub(crate) struct Gathered {
    /// One signature per guardian.
    pub signatures: Vec<KeySignature>,
    /// How many guardians signed.
    pub count: u32,
    /// Whether the request added one: else nothing changes, and nobody is alarmed again (a
    /// guardian's retry after a lost answer, or a copy handed in again).
    pub added: bool,
    /// The record as it was (for the batch).
    pub before: Option<String>,
}

/// How many alarms the guardians' feed returns, beside the latest proposals.
pub const ALARM_FEED_LEN: u32 = 100;
/// The alarms a guardian joins from (see [`Cosigner::alarm_feed`]), and how many of them the
/// feed keeps.
const PROPOSALS: [&str; 2] = ["panic-proposed", "policy-proposed"];
const PROPOSALS_KEPT: u32 = 20;
/// Alarms whose latest stays in the feed however many came since: the owner's key alone can
/// raise a hundred others (restores), and must not push a duress alarm out of view.
const STANDING: [&str; 2] = ["duress", "owner-restored"];

impl Cosigner {
    /// `POST /v1/lockdown`: any owner or guardian freezes the client at once; every tower is
    /// told. A guardian's, while the owner is under duress, is kept quiet (it lengthens the
    /// duress lockdown): one the owner's device could see would tell whoever holds it that
    /// the duress code was typed.
    pub fn lockdown(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<Lockdown>,
    ) -> Result<LockdownStatus, Refusal> {
        let blocks = req.request.blocks;
        if blocks == 0 || blocks > MAX_LOCKDOWN_BLOCKS {
            return Err(bad(format!(
                "blocks: {blocks} is outside 1..={MAX_LOCKDOWN_BLOCKS} (6 blocks an hour)"
            )));
        }
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        let quiet = matches!(caller.role, Role::Guardian(_)) && client.under_duress(tip);
        let ends_before = (client.plain_end(), client.duress_end());
        let (message, until) = if quiet {
            // Longer than the duress lockdown as it holds, a scheduled lift counted.
            if tip + blocks > client.duress_end() {
                client.duress_until = tip + blocks;
                client.new_duress_epoch();
            }
            let message = format!(
                "client {} locked down by {:?} until block {} (tip {tip}), quietly: the owner is under \
                 duress, and whoever holds the owner's device must not see it",
                client.id,
                caller.role,
                client.duress_end()
            );
            (message, client.duress_end())
        } else {
            // Longer than the lockdown as it holds, a lift counted: after an early lift, the
            // first end no longer locks anything.
            if tip + blocks > client.plain_end() {
                client.lockdown_until = tip + blocks;
                client.new_lockdown_epoch();
            }
            let message = format!(
                "client {} locked down by {:?} until block {} (tip {tip}): spends are refused",
                client.id, caller.role, client.lockdown_until
            );
            // Its end as it holds here (a lift counted): a shorter lockdown asked while a
            // lifted one runs must not lock the towers again past the lift.
            (message, client.plain_end())
        };
        // One that ends nothing later changes nothing: no order, no alarm. Nor is more than one
        // a block alarmed per sender, nor a plea for a panic: else whoever holds the owner's key
        // could push a panic proposal out of the guardians' feed, and mail them without end.
        let changed = (client.plain_end(), client.duress_end()) != ends_before;
        if changed {
            Self::queue_order(store, &mut batch, &client.id, lockdown_order(&client.id, until, quiet))?;
            if client.alarm_once_a_block(format!("lockdown by {:?}", caller.role), tip) {
                batch.alarm(alarm(&client.id, "lockdown", message));
            }
        }
        // A guardian's that ends nothing later is still news to the other guardians (one of
        // them reacted: to a duress alarm, say), once a block; the owner's is not.
        let noted = !changed
            && matches!(caller.role, Role::Guardian(_))
            && client.alarm_once_a_block(format!("lockdown by {:?}", caller.role), tip);
        if noted {
            batch.alarm(alarm(
                &client.id,
                "lockdown",
                format!(
                    "{:?} asked to lock client {} down for {blocks} blocks (tip {tip}){}: it is locked down until \
                     block {until} already",
                    caller.role,
                    client.id,
                    if quiet { ", quietly: the owner is under duress" } else { "" }
                ),
            ));
        }
        let plea = req.request.sweep
            && client.alarm_once_a_block(format!("panic-requested by {:?}", caller.role), tip);
        if changed || noted || plea {
            batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
                kind::CLIENT,
                client.id.clone(),
                serde_json::to_string(&client).expect("json"),
            );
        }
        if plea {
            batch.alarm(alarm(
                &client.id,
                "panic-requested",
                format!(
                    "PANIC REQUESTED by {:?} of {}: sweep every vault to the deep vault. The client is locked \
                     down until block {until}. Any guardian proposes the panic with `vigil guardian panic`; the \
                     guardians' quorum signing it sweeps.",
                    caller.role, client.id
                ),
            ));
        }
        store.commit(&batch)?;
        drop(deciding);
        self.push_soon(client.id.clone());
        Ok(LockdownStatus { until_height: until, quiet })
    }

    /// `POST /v1/lockdown/lift`: a guardian's vote to lift the lockdown early; with the
    /// quorum's signatures over the same height (at least the governance wait ahead: a captor
    /// could make guardians vote), it lifts then, here and at every tower.
    pub fn lift(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<wire::LiftLockdown>,
    ) -> Result<LockdownStatus, Refusal> {
        caller.guardian()?;
        let r = &req.request;
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        if !client.locked(tip) && !client.under_duress(tip) {
            return Err(Refusal::Conflict("the client is not locked down".into()));
        }
        // Where the lockdowns end now, a lift counted: what the towers hold too (one lifted
        // before and not locked again ends at its lift there).
        let held = client.plain_end().max(client.duress_end());
        if client.lift_at > 0 && client.duress_lift_at > 0 {
            return Err(Refusal::Conflict(format!(
                "the guardians' quorum lifts this lockdown at block {held} already"
            )));
        }
        // A proposal the chain caught up with is void: the wait counts from the quorum.
        if client.lift_proposed != 0 && client.lift_proposed < tip + self.config.governance_delay_blocks {
            client.lift_proposed = 0;
            client.lift_votes.clear();
        }
        let earliest = tip + self.config.governance_delay_blocks + LIFT_SLACK_BLOCKS;
        if client.lift_proposed == 0 && r.lift_at_height < earliest {
            return Err(bad(format!(
                "lift_at_height {} is sooner than the governance wait allows (block {earliest} at the earliest)",
                r.lift_at_height
            )));
        }
        // A week past the earliest height, or the lowest a lift signed before leaves, if
        // later (see `lift_floor`).
        let floor = client.lift_floor(held);
        let latest = (earliest + LIFT_VOTING_BLOCKS).max(floor);
        if client.lift_proposed == 0 && r.lift_at_height > latest {
            return Err(bad(format!(
                "lift_at_height {} is further ahead than a lift may be proposed (block {latest} at the latest: a \
                 week past the earliest, for the other guardians to sign)",
                r.lift_at_height
            )));
        }
        if r.lockdown_until != held {
            return Err(Refusal::Conflict(format!(
                "the lockdown at hand ends at block {held}, not {}: a lift names the lockdown it ends",
                r.lockdown_until
            )));
        }
        // A first vote fixes the height the others must sign: one past the end would hold every
        // other height off until a longer lockdown came, and lifts nothing.
        if r.lift_at_height >= held {
            return Err(bad(format!(
                "lift_at_height {}: the lockdown ends at block {held} by itself; a lift names an earlier block",
                r.lift_at_height
            )));
        }
        if r.lift_at_height < floor {
            return Err(Refusal::Conflict(format!(
                "the guardians' quorum signed a lift at block {} before: a lift names block {floor} or a later one \
                 (the towers take a sooner one, or one at that height for a lockdown ending no later, for a \
                 replay of it)",
                client.last_lift
            )));
        }
        if client.lift_proposed != 0 && r.lift_at_height != client.lift_proposed {
            return Err(Refusal::Conflict(format!(
                "the guardians are lifting the lockdown at block {}: sign that height",
                client.lift_proposed
            )));
        }
        let digest = vigil_tower::wire::lift_digest(&client.id, r.lift_at_height, held);
        let sig = <[u8; 64]>::from_hex(&r.signature)
            .ok()
            .and_then(|b| schnorr::Signature::from_slice(&b).ok())
            .filter(|s| vigil_policy::secp().verify_schnorr(s, &digest, &caller.key).is_ok())
            .ok_or_else(|| bad("signature: does not verify over this client, heights and your key"))?;
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        let me = caller.key.to_string();
        client.lift_proposed = r.lift_at_height;
        if !client.lift_votes.iter().any(|v| v.key == me) {
            client
                .lift_votes
                .push(wire::KeySignature { key: me, signature: sig.as_ref().to_lower_hex_string() });
        }
        // Only today's guardians count (a policy change may have replaced some).
        let current = current_guardians(caller);
        client.lift_votes.retain(|v| current.contains(&v.key));
        if client.lift_votes.len() as u32 >= caller.policy().guardians.threshold {
            let at = client.lift_proposed;
            // A lift only ever ends a lockdown sooner: one lifted already (the owner's, before
            // a duress code) stays lifted, not held again until this later height.
            let sooner = |lift_at: u32| if lift_at > 0 { lift_at.min(at) } else { at };
            client.lift_at = sooner(client.lift_at);
            client.duress_lift_at = sooner(client.duress_lift_at);
            // Past the last lift, as checked above.
            client.last_lift = at;
            client.last_lift_until = held;
            batch.alarm(alarm(
                &client.id,
                "lockdown-lift",
                format!("the guardians' quorum lifts the lockdown of {} at block {at}", client.id),
            ));
            let order = vigil_tower::wire::LiftLockdown {
                nonce: 0,
                policy_id: client.id.clone(),
                lift_at_height: at,
                lockdown_until: held,
                signatures: client.lift_votes.clone(),
            };
            let subject = format!("lockdown lift {} {at}", client.id);
            Self::queue_order(store, &mut batch, &client.id, order_of("/v1/lockdown/lift", &order, subject))?;
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        drop(deciding);
        self.push_soon(client.id.clone());
        Ok(LockdownStatus { until_height: client.plain_end().max(client.duress_end()), quiet: false })
    }

    /// `POST /v1/heartbeat`: every unlock of the owner's client sends one. A duress one locks
    /// the client down and alarms the guardians, silently: the answer is the same.
    pub fn heartbeat(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<Heartbeat>,
    ) -> Result<HeartbeatAck, Refusal> {
        caller.owner()?;
        let sealed = Vec::<u8>::from_hex(&req.request.sealed)
            .ok()
            .filter(|s| s.len() == wire::HEARTBEAT_LEN)
            .ok_or_else(|| bad(format!("sealed: {} bytes in hex", wire::HEARTBEAT_LEN)))?;
        let key = wire::heartbeat_key(&self.keys.auth_keypair(caller.client.account), &caller.key);
        let token = wire::open_heartbeat(&key, &sealed).map(|t| wire::token_hash(&t));
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        // A lost device's duress code still is one (see `past_duress`), whatever a restore
        // since named as its real code.
        let duress =
            token.as_ref().is_some_and(|t| *t == client.heartbeat_duress || client.past_duress.contains(t));
        if duress || token.as_ref().is_some_and(|t| *t == client.heartbeat_real) {
            client.last_heartbeat = crate::service::now();
        }
        match token {
            Some(_) if duress => {
                tracing::warn!(client = %client.id, "duress heartbeat");
                // A restore confirmed under a duress lockdown that is over counts no more:
                // a new duress lockdown must not make it count again.
                if client.restore_confirmed_under_duress && !client.under_duress(tip) {
                    client.restore_confirmed_under_duress = false;
                    client.restore_unconfirmed = true;
                    client.restore_confirmations.clear();
                }
                if tip + DURESS_LOCKDOWN_BLOCKS > client.duress_end() {
                    client.duress_until = tip + DURESS_LOCKDOWN_BLOCKS;
                    client.new_duress_epoch();
                }
                Self::queue_order(
                    store,
                    &mut batch,
                    &client.id,
                    lockdown_order(&client.id, client.duress_until, true),
                )?;
                batch.alarm(alarm(
                    &client.id,
                    "duress",
                    format!(
                        "DURESS: the owner of {} unlocked with the duress code at block {tip}. The client is \
                         silently locked down; nothing will be co-signed. Do not contact the owner by phone. A \
                         guardian's lockdown now is kept silent too; a panic shows on chain.",
                        client.id
                    ),
                ));
            }
            Some(t) if t == client.heartbeat_real => {}
            _ => {
                if client.alarm_once_a_block("heartbeat-unrecognised".into(), tip) {
                    batch.alarm(alarm(
                        &client.id,
                        "heartbeat-unrecognised",
                        format!("a heartbeat of {} carried no token the co-signer knows", client.id),
                    ));
                }
            }
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        drop(deciding);
        // The quiet lockdown goes to the towers now, not at the next background pass: an
        // unvault the captor makes the owner send right after must meet it.
        if duress {
            self.push_soon(client.id);
        }
        Ok(HeartbeatAck { ok: true })
    }

    /// `POST /v1/panic`: a guardian hands in its signature (or several) over a panic; the
    /// co-signer gathers them, and once the quorum signed relays the panic to every tower now
    /// (and again until each acknowledged), saying which acted.
    pub fn panic(
        &self,
        caller: &Caller,
        req: &Signed<wire::PanicOrder>,
    ) -> Result<wire::PanicRelayed, Refusal> {
        caller.guardian()?;
        let p = &req.request;
        if p.panic.policy_id != caller.client.id {
            return Err(Refusal::Forbidden(
                "panic.policy_id: a guardian acts for its own client only".into(),
            ));
        }
        if <[u8; 32]>::from_hex(&p.panic.id).is_err() {
            return Err(bad("panic.id: 32 random bytes in hex, fresh for each panic"));
        }
        let tip = self.tip()?;
        let window = vigil_tower::wire::MAX_PANIC_WINDOW_BLOCKS;
        if p.panic.not_after_height < tip || p.panic.not_after_height > tip + window {
            return Err(bad(format!(
                "panic.not_after_height must be between the tip {tip} and {window} blocks ahead"
            )));
        }
        let policy = caller.policy();
        let needed = policy.guardians.threshold;
        // The votes are kept under the panic's terms: another window is another panic.
        let votes_id = format!("{}/{}/{}", caller.client.id, p.panic.id, p.panic.not_after_height);
        let (relayed, signatures) = {
            let _deciding = self.decide(&caller.client.id);
            let store = self.store();
            // Relayed once per client: another client's panic under the same id must not stop
            // this one. A bare id is a panic relayed before ids were kept per client.
            let relayed_id = format!("{}/{}", caller.client.id, p.panic.id);
            if store.get(kind::PANIC, &relayed_id)?.is_some()
                || store.get(kind::PANIC, &p.panic.id)?.is_some()
            {
                return Err(Refusal::Conflict(format!("panic {} was already relayed", p.panic.id)));
            }
            let Gathered { signatures, count, added, before } =
                gather(store, policy, (kind::PANIC_VOTES, &votes_id), &p.panic.digest(), &p.signatures)?;
            let mut batch = Self::consume_nonce(store, &caller.key, req)?;
            let proposed = || wire::PanicRelayed {
                approvals: count,
                needed,
                towers: Vec::new(),
                signatures: Vec::new(),
            };
            if !added && count < needed {
                store.commit(&batch)?;
                return Ok(proposed());
            }
            batch.expect(kind::PANIC_VOTES, votes_id.clone(), before);
            if count < needed {
                batch
                    .put(kind::PANIC_VOTES, votes_id, serde_json::to_string(&signatures).expect("json"))
                    .alarm(crate::service::panic_proposed_alarm(
                        &caller.client.id,
                        &p.panic,
                        &signatures,
                        format!(
                            "panic {} of {}: {count} of {needed} guardians signed",
                            p.panic.id, caller.client.id
                        ),
                    ));
                store.commit(&batch)?;
                return Ok(proposed());
            }
            let order = vigil_tower::wire::PanicRequest {
                nonce: 0,
                panic: p.panic.clone(),
                signatures: signatures.clone(),
            };
            Self::queue_order(
                store,
                &mut batch,
                &caller.client.id,
                order_of("/v1/panic", &order, format!("panic {}", p.panic.id)),
            )?;
            batch
                .delete(kind::PANIC_VOTES, votes_id)
                .expect(kind::PANIC, relayed_id.clone(), None)
                .put(kind::PANIC, relayed_id, tip.to_string())
                .alarm(alarm(
                    &caller.client.id,
                    "panic",
                    format!("panic {} of {}: relayed to every tower", p.panic.id, caller.client.id),
                ));
            store.commit(&batch)?;
            (count, signatures)
        };
        let towers = self.push_orders(&caller.client.id)?;
        Ok(wire::PanicRelayed { approvals: relayed, needed, towers, signatures })
    }
}

/// A lockdown every tower of `client` must hold until `until`: quiet only for duress (a
/// plain one cancels at once, as the party who asked for it expects).
pub(crate) fn lockdown_order(client: &str, until: u32, quiet: bool) -> TowerOrder {
    let order = vigil_tower::wire::LockdownRequest {
        nonce: 0,
        policy_id: client.to_owned(),
        until_height: until,
        quiet,
    };
    order_of(crate::orders::LOCKDOWN_PATH, &order, format!("lockdown {client} {until}"))
}

pub(crate) fn order_of<T: Serialize>(path: &str, body: &T, subject: String) -> TowerOrder {
    TowerOrder {
        path: path.into(),
        body: serde_json::to_value(body).expect("json"),
        subject,
        acked: Vec::new(),
        refused: Vec::new(),
        refusing_since: Default::default(),
        only: None,
        spend: None,
    }
}

impl Cosigner {
    /// `POST /v1/deep-vault/sign`: the deep vault's fast path, for any party of the client.
    /// Every input must spend this client's deep vault at the index its co-signer key origin
    /// names, and carry valid signatures of the backup key and of every guardian on the fast
    /// leaf (rebuilt here from the pinned policy): their unanimity is the authority, so a
    /// lockdown or duress does not stop it. The co-signer then signs that leaf only; the
    /// guardians are told.
    pub fn deep_vault_sign(
        &self,
        caller: &Caller,
        req: &Signed<wire::DeepVaultSpend>,
    ) -> Result<wire::DeepVaultSigned, Refusal> {
        use base64::Engine;
        use vigil_policy::bitcoin::hashes::Hash;
        use vigil_policy::bitcoin::psbt::Psbt;
        use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
        use vigil_policy::bitcoin::taproot::{LeafVersion, TapLeafHash};
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut psbt = b64
            .decode(&req.request.psbt)
            .ok()
            .and_then(|b| Psbt::deserialize(&b).ok())
            .ok_or_else(|| bad("psbt: not a base64 PSBT"))?;
        let prevouts: Vec<_> = psbt
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                input.witness_utxo.clone().ok_or_else(|| bad(format!("psbt: input {i} has no witness_utxo")))
            })
            .collect::<Result<_, _>>()?;
        if prevouts.is_empty() {
            return Err(bad("psbt: no inputs"));
        }
        let mine = self.keys.fingerprint();
        let mut cache = SighashCache::new(psbt.unsigned_tx.clone());
        for i in 0..psbt.inputs.len() {
            let input = &psbt.inputs[i];
            let index = input
                .tap_key_origins
                .values()
                .filter(|(_, (fp, _))| *fp == mine)
                .find_map(|(_, (_, path))| match path.as_ref().last() {
                    Some(vigil_policy::bitcoin::bip32::ChildNumber::Normal { index }) => Some(*index),
                    _ => None,
                })
                .ok_or_else(|| bad(format!("psbt: input {i} names no key of this co-signer")))?;
            // The deep vault of the policy its coins were swept under: the current one, or
            // one the client had before.
            let mut made_under = None;
            for compiled in self.client_policies(&caller.client)? {
                let deep = compiled.deep_vault_descriptor(index).map_err(|_| Refusal::Internal)?;
                if prevouts[i].script_pubkey == deep.script_pubkey() {
                    made_under = Some(compiled);
                    break;
                }
            }
            let made_under = made_under.ok_or_else(|| {
                bad(format!("psbt: input {i} does not spend this client's deep vault (index {index})"))
            })?;
            let leaves = made_under.deep_vault_leaves(index).map_err(|_| Refusal::Internal)?;
            let leaf = TapLeafHash::from_script(&leaves.fast, LeafVersion::TapScript);
            let sighash = cache
                .taproot_script_spend_signature_hash(
                    i,
                    &Prevouts::All(&prevouts),
                    leaf,
                    TapSighashType::Default,
                )
                .map_err(|e| bad(format!("psbt: input {i}: {e}")))?;
            let msg = vigil_policy::bitcoin::secp256k1::Message::from_digest(sighash.to_byte_array());
            for key in &leaves.fast_signers {
                let valid = psbt.inputs[i].tap_script_sigs.get(&(*key, leaf)).is_some_and(|sig| {
                    sig.sighash_type == TapSighashType::Default
                        && vigil_policy::secp().verify_schnorr(&sig.signature, &msg, key).is_ok()
                });
                if !valid {
                    return Err(Refusal::Forbidden(format!(
                        "input {i}: the fast path needs valid signatures of the backup key and of every guardian; {key} has none"
                    )));
                }
            }
            // Only the fast leaf gets the co-signer's signature, and only with its key there.
            psbt.inputs[i].tap_key_origins.retain(|key, (_, (fp, _))| *fp != mine || *key == leaves.cosigner);
            for (key, (hashes, _)) in psbt.inputs[i].tap_key_origins.iter_mut() {
                if *key == leaves.cosigner {
                    hashes.retain(|h| *h == leaf);
                }
            }
            // Over the whole transaction, on that leaf only: no ECDSA, no key path.
            psbt.inputs[i].sighash_type = None;
            psbt.inputs[i].bip32_derivation.clear();
        }
        let _deciding = self.decide(&caller.client.id);
        let store = self.store();
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        let kept: Vec<_> =
            psbt.inputs.iter_mut().map(|i| (i.tap_internal_key.take(), i.tap_merkle_root.take())).collect();
        self.keys.sign_psbt(caller.client.account, &mut psbt);
        for (input, (key, root)) in psbt.inputs.iter_mut().zip(kept) {
            (input.tap_internal_key, input.tap_merkle_root) = (key, root);
        }
        let total: u64 = prevouts.iter().map(|p| p.value.to_sat()).sum();
        batch.alarm(alarm(
            &caller.client.id,
            "deep-vault-returned",
            format!(
                "the deep vault's fast path of {} was co-signed ({total} sat, {} input(s)), handed in by {:?}",
                caller.client.id,
                prevouts.len(),
                caller.role
            ),
        ));
        store.commit(&batch)?;
        Ok(wire::DeepVaultSigned { psbt: b64.encode(psbt.serialize()) })
    }
}

impl Cosigner {
    /// `POST /v1/restore/policy`: the pinned policy for a lost device's owner, found by the
    /// id's first 16 hex characters and the owner's request key, which signed the request.
    /// It changes nothing; the device still checks the policy's id against what was written.
    pub fn fetch_policy(&self, req: &wire::PolicyFetch) -> Result<wire::FetchedPolicy, Refusal> {
        let prefix = &req.id_prefix;
        if prefix.len() != 16 || !prefix.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
            return Err(bad("id_prefix: the policy id's first 16 hex characters, lower case"));
        }
        crate::service::fresh(req.time)?;
        let key: vigil_policy::bitcoin::key::XOnlyPublicKey =
            req.owner_key.parse().map_err(|_| bad("owner_key: an x-only public key in hex"))?;
        let signature = <[u8; 64]>::from_hex(&req.signature)
            .ok()
            .and_then(|b| schnorr::Signature::from_slice(&b).ok())
            .ok_or_else(|| bad("signature: 64-byte hex"))?;
        let digest = wire::PolicyFetch::digest(prefix, req.time);
        if vigil_policy::secp().verify_schnorr(&signature, &digest, &key).is_err() {
            return Err(Refusal::Unauthorized("signature: does not verify for owner_key".into()));
        }
        let mut found = Vec::new();
        for (_, text) in self.store().list(kind::CLIENT, prefix)? {
            let client: crate::service::ClientRecord =
                serde_json::from_str(&text).map_err(|e| crate::error::StoreError::Corrupt(e.to_string()))?;
            // The owner as the policy names it now (the key `POST /v1/restore` takes next).
            let owner = vigil_policy::Policy::from_toml(&client.policy)
                .is_ok_and(|p| p.owner.keys.iter().any(|k| k.auth_key() == key));
            if !owner {
                continue;
            }
            // The policy as pinned (the id the owner wrote down names it), not as changed
            // since: the owner's wallet follows the guardians' changes from it. (A record from
            // before past policies were kept has the current one only.)
            let pinned = client
                .past_policies
                .iter()
                .find(|t| vigil_tower::policy_id(t) == client.id)
                .cloned()
                .unwrap_or_else(|| client.policy.clone());
            found.push((client.id, pinned));
        }
        // Pinning keeps the 16 characters unique; were two found, neither could be trusted.
        match <[_; 1]>::try_from(found) {
            Ok([(client, policy)]) => {
                tracing::info!(%client, "policy fetched for a restore");
                Ok(wire::FetchedPolicy { client, policy })
            }
            // One answer for "no such client" and "not its owner": the prefix alone tells nothing.
            Err(_) => {
                Err(Refusal::NotFound(format!("no client whose id begins {prefix} has this owner key")))
            }
        }
    }

    /// `POST /v1/restore`: an owner's new device replaces the heartbeat hashes (any owner key
    /// of the pinned policy signs it, with no recent heartbeat: the old device is gone). The
    /// guardians are always alarmed: a captor who forced a restore with codes of their own
    /// is seen. Answers with the client's vaults.
    pub fn restore(&self, caller: &Caller, req: &Signed<wire::Restore>) -> Result<wire::Restored, Refusal> {
        caller.owner()?;
        let r = &req.request;
        for (name, h) in [("heartbeat_real", &r.heartbeat_real), ("heartbeat_duress", &r.heartbeat_duress)] {
            if <[u8; 32]>::from_hex(h).is_err() {
                return Err(bad(format!("{name}: a sha256 in hex (64 characters)")));
            }
        }
        if r.heartbeat_real == r.heartbeat_duress {
            return Err(bad("heartbeat_real and heartbeat_duress must differ"));
        }
        let tip = self.tip()?;
        let _deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        client.heartbeat_real = r.heartbeat_real.clone();
        let replaced = std::mem::replace(&mut client.heartbeat_duress, r.heartbeat_duress.clone());
        if !client.past_duress.contains(&replaced) {
            client.past_duress.push(replaced);
            let over = client.past_duress.len().saturating_sub(crate::service::PAST_DURESS_KEPT);
            client.past_duress.drain(..over);
        }
        client.restore_unconfirmed = true;
        client.restore_confirmed_under_duress = false;
        client.restore_confirmations.clear();
        client.restores += 1;
        client.restored_at_height = tip;
        let mut vaults = Vec::new();
        for (_, outpoint) in store.list(kind::VAULT_INDEX, &format!("{}/", client.id))? {
            if let Some(v) = crate::ceremony::vault_record(store, &outpoint)? {
                vaults.push(wire::RestoredVault {
                    vault: v.registration.vault.clone(),
                    funding: (v.state == "protected").then(|| v.funding.clone()),
                    unvault: v.registration.unvault.clone(),
                    state: v.state.clone(),
                    once_xpubs: v.once_xpubs.clone(),
                });
            }
        }
        batch
            .expect(kind::CLIENT, client.id.clone(), Some(before))
            .put(kind::CLIENT, client.id.clone(), serde_json::to_string(&client).expect("json"))
            .alarm(alarm(
                &client.id,
                "owner-restored",
                format!(
                    "the owner's wallet of {} was restored on a new device (restore {} at block {}): the old \
                     device's unlock code no longer counts (its duress code still does), and every vault \
                     spend waits for your approval until you confirm the restore. Speak to the owner first; \
                     then `vigil guardian confirm-restore`. If the owner did not tell you, lock the client \
                     down (`vigil guardian lockdown`).",
                    client.id, client.restores, client.restored_at_height
                ),
            ));
        store.commit(&batch)?;
        vaults.sort_by_key(|v| v.vault.index);
        Ok(wire::Restored { vaults, restore: client.restores })
    }

    /// `POST /v1/restore/confirm`: a guardian confirms the owner's restore (having spoken to
    /// the owner); once the quorum has, vault spends within the limits are approved at once
    /// again. Under a duress lockdown it counts only while that holds (see
    /// `ClientRecord::restore_confirmed_under_duress`).
    pub fn confirm_restore(
        &self,
        caller: &Caller,
        req: &Signed<wire::ConfirmRestore>,
    ) -> Result<wire::RestoreConfirmation, Refusal> {
        let g = caller.guardian()?;
        let needed = caller.policy().guardians.threshold;
        let _deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let tip = self.tip()?;
        if !client.restore_held(tip) {
            return Err(Refusal::Conflict("no restore of the owner's wallet waits for confirmation".into()));
        }
        // Confirmed under a duress lockdown that is over: confirmed anew, from none.
        if !client.restore_unconfirmed {
            client.restore_unconfirmed = true;
            client.restore_confirmed_under_duress = false;
            client.restore_confirmations.clear();
        }
        if req.request.restore > client.restores {
            return Err(Refusal::Conflict(format!(
                "there is no restore {}: the last is restore {} at block {}",
                req.request.restore, client.restores, client.restored_at_height
            )));
        }
        if req.request.restore != client.restores {
            return Err(Refusal::Conflict(format!(
                "restore {} is not the latest: the wallet was restored again since (restore {} at block {}); \
                 speak to the owner again before you confirm",
                req.request.restore, client.restores, client.restored_at_height
            )));
        }
        // Only today's guardians count, as for a lift.
        let current = current_guardians(caller);
        client.restore_confirmations.retain(|k| current.contains(k));
        let me = caller.key.to_string();
        let again = client.restore_confirmations.contains(&me);
        if !again {
            client.restore_confirmations.push(me);
        }
        let confirmations = client.restore_confirmations.len() as u32;
        if again && confirmations < needed {
            return Err(Refusal::Conflict("you confirmed this restore already".into()));
        }
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        if confirmations >= needed {
            client.restore_unconfirmed = false;
            client.restore_confirmed_under_duress = client.under_duress(tip);
            let counts = if client.restore_confirmed_under_duress {
                "while the duress lockdown holds, the owner's device sees it confirmed (nothing is co-signed); \
                 once it is over the restore waits for your confirmation again"
            } else {
                "vault spends within the limits are approved at once again"
            };
            batch.alarm(alarm(
                &client.id,
                "restore-confirmed",
                format!(
                    "the guardians' quorum confirmed the restore of {}'s wallet (last: guardian {g}): {counts}",
                    client.id
                ),
            ));
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        Ok(wire::RestoreConfirmation { confirmations, needed, held: client.restore_unconfirmed })
    }

    /// `GET /v1/alarms`: the latest alarms about the caller's client (duress, lockdowns,
    /// panics...), for its guardians only: a device opened under the duress code must not
    /// see its own alarm.
    pub fn alarm_feed(&self, caller: &Caller) -> Result<Vec<wire::CosignerAlarm>, Refusal> {
        caller.guardian()?;
        let store = self.store();
        let mut entries = store.client_alarms(&caller.client.id, None, ALARM_FEED_LEN)?;
        // The latest proposals stay in it however many alarms came since (a guardian joins a
        // panic or a policy change from its alarm, and the owner's key alone can raise many),
        // and so does the latest duress alarm and restore.
        let mut kept = store.client_alarms(&caller.client.id, Some(&PROPOSALS), PROPOSALS_KEPT)?;
        for kind in STANDING {
            kept.extend(store.client_alarms(&caller.client.id, Some(&[kind]), 1)?);
        }
        for alarm in kept {
            if !entries.iter().any(|e| e.id == alarm.id) {
                entries.push(alarm);
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.id));
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let body: serde_json::Value = serde_json::from_str(&e.body).ok()?;
                Some(wire::CosignerAlarm {
                    id: e.id,
                    kind: body["kind"].as_str()?.to_owned(),
                    message: body["message"].as_str().unwrap_or_default().to_owned(),
                    time: body["time"].as_u64().unwrap_or(0),
                    panic: serde_json::from_value(body["panic"].clone()).ok(),
                    policy: body["policy"].as_str().map(str::to_owned),
                })
            })
            .collect())
    }

    /// `GET /v1/lockdown`: the lockdown at hand and its lift, to a guardian only.
    pub fn lockdown_state(&self, caller: &Caller) -> Result<wire::LockdownState, Refusal> {
        caller.guardian()?;
        let tip = self.tip()?;
        let client = Self::client(self.store(), &caller.client.id)?.ok_or(Refusal::Internal)?;
        let wait = self.config.governance_delay_blocks;
        // As `lift` judges it: a proposal the chain caught up with is void.
        let proposed = client.lift_proposed >= tip + wait;
        let current = current_guardians(caller);
        // As `lift` names it: where the lockdowns end now, a lift counted.
        let ends_at = client.plain_end().max(client.duress_end());
        Ok(wire::LockdownState {
            tip,
            locked: client.locked(tip) || client.under_duress(tip),
            duress: client.under_duress(tip),
            lockdown_until: ends_at,
            lifted_at: if client.lift_at > 0 && client.duress_lift_at > 0 { ends_at } else { 0 },
            lift_proposed: if proposed { client.lift_proposed } else { 0 },
            signatures: if proposed {
                client.lift_votes.iter().filter(|v| current.contains(&v.key)).count() as u32
            } else {
                0
            },
            needed: caller.policy().guardians.threshold,
            governance_delay_blocks: wait,
            earliest_lift: (tip + wait + LIFT_SLACK_BLOCKS).max(client.lift_floor(ends_at)),
        })
    }

    /// `GET /v1/restore`: the last restore, for a guardian about to confirm it.
    pub fn restore_state(&self, caller: &Caller) -> Result<wire::RestoreState, Refusal> {
        caller.guardian()?;
        let tip = self.tip()?;
        let client = Self::client(self.store(), &caller.client.id)?.ok_or(Refusal::Internal)?;
        let current = current_guardians(caller);
        // Confirmed under a duress lockdown that is over: waiting for confirmations anew.
        let anew = !client.restore_unconfirmed && client.restore_held(tip);
        let counted = if anew { &[] } else { client.restore_confirmations.as_slice() };
        Ok(wire::RestoreState {
            restore: client.restores,
            restored_at_height: client.restored_at_height,
            unconfirmed: client.restore_held(tip),
            confirmations: counted.iter().filter(|k| current.contains(k)).count() as u32,
            needed: caller.policy().guardians.threshold,
        })
    }
}

/// The current policy's guardians' auth keys, hex: only their votes count (a policy change
/// may have removed a guardian or rotated a key).
fn current_guardians(caller: &Caller) -> Vec<String> {
    caller.policy().guardians.keys.iter().map(|k| k.auth_key().to_string()).collect()
}
