//! Vigil's watchtower (`vigil tower --config FILE`), run by an independent party. It holds no
//! spending key: only the fully signed C, E, UE (every rung) of the vaults registered with it.
//!
//! - **Registration** ([`api`]): every request is signed by a key of the client's pinned
//!   policy and carries an increasing nonce. The tower rebuilds each vault's graph from the
//!   pinned policy and the vault's parameters and compares txids (so a cancel paying anywhere
//!   but the vault's recovery output is refused), then checks every signature with Bitcoin
//!   Core's script verification (the kernel). Only then is the vault stored and acknowledged.
//! - **Watching** ([`vigil_chain`]): blocks in order across reorgs, and the mempool.
//! - **Deciding** ([`watch`]): an unvault without an approval, or beyond the velocity budget,
//!   is cancelled and alarmed; cancels climb the fee ladder each block until buried; a panic
//!   sweeps to the deep vault; any other spend of a vault is an alarm and a panic.
//! - **Getting confirmed** ([`fees`]): the ladder, and a fee wallet for anchor CPFP bumps.
//! - **Governance**: guardian-signed policy changes; loosening ones wait
//!   [`GOVERNANCE_DELAY_BLOCKS`].
//! - **Persistence** ([`store`]): SQLite or PostgreSQL; each decision is committed before it
//!   is acted on, and alarms leave through a persisted outbox.

#![warn(missing_docs)]

pub mod api;
pub mod fees;
pub mod index;
pub mod store;
pub mod watch;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil_chain::{
    BackendError, BitcoindRpc, BlockEvent, ChainBackend, ElectrumBackend, FollowError, Follower,
};
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use vigil_policy::{CompiledPolicy, Policy};

use crate::store::{PostgresStore, SqliteStore, StoreError, TowerStore};
use crate::watch::{Action, PolicyLimits, Watcher};

/// Blocks a loosening policy change waits: longer than any captivity (> 7 days).
pub const GOVERNANCE_DELAY_BLOCKS: u32 = 1_009;

/// Blocks remembered for reorgs by default.
pub const FOLLOW_DEPTH: usize = 1_000;

/// The tower's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where the store lives.
    pub datadir: PathBuf,
    /// The tower's identity secret key (hex); it signs acknowledgements.
    pub secret_key: String,
    /// How often to poll the chain, ms.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// After this long without the chain backend, alarm that vaults are at risk, s.
    #[serde(default = "default_outage")]
    pub outage_alarm_secs: u64,
    /// Blocks remembered for reorgs; a deeper reorg halts block processing with an alarm.
    #[serde(default = "default_follow_depth")]
    pub follow_depth: usize,
    /// The chain backend.
    pub chain: ChainConfig,
    /// The clients served: each a pinned policy file.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Alarm delivery.
    #[serde(default)]
    pub alarms: AlarmConfig,
    /// Where decisions are recorded.
    #[serde(default)]
    pub store: StoreConfig,
    /// The fee wallet for anchor bumps (optional: without it the ladder is all there is).
    #[serde(default)]
    pub fee_wallet: Option<FeeWalletConfig>,
}

/// The fee wallet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeWalletConfig {
    /// Its secret key (hex). It only ever holds fee money.
    pub secret_key: String,
    /// The package feerate it must be able to reach for every open vault at once, sat/vB;
    /// above every client's top ladder rung, or it could not pay beyond the ladder.
    #[serde(default = "default_stress")]
    pub stress_sat_per_vb: u64,
    /// The package feerate a bump aims for, sat/vB.
    #[serde(default = "default_bump")]
    pub bump_sat_per_vb: u64,
}

fn default_stress() -> u64 {
    500
}

fn default_bump() -> u64 {
    50
}

/// The store: `kind = "sqlite"` (default, in `datadir`) or `kind = "postgres"` with `url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// "sqlite" or "postgres".
    #[serde(default)]
    pub kind: Option<String>,
    /// PostgreSQL connection string (libpq format).
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL schema (default `vigil_tower`).
    #[serde(default)]
    pub schema: Option<String>,
}

