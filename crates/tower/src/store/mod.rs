//! The tower's durable state: embedded SQLite by default, PostgreSQL for operators.
//!
//! Every decision is written before it is acted on: a block's (or a mempool sighting's) vault
//! states, the broadcasts and alarms it decided, and the follower's position commit in one
//! transaction. After a crash the tower reloads all of it, re-broadcasts what was decided but
//! not done, and replays the blocks it missed. Requests commit their nonce with their effect,
//! so a replay is refused and a crash never half-registers a vault.
//!
//! Both backends keep the same tables; values are JSON text, so the schema is the same, and
//! both carry a schema version: a store written by the previous version is migrated in place.

use std::collections::HashMap;

use vigil_chain::BlockId;
use vigil_policy::bitcoin::{BlockHash, OutPoint, Txid};

use crate::client::{ClientRecord, PolicyChange};
use crate::error::StoreError;
use crate::vault::{Action, AlarmKind, ApprovalTerms, Vault};

mod postgres;
mod sqlite;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

/// The schema this build writes. 1: the first release; 2: clients and their applied
/// policies, vault indexes, approval terms, panic ids, per-endpoint alarm delivery; 3: the
/// client an alarm about no one vault is about.
pub const SCHEMA_VERSION: i64 = 3;

/// How far above the last nonce a request's may jump. A counter never needs more; a nonce
/// of u64::MAX would otherwise lock its key out for good.
pub const MAX_NONCE_STEP: u64 = 1 << 32;

/// An alarm waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxAlarm {
    /// Row id.
    pub id: i64,
    /// Which vault, if one.
    pub vault: Option<String>,
    /// Which client, for an alarm about the client but no one vault of it.
    pub client: Option<String>,
    /// What happened.
    pub kind: AlarmKind,
    /// For humans.
    pub message: String,
    /// Delivery attempts so far, to any endpoint.
    pub attempts: u32,
}

/// An approval as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    /// The unvault it approves a spend of.
    pub unvault: Txid,
    /// What it allows.
    pub terms: ApprovalTerms,
}

/// Everything the tower reloads on start, but the vaults (streamed one at a time).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Approvals.
    pub approvals: Vec<StoredApproval>,
    /// The follower's recent blocks, oldest first.
    pub recent: Vec<BlockId>,
    /// Broadcasts decided and not yet known to be done.
    pub pending_broadcasts: Vec<(i64, Action)>,
    /// Small named records (JSON): `fee_wallet`.
    pub records: HashMap<String, String>,
    /// Every client pinned so far, with its applied policy.
    pub clients: Vec<ClientRecord>,
}

/// What presenting an enrollment token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// The client is pinned now.
    Pinned,
    /// The token had pinned this very client already (an answer lost): nothing changed.
    Same,
    /// No such token.
    Unknown,
    /// The token was used for another client.
    Used,
}

/// What a request's nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Above the last one, within [`MAX_NONCE_STEP`]: consumed.
    Fresh,
    /// Not above the last one (a replay), or too far above it.
    Refused {
        /// The last nonce taken from this key.
        last: Option<u64>,
    },
}

impl NonceCheck {
    /// Whether `nonce` may follow `last`.
    pub fn of(last: Option<u64>, nonce: u64) -> NonceCheck {
        let floor = last.unwrap_or(0);
        if nonce > floor && nonce - floor <= MAX_NONCE_STEP {
            NonceCheck::Fresh
        } else {
            NonceCheck::Refused { last }
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Stored now.
    New,
    /// Already stored with the same transactions (a retry).
    Same,
    /// Already stored with other transactions: refused.
    Conflict,
    /// The client already has a vault at this derivation index: refused.
    IndexUsed,
    /// The client has as many vaults as the tower allows one client.
    TooMany,
    /// The nonce was refused.
    Replay {
        /// The last nonce taken from the key.
        last: Option<u64>,
    },
}

/// One step's decisions, recorded together.
#[derive(Debug, Default, Clone, Copy)]
pub struct Step<'a> {
    /// Vaults whose state changed.
    pub vaults: &'a [Vault],
    /// The follower's position, if it moved.
    pub recent: Option<&'a [BlockId]>,
    /// Named records (JSON) that changed: `fee_wallet`.
    pub records: &'a [(&'a str, String)],
    /// Clients whose applied policy or pending change changed.
    pub clients: &'a [ClientRecord],
    /// Panic ids now used.
    pub panics: &'a [String],
    /// Broadcasts to make and alarms to deliver.
    pub actions: &'a [Action],
}

