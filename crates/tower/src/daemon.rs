//! The running tower: the shared state behind its API and its loops, start-up (catch up
//! before serving), one watch step, broadcasting, outages, metrics.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use vigil_chain::{
    BackendError, BitcoindRpc, BlockEvent, BlockId, ChainBackend, ElectrumBackend, FollowError, Follower,
};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
use vigil_policy::bitcoin::OutPoint;

use crate::client::{ladder_out_of_reach, policy_id, Client, ClientRecord, PolicyChange};
use crate::config::{read_key_file, ChainConfig, RpcAuth, StoreConfig, TowerConfig};
use crate::error::{ClientPolicyError, StoreError, TowerError};
use crate::fees::{FeeCoin, FeePolicy, FeeWallet};
use crate::store::{self, PostgresStore, SqliteStore, TowerStore};
use crate::vault::{Action, AlarmKind};
use crate::watch::Watcher;

/// The shared state of a running tower.
pub struct Tower {
    /// Clients by id; a policy change swaps the entry when it applies.
    pub(crate) clients: RwLock<HashMap<String, Arc<Client>>>,
    /// Watcher and store, behind one lock: a decision and its record never interleave.
    pub(crate) state: Mutex<TowerState>,
    /// The chain backend.
    pub(crate) backend: Box<dyn ChainBackend>,
    /// The tower's identity.
    pub(crate) key: Keypair,
    /// Chain position; its own lock, so backend round trips never hold up the API.
    follower: Mutex<Follower>,
    /// A store connection for reads (metrics, the alarm feed), so they never wait on the
    /// state lock, nor hold it up.
    pub(crate) read_store: Mutex<Box<dyn TowerStore>>,
    /// Stop flag.
    pub(crate) stopping: AtomicBool,
    /// Why a request stopped the tower (a write failed, a handler panicked), if one did.
    failure: Mutex<Option<String>>,
    pub(crate) config: TowerConfig,
}

/// What the state lock protects.
pub(crate) struct TowerState {
    /// Decisions.
    pub watcher: Watcher,
    /// Records.
    pub store: Box<dyn TowerStore>,
    /// Backend tip height last seen (for "blocks behind").
    pub backend_tip: u32,
    /// Whether the last poll reached the backend.
    pub backend_up: bool,
    /// Last successful poll, wall-clock milliseconds.
    pub last_contact_ms: u64,
    /// The first failed poll of the outage under way, in this process: its length is never
    /// less than this says, whatever the wall clock does.
    pub outage_seen: Option<Instant>,
    /// The backend outage under way, recorded: a restart neither restarts its clock (a tower
    /// restarted more often than `outage_alarm_secs` would never alarm) nor alarms it again.
    pub outage: Option<Outage>,
    /// `outage` changed since it was last recorded.
    pub outage_dirty: bool,
    /// Blocks are not being processed: the chain reorganised deeper than the follower
    /// remembers (how many it remembered). The mempool is still watched.
    pub reorg_too_deep: Option<usize>,
    /// Guardian-signed policy changes waiting for their height, by client.
    pub pending: HashMap<String, PolicyChange>,
    /// Clients whose record changed, to write with the next step.
    pub changed_clients: Vec<ClientRecord>,
    /// Panic ids used, to write with the next step.
    pub used_panics: Vec<String>,
}

/// A backend outage, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Outage {
    /// The last successful poll before it, wall-clock milliseconds.
    pub since_ms: u64,
    /// Its alarm was raised.
    pub alarmed: bool,
}

