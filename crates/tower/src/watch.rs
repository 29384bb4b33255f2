//! The tower's decisions (DESIGN.md §4 "Spending", "Panic"): pure logic over chain events.
//!
//! [`Watcher`] sees blocks (connected and disconnected) and mempool transactions and answers
//! with [`Action`]s: broadcasts and alarms. It does no I/O; the daemon persists every decision
//! (vault states and actions, in one store transaction) before acting on it, so a restart
//! resumes exactly where the tower stopped.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::{Amount, Block, OutPoint, ScriptBuf, Transaction, Txid};

use crate::fees::FeeWallet;
use crate::index::{scan_block, OutpointIndex, ScanError};

/// Blocks a cancel must be buried before the spend leaf opens (DESIGN.md §4 deadline).
pub const BURY_MARGIN: u32 = 6;

/// A registered vault: its signed transactions and what the tower knows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vault {
    /// V.
    pub outpoint: OutPoint,
    /// The client's pinned policy.
    pub policy_id: String,
    /// V's value.
    pub amount: Amount,
    /// V's output script (a backend that watches by script subscribes to it).
    pub vault_script: ScriptBuf,
    /// DELAY.
    pub delay: u16,
    /// U.
    #[serde(with = "tx_hex")]
    pub unvault: Transaction,
    /// C at every rung.
    #[serde(with = "txs_hex")]
    pub cancels: Vec<Transaction>,
    /// E at every rung.
    #[serde(with = "txs_hex")]
    pub emergencies: Vec<Transaction>,
    /// UE at every rung.
    #[serde(with = "txs_hex")]
    pub unvault_emergencies: Vec<Transaction>,
    /// What has happened.
    pub state: VaultState,
}

/// Transactions are stored in their consensus encoding (hex), not as JSON objects: a third
/// of the size.
mod tx_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    use vigil_policy::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
    use vigil_policy::bitcoin::Transaction;

    pub fn serialize<S: Serializer>(tx: &Transaction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serialize_hex(tx))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Transaction, D::Error> {
        let text = String::deserialize(d)?;
        deserialize_hex(&text).map_err(serde::de::Error::custom)
    }
}

mod txs_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    use vigil_policy::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
    use vigil_policy::bitcoin::Transaction;

    pub fn serialize<S: Serializer>(txs: &[Transaction], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(txs.iter().map(serialize_hex))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Transaction>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts.iter().map(|t| deserialize_hex(t).map_err(serde::de::Error::custom)).collect()
    }
}

/// A fee-wallet child paying for a top-rung cancel or emergency through its anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BumpState {
    /// The transaction it pays for.
    pub parent: Txid,
    /// Broadcast at this height.
    pub height: u32,
    /// The package feerate it reaches, sat/vB.
    pub sat_per_vb: u64,
    /// The fee coin; every later bump of this vault spends it again, replacing the child.
    pub coin: OutPoint,
    /// The coin's value, sat.
    pub coin_value: u64,
    /// The coin can pay no more.
    pub ceiling: bool,
}

/// Blocks a bump is given before a replacement at twice the feerate.
pub const BUMP_RETRY_BLOCKS: u32 = 2;

/// Where a vault stands. Persisted with every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    /// U has been seen (mempool or chain).
    pub unvault_seen: bool,
    /// U's confirmation height.
    pub unvault_height: Option<u32>,
    /// The tower decided to cancel this U; the highest rung broadcast so far.
    pub cancel_rung: Option<usize>,
    /// C's confirmation height.
    pub cancel_height: Option<u32>,
    /// A panic: the highest E (or UE, once U is seen) rung broadcast so far.
    pub emergency_rung: Option<usize>,
    /// The ladder under way (cancel, or emergency) reached its top rung at this height.
    #[serde(default)]
    pub top_rung_since: Option<u32>,
    /// The fee wallet's latest child paying through a top-rung anchor.
    #[serde(default)]
    pub bump: Option<BumpState>,
    /// E's or UE's confirmation height.
    pub emergency_height: Option<u32>,
    /// The approved spend confirmed at this height.
    pub spent_height: Option<u32>,
    /// Nothing left to do (the final transaction is buried).
    pub done: bool,
}

impl Vault {
    /// A vault to watch, from its signed graph.
    pub fn from_signed(policy_id: &str, delay: u16, signed: &vigil_policy::SignedGraph) -> Vault {
        let g = signed.graph();
        let all = |set: &[vigil_policy::PresignedTx]| set.iter().map(|p| p.tx.clone()).collect();
        Vault {
            outpoint: g.vault_outpoint,
            policy_id: policy_id.to_owned(),
            amount: g.plan.amount,
            vault_script: g.vault_txout.script_pubkey.clone(),
            delay,
            unvault: signed.unvault().clone(),
            cancels: all(&g.cancels),
            emergencies: all(&g.emergencies),
            unvault_emergencies: all(&g.unvault_emergencies),
            state: VaultState::default(),
        }
    }

    /// U's output, which C, UE and the owner's spend consume.
    pub fn unvault_outpoint(&self) -> OutPoint {
        OutPoint { txid: self.unvault.compute_txid(), vout: 0 }
    }

    /// The scripts whose transactions decide this vault's fate: V's and U's outputs (never the
    /// anchors, which every vault shares).
    pub fn watched_scripts(&self) -> [ScriptBuf; 2] {
        [self.vault_script.clone(), self.unvault.output[0].script_pubkey.clone()]
    }

    fn role_of(&self, txid: &Txid) -> Option<Role> {
        let find = |set: &[Transaction]| set.iter().position(|t| t.compute_txid() == *txid);
        if self.unvault.compute_txid() == *txid {
            return Some(Role::Unvault);
        }
        find(&self.cancels)
            .map(Role::Cancel)
            .or_else(|| find(&self.emergencies).map(Role::Emergency))
            .or_else(|| find(&self.unvault_emergencies).map(Role::UnvaultEmergency))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Unvault,
    Cancel(usize),
    Emergency(usize),
    UnvaultEmergency(usize),
}

/// What the tower must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Broadcast a pre-signed transaction (idempotent).
    Broadcast {
        /// Which vault.
        vault: OutPoint,
        /// What it is, for logs ("cancel rung 2").
        what: String,
        /// The transaction.
        #[serde(with = "tx_hex")]
        tx: Transaction,
    },
    /// Broadcast a pre-signed parent with the fee wallet's child on its anchor, as one package
    /// (Core's `submitpackage`): together they can replace what the parent alone cannot.
    BroadcastPackage {
        /// Which vault.
        vault: OutPoint,
        /// What it is, for logs ("cancel anchor bump").
        what: String,
        /// The pre-signed transaction.
        #[serde(with = "tx_hex")]
        parent: Transaction,
        /// The fee wallet's child.
        #[serde(with = "tx_hex")]
        child: Transaction,
    },
    /// Tell the guardians (and the operator).
    Alarm {
        /// Which vault, if one.
        vault: Option<OutPoint>,
        /// A short machine-readable kind.
        kind: String,
        /// For humans.
        message: String,
    },
}

