//! What the tower holds of a vault, what it decides to do about it, and the alarms it raises.

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, Txid};

/// A registered vault: its signed transactions and what the tower knows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vault {
    /// V.
    pub outpoint: OutPoint,
    /// The client whose vault it is: the id its policy was first pinned under (the sha256 of
    /// that file), which stays its id across policy changes.
    pub policy_id: String,
    /// The vault's derivation index in its client's policy (each used once).
    #[serde(default)]
    pub index: u32,
    /// V's value.
    pub amount: Amount,
    /// Its spend leaf needs the guardian quorum (so do approvals of its spends).
    #[serde(default)]
    pub guarded: bool,
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
    /// The fee coin; later bumps of this vault spend it again, replacing the child, until the
    /// feerate climbs past what it can pay and a coin that pays more takes over.
    pub coin: OutPoint,
    /// The coin's value, sat.
    pub coin_value: u64,
    /// The coin can pay no more.
    pub ceiling: bool,
}

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
    /// The chain's height when the ladder's rung was last sent: it climbs on a block mined
    /// after that (`None`: sent before this was recorded; it climbs on the next block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung_sent_at: Option<u32>,
    /// The fee wallet's latest child paying through a top-rung anchor (boxed: idle vaults,
    /// the many, have none).
    #[serde(default)]
    pub bump: Option<Box<BumpState>>,
    /// E's or UE's confirmation height.
    pub emergency_height: Option<u32>,
    /// The approved spend confirmed at this height.
    pub spent_height: Option<u32>,
    /// V was spent by a transaction that is neither U nor E: nothing is left to protect.
    #[serde(default)]
    pub foreign_spend: Option<Box<Txid>>,
    /// That spend's confirmation height (a reorganisation may take it out again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_spend_height: Option<u32>,
    /// Whether U counted against the client's velocity budget when first seen (`None`: seen
    /// before this was recorded; judged again from the approvals on load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_for_velocity: Option<bool>,
    /// The last rival spend of U's output alarmed, and whether it was then confirmed: the same
    /// rival seen again after a restart is not alarmed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rival_alarmed: Option<Box<(Txid, bool)>>,
    /// An emergency (E or UE) no panic of this tower ordered was seen and alarmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unordered_emergency: bool,
    /// Nothing left to do (the final transaction is buried).
    pub done: bool,
}

impl VaultState {
    /// Whether nothing is under way for it yet: no cancel, no emergency, not spent, not over.
    pub fn untouched(&self) -> bool {
        self.cancel_rung.is_none()
            && self.emergency_rung.is_none()
            && self.spent_height.is_none()
            && !self.done
    }
}