/// Wall-clock milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TowerState {
    /// The highest height this tower knows of: its own tip, or the backend's when ahead.
    pub fn known_height(&self) -> u32 {
        self.watcher.tip().max(self.backend_tip).max(self.watcher.chain_tip())
    }

    /// [`Self::known_height`] while the tower follows the chain and has processed every block
    /// up to it; `None` otherwise (its backend down, a reorganisation deeper than it
    /// remembers, blocks still to process): what is dated then could be dated in the past.
    pub fn followed_height(&self) -> Option<u32> {
        let known = self.known_height();
        (self.backend_up && self.reorg_too_deep.is_none() && self.watcher.tip() >= known).then_some(known)
    }

    /// Records the watcher's changes (vault states, fee wallet), changed clients, used panic
    /// ids, the follower's position if given, and `actions`, in one store transaction.
    pub fn record(
        &mut self,
        recent: Option<&[BlockId]>,
        actions: &[Action],
    ) -> Result<Vec<(i64, Action)>, StoreError> {
        let vaults = self.watcher.take_dirty();
        let mut records = Vec::new();
        if self.watcher.take_wallet_dirty() {
            if let Some(w) = self.watcher.fee_wallet() {
                let coins: Vec<(&OutPoint, &FeeCoin)> = w.coins().iter().collect();
                records.push((
                    "fee_wallet",
                    serde_json::to_string(&coins).map_err(StoreError::corrupt("fee wallet"))?,
                ));
                records.push(("fee_wallet_low", self.watcher.fee_wallet_low().to_string()));
            }
        }
        if self.watcher.take_lockdowns_dirty() {
            records.push((
                "lockdowns",
                serde_json::to_string(self.watcher.lockdowns()).map_err(StoreError::corrupt("lockdowns"))?,
            ));
        }
        if std::mem::take(&mut self.outage_dirty) {
            records.push((
                "backend_outage",
                serde_json::to_string(&self.outage).map_err(StoreError::corrupt("backend outage"))?,
            ));
        }
        let clients = std::mem::take(&mut self.changed_clients);
        let panics = std::mem::take(&mut self.used_panics);
        let step = store::Step {
            vaults: &vaults,
            recent,
            records: &records,
            clients: &clients,
            panics: &panics,
            actions,
        };
        let broadcasts = self.store.commit_step(step)?;
        log_actions(actions);
        Ok(broadcasts)
    }

    /// The record of `client` with its pending change as it stands.
    pub fn client_record(&self, client: &Client) -> ClientRecord {
        ClientRecord {
            id: client.id.clone(),
            policy: client.text.clone(),
            pending: self.pending.get(&client.id).cloned(),
            earlier: client.earlier.clone(),
        }
    }
}

/// Opens the store a configuration names.
pub fn open_store(config: &TowerConfig) -> Result<Box<dyn TowerStore>, TowerError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => {
            std::fs::create_dir_all(&config.datadir)?;
            Box::new(SqliteStore::open(&config.datadir.join("tower.sqlite"))?)
        }
        StoreConfig::Postgres { url, schema } => Box::new(PostgresStore::connect(url, schema)?),
    })
}

/// The chain backend a configuration names.
pub fn backend(chain: &ChainConfig) -> Box<dyn ChainBackend> {
    match chain {
        ChainConfig::Bitcoind { url, auth, rest, .. } => {
            let rpc = match auth {
                RpcAuth::UserPassword { user, password } => BitcoindRpc::new(url, user, password),
                RpcAuth::Cookie(path) => BitcoindRpc::with_cookie(url, path),
            };
            Box::new(rpc.with_rest(*rest))
        }
        ChainConfig::Electrum { url } => Box::new(ElectrumBackend::new(url)),
    }
}

/// The fee wallet's stress feerate must be above `client`'s top ladder rung, or it could not
/// pay beyond the ladder.
fn check_stress(config: &TowerConfig, client: &str, policy: &vigil_policy::Policy) -> Result<(), TowerError> {
    let reason = config.fee_wallet.as_ref().and_then(|fw| ladder_out_of_reach(policy, fw.stress_sat_per_vb));
    match reason {
        Some(reason) => Err(TowerError::Config {
            field: "fee_wallet.stress_sat_per_vb".into(),
            reason: format!("client {client}: {reason}"),
        }),
        None => Ok(()),
    }
}