/// What an approval allows (DESIGN.md §4 "Spending").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalTerms {
    /// The one spend of U's output it approves.
    pub spend: Txid,
    /// Valid for an unvault seen at or below this height.
    pub expiry_height: u32,
    /// Increasing per vault: a lower one is stale.
    pub counter: u64,
}

/// A policy's limits as the tower enforces them.
#[derive(Debug, Clone)]
pub struct PolicyLimits {
    /// Velocity budget per window, sat.
    pub velocity_limit_sat: u64,
    /// The window, blocks.
    pub velocity_window_blocks: u32,
}

/// Where the watcher reads back the transactions of vaults it keeps only in summary (the
/// tower's store, through a connection of its own).
pub trait Graphs: Send {
    /// The vault as registered, with every transaction.
    fn graph(&mut self, vault: &OutPoint) -> Result<Vault, String>;
}

#[derive(Default)]
struct GraphSource(Option<Box<dyn Graphs>>);

impl std::fmt::Debug for GraphSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "paged" } else { "in memory" })
    }
}

/// All the tower watches, rebuilt from the store on start. With a [`Graphs`] source, an idle
/// vault keeps only U and its state in memory (about 1 KB instead of 14); C, E and UE are
/// read back when a transaction touches it, and stay while it is active.
#[derive(Debug, Default)]
pub struct Watcher {
    vaults: HashMap<OutPoint, Vault>,
    graphs: GraphSource,
    /// A graph could not be read back: the caller must stop (see [`Watcher::take_graph_error`]).
    graph_error: Option<String>,
    /// Vaults whose C, E and UE are in memory.
    graphs_held: usize,
    /// U's outpoint -> V.
    by_unvault: HashMap<OutPoint, OutPoint>,
    /// Both watched outpoints of every vault, for scanning blocks (see [`crate::index`]).
    index: OutpointIndex,
    /// U txid -> what its approval allows.
    approvals: HashMap<Txid, ApprovalTerms>,
    limits: HashMap<String, PolicyLimits>,
    /// Per policy, every U seen: V -> (height first seen or confirmed, value), for velocity.
    released: HashMap<String, HashMap<OutPoint, (u32, u64)>>,
    /// Vaults with something in flight (checked every block).
    active: HashSet<OutPoint>,
    /// Vaults whose state changed since the last [`Watcher::take_dirty`].
    dirty: HashSet<OutPoint>,
    /// Vaults whose cancel or emergency started in the block being processed: they climb the
    /// ladder from the next block on.
    fresh: HashSet<OutPoint>,
    /// The fee wallet, when the tower has one.
    fee_wallet: Option<FeeWallet>,
    /// The wallet changed since the last [`Watcher::take_wallet_dirty`].
    wallet_dirty: bool,
    /// A low-balance alarm is standing.
    wallet_low: bool,
    tip: u32,
}

impl Watcher {
    /// An empty watcher.
    pub fn new() -> Watcher {
        Watcher::default()
    }

    /// Sets a client's limits.
    pub fn set_limits(&mut self, policy_id: &str, limits: PolicyLimits) {
        self.limits.insert(policy_id.to_owned(), limits);
    }

    /// Watches a vault (new, or loaded from the store with its state).
    pub fn add_vault(&mut self, vault: Vault) {
        self.by_unvault.insert(vault.unvault_outpoint(), vault.outpoint);
        let number = self.vaults.len() as u32;
        self.index.insert(&vault.outpoint, number);
        self.index.insert(&vault.unvault_outpoint(), number);
        if vault.state.unvault_seen && !vault.state.done {
            self.active.insert(vault.outpoint);
        }
        if let Some(h) = vault.state.unvault_height {
            let value = vault.unvault.output[0].value.to_sat();
            self.released.entry(vault.policy_id.clone()).or_default().insert(vault.outpoint, (h, value));
        }
        let id = vault.outpoint;
        self.graphs_held += usize::from(!vault.cancels.is_empty());
        if let Some(old) = self.vaults.insert(id, vault) {
            self.graphs_held -= usize::from(!old.cancels.is_empty());
        }
        self.evict_if_idle(id);
    }

    /// Vaults whose every transaction is in memory (the active ones, with a graph source).
    pub fn graphs_in_memory(&self) -> usize {
        self.graphs_held
    }

    /// Pages idle vaults' transactions out to `graphs` (the store) from now on.
    pub fn set_graphs(&mut self, graphs: Box<dyn Graphs>) {
        self.graphs = GraphSource(Some(graphs));
        let ids: Vec<OutPoint> = self.vaults.keys().copied().collect();
        for id in ids {
            self.evict_if_idle(id);
        }
    }

    /// The error that stopped a graph from being read back, if one did (the tower stops:
    /// its store failed).
    pub fn take_graph_error(&mut self) -> Option<String> {
        self.graph_error.take()
    }

    /// With a graph source, an idle vault's C, E and UE leave memory (they are in the store).
    fn evict_if_idle(&mut self, id: OutPoint) {
        if self.graphs.0.is_none()
            || self.active.contains(&id)
            || self.fresh.contains(&id)
            || self.dirty.contains(&id)
        {
            return;
        }
        if let Some(v) = self.vaults.get_mut(&id).filter(|v| !v.cancels.is_empty()) {
            self.graphs_held -= 1;
            v.cancels = Vec::new();
            v.emergencies = Vec::new();
            v.unvault_emergencies = Vec::new();
        }
    }

