//! The tower's decisions (DESIGN.md §4 "Spending", "Panic"): pure logic over chain events.
//!
//! [`Watcher`] sees blocks (connected and disconnected) and mempool transactions and answers
//! with [`Action`]s: broadcasts and alarms. It does no I/O; the daemon persists every decision
//! (vault states and actions, in one store transaction) before acting on it, so a restart
//! resumes exactly where the tower stopped.

use std::collections::{HashMap, HashSet};

use vigil_policy::bitcoin::{Block, OutPoint, Transaction, Txid};

use crate::error::StoreError;
use crate::fees::FeeWallet;
use crate::index::{scan_block, OutpointIndex, ScanError};
use crate::vault::{Action, AlarmKind, ApprovalTerms, Vault};

mod bumps;
mod decide;
mod ladder;
#[cfg(test)]
mod ladder_tests;
mod lockdown;
#[cfg(test)]
mod lockdown_tests;
#[cfg(test)]
mod tests;

pub use bumps::BUMP_RETRY_BLOCKS;
pub use lockdown::{Lift, Lockdown, LockdownNow, DURESS_MARGIN_BLOCKS, MIN_DURESS_MARGIN_BLOCKS};

/// Blocks a cancel must be buried before the spend leaf opens (DESIGN.md §4 deadline).
pub const BURY_MARGIN: u32 = 6;

/// A policy's limits as the tower enforces them.
#[derive(Debug, Clone)]
pub struct PolicyLimits {
    /// Velocity budget per window, sat: what the co-signer may release alone.
    pub velocity_limit_sat: u64,
    /// The window, blocks.
    pub velocity_window_blocks: u32,
}

/// Where the watcher reads back the transactions of vaults it keeps only in summary (the
/// tower's store, through a connection of its own).
pub trait Graphs: Send {
    /// The vault as registered, with every transaction.
    fn graph(&mut self, vault: &OutPoint) -> Result<Vault, StoreError>;
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
    graph_error: Option<StoreError>,
    /// Vaults whose C, E and UE are in memory.
    graphs_held: usize,
    /// U's outpoint -> V.
    by_unvault: HashMap<OutPoint, OutPoint>,
    /// Both watched outpoints of every vault, for scanning blocks (see [`crate::index`]).
    index: OutpointIndex,
    /// U txid -> what its approval allows.
    approvals: HashMap<Txid, ApprovalTerms>,
    limits: HashMap<String, PolicyLimits>,
    /// Per client, every U seen that no guardian quorum approved and no confirmed cancel
    /// undid: V -> (height first seen or confirmed, value), for velocity.
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
    /// The backend's tip when the blocks being connected were fetched: a block below it is
    /// history caught up after a restart or an outage (see [`Watcher::set_chain_tip`]).
    chain_tip: u32,
    /// Blocks and mempool transactions observed so far (see [`Watcher::events`]).
    events: u64,
    /// Clients locked down, by id.
    lockdowns: HashMap<String, Lockdown>,
    /// The lockdowns changed since the last [`Watcher::take_lockdowns_dirty`].
    lockdowns_dirty: bool,
    /// Blocks before a spend leaf opens at which a quiet lockdown cancels.
    duress_margin: u32,
}

impl Watcher {
    /// An empty watcher.
    pub fn new() -> Watcher {
        Watcher { duress_margin: DURESS_MARGIN_BLOCKS, ..Watcher::default() }
    }

    /// Sets a client's limits.
    pub fn set_limits(&mut self, client: &str, limits: PolicyLimits) {
        self.limits.insert(client.to_owned(), limits);
    }

    /// Sets the tip height (from the store at start: the watcher must never act on height 0).
    pub fn set_tip(&mut self, height: u32) {
        self.tip = height;
    }

    /// The backend's tip, before the blocks up to it are connected. A block below it was mined
    /// before anything decided on it could reach the network: a rung sent while catching up
    /// climbs only on blocks mined after the tip, so an outage does not burn fees as if the
    /// cancel had sat unconfirmed through every block missed; the deadline alone may raise it
    /// ([`deadline_floor`], ADR 0009).
    pub fn set_chain_tip(&mut self, height: u32) {
        self.chain_tip = height;
    }

    /// The chain's tip as the backend last told it (see [`Watcher::set_chain_tip`]).
    pub fn chain_tip(&self) -> u32 {
        self.chain_tip
    }

    /// When what is decided on the block at `height` reaches the network: at once, or once
    /// the tower has caught up with the chain.
    fn on_network_at(&self, height: u32) -> u32 {
        height.max(self.chain_tip)
    }

