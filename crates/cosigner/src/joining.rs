//! A tower a policy change added. The guardians' quorum decided the tower set; the tower's
//! operator hands the family a single-use token, and any owner or guardian gives it to the
//! co-signer (`POST /v1/towers`). The co-signer then enrolls the client at the tower with the
//! first policy and every change that applied since, each with its quorum's signatures (the
//! tower checks the chain itself), and tells it what the towers before it already hold: the
//! lockdowns holding now (a quiet one too), a change still waiting, every live vault (under
//! the version it was made under), and each of those vaults' open approval. All of it goes as
//! tower orders (the enrollment ahead of the orders already waiting, the rest after them),
//! kept until the tower acknowledged them, across restarts. Every enrollment alarms the
//! guardians.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::{OutPoint, Transaction};
use vigil_policy::CompiledPolicy;
use vigil_tower::wire::{EnrollClient, RegisterApproval, RegisterVault, SignedPolicy};

use crate::ceremony::{vault_record, VaultRecord};
use crate::emergency::{lockdown_order, order_of};
use crate::error::Refusal;
use crate::orders::TowerOrder;
use crate::service::{alarm, Caller, ClientRecord, Cosigner};
use crate::spends::SpendRecord;
use crate::store::{kind, Batch};
use crate::wire::{self, EnrollTower, Signed, TowerEnrolled};

/// An order about one vault, by its outpoint.
type VaultOrder = (String, TowerOrder);

/// The towers' endpoint a vault is registered at; a joining tower's vaults are orders to it.
pub(crate) const VAULTS_PATH: &str = "/v1/vaults";

/// The towers' endpoint that enrolls a client, with a token from the tower's operator.
pub(crate) const ENROLL_PATH: &str = "/v1/clients";