    /// Makes sure the vault's every transaction is in memory.
    fn ensure_graph(&mut self, id: OutPoint) -> bool {
        let Some(vault) = self.vaults.get(&id) else { return false };
        if !vault.cancels.is_empty() {
            return true;
        }
        let Some(source) = self.graphs.0.as_mut() else { return true };
        match source.graph(&id) {
            Ok(full) if !full.cancels.is_empty() => {
                let vault = self.vaults.get_mut(&id).expect("checked above");
                vault.cancels = full.cancels;
                vault.emergencies = full.emergencies;
                vault.unvault_emergencies = full.unvault_emergencies;
                self.graphs_held += 1;
                true
            }
            Ok(_) => {
                self.graph_error = Some(format!("vault {id}: the store holds no transactions for it"));
                false
            }
            Err(e) => {
                self.graph_error = Some(format!("vault {id}: {e}"));
                false
            }
        }
    }

    /// Records an approved spend of an unvault.
    pub fn add_approval(&mut self, unvault_txid: Txid, terms: ApprovalTerms) {
        self.approvals.insert(unvault_txid, terms);
    }

    /// The approval recorded for an unvault.
    pub fn approval(&self, unvault_txid: &Txid) -> Option<&ApprovalTerms> {
        self.approvals.get(unvault_txid)
    }

    /// A watched vault.
    pub fn vault(&self, outpoint: &OutPoint) -> Option<&Vault> {
        self.vaults.get(outpoint)
    }

    /// Every watched vault.
    pub fn vaults(&self) -> impl Iterator<Item = &Vault> {
        self.vaults.values()
    }

    /// Number of vaults watched.
    pub fn len(&self) -> usize {
        self.vaults.len()
    }

    /// Whether no vault is watched.
    pub fn is_empty(&self) -> bool {
        self.vaults.is_empty()
    }

    /// Cancels broadcast and not yet confirmed.
    pub fn cancels_pending(&self) -> usize {
        self.active
            .iter()
            .filter(|v| {
                let s = &self.vaults[v].state;
                s.cancel_rung.is_some() && s.cancel_height.is_none()
            })
            .count()
    }

