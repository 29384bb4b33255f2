//! A tower a policy change removed keeps watching the vaults it was given, so it is still
//! told of every lockdown, lift, panic and change of its client. Once every vault it may
//! watch is over, its last transaction buried as deep as a tower buries it, it has nothing
//! left to act on: it is retired for that client and no longer asked. Otherwise a tower taken
//! down after its removal would be waited on and reported as not acting at every panic, and
//! would end each order in a "tower refused" alarm a day later, forever.
//!
//! The co-signer judges this from the chain alone (a tower taken down cannot be asked), in
//! its background pass, for a client with orders waiting. It needs a chain backend that finds
//! confirmed transactions (an Electrum server, or a node with a transaction index); without
//! one, no tower is retired, as before.

use std::collections::BTreeMap;

use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::{Transaction, Txid};
use vigil_tower::watch::BURY_MARGIN;

use crate::ceremony::{vault_record, VaultRecord};
use crate::error::Refusal;
use crate::joining::Stage;
use crate::service::{alarm, ClientRecord, Cosigner};
use crate::spends::SpendRecord;
use crate::store::{kind, Batch};

impl Cosigner {
    /// Retires the towers `client` (as stored) reaches only through earlier versions and
    /// that have nothing left to watch.
    pub(crate) fn retire_idle_towers(&self, client: &ClientRecord) -> Result<(), Refusal> {
        // Most clients never changed their policy: not a question for the chain.
        if client.past_policies.is_empty() {
            return Ok(());
        }
        let now = self.as_of_now(client)?;
        let mut candidates = self.retirement_candidates(&now)?;
        if candidates.is_empty() {
            self.forget_buried(&client.id);
            return Ok(());
        }
        let tip = self.tip()?;
        let mut approved = None;
        let listed = self.store().list(kind::VAULT_INDEX, &format!("{}/", client.id))?;
        for (_, outpoint) in &listed {
            if candidates.is_empty() {
                return Ok(());
            }
            // A vault not readable is taken as live under any version.
            let v = vault_record(self.store(), outpoint)?;
            let version = v
                .as_ref()
                .filter(|v| !v.policy_id.is_empty())
                .and_then(|v| self.vault_policy(&now, v).ok())
                .map(|p| p.policy().version);
            let may_hold = |last: u32| version.is_none_or(|v| v <= last);
            if !candidates.iter().any(|(_, last)| may_hold(*last)) {
                continue;
            }
            let over = match &v {
                Some(v) => {
                    let approved = match &mut approved {
                        Some(a) => a,
                        None => approved.insert(self.approved_spends(&client.id)?),
                    };
                    self.over_and_buried(&client.id, outpoint, v, approved.get(outpoint), tip)?
                }
                None => false,
            };
            if !over {
                candidates.retain(|(_, last)| !may_hold(*last));
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        // No vault may be made meanwhile: a ceremony begins and completes under the
        // ceremonies' lock, taken before the client's. One open now may be under a version that
        // names a candidate, and one completed since the listing was not judged.
        let open = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().any(|c| c.client() == client.id) {
            return Ok(());
        }
        let _deciding = self.decide(&client.id);
        let store = self.store();
        if store.list(kind::VAULT_INDEX, &format!("{}/", client.id))? != listed {
            return Ok(());
        }
        let (mut record, text) = Self::client_stored(store, &client.id)?.ok_or(Refusal::Internal)?;
        // A change applied or signed meanwhile may name one of them again.
        let still = self.retirement_candidates(&self.as_of_now(&record)?)?;
        candidates.retain(|c| still.contains(c));
        if candidates.is_empty() {
            return Ok(());
        }
        let every_one = candidates.len() == still.len();
        let mut batch = Batch::default();
        for (name, _) in candidates {
            tracing::info!(client = %client.id, tower = %name, "tower retired: every vault it may watch is over");
            batch.alarm(alarm(
                &client.id,
                "tower-retired",
                format!(
                    "tower {name}, which a policy change removed, watches no live vault of {} any more: it is no \
                     longer sent lockdowns, lifts, panics or changes, and its operator may stop watching this client",
                    client.id
                ),
            ));
            record.retired_towers.push(name);
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(text)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&record).expect("json"),
        );
        store.commit(&batch)?;
        if every_one {
            self.forget_buried(&client.id);
        }
        Ok(())
    }

    /// The towers `now` (a client as of now) reaches only through its earlier versions, not
    /// retired yet, each with the last version that named it (a vault made under a later one
    /// was never given to it). A tower the waiting change names again is none: it must hear
    /// that change, and what comes before it applies.
    fn retirement_candidates(&self, now: &ClientRecord) -> Result<Vec<(String, u32)>, Refusal> {
        let today = self.compiled(now)?;
        let waiting = now.pending_policy.as_ref().and_then(|p| vigil_policy::Policy::from_toml(&p.text).ok());
        let named = |name: &str| {
            today.policy().towers.iter().chain(waiting.iter().flat_map(|w| &w.towers)).any(|t| t.name == name)
        };
        let mut candidates: Vec<(String, u32)> = Vec::new();
        for earlier in self.client_policies(now)?.iter().skip(1) {
            let policy = earlier.policy();
            for tower in &policy.towers {
                if named(&tower.name) || now.retired_towers.contains(&tower.name) {
                    continue;
                }
                match candidates.iter_mut().find(|(name, _)| *name == tower.name) {
                    Some((_, last)) => *last = (*last).max(policy.version),
                    None => candidates.push((tower.name.clone(), policy.version)),
                }
            }
        }
        Ok(candidates)
    }

    /// The txids of the spends the co-signer approved for `client`, by vault.
    fn approved_spends(&self, client: &str) -> Result<BTreeMap<String, Vec<Txid>>, Refusal> {
        let mut by_vault: BTreeMap<String, Vec<Txid>> = BTreeMap::new();
        for (_, body) in self.store().list(kind::SPEND, &format!("{client}/"))? {
            let s: SpendRecord = serde_json::from_str(&body).map_err(|_| Refusal::Internal)?;
            if s.approved_height.is_some() {
                let txid = s.approval.spend_txid.parse().map_err(|_| Refusal::Internal)?;
                by_vault.entry(s.approval.vault_outpoint).or_default().push(txid);
            }
        }
        Ok(by_vault)
    }

    /// Drops what was found buried for `client`: no tower is left to retire for it.
    fn forget_buried(&self, client: &str) {
        self.buried_vaults.lock().unwrap_or_else(|p| p.into_inner()).remove(client);
    }

    /// Whether `v` is over, the transaction that ended it (an approved spend, a cancel or an
    /// emergency) confirmed at least [`BURY_MARGIN`] blocks below `tip`. A vault ended any
    /// other way (its funding never confirmed, V spent by neither U nor E) is never judged
    /// over: a tower may still be the one that raises the alarm.
    fn over_and_buried(
        &self,
        client: &str,
        outpoint: &str,
        v: &VaultRecord,
        approved: Option<&Vec<Txid>>,
        tip: u32,
    ) -> Result<bool, Refusal> {
        let buried = || self.buried_vaults.lock().unwrap_or_else(|p| p.into_inner());
        if buried().get(client).is_some_and(|b| b.contains(outpoint)) {
            return Ok(true);
        }
        if !matches!(self.stage(v)?, Stage::Over) {
            return Ok(false);
        }
        let r = &v.registration;
        let presigned = r.cancels.iter().chain(&r.unvault_emergencies).chain(&r.emergencies);
        let presigned = presigned
            .map(|hex| deserialize_hex::<Transaction>(hex).map(|tx| tx.compute_txid()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Refusal::Internal)?;
        for txid in approved.into_iter().flatten().chain(&presigned) {
            if let Some((_, Some(height))) = self.chain.transaction_info(txid)? {
                if tip >= height + BURY_MARGIN {
                    buried().entry(client.to_owned()).or_default().insert(outpoint.to_owned());
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