impl Tower {
    /// Opens the store, pins the configured clients, loads everything recorded, and catches up
    /// with the chain (replaying every block since the last one processed) before anything is
    /// served.
    pub fn start(config: TowerConfig) -> Result<Arc<Tower>, TowerError> {
        let secp = Secp256k1::new();
        let key = Keypair::from_secret_key(&secp, &read_key_file(&config.key_file)?);
        let fee_key = config
            .fee_wallet
            .as_ref()
            .map(|fw| read_key_file(&fw.key_file).map(|k| Keypair::from_secret_key(&secp, &k)))
            .transpose()?;
        // Every configured client must build before anything is created.
        let mut configured = Vec::new();
        for c in &config.clients {
            let refuse =
                |source: ClientPolicyError| TowerError::ClientPolicy { path: c.policy.clone(), source };
            let text = std::fs::read_to_string(&c.policy).map_err(|e| refuse(e.into()))?;
            let id = policy_id(&text);
            let client = Client::new(&id, &text).map_err(|e| refuse(e.into()))?;
            check_stress(&config, &client.id, &client.policy)?;
            configured.push((id, text, c.policy.clone()));
        }
        let backend = backend(&config.chain);
        let mut store = open_store(&config)?;
        for (id, text, path) in &configured {
            if store.pin_client(id, text)? {
                tracing::info!(client = %id, policy = %path.display(), "client pinned");
            }
        }
        let loaded = store.load()?;
        let mut clients = HashMap::new();
        let mut pending = HashMap::new();
        let mut watcher = Watcher::new();
        for record in loaded.clients {
            // A stored policy once built; one that no longer does is a store to investigate.
            let client = Client::new(&record.id, &record.policy)
                .map_err(|_| StoreError::Invalid { what: "client policy", value: record.id.clone() })?
                .with_earlier(&record.earlier);
            check_stress(&config, &client.id, &client.policy)?;
            watcher.set_limits(&record.id, client.limits());
            if let Some(change) = record.pending {
                // A waiting change was checked against the stress feerate when it was accepted;
                // a configuration lowered since must not let it apply out of reach.
                if let Ok(policy) = vigil_policy::Policy::from_toml(&change.policy) {
                    check_stress(&config, &client.id, &policy)?;
                }
                pending.insert(record.id.clone(), change);
            }
            clients.insert(record.id, Arc::new(client));
        }
        // The tip as last recorded: nothing is decided at height 0 in the moments after a
        // restart (an expired approval, a governance delay counted from 0).
        watcher.set_tip(loaded.recent.last().map(|b| b.height).unwrap_or(0));
        if let (Some(fw), Some(fee_key)) = (&config.fee_wallet, fee_key) {
            let policy =
                FeePolicy { stress_sat_per_vb: fw.stress_sat_per_vb, bump_sat_per_vb: fw.bump_sat_per_vb };
            let mut wallet = FeeWallet::new(fee_key, policy);
            if let Some(text) = loaded.records.get("fee_wallet") {
                let coins: Vec<(OutPoint, FeeCoin)> =
                    serde_json::from_str(text).map_err(StoreError::corrupt("fee wallet"))?;
                wallet.restore(coins.into_iter().collect());
            }
            watcher.set_fee_wallet(wallet);
            watcher.restore_fee_wallet_low(loaded.records.get("fee_wallet_low").is_some_and(|t| t == "true"));
        }
        if let Some(text) = loaded.records.get("lockdowns") {
            watcher.restore_lockdowns(serde_json::from_str(text).map_err(StoreError::corrupt("lockdowns"))?);
        }
        let outage: Option<Outage> = match loaded.records.get("backend_outage") {
            Some(text) => serde_json::from_str(text).map_err(StoreError::corrupt("backend outage"))?,
            None => None,
        };
        watcher.set_duress_margin(config.duress_margin_blocks);
        // Idle vaults' transactions stay in the store, read back through a second connection.
        watcher.set_graphs(Box::new(store::StoreGraphs(open_store(&config)?)));
        store.load_vaults(&mut |vault| watcher.add_vault(vault))?;
        // After the vaults: an approval whose replacement was committed just before a crash,
        // and what it does to its unvault not yet, is judged again.
        let mut replaced = Vec::new();
        for approval in loaded.approvals {
            replaced.extend(watcher.add_approval(approval.unvault, approval.terms));
        }
        if let Some(e) = watcher.take_graph_error() {
            return Err(e.into());
        }
        for vault in watcher.vaults() {
            backend.watch_scripts(&vault.watched_scripts());
        }
        if let Some(wallet) = watcher.fee_wallet() {
            backend.watch_scripts(std::slice::from_ref(wallet.script()));
        }
        // The highest height known survives a restart: a node found behind it (reindexing,
        // another node) must not make the tower date a lockdown below heights it passed.
        let recorded_tip = watcher.tip();
        // A fresh store starts at the chain's tip: its vaults will be registered from now on
        // (and what already happened to each is looked up when it is).
        let follower = if loaded.recent.is_empty() {
            Follower::from_tip(config.follow_depth)
        } else {
            Follower::new(loaded.recent, config.follow_depth)
        };
        let state = TowerState {
            watcher,
            store,
            backend_tip: recorded_tip,
            backend_up: outage.is_none(),
            last_contact_ms: now_ms(),
            outage_seen: None,
            outage,
            outage_dirty: false,
            reorg_too_deep: None,
            pending,
            changed_clients: Vec::new(),
            used_panics: Vec::new(),
        };
        let tower = Arc::new(Tower {
            clients: RwLock::new(clients),
            state: Mutex::new(state),
            follower: Mutex::new(follower),
            read_store: Mutex::new(open_store(&config)?),
            backend,
            key,
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            config,
        });
        // Re-broadcast what was decided before a crash, then replay missed blocks.
        for (id, action) in loaded.pending_broadcasts {
            tower.broadcast(id, &action);
        }
        tower.act(tower.lock(), &replaced)?;
        tower.step()?;
        Ok(tower)
    }