    /// Whether anything awaits recording.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || self.wallet_dirty
    }

    /// Vaults whose state changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<Vault> {
        let dirty = std::mem::take(&mut self.dirty);
        let changed: Vec<Vault> = dirty.iter().filter_map(|v| self.vaults.get(v).cloned()).collect();
        for id in dirty {
            self.evict_if_idle(id);
        }
        changed
    }

    /// The tip height the watcher last saw.
    pub fn tip(&self) -> u32 {
        self.tip
    }

    /// A transaction seen in the mempool.
    pub fn on_mempool_tx(&mut self, tx: &Transaction) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(w) = self.fee_wallet.as_mut() {
            if tx.output.iter().any(|o| &o.script_pubkey == w.script()) {
                self.wallet_dirty |= w.observe(tx, None);
            }
        }
        self.observe(tx, None, &mut actions);
        actions
    }

    /// Gives the watcher a fee wallet for anchor bumps.
    pub fn set_fee_wallet(&mut self, wallet: FeeWallet) {
        self.fee_wallet = Some(wallet);
    }

    /// The fee wallet.
    pub fn fee_wallet(&self) -> Option<&FeeWallet> {
        self.fee_wallet.as_ref()
    }

    /// Whether the fee wallet changed since the last call (it is then persisted).
    pub fn take_wallet_dirty(&mut self) -> bool {
        std::mem::take(&mut self.wallet_dirty)
    }

    /// Bytes the hot index holds.
    pub fn index_bytes(&self) -> usize {
        self.index.memory_bytes()
    }

    /// A block joined the active chain, serialized: only the transactions spending a watched
    /// outpoint are deserialized.
    pub fn on_raw_block_connected(&mut self, height: u32, raw: &[u8]) -> Result<Vec<Action>, ScanError> {
        let pays_to = self.fee_wallet.as_ref().map(|w| w.script().as_bytes().to_vec());
        let hits = scan_block(raw, &self.index, pays_to.as_deref())?;
        self.tip = height;
        self.fresh.clear();
        let mut actions = Vec::new();
        for (_, tx) in &hits {
            if let Some(w) = self.fee_wallet.as_mut() {
                self.wallet_dirty |= w.observe(tx, Some(height));
            }
            self.observe(tx, Some(height), &mut actions);
        }
        self.each_block(height, &mut actions);
        Ok(actions)
    }

    /// A block joined the active chain (the same path as its serialized form).
    pub fn on_block_connected(&mut self, height: u32, block: &Block) -> Vec<Action> {
        let raw = vigil_policy::bitcoin::consensus::serialize(block);
        self.on_raw_block_connected(height, &raw).expect("a block we serialized parses")
    }

    /// A block left the active chain: forget confirmations at that height; the next block
    /// re-broadcasts what is still needed.
    pub fn on_block_disconnected(&mut self, height: u32) {
        self.tip = height.saturating_sub(1);
        if let Some(w) = self.fee_wallet.as_mut() {
            w.disconnect(height);
            self.wallet_dirty = true;
        }
        let above = |h: Option<u32>| h.is_some_and(|h| h >= height);
        let changed: Vec<OutPoint> = self
            .vaults
            .values()
            .filter(|v| {
                let s = &v.state;
                above(s.unvault_height)
                    || above(s.cancel_height)
                    || above(s.emergency_height)
                    || above(s.spent_height)
            })
            .map(|v| v.outpoint)
            .collect();
        for id in changed {
            // It may act again (and will be stored whole): its transactions come back first.
            if !self.ensure_graph(id) {
                continue;
            }
            let s = &mut self.vaults.get_mut(&id).expect("watched").state;
            for h in
                [&mut s.unvault_height, &mut s.cancel_height, &mut s.emergency_height, &mut s.spent_height]
            {
                if above(*h) {
                    *h = None;
                }
            }
            s.done = false;
            self.dirty.insert(id);
            if s.unvault_seen {
                self.active.insert(id);
            }
        }
    }

    /// A guardian-quorum panic for one client: E for every unspent V, UE for every U.
    pub fn panic(&mut self, policy_id: &str) -> Vec<Action> {
        let mut actions = vec![Action::Alarm {
            vault: None,
            kind: "panic".into(),
            message: format!("panic for policy {policy_id}: sweeping every vault to the deep vault"),
        }];
        let ids: Vec<OutPoint> = self
            .vaults
            .values()
            .filter(|v| v.policy_id == policy_id && !v.state.done && v.state.emergency_rung.is_none())
            .map(|v| v.outpoint)
            .collect();
        for id in ids {
            if self.ensure_graph(id) {
                self.start_emergency(id, &mut actions);
            }
        }
        actions
    }

    fn start_emergency(&mut self, id: OutPoint, actions: &mut Vec<Action>) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        if vault.state.done || vault.state.emergency_rung.is_some() {
            return;
        }
        vault.state.emergency_rung = Some(0);
        vault.state.top_rung_since = None;
        self.dirty.insert(id);
        self.active.insert(id);
        self.fresh.insert(id);
        actions.push(emergency_broadcast(vault, 0));
    }

    fn observe(&mut self, tx: &Transaction, height: Option<u32>, actions: &mut Vec<Action>) {
        let txid = tx.compute_txid();
        for input in &tx.input {
            let prev = input.previous_output;
            let touched = if self.vaults.contains_key(&prev) {
                Some(prev)
            } else {
                self.by_unvault.get(&prev).copied()
            };
            if touched.is_some_and(|id| !self.ensure_graph(id)) {
                continue;
            }
            if let Some(vault) = self.vaults.get(&prev) {
                let id = vault.outpoint;
                match vault.role_of(&txid) {
                    Some(Role::Unvault) => self.unvault_seen(id, height, actions),
                    Some(Role::Emergency(_)) => self.update(id, |s| {
                        if let Some(h) = height {
                            s.emergency_height = Some(h);
                        }
                    }),
                    _ => {
                        // A one-time key survived: nothing but U or E can spend V.
                        actions.push(Action::Alarm {
                            vault: Some(id),
                            kind: "foreign-vault-spend".into(),
                            message: format!("vault {id} spent by unknown transaction {txid}: a one-time key was not deleted"),
                        });
                        let policy = vault.policy_id.clone();
                        actions.extend(self.panic(&policy));
                    }
                }
            } else if let Some(id) = self.by_unvault.get(&prev).copied() {
                let vault = &self.vaults[&id];
                match vault.role_of(&txid) {
                    Some(Role::Cancel(_)) => self.update(id, |s| {
                        if let Some(h) = height {
                            s.cancel_height = Some(h);
                        }
                    }),
                    Some(Role::UnvaultEmergency(_)) => self.update(id, |s| {
                        if let Some(h) = height {
                            s.emergency_height = Some(h);
                        }
                    }),
                    _ if self.approvals.get(&prev.txid).map(|a| a.spend) == Some(txid) => {
                        self.update(id, |s| {
                            if let Some(h) = height {
                                s.spent_height = Some(h);
                            }
                        })
                    }
                    _ => {
                        let top = vault.cancels.len() - 1;
                        let cancel = vault.state.cancel_height.is_none() && height.is_none();
                        actions.push(Action::Alarm {
                            vault: Some(id),
                            kind: "unapproved-spend".into(),
                            message: format!(
                                "unvault of {id} spent by {txid}, not the approved spend{}",
                                if height.is_some() {
                                    ": confirmed, the race is lost (residual risk)"
                                } else {
                                    ": cancelling at the top rung, bumped through its anchor"
                                }
                            ),
                        });
                        if cancel {
                            let vault = self.vaults.get_mut(&id).expect("watched");
                            vault.state.cancel_rung = Some(top);
                            vault.state.top_rung_since.get_or_insert(self.tip);
                            actions.push(cancel_broadcast(vault, top));
                            // The other spend may outbid the top rung: pay through the anchor
                            // at once, as a package that can replace it, outbidding its feerate
                            // (its fee at least: it spends U's output, maybe more).
                            let (parent, value) = (vault.cancels[top].clone(), vault.unvault.output[0].value);
                            let paid: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
                            let rival_rate = value.to_sat().saturating_sub(paid) / tx.vsize() as u64;
                            self.fresh.insert(id);
                            self.dirty.insert(id);
                            self.active.insert(id);
                            self.bump(id, parent, value, "cancel", self.tip, Some(rival_rate), actions);
                        }
                    }
                }
            }
        }
    }

    fn update(&mut self, id: OutPoint, f: impl FnOnce(&mut VaultState)) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        let before = vault.state.clone();
        f(&mut vault.state);
        if vault.state != before {
            self.dirty.insert(id);
        }
    }

    fn unvault_seen(&mut self, id: OutPoint, height: Option<u32>, actions: &mut Vec<Action>) {
        let vault = self.vaults.get_mut(&id).expect("watched");
        let first_sight = !vault.state.unvault_seen;
        vault.state.unvault_seen = true;
        if height.is_some() {
            vault.state.unvault_height = height;
        }
        let (policy, value) = (vault.policy_id.clone(), vault.unvault.output[0].value.to_sat());
        let u_txid = vault.unvault.compute_txid();
        let seen_at = height.unwrap_or(self.tip + 1);
        let over_budget = first_sight && self.over_velocity(&policy, id, value, seen_at);
        self.released.entry(policy).or_default().insert(id, (seen_at, value));
        self.dirty.insert(id);
        self.active.insert(id);
        if !first_sight {
            return;
        }
        // An approval covers an unvault seen by its expiry height, not later.
        let approved = self.approvals.get(&u_txid).is_some_and(|a| seen_at <= a.expiry_height);
        let vault = self.vaults.get_mut(&id).expect("watched");
        if vault.state.emergency_rung.is_some() {
            // A panic is under way: U gets UE, not C.
            vault.state.emergency_rung = Some(0);
            vault.state.top_rung_since = None;
            actions.push(emergency_broadcast(vault, 0));
            return;
        }
        if approved && !over_budget {
            return;
        }
        let why =
            if approved { "over the velocity budget (approved by the co-signer)" } else { "not approved" };
        vault.state.cancel_rung = Some(0);
        self.fresh.insert(id);
        actions.push(Action::Alarm {
            vault: Some(id),
            kind: "unvault-cancelled".into(),
            message: format!("unvault {u_txid} of vault {id} is {why}: cancelling"),
        });
        actions.push(cancel_broadcast(vault, 0));
    }

    /// Whether releasing `value` now would exceed the policy's velocity budget, counting the
    /// full value of every unvault seen in the window (including those already cancelled).
    fn over_velocity(&self, policy_id: &str, vault: OutPoint, value: u64, now: u32) -> bool {
        let Some(limits) = self.limits.get(policy_id) else { return false };
        let window_start = now.saturating_sub(limits.velocity_window_blocks);
        let others: u64 = self
            .released
            .get(policy_id)
            .map(|m| {
                m.iter().filter(|(v, (h, _))| **v != vault && *h >= window_start).map(|(_, (_, s))| s).sum()
            })
            .unwrap_or(0);
        others + value > limits.velocity_limit_sat
    }

    /// Every block: escalate what is unconfirmed, re-broadcast after reorgs, watch deadlines,
    /// retire what is buried.
    fn each_block(&mut self, height: u32, actions: &mut Vec<Action>) {
        self.check_fee_wallet(actions);
        let active: Vec<OutPoint> = self.active.iter().filter(|v| !self.fresh.contains(v)).copied().collect();
        for id in active {
            let vault = self.vaults.get_mut(&id).expect("watched");
            let s = vault.state.clone();
            let buried = |h: Option<u32>| h.is_some_and(|h| height >= h + BURY_MARGIN);
            if buried(s.cancel_height) || buried(s.emergency_height) || buried(s.spent_height) {
                vault.state.done = true;
                self.active.remove(&id);
                self.dirty.insert(id);
                continue;
            }
            if let Some(rung) = s.emergency_rung.filter(|_| s.emergency_height.is_none()) {
                let top = vault.emergencies.len().min(vault.unvault_emergencies.len()) - 1;
                let next = (rung + 1).min(top);
                vault.state.emergency_rung = Some(next);
                actions.push(emergency_broadcast(vault, next));
                self.dirty.insert(id);
                if next == top {
                    vault.state.top_rung_since.get_or_insert(height);
                    // UE's parent U must be confirmed for a child of UE to relay (TRUC).
                    let (parent, parent_value, label) = if vault.state.unvault_seen {
                        (
                            vault.unvault_emergencies[top].clone(),
                            vault.unvault.output[0].value,
                            "unvault-emergency",
                        )
                    } else {
                        (vault.emergencies[top].clone(), vault.amount, "emergency")
                    };
                    if !vault.state.unvault_seen || s.unvault_height.is_some() {
                        self.bump(id, parent, parent_value, label, height, None, actions);
                    }
                }
            } else if let Some(rung) = s.cancel_rung.filter(|_| s.cancel_height.is_none()) {
                let top = vault.cancels.len() - 1;
                let next = (rung + 1).min(top);
                vault.state.cancel_rung = Some(next);
                actions.push(cancel_broadcast(vault, next));
                self.dirty.insert(id);
                if next == top {
                    vault.state.top_rung_since.get_or_insert(height);
                }
                // C's parent U must be confirmed for a child of C to relay (TRUC).
                if next == top && s.unvault_height.is_some() {
                    let parent = vault.cancels[top].clone();
                    let parent_value = vault.unvault.output[0].value;
                    self.bump(id, parent, parent_value, "cancel", height, None, actions);
                }
                let vault = self.vaults.get(&id).expect("watched");
                if let Some(u) = s.unvault_height {
                    let deadline = u + vault.delay as u32;
                    if height + BURY_MARGIN >= deadline {
                        actions.push(Action::Alarm {
                            vault: Some(id),
                            kind: "deadline".into(),
                            message: format!(
                                "cancel of vault {id} unconfirmed at height {height}; the spend leaf opens at {deadline}: funds at risk"
                            ),
                        });
                    }
                }
            }
        }
    }
}