fn default_poll() -> u64 {
    200
}

fn default_outage() -> u64 {
    60
}

fn default_follow_depth() -> usize {
    FOLLOW_DEPTH
}

/// The chain backend: a bitcoind (or `vigil node`) RPC endpoint, or an Electrum server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// "bitcoind" (default) or "electrum".
    #[serde(default)]
    pub kind: Option<String>,
    /// bitcoind: `http://127.0.0.1:18443`; electrum: `127.0.0.1:50001`.
    pub url: String,
    /// RPC user (bitcoind).
    #[serde(default)]
    pub user: String,
    /// RPC password (bitcoind).
    #[serde(default)]
    pub password: String,
    /// Fetch blocks through Core's REST interface (bitcoind started with `-rest`).
    #[serde(default)]
    pub rest: bool,
    /// A ZMQ address where the node publishes `sequence` (or `hashblock` and `hashtx`): the
    /// tower steps as soon as a notification arrives instead of waiting for the next poll.
    /// Polling continues regardless, since ZMQ may drop messages.
    #[serde(default)]
    pub zmq: Option<String>,
}

/// A client the tower serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's policy file, pinned: its sha256 is the client's `policy_id`.
    pub policy: PathBuf,
}

/// Where alarms go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Webhook URLs, each POSTed every alarm as JSON.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

/// Why the tower cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TowerError {
    /// The configuration is wrong.
    #[error("tower config: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain backend failed at start.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// I/O (binding the port).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Client {
    /// A client from its policy file's text.
    pub fn new(text: &str) -> Result<Client, vigil_policy::PolicyError> {
        let policy = Policy::from_toml(text)?;
        let compiled = CompiledPolicy::new(policy.clone())?;
        let mut registrars: Vec<XOnlyPublicKey> = policy.owner.keys.iter().map(|k| k.auth_key()).collect();
        registrars.push(policy.cosigner.auth_key());
        Ok(Client {
            cosigner: policy.cosigner.auth_key(),
            guardians: policy.guardians.keys.iter().map(|k| k.auth_key()).collect(),
            registrars,
            compiled,
            policy,
        })
    }

    /// The limits the watcher enforces for it.
    pub fn limits(&self) -> PolicyLimits {
        PolicyLimits {
            velocity_limit_sat: self.policy.allowance.velocity_limit_sat,
            velocity_window_blocks: self.policy.allowance.velocity_window_blocks,
        }
    }
}

/// A client's pinned policy.
pub struct Client {
    /// The policy.
    pub policy: Policy,
    /// Compiled, to rebuild graphs.
    pub compiled: CompiledPolicy,
    /// Owner and co-signer auth keys (may register vaults).
    pub registrars: Vec<XOnlyPublicKey>,
    /// The co-signer's auth key (approves).
    pub cosigner: XOnlyPublicKey,
    /// Guardians' auth keys (approve guarded spends, panic).
    pub guardians: Vec<XOnlyPublicKey>,
}

/// The shared state of a running tower.
pub struct Tower {
    /// Clients by their original policy id; a policy change swaps the entry when it applies.
    pub clients: std::sync::RwLock<HashMap<String, Arc<Client>>>,
    /// Watcher and store, behind one lock: a decision and its record never interleave.
    pub state: Mutex<TowerState>,
    /// The chain backend.
    pub backend: Box<dyn ChainBackend>,
    /// The tower's identity.
    pub key: Keypair,
    /// Chain position; its own lock, so backend round trips never hold up the API.
    pub follower: Mutex<Follower>,
    /// Stop flag.
    pub stopping: AtomicBool,
    config: TowerConfig,
}

