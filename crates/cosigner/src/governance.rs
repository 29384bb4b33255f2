//! Policy changes (DESIGN.md §4 "Governance"): signed by the guardians' quorum; one that only
//! tightens (lower limits, a longer window, a shorter whitelist) applies at once, anything
//! else waits the governance delay (longer than any captivity). Each is relayed to every
//! tower, which applies the same rule itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vigil_policy::{CompiledPolicy, Policy};
use vigil_tower::client::{loosens, only_tightens};
use vigil_tower::wire::{policy_change_digest, ChangePolicy};

use crate::error::Refusal;
use crate::orders::TowerOrder;
use crate::service::{alarm, Caller, ClientRecord, Cosigner};
use crate::store::{kind, Batch};
use crate::wire::{PolicyChange, PolicyChangeStatus, Signed};

/// A change waiting for its height.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPolicy {
    /// The new policy file.
    pub text: String,
    /// It applies from this height.
    pub effective_height: u32,
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

impl ClientRecord {
    /// Makes `text` the policy, keeping the one it replaces for the vaults made under it.
    pub fn adopt(&mut self, text: String) {
        let old = std::mem::replace(&mut self.policy, text);
        if !self.past_policies.contains(&old) {
            self.past_policies.push(old);
        }
    }

    /// Applies the waiting change if its height has come; whether it did.
    pub fn apply_due(&mut self, tip: u32) -> bool {
        match self.pending_policy.take() {
            Some(p) if p.effective_height <= tip => {
                self.adopt(p.text);
                true
            }
            other => {
                self.pending_policy = other;
                false
            }
        }
    }
}