impl Watcher {
    /// Pays through `parent`'s anchor once it has sat at the top of its ladder for
    /// [`BUMP_RETRY_BLOCKS`]: a first child aiming at twice the parent's feerate (at least the
    /// bump feerate); while it stays unconfirmed, a replacement every [`BUMP_RETRY_BLOCKS`] at
    /// twice the feerate on the same coin, as far as that coin reaches (then an alarm). A new
    /// parent (E gave way to UE) gets a child at once, on the same coin. With `outbid` (a
    /// rival's feerate, in the post-DELAY race): a first child at once, aiming at twice that.
    #[allow(clippy::too_many_arguments)]
    fn bump(
        &mut self,
        id: OutPoint,
        parent: Transaction,
        parent_value: Amount,
        label: &str,
        height: u32,
        outbid: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        let Some(wallet) = self.fee_wallet.as_mut() else { return };
        let vault = self.vaults.get_mut(&id).expect("watched");
        let parent_txid = parent.compute_txid();
        let parent_fee =
            parent_value.to_sat().saturating_sub(parent.output.iter().map(|o| o.value.to_sat()).sum());
        // Stuck at the top rung means the market pays more than the parent: aim well above it.
        let parent_rate = parent_fee / parent.vsize() as u64;
        let (rate, coin) = match &vault.state.bump {
            None if outbid.is_some()
                || vault.state.top_rung_since.is_some_and(|h| height >= h + BUMP_RETRY_BLOCKS) =>
            {
                (wallet.first_rate().max(2 * parent_rate).max(2 * outbid.unwrap_or(0)), None)
            }
            None => return,
            Some(b) if b.parent != parent_txid => (b.sat_per_vb, Some((b.coin, b.coin_value))),
            Some(b) if b.ceiling || height < b.height + BUMP_RETRY_BLOCKS => return,
            Some(b) => (b.sat_per_vb * 2, Some((b.coin, b.coin_value))),
        };
        match wallet.bump(&parent, parent_fee, rate, coin) {
            Some(bump) => {
                if bump.ceiling {
                    actions.push(Action::Alarm {
                        vault: Some(id),
                        kind: "bump-ceiling".into(),
                        message: format!(
                            "{label} of vault {id} is bumped at {} sat/vB, all its fee coin can pay; it is still unconfirmed",
                            bump.sat_per_vb
                        ),
                    });
                }
                vault.state.bump = Some(BumpState {
                    parent: parent_txid,
                    height,
                    sat_per_vb: bump.sat_per_vb,
                    coin: bump.coin,
                    coin_value: bump.coin_value,
                    ceiling: bump.ceiling,
                });
                self.wallet_dirty = true;
                self.dirty.insert(id);
                actions.push(Action::BroadcastPackage {
                    vault: id,
                    what: format!("{label} anchor bump"),
                    parent,
                    child: bump.tx,
                });
            }
            None => actions.push(Action::Alarm {
                vault: Some(id),
                kind: "fee-wallet-empty".into(),
                message: format!(
                    "{label} of vault {id} is stuck at the top rung and the fee wallet cannot bump it"
                ),
            }),
        }
    }