/// What the lock protects.
pub struct TowerState {
    /// Decisions.
    pub watcher: Watcher,
    /// Records.
    pub store: Box<dyn TowerStore>,
    /// Backend tip height last seen (for "blocks behind").
    pub backend_tip: u32,
    /// Whether the last poll reached the backend.
    pub backend_up: bool,
    /// Last successful poll.
    pub last_contact: Instant,
    /// An outage alarm was raised for the current outage.
    pub outage_alarmed: bool,
    /// Blocks are not being processed: the chain reorganised deeper than the follower
    /// remembers (how many it remembered). The mempool is still watched.
    pub reorg_too_deep: Option<usize>,
    /// Named records to write with the next step.
    pub pending_records: Vec<(&'static str, String)>,
    /// Policy changes waiting for their delay, by client.
    pub policy_changes: Vec<PolicyChange>,
}

/// A client's new policy, signed by its guardian quorum, waiting to take effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyChange {
    /// The client (its original policy id).
    pub client: String,
    /// The new policy file's text.
    pub policy: String,
    /// The new version.
    pub version: u32,
    /// It applies from this height.
    pub effective_height: u32,
}

impl TowerState {
    /// Records the watcher's changes (vault states, fee wallet), the follower's position if
    /// given, and `actions`, in one store transaction.
    pub fn record(
        &mut self,
        recent: Option<&[vigil_chain::BlockId]>,
        actions: &[Action],
    ) -> Result<Vec<(i64, Action)>, StoreError> {
        let vaults = self.watcher.take_dirty();
        let mut records = std::mem::take(&mut self.pending_records);
        if self.watcher.take_wallet_dirty() {
            if let Some(w) = self.watcher.fee_wallet() {
                records.push(("fee_wallet", serde_json::to_string(&w.coins().iter().collect::<Vec<_>>())?));
            }
        }
        self.store.commit_step(store::Step { vaults: &vaults, recent, records: &records, actions })
    }
}

/// Loads a configuration file.
pub fn load_config(path: &Path) -> Result<TowerConfig, TowerError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| TowerError::Config(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| TowerError::Config(e.to_string()))
}

/// A policy file's id: the sha256 of its bytes, hex.
pub fn policy_id(text: &str) -> String {
    sha256::Hash::hash(text.as_bytes()).to_string()
}