impl Cosigner {
    /// `POST /v1/policy`: a change and guardians' signatures over it, handed in by any party;
    /// gathered until the quorum signed, then applied (at once or after the delay).
    pub fn change_policy(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<PolicyChange>,
    ) -> Result<PolicyChangeStatus, Refusal> {
        let r = &req.request;
        let new = Policy::from_new_toml(&r.policy).map_err(|e| bad(format!("policy: {e}")))?;
        // One tip for everything below: the change due by it applies first, the new one is
        // judged by the policy then applied, and recorded as signed at it. A party following
        // the recorded chain applies the same rule (`vigil_client::policy_chain`).
        let tip = self.tip()?;
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let (mut client, before) = Self::client_stored(store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let applied_now = client.apply_due(tip);
        let current = &Policy::from_toml(&client.policy).map_err(|_| Refusal::Internal)?;
        if new.network != current.network {
            return Err(bad("policy: another network"));
        }
        if new.towers.is_empty() {
            return Err(bad("policy: it names no tower; a vault nothing watches is not protected"));
        }
        if new.cosigner != current.cosigner {
            return Err(bad("policy: it names another co-signer key; a client moving away pins it there"));
        }
        // A tower it adds or changes keeps the name and key every applied version gave it (see
        // `Policy::towers_agree_with`); a waiting change never applied watches no vault.
        for text in &client.past_policies {
            if let Ok(earlier) = Policy::from_toml(text) {
                new.towers_agree_with(&earlier, current).map_err(|e| bad(format!("policy: {e}")))?;
            }
        }
        new.towers_agree_with(current, current).map_err(|e| bad(format!("policy: {e}")))?;
        let tightening = only_tightens(current, &new);
        let loosening = loosens(current, &new);
        let version = new.version;
        let names: Vec<String> = new.towers.iter().map(|t| t.name.clone()).collect();
        CompiledPolicy::new(new).map_err(|e| bad(format!("policy: {e}")))?;
        let waiting =
            client.pending_policy.as_ref().and_then(|p| Policy::from_toml(&p.text).ok()).map(|p| p.version);
        if version <= current.version || waiting.is_some_and(|w| version <= w) {
            return Err(Refusal::Conflict(format!(
                "policy: version {version} is not above the current ({}) and the waiting one ({})",
                current.version,
                waiting.map(|w| w.to_string()).unwrap_or_else(|| "none".into())
            )));
        }
        // The guardians' signatures are gathered across requests until the quorum signed.
        let votes_id = format!("{}/{}", client.id, vigil_tower::policy_id(&r.policy));
        let digest = policy_change_digest(&caller.client.id, &r.policy);
        let crate::emergency::Gathered { signatures, count, added, before: votes_before } =
            crate::emergency::gather(
                store,
                current,
                (kind::POLICY_VOTES, &votes_id),
                &digest,
                &r.signatures,
            )?;
        let needed = current.guardians.threshold;
        // Locked down, no change that lets more leave is taken. One that only replaces keys or
        // towers is, and waits its delay: refused too, one guardian (or a stolen owner key)
        // locking again and again would keep the quorum from ever replacing it.
        if loosening && client.locked(tip) {
            return Err(Refusal::Forbidden(
                "the client is locked down: a change that raises a limit, adds to the whitelist, shortens a delay, \
                 makes the guardians or owner keys easier to gather or drops a tower is refused until it ends"
                    .into(),
            ));
        }
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        let proposed = || PolicyChangeStatus {
            approvals: count,
            needed,
            version,
            effective_height: 0,
            towers: Vec::new(),
        };
        if !added && count < needed {
            // Nothing new: the count as it stands, and no alarm again.
            store.commit(&batch)?;
            return Ok(proposed());
        }
        if applied_now {
            // Before the background pass did: said here, or never.
            batch.alarm(applied_alarm(&client, tip));
        }
        batch.expect(kind::POLICY_VOTES, votes_id.clone(), votes_before);
        if count < needed {
            if applied_now {
                // Kept, or the background pass would apply it again and say so twice.
                batch
                    .expect(kind::CLIENT, client.id.clone(), Some(before))
                    .put(kind::CLIENT, client.id.clone(), serde_json::to_string(&client).expect("json"))
                    .delete(kind::WAITING_CHANGE, client.id.clone());
            }
            batch.put(kind::POLICY_VOTES, votes_id, serde_json::to_string(&signatures).expect("json")).alarm(
                crate::service::policy_proposed_alarm(
                    &client.id,
                    &r.policy,
                    format!(
                        "policy version {version} of {} is proposed: {count} of {needed} guardians signed",
                        client.id
                    ),
                ),
            );
            store.commit(&batch)?;
            return Ok(proposed());
        }
        batch.delete(kind::POLICY_VOTES, votes_id);
        let effective_height = if tightening { tip } else { tip + self.config.governance_delay_blocks };
        client.changes.push(crate::wire::SignedChange {
            policy: r.policy.clone(),
            signatures: signatures.clone(),
            signed_height: tip,
            effective_height,
        });
        // A retired tower it names again hears of this change, and of all that follows.
        client.retired_towers.retain(|name| !names.contains(name));
        if tightening {
            client.adopt(r.policy.clone());
            client.pending_policy = None;
            batch.delete(kind::WAITING_CHANGE, client.id.clone());
        } else {
            client.pending_policy = Some(PendingPolicy { text: r.policy.clone(), effective_height });
            batch.put(kind::WAITING_CHANGE, client.id.clone(), effective_height.to_string());
        }
        batch.alarm(alarm(
            &client.id,
            "policy-change",
            format!(
                "policy version {version} of {} {}",
                client.id,
                if tightening {
                    "only tightens: it applies now".to_owned()
                } else {
                    format!("applies at block {effective_height}")
                }
            ),
        ));
        Self::queue_order(
            store,
            &mut batch,
            &client.id,
            change_order(&client.id, &r.policy, version, signatures, (tip, effective_height)),
        )?;
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        drop(deciding);
        let towers = self.push_orders(&client.id)?;
        Ok(PolicyChangeStatus { approvals: count, needed, version, effective_height, towers })
    }

    /// `GET /v1/policy/changes`: every change the quorum signed, with its signatures, for any
    /// party of the client (each checks them from the policy it pinned), and the tip.
    pub fn policy_changes(&self, caller: &Caller) -> Result<crate::wire::PolicyChanges, Refusal> {
        Ok(crate::wire::PolicyChanges {
            tip: self.tip()?,
            changes: caller.client.changes.clone(),
            current_version: caller.policy().version,
        })
    }

    /// Applies every waiting change whose height has come (the background loop; requests
    /// apply their own client's on the way in).
    pub fn apply_due_changes(&self) {
        let Ok(tip) = self.tip() else { return };
        let Ok(waiting) = self.store().list(kind::WAITING_CHANGE, "") else { return };
        for (id, height) in waiting {
            if height.parse::<u32>().is_ok_and(|h| h > tip) {
                continue;
            }
            // Read under the client's lock: a request may have changed it since it was listed.
            let _deciding = self.decide(&id);
            let Ok(Some((mut client, body))) = Self::client_stored(self.store(), &id) else { continue };
            let mut batch = Batch::default();
            if client.apply_due(tip) {
                batch
                    .expect(kind::CLIENT, id.clone(), Some(body))
                    .put(kind::CLIENT, id.clone(), serde_json::to_string(&client).expect("json"))
                    .alarm(applied_alarm(&client, tip));
            }
            // Applied now, or already (the entry is stale); a change waiting still keeps it.
            match &client.pending_policy {
                Some(p) => batch.put(kind::WAITING_CHANGE, id.clone(), p.effective_height.to_string()),
                None => batch.delete(kind::WAITING_CHANGE, id.clone()),
            };
            if let Err(e) = self.store().commit(&batch) {
                tracing::error!(client = %id, error = %e, "cannot apply a policy change");
            }
        }
    }
}

/// The alarm of a waiting change that applied at `tip`.
fn applied_alarm(client: &ClientRecord, tip: u32) -> String {
    let id = &client.id;
    alarm(
        id,
        "policy-applied",
        format!("the waiting policy change of {id} applies from block {tip}{}", added_towers(client)),
    )
}

/// What the alarm of an applied change says of the towers it added: they know nothing of the
/// client until enrolled.
fn added_towers(client: &ClientRecord) -> String {
    let names = |text: &str| -> Vec<String> {
        Policy::from_toml(text).map(|p| p.towers.into_iter().map(|t| t.name).collect()).unwrap_or_default()
    };
    let before = client.past_policies.last().map(|t| names(t)).unwrap_or_default();
    let added: Vec<String> = names(&client.policy).into_iter().filter(|n| !before.contains(n)).collect();
    if added.is_empty() {
        return String::new();
    }
    format!(
        ". New towers: {}. They watch nothing of this client until enrolled: the owner runs `vigil \
         enroll-tower` with a token from each one's operator",
        added.join(", ")
    )
}

/// The towers' endpoint a policy change is handed to.
pub(crate) const POLICY_PATH: &str = "/v1/policy";

/// The relay of a change the quorum signed to every tower (each acknowledges it naming the
/// height it applies from there), signed at `signed_height` to apply here from
/// `effective_height`. A wait longer than the towers' own is named, so that none applies it
/// sooner; left out otherwise, so that a tower of an earlier release takes the request.
pub(crate) fn change_order(
    client: &str,
    text: &str,
    version: u32,
    signatures: Vec<vigil_tower::wire::KeySignature>,
    (signed_height, effective_height): (u32, u32),
) -> TowerOrder {
    let longer = effective_height > signed_height + vigil_tower::GOVERNANCE_DELAY_BLOCKS;
    let body = ChangePolicy {
        nonce: 0,
        policy_id: client.to_owned(),
        policy: text.to_owned(),
        signatures,
        not_before_height: longer.then_some(effective_height),
    };
    crate::emergency::order_of(POLICY_PATH, &body, format!("policy {client} version {version} at *"))
}

/// Indexes the changes a store of an earlier release holds waiting (it kept no
/// [`kind::WAITING_CHANGE`]), once: reads every client a single time.
pub(crate) fn index_waiting_changes(store: &dyn crate::store::Store) -> Result<(), crate::error::StoreError> {
    crate::store::index_once(
        store,
        "waiting-changes-indexed",
        kind::CLIENT,
        kind::WAITING_CHANGE,
        |id, c: ClientRecord| c.pending_policy.map(|p| (id.to_owned(), p.effective_height.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn client(id: &str, waiting_until: Option<u32>) -> String {
        serde_json::json!({
            "id": id, "account": 0, "policy": "", "lockdown_until": 0, "duress_until": 0,
            "heartbeat_real": "", "heartbeat_duress": "", "next_spend": 1, "tower_nonce": 1,
            "pending_policy": waiting_until.map(|h| serde_json::json!({"text": "", "effective_height": h})),
        })
        .to_string()
    }

    #[test]
    fn a_store_of_the_previous_release_gets_its_waiting_changes_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let mut before = Batch::default();
        // An unreadable record is skipped: it does not stop the start.
        before
            .put(kind::CLIENT, "alice", client("alice", Some(1200)))
            .put(kind::CLIENT, "bob", client("bob", None))
            .put(kind::CLIENT, "dave", "not json");
        store.commit(&before).unwrap();
        index_waiting_changes(&store).unwrap();
        assert_eq!(
            store.list(kind::WAITING_CHANGE, "").unwrap(),
            vec![("alice".to_owned(), "1200".to_owned())]
        );
        // Once: a client unindexed since (by an earlier release's write) is not looked for at
        // the next start.
        let mut unindexed = Batch::default();
        unindexed.put(kind::CLIENT, "carol", client("carol", Some(1300)));
        store.commit(&unindexed).unwrap();
        index_waiting_changes(&store).unwrap();
        assert_eq!(store.list(kind::WAITING_CHANGE, "").unwrap().len(), 1);
    }
}