    /// The fee wallet must cover a bump at the stress feerate for every open vault; it alarms
    /// once when it cannot, and again after it recovered and fell short anew.
    fn check_fee_wallet(&mut self, actions: &mut Vec<Action>) {
        // Counting open vaults walks them all: only a tower with a fee wallet pays for it.
        if self.fee_wallet.is_none() {
            return;
        }
        let open = self.vaults.values().filter(|v| !v.state.done).count() as u64;
        let target = open.min(20) as usize;
        // Fewer free coins than concurrent bumps might need: split the largest.
        let mut cannot_split = false;
        if let Some(w) = self.fee_wallet.as_mut() {
            let pending_split = w.coins().values().any(|c| c.height.is_none());
            if w.free_coins() < target && !pending_split {
                match w.split(target - w.free_coins() + 1) {
                    Some(split) => {
                        self.wallet_dirty = true;
                        actions.push(Action::Broadcast {
                            vault: OutPoint::null(),
                            what: "fee wallet split".into(),
                            tx: split,
                        });
                    }
                    None => cannot_split = true,
                }
            }
        }
        let Some(w) = self.fee_wallet.as_ref() else { return };
        let needed = open * w.reserve_per_vault();
        let (balance, coins) = (w.balance(), w.free_coins() as u64);
        let short = balance < needed || cannot_split;
        if short && !self.wallet_low {
            actions.push(Action::Alarm {
                vault: None,
                kind: "fee-wallet-low".into(),
                message: format!(
                    "fee wallet holds {balance} sat in {coins} confirmed coins; {open} open vaults need {needed} sat in {target} coins at the stress feerate"
                ),
            });
        }
        self.wallet_low = short;
    }
}

fn cancel_broadcast(vault: &Vault, rung: usize) -> Action {
    // C needs U: while U is unconfirmed, C rides as its TRUC child, so U goes out too.
    Action::Broadcast {
        vault: vault.outpoint,
        what: format!("cancel rung {rung}"),
        tx: vault.cancels[rung].clone(),
    }
}