/// The tower's store.
pub trait TowerStore: Send {
    /// Everything but the vaults, for a restart.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Every vault with its state, one at a time (a large tower never holds them all).
    fn load_vaults(&mut self, each: &mut dyn FnMut(Vault)) -> Result<(), StoreError>;
    /// Pins a client under `policy` if it is new; a known client keeps its applied policy.
    /// Returns whether it was new.
    fn pin_client(&mut self, id: &str, policy: &str) -> Result<bool, StoreError>;
    /// Registers a vault with the request's nonce, atomically (`registration`: the request's
    /// digest, for audit): at most `max_per_client` vaults per client, each index once.
    fn register_vault(
        &mut self,
        key: &str,
        nonce: u64,
        vault: &Vault,
        registration: &str,
        max_per_client: u32,
    ) -> Result<Registered, StoreError>;
    /// Stores an approval with the request's nonce, atomically.
    fn register_approval(
        &mut self,
        key: &str,
        nonce: u64,
        approval: &StoredApproval,
        body: &str,
    ) -> Result<NonceCheck, StoreError>;
    /// Consumes a nonce alone (a panic, a policy change).
    fn consume_nonce(&mut self, key: &str, nonce: u64) -> Result<NonceCheck, StoreError>;
    /// Whether a panic was used already (by client id and panic id).
    fn panic_used(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Records a single-use enrollment token (by its sha256).
    fn issue_token(&mut self, hash: &str) -> Result<(), StoreError>;
    /// Token `hash`, read only: `None` if there is no such token, else the client it pinned
    /// (`None` while unused).
    fn token(&mut self, hash: &str) -> Result<Option<Option<String>>, StoreError>;
    /// The policy client `id` is held under, if it is held.
    fn applied_policy(&mut self, id: &str) -> Result<Option<String>, StoreError>;
    /// Uses token `hash` to pin `client` (its versions `earlier`, oldest first, when a chain
    /// of changes led to it), atomically: a client held already is kept, unless `replace`
    /// carries the alarm that says the tower takes the chain in its place (raised in the same
    /// transaction).
    fn enroll(
        &mut self,
        hash: &str,
        client: &ClientRecord,
        replace: Option<&Action>,
    ) -> Result<Enrollment, StoreError>;
    /// Records a step's decisions atomically: changed vault states, the follower's position (if
    /// it moved), clients, panic ids, the broadcasts to make and the alarms to deliver.
    /// Returns the broadcasts with their ids, to mark done once the backend accepted them.
    fn commit_step(&mut self, step: Step<'_>) -> Result<Vec<(i64, Action)>, StoreError>;
    /// One vault, with every transaction (the watcher keeps idle vaults' graphs here only).
    fn vault(&mut self, outpoint: &OutPoint) -> Result<Option<Vault>, StoreError>;
    /// A broadcast the backend has answered for good.
    fn broadcast_done(&mut self, id: i64) -> Result<(), StoreError>;
    /// Alarms not yet delivered to `endpoint`.
    fn undelivered_alarms(&mut self, endpoint: &str) -> Result<Vec<OutboxAlarm>, StoreError>;
    /// Records a delivery attempt of alarm `id` to `endpoint`; once every one of `endpoints`
    /// (those configured now: deliveries to a removed one do not count) has it, the alarm
    /// leaves the outbox.
    fn alarm_attempted(
        &mut self,
        id: i64,
        endpoint: &str,
        delivered: bool,
        endpoints: &[String],
    ) -> Result<(), StoreError>;
    /// Takes out of the outbox every alarm delivered to each of `endpoints` (those configured
    /// now, at start: an alarm owed only to an endpoint since removed is owed to no one);
    /// returns how many. With no endpoint, alarms wait for one.
    fn settle_alarms(&mut self, endpoints: &[String]) -> Result<u64, StoreError>;
    /// Alarms not yet delivered everywhere.
    fn outbox_len(&mut self) -> Result<u64, StoreError>;
    /// The latest `limit` alarms about `client`'s vaults and the latest `limit` about the
    /// client as a whole (neither kind can push the other out), delivered or not, newest
    /// first: its guardians' feed, independent of any webhook.
    fn client_alarms(&mut self, client: &str, limit: u32) -> Result<Vec<OutboxAlarm>, StoreError>;
}

/// A vault row is only ever written whole: one without its transactions (the watcher's
/// in-memory copy of an idle vault) must never be stored, nor replace the stored graph.
fn whole(v: &Vault) -> Result<String, StoreError> {
    if !v.is_whole() {
        return Err(StoreError::Incomplete(v.outpoint));
    }
    serde_json::to_string(v).map_err(StoreError::corrupt("vault"))
}

fn read_vault(text: &str) -> Result<Vault, StoreError> {
    serde_json::from_str(text).map_err(StoreError::corrupt("vault"))
}

fn recent_json(recent: &[BlockId]) -> Result<String, StoreError> {
    let pairs: Vec<(u32, String)> = recent.iter().map(|b| (b.height, b.hash.to_string())).collect();
    serde_json::to_string(&pairs).map_err(StoreError::corrupt("chain position"))
}

fn recent_from_json(text: &str) -> Result<Vec<BlockId>, StoreError> {
    let pairs: Vec<(u32, String)> =
        serde_json::from_str(text).map_err(StoreError::corrupt("chain position"))?;
    pairs
        .into_iter()
        .map(|(height, hash)| {
            let hash: BlockHash =
                hash.parse().map_err(|_| StoreError::Invalid { what: "block hash", value: hash.clone() })?;
            Ok(BlockId { height, hash })
        })
        .collect()
}

fn parse_txid(t: &str) -> Result<Txid, StoreError> {
    t.parse().map_err(|_| StoreError::Invalid { what: "txid", value: t.to_owned() })
}

fn same_transactions(stored: &str, vault: &Vault) -> Result<bool, StoreError> {
    let old = read_vault(stored)?;
    Ok(old.unvault == vault.unvault
        && old.cancels == vault.cancels
        && old.emergencies == vault.emergencies
        && old.unvault_emergencies == vault.unvault_emergencies)
}

fn action_json(action: &Action) -> Result<String, StoreError> {
    serde_json::to_string(action).map_err(StoreError::corrupt("broadcast"))
}

fn read_action(text: &str) -> Result<Action, StoreError> {
    serde_json::from_str(text).map_err(StoreError::corrupt("broadcast"))
}

fn pending_json(pending: &Option<PolicyChange>) -> Result<Option<String>, StoreError> {
    pending
        .as_ref()
        .map(|p| serde_json::to_string(p).map_err(StoreError::corrupt("policy change")))
        .transpose()
}

fn read_pending(text: Option<String>) -> Result<Option<PolicyChange>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(StoreError::corrupt("policy change"))).transpose()
}

