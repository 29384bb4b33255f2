//! What the co-signer must get to every tower of a client besides vaults and approvals:
//! lockdowns (plain, or quiet under duress), their early lift by the guardians' quorum, and
//! panics. Each order is committed with the event that caused it and pushed until every
//! tower acknowledged it, across restarts; a request never waits on it unless it asked to
//! (a panic reports which towers acted).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Refusal;
use crate::service::Cosigner;
use crate::store::{kind, Batch};
use crate::wire::TowerReport;

/// One request every tower of a client must acknowledge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerOrder {
    /// The tower's endpoint (`/v1/lockdown`).
    pub path: String,
    /// The request's body, without its nonce (set per tower when sent).
    pub body: Value,
    /// What the tower's acknowledgement names.
    pub subject: String,
    /// Towers (by name) that acknowledged it.
    pub acked: Vec<String>,
    /// Towers (by name) that kept refusing it past the give-up time: not asked again (the
    /// guardians are told).
    #[serde(default)]
    pub refused: Vec<String>,
    /// Towers refusing it now, with the unix time their refusals began.
    #[serde(default)]
    pub refusing_since: std::collections::BTreeMap<String, u64>,
    /// The towers it is for (an approval: today's and its vault's version's); none: every
    /// tower of every version.
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// The spend request an approval belongs to, whose tower reports each acknowledgement
    /// brings up to date (the owner's client sends the unvault once every tower has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<u64>,
}

/// What one pass of [`Cosigner::push_pass`] heard.
pub(crate) struct Pass {
    /// Where the last order stands at each of its towers.
    pub last: Vec<TowerReport>,
    /// Each order sent (path, subject) with the answers of the towers asked.
    pub answers: Vec<(String, String, Vec<TowerReport>)>,
}

impl TowerOrder {
    fn settled(&self, tower: &str) -> bool {
        self.acked.iter().chain(&self.refused).any(|t| t == tower)
    }

    /// Whether it is for `tower` at all.
    fn is_for(&self, tower: &str) -> bool {
        self.only.as_ref().is_none_or(|names| names.iter().any(|n| n == tower))
    }

    /// Whether `tower` has yet to take it.
    pub(crate) fn owed_by(&self, tower: &str) -> bool {
        self.is_for(tower) && !self.settled(tower)
    }
}

/// `client`'s orders as `batch` leaves them (an order it queued already counts); read from
/// the store, the batch commits only if they are still the same then.
pub(crate) fn queued_orders(
    store: &dyn crate::store::Store,
    batch: &mut Batch,
    client: &str,
) -> Result<Vec<TowerOrder>, Refusal> {
    let text = match batch.put.iter().rev().find(|(k, id, _)| *k == kind::ORDERS && id == client) {
        Some((_, _, text)) => Some(text.clone()),
        None => {
            let stored = store.get(kind::ORDERS, client)?;
            batch.expect(kind::ORDERS, client.to_owned(), stored.clone());
            stored
        }
    };
    Ok(text
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|_| Refusal::Internal)?
        .unwrap_or_default())
}

/// Writes `orders` as `client`'s in `batch`, read first by [`queued_orders`].
pub(crate) fn put_orders(batch: &mut Batch, client: &str, orders: &[TowerOrder]) {
    let text = serde_json::to_string(orders).expect("json");
    match batch.put.iter_mut().rev().find(|(k, id, _)| *k == kind::ORDERS && id == client) {
        Some(queued) => queued.2 = text,
        None => {
            batch.put(kind::ORDERS, client.to_owned(), text);
        }
    }
}

/// Where a tower takes a lockdown.
pub(crate) const LOCKDOWN_PATH: &str = "/v1/lockdown";

impl Cosigner {
    /// Adds `order` for `client` to `batch` (committed by the caller with its cause).
    pub(crate) fn queue_order(
        store: &dyn crate::store::Store,
        batch: &mut Batch,
        client: &str,
        order: TowerOrder,
    ) -> Result<(), Refusal> {
        let mut orders = queued_orders(store, batch, client)?;
        // An approval replaces one of the same unvault still owed: that one lapsed, and the
        // towers take only the higher counter.
        if order.path == crate::spends::APPROVALS_PATH {
            orders.retain(|o| o.path != order.path || o.subject != order.subject);
        }
        // Lockdowns in a row collapse into the longest (a tower's only grows): any party may
        // send one after another, each one more order for every tower.
        let collapses = |last: &TowerOrder| {
            last.path == LOCKDOWN_PATH
                && last.only.is_none()
                && last.body["quiet"] == order.body["quiet"]
                && (last.body["until_height"].as_u64())
                    .zip(order.body["until_height"].as_u64())
                    .is_some_and(|(before, now)| before <= now)
        };
        if order.path == LOCKDOWN_PATH && order.only.is_none() && orders.last().is_some_and(collapses) {
            orders.pop();
        }
        orders.push(order);
        put_orders(batch, client, &orders);
        Ok(())
    }