    /// The tower's public key: requests are bound to it, acknowledgements signed by it.
    pub fn public_key(&self) -> XOnlyPublicKey {
        self.key.x_only_public_key().0
    }

    /// A client, by id.
    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.clients.read().expect("clients").get(id).cloned()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TowerState> {
        self.state.lock().expect("tower state")
    }

    /// Asks the tower to stop (its loops end; `run` returns).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// One round: follow the chain, watch the mempool, act. Errors from the backend are an
    /// outage (counted, alarmed when long), not a failure; store errors are fatal.
    pub fn step(&self) -> Result<(), TowerError> {
        let mut follower = self.follower.lock().expect("follower");
        let before: Vec<BlockId> = follower.recent().to_vec();
        // The position recorded with each block's decisions is the follower's window *as of
        // that block*: a crash halfway through a poll must replay the blocks not yet decided.
        let mut window = before.clone();
        let mut unrecorded = 0usize;
        // Each block is decided as soon as it arrives, while the next ones are fetched.
        let mut handle = |event: BlockEvent| -> Result<(), TowerError> {
            let mut state = self.lock();
            let mut actions = match &event {
                BlockEvent::Connected { height, hash, raw, tip } => {
                    window.push(BlockId { height: *height, hash: *hash });
                    state.backend_tip = state.backend_tip.max(*height);
                    state.watcher.set_chain_tip(*tip);
                    state
                        .watcher
                        .on_raw_block_connected(*height, raw)
                        .map_err(|source| TowerError::BadBlock { hash: *hash, source })?
                }
                BlockEvent::Disconnected { height, .. } => {
                    window.pop();
                    state.watcher.on_block_disconnected(*height);
                    Vec::new()
                }
            };
            if let Some(e) = state.watcher.take_graph_error() {
                return Err(e.into());
            }
            // A change due at this block applies before the next one is judged, as it does for
            // a tower that saw the blocks one at a time: catching up after a restart or an
            // outage must not judge an unvault the co-signer approved under it by the old rules.
            // Its alarms are the block's actions, recorded with its position: a crash before
            // that replays the block under the change's due height again.
            if matches!(event, BlockEvent::Connected { .. }) {
                actions.extend(self.apply_due_changes(&mut state));
            }
            unrecorded += 1;
            // Blocks that change nothing are recorded in batches (one fsync, not one per
            // block, when catching up); replaying them after a crash is harmless.
            if !state.watcher.has_changes() && actions.is_empty() && unrecorded < 500 {
                return Ok(());
            }
            unrecorded = 0;
            let broadcasts = state.record(Some(newest(&window, self.config.follow_depth)), &actions)?;
            drop(state);
            for (id, action) in &broadcasts {
                self.broadcast(*id, action);
            }
            Ok(())
        };
        let mut failure = None;
        let polled = follower.poll_each(self.backend.as_ref(), &mut |event| match handle(event) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let mut state = self.lock();
        if let Some(last) = follower.last() {
            let tip = state.watcher.tip().max(last.height);
            state.watcher.set_tip(tip);
            state.backend_tip = state.backend_tip.max(last.height);
        }
        if unrecorded > 0 || follower.recent() != before.as_slice() {
            state.record(Some(follower.recent()), &[])?;
        }
        match polled {
            Ok(()) => state.reorg_too_deep = None,
            Err(FollowError::TooDeep(remembered)) => self.reorg_too_deep(&mut state, remembered)?,
            Err(FollowError::Backend(e)) => {
                drop(follower);
                return self.outage(state, &e);
            }
        }
        self.apply_policy_changes(&mut state)?;
        drop(state);
        let new_block = follower.recent() != before.as_slice();
        let market = if new_block { self.backend.fee_estimate(6).ok().flatten() } else { None };
        let mempool = match follower.poll_mempool(self.backend.as_ref()) {
            Ok(txs) => txs,
            Err(e) => {
                drop(follower);
                return self.outage(self.lock(), &e);
            }
        };
        let in_mempool: HashSet<_> = follower.mempool().clone();
        drop(follower);
        // A rival spend may bring inputs of its own: its fee is the backend's to tell.
        let fees: Vec<Option<u64>> = {
            let state = self.lock();
            let needed: Vec<bool> = mempool.iter().map(|tx| state.watcher.needs_fee(tx)).collect();
            drop(state);
            mempool
                .iter()
                .zip(needed)
                .map(|(tx, needed)| if needed { self.backend.mempool_fee(tx).ok().flatten() } else { None })
                .collect()
        };
        let mut state = self.lock();
        if let Some(rate) = market {
            state.watcher.set_market_feerate(rate);
        }
        let mut actions = Vec::new();
        for (tx, fee) in mempool.iter().zip(fees) {
            actions.extend(state.watcher.on_mempool_tx_with_fee(tx, fee));
        }
        state.watcher.on_mempool_snapshot(&in_mempool);
        if let Some(e) = state.watcher.take_graph_error() {
            return Err(e.into());
        }
        state.backend_up = true;
        // Lockdowns taken while the tower did not follow the chain are dated now, at the
        // latest they can have been taken.
        if let Some(height) = state.followed_height() {
            state.watcher.date_undated_lockdowns(height);
        }
        state.last_contact_ms = now_ms();
        state.outage_seen = None;
        state.outage_dirty |= state.outage.take().is_some();
        let broadcasts = if !state.watcher.has_changes() && actions.is_empty() && !state.outage_dirty {
            Vec::new()
        } else {
            state.record(None, &actions)?
        };
        drop(state);
        for (id, action) in &broadcasts {
            self.broadcast(*id, action);
        }
        Ok(())
    }

    /// Records and acts on what a request decided (a registration's history, a panic).
    pub(crate) fn act(
        &self,
        mut state: MutexGuard<'_, TowerState>,
        actions: &[Action],
    ) -> Result<(), StoreError> {
        let broadcasts = self.record(&mut state, actions)?;
        drop(state);
        for (id, action) in &broadcasts {
            self.broadcast(*id, action);
        }
        Ok(())
    }

    /// Records what memory holds now. A failed write leaves memory ahead of the store: a
    /// request sent again would be answered from memory with what a restart forgets, so the
    /// tower stops, as when a step fails, and starts again from what the store holds.
    pub(crate) fn record(
        &self,
        state: &mut TowerState,
        actions: &[Action],
    ) -> Result<Vec<(i64, Action)>, StoreError> {
        state.record(None, actions).map_err(|e| self.fail(e))
    }

    /// Stops the tower because its store failed while a request was answered: it exits with
    /// an error (for its supervisor to start it again), not as on a signal. Returns `e`.
    pub(crate) fn fail(&self, e: StoreError) -> StoreError {
        self.stop_failed(format!("the store failed: {e}"));
        e
    }

    /// Stops the tower with an error exit, for `why` (the first reason is kept).
    pub(crate) fn stop_failed(&self, why: String) {
        tracing::error!(%why, "stopping");
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
        self.shutdown();
    }

    /// Why a request stopped the tower, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies the policy changes whose height has come.
    pub(crate) fn apply_policy_changes(&self, state: &mut TowerState) -> Result<(), StoreError> {
        let alarms = self.apply_due_changes(state);
        if !alarms.is_empty() {
            self.record(state, &alarms)?;
        }
        Ok(())
    }

    /// Applies the changes due at the watcher's tip, in memory: the changed clients wait in
    /// `state` for the next record, the alarms are returned for it.
    fn apply_due_changes(&self, state: &mut TowerState) -> Vec<Action> {
        let tip = state.watcher.tip();
        let due: Vec<PolicyChange> =
            state.pending.values().filter(|c| c.effective_height <= tip).cloned().collect();
        let mut alarms = Vec::new();
        for change in due {
            state.pending.remove(&change.client);
            let next = match self.client(&change.client) {
                Some(current) => current.changed_to(&change.policy),
                None => Client::new(&change.client, &change.policy),
            };
            match next {
                Ok(client) => {
                    state.watcher.set_limits(&change.client, client.limits());
                    let client = Arc::new(client);
                    self.clients.write().expect("clients").insert(change.client.clone(), client.clone());
                    let record = state.client_record(&client);
                    state.changed_clients.push(record);
                    alarms.push(Action::client_alarm(
                        &change.client,
                        AlarmKind::PolicyApplied,
                        format!(
                            "policy version {} of client {} applies from height {tip}",
                            change.version, change.client
                        ),
                    ));
                }
                Err(e) => {
                    if let Some(client) = self.client(&change.client) {
                        let record = state.client_record(&client);
                        state.changed_clients.push(record);
                    }
                    alarms.push(Action::client_alarm(
                        &change.client,
                        AlarmKind::PolicyInvalid,
                        format!("the accepted policy change for {} no longer builds: {e}", change.client),
                    ));
                }
            }
        }
        alarms
    }

    /// No decision taken on blocks can be trusted past a reorg deeper than the window: stop
    /// processing blocks (the unvaults in the mempool are still cancelled) and say so once.
    fn reorg_too_deep(&self, state: &mut TowerState, remembered: usize) -> Result<(), StoreError> {
        tracing::error!(remembered, "the chain reorganised deeper than this tower remembers");
        if state.reorg_too_deep.replace(remembered).is_none() {
            let alarm = Action::alarm(
                None,
                AlarmKind::ReorgTooDeep,
                format!(
                    "the chain reorganised deeper than the {remembered} blocks this tower remembers: it \
                     has stopped processing blocks and {} vaults are at risk until an operator \
                     investigates (recovery from a reorg this deep is manual)",
                    state.watcher.len()
                ),
            );
            state.record(None, std::slice::from_ref(&alarm))?;
        }
        Ok(())
    }

    fn outage(&self, mut state: MutexGuard<'_, TowerState>, why: &BackendError) -> Result<(), TowerError> {
        state.backend_up = false;
        let now = now_ms();
        let seen = *state.outage_seen.get_or_insert_with(Instant::now);
        let outage = match state.outage {
            None => Outage { since_ms: state.last_contact_ms.min(now), alarmed: false },
            // The wall clock went back past its start: it starts now, as far as it can tell.
            Some(o) if o.since_ms > now => Outage { since_ms: now, ..o },
            Some(o) => o,
        };
        if state.outage != Some(outage) {
            state.outage = Some(outage);
            state.outage_dirty = true;
        }
        let down_secs = (now.saturating_sub(outage.since_ms) / 1000).max(seen.elapsed().as_secs());
        tracing::warn!(down_secs, error = %why, "chain backend unreachable");
        let mut alarm = Vec::new();
        if down_secs >= self.config.outage_alarm_secs && !outage.alarmed {
            state.outage = Some(Outage { alarmed: true, ..outage });
            state.outage_dirty = true;
            alarm.push(Action::alarm(
                None,
                AlarmKind::BackendOutage,
                format!(
                    "chain backend unreachable for {down_secs} s: {} vaults are at risk until it returns ({why})",
                    state.watcher.len()
                ),
            ));
        }
        // The outage's start and its alarm are recorded together.
        if state.outage_dirty {
            state.record(None, &alarm)?;
        }
        Ok(())
    }

    /// Broadcasts a recorded decision; marks it done when the backend has answered for good.
    pub(crate) fn broadcast(&self, id: i64, action: &Action) {
        let (vault, what, result) = match action {
            Action::Broadcast { vault, what, tx } => {
                (vault, what, self.backend.broadcast(tx).map(|t| vec![t]))
            }
            Action::BroadcastPackage { vault, what, parent, child } => {
                (vault, what, self.backend.broadcast_package(&[parent.clone(), child.clone()]))
            }
            Action::Alarm { .. } => return,
        };
        match &result {
            Ok(txids) => tracing::info!(%vault, what, ?txids, "broadcast"),
            Err(e) => tracing::warn!(%vault, what, error = %e, "broadcast refused"),
        }
        // Unreachable or refused credentials: keep it pending for the next start; anything
        // else is final (already confirmed, replaced by a higher rung, or refused: the next
        // block escalates).
        if !matches!(result, Err(BackendError::Unreachable(_)) | Err(BackendError::Unauthorized)) {
            if let Err(e) = self.lock().store.broadcast_done(id) {
                tracing::error!(error = %e, "recording a broadcast as done");
            }
        }
    }

    /// The loop: step, then wait for a ZMQ notification or the poll interval.
    pub fn run_watch_loop(self: &Arc<Tower>) -> Result<(), TowerError> {
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let zmq = match &self.config.chain {
            ChainConfig::Bitcoind { zmq, .. } => zmq.as_deref(),
            ChainConfig::Electrum { .. } => None,
        };
        let doorbell = zmq.and_then(|endpoint| {
            vigil_chain::zmq::subscribe(endpoint, &["sequence", "hashblock", "hashtx"])
                .map_err(|e| tracing::warn!(error = %e, polling_ms = interval.as_millis() as u64, "ZMQ unavailable"))
                .ok()
        });
        while !self.stopping.load(Ordering::SeqCst) {
            if let Err(e) = self.step() {
                // A tower that cannot record its decisions must not look alive.
                self.shutdown();
                return Err(e);
            }
            match &doorbell {
                // One step answers every notification queued so far.
                Some(rx) => match rx.recv_timeout(interval) {
                    Ok(_) => while rx.try_recv().is_ok() {},
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(interval),
                },
                None => std::thread::sleep(interval),
            }
        }
        Ok(())
    }

    /// Prometheus metrics.
    pub fn metrics(&self) -> String {
        // The outbox is counted on a connection of its own, outside the state lock.
        let outbox = self.read_store.lock().expect("read store").outbox_len().unwrap_or(0);
        let state = self.lock();
        let behind = state.backend_tip.saturating_sub(state.watcher.tip());
        format!(
            "# TYPE vigil_tower_vaults_watched gauge\nvigil_tower_vaults_watched {}\n\
             # TYPE vigil_tower_blocks_behind gauge\nvigil_tower_blocks_behind {behind}\n\
             # TYPE vigil_tower_tip_height gauge\nvigil_tower_tip_height {}\n\
             # TYPE vigil_tower_cancels_pending gauge\nvigil_tower_cancels_pending {}\n\
             # TYPE vigil_tower_alarm_outbox gauge\nvigil_tower_alarm_outbox {outbox}\n\
             # TYPE vigil_tower_backend_up gauge\nvigil_tower_backend_up {}\n\
             # TYPE vigil_tower_reorg_too_deep gauge\nvigil_tower_reorg_too_deep {}\n\
             # TYPE vigil_tower_vault_graphs_in_memory gauge\nvigil_tower_vault_graphs_in_memory {}\n\
             # TYPE vigil_tower_fee_wallet_sat gauge\nvigil_tower_fee_wallet_sat {}\n",
            state.watcher.len(),
            state.watcher.tip(),
            state.watcher.cancels_pending(),
            state.backend_up as u8,
            state.reorg_too_deep.is_some() as u8,
            state.watcher.graphs_in_memory(),
            state.watcher.fee_wallet().map(|w| w.balance()).unwrap_or(0),
        )
    }
}

/// The last `depth` blocks of a window: what is recorded as the follower's position.
fn newest(window: &[BlockId], depth: usize) -> &[BlockId] {
    &window[window.len().saturating_sub(depth)..]
}

/// Logs alarms as they are decided (they leave for the webhooks through the outbox).
pub(crate) fn log_actions(actions: &[Action]) {
    for a in actions {
        if let Action::Alarm { vault, client, kind, message } = a {
            tracing::warn!(%kind, vault = ?vault.map(|v| v.to_string()), ?client, message, "alarm");
        }
    }
}