fn terms_json(terms: &ApprovalTerms) -> Result<String, StoreError> {
    serde_json::to_string(terms).map_err(StoreError::corrupt("approval"))
}

/// An approval's terms: from its `terms` column, or (a store from before schema 2) from the
/// request it came in; such approvals were not counted as guardian-approved.
fn read_terms(terms: Option<&str>, spend: Txid, body: &str) -> Result<ApprovalTerms, StoreError> {
    if let Some(t) = terms {
        return serde_json::from_str(t).map_err(StoreError::corrupt("approval"));
    }
    #[derive(serde::Deserialize)]
    struct Legacy {
        approval: LegacyApproval,
    }
    #[derive(serde::Deserialize)]
    struct LegacyApproval {
        expiry_height: u32,
        counter: u64,
    }
    let old: Legacy = serde_json::from_str(body).map_err(StoreError::corrupt("approval"))?;
    Ok(ApprovalTerms {
        spend,
        expiry_height: old.approval.expiry_height,
        counter: old.approval.counter,
        guardian_quorum: false,
        under_duress: false,
    })
}

/// The alarms schema 2 kept without naming the client they are about: those about a client
/// as a whole, which name it in their message (a client's id is its first policy's sha256,
/// the first 64-hex word of each). Selected as `id, message`.
fn unnamed_client_alarms_sql() -> String {
    let kinds = [
        AlarmKind::PolicyChange,
        AlarmKind::PolicyApplied,
        AlarmKind::PolicyInvalid,
        AlarmKind::Lockdown,
        AlarmKind::Panic,
    ]
    .map(|k| format!("'{}'", k.as_str()))
    .join(", ");
    format!("SELECT id, message FROM alarms WHERE vault IS NULL AND client IS NULL AND kind IN ({kinds})")
}

/// The client a schema-2 alarm's message names: its first 64-hex word.
fn client_named(message: &str) -> Option<&str> {
    message.split(|c: char| !c.is_ascii_hexdigit()).find(|w| w.len() == 64)
}

fn read_kind(text: &str) -> Result<AlarmKind, StoreError> {
    text.parse().map_err(|_| StoreError::Invalid { what: "alarm kind", value: text.to_owned() })
}

/// The watcher's [`crate::watch::Graphs`] source: a store connection of its own, so reading a
/// graph back never waits on (or borrows) the connection that records decisions.
pub struct StoreGraphs(pub Box<dyn TowerStore>);

impl crate::watch::Graphs for StoreGraphs {
    fn graph(&mut self, vault: &OutPoint) -> Result<Vault, StoreError> {
        self.0.vault(vault)?.ok_or(StoreError::MissingVault(*vault))
    }
}