impl Tower {
    /// Opens the store, loads clients and everything recorded, and catches up with the chain
    /// (replaying every block since the last one processed) before anything is served.
    pub fn start(config: TowerConfig) -> Result<Arc<Tower>, TowerError> {
        let mut clients = HashMap::new();
        let mut watcher = Watcher::new();
        for c in &config.clients {
            let text = std::fs::read_to_string(&c.policy)
                .map_err(|e| TowerError::Config(format!("{}: {e}", c.policy.display())))?;
            let client =
                Client::new(&text).map_err(|e| TowerError::Config(format!("{}: {e}", c.policy.display())))?;
            let id = policy_id(&text);
            watcher.set_limits(&id, client.limits());
            let top = client.policy.fees.ladder_sat_per_vb.last().copied().unwrap_or(0);
            if let Some(fw) = config.fee_wallet.as_ref().filter(|fw| fw.stress_sat_per_vb <= top) {
                return Err(TowerError::Config(format!(
                    "fee_wallet.stress_sat_per_vb: {} is not above the top ladder rung ({top} sat/vB) of {}: the fee wallet could not pay beyond the ladder",
                    fw.stress_sat_per_vb,
                    c.policy.display()
                )));
            }
            clients.insert(id, Arc::new(client));
        }
        let secret = wire::unhex(&config.secret_key)
            .and_then(|b| SecretKey::from_slice(&b).ok())
            .ok_or_else(|| TowerError::Config("secret_key: not a 32-byte hex secret key".into()))?;
        let key = Keypair::from_secret_key(&Secp256k1::new(), &secret);
        let backend: Box<dyn ChainBackend> = match config.chain.kind.as_deref().unwrap_or("bitcoind") {
            "bitcoind" => Box::new(
                BitcoindRpc::new(&config.chain.url, &config.chain.user, &config.chain.password)
                    .with_rest(config.chain.rest),
            ),
            "electrum" => Box::new(ElectrumBackend::new(&config.chain.url)),
            other => {
                return Err(TowerError::Config(format!(
                    "chain.kind: {other:?} is neither \"bitcoind\" nor \"electrum\""
                )))
            }
        };
        let open_store = || -> Result<Box<dyn TowerStore>, TowerError> {
            Ok(match config.store.kind.as_deref().unwrap_or("sqlite") {
                "sqlite" => {
                    std::fs::create_dir_all(&config.datadir)?;
                    Box::new(SqliteStore::open(&config.datadir.join("tower.sqlite"))?)
                }
                "postgres" => {
                    let url = config
                        .store
                        .url
                        .as_deref()
                        .ok_or_else(|| TowerError::Config("store.url: needed for postgres".into()))?;
                    Box::new(PostgresStore::connect(
                        url,
                        config.store.schema.as_deref().unwrap_or("vigil_tower"),
                    )?)
                }
                other => {
                    return Err(TowerError::Config(format!(
                        "store.kind: {other:?} is neither \"sqlite\" nor \"postgres\""
                    )))
                }
            })
        };
        let mut store = open_store()?;
        let loaded = store.load()?;
        if let Some(fw) = &config.fee_wallet {
            let secret =
                wire::unhex(&fw.secret_key).and_then(|b| SecretKey::from_slice(&b).ok()).ok_or_else(
                    || TowerError::Config("fee_wallet.secret_key: not a 32-byte hex secret key".into()),
                )?;
            let policy = fees::FeePolicy {
                stress_sat_per_vb: fw.stress_sat_per_vb,
                bump_sat_per_vb: fw.bump_sat_per_vb,
            };
            let mut wallet =
                fees::FeeWallet::new(Keypair::from_secret_key(&Secp256k1::new(), &secret), policy);
            if let Some(text) = loaded.records.get("fee_wallet") {
                let coins: Vec<(vigil_policy::bitcoin::OutPoint, fees::FeeCoin)> = serde_json::from_str(text)
                    .map_err(|e| TowerError::Store(StoreError(format!("fee wallet: {e}"))))?;
                wallet.restore(coins.into_iter().collect());
            }
            watcher.set_fee_wallet(wallet);
        }
        // Idle vaults' transactions stay in the store, read back through a second connection.
        watcher.set_graphs(Box::new(store::StoreGraphs(open_store()?)));
        store.load_vaults(&mut |vault| watcher.add_vault(vault))?;
        for (u, spend, body) in loaded.approvals {
            match serde_json::from_str::<wire::RegisterApproval>(&body) {
                Ok(r) => watcher.add_approval(
                    u,
                    watch::ApprovalTerms {
                        spend,
                        expiry_height: r.approval.expiry_height,
                        counter: r.approval.counter,
                    },
                ),
                // Recorded only after verification; unreadable now means a corrupt store.
                Err(e) => return Err(TowerError::Store(StoreError(format!("approval for {u}: {e}")))),
            }
        }
        for vault in watcher.vaults() {
            backend.watch_scripts(&vault.watched_scripts());
        }
        if let Some(wallet) = watcher.fee_wallet() {
            backend.watch_scripts(std::slice::from_ref(wallet.script()));
        }
        let follower = Follower::new(loaded.recent, config.follow_depth);
        let state = TowerState {
            watcher,
            store,
            backend_tip: 0,
            backend_up: true,
            last_contact: Instant::now(),
            outage_alarmed: false,
            reorg_too_deep: None,
            pending_records: Vec::new(),
            policy_changes: match loaded.records.get("policy_changes") {
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| TowerError::Store(StoreError(format!("policy changes: {e}"))))?,
                None => Vec::new(),
            },
        };
        let tower = Arc::new(Tower {
            clients: std::sync::RwLock::new(clients),
            state: Mutex::new(state),
            follower: Mutex::new(follower),
            backend,
            key,
            stopping: AtomicBool::new(false),
            config,
        });
        // Re-broadcast what was decided before a crash, then replay missed blocks.
        for (id, action) in loaded.pending_broadcasts {
            tower.broadcast(id, &action);
        }
        tower.step()?;
        Ok(tower)
    }

    /// One round: follow the chain, watch the mempool, act. Errors from the backend are an
    /// outage (counted, alarmed when long), not a failure; store errors are fatal.
    pub fn step(&self) -> Result<(), StoreError> {
        let mut follower = self.follower.lock().expect("follower");
        // The position recorded with each block's decisions is the follower's window *as of
        // that block*: a crash halfway through a poll must replay the blocks not yet decided.
        let mut window: Vec<vigil_chain::BlockId> = follower.recent().to_vec();
        let mut unrecorded = 0usize;
        // Each block is decided as soon as it arrives, while the next ones are fetched.
        let mut handle = |event: BlockEvent| -> Result<(), StoreError> {
            let mut state = self.state.lock().expect("tower state");
            let actions = match &event {
                BlockEvent::Connected { height, hash, raw } => {
                    window.push(vigil_chain::BlockId { height: *height, hash: *hash });
                    state.backend_tip = state.backend_tip.max(*height);
                    state.watcher.on_raw_block_connected(*height, raw).map_err(|e| {
                        StoreError(format!("block {hash} from the backend does not parse: {e}"))
                    })?
                }
                BlockEvent::Disconnected { height, .. } => {
                    window.pop();
                    state.watcher.on_block_disconnected(*height);
                    Vec::new()
                }
            };
            if let Some(e) = state.watcher.take_graph_error() {
                return Err(StoreError(e));
            }
            unrecorded += 1;
            // Blocks that change nothing are recorded in batches (one fsync, not one per
            // block, when catching up); replaying them after a crash is harmless.
            if !state.watcher.has_changes() && actions.is_empty() && unrecorded < 500 {
                return Ok(());
            }
            unrecorded = 0;
            let broadcasts = state.record(Some(newest(&window, self.config.follow_depth)), &actions)?;
            log_actions(&actions);
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
        let mut state = self.state.lock().expect("tower state");
        if unrecorded > 0 {
            state.record(Some(newest(&window, self.config.follow_depth)), &[])?;
        }
        match polled {
            Ok(()) => state.reorg_too_deep = None,
            Err(FollowError::TooDeep(remembered)) => {
                drop(state);
                self.reorg_too_deep(remembered)?;
                state = self.state.lock().expect("tower state");
            }
            Err(FollowError::Backend(e)) => {
                drop(state);
                drop(follower);
                return self.outage(&e.to_string());
            }
        }
        self.apply_policy_changes(&mut state)?;
        drop(state);
        let mempool = match follower.poll_mempool(self.backend.as_ref()) {
            Ok(txs) => txs,
            Err(e) => {
                drop(follower);
                return self.outage(&e.to_string());
            }
        };
        drop(follower);
        let mut state = self.state.lock().expect("tower state");
        let mut actions = Vec::new();
        for tx in &mempool {
            actions.extend(state.watcher.on_mempool_tx(tx));
        }
        if let Some(e) = state.watcher.take_graph_error() {
            return Err(StoreError(e));
        }
        let broadcasts = if !state.watcher.has_changes() && actions.is_empty() {
            Vec::new()
        } else {
            state.record(None, &actions)?
        };
        log_actions(&actions);
        state.backend_up = true;
        state.last_contact = Instant::now();
        state.outage_alarmed = false;
        drop(state);
        for (id, action) in &broadcasts {
            self.broadcast(*id, action);
        }
        Ok(())
    }

    /// A client, by its original policy id.
    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.clients.read().expect("clients").get(id).cloned()
    }

    /// Applies the policy changes whose delay has passed.
    pub(crate) fn apply_policy_changes(&self, state: &mut TowerState) -> Result<(), StoreError> {
        let tip = state.watcher.tip();
        let (due, waiting): (Vec<PolicyChange>, Vec<PolicyChange>) =
            std::mem::take(&mut state.policy_changes).into_iter().partition(|c| c.effective_height <= tip);
        state.policy_changes = waiting;
        if due.is_empty() {
            return Ok(());
        }
        let mut alarms = Vec::new();
        for change in due {
            match Client::new(&change.policy) {
                Ok(client) => {
                    state.watcher.set_limits(&change.client, client.limits());
                    self.clients.write().expect("clients").insert(change.client.clone(), Arc::new(client));
                    alarms.push(Action::Alarm {
                        vault: None,
                        kind: "policy-applied".into(),
                        message: format!(
                            "policy version {} of client {} applies from height {tip}",
                            change.version, change.client
                        ),
                    });
                }
                Err(e) => alarms.push(Action::Alarm {
                    vault: None,
                    kind: "policy-invalid".into(),
                    message: format!(
                        "the accepted policy change for {} no longer builds: {e}",
                        change.client
                    ),
                }),
            }
        }
        state.pending_records.push(("policy_changes", serde_json::to_string(&state.policy_changes)?));
        state.record(None, &alarms)?;
        log_actions(&alarms);
        Ok(())
    }

    /// No decision taken on blocks can be trusted past a reorg deeper than the window: stop
    /// processing blocks (the unvaults in the mempool are still cancelled) and say so once.
    fn reorg_too_deep(&self, remembered: usize) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("tower state");
        eprintln!("level=error event=reorg_too_deep remembered={remembered}");
        if state.reorg_too_deep.replace(remembered).is_none() {
            let alarm = Action::Alarm {
                vault: None,
                kind: "reorg-too-deep".into(),
                message: format!(
                    "the chain reorganised deeper than the {remembered} blocks this tower remembers: it \
                     has stopped processing blocks and {} vaults are at risk until an operator \
                     investigates (recovery from a reorg this deep is manual)",
                    state.watcher.len()
                ),
            };
            state.record(None, std::slice::from_ref(&alarm))?;
            log_actions(&[alarm]);
        }
        Ok(())
    }

    fn outage(&self, why: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("tower state");
        state.backend_up = false;
        let down_for = state.last_contact.elapsed();
        eprintln!("level=warn event=backend_unreachable down_secs={} error={why:?}", down_for.as_secs());
        if down_for >= Duration::from_secs(self.config.outage_alarm_secs) && !state.outage_alarmed {
            state.outage_alarmed = true;
            let alarm = Action::Alarm {
                vault: None,
                kind: "backend-outage".into(),
                message: format!(
                    "chain backend unreachable for {} s: {} vaults are at risk until it returns ({why})",
                    down_for.as_secs(),
                    state.watcher.len()
                ),
            };
            state.record(None, std::slice::from_ref(&alarm))?;
            log_actions(&[alarm]);
        }
        Ok(())
    }

    /// Broadcasts a recorded decision; marks it done when the backend has answered for good.
    fn broadcast(&self, id: i64, action: &Action) {
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
            Ok(txids) => eprintln!("level=info event=broadcast vault={vault} what={what:?} txids={txids:?}"),
            Err(e) => eprintln!("level=warn event=broadcast_refused vault={vault} what={what:?} error={e:?}"),
        }
        // Unreachable or refused credentials: keep it pending for the next start; anything
        // else is final (already confirmed, replaced by a higher rung, or refused: the next
        // block escalates).
        if !matches!(result, Err(BackendError::Unreachable(_)) | Err(BackendError::Unauthorized)) {
            if let Ok(mut state) = self.state.lock() {
                if let Err(e) = state.store.broadcast_done(id) {
                    eprintln!("level=error event=store error={e}");
                }
            }
        }
    }

    /// Delivers outbox alarms to the webhooks; failures stay in the outbox for the next round.
    pub fn deliver_alarms(&self, backoff: &mut HashMap<i64, Instant>) {
        if self.config.alarms.webhooks.is_empty() {
            return;
        }
        let pending = match self.state.lock().expect("tower state").store.undelivered_alarms() {
            Ok(p) => p,
            Err(e) => return eprintln!("level=error event=alarm_outbox error={e}"),
        };
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
        for alarm in pending {
            if backoff.get(&alarm.id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let body = serde_json::json!({"tower": self.key.x_only_public_key().0.to_string(), "kind": alarm.kind, "message": alarm.message});
            let delivered =
                self.config.alarms.webhooks.iter().all(|url| agent.post(url).send_json(body.clone()).is_ok());
            if !delivered {
                let wait = Duration::from_secs(1 << alarm.attempts.min(6));
                backoff.insert(alarm.id, Instant::now() + wait);
            }
            let _ = self.state.lock().expect("tower state").store.alarm_attempted(alarm.id, delivered);
        }
    }

    /// The loop: step, then wait for a ZMQ notification or the poll interval.
    pub fn run_watch_loop(self: &Arc<Tower>) -> Result<(), StoreError> {
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let doorbell = match &self.config.chain.zmq {
            Some(endpoint) => {
                match vigil_chain::zmq::subscribe(endpoint, &["sequence", "hashblock", "hashtx"]) {
                    Ok(rx) => Some(rx),
                    Err(e) => {
                        eprintln!(
                            "level=warn event=zmq_unavailable error={e:?} polling_ms={}",
                            interval.as_millis()
                        );
                        None
                    }
                }
            }
            None => None,
        };
        while !self.stopping.load(Ordering::SeqCst) {
            if let Err(e) = self.step() {
                // A tower that cannot record its decisions must not look alive.
                self.stopping.store(true, Ordering::SeqCst);
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

    /// Alarm delivery, on its own thread: a slow webhook never delays watching.
    pub fn run_alarm_loop(self: &Arc<Tower>) {
        let mut backoff = HashMap::new();
        while !self.stopping.load(Ordering::SeqCst) {
            self.deliver_alarms(&mut backoff);
            std::thread::sleep(Duration::from_millis(self.config.poll_interval_ms.max(100)));
        }
    }

    /// Prometheus metrics.
    pub fn metrics(&self) -> String {
        let mut state = self.state.lock().expect("tower state");
        let behind = state.backend_tip.saturating_sub(state.watcher.tip());
        let outbox = state.store.undelivered_alarms().map(|a| a.len()).unwrap_or(0);
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
fn newest(window: &[vigil_chain::BlockId], depth: usize) -> &[vigil_chain::BlockId] {
    &window[window.len().saturating_sub(depth)..]
}

pub(crate) fn log_actions(actions: &[Action]) {
    for a in actions {
        if let Action::Alarm { vault, kind, message } = a {
            let vault = vault.map(|v| v.to_string()).unwrap_or_default();
            eprintln!("level=warn event=alarm kind={kind} vault={vault} message={message:?}");
        }
    }
}

/// Runs a tower until SIGINT/SIGTERM: catch up, then serve the API and watch.
pub async fn run(config: TowerConfig) -> Result<(), TowerError> {
    let listen = config.listen;
    let tower = tokio::task::spawn_blocking(move || Tower::start(config))
        .await
        .map_err(|e| TowerError::Config(e.to_string()))??;
    let watcher = tower.clone();
    let watch_thread = std::thread::spawn(move || watcher.run_watch_loop());
    let alarms = tower.clone();
    let alarm_thread = std::thread::spawn(move || alarms.run_alarm_loop());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("vigil tower listening on {}", listener.local_addr()?);
    let app = api::router(tower.clone());
    let stop = tower.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("signal handler");
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            // Stop on a signal, or when the watch loop failed and stopped the tower.
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = tick.tick() => if stop.stopping.load(Ordering::SeqCst) { break },
                }
            }
            stop.stopping.store(true, Ordering::SeqCst);
        })
        .await?;
    let _ = alarm_thread.join();
    match watch_thread.join() {
        Ok(r) => r.map_err(TowerError::Store),
        Err(_) => Err(TowerError::Config("watch loop panicked".into())),
    }
}