/// Whether a tower holding the client as `judge` does takes `order`, an approval of `v`: one
/// that needs the guardians' quorum is judged by today's guardians, which a change may have
/// replaced since the approval was given.
fn approval_taken(judge: &vigil_tower::client::Client, v: &VaultRecord, order: &TowerOrder) -> bool {
    let Ok(req) = serde_json::from_value::<RegisterApproval>(order.body.clone()) else { return false };
    let Ok(fields) = vigil_tower::registration::parse_approval(&req) else { return false };
    let needs_quorum = v.registration.vault.kind == "guarded"
        || v.registration.vault.amount_sat > judge.policy.allowance.velocity_limit_sat;
    !needs_quorum || judge.has_guardian_quorum(&fields.signers)
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

impl Cosigner {
    /// `POST /v1/towers`: enrolls the client at a tower of the policy in force, and queues
    /// everything it must know; answers once the tower was asked.
    pub fn enroll_tower(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<EnrollTower>,
    ) -> Result<TowerEnrolled, Refusal> {
        let r = &req.request;
        if <[u8; 32]>::from_hex(&r.token).is_err() {
            return Err(bad("token: 64 hex characters, as `vigil tower token` printed it"));
        }
        // Read without the client's lock (looking each vault up on the chain takes a while):
        // whatever happens meanwhile (a vault, an approval, a lockdown) reaches every tower of
        // the policy in force by itself, this one included, after the enrollment queued first.
        let tip = self.tip()?;
        let store = self.store();
        let mut client = Self::client(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        client.apply_due(tip);
        let current = self.compiled(&client)?;
        if !current.policy().towers.iter().any(|t| t.name == r.tower) {
            let waiting = client.pending_policy.as_ref().filter(|p| {
                vigil_policy::Policy::from_toml(&p.text)
                    .is_ok_and(|p| p.towers.iter().any(|t| t.name == r.tower))
            });
            return Err(match waiting {
                Some(p) => Refusal::Conflict(format!(
                    "tower {} joins with the change that applies at block {} (tip {tip}): enroll it then",
                    r.tower, p.effective_height
                )),
                None => bad(format!(
                    "tower: {:?} is not a tower of the policy in force ({})",
                    r.tower,
                    current.policy().towers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
            });
        }
        let enrollment = EnrollClient {
            nonce: 0,
            token: r.token.clone(),
            policy: client.past_policies.first().unwrap_or(&client.policy).clone(),
            changes: applied_changes(&client)?,
        };
        let enroll_order = order_of(ENROLL_PATH, &enrollment, format!("client {}", client.id));
        // What the other towers hold now. A lockdown's end as it holds here, a lift counted.
        let mut state = Vec::new();
        if client.locked(tip) {
            state.push(lockdown_order(&client.id, client.plain_end(), false));
        }
        if client.under_duress(tip) {
            state.push(lockdown_order(&client.id, client.duress_end(), true));
        }
        // A change still waiting: the tower starts its own wait from its tip (later, never
        // sooner, than the others').
        if let Some(waiting) = &client.pending_policy {
            state.push(change_order(&client, &waiting.text)?);
        }
        let mut orders = Vec::new();
        let approvals = self.open_approvals(&client, tip)?;
        let (vaults, kept_elsewhere) =
            self.live_vaults(&client, &approvals, &self.approved_until(&client.id)?)?;
        orders.extend(vaults.iter().map(|v| {
            let subject = v.registration.vault.vault_outpoint.clone();
            order_of(VAULTS_PATH, &v.registration, subject)
        }));
        let given: Vec<TowerOrder> = approvals
            .into_iter()
            .filter(|(vault, _)| vaults.iter().any(|v| v.registration.vault.vault_outpoint == *vault))
            .map(|(_, order)| order)
            .collect();
        let approval_count = given.len() as u32;
        orders.extend(given);

        let deciding = self.decide(&caller.client.id);
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        for v in &vaults {
            batch.delete(kind::KEPT_FROM, kept_key(&v.registration.vault.vault_outpoint, &r.tower));
        }
        for outpoint in &kept_elsewhere {
            batch.put(kind::KEPT_FROM, kept_key(outpoint, &r.tower), r.tower.clone());
        }
        let replaced =
            queue_enrollment(store, &mut batch, &client.id, &r.tower, enroll_order, state, orders)?;
        // A captor holding the owner's device could hand over a token of its own, or replace a
        // guardian's: the guardians hear of every one, and read the version at the tower.
        let version = current.policy().version;
        batch.alarm(alarm(
            &client.id,
            "tower-enrollment",
            format!(
                "{:?} asked to enroll client {} at tower {}{}: it is given version {version} (the first policy and \
                 its signed changes), {} vaults and {approval_count} approvals. A guardian checks there that it \
                 serves version {version} (`GET /v1/clients/{}`)",
                caller.role,
                client.id,
                r.tower,
                if replaced { ", replacing an enrollment it had not taken yet" } else { "" },
                vaults.len(),
                client.id,
            ),
        ));
        store.commit(&batch)?;
        drop(deciding);
        tracing::info!(client = %client.id, tower = %r.tower, vaults = vaults.len(), "enrolling a tower a change added");

        let subject = format!("client {}", client.id);
        let pass = self.push_pass(&client.id)?;
        let answer = pass
            .answers
            .iter()
            .filter(|(path, s, _)| path == ENROLL_PATH && *s == subject)
            .flat_map(|(_, _, reports)| reports)
            .find(|t| t.name == r.tower);
        let owed = self.orders_owed(&client.id, &r.tower)?;
        // Refused for good now (a tower holding an earlier version) settles the order too.
        let refused = answer.is_some_and(|t| t.refused.is_some());
        let enrolled = !refused && !owed.iter().any(|o| o.path == ENROLL_PATH);
        Ok(TowerEnrolled {
            tower: r.tower.clone(),
            enrolled,
            error: answer.filter(|_| !enrolled).and_then(|t| t.error.clone()),
            vaults: vaults.len() as u32,
            approvals: approval_count,
            kept_elsewhere,
            complete: owed.is_empty(),
        })
    }

    /// The client's live vaults the tower is given, each naming the version it was made
    /// under (the tower holds every version the chain brought). And the outpoints of the
    /// live ones it is not given, which stay with the towers watching them (a tower that
    /// learns of a vault without the approval covering its unvault cancels it at first
    /// sight): one whose unvault is out and may be covered by an approval (`approved_until`:
    /// the latest expiry of any approval of the vault; it may have expired since, its spend
    /// still under way), one whose open approval (of `open`) the tower would refuse (signed
    /// by guardians a change replaced since), and any vault the versions the tower gets do
    /// not rebuild.
    fn live_vaults(
        &self,
        client: &ClientRecord,
        open: &[VaultOrder],
        approved_until: &BTreeMap<String, u32>,
    ) -> Result<(Vec<VaultRecord>, Vec<String>), Refusal> {
        // The client as the tower will hold it: today's version and every one before.
        let judge = vigil_tower::client::Client::new(&client.id, &client.policy)
            .map_err(|_| Refusal::Internal)?
            .with_earlier(&client.past_policies);
        let (mut given, mut elsewhere) = (Vec::new(), Vec::new());
        for (_, outpoint) in self.store().list(kind::VAULT_INDEX, &format!("{}/", client.id))? {
            let Some(mut v) = vault_record(self.store(), &outpoint)? else { continue };
            // One still registering gets its version's towers through its own ceremony.
            if v.state != "protected" {
                continue;
            }
            // Named when it is not today's (left out otherwise, as a tower of an earlier release
            // expects); a vault whose version is not kept goes with the ones not given.
            let Ok(made_under) = self.vault_policy(client, &v) else {
                elsewhere.push(outpoint);
                continue;
            };
            let version = made_under.policy().version;
            if v.registration.policy_version.is_none() && version != judge.policy.version {
                v.registration.policy_version = Some(version);
            }
            let refused_approval = match open.iter().find(|(vault, _)| *vault == outpoint) {
                Some((_, order)) => !approval_taken(&judge, &v, order),
                None => false,
            };
            match self.stage(&v)? {
                Stage::Over => continue,
                Stage::Unvaulted if self.may_be_approved(&v, approved_until.get(&outpoint))? => {
                    elsewhere.push(outpoint)
                }
                _ if refused_approval => elsewhere.push(outpoint),
                _ if vigil_tower::registration::checked_vault(&judge, &v.registration).is_err() => {
                    elsewhere.push(outpoint)
                }
                _ => given.push(v),
            }
        }
        Ok((given, elsewhere))
    }

    /// Whether `v`'s unvault, out, may be covered by one of its approvals, the latest of
    /// which expires at `expiry`: pending, or confirmed by then (a margin more, as a
    /// request judges a lapse; first seen in the mempool, it may have been in time).
    fn may_be_approved(&self, v: &VaultRecord, expiry: Option<&u32>) -> Result<bool, Refusal> {
        let Some(expiry) = expiry else { return Ok(false) };
        let unvault: Transaction = deserialize_hex(&v.registration.unvault).map_err(|_| Refusal::Internal)?;
        Ok(match self.chain.transaction_info(&unvault.compute_txid())? {
            Some((_, Some(confirmed))) => confirmed <= expiry.saturating_add(crate::spends::LAPSE_MARGIN),
            _ => true,
        })
    }

    /// Whether `client`'s vault `outpoint` is unvaulted, its unvault possibly covered by one
    /// of its approvals ([`Cosigner::may_be_approved`]).
    pub(crate) fn unvaulted_under_approval(&self, client: &str, outpoint: &str) -> Result<bool, Refusal> {
        let Some(v) = vault_record(self.store(), outpoint)? else { return Ok(false) };
        if !matches!(self.stage(&v)?, Stage::Unvaulted) {
            return Ok(false);
        }
        self.may_be_approved(&v, self.approved_until(client)?.get(outpoint))
    }

    /// A vault just protected (made under `made_under`) to the towers a later version added:
    /// one may have joined while its ceremony was open, and was not given it then. It is now,
    /// as an order kept until it acknowledges (one not enrolled yet takes it after its
    /// enrollment). Read under the client's lock, as an enrollment queues its vaults: it saw
    /// this one protected, or its tower is named here. A tower a later change removed again
    /// is not given it, and recorded as kept from it. `tip` as asked before the lock.
    pub(crate) fn give_joined_towers(
        &self,
        batch: &mut Batch,
        client_id: &str,
        made_under: &CompiledPolicy,
        registration: &RegisterVault,
        tip: Option<u32>,
    ) -> Result<(), Refusal> {
        let store = self.store();
        let outpoint = &registration.vault.vault_outpoint;
        let mut now = Self::client(store, client_id)?.ok_or(Refusal::Internal)?;
        if let Some(tip) = tip {
            now.apply_due(tip);
        }
        let own = |name: &str| made_under.policy().towers.iter().any(|t| t.name == name);
        let joined: Vec<String> = self
            .compiled(&now)?
            .policy()
            .towers
            .iter()
            .filter(|t| !own(&t.name))
            .map(|t| t.name.clone())
            .collect();
        for tower in self.approval_reach(&now, made_under, tip.unwrap_or(0))?.towers {
            if !own(&tower.name) && !joined.contains(&tower.name) {
                batch.put(kind::KEPT_FROM, kept_key(outpoint, &tower.name), tower.name);
            }
        }
        if !joined.is_empty() {
            let mut registration = registration.clone();
            registration.policy_version.get_or_insert(made_under.policy().version);
            let mut order = order_of(VAULTS_PATH, &registration, outpoint.clone());
            order.only = Some(joined);
            Self::queue_order(store, batch, client_id, order)?;
        }
        Ok(())
    }

    /// Whether `tower` was recorded as not given vault `outpoint` (kept by the towers
    /// watching it): its refusal of that vault's approvals is expected.
    pub(crate) fn kept_from(&self, outpoint: &str, tower: &str) -> bool {
        self.store().get(kind::KEPT_FROM, &kept_key(outpoint, tower)).is_ok_and(|k| k.is_some())
    }

    /// For every vault of `client` ever approved, the latest expiry of its approvals.
    fn approved_until(&self, client: &str) -> Result<BTreeMap<String, u32>, Refusal> {
        let mut until: BTreeMap<String, u32> = BTreeMap::new();
        for (_, body) in self.store().list(kind::SPEND, &format!("{client}/"))? {
            let s: SpendRecord = serde_json::from_str(&body).map_err(|_| Refusal::Internal)?;
            if s.approved_height.is_some() {
                let latest = until.entry(s.approval.vault_outpoint).or_default();
                *latest = (*latest).max(s.approval.expiry_height);
            }
        }
        Ok(until)
    }

    /// Where a vault is: V unspent or its funding not broadcast yet (its first coin
    /// unspent), unvaulted (U's output unspent), or over.
    pub(crate) fn stage(&self, v: &VaultRecord) -> Result<Stage, Refusal> {
        let chain = &self.chain;
        let outpoint =
            OutPoint::from_str(&v.registration.vault.vault_outpoint).map_err(|_| Refusal::Internal)?;
        if chain.unspent_output(&outpoint)?.is_some() {
            return Ok(Stage::Vaulted);
        }
        let unvault: Transaction = deserialize_hex(&v.registration.unvault).map_err(|_| Refusal::Internal)?;
        if chain.unspent_output(&OutPoint::new(unvault.compute_txid(), 0))?.is_some() {
            return Ok(Stage::Unvaulted);
        }
        let funding: Transaction = deserialize_hex(&v.funding).map_err(|_| Refusal::Internal)?;
        Ok(match funding.input.first() {
            Some(coin) if chain.unspent_output(&coin.previous_output)?.is_some() => Stage::Vaulted,
            _ => Stage::Over,
        })
    }

    /// The latest approval of each vault not expired at `tip`, by vault, as orders carrying
    /// the co-signer's signature and the guardians' it gathered.
    fn open_approvals(&self, client: &ClientRecord, tip: u32) -> Result<Vec<VaultOrder>, Refusal> {
        let key = self.keys.auth_keypair(client.account);
        let mut latest: BTreeMap<String, SpendRecord> = Default::default();
        for (_, body) in self.store().list(kind::SPEND, &format!("{}/", client.id))? {
            let s: SpendRecord = serde_json::from_str(&body).map_err(|_| Refusal::Internal)?;
            if s.state == "approved" && s.approval.expiry_height > tip {
                // Listed by number: a later approval of the same vault replaces an earlier.
                latest.insert(s.approval.vault_outpoint.clone(), s);
            }
        }
        Ok(latest
            .into_iter()
            .map(|(vault, s)| {
                let mut signatures = vec![wire::sign(&s.approval.digest(), &key)];
                signatures.extend(s.signatures.iter().cloned());
                let body = RegisterApproval {
                    nonce: 0,
                    policy_id: client.id.clone(),
                    approval: s.approval.clone(),
                    signatures,
                    duress: s.under_duress,
                };
                (vault, order_of(crate::spends::APPROVALS_PATH, &body, s.approval.unvault_txid.clone()))
            })
            .collect())
    }

    /// The orders `tower` has yet to take.
    fn orders_owed(&self, client: &str, tower: &str) -> Result<Vec<TowerOrder>, Refusal> {
        let Some(text) = self.store().get(kind::ORDERS, client)? else { return Ok(Vec::new()) };
        let orders: Vec<TowerOrder> = serde_json::from_str(&text).map_err(|_| Refusal::Internal)?;
        Ok(orders.into_iter().filter(|o| o.owed_by(tower)).collect())
    }
}

/// Every change that applied, oldest first, with the signatures the quorum gave it.
fn applied_changes(client: &ClientRecord) -> Result<Vec<SignedPolicy>, Refusal> {
    client
        .past_policies
        .iter()
        .skip(1)
        .chain(client.past_policies.first().map(|_| &client.policy))
        .map(|text| {
            let signed = client.changes.iter().rev().find(|c| c.policy == *text).ok_or_else(|| {
                tracing::error!(client = %client.id, "an applied policy has no signed change on record");
                Refusal::Internal
            })?;
            Ok(SignedPolicy { policy: text.clone(), signatures: signed.signatures.clone() })
        })
        .collect()
}

/// Queues the enrollment of `tower` ahead of everything already queued (replacing one it
/// has not taken yet: a token refused, given again; whether it did) with `state` (the
/// lockdowns and the change waiting when the client was read) right after it, and `rest`
/// (vaults and approvals) last, so the lockdowns and panics waiting for the other towers do
/// not wait behind the vaults. What was queued meanwhile (a lift of that lockdown) comes after
/// `state`, as it happened. The give-up clock of this tower's refusals starts again: it
/// refused them for not knowing the client.
fn queue_enrollment(
    store: &dyn crate::store::Store,
    batch: &mut Batch,
    client: &str,
    tower: &str,
    enrollment: TowerOrder,
    state: Vec<TowerOrder>,
    rest: Vec<TowerOrder>,
) -> Result<bool, Refusal> {
    let existing = crate::orders::queued_orders(store, batch, client)?;
    let only_this = |o: &TowerOrder| o.only.as_deref() == Some(&[tower.to_owned()][..]);
    let stale = |o: &TowerOrder| only_this(o) && o.path == ENROLL_PATH;
    let replaced = existing.iter().any(stale);
    let for_tower = |mut o: TowerOrder| {
        o.only = Some(vec![tower.to_owned()]);
        o
    };
    let (state, rest): (Vec<_>, Vec<_>) =
        (state.into_iter().map(for_tower).collect(), rest.into_iter().map(for_tower).collect());
    // What an earlier enrollment queued for this tower alone is queued again here: kept twice,
    // each enrollment asked again while the tower is down would add every vault once more.
    let again = |o: &TowerOrder| {
        only_this(o)
            && o.spend.is_none()
            && state.iter().chain(&rest).any(|n| n.path == o.path && n.subject == o.subject)
    };
    let kept: Vec<TowerOrder> = existing
        .into_iter()
        .filter(|o| !stale(o) && !again(o))
        .map(|mut o| {
            o.refusing_since.remove(tower);
            o
        })
        .collect();
    let mut orders = vec![for_tower(enrollment)];
    orders.extend(state);
    orders.extend(kept);
    orders.extend(rest);
    crate::orders::put_orders(batch, client, &orders);
    Ok(replaced)
}

/// The record saying `tower` joined without vault `outpoint`.
pub(crate) fn kept_key(outpoint: &str, tower: &str) -> String {
    format!("{outpoint}/{tower}")
}

/// Where a vault is, for a tower that joins.
pub(crate) enum Stage {
    /// V unspent, or its funding not out yet.
    Vaulted,
    /// Its unvault is out, U's output unspent.
    Unvaulted,
    /// Spent: cancelled, swept or paid.
    Over,
}

/// The relay of the change `text` the quorum signed, as every tower got it.
fn change_order(client: &ClientRecord, text: &str) -> Result<TowerOrder, Refusal> {
    let signed = client.changes.iter().rev().find(|c| c.policy == text).ok_or(Refusal::Internal)?;
    let version = vigil_policy::Policy::from_toml(text).map_err(|_| Refusal::Internal)?.version;
    Ok(crate::governance::change_order(
        &client.id,
        text,
        version,
        signed.signatures.clone(),
        (signed.signed_height, signed.effective_height),
    ))
}
