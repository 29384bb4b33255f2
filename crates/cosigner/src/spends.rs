//! Spend requests: the exact spend of a vault's unvault output, judged against the client's
//! pinned policy; guardians' votes; the approval pushed to every tower before "approved" is
//! answered; and, after DELAY, the co-signer's signature of exactly the approved spend.
//!
//! A standard vault's spend within the per-spend limit, the velocity budget (every approval
//! given without the guardians in the rolling window counts) and the whitelist is approved at
//! once; anything else waits for the guardians' quorum, and one guardian's denial is final.
//! Under duress every answer has the shape and size of a normal session's, while nothing will
//! be co-signed.

use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::consensus::encode::serialize_hex;
use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::{Address, OutPoint, Sequence};
use vigil_policy::{CompiledPolicy, SpendInput};
use vigil_tower::wire::{Approval, KeySignature, RegisterApproval};

use crate::ceremony::{vault_record, vault_stored};
use crate::error::{Refusal, StoreError};
use crate::orders::TowerOrder;
use crate::service::{alarm, Caller, ClientRecord, Cosigner, Role};
use crate::store::{kind, Batch, Store};
use crate::wire::{self, Signed, SignedSpend, SpendRequest, SpendStatus, TowerReport, Vote};

/// The towers' endpoint an approval is registered at.
pub(crate) const APPROVALS_PATH: &str = "/v1/approvals";

/// Blocks past an approval's expiry before the chain is taken to show its unvault will never
/// confirm in time: a reorg this deep is not expected.
pub(crate) const LAPSE_MARGIN: u32 = 6;

/// A spend request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// Its number within the client.
    pub id: u64,
    /// The client.
    pub client: String,
    /// The vault's parameters.
    pub vault: vigil_tower::wire::VaultParams,
    /// "waiting", "approved", "denied", or "expired" (it lapsed unused, and a later request
    /// of its vault took its place).
    pub state: String,
    /// The spend PSBT with every signature gathered so far (base64).
    pub psbt: String,
    /// What leaves the vault, sat.
    pub amount_sat: u64,
    /// Where it goes.
    pub destinations: Vec<String>,
    /// Guardian approvals needed (0: the co-signer alone).
    pub needed: u32,
    /// The approval's terms.
    pub approval: Approval,
    /// Guardians' signatures over the terms.
    pub signatures: Vec<KeySignature>,
    /// The guardian who denied it.
    pub denied_by: Option<String>,
    /// The tip when it was approved (velocity counts from here).
    pub approved_height: Option<u32>,
    /// Requested while the client was locked down (a lockdown the owner knows of).
    pub under_lockdown: bool,
    /// Requested under duress: shown to guardians only, never in the owner's answers.
    #[serde(default)]
    pub under_duress: bool,
    /// Towers' acknowledgements of the approval.
    pub towers: Vec<TowerReport>,
    /// The vault's DELAY (that of the policy it was made under), blocks; 0 in records from
    /// before it was kept.
    #[serde(default)]
    pub delay: u32,
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

fn spend_id(client: &str, id: u64) -> String {
    format!("{client}/{id:012}")
}

fn decode_psbt(field: &str, text: &str) -> Result<Psbt, Refusal> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|b| Psbt::deserialize(&b).ok())
        .ok_or_else(|| bad(format!("{field}: not a base64 PSBT")))
}