    /// Pushes `client`'s orders to the towers that have not acknowledged them; returns the
    /// reports of the last one.
    pub fn push_orders(&self, client_id: &str) -> Result<Vec<TowerReport>, Refusal> {
        Ok(self.push_pass(client_id)?.last)
    }

    /// [`Cosigner::push_orders`], with every answer of the pass.
    pub(crate) fn push_pass(&self, client_id: &str) -> Result<Pass, Refusal> {
        self.push_pass_as(client_id, false)
    }

    /// [`Cosigner::push_pass`]; `soon`: on [`Cosigner::push_soon`]'s thread, which lets
    /// another push be asked once it holds the client's lock (it reads the orders after).
    fn push_pass_as(&self, client_id: &str, soon: bool) -> Result<Pass, Refusal> {
        // One push per client at a time, reading the orders under the same lock.
        let lock = self.towers_lock(client_id);
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        if soon {
            self.pushes_starting.lock().unwrap_or_else(|p| p.into_inner()).remove(client_id);
        }
        let (orders, client) = {
            let _deciding = self.decide(client_id);
            let store = self.store();
            let Some(text) = store.get(kind::ORDERS, client_id)? else {
                return Ok(Pass { last: Vec::new(), answers: Vec::new() });
            };
            let orders: Vec<TowerOrder> = serde_json::from_str(&text).map_err(|_| Refusal::Internal)?;
            (orders, Self::client(store, client_id)?.ok_or(Refusal::Internal)?)
        };
        // Every tower of every version (one a change removed still watches older vaults),
        // but those retired.
        let now = self.as_of_now(&client)?;
        let reach = self.reach(&now)?;
        let towers = &reach.towers;
        let current = self.compiled(&now)?.policy().towers.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let key = self.keys.auth_keypair(client.account);
        let mut last = Vec::new();
        let mut done: Vec<(String, String, Vec<TowerReport>)> = Vec::new();
        // The body of each order in `done`, as sent.
        let mut sent: Vec<&Value> = Vec::new();
        // A tower that did not answer one order is not asked the next ones in this pass (each
        // would wait out the timeout, panics included); they count as unanswered by it.
        let mut silent: Vec<TowerReport> = Vec::new();
        // Vaults a joining tower is no longer given (below).
        let mut withheld: Vec<&TowerOrder> = Vec::new();
        for order in &orders {
            let (skipped, missing): (Vec<String>, Vec<String>) = towers
                .iter()
                .filter(|t| order.owed_by(&t.name))
                .map(|t| t.name.clone())
                .partition(|name| silent.iter().any(|r| r.name == *name));
            if missing.is_empty() && skipped.is_empty() {
                continue;
            }
            // A vault given to a joining tower (it was down, or refused for a while) whose
            // unvault went out since under an approval that may cover it: the tower would
            // cancel it at first sight, before the approval reaches it. The towers that hold
            // it keep it.
            if order.path == crate::joining::VAULTS_PATH
                && self.unvaulted_under_approval(client_id, &order.subject)?
            {
                tracing::info!(client = %client_id, vault = %order.subject, "not given to a joining tower: its approved unvault is out");
                withheld.push(order);
                continue;
            }
            let mut answered = Vec::new();
            if !missing.is_empty() {
                let nonce = self.tower_nonces(client_id, towers.len() as u64)?;
                let reports = crate::towers::post_all(
                    &reach,
                    &key,
                    &order.path,
                    &order.subject,
                    &|t| {
                        let mut body = order.body.clone();
                        body["nonce"] = Value::from(nonce + t as u64);
                        serde_json::to_vec(&body).expect("json")
                    },
                    Some(&missing),
                );
                answered.extend(reports.into_iter().filter(|r| missing.contains(&r.name)));
                silent.extend(answered.iter().filter(|r| !r.acknowledged && r.refused.is_none()).cloned());
            }
            // Reported as that first order was: whether it was asked this one or not must not
            // show (under duress an order more is owed to each tower).
            answered
                .extend(skipped.iter().filter_map(|name| silent.iter().find(|r| r.name == *name)).cloned());
            // Where this order stands at each of its towers: as answered now, else as settled.
            last = towers
                .iter()
                .filter(|t| order.is_for(&t.name))
                .map(|t| {
                    answered.iter().find(|r| r.name == t.name).cloned().unwrap_or_else(|| TowerReport {
                        name: t.name.clone(),
                        acknowledged: order.acked.contains(&t.name),
                        refused: order
                            .refused
                            .contains(&t.name)
                            .then(|| "it refused this for good".to_owned()),
                        error: None,
                    })
                })
                .collect();
            done.push((order.path.clone(), order.subject.clone(), answered));
            sent.push(&order.body);
        }
        // Record the acknowledgements on the orders as they are now (others may have been
        // queued meanwhile, one may have replaced another of the same subject), each by what
        // it is and says; drop the orders every tower has.
        let _deciding = self.decide(client_id);
        let store = self.store();
        let before = store.get(kind::ORDERS, client_id)?;
        let mut now: Vec<TowerOrder> = before
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|_| Refusal::Internal)?
            .unwrap_or_default();
        let mut batch = Batch::default();
        let time = crate::service::now();
        // Towers a policy change is still owed to (its order queued behind an enrollment).
        let change_owed: Vec<String> = towers
            .iter()
            .filter(|t| now.iter().any(|o| o.path == crate::governance::POLICY_PATH && o.owed_by(&t.name)))
            .map(|t| t.name.clone())
            .collect();
        for ((path, subject, answered), body) in done.iter().zip(&sent) {
            for o in now.iter_mut().filter(|o| o.path == *path && o.subject == *subject && o.body == **body) {
                // Towers this approval's vault was kept from: it does not concern them.
                let mut kept_away = Vec::new();
                for report in answered {
                    if o.settled(&report.name) {
                        continue;
                    }
                    // A removed tower that does not answer is given up on like one that
                    // refuses: it may be gone for good, and its orders would pile up.
                    let removed_silent = (!current.contains(&report.name))
                        .then(|| "it does not answer, and a policy change removed it".to_owned());
                    if report.acknowledged {
                        o.acked.push(report.name.clone());
                        o.refusing_since.remove(&report.name);
                    } else if let Some(why) = report.refused.as_ref().or(removed_silent.as_ref()) {
                        // An approval of a vault this tower was knowingly not given when it
                        // joined: it has nothing to act on, and nothing is wrong with it.
                        let vault = o.body["approval"]["vault_outpoint"].as_str();
                        if o.path == crate::spends::APPROVALS_PATH
                            && why.starts_with("404")
                            && vault.is_some_and(|v| self.kept_from(v, &report.name))
                        {
                            tracing::info!(client = %client_id, tower = %report.name, %subject, "approval of a vault kept from this tower: settled");
                            o.refused.push(report.name.clone());
                            o.refusing_since.remove(&report.name);
                            kept_away.push(report.name.clone());
                            continue;
                        }
                        // Refused again and again past the give-up time: said once, loudly,
                        // and settled rather than sent forever. An enrollment the tower
                        // refuses for holding an earlier version (one pinned there first,
                        // maybe by whoever holds the owner's device) is said at once: asking
                        // again changes nothing, unless a change still owed to it moves it.
                        let since = *o.refusing_since.entry(report.name.clone()).or_insert(time);
                        let holds_earlier = o.path == crate::joining::ENROLL_PATH
                            && why.starts_with("409")
                            && why.contains("holds client")
                            && !change_owed.contains(&report.name);
                        if holds_earlier
                            || time.saturating_sub(since) >= self.config.tower_refusal_give_up_secs
                        {
                            tracing::error!(client = %client_id, tower = %report.name, %subject, %why, "tower refused an order for good");
                            batch.alarm(crate::service::alarm(
                                client_id,
                                "tower-refused",
                                format!(
                                    "tower {} did not take \"{subject}\" ({why}); it is not sent again. Check that tower.",
                                    report.name
                                ),
                            ));
                            o.refused.push(report.name.clone());
                            o.refusing_since.remove(&report.name);
                        }
                    }
                }
                self.hear_approval_answers(store, &mut batch, client_id, o, answered, &kept_away);
            }
        }
        now.retain(|o| towers.iter().any(|t| o.owed_by(&t.name)));
        // With the approvals it was to get after it (they would find no vault there).
        let with_it = |o: &TowerOrder, w: &TowerOrder| {
            (o.path == w.path && o.subject == w.subject && o.body == w.body)
                || (o.path == crate::spends::APPROVALS_PATH
                    && o.only == w.only
                    && o.body["approval"]["vault_outpoint"].as_str() == Some(w.subject.as_str()))
        };
        now.retain(|o| !withheld.iter().any(|w| with_it(o, w)));
        for w in &withheld {
            for tower in w.only.iter().flatten().filter(|t| w.owed_by(t)) {
                batch.put(kind::KEPT_FROM, crate::joining::kept_key(&w.subject, tower), tower.clone());
            }
        }
        batch.expect(kind::ORDERS, client_id.to_owned(), before);
        if now.is_empty() {
            batch.delete(kind::ORDERS, client_id.to_owned());
        } else {
            batch.put(kind::ORDERS, client_id.to_owned(), serde_json::to_string(&now).expect("json"));
        }
        store.commit(&batch)?;
        Ok(Pass { last, answers: done })
    }

    /// Pushes every client's pending orders (the background loop, and after a restart).
    pub fn push_all_orders(&self) {
        let clients: Vec<String> = match self.store().list(kind::ORDERS, "") {
            Ok(all) => all.into_iter().map(|(id, _)| id).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the towers' orders");
                return;
            }
        };
        for client in clients {
            // Off any request's path (a panic waits for its push): the chain may be asked a
            // lot for a client with many vaults over.
            let record = Self::client(self.store(), &client);
            if let Err(e) = record.and_then(|r| r.map_or(Ok(()), |r| self.retire_idle_towers(&r))) {
                tracing::warn!(%client, error = %e.message(), "cannot tell whether a removed tower is idle");
            }
            if let Err(e) = self.push_orders(&client) {
                tracing::warn!(%client, error = %e.message(), "orders not delivered to every tower yet");
            }
        }
    }

    /// Pushes `client`'s orders on a thread of their own: the request that queued them does
    /// not wait (a duress heartbeat must answer as fast as any other). One thread at most
    /// waits to start per client: lockdowns sent again and again while a tower hangs must
    /// not pile up threads, and the waiting one reads every order queued until it starts.
    pub(crate) fn push_soon(self: &std::sync::Arc<Self>, client: String) {
        if !self.pushes_starting.lock().unwrap_or_else(|p| p.into_inner()).insert(client.clone()) {
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = me.push_pass_as(&client, true) {
                tracing::warn!(%client, error = %e.message(), "orders not delivered to every tower yet");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    fn order(path: &str, subject: &str, n: u64) -> TowerOrder {
        TowerOrder {
            path: path.into(),
            body: serde_json::json!({ "n": n }),
            subject: subject.into(),
            acked: Vec::new(),
            refused: Vec::new(),
            refusing_since: Default::default(),
            only: None,
            spend: None,
        }
    }

    #[test]
    fn an_approval_replaces_the_one_of_the_same_unvault_still_owed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let approvals = crate::spends::APPROVALS_PATH;
        for o in [
            order(approvals, "u1", 1),
            order("/v1/lockdown", "u1", 2),
            order(approvals, "u2", 3),
            order(approvals, "u1", 4),
            order("/v1/lockdown", "u1", 5),
        ] {
            let mut batch = Batch::default();
            Cosigner::queue_order(&store, &mut batch, "c", o).unwrap();
            store.commit(&batch).unwrap();
        }
        let left: Vec<TowerOrder> =
            serde_json::from_str(&store.get(kind::ORDERS, "c").unwrap().unwrap()).unwrap();
        let left: Vec<u64> = left.iter().map(|o| o.body["n"].as_u64().unwrap()).collect();
        assert_eq!(left, [2, 3, 4, 5]);
    }

    /// Lockdowns one after another (any party may send them at will) are one order, the
    /// longest; not across another order, nor a plain one with a quiet one.
    #[test]
    fn lockdowns_in_a_row_collapse_into_the_longest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let lockdown = |until, quiet| crate::emergency::lockdown_order("c", until, quiet);
        for o in [
            lockdown(10, false),
            lockdown(11, false),
            lockdown(12, false),
            lockdown(12, true),
            order("/v1/vaults", "v", 1),
            lockdown(13, false),
            lockdown(14, false),
        ] {
            let mut batch = Batch::default();
            Cosigner::queue_order(&store, &mut batch, "c", o).unwrap();
            store.commit(&batch).unwrap();
        }
        let left: Vec<TowerOrder> =
            serde_json::from_str(&store.get(kind::ORDERS, "c").unwrap().unwrap()).unwrap();
        let left: Vec<String> = left.iter().map(|o| format!("{} {}", o.subject, o.body["quiet"])).collect();
        assert_eq!(left, ["lockdown c 12 false", "lockdown c 12 true", "v null", "lockdown c 14 false"]);
    }

    #[test]
    fn orders_queued_in_one_batch_are_all_kept_in_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let mut batch = Batch::default();
        Cosigner::queue_order(&store, &mut batch, "c", order("/v1/lockdown", "a", 1)).unwrap();
        store.commit(&batch).unwrap();
        let mut batch = Batch::default();
        for n in [2, 3] {
            Cosigner::queue_order(&store, &mut batch, "c", order("/v1/vaults", "v", n)).unwrap();
        }
        Cosigner::queue_order(&store, &mut batch, "other", order("/v1/vaults", "w", 9)).unwrap();
        store.commit(&batch).unwrap();
        let left = |client| -> Vec<u64> {
            let orders: Vec<TowerOrder> =
                serde_json::from_str(&store.get(kind::ORDERS, client).unwrap().unwrap()).unwrap();
            orders.iter().map(|o| o.body["n"].as_u64().unwrap()).collect()
        };
        assert_eq!((left("c"), left("other")), (vec![1, 2, 3], vec![9]));
    }
}