    /// Watches a vault (new, or loaded from the store with its state).
    pub fn add_vault(&mut self, vault: Vault) {
        self.by_unvault.insert(vault.unvault_outpoint(), vault.outpoint);
        let number = self.vaults.len() as u32;
        self.index.insert(&vault.outpoint, number);
        self.index.insert(&vault.unvault_outpoint(), number);
        // A sweep under way is as much this tower's to push through as a cancel: left out, E
        // would sit at its last rung after a restart, and a second panic does not restart it.
        if (vault.state.unvault_seen || vault.state.emergency_rung.is_some()) && !vault.state.done {
            self.active.insert(vault.outpoint);
        }
        // An unvault seen before a restart counts for velocity as it did at first sight,
        // confirmed or not (an approval that had expired then does not exempt it now).
        let seen = vault.state.unvault_height.or(vault.state.unvault_seen.then_some(self.tip));
        // One whose cancel confirmed released nothing (see `cancel_confirmed`).
        if let Some(h) = seen.filter(|_| vault.state.cancel_height.is_none()) {
            let counted = vault.state.counted_for_velocity;
            if counted
                .unwrap_or_else(|| !(vault.guarded && self.guardian_approved(&vault.unvault.compute_txid())))
            {
                let value = vault.unvault.output[0].value.to_sat();
                self.released.entry(vault.policy_id.clone()).or_default().insert(vault.outpoint, (h, value));
            }
        }
        let id = vault.outpoint;
        self.graphs_held += usize::from(vault.is_whole());
        if let Some(old) = self.vaults.insert(id, vault) {
            self.graphs_held -= usize::from(old.is_whole());
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
    pub fn take_graph_error(&mut self) -> Option<StoreError> {
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
        if let Some(v) = self.vaults.get_mut(&id).filter(|v| v.is_whole()) {
            self.graphs_held -= 1;
            v.cancels = Vec::new();
            v.emergencies = Vec::new();
            v.unvault_emergencies = Vec::new();
        }
    }

    /// Makes sure the vault's every transaction is in memory.
    fn ensure_graph(&mut self, id: OutPoint) -> bool {
        let Some(vault) = self.vaults.get(&id) else { return false };
        if vault.is_whole() {
            return true;
        }
        let Some(source) = self.graphs.0.as_mut() else { return true };
        match source.graph(&id) {
            Ok(full) if full.is_whole() => {
                let vault = self.vaults.get_mut(&id).expect("checked above");
                vault.cancels = full.cancels;
                vault.emergencies = full.emergencies;
                vault.unvault_emergencies = full.unvault_emergencies;
                self.graphs_held += 1;
                true
            }
            Ok(_) => {
                self.graph_error = Some(StoreError::Incomplete(id));
                false
            }
            Err(e) => {
                self.graph_error = Some(e);
                false
            }
        }
    }

    /// Records an approved spend of an unvault; what replacing an earlier approval does.
    pub fn add_approval(&mut self, unvault_txid: Txid, terms: ApprovalTerms) -> Vec<Action> {
        let mut actions = Vec::new();
        self.approvals.insert(unvault_txid, terms);
        let unvault = OutPoint { txid: unvault_txid, vout: 0 };
        // Only an unvault judged as the quorum's is touched (its graph read back only then).
        let judged_by_quorum =
            |id: &OutPoint| self.vaults.get(id).is_some_and(|v| v.state.counted_for_velocity == Some(false));
        if let Some(id) =
            self.by_unvault.get(&unvault).copied().filter(|id| !terms.guardian_quorum && judged_by_quorum(id))
        {
            if self.ensure_graph(id) {
                self.approval_replaced(id, &mut actions);
            }
        }
        actions
    }

    /// The approval recorded for an unvault.
    pub fn approval(&self, unvault_txid: &Txid) -> Option<&ApprovalTerms> {
        self.approvals.get(unvault_txid)
    }

    fn guardian_approved(&self, unvault_txid: &Txid) -> bool {
        self.approvals.get(unvault_txid).is_some_and(|a| a.guardian_quorum)
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
        !self.dirty.is_empty() || self.wallet_dirty || self.lockdowns_dirty
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

    /// How many blocks (connected or disconnected) and mempool transactions the watcher has
    /// observed: a registration that looked a vault up on chain compares it before and after,
    /// to tell whether something went by that the watcher ignored because the vault was not
    /// watched yet.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// A transaction seen in the mempool.
    pub fn on_mempool_tx(&mut self, tx: &Transaction) -> Vec<Action> {
        self.on_mempool_tx_with_fee(tx, None)
    }

    /// A transaction seen in the mempool, with its fee when the backend told it (a rival spend
    /// of an unvault may add inputs of its own, whose values only the backend knows).
    pub fn on_mempool_tx_with_fee(&mut self, tx: &Transaction, fee: Option<u64>) -> Vec<Action> {
        self.events += 1;
        let mut actions = Vec::new();
        if let Some(w) = self.fee_wallet.as_mut() {
            self.wallet_dirty |= w.observe(tx, None);
        }
        self.observe(tx, None, fee, &mut actions);
        actions
    }

    /// Whether the fee of `tx` matters to a decision: it spends a watched unvault's output and
    /// is none of the vault's own transactions nor its approved spend.
    pub fn needs_fee(&self, tx: &Transaction) -> bool {
        let txid = tx.compute_txid();
        tx.input.iter().any(|i| {
            self.by_unvault.get(&i.previous_output).is_some_and(|id| {
                let v = &self.vaults[id];
                v.role_of(&txid).is_none()
                    && self.approvals.get(&i.previous_output.txid).map(|a| a.spend) != Some(txid)
            })
        })
    }

    /// The transactions now in the mempool: fee-wallet coins reserved by a spend that left it
    /// (refused, evicted, replaced by someone else's) are free again.
    pub fn on_mempool_snapshot(&mut self, txids: &HashSet<Txid>) {
        if let Some(w) = self.fee_wallet.as_mut() {
            // The coins live bumps will spend again: those of vaults still being worked on.
            let bumping: HashSet<OutPoint> = self
                .active
                .iter()
                .filter_map(|id| self.vaults[id].state.bump.as_ref().map(|b| b.coin))
                .collect();
            self.wallet_dirty |= w.forget_missing_spends(txids, self.tip, &bumping);
        }
    }

    /// A transaction the tower learnt of outside block order (at registration: what already
    /// happened to a vault before this tower watched it), confirmed at `height` or pending.
    pub fn on_known_tx(&mut self, tx: &Transaction, height: Option<u32>) -> Vec<Action> {
        let mut actions = Vec::new();
        self.observe(tx, height, None, &mut actions);
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

    /// What the market pays now (the backend's estimate), sat/vB: the fee wallet's own
    /// housekeeping pays that.
    pub fn set_market_feerate(&mut self, sat_per_vb: u64) {
        if let Some(w) = self.fee_wallet.as_mut() {
            w.set_market_feerate(sat_per_vb);
        }
    }

    /// Whether the fee wallet's low-balance alarm stands (persisted with the wallet, so a
    /// restart does not raise it again).
    pub fn fee_wallet_low(&self) -> bool {
        self.wallet_low
    }

    /// Restores [`Watcher::fee_wallet_low`] as recorded.
    pub fn restore_fee_wallet_low(&mut self, low: bool) {
        self.wallet_low = low;
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
        self.events += 1;
        self.tip = height;
        self.fresh.clear();
        let mut actions = Vec::new();
        for (_, tx) in &hits {
            if let Some(w) = self.fee_wallet.as_mut() {
                self.wallet_dirty |= w.observe(tx, Some(height));
            }
            self.observe(tx, Some(height), None, &mut actions);
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
        self.events += 1;
        self.tip = height.saturating_sub(1);
        // The chain is lower than when rungs were sent: they were out for the blocks to come.
        self.chain_tip = self.chain_tip.min(self.tip);
        let tip = self.tip;
        for id in &self.active {
            let s = &mut self.vaults.get_mut(id).expect("watched").state;
            if s.rung_sent_at.is_some_and(|sent| sent > tip) {
                s.rung_sent_at = Some(tip);
                self.dirty.insert(*id);
            }
        }
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
                    || above(s.foreign_spend_height)
            })
            .map(|v| v.outpoint)
            .collect();
        for id in changed {
            // It may act again (and will be stored whole): its transactions come back first.
            if !self.ensure_graph(id) {
                continue;
            }
            let vault = self.vaults.get_mut(&id).expect("watched");
            // U counts for velocity again while its cancel is out of the chain.
            if above(vault.state.cancel_height) && vault.state.counted_for_velocity != Some(false) {
                let seen_at = vault.state.unvault_height.filter(|h| *h < height).unwrap_or(height);
                let value = vault.unvault.output[0].value.to_sat();
                self.released.entry(vault.policy_id.clone()).or_default().insert(id, (seen_at, value));
            }
            let s = &mut vault.state;
            for h in [
                &mut s.unvault_height,
                &mut s.cancel_height,
                &mut s.emergency_height,
                &mut s.spent_height,
                &mut s.foreign_spend_height,
            ] {
                if above(*h) {
                    *h = None;
                }
            }
            s.done = false;
            self.dirty.insert(id);
            if s.unvault_seen || s.emergency_rung.is_some() {
                self.active.insert(id);
            }
        }
    }

    /// A guardian-quorum panic for one client: E for every unspent V, UE for every U.
    pub fn panic(&mut self, client: &str) -> Vec<Action> {
        let mut actions = vec![Action::client_alarm(
            client,
            AlarmKind::Panic,
            format!("panic for client {client}: sweeping every vault to the deep vault"),
        )];
        let ids: Vec<OutPoint> = self
            .vaults
            .values()
            .filter(|v| v.policy_id == client && !v.state.done && v.state.emergency_rung.is_none())
            .map(|v| v.outpoint)
            .collect();
        for id in ids {
            if self.ensure_graph(id) {
                self.start_emergency(id, &mut actions);
            }
        }
        // Sweeps this tower saw before the panic reached it (another tower got it first) were
        // alarmed as unordered: say they were this panic's, so the guardians do not hunt a
        // rogue tower that is not there.
        let explained: Vec<OutPoint> = self
            .vaults
            .values()
            .filter(|v| v.policy_id == client && v.state.unordered_emergency)
            .map(|v| v.outpoint)
            .collect();
        for id in &explained {
            let vault = self.vaults.get_mut(id).expect("watched");
            vault.state.unordered_emergency = false;
            self.dirty.insert(*id);
        }
        if !explained.is_empty() {
            let list: Vec<String> = explained.iter().map(ToString::to_string).collect();
            actions.push(Action::client_alarm(
                client,
                AlarmKind::Panic,
                format!(
                    "the sweeps of client {client}'s vaults {} alarmed earlier as unordered were this panic's",
                    list.join(", ")
                ),
            ));
        }
        actions
    }

    fn start_emergency(&mut self, id: OutPoint, actions: &mut Vec<Action>) {
        let now = self.on_network_at(self.tip);
        let vault = self.vaults.get_mut(&id).expect("watched");
        if vault.state.done || vault.state.emergency_rung.is_some() {
            return;
        }
        // UE, when U is out, as high as U's deadline requires.
        let top = vault.emergency_top();
        let rung = if vault.state.unvault_seen { vault_floor(vault, top, now) } else { 0 };
        vault.state.emergency_rung = Some(rung);
        vault.state.top_rung_since = (rung == top).then(|| top_rung_since(vault, now));
        vault.state.rung_sent_at = Some(now);
        self.dirty.insert(id);
        self.active.insert(id);
        self.fresh.insert(id);
        actions.push(emergency_broadcast(vault, rung));
    }
}

/// Blocks before the spend leaf opens by which a ladder spending U's output (C, or UE)
/// reaches its top rung at the latest: a first anchor bump goes out [`BUMP_RETRY_BLOCKS`]
/// later and can confirm a block after that, before the burial margin begins.
pub const TOP_RUNG_MARGIN: u32 = BURY_MARGIN + BUMP_RETRY_BLOCKS + 1;

/// The lowest rung a ladder spending U's output may stand at when what is sent now reaches
/// the network at height `now`, the spend leaf opening at `opens`: from there, one rung a
/// block reaches the top [`TOP_RUNG_MARGIN`] blocks before it. A ladder that has climbed from
/// the bottom since U confirmed is never below it (DELAY covers the ladder and the margin);
/// one that starts late (a tower back from an outage, a quiet cancel) starts at it.
pub fn deadline_floor(top: usize, opens: u32, now: u32) -> usize {
    let blocks_to_climb = opens.saturating_sub(now).saturating_sub(TOP_RUNG_MARGIN);
    top.saturating_sub(blocks_to_climb as usize)
}

/// [`deadline_floor`] for `vault`'s ladder spending U's output, `0` while U is unconfirmed.
pub(super) fn vault_floor(vault: &Vault, top: usize, now: u32) -> usize {
    match vault.state.unvault_height {
        Some(u) => deadline_floor(top, u + vault.delay as u32, now),
        None => 0,
    }
}

/// The height `vault`'s ladder is taken to have reached its top rung at, reaching it at `now`:
/// one the deadline lifted there late is dated as if it had climbed on the latest schedule,
/// so its first anchor bump is not later than that schedule's.
pub(super) fn top_rung_since(vault: &Vault, now: u32) -> u32 {
    match vault.state.unvault_height {
        Some(u) => now.min((u + vault.delay as u32).saturating_sub(TOP_RUNG_MARGIN)),
        None => now,
    }
}

pub(super) fn cancel_broadcast(vault: &Vault, rung: usize) -> Action {
    // C needs U: while U is unconfirmed, C rides as its TRUC child, so U goes out too.
    Action::Broadcast {
        vault: vault.outpoint,
        what: format!("cancel rung {rung}"),
        tx: vault.cancels[rung].clone(),
    }
}

pub(super) fn emergency_broadcast(vault: &Vault, rung: usize) -> Action {
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