fn emergency_broadcast(vault: &Vault, rung: usize) -> Action {
    if vault.state.unvault_seen {
        let rung = rung.min(vault.unvault_emergencies.len() - 1);
        Action::Broadcast {
            vault: vault.outpoint,
            what: format!("unvault-emergency rung {rung}"),
            tx: vault.unvault_emergencies[rung].clone(),
        }
    } else {
        let rung = rung.min(vault.emergencies.len() - 1);
        Action::Broadcast {
            vault: vault.outpoint,
            what: format!("emergency rung {rung}"),
            tx: vault.emergencies[rung].clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_policy::bitcoin::block::{Header, Version};
    use vigil_policy::bitcoin::hashes::Hash;
    use vigil_policy::bitcoin::{BlockHash, CompactTarget, TxMerkleNode};
    use vigil_policy::example::ExamplePolicy;
    use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};

    fn vault(index: u32, sat: u64) -> Vault {
        let compiled = CompiledPolicy::new(
            Policy::from_toml(&ExamplePolicy { delay: 20, ..ExamplePolicy::default() }.to_toml()).unwrap(),
        )
        .unwrap();
        let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
        let plan =
            compiled.plan(index, Amount::from_sat(sat), VaultKind::Standard, o.public(), c.public()).unwrap();
        let v = OutPoint { txid: Txid::from_byte_array([index as u8 + 1; 32]), vout: 0 };
        let g = compiled.build_graph(&plan, v).unwrap();
        Vault::from_signed("p", 20, &g.finalize(&o.sign(&g).unwrap(), &c.sign(&g).unwrap()).unwrap())
    }

    fn terms(expiry_height: u32) -> ApprovalTerms {
        ApprovalTerms { spend: Txid::all_zeros(), expiry_height, counter: 1 }
    }

    #[test]
    fn the_fee_wallet_alarms_when_short_and_bumps_a_cancel_stuck_at_the_top_rung() {
        use crate::fees::{FeePolicy, FeeWallet};
        use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
        let v = vault(0, 5_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[3; 32]).unwrap();
        let wallet = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 100, bump_sat_per_vb: 50 });
        let script = wallet.script().clone();
        w.set_fee_wallet(wallet);
        // Empty: the first block alarms, once.
        assert!(alarms(&w.on_block_connected(1, &block(vec![]))).contains(&"fee-wallet-low".to_string()));
        assert!(!alarms(&w.on_block_connected(2, &block(vec![]))).contains(&"fee-wallet-low".to_string()));
        // Funded with enough: no alarm; a later shortfall would alarm again.
        let mut funding = v.cancels[0].clone();
        funding.input[0].previous_output = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 };
        funding.output =
            vec![vigil_policy::bitcoin::TxOut { value: Amount::from_sat(1_000_000), script_pubkey: script }];
        w.on_block_connected(3, &block(vec![funding]));
        assert_eq!(w.fee_wallet().unwrap().balance(), 1_000_000);
        assert!(w.take_wallet_dirty());
        // With three more open vaults, the single coin is split so each bump has its own.
        let others: Vec<Vault> = (1..4).map(|i| vault(i, 5_000_000)).collect();
        for o in &others {
            w.add_vault(o.clone());
        }
        let actions = w.on_block_connected(4, &block(vec![]));
        let split = actions
            .iter()
            .find_map(|a| match a {
                Action::Broadcast { what, tx, .. } if what == "fee wallet split" => Some(tx.clone()),
                _ => None,
            })
            .expect("a split");
        assert!(split.output.len() >= 4, "{} outputs", split.output.len());
        assert_eq!(split.input[0].witness.len(), 1, "signed");
        w.on_block_connected(5, &block(vec![split]));
        assert!(w.fee_wallet().unwrap().free_coins() >= 4);
        // An unapproved unvault: the ladder climbs to the top, then the anchor is bumped.
        w.on_block_connected(10, &block(vec![v.unvault.clone()]));
        let top = v.cancels.len() - 1;
        let mut bumps = Vec::new();
        let mut ceiling_alarms = 0;
        for h in 11..40 {
            let actions = w.on_block_connected(h, &block(vec![]));
            ceiling_alarms += alarms(&actions).iter().filter(|k| *k == "bump-ceiling").count();
            for a in actions {
                if let Action::BroadcastPackage { what, parent, child, .. } = a {
                    assert_eq!(parent, v.cancels[top], "the child rides with its parent");
                    if what == "cancel anchor bump" {
                        bumps.push((h, child));
                    }
                }
            }
        }
        let (h, child) = &bumps[0];
        assert_eq!(*h, 10 + top as u32 + 2, "two blocks after reaching the top rung");
        assert_eq!(child.input[0].previous_output, OutPoint { txid: v.cancels[top].compute_txid(), vout: 1 });
        assert!(child.input[1].witness.len() == 1, "the fee coin is signed");
        // Still unconfirmed: a replacement every two blocks, on the same anchor and coin, each
        // paying more, until the coin can pay no more; then one alarm and no more bumps.
        assert!(bumps.len() >= 2, "{} bumps", bumps.len());
        for pair in bumps.windows(2) {
            let ((h0, a), (h1, b)) = (&pair[0], &pair[1]);
            assert_eq!(*h1, h0 + BUMP_RETRY_BLOCKS);
            assert_eq!(
                a.input.iter().map(|i| i.previous_output).collect::<Vec<_>>(),
                b.input.iter().map(|i| i.previous_output).collect::<Vec<_>>()
            );
            assert!(b.output[0].value < a.output[0].value, "the replacement pays more: {a:?} {b:?}");
        }
        assert_eq!(ceiling_alarms, 1);
        assert!(w.vault(&v.outpoint).unwrap().state.bump.as_ref().unwrap().ceiling);
    }

    #[test]
    fn an_emergency_stuck_at_the_top_rung_is_bumped_through_its_anchor() {
        use crate::fees::{FeePolicy, FeeWallet};
        use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1};
        let v = vault(0, 5_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        let key = Keypair::from_seckey_slice(&Secp256k1::new(), &[3; 32]).unwrap();
        let mut wallet = FeeWallet::new(key, FeePolicy { stress_sat_per_vb: 100, bump_sat_per_vb: 50 });
        let coin = OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 };
        let mut funding = v.cancels[0].clone();
        funding.input[0].previous_output = coin;
        funding.output = vec![vigil_policy::bitcoin::TxOut {
            value: Amount::from_sat(100_000),
            script_pubkey: wallet.script().clone(),
        }];
        wallet.observe(&funding, Some(1));
        w.set_fee_wallet(wallet);
        w.panic("p");
        let top = v.emergencies.len().min(v.unvault_emergencies.len()) - 1;
        let bump = (2..20)
            .find_map(|h| {
                w.on_block_connected(h, &block(vec![])).into_iter().find_map(|a| match a {
                    Action::BroadcastPackage { what, child, .. } if what == "emergency anchor bump" => {
                        Some((h, child))
                    }
                    _ => None,
                })
            })
            .expect("an emergency bump");
        assert_eq!(bump.0, 1 + top as u32 + BUMP_RETRY_BLOCKS, "two blocks after reaching the top rung");
        assert_eq!(
            bump.1.input[0].previous_output,
            OutPoint { txid: v.emergencies[top].compute_txid(), vout: 1 }
        );
        assert_eq!(bump.1.input[1].previous_output, OutPoint { txid: funding.compute_txid(), vout: 0 });
    }

    #[test]
    fn an_expired_approval_does_not_cover_the_unvault() {
        let v = vault(0, 1_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        w.add_approval(v.unvault.compute_txid(), terms(5));
        assert_eq!(
            broadcasts(&w.on_block_connected(6, &block(vec![v.unvault.clone()]))),
            vec!["cancel rung 0"]
        );
    }

    fn block(txs: Vec<Transaction>) -> Block {
        let header = Header {
            version: Version::TWO,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: 0,
            bits: CompactTarget::from_consensus(0x207fffff),
            nonce: 0,
        };
        Block { header, txdata: txs }
    }

    fn broadcasts(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| if let Action::Broadcast { what, .. } = a { Some(what.clone()) } else { None })
            .collect()
    }

    fn alarms(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| if let Action::Alarm { kind, .. } = a { Some(kind.clone()) } else { None })
            .collect()
    }

    fn watcher(vaults: &[&Vault], limit: u64) -> Watcher {
        let mut w = Watcher::new();
        w.set_limits("p", PolicyLimits { velocity_limit_sat: limit, velocity_window_blocks: 100 });
        for v in vaults {
            w.add_vault((*v).clone());
        }
        w
    }

    #[test]
    fn unapproved_unvault_is_cancelled_and_escalated_each_block_until_buried() {
        let v = vault(0, 1_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        let a = w.on_mempool_tx(&v.unvault);
        assert_eq!(broadcasts(&a), vec!["cancel rung 0"]);
        assert_eq!(alarms(&a), vec!["unvault-cancelled"]);
        assert_eq!(
            broadcasts(&w.on_block_connected(10, &block(vec![v.unvault.clone()]))),
            vec!["cancel rung 1"]
        );
        assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 2"]);
        let c = v.cancels[2].clone();
        assert!(broadcasts(&w.on_block_connected(12, &block(vec![c]))).is_empty());
        for h in 13..18 {
            w.on_block_connected(h, &block(vec![]));
            assert!(!w.vault(&v.outpoint).unwrap().state.done);
        }
        w.on_block_connected(18, &block(vec![]));
        assert!(w.vault(&v.outpoint).unwrap().state.done, "buried six deep");
    }

    /// The store, as far as the watcher can tell: graphs by vault, or a failure.
    struct Shelf(HashMap<OutPoint, Vault>, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Graphs for Shelf {
        fn graph(&mut self, vault: &OutPoint) -> Result<Vault, String> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.get(vault).cloned().ok_or_else(|| "the store is gone".to_string())
        }
    }

    #[test]
    fn idle_vaults_keep_their_graphs_in_the_store_and_get_them_back_when_touched() {
        let (v, other) = (vault(0, 1_000_000), vault(1, 1_000_000));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut w = watcher(&[], 100_000_000);
        let shelf = [(v.outpoint, v.clone())].into_iter().collect();
        w.set_graphs(Box::new(Shelf(shelf, reads.clone())));
        w.add_vault(v.clone());
        w.add_vault(other.clone());
        let idle = w.vault(&v.outpoint).unwrap();
        assert!(idle.cancels.is_empty() && idle.emergencies.is_empty(), "paged out");
        assert_eq!(w.graphs_in_memory(), 0);
        assert_eq!(idle.unvault, v.unvault, "U stays: it is what the index watches for");
        // Unrelated blocks read nothing back.
        w.on_block_connected(9, &block(vec![]));
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        // The unvault: read back, cancelled with the right transaction, kept while active.
        let actions = w.on_block_connected(10, &block(vec![v.unvault.clone()]));
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(w.graphs_in_memory(), 1);
        assert!(actions.contains(&Action::Broadcast {
            vault: v.outpoint,
            what: "cancel rung 0".into(),
            tx: v.cancels[0].clone()
        }));
        assert_eq!(w.take_dirty()[0].cancels, v.cancels, "stored whole");
        assert_eq!(broadcasts(&w.on_block_connected(11, &block(vec![]))), vec!["cancel rung 1"]);
        // Buried: paged out again once its last state is taken for the store.
        w.on_block_connected(12, &block(vec![v.cancels[1].clone()]));
        for h in 13..=18 {
            w.on_block_connected(h, &block(vec![]));
        }
        assert!(w.vault(&v.outpoint).unwrap().state.done);
        let last = w.take_dirty();
        assert!(last.iter().all(|x| !x.cancels.is_empty()), "never stored without its transactions");
        assert!(w.vault(&v.outpoint).unwrap().cancels.is_empty());
        assert_eq!(w.graphs_in_memory(), 0);
        // A reorg that undoes the cancel reads it back before changing it.
        w.on_block_disconnected(18);
        w.on_block_disconnected(12);
        assert!(!w.vault(&v.outpoint).unwrap().cancels.is_empty());
        assert!(w.take_graph_error().is_none());
        // A graph the store cannot give: no decision, an error for the tower to stop on.
        let actions = w.on_mempool_tx(&other.unvault);
        assert!(broadcasts(&actions).is_empty());
        assert!(w.take_graph_error().is_some_and(|e| e.contains("the store is gone")));
    }

    #[test]
    fn approved_unvault_is_left_alone_unless_over_the_velocity_budget() {
        let (a, b) = (vault(0, 3_000_000), vault(1, 3_000_000));
        let mut w = watcher(&[&a, &b], 5_000_000);
        w.add_approval(a.unvault.compute_txid(), terms(1_000));
        w.add_approval(b.unvault.compute_txid(), terms(1_000));
        assert!(broadcasts(&w.on_block_connected(5, &block(vec![a.unvault.clone()]))).is_empty());
        // The second approved unvault would release 6 M sat in the window: cancelled anyway.
        let actions = w.on_block_connected(6, &block(vec![b.unvault.clone()]));
        assert_eq!(broadcasts(&actions), vec!["cancel rung 0"]);
        assert!(actions
            .iter()
            .any(|x| matches!(x, Action::Alarm { message, .. } if message.contains("velocity"))));
    }

    #[test]
    fn a_foreign_spend_of_a_vault_alarms_and_panics_every_vault_of_the_policy() {
        let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
        let mut w = watcher(&[&a, &b], 100_000_000);
        // Some transaction spending V that is neither U nor E.
        let mut thief = a.emergencies[0].clone();
        thief.output[0].value = Amount::from_sat(1);
        let actions = w.on_mempool_tx(&thief);
        assert!(alarms(&actions).contains(&"foreign-vault-spend".to_string()));
        assert!(alarms(&actions).contains(&"panic".to_string()));
        let b_sweep = actions.iter().any(|x| matches!(x, Action::Broadcast { vault, what, .. } if *vault == b.outpoint && what.starts_with("emergency")));
        assert!(b_sweep, "{actions:?}");
    }

    #[test]
    fn panic_sends_e_for_unspent_vaults_and_ue_for_unvaulted_ones() {
        let (a, b) = (vault(0, 1_000_000), vault(1, 1_000_000));
        let mut w = watcher(&[&a, &b], 100_000_000);
        w.add_approval(b.unvault.compute_txid(), terms(1_000));
        w.on_block_connected(3, &block(vec![b.unvault.clone()]));
        let actions = w.panic("p");
        let mut what: Vec<(OutPoint, String)> = actions
            .iter()
            .filter_map(|x| {
                if let Action::Broadcast { vault, what, .. } = x {
                    Some((*vault, what.clone()))
                } else {
                    None
                }
            })
            .collect();
        what.sort();
        let mut expected = vec![
            (a.outpoint, "emergency rung 0".to_string()),
            (b.outpoint, "unvault-emergency rung 0".to_string()),
        ];
        expected.sort();
        assert_eq!(what, expected);
        // E falls back to UE once U shows up.
        let after = w.on_mempool_tx(&a.unvault);
        assert_eq!(broadcasts(&after), vec!["unvault-emergency rung 0"]);
    }

    #[test]
    fn a_reorg_forgets_confirmations_and_the_next_block_rebroadcasts() {
        let v = vault(0, 1_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        w.on_block_connected(10, &block(vec![v.unvault.clone()]));
        w.on_block_connected(11, &block(vec![v.cancels[1].clone()]));
        assert_eq!(w.vault(&v.outpoint).unwrap().state.cancel_height, Some(11));
        w.on_block_disconnected(11);
        w.on_block_disconnected(10);
        let s = &w.vault(&v.outpoint).unwrap().state;
        assert_eq!((s.unvault_height, s.cancel_height), (None, None));
        assert!(!broadcasts(&w.on_block_connected(10, &block(vec![]))).is_empty(), "cancel re-broadcast");
    }

    #[test]
    fn the_deadline_alarm_fires_before_the_spend_leaf_opens() {
        let v = vault(0, 1_000_000);
        let mut w = watcher(&[&v], 100_000_000);
        w.on_block_connected(100, &block(vec![v.unvault.clone()]));
        let mut fired_at = None;
        for h in 101..120 {
            if alarms(&w.on_block_connected(h, &block(vec![]))).contains(&"deadline".to_string()) {
                fired_at.get_or_insert(h);
            }
        }
        assert_eq!(fired_at, Some(100 + 20 - BURY_MARGIN));
    }
}
