//! A tower a policy change added. The guardians' quorum decided the tower set; the tower's
//! operator hands the family a single-use token, and any owner or guardian gives it to the
//! co-signer (`POST /v1/towers`). The co-signer then enrolls the client at the tower with the
//! first policy and every change that applied since, each with its quorum's signatures (the
//! tower checks the chain itself), and tells it what the towers before it already hold: the
//! lockdowns holding now (a quiet one too), every live vault its version builds identically,
//! and each of those vaults' open approval. All of it goes as tower orders, in that order,
//! kept until the tower acknowledged them, across restarts.

use std::str::FromStr;
use std::sync::Arc;

use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::{OutPoint, Transaction};
use vigil_tower::wire::{EnrollClient, RegisterApproval, SignedPolicy};

use crate::ceremony::{vault_record, VaultRecord};
use crate::emergency::{lockdown_order, order_of};
use crate::error::Refusal;
use crate::orders::TowerOrder;
use crate::service::{Caller, ClientRecord, Cosigner};
use crate::spends::SpendRecord;
use crate::store::{kind, Batch};
use crate::wire::{self, EnrollTower, Signed, TowerEnrolled};

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
        let mut orders = vec![order_of("/v1/clients", &enrollment, format!("client {}", client.id))];
        // What the other towers hold now. A lockdown's end as it holds here, a lift counted.
        if client.locked(tip) {
            orders.push(lockdown_order(&client.id, client.plain_end(), false));
        }
        if client.under_duress(tip) {
            orders.push(lockdown_order(&client.id, client.duress_end(), true));
        }
        let (vaults, kept_elsewhere) = self.live_vaults(&client)?;
        orders.extend(vaults.iter().map(|v| {
            let subject = v.registration.vault.vault_outpoint.clone();
            order_of("/v1/vaults", &v.registration, subject)
        }));
        let approvals = self.open_approvals(&client, &vaults, tip)?;
        let approval_count = approvals.len() as u32;
        orders.extend(approvals);
        for o in &mut orders {
            o.only = Some(vec![r.tower.clone()]);
        }

        let deciding = self.decide(&caller.client.id);
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        queue_first(store, &mut batch, &client.id, &r.tower, orders)?;
        store.commit(&batch)?;
        drop(deciding);
        tracing::info!(client = %client.id, tower = %r.tower, vaults = vaults.len(), "enrolling a tower a change added");

        let subject = format!("client {}", client.id);
        let pass = self.push_pass(&client.id)?;
        let answer = pass
            .answers
            .iter()
            .filter(|(path, s, _)| path == "/v1/clients" && *s == subject)
            .flat_map(|(_, _, reports)| reports)
            .find(|t| t.name == r.tower);
        let owed = self.orders_owed(&client.id, &r.tower)?;
        let enrolled = !owed.iter().any(|o| o.path == "/v1/clients");
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

    /// The client's vaults still worth watching whose graph the policy in force rebuilds as
    /// it was made (a change of the tower set or the limits keeps it; one of keys or delays does
    /// not); and the outpoints of the live ones it does not, which stay with their own
    /// version's towers.
    fn live_vaults(&self, client: &ClientRecord) -> Result<(Vec<VaultRecord>, Vec<String>), Refusal> {
        let judge =
            vigil_tower::client::Client::new(&client.id, &client.policy).map_err(|_| Refusal::Internal)?;
        let (mut same, mut elsewhere) = (Vec::new(), Vec::new());
        for (_, outpoint) in self.store().list(kind::VAULT_INDEX, &format!("{}/", client.id))? {
            let Some(v) = vault_record(self.store(), &outpoint)? else { continue };
            // One still registering gets today's towers through its own ceremony.
            if v.state != "protected" || !self.is_live(&v)? {
                continue;
            }
            if vigil_tower::registration::checked_vault(&judge, &v.registration).is_ok() {
                same.push(v);
            } else {
                elsewhere.push(outpoint);
            }
        }
        Ok((same, elsewhere))
    }

    /// Whether a vault may still be unvaulted or cancelled: V or its unvault's output
    /// unspent, or its funding not broadcast yet (its first coin unspent).
    fn is_live(&self, v: &VaultRecord) -> Result<bool, Refusal> {
        let chain = &self.chain;
        let outpoint =
            OutPoint::from_str(&v.registration.vault.vault_outpoint).map_err(|_| Refusal::Internal)?;
        if chain.unspent_output(&outpoint)?.is_some() {
            return Ok(true);
        }
        let unvault: Transaction = deserialize_hex(&v.registration.unvault).map_err(|_| Refusal::Internal)?;
        if chain.unspent_output(&OutPoint::new(unvault.compute_txid(), 0))?.is_some() {
            return Ok(true);
        }
        let funding: Transaction = deserialize_hex(&v.funding).map_err(|_| Refusal::Internal)?;
        Ok(match funding.input.first() {
            Some(coin) => chain.unspent_output(&coin.previous_output)?.is_some(),
            None => false,
        })
    }

    /// The latest approval of each of `vaults` not expired at `tip`, as orders carrying the
    /// co-signer's signature and the guardians' it gathered.
    fn open_approvals(
        &self,
        client: &ClientRecord,
        vaults: &[VaultRecord],
        tip: u32,
    ) -> Result<Vec<TowerOrder>, Refusal> {
        let key = self.keys.auth_keypair(client.account);
        let mut latest: std::collections::BTreeMap<String, SpendRecord> = Default::default();
        for (_, body) in self.store().list(kind::SPEND, &format!("{}/", client.id))? {
            let s: SpendRecord = serde_json::from_str(&body).map_err(|_| Refusal::Internal)?;
            let ours =
                vaults.iter().any(|v| v.registration.vault.vault_outpoint == s.approval.vault_outpoint);
            if ours && s.state == "approved" && s.approval.expiry_height > tip {
                // Listed by number: a later approval of the same vault replaces an earlier.
                latest.insert(s.approval.vault_outpoint.clone(), s);
            }
        }
        Ok(latest
            .into_values()
            .map(|s| {
                let mut signatures = vec![wire::sign(&s.approval.digest(), &key)];
                signatures.extend(s.signatures.iter().cloned());
                let body = RegisterApproval {
                    nonce: 0,
                    policy_id: client.id.clone(),
                    approval: s.approval.clone(),
                    signatures,
                };
                order_of("/v1/approvals", &body, s.approval.unvault_txid.clone())
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

/// Puts `orders` for `tower` first in the client's list (the enrollment before anything
/// else owed to that tower), replacing an enrollment of it not taken yet (a token refused,
/// given again).
fn queue_first(
    store: &dyn crate::store::Store,
    batch: &mut Batch,
    client: &str,
    tower: &str,
    mut orders: Vec<TowerOrder>,
) -> Result<(), Refusal> {
    let before = store.get(kind::ORDERS, client)?;
    let existing: Vec<TowerOrder> = before
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| Refusal::Internal)?
        .unwrap_or_default();
    let only_this = |o: &TowerOrder| o.only.as_deref() == Some(&[tower.to_owned()][..]);
    orders.extend(existing.into_iter().filter(|o| !(only_this(o) && o.path == "/v1/clients")));
    batch.expect(kind::ORDERS, client.to_owned(), before).put(
        kind::ORDERS,
        client.to_owned(),
        serde_json::to_string(&orders).expect("json"),
    );
    Ok(())
}