impl Vault {
    /// A vault to watch, from its signed graph.
    pub fn from_signed(policy_id: &str, delay: u16, signed: &vigil_policy::SignedGraph) -> Vault {
        let g = signed.graph();
        let all = |set: &[vigil_policy::PresignedTx]| set.iter().map(|p| p.tx.clone()).collect();
        Vault {
            outpoint: g.vault_outpoint,
            policy_id: policy_id.to_owned(),
            index: g.plan.index,
            amount: g.plan.amount,
            guarded: g.plan.kind == vigil_policy::VaultKind::Guarded,
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

    /// The top rung of the cancel ladder.
    pub fn cancel_top(&self) -> usize {
        self.cancels.len() - 1
    }

    /// The top rung of the sweep ladder (E, or UE once U is out: the same rungs for both).
    pub fn emergency_top(&self) -> usize {
        self.emergencies.len().min(self.unvault_emergencies.len()) - 1
    }

    /// Whether every transaction is held (an idle vault's C, E and UE live in the store only).
    pub fn is_whole(&self) -> bool {
        !self.cancels.is_empty() && !self.emergencies.is_empty() && !self.unvault_emergencies.is_empty()
    }

    pub(crate) fn role_of(&self, txid: &Txid) -> Option<Role> {
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

/// What a transaction is to a vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
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
        /// Which client, for an alarm about a client but no one vault of it (its policy, a
        /// lockdown, a panic): the client's feed lists it beside its vaults' alarms.
        client: Option<String>,
        /// What happened.
        kind: AlarmKind,
        /// For humans.
        message: String,
    },
}

impl Action {
    /// An alarm about `vault` (or the tower as a whole).
    pub fn alarm(vault: Option<OutPoint>, kind: AlarmKind, message: impl Into<String>) -> Action {
        Action::Alarm { vault, client: None, kind, message: message.into() }
    }

    /// An alarm about client `client` as a whole.
    pub fn client_alarm(client: &str, kind: AlarmKind, message: impl Into<String>) -> Action {
        Action::Alarm { vault: None, client: Some(client.to_owned()), kind, message: message.into() }
    }
}

/// What an alarm is about. Delivered to webhooks as its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlarmKind {
    /// An unvault without a valid approval (or beyond the velocity budget) is being cancelled.
    UnvaultCancelled,
    /// After DELAY, U's output was spent (or is being spent) by something other than the
    /// approved spend.
    UnapprovedSpend,
    /// V was spent by something other than U or E: a one-time key survived.
    ForeignVaultSpend,
    /// A guardian-quorum panic is sweeping a client's vaults to the deep vault.
    Panic,
    /// A cancel is still unconfirmed close to the moment the spend leaf opens.
    Deadline,
    /// A bump reached all its fee coin can pay and the transaction is still unconfirmed.
    BumpCeiling,
    /// A transaction stuck at its top rung cannot be bumped: the fee wallet has no coin.
    FeeWalletEmpty,
    /// The fee wallet holds less than a bump at the stress feerate for every open vault.
    FeeWalletLow,
    /// The chain backend has been unreachable for too long.
    BackendOutage,
    /// The chain reorganised deeper than the tower remembers; block processing stopped.
    ReorgTooDeep,
    /// A guardian-signed policy change was accepted (it applies now or after the delay).
    PolicyChange,
    /// A policy change took effect.
    PolicyApplied,
    /// An accepted policy change no longer builds and was not applied.
    PolicyInvalid,
    /// A client was locked down: its unvaults are cancelled.
    Lockdown,
    /// E or UE appeared though no panic ordered it: a tower gone rogue, or a copy of the
    /// graph misused. The coins are safe in the deep vault; the guardians should know.
    UnorderedEmergency,
}

impl AlarmKind {
    /// Every kind, for what must have words for each (the guardian's page). A kind added to
    /// the type fails to build [`AlarmKind::as_str`] below until it has a name: list it here too.
    pub const ALL: [AlarmKind; 15] = [
        AlarmKind::UnvaultCancelled,
        AlarmKind::UnapprovedSpend,
        AlarmKind::ForeignVaultSpend,
        AlarmKind::Panic,
        AlarmKind::Deadline,
        AlarmKind::BumpCeiling,
        AlarmKind::FeeWalletEmpty,
        AlarmKind::FeeWalletLow,
        AlarmKind::BackendOutage,
        AlarmKind::ReorgTooDeep,
        AlarmKind::PolicyChange,
        AlarmKind::PolicyApplied,
        AlarmKind::PolicyInvalid,
        AlarmKind::Lockdown,
        AlarmKind::UnorderedEmergency,
    ];

    /// The name webhooks receive (`unvault-cancelled`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AlarmKind::UnvaultCancelled => "unvault-cancelled",
            AlarmKind::UnapprovedSpend => "unapproved-spend",
            AlarmKind::ForeignVaultSpend => "foreign-vault-spend",
            AlarmKind::Panic => "panic",
            AlarmKind::Deadline => "deadline",
            AlarmKind::BumpCeiling => "bump-ceiling",
            AlarmKind::FeeWalletEmpty => "fee-wallet-empty",
            AlarmKind::FeeWalletLow => "fee-wallet-low",
            AlarmKind::BackendOutage => "backend-outage",
            AlarmKind::ReorgTooDeep => "reorg-too-deep",
            AlarmKind::PolicyChange => "policy-change",
            AlarmKind::PolicyApplied => "policy-applied",
            AlarmKind::PolicyInvalid => "policy-invalid",
            AlarmKind::Lockdown => "lockdown",
            AlarmKind::UnorderedEmergency => "unordered-emergency",
        }
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlarmKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| format!("unknown alarm kind {s:?}"))
    }
}

/// What an approval allows (DESIGN.md §4 "Spending").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalTerms {
    /// The one spend of U's output it approves.
    pub spend: Txid,
    /// Valid for an unvault seen at or below this height.
    pub expiry_height: u32,
    /// Increasing per vault: a lower one is stale.
    pub counter: u64,
    /// Signed by the guardian quorum as well as the co-signer: such an unvault does not count
    /// against the velocity budget, which bounds what the co-signer can release alone.
    #[serde(default)]
    pub guardian_quorum: bool,
    /// The co-signer said the spend was asked under duress: it never signs it, so its unvault
    /// is cancelled late even once the quiet lockdown has ended (by a lift, or run out), not
    /// left for the coins to wait on the recovery path.
    #[serde(default)]
    pub under_duress: bool,
}