fn encode_psbt(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

impl SpendRecord {
    /// The vault's DELAY, or `fallback` for a record from before it was kept.
    fn delay_or(&self, fallback: u32) -> u32 {
        if self.delay > 0 {
            self.delay
        } else {
            fallback
        }
    }

    /// Whether it waited for its guardians past its terms' expiry: no tower takes an expired
    /// approval, so no vote can approve it any more.
    pub(crate) fn expired_waiting(&self, tip: u32) -> bool {
        self.state == "waiting" && tip >= self.approval.expiry_height
    }

    /// The request as `viewer` may see it at `tip`: a guardian learns it came under duress
    /// (as a lockdown); the owner's view is that of a normal session.
    fn status(&self, viewer: Role, fallback_delay: u32, tip: u32) -> SpendStatus {
        let guardian = matches!(viewer, Role::Guardian(_));
        let delay = self.delay_or(fallback_delay);
        SpendStatus {
            id: self.id,
            vault: self.vault.clone(),
            state: if self.expired_waiting(tip) { "expired".into() } else { self.state.clone() },
            vault_outpoint: self.approval.vault_outpoint.clone(),
            spend_txid: self.approval.spend_txid.clone(),
            amount_sat: self.amount_sat,
            destinations: self.destinations.clone(),
            psbt: self.psbt.clone(),
            policy_version: self.approval.policy_version,
            approvals: self.signatures.len() as u32,
            approvals_needed: self.needed,
            spendable_after_blocks: delay,
            approval: self.approval.clone(),
            under_lockdown: self.under_lockdown || (guardian && self.under_duress),
            towers: self.towers.clone(),
        }
    }
}

/// A client's spend requests as listed from the store (key, body).
fn parse_spends(listed: &[(String, String)]) -> Result<Vec<SpendRecord>, Refusal> {
    listed.iter().map(|(_, body)| serde_json::from_str(body).map_err(|_| Refusal::Internal)).collect()
}

/// Whether `s`, once approved, counts against velocity: all but a guarded vault's spend the
/// guardians' quorum approved, whose spend leaf needs them on chain. A standard vault's leaf
/// needs only the owner and the co-signer (who, compromised, could sign another spend than
/// the approved one), so the towers count it, approved by the quorum or not.
fn counts_for_velocity(s: &SpendRecord) -> bool {
    s.needed == 0 || s.vault.kind != "guarded"
}

/// Blocks a tower's node may lag the co-signer's: an unvault is counted for velocity that
/// much longer than the towers count it, so that one approved at the window's edge is not
/// cancelled at a tower a block behind.
const TOWER_LAG: u32 = 1;

/// Whether releasing `amount` now would go over the velocity budget `limit`, beside `held`
/// ([`Cosigner::velocity_held`]: each unvault's height at the towers, oldest first); if so,
/// the first tip from which it would not. A standard vault above the budget (a limit lowered
/// since it was made) fits only alone in its window.
fn over_velocity(held: &[(u32, u64)], window: u32, amount: u64, limit: u64) -> Option<u32> {
    let mut used: u64 = held.iter().map(|(_, a)| a).sum();
    let mut from = None;
    for (h, a) in held {
        if used == 0 || used + amount <= limit {
            break;
        }
        used -= a;
        from = Some(h + window + TOWER_LAG);
    }
    from
}

/// Why a spend of a standard vault is refused over the velocity budget.
fn over_velocity_refusal(
    what: &str,
    amount: u64,
    held: &[(u32, u64)],
    allowance: &vigil_policy::config::Allowance,
    from: u32,
) -> Refusal {
    let used: u64 = held.iter().map(|(_, a)| a).sum();
    Refusal::Conflict(format!(
        "{what}: its {amount} sat would go over the velocity budget ({used} of {} sat released in the last {} \
         blocks), and the towers would cancel its unvault even with the guardians' approval (a standard vault's \
         spend leaf does not need them): ask again from block {from}, or spend from a guarded vault",
        allowance.velocity_limit_sat, allowance.velocity_window_blocks
    ))
}

impl Cosigner {
    /// What the approvals that count against velocity released in the window the towers judge
    /// an unvault sent now by, oldest first: each vault once (its coins leave it once, whatever
    /// approvals it had; one may have lapsed), dated as the towers date its unvault. A tower
    /// counts an unvault from the height it confirmed at (from the next block while it waits in
    /// the mempool) for `window` blocks after, that one included; one sent now is seen at
    /// `tip + 1` at the earliest. An approval's unvault comes a block after it at the earliest;
    /// one whose window by that measure is over is looked up on the chain while its unvault may
    /// still confirm within it (a slow confirmation dates it later).
    fn velocity_held(
        &self,
        spends: &[SpendRecord],
        window: u32,
        tip: u32,
        asked: &str,
    ) -> Result<Vec<(u32, u64)>, Refusal> {
        // Counted while `date + window + TOWER_LAG >= tip + 1`: a tower whose node is a block
        // behind sees the new unvault at `tip`, not `tip + 1`.
        let out = |date: u32| date + window + TOWER_LAG <= tip;
        let mut released: std::collections::BTreeMap<&str, (u32, u64)> = Default::default();
        // The vault asked for is not counted beside itself (an earlier approval of it lapsed,
        // or its unvault confirmed too late for it): its coins leave it once.
        for s in spends.iter().filter(|s| counts_for_velocity(s) && s.approval.vault_outpoint != asked) {
            let Some(approved) = s.approved_height else { continue };
            let mut date = approved + 1;
            if out(date) {
                if tip >= s.approval.expiry_height.saturating_add(LAPSE_MARGIN + window + TOWER_LAG) {
                    continue;
                }
                let unvault = vigil_policy::bitcoin::Txid::from_str(&s.approval.unvault_txid)
                    .map_err(|_| Refusal::Internal)?;
                let vault = OutPoint::from_str(&s.approval.vault_outpoint).map_err(|_| Refusal::Internal)?;
                date = match self.chain.transaction_info(&unvault)? {
                    Some((_, Some(confirmed))) => confirmed,
                    // Waiting in the mempool: it counts from the block that confirms it.
                    Some((_, None)) => tip + 1,
                    // Not sent: it counts while it still may be.
                    None if tip < s.approval.expiry_height => tip + 1,
                    // Sent (the vault's output is spent), but this backend cannot find it (a
                    // node without a transaction index): counted, its height unknown.
                    None if self.chain.unspent_output(&vault)?.is_none() => tip + 1,
                    None => continue,
                };
                if out(date) {
                    continue;
                }
            }
            let held = released.entry(s.approval.vault_outpoint.as_str()).or_insert((date, s.amount_sat));
            held.0 = held.0.max(date);
        }
        let mut held: Vec<(u32, u64)> = released.into_values().collect();
        held.sort();
        Ok(held)
    }

    fn spend(&self, store: &dyn Store, client: &str, id: u64) -> Result<SpendRecord, Refusal> {
        Ok(self.spend_stored(store, client, id)?.0)
    }

    /// A spend request and its text as stored, which a write expects ([`Cosigner::client_stored`]).
    fn spend_stored(
        &self,
        store: &dyn Store,
        client: &str,
        id: u64,
    ) -> Result<(SpendRecord, String), Refusal> {
        let text = store
            .get(kind::SPEND, &spend_id(client, id))?
            .ok_or_else(|| Refusal::NotFound(format!("no spend request {id} of this client")))?;
        let record = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((record, text))
    }

    /// `POST /v1/spends`.
    pub fn request_spend(&self, caller: &Caller, req: &Signed<SpendRequest>) -> Result<SpendStatus, Refusal> {
        self.unlocked_owner(caller)?;
        let r = &req.request;
        let (vault, vault_before) = match vault_stored(self.store(), &r.vault_outpoint)? {
            Some((v, text)) if v.client == caller.client.id && v.state == "protected" => (v, text),
            Some((v, _)) if v.client == caller.client.id => {
                return Err(Refusal::Conflict(format!(
                    "vault {} is not protected by every tower yet",
                    r.vault_outpoint
                )))
            }
            _ => return Err(Refusal::NotFound(format!("no vault {} of this client", r.vault_outpoint))),
        };
        // The vault's scripts and DELAY are those of the policy it was made under; the
        // approval rules below are the policy's as it stands now.
        let made_under = self.vault_policy(&caller.client, &vault)?;
        let delay = made_under.policy().delays.unvault as u32;
        let unvault = vault.unvault()?;
        let unvault_out = OutPoint { txid: unvault.compute_txid(), vout: 0 };
        let given = decode_psbt("psbt", &r.psbt)?;
        let tx = &given.unsigned_tx;
        if tx.input.len() != 1 || tx.input[0].previous_output != unvault_out {
            return Err(bad(format!(
                "psbt: a vault spend has exactly one input, the unvault's output {unvault_out}"
            )));
        }
        if tx.input[0].sequence != Sequence::from_height(delay as u16) {
            return Err(bad(format!(
                "psbt: the input's sequence must be the vault's DELAY ({delay} blocks, from the policy it was made under)"
            )));
        }
        if tx.output.is_empty() {
            return Err(bad("psbt: no outputs"));
        }
        // Our own PSBT of the same transaction, from our records: only the owner's
        // signatures are taken from theirs.
        let plan = vault.plan()?;
        let input = SpendInput {
            outpoint: unvault_out,
            txout: unvault.output[0].clone(),
            descriptor: made_under.unvault_descriptor(&plan).map_err(|_| Refusal::Internal)?,
            sequence: tx.input[0].sequence,
        };
        let mut psbt =
            vigil_policy::spend_psbt(&[input], tx.output.clone()).map_err(|e| bad(e.to_string()))?;
        if psbt.unsigned_tx != *tx {
            return Err(bad(
                "psbt: its transaction is not a plain spend of the unvault output (version, locktime)",
            ));
        }
        // Without the owner's signatures the spend could never complete once its unvault is
        // out: refused now, not at DELAY. Only those are kept from what the client sent.
        let mut candidate = psbt.clone();
        candidate.inputs[0].tap_script_sigs.clone_from(&given.inputs[0].tap_script_sigs);
        let owner =
            made_under.owner_spend_signatures(&plan, &candidate, 0).map_err(|e| bad(format!("psbt: {e}")))?;
        if !owner.enough() {
            return Err(bad(format!(
                "psbt: the owner's signatures on the spend leaf: {} valid of the {} needed",
                owner.valid.len(),
                owner.needed
            )));
        }
        psbt.inputs[0].tap_script_sigs.extend(owner.valid);
        let spend_txid = tx.compute_txid();
        let amount_sat = unvault.output[0].value.to_sat();
        let destinations: Vec<String> = tx
            .output
            .iter()
            .map(|o| {
                Address::from_script(&o.script_pubkey, self.network)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| o.script_pubkey.to_hex_string())
            })
            .collect();
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (client, client_before) =
            Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        // A replayed request is refused before anything else is looked at.
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        // The client's requests, read once: one request per vault (the same spend again,
        // signed anew, is the same request) until it is denied or lapses, and the velocity
        // they used.
        let listed = store.list(kind::SPEND, &format!("{}/", client.id))?;
        let spends = parse_spends(&listed)?;
        let mut lapsed = Vec::new();
        for (s, (key, body)) in spends.iter().zip(&listed) {
            if s.approval.vault_outpoint != r.vault_outpoint
                || ["denied", "expired"].contains(&s.state.as_str())
            {
                continue;
            }
            if self.lapsed(s, tip)? {
                lapsed.push((s, key, body));
                continue;
            }
            if s.approval.spend_txid == spend_txid.to_string() {
                store.commit(&batch)?;
                return Ok(s.status(caller.role, delay, tip));
            }
            return Err(Refusal::Conflict(format!(
                "vault {} already has spend request {} (of another transaction); one spend per vault until it \
                 is denied or lapses unused (its approval expires at block {})",
                r.vault_outpoint, s.id, s.approval.expiry_height
            )));
        }
        let locked = client.locked(tip);
        let duress = client.under_duress(tip);
        if locked {
            return Err(Refusal::Forbidden(format!(
                "the client is locked down until block {}: spends are refused",
                client.plain_end()
            )));
        }
        // Judged by the policy as it stands now, under the client's lock (a change may have
        // committed since the request was authenticated; a due one counts already).
        let mut current = client.clone();
        current.apply_due(tip);
        let now_compiled = self.compiled(&current)?;
        let policy = now_compiled.policy();
        let allowance = &policy.allowance;
        let window = allowance.velocity_window_blocks;
        let held = self.velocity_held(&spends, window, tip, &r.vault_outpoint)?;
        if !vault.guarded() {
            if let Some(from) = over_velocity(&held, window, amount_sat, allowance.velocity_limit_sat) {
                return Err(over_velocity_refusal(
                    "a spend of this standard vault",
                    amount_sat,
                    &held,
                    allowance,
                    from,
                ));
            }
        }
        let used: u64 = held.iter().map(|(_, a)| a).sum();
        let whitelisted = allowance.whitelist.is_empty()
            || tx
                .output
                .iter()
                .all(|o| allowance.whitelist.iter().any(|a| a.script_pubkey() == o.script_pubkey));
        let alone = !client.restore_held(tip)
            && !vault.guarded()
            && amount_sat <= allowance.spend_limit_sat
            && used + amount_sat <= allowance.velocity_limit_sat
            && whitelisted;
        // A guarded vault's spend leaf needs its own policy's quorum of guardians' keys.
        let needed = match (alone, vault.guarded()) {
            (true, _) => 0,
            (false, true) => policy.guardians.threshold.max(made_under.policy().guardians.threshold),
            (false, false) => policy.guardians.threshold,
        };
        if vault.guarded() && needed > 0 {
            // Only today's guardians vote, and only the vault's own can sign its leaf: with
            // too few of both, the request could never be approved. Say so now.
            let its_own = made_under.guardian_auth_keys();
            let shared =
                now_compiled.guardian_auth_keys().iter().filter(|k| its_own.contains(k)).count() as u32;
            if shared < needed {
                return Err(Refusal::Conflict(format!(
                    "this guarded vault was made under policy version {}: only {shared} of its guardians are \
                     guardians today, and its spend needs {needed} of them; a policy change bringing enough of \
                     them back lets it be spent",
                    made_under.policy().version
                )));
            }
        }
        let approval = Approval {
            vault_outpoint: r.vault_outpoint.clone(),
            unvault_txid: unvault_out.txid.to_string(),
            spend_txid: spend_txid.to_string(),
            policy_version: policy.version,
            expiry_height: tip + self.config.approval_expiry_blocks,
            counter: vault.next_counter,
        };
        let mut record = SpendRecord {
            id: client.next_spend,
            client: client.id.clone(),
            vault: vault.registration.vault.clone(),
            state: if alone { "approved".into() } else { "waiting".into() },
            psbt: encode_psbt(&psbt),
            amount_sat,
            destinations,
            needed,
            approval,
            signatures: Vec::new(),
            denied_by: None,
            approved_height: alone.then_some(tip),
            under_lockdown: locked,
            under_duress: duress,
            towers: Vec::new(),
            delay,
        };
        // The lapsed request is over: no vote approves it, and what the towers hold of it gives
        // way to this one's higher counter.
        for (s, key, body) in lapsed {
            let over = SpendRecord { state: "expired".into(), ..s.clone() };
            batch.expect(kind::SPEND, key.clone(), Some(body.clone())).put(
                kind::SPEND,
                key.clone(),
                serde_json::to_string(&over).expect("json"),
            );
        }
        if alone {
            self.queue_approval(store, &mut batch, &client, &made_under, &mut record, tip)?;
        }
        let mut next = client.clone();
        next.next_spend += 1;
        let mut vault_next = vault.clone();
        vault_next.next_counter += 1;
        batch
            .expect(kind::CLIENT, client.id.clone(), Some(client_before))
            .put(kind::CLIENT, client.id.clone(), serde_json::to_string(&next).expect("json"))
            .expect(kind::VAULT, r.vault_outpoint.clone(), Some(vault_before))
            .put(kind::VAULT, r.vault_outpoint.clone(), serde_json::to_string(&vault_next).expect("json"))
            .put(kind::SPEND, spend_id(&client.id, record.id), serde_json::to_string(&record).expect("json"));
        if !alone {
            batch.alarm(alarm(
                &client.id,
                "approval-needed",
                format!(
                    "spend request {} of {}: {} sat from vault {} to {}{}; it needs {needed} guardian approvals",
                    record.id,
                    client.id,
                    amount_sat,
                    r.vault_outpoint,
                    record.destinations.join(", "),
                    if client.restore_held(tip) {
                        " (the owner's wallet was restored on a new device and you have not confirmed it yet)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if duress {
            batch.alarm(alarm(
                &client.id,
                "duress-spend-request",
                format!("under duress, spend request {} of {amount_sat} sat from vault {} was made; it will never be co-signed", record.id, r.vault_outpoint),
            ));
        }
        store.commit(&batch)?;
        drop(deciding);
        if alone {
            return self.push_approval(&client, record.id, delay, caller.role);
        }
        Ok(record.status(caller.role, delay, tip))
    }

    /// Whether `s` (waiting or approved) can no longer lead to its spend, so that its vault
    /// may be asked for again: its terms expired (no tower takes them from then on) before
    /// the guardians' quorum, or before its unvault confirmed (the co-signer signs no spend
    /// of an unvault confirmed later). A later request of the same vault gets a higher
    /// counter, which the towers take in its place. An approval is judged only from what the
    /// chain shows for certain: the vault's output still unspent, or its unvault confirmed
    /// after the expiry. An unvault the backend cannot find, or one still pending, holds it.
    fn lapsed(&self, s: &SpendRecord, tip: u32) -> Result<bool, Refusal> {
        if s.state == "waiting" {
            return Ok(s.expired_waiting(tip));
        }
        let expiry = s.approval.expiry_height;
        if tip < expiry.saturating_add(LAPSE_MARGIN) {
            return Ok(false);
        }
        let vault = OutPoint::from_str(&s.approval.vault_outpoint).map_err(|_| Refusal::Internal)?;
        if self.chain.unspent_output(&vault)?.is_some() {
            return Ok(true);
        }
        let unvault =
            vigil_policy::bitcoin::Txid::from_str(&s.approval.unvault_txid).map_err(|_| Refusal::Internal)?;
        Ok(matches!(self.chain.transaction_info(&unvault)?, Some((_, Some(confirmed))) if confirmed > expiry))
    }

    /// Queues in `batch`, committed with the decision approving `record`, the order that
    /// registers its approval with every tower it must reach (named in `record`, none of them
    /// acknowledging yet): a crash or an error before the towers are told leaves it owed,
    /// pushed until they acknowledge, never lost with the answer.
    fn queue_approval(
        &self,
        store: &dyn Store,
        batch: &mut Batch,
        client: &ClientRecord,
        made_under: &CompiledPolicy,
        record: &mut SpendRecord,
        tip: u32,
    ) -> Result<(), Refusal> {
        // Today's towers and the vault's own version's: one a change removed still watches it.
        let reach: Vec<String> =
            self.approval_reach(client, made_under, tip)?.towers.into_iter().map(|t| t.name).collect();
        let key = self.keys.auth_keypair(client.account);
        let mut signatures = vec![wire::sign(&record.approval.digest(), &key)];
        signatures.extend(record.signatures.iter().cloned());
        let body = RegisterApproval {
            nonce: 0,
            policy_id: client.id.clone(),
            approval: record.approval.clone(),
            signatures,
            duress: record.under_duress,
        };
        let order = TowerOrder {
            path: APPROVALS_PATH.into(),
            body: serde_json::to_value(&body).expect("json"),
            subject: record.approval.unvault_txid.clone(),
            acked: Vec::new(),
            refused: Vec::new(),
            refusing_since: Default::default(),
            only: Some(reach.clone()),
            spend: Some(record.id),
        };
        Self::queue_order(store, batch, &client.id, order)?;
        record.towers = reach
            .into_iter()
            .map(|name| TowerReport { name, acknowledged: false, refused: None, error: None })
            .collect();
        Ok(())
    }

    /// Brings the tower reports of the spend request whose approval `order` registers up to
    /// date in `batch` with what a push of it heard (`answered`, as `order` records it now):
    /// the owner's client sends the unvault once every tower has the approval, and a tower
    /// that missed it would cancel it. A tower the vault was kept from (`kept_away`) is left
    /// out: it watches no such vault.
    pub(crate) fn hear_approval_answers(
        &self,
        store: &dyn Store,
        batch: &mut Batch,
        client: &str,
        order: &TowerOrder,
        answered: &[TowerReport],
        kept_away: &[String],
    ) {
        let Some(id) = order.spend else { return };
        // Reporting never holds up the push itself.
        let (mut record, before) = match self.spend_stored(store, client, id) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(%client, spend = id, error = %e, "the spend request of a pushed approval cannot be read");
                return;
            }
        };
        let heard = |name: &String| {
            if order.acked.contains(name) {
                return Some(TowerReport {
                    name: name.clone(),
                    acknowledged: true,
                    refused: None,
                    error: None,
                });
            }
            answered.iter().find(|r| r.name == *name).cloned()
        };
        // The towers it names (set when it was approved, less those found since to watch no
        // such vault), or for a record from before they were kept, the order's.
        let named: Vec<&String> = if record.towers.is_empty() {
            order.only.iter().flatten().collect()
        } else {
            record.towers.iter().map(|r| &r.name).collect()
        };
        let towers: Vec<TowerReport> = named
            .into_iter()
            .filter(|name| !kept_away.contains(name))
            .map(|name| {
                heard(name)
                    .or_else(|| record.towers.iter().find(|r| r.name == *name).cloned())
                    .unwrap_or_else(|| TowerReport {
                        name: name.clone(),
                        acknowledged: false,
                        refused: None,
                        error: None,
                    })
            })
            .collect();
        if towers == record.towers {
            return;
        }
        record.towers = towers;
        let key = spend_id(client, id);
        batch.expect(kind::SPEND, key.clone(), Some(before)).put(
            kind::SPEND,
            key,
            serde_json::to_string(&record).expect("json"),
        );
    }

    /// Pushes an approved spend's order (queued with its approval) to its towers; "approved"
    /// is answered with each tower's acknowledgement, which the pass that pushed the order
    /// (this one, or the background loop's if it came first) wrote into the request.
    fn push_approval(
        &self,
        client: &ClientRecord,
        id: u64,
        delay: u32,
        viewer: Role,
    ) -> Result<SpendStatus, Refusal> {
        self.push_pass(&client.id)?;
        let record = self.spend(self.store(), &client.id, id)?;
        // Just approved: not expired, whatever the tip.
        Ok(record.status(viewer, delay, 0))
    }

    /// `POST /v1/spends/{id}/vote`: a guardian approves (signing the terms, and for a guarded
    /// vault the spend itself) or denies, finally.
    pub fn vote(&self, caller: &Caller, id: u64, req: &Signed<Vote>) -> Result<SpendStatus, Refusal> {
        let g = caller.guardian()?;
        let v = &req.request;
        // Asked before the client's lock: its other requests do not wait on the chain.
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let client = Self::client(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let (mut record, before) = self.spend_stored(store, &client.id, id)?;
        if record.state != "waiting" {
            return Err(Refusal::Conflict(format!("spend request {id} is {} already", record.state)));
        }
        if record.expired_waiting(tip) {
            return Err(Refusal::Conflict(format!(
                "spend request {id} expired at block {} without its guardians' quorum (no tower takes its \
                 approval now): the owner asks for the spend again",
                record.approval.expiry_height
            )));
        }
        let me = caller.key.to_string();
        if record.signatures.iter().any(|s| s.key == me) {
            return Err(Refusal::Conflict(format!("this guardian approved spend request {id} already")));
        }
        let vault = vault_record(store, &record.approval.vault_outpoint)?.ok_or(Refusal::Internal)?;
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        if !v.approve {
            record.state = "denied".into();
            record.denied_by = Some(me);
            batch.alarm(alarm(
                &client.id,
                "spend-denied",
                format!("spend request {id} of {} was denied by guardian {g}", client.id),
            ));
        } else {
            let sig = v
                .approval_signature
                .as_deref()
                .and_then(|s| <[u8; 64]>::from_hex(s).ok())
                .and_then(|b| schnorr::Signature::from_slice(&b).ok())
                .ok_or_else(|| {
                    bad("approval_signature: a 64-byte hex signature over the approval's terms")
                })?;
            vigil_policy::secp().verify_schnorr(&sig, &record.approval.digest(), &caller.key).map_err(
                |_| bad("approval_signature: does not verify over this request's terms with your key"),
            )?;
            if vault.guarded() {
                // The spend leaf holds the guardians of the policy the vault was made under.
                let made_under = self.vault_policy(&caller.client, &vault)?;
                let signer = made_under
                    .guardian_auth_keys()
                    .iter()
                    .position(|k| *k == caller.key)
                    .ok_or_else(|| {
                        Refusal::Forbidden(format!(
                            "this guarded vault was made under policy version {}, whose guardians you are not \
                             among: its spend needs their keys",
                            made_under.policy().version
                        ))
                    })?;
                let given = decode_psbt(
                    "psbt",
                    v.psbt
                        .as_deref()
                        .ok_or_else(|| bad("psbt: a guarded vault's spend needs your signature on it"))?,
                )?;
                let mut psbt = decode_psbt("psbt", &record.psbt).map_err(|_| Refusal::Internal)?;
                if given.unsigned_tx != psbt.unsigned_tx {
                    return Err(bad("psbt: not the requested spend (its transaction differs)"));
                }
                // Only this guardian's valid signature is taken from what it sent.
                let mut candidate = psbt.clone();
                candidate.inputs[0].tap_script_sigs.clone_from(&given.inputs[0].tap_script_sigs);
                let theirs = made_under
                    .guardian_spend_signature(&vault.plan()?, signer, &candidate, 0)
                    .map_err(|e| bad(format!("psbt: {e}")))?
                    .ok_or_else(|| {
                        bad("psbt: it carries no valid signature of your key on this vault's spend leaf")
                    })?;
                psbt.inputs[0].tap_script_sigs.extend([theirs]);
                record.psbt = encode_psbt(&psbt);
            }
            record.signatures.push(wire::KeySignature {
                key: me,
                signature: v.approval_signature.clone().unwrap_or_default(),
            });
            // Today's guardians' votes count, against today's quorum (as at the towers): a
            // change since the request may have replaced a guardian who voted.
            let today = caller.compiled.guardian_auth_keys();
            record.signatures.retain(|s| today.iter().any(|k| k.to_string() == s.key));
            record.needed = record.needed.max(caller.compiled.policy().guardians.threshold);
            if record.signatures.len() as u32 >= record.needed {
                // A standard vault's spend counts against velocity, the guardians' or not: other
                // approvals since the request may have used the budget up.
                if !vault.guarded() {
                    let mut current = client.clone();
                    current.apply_due(tip);
                    let compiled = self.compiled(&current)?;
                    let allowance = &compiled.policy().allowance;
                    let spends = parse_spends(&store.list(kind::SPEND, &format!("{}/", client.id))?)?;
                    let window = allowance.velocity_window_blocks;
                    let held = self.velocity_held(&spends, window, tip, &record.approval.vault_outpoint)?;
                    if let Some(from) =
                        over_velocity(&held, window, record.amount_sat, allowance.velocity_limit_sat)
                    {
                        let what = format!("approving spend request {id} now (your vote is not counted)");
                        return Err(over_velocity_refusal(&what, record.amount_sat, &held, allowance, from));
                    }
                }
                record.state = "approved".into();
                record.approved_height = Some(tip);
                batch.alarm(alarm(
                    &client.id,
                    "spend-approved",
                    format!("spend request {id} of {} has its guardians' quorum", client.id),
                ));
            }
        }
        if record.state == "approved" {
            let made_under = self.vault_policy(&client, &vault)?;
            self.queue_approval(store, &mut batch, &client, &made_under, &mut record, tip)?;
        }
        let key = spend_id(&client.id, id);
        batch.expect(kind::SPEND, key.clone(), Some(before)).put(
            kind::SPEND,
            key,
            serde_json::to_string(&record).expect("json"),
        );
        store.commit(&batch)?;
        drop(deciding);
        let delay = record.delay_or(caller.policy().delays.unvault as u32);
        if record.state == "approved" {
            return self.push_approval(&client, record.id, delay, caller.role);
        }
        Ok(record.status(caller.role, delay, tip))
    }

    /// `GET /v1/spends/{id}`.
    pub fn spend_status(&self, caller: &Caller, id: u64) -> Result<SpendStatus, Refusal> {
        let record = self.spend(self.store(), &caller.client.id, id)?;
        Ok(record.status(caller.role, caller.policy().delays.unvault as u32, self.tip()?))
    }

    /// `GET /v1/spends`: every request of the client, newest first (what guardians review).
    pub fn spends(&self, caller: &Caller) -> Result<Vec<SpendStatus>, Refusal> {
        let delay = caller.policy().delays.unvault as u32;
        let tip = self.tip()?;
        let listed = self.store().list(kind::SPEND, &format!("{}/", caller.client.id))?;
        Ok(parse_spends(&listed)?.iter().rev().map(|s| s.status(caller.role, delay, tip)).collect())
    }

    /// `POST /v1/spends/{id}/sign`: once the unvault has waited DELAY, the co-signer's
    /// signature of exactly the approved spend, finalized.
    pub fn sign_spend(
        &self,
        caller: &Caller,
        id: u64,
        req: &Signed<wire::SignSpend>,
    ) -> Result<SignedSpend, Refusal> {
        self.unlocked_owner(caller)?;
        let tip = self.tip()?;
        let ((client, client_before), (record, _)) = {
            let _deciding = self.decide(&caller.client.id);
            let store = self.store();
            let client = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
            (client, self.spend_stored(store, &caller.client.id, id)?)
        };
        let delay = record.delay_or(caller.policy().delays.unvault as u32);
        if record.state != "approved" {
            return Err(Refusal::Conflict(format!("spend request {id} is {}, not approved", record.state)));
        }
        let unvault = vigil_policy::bitcoin::Txid::from_str(&record.approval.unvault_txid)
            .map_err(|_| Refusal::Internal)?;
        let confirmed = match self.chain.transaction_info(&unvault)? {
            Some((_, Some(h))) => h,
            _ => {
                return Err(Refusal::Conflict(format!(
                    "the unvault {unvault} is not confirmed yet; broadcast it and wait"
                )))
            }
        };
        let opens = confirmed + delay;
        if tip + 1 < opens {
            return Err(Refusal::Conflict(format!(
                "the spend can be signed from block {} (the unvault confirmed at {confirmed}, DELAY {delay}); the tip is {tip}",
                opens - 1
            )));
        }
        if client.locked(tip) {
            return Err(Refusal::Forbidden(format!(
                "the client is locked down until block {}: nothing is signed",
                client.plain_end()
            )));
        }
        // Approved without the guardians before a restore they have not confirmed: whoever
        // restored may hold the phrase only. (One asked under duress gets the duress answer
        // below: this one would tell a restore confirmed under duress apart.)
        if client.restore_held(tip) && record.needed == 0 && !record.under_duress {
            return Err(Refusal::Forbidden(
                "the wallet was restored on a new device and the guardians have not confirmed it yet: \
                 this spend is signed once they have"
                    .into(),
            ));
        }
        // Under duress nothing is signed, and neither is a spend asked under duress once it is
        // over (lifted, or run out: its approval went to the towers marked as asked under
        // duress, and they cancel its unvault late all the same). The answer is the one a
        // session gets whose unvault a tower cancelled (which the towers did, quietly, before
        // the spend leaf opened): it never tells a duress code apart.
        let unvault_out = vigil_policy::bitcoin::OutPoint { txid: unvault, vout: 0 };
        // Looked up in every case, so that no answer comes sooner under duress.
        let spent = self.chain.unspent_output(&unvault_out)?.is_none();
        if (client.under_duress(tip) || record.under_duress) && !spent {
            // Its spend leaf open or about to (approved before the code, or the duress lifted
            // early): the towers cancel it at their next block. Until then a cancel the chain
            // does not show yet would give the code away; the answer is the passing one any
            // request may get.
            return Err(Refusal::Conflict(format!("spend request {id} changed meanwhile; try again")));
        }
        if client.under_duress(tip) || record.under_duress || spent {
            return Err(Refusal::Conflict(format!(
                "the unvault's output {unvault_out} is spent already: a tower cancelled it; nothing to sign"
            )));
        }
        if confirmed > record.approval.expiry_height {
            return Err(Refusal::Conflict(format!(
                "the unvault confirmed at {confirmed}, after the approval expired (block {})",
                record.approval.expiry_height
            )));
        }
        let mut psbt = decode_psbt("psbt", &record.psbt).map_err(|_| Refusal::Internal)?;
        self.keys.sign_psbt(client.account, &mut psbt);
        let tx = vigil_policy::finalize(psbt).map_err(|e| {
            Refusal::Conflict(format!(
                "the spend lacks signatures (the owner's, or for a guarded vault the guardians'): {e}"
            ))
        })?;
        if tx.compute_txid().to_string() != record.approval.spend_txid {
            return Err(Refusal::Internal);
        }
        // Signed against the client and request as read: a lockdown or duress committed
        // meanwhile makes this fail, and nothing is returned.
        let _deciding = self.decide(&caller.client.id);
        let store = self.store();
        // Only its tower reports may have moved on meanwhile (the background push).
        let (now, now_before) = self.spend_stored(store, &client.id, id)?;
        if (SpendRecord { towers: record.towers.clone(), ..now }) != record {
            return Err(Refusal::Conflict(format!("spend request {id} changed meanwhile; try again")));
        }
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        batch.expect(kind::CLIENT, client.id.clone(), Some(client_before)).expect(
            kind::SPEND,
            spend_id(&client.id, id),
            Some(now_before),
        );
        store.commit(&batch)?;
        Ok(SignedSpend { tx: serialize_hex(&tx) })
    }
}

#[cfg(test)]
mod tests {
    use super::over_velocity;

    #[test]
    fn over_the_budget_says_from_which_block_it_fits() {
        // 3 approved at 10, 2 at 20; a window of 30 blocks, a budget of 5.
        let held = [(10, 3), (20, 2)];
        assert_eq!(over_velocity(&held, 30, 0, 5), None);
        assert_eq!(over_velocity(&held, 30, 1, 5), Some(41), "once the first left the window");
        assert_eq!(over_velocity(&held, 30, 4, 5), Some(51), "once both did");
        // Above the whole budget (a limit lowered since): only alone in its window.
        assert_eq!(over_velocity(&held, 30, 6, 5), Some(51));
        assert_eq!(over_velocity(&[], 30, 6, 5), None);
    }
}
