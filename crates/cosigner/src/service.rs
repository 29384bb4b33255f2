//! The co-signer's shared state and the requests that are not about vaults or spends:
//! authentication, enrollment, pinning a policy, lockdowns and heartbeats.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::{Network, OutPoint};
use vigil_policy::{CompiledPolicy, Policy};

use crate::ceremony::Ceremony;
use crate::config::CosignerConfig;
use crate::error::{Refusal, StoreError};
use crate::keys::{MasterKey, MAX_ACCOUNTS};
use crate::store::{kind, Batch, Store};
use crate::wire::{self, Enroll, Enrolled, PinPolicy, Signed};

/// How far above the last nonce a request's may jump (a nonce of u64::MAX must not lock a
/// key out for good).
pub const MAX_NONCE_STEP: u64 = 1 << 32;
/// The longest lockdown one party may impose, blocks (4 weeks).
pub const MAX_LOCKDOWN_BLOCKS: u32 = 4 * 1008;
/// How long a duress heartbeat locks the client down, blocks: until the guardians decide.
pub const DURESS_LOCKDOWN_BLOCKS: u32 = MAX_LOCKDOWN_BLOCKS;
/// How many replaced duress hashes a client keeps (see [`ClientRecord::past_duress`]).
pub const PAST_DURESS_KEPT: usize = 20;

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Its id: the sha256 of the policy file it was pinned with.
    pub id: String,
    /// Its account under the co-signer's master.
    pub account: u32,
    /// The pinned policy file.
    pub policy: String,
    /// A lockdown the owner knows of (the owner's or a guardian's): spends and loosening are
    /// refused below this height (0: never locked).
    pub lockdown_until: u32,
    /// A duress heartbeat's silent lockdown: below this height nothing is co-signed, whatever
    /// is answered (0: none).
    pub duress_until: u32,
    /// sha256 of the real unlock's heartbeat token.
    pub heartbeat_real: String,
    /// sha256 of the duress unlock's heartbeat token.
    pub heartbeat_duress: String,
    /// The next spend request's number.
    pub next_spend: u64,
    /// The next nonce the co-signer's requests to this client's towers carry.
    pub tower_nonce: u64,
    /// Guardians' signatures lifting the lockdown early at `lift_proposed`.
    #[serde(default)]
    pub lift_votes: Vec<wire::KeySignature>,
    /// The height the guardians propose to lift the lockdown at, 0: none.
    #[serde(default)]
    pub lift_proposed: u32,
    /// Height from which the plain lockdown is lifted early (quorum + governance wait), 0:
    /// none.
    #[serde(default)]
    pub lift_at: u32,
    /// The same for the duress lockdown. Kept apart so that a duress code, which starts a new
    /// duress lockdown, never undoes a lift of the plain one: the owner would see the lifted
    /// lockdown back, and tell the codes apart.
    #[serde(default)]
    pub duress_lift_at: u32,
    /// The highest height a lift the guardians' quorum signed names (0: none, or one from
    /// before this field). The towers refuse a lift at a lower height as a replay of an older
    /// one, so a later lift names this height or a later one (see [`ClientRecord::lift_floor`]).
    #[serde(default)]
    pub last_lift: u32,
    /// The end of the lockdown that lift ended, as its signatures name it: the towers know a
    /// lift by both, and at the same height take only one for a lockdown ending later (0 with
    /// `last_lift` set: a record from before this field, the end unknown).
    #[serde(default)]
    pub last_lift_until: u32,
    /// Per alarm and sender, the tip it was last raised at: what any one key may send at will
    /// (a lockdown, a plea for a panic, a heartbeat with an unknown token) is alarmed once a
    /// block at most, or the owner's key alone could mail the guardians without end.
    #[serde(default)]
    pub last_alarmed: BTreeMap<String, u32>,
    /// Where this client's alarms are e-mailed (its guardians).
    #[serde(default)]
    pub alarm_emails: Vec<String>,
    /// Where this client's alarms are posted (its guardians' webhooks).
    #[serde(default)]
    pub alarm_webhooks: Vec<String>,
    /// A guardian-signed change waiting for its height.
    #[serde(default)]
    pub pending_policy: Option<crate::governance::PendingPolicy>,
    /// Unix time of the last heartbeat with a known token (real or duress alike).
    #[serde(default)]
    pub last_heartbeat: u64,
    /// Every policy file pinned before the current one, oldest first: a vault keeps the
    /// scripts of the policy it was made under, whatever changed since.
    #[serde(default)]
    pub past_policies: Vec<String>,
    /// The duress hashes restores replaced, newest last (at most [`PAST_DURESS_KEPT`]): the
    /// duress code of a device lost and restored elsewhere still locks the client down, if its
    /// owner is made to open it.
    #[serde(default)]
    pub past_duress: Vec<String>,
    /// The owner's wallet was restored on a new device and the guardians' quorum has not
    /// confirmed it: whoever restored holds codes of their own (a captor may), so until then
    /// every vault spend waits for the guardians.
    #[serde(default)]
    pub restore_unconfirmed: bool,
    /// The quorum confirmed the last restore while a duress lockdown held. Refusing would show
    /// on the owner's device (its spends keep waiting), and confirming costs nothing then:
    /// nothing is co-signed under duress. Once that lockdown is over the restore is held
    /// again, until the guardians confirm it anew.
    #[serde(default)]
    pub restore_confirmed_under_duress: bool,
    /// The guardians (auth keys, hex) who confirmed the last restore.
    #[serde(default)]
    pub restore_confirmations: Vec<String>,
    /// Restores so far: a confirmation names the one it confirms.
    #[serde(default)]
    pub restores: u32,
    /// The tip at the last restore.
    #[serde(default)]
    pub restored_at_height: u32,
    /// Every change the guardians' quorum signed, in order, with its signatures: a party
    /// holding only the original policy follows the chain and checks each step itself.
    #[serde(default)]
    pub changes: Vec<wire::SignedChange>,
    /// Towers of earlier versions only whose vaults of this client are all over and buried:
    /// no longer told of lockdowns, lifts, panics or changes (see `retiring`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_towers: Vec<String>,
}

/// `end`, unless a lift at `lift_at` (0: none) ends it earlier.
fn lifted(end: u32, lift_at: u32) -> u32 {
    if lift_at > 0 {
        end.min(lift_at)
    } else {
        end
    }
}

impl ClientRecord {
    /// Where the lockdown the owner knows of ends, a lift counted.
    pub fn plain_end(&self) -> u32 {
        lifted(self.lockdown_until, self.lift_at)
    }

    /// Where the duress lockdown ends, a lift counted.
    pub fn duress_end(&self) -> u32 {
        lifted(self.duress_until, self.duress_lift_at)
    }

    /// Whether a lockdown the owner knows of holds at `tip`: spends are refused, openly.
    pub fn locked(&self, tip: u32) -> bool {
        tip < self.plain_end()
    }

    /// Whether the client is under duress at `tip`: answered as usual, never co-signed.
    pub fn under_duress(&self, tip: u32) -> bool {
        tip < self.duress_end()
    }

    /// Whether the last restore holds vault spends for the guardians at `tip`: unconfirmed,
    /// or confirmed under a duress lockdown that is over.
    pub fn restore_held(&self, tip: u32) -> bool {
        self.restore_unconfirmed || (self.restore_confirmed_under_duress && !self.under_duress(tip))
    }

    /// The lowest height a lift of the lockdown ending at `held` may name, by the towers'
    /// rule: not below the last lift, and at its height only for a lockdown ending later
    /// (anything else they refuse as a replay of an older lift, or ignore as that one again).
    /// The last lift's end unknown (an older record), a block past it: taken whatever the end.
    pub fn lift_floor(&self, held: u32) -> u32 {
        let end_unknown = self.last_lift > 0 && self.last_lift_until == 0;
        if held > self.last_lift_until && !end_unknown {
            self.last_lift
        } else {
            self.last_lift.saturating_add(1)
        }
    }

    /// A new (or longer) plain lockdown starts a new early-lift process: votes for the last
    /// one do not carry over.
    pub fn new_lockdown_epoch(&mut self) {
        self.lift_votes.clear();
        self.lift_proposed = 0;
        self.lift_at = 0;
    }

    /// Whether alarm `what` may be raised at `tip`, once a block (and notes that it is).
    pub fn alarm_once_a_block(&mut self, what: String, tip: u32) -> bool {
        self.last_alarmed.insert(what, tip) != Some(tip)
    }

    /// The same for a new duress lockdown; a lift of the plain lockdown stands.
    pub fn new_duress_epoch(&mut self) {
        self.lift_votes.clear();
        self.lift_proposed = 0;
        self.duress_lift_at = 0;
    }
}

/// An enrollment token as stored (by its sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TokenRecord {
    /// Issued by the operator, not presented yet.
    Issued,
    /// Presented: the account it bought.
    Enrolled {
        /// The account.
        account: u32,
    },
    /// Used up by pinning a policy.
    Used {
        /// The account.
        account: u32,
        /// The client pinned.
        client: String,
    },
}

/// Who signed a request, in the client's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Owner key `i`.
    Owner(usize),
    /// Guardian `i`.
    Guardian(usize),
}

/// An authenticated request: the client, its policy, who signed and the nonce to commit.
pub struct Caller {
    /// The client.
    pub client: ClientRecord,
    /// Its policy, compiled.
    pub compiled: Arc<CompiledPolicy>,
    /// The signer's role.
    pub role: Role,
    /// The signer's key.
    pub key: XOnlyPublicKey,
}

impl Caller {
    /// The policy.
    pub fn policy(&self) -> &Policy {
        self.compiled.policy()
    }

    /// Refuses anyone but an owner.
    pub fn owner(&self) -> Result<(), Refusal> {
        match self.role {
            Role::Owner(_) => Ok(()),
            Role::Guardian(_) => Err(Refusal::Forbidden("only the owner may make this request".into())),
        }
    }

    /// Refuses anyone but a guardian; its index.
    pub fn guardian(&self) -> Result<usize, Refusal> {
        match self.role {
            Role::Guardian(i) => Ok(i),
            Role::Owner(_) => Err(Refusal::Forbidden(
                "only a guardian may make this request (an owner cannot approve its own spend)".into(),
            )),
        }
    }
}

/// How many locks clients' decisions are spread over.
const DECISION_STRIPES: usize = 256;
/// The decision lock of enrollment (tokens, account numbers, pinning): not a client id.
pub(crate) const ENROLLMENT: &str = "\0enrollment";

/// The chain's tip as last asked, and whether a question is out.
struct TipQueries {
    asking: bool,
    answered: u64,
    answer: Result<u32, Refusal>,
}

/// The co-signer.
pub struct Cosigner {
    pub(crate) keys: MasterKey,
    pub(crate) config: CosignerConfig,
    pub(crate) network: Network,
    pub(crate) chain: Box<dyn ChainBackend>,
    /// The store: reads and commits from any thread.
    store: Arc<dyn Store>,
    /// The locks decisions are taken under, one per client (striped by its id).
    decisions: Vec<Mutex<()>>,
    /// Picks a client's stripe; keyed afresh at each start.
    stripes: std::collections::hash_map::RandomState,
    /// Questions of the chain's tip, shared by the requests asking at once.
    tip_queries: Mutex<TipQueries>,
    tip_answered: std::sync::Condvar,
    /// Compiled policies by the policy's sha256 (compiling takes milliseconds).
    compiled: Mutex<HashMap<String, Arc<CompiledPolicy>>>,
    /// Vault ceremonies in progress, with the co-signer's one-time keys: RAM only.
    pub(crate) ceremonies: Mutex<HashMap<OutPoint, Ceremony>>,
    /// Alarm sinks (webhook URLs).
    pub(crate) sinks: Vec<String>,
    /// Per client, the lock its requests to towers are sent under.
    pub(crate) tower_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Per client, the towers' nonces reserved in the store: (next, end).
    pub(crate) tower_nonce_blocks: Mutex<HashMap<String, (u64, u64)>>,
    /// Clients with a push of their orders started and not yet reading them: another push
    /// asked meanwhile would send nothing more.
    pub(crate) pushes_starting: Mutex<std::collections::HashSet<String>>,
    /// Per client, its vaults (V's outpoint) found over and buried: not asked of the chain
    /// again. A client's are dropped once no tower is left to retire for it.
    pub(crate) buried_vaults: Mutex<HashMap<String, std::collections::HashSet<String>>>,
}

/// Adds to `reach` the towers of `other` it does not name yet, but those `leaving_out` names.
fn add_towers(reach: &mut Policy, other: &Policy, leaving_out: &[String]) {
    for tower in &other.towers {
        if !reach.towers.iter().any(|t| t.name == tower.name) && !leaving_out.contains(&tower.name) {
            reach.towers.push(tower.clone());
        }
    }
}

fn unauthorized(m: impl Into<String>) -> Refusal {
    Refusal::Unauthorized(m.into())
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The headers that authenticate a request.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `x-vigil-client`.
    pub client: Option<String>,
    /// `x-vigil-key`.
    pub key: Option<String>,
    /// `x-vigil-signature`.
    pub signature: Option<String>,
    /// `x-vigil-time` (GET only).
    pub time: Option<String>,
}

/// An alarm for the client's guardians, as the outbox keeps it.
pub fn alarm(client: &str, kind: &str, message: String) -> String {
    serde_json::json!({ "client": client, "kind": kind, "message": message, "time": now() }).to_string()
}

/// A policy version some guardians signed and the quorum has not, with its text: the other
/// guardians see what changes before they sign it.
pub fn policy_proposed_alarm(client: &str, policy: &str, message: String) -> String {
    serde_json::json!({
        "client": client, "kind": "policy-proposed", "message": message, "time": now(), "policy": policy,
    })
    .to_string()
}

/// A panic some guardians signed and the quorum has not, as its alarm carries it: what the
/// other guardians must sign to join it, and the signatures so far (so each checks who
/// proposed it rather than trusting the co-signer's word).
pub fn panic_proposed_alarm(
    client: &str,
    panic: &wire::Panic,
    signatures: &[vigil_tower::wire::KeySignature],
    message: String,
) -> String {
    serde_json::json!({
        "client": client, "kind": "panic-proposed", "message": message, "time": now(),
        "panic": { "id": panic.id, "not_after_height": panic.not_after_height, "signatures": signatures },
    })
    .to_string()
}

impl Cosigner {
    /// Refuses anyone but an owner whose unlock's heartbeat arrived recently.
    pub fn unlocked_owner(&self, caller: &Caller) -> Result<(), Refusal> {
        caller.owner()?;
        if caller.client.last_heartbeat + self.config.heartbeat_fresh_secs < now() {
            return Err(Refusal::Unauthorized(
                "no recent unlock of this wallet reached the co-signer: unlock again (its heartbeat comes first)".into(),
            ));
        }
        Ok(())
    }

    /// A co-signer over `store`, with its unlocked keys.
    pub fn new(
        keys: MasterKey,
        config: CosignerConfig,
        chain: Box<dyn ChainBackend>,
        store: Arc<dyn Store>,
    ) -> Result<Cosigner, crate::error::CosignerError> {
        let network = config.network()?;
        let mut sinks = config.alarms.webhooks.clone();
        if config.smtp.is_some() {
            sinks.push(crate::alarms::EMAIL_SINK.to_owned());
        }
        crate::ceremony::index_unregistered(&*store)?;
        crate::governance::index_waiting_changes(&*store)?;
        let mut delivered_to = sinks.clone();
        if config.client_webhooks != "off" {
            delivered_to.push(crate::alarms::CLIENT_WEBHOOKS_SINK.to_owned());
        }
        store.deliver_to(&delivered_to)?;
        Ok(Cosigner {
            keys,
            config,
            network,
            chain,
            store,
            decisions: (0..DECISION_STRIPES).map(|_| Mutex::new(())).collect(),
            stripes: std::collections::hash_map::RandomState::new(),
            tip_queries: Mutex::new(TipQueries { asking: false, answered: 0, answer: Ok(0) }),
            tip_answered: std::sync::Condvar::new(),
            compiled: Mutex::new(HashMap::new()),
            ceremonies: Mutex::new(HashMap::new()),
            sinks,
            tower_locks: Mutex::new(HashMap::new()),
            tower_nonce_blocks: Mutex::new(HashMap::new()),
            pushes_starting: Mutex::default(),
            buried_vaults: Mutex::new(Default::default()),
        })
    }

    /// The store. A read outside [`Cosigner::decide`] sees what was committed; a decision
    /// reads and commits under it.
    pub(crate) fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The store, for a thread of its own (alarm delivery).
    pub fn store_handle(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The lock a decision about `client` is taken under, from its first read to its commit,
    /// so two requests of one client never race (the loser's preconditions would refuse it
    /// as a conflict). Clients' decisions share no record but enrollment's, taken under
    /// [`ENROLLMENT`]; other clients go on meanwhile. Never hold two.
    pub(crate) fn decide(&self, client: &str) -> MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        // Keyed afresh at each start: no client can choose an id that shares another's lock.
        let stripe = self.stripes.hash_one(client) % DECISION_STRIPES as u64;
        self.decisions[stripe as usize].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chain's tip height.
    ///
    /// Callers share questions: one asked after a caller arrived answers it and every other
    /// caller waiting by then, so a burst of requests asks the chain a few times, not once
    /// each (the node would queue them), and no answer predates its request.
    pub(crate) fn tip(&self) -> Result<u32, Refusal> {
        let mut q = self.tip_queries.lock().unwrap_or_else(|p| p.into_inner());
        // A question already out may have left before this call: the one after it counts.
        let needed = q.answered + if q.asking { 2 } else { 1 };
        loop {
            if q.answered >= needed {
                return q.answer.clone();
            }
            if q.asking {
                q = self.tip_answered.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q.asking = true;
            drop(q);
            // Never left asking: a panic here would hold every later request.
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.chain.tip()))
                .unwrap_or_else(|_| {
                    Err(vigil_chain::BackendError::Decode("the tip question panicked".into()))
                })
                .map(|t| t.height)
                .map_err(Refusal::from);
            q = self.tip_queries.lock().unwrap_or_else(|p| p.into_inner());
            *q = TipQueries { asking: false, answered: q.answered + 1, answer };
            self.tip_answered.notify_all();
        }
    }

    pub(crate) fn compiled(&self, client: &ClientRecord) -> Result<Arc<CompiledPolicy>, Refusal> {
        self.compile(&client.id, &client.policy)
    }

    /// The policy `vault` was made under (its scripts, its DELAY), which a later change of
    /// the client's policy does not alter.
    pub(crate) fn vault_policy(
        &self,
        client: &ClientRecord,
        vault: &crate::ceremony::VaultRecord,
    ) -> Result<Arc<CompiledPolicy>, Refusal> {
        if vault.policy_id.is_empty() || vault.policy_id == vigil_tower::policy_id(&client.policy) {
            return self.compiled(client);
        }
        // A change due but not yet applied by the background pass may have made it, too.
        let text = client
            .past_policies
            .iter()
            .chain(client.pending_policy.iter().map(|p| &p.text))
            .find(|t| vigil_tower::policy_id(t) == vault.policy_id)
            .ok_or_else(|| {
                tracing::error!(client = %client.id, policy = %vault.policy_id, "a vault's policy is not kept");
                Refusal::Internal
            })?;
        self.compile(&client.id, text)
    }

    /// Every policy `client` has had, the current first; an earlier one this build cannot
    /// compile is left out (logged), not a reason to refuse everything.
    pub(crate) fn client_policies(&self, client: &ClientRecord) -> Result<Vec<Arc<CompiledPolicy>>, Refusal> {
        let mut all = vec![self.compiled(client)?];
        all.extend(client.past_policies.iter().rev().filter_map(|text| self.compile(&client.id, text).ok()));
        Ok(all)
    }

    /// The client's current policy with every tower of its earlier versions added (by name,
    /// the current entry first), for what concerns every vault (lockdowns, lifts, panics,
    /// changes): a tower a change removed still watches the vaults made before it, and must
    /// not miss a lockdown or a panic, until it is retired. `client` as of now
    /// ([`Self::as_of_now`]).
    pub(crate) fn reach(&self, client: &ClientRecord) -> Result<Policy, Refusal> {
        let all = self.client_policies(client)?;
        let mut reach = all[0].policy().clone();
        for earlier in &all[1..] {
            add_towers(&mut reach, earlier.policy(), &client.retired_towers);
        }
        Ok(reach)
    }

    /// The towers an approval of a vault made under `made_under` must reach: today's, its own
    /// version's (a tower removed since still watches it, and would cancel its spend), and
    /// those of every later version not retired (a tower a change added was given the vault
    /// when it joined, and watches it after another change removed it). A change due at
    /// `tip`, the height it is approved at, counts (a tower a change adds later is given the
    /// client's approvals when it joins).
    pub(crate) fn approval_reach(
        &self,
        client: &ClientRecord,
        made_under: &CompiledPolicy,
        tip: u32,
    ) -> Result<Policy, Refusal> {
        let mut now = client.clone();
        now.apply_due(tip);
        let all = self.client_policies(&now)?;
        let mut reach = all[0].policy().clone();
        add_towers(&mut reach, made_under.policy(), &[]);
        let version = made_under.policy().version;
        for later in all[1..].iter().filter(|p| p.policy().version > version) {
            add_towers(&mut reach, later.policy(), &now.retired_towers);
        }
        Ok(reach)
    }

    /// `client` with a waiting change that is due applied, as it will be on the next pass (the
    /// co-signer applies due changes every few seconds).
    pub(crate) fn as_of_now(&self, client: &ClientRecord) -> Result<ClientRecord, Refusal> {
        let mut now = client.clone();
        now.apply_due(self.tip()?);
        Ok(now)
    }

    /// `text` compiled, from the cache when it was before.
    fn compile(&self, client: &str, text: &str) -> Result<Arc<CompiledPolicy>, Refusal> {
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        let key = vigil_tower::policy_id(text);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let policy = Policy::from_toml(text).map_err(|e| {
            tracing::error!(%client, error = %e, "a pinned policy no longer builds");
            Refusal::Internal
        })?;
        let compiled = Arc::new(CompiledPolicy::new(policy).map_err(|_| Refusal::Internal)?);
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// A client's record.
    pub(crate) fn client(store: &dyn Store, id: &str) -> Result<Option<ClientRecord>, Refusal> {
        Ok(Self::client_stored(store, id)?.map(|(c, _)| c))
    }

    /// A client and its record's text as stored: a write expects that text, not the record
    /// as this release writes it (one an earlier release wrote lacks the fields added since,
    /// and would never match).
    pub(crate) fn client_stored(
        store: &dyn Store,
        id: &str,
    ) -> Result<Option<(ClientRecord, String)>, Refusal> {
        store
            .get(kind::CLIENT, id)?
            .map(|t| {
                serde_json::from_str(&t)
                    .map(|c| (c, t))
                    .map_err(|e| StoreError::Corrupt(e.to_string()).into())
            })
            .transpose()
    }

    /// Checks a request's signature over `signed` bytes, bound to the co-signer's auth key
    /// for `account`; the signer's key.
    fn verify(
        &self,
        creds: &Credentials,
        account: u32,
        path: &str,
        signed: &[u8],
    ) -> Result<XOnlyPublicKey, Refusal> {
        let key = creds.key.as_deref().ok_or_else(|| unauthorized("missing x-vigil-key header"))?;
        let sig =
            creds.signature.as_deref().ok_or_else(|| unauthorized("missing x-vigil-signature header"))?;
        let key: XOnlyPublicKey =
            key.parse().map_err(|_| unauthorized("x-vigil-key is not an x-only public key"))?;
        let sig = <[u8; 64]>::from_hex(sig)
            .ok()
            .and_then(|b| schnorr::Signature::from_slice(&b).ok())
            .ok_or_else(|| unauthorized("x-vigil-signature is not a 64-byte hex signature"))?;
        if !vigil_tower::wire::verify_request(&key, &sig, &self.keys.auth_key(account), path, signed) {
            return Err(unauthorized(
                "the request signature does not verify (for this co-signer, this client, this path and body)",
            ));
        }
        Ok(key)
    }

    /// Authenticates a request of a pinned client: its signature, and the signer's role.
    pub fn authenticate(&self, creds: &Credentials, path: &str, signed: &[u8]) -> Result<Caller, Refusal> {
        let id = creds.client.as_deref().ok_or_else(|| unauthorized("missing x-vigil-client header"))?;
        let mut client = Self::client(self.store(), id)?
            .ok_or_else(|| unauthorized(format!("no client {id} is pinned at this co-signer")))?;
        if client.pending_policy.as_ref().is_some_and(|p| p.effective_height <= self.tip().unwrap_or(0)) {
            // Its change is due: the background loop applies it; judge by it already.
            client.apply_due(u32::MAX);
        }
        let key = self.verify(creds, client.account, path, signed)?;
        let compiled = self.compiled(&client)?;
        let role = if let Some(i) = compiled.owner_auth_keys().iter().position(|k| *k == key) {
            Role::Owner(i)
        } else if let Some(i) = compiled.guardian_auth_keys().iter().position(|k| *k == key) {
            Role::Guardian(i)
        } else {
            return Err(Refusal::Forbidden(format!(
                "key {key} is not an owner's or guardian's of client {id}"
            )));
        };
        Ok(Caller { client, compiled, role, key })
    }

    /// A signed GET: its `x-vigil-time` must be close to the co-signer's clock.
    pub fn authenticate_get(&self, creds: &Credentials, path: &str) -> Result<Caller, Refusal> {
        let time = creds.time.as_deref().ok_or_else(|| unauthorized("missing x-vigil-time header"))?;
        let t: u64 = time.parse().map_err(|_| unauthorized("x-vigil-time: not unix seconds"))?;
        fresh(t)?;
        self.authenticate(creds, path, time.as_bytes())
    }

    /// The nonce and time of a signed body checked against the signer's last; the writes
    /// that consume it (committed with the request's effect).
    pub(crate) fn consume_nonce<T>(
        store: &dyn Store,
        key: &XOnlyPublicKey,
        body: &Signed<T>,
    ) -> Result<Batch, Refusal> {
        fresh(body.time)?;
        let id = key.to_string();
        let last = store.get(kind::NONCE, &id)?;
        let window = last.as_deref().map(NonceWindow::parse).transpose()?.unwrap_or_default();
        let next = window.consume(body.nonce).ok_or_else(|| {
            unauthorized(format!(
                "nonce {} was used already, is more than {NONCE_WINDOW} below this key's highest ({}), or jumps \
                 more than 2^32 past it: a replay is refused",
                body.nonce, window.max
            ))
        })?;
        let mut batch = Batch::default();
        batch.expect(kind::NONCE, id.clone(), last).put(kind::NONCE, id, next.to_string());
        Ok(batch)
    }

    /// `POST /v1/enroll`.
    pub fn enroll(&self, req: &Enroll) -> Result<Enrolled, Refusal> {
        let hash = token_id(&req.token)?;
        let _deciding = self.decide(ENROLLMENT);
        let store = self.store();
        let record: TokenRecord = match store.get(kind::TOKEN, &hash)? {
            Some(t) => serde_json::from_str(&t).map_err(|_| Refusal::Internal)?,
            None => return Err(unauthorized("unknown enrollment token")),
        };
        let account = match record {
            // The same token again (the answer was lost): the same account.
            TokenRecord::Enrolled { account } => account,
            TokenRecord::Used { .. } => return Err(unauthorized("this enrollment token was already used")),
            TokenRecord::Issued => {
                let stored = store.get(kind::META, "next_account")?;
                let next: u32 = match &stored {
                    // A record that does not parse must not hand out account 0 again.
                    Some(t) => t.parse().map_err(|_| Refusal::Internal)?,
                    None => 0,
                };
                if next >= MAX_ACCOUNTS {
                    return Err(Refusal::Unavailable("this co-signer has no accounts left".into()));
                }
                let mut batch = Batch::default();
                let enrolled = serde_json::to_string(&TokenRecord::Enrolled { account: next }).expect("json");
                batch
                    .expect(
                        kind::TOKEN,
                        hash.clone(),
                        Some(serde_json::to_string(&TokenRecord::Issued).expect("json")),
                    )
                    .put(kind::TOKEN, hash, enrolled)
                    // Two processes on one PostgreSQL schema never hand out one account twice.
                    .expect(kind::META, "next_account", stored)
                    .put(kind::META, "next_account", (next + 1).to_string());
                store.commit(&batch)?;
                next
            }
        };
        tracing::info!(account, "client enrolled");
        Ok(Enrolled {
            account,
            cosigner_key: self.keys.account_key(account),
            auth_key: self.keys.auth_key(account).to_string(),
        })
    }

    /// `POST /v1/clients`: the enrolled account's final policy, pinned by its sha256.
    pub fn pin(&self, creds: &Credentials, body: &[u8]) -> Result<wire::PinAnswer, Refusal> {
        let req: Signed<PinPolicy> = decode(body)?;
        let p = &req.request;
        let id = vigil_tower::policy_id(&p.policy);
        if creds.client.as_deref() != Some(id.as_str()) {
            return Err(bad(format!("x-vigil-client must be the policy's sha256 ({id})")));
        }
        let hash = token_id(&p.token)?;
        let _deciding = self.decide(ENROLLMENT);
        let store = self.store();
        let token = match store.get(kind::TOKEN, &hash)?.map(|t| serde_json::from_str(&t)) {
            Some(Ok(t)) => t,
            Some(Err(_)) => return Err(Refusal::Internal),
            None => return Err(unauthorized("unknown enrollment token")),
        };
        let account = match token {
            TokenRecord::Enrolled { account } | TokenRecord::Used { account, .. } => account,
            TokenRecord::Issued => return Err(bad("enroll with this token first (POST /v1/enroll)")),
        };
        // The signature and the nonce first: a replay learns nothing.
        let signer = self.verify(creds, account, "/v1/clients", body)?;
        let mut batch = Self::consume_nonce(store, &signer, &req)?;
        match token {
            TokenRecord::Used { client, .. } if client == id => {
                store.commit(&batch)?;
                return Ok(wire::PinAnswer { policy_id: id });
            }
            TokenRecord::Used { .. } => return Err(unauthorized("this enrollment token was already used")),
            _ => {}
        }
        let policy = Policy::from_new_toml(&p.policy).map_err(|e| bad(format!("policy: {e}")))?;
        if policy.network != self.network {
            return Err(bad(format!(
                "policy: network {} is not this co-signer's ({})",
                policy.network, self.network
            )));
        }
        if policy.towers.is_empty() {
            return Err(bad("policy: it names no tower; a vault nothing watches is not protected"));
        }
        let ours = self.keys.account_key(account);
        let theirs = &policy.cosigner;
        let our_xpub = ours.split(']').nth(1).unwrap_or_default();
        if theirs.xpub.to_string() != our_xpub
            || theirs.origin.as_ref().map(|(fp, _)| *fp) != Some(self.keys.fingerprint())
        {
            return Err(bad(format!("policy: [cosigner] key must be this account's: {ours}")));
        }
        if !policy.owner.keys.iter().any(|k| k.auth_key() == signer) {
            return Err(Refusal::Forbidden("the policy must be pinned by one of its owner keys".into()));
        }
        for (name, h) in [("heartbeat_real", &p.heartbeat_real), ("heartbeat_duress", &p.heartbeat_duress)] {
            if <[u8; 32]>::from_hex(h).is_err() {
                return Err(bad(format!("{name}: a sha256 in hex (64 characters)")));
            }
        }
        check_emails(&p.alarm_emails)?;
        check_webhooks(&p.alarm_webhooks, &self.config.client_webhooks)?;
        if p.heartbeat_real == p.heartbeat_duress {
            return Err(bad("heartbeat_real and heartbeat_duress must differ"));
        }
        CompiledPolicy::new(policy).map_err(|e| bad(format!("policy: {e}")))?;
        // A lost device finds its policy by the id's first 16 characters (written at setup):
        // they name one client only.
        if store.list(kind::CLIENT, &id[..16.min(id.len())])?.iter().any(|(other, _)| *other != id) {
            return Err(Refusal::Conflict(
                "a policy whose id begins with the same 16 characters is pinned already: change anything in \
                 this one (a comment will do) and pin it again"
                    .into(),
            ));
        }
        let record = ClientRecord {
            id: id.clone(),
            account,
            policy: p.policy.clone(),
            lockdown_until: 0,
            duress_until: 0,
            heartbeat_real: p.heartbeat_real.clone(),
            heartbeat_duress: p.heartbeat_duress.clone(),
            next_spend: 1,
            tower_nonce: 1,
            lift_votes: Vec::new(),
            lift_proposed: 0,
            lift_at: 0,
            duress_lift_at: 0,
            last_lift: 0,
            last_lift_until: 0,
            last_alarmed: BTreeMap::new(),
            alarm_emails: p.alarm_emails.clone(),
            alarm_webhooks: p.alarm_webhooks.clone(),
            pending_policy: None,
            last_heartbeat: 0,
            past_policies: Vec::new(),
            past_duress: Vec::new(),
            restore_unconfirmed: false,
            restore_confirmed_under_duress: false,
            restore_confirmations: Vec::new(),
            restores: 0,
            restored_at_height: 0,
            changes: Vec::new(),
            retired_towers: Vec::new(),
        };
        batch
            .expect(kind::CLIENT, id.clone(), None)
            .put(kind::CLIENT, id.clone(), serde_json::to_string(&record).expect("json"))
            .expect(
                kind::TOKEN,
                hash.clone(),
                Some(serde_json::to_string(&TokenRecord::Enrolled { account }).expect("json")),
            )
            .put(
                kind::TOKEN,
                hash,
                serde_json::to_string(&TokenRecord::Used { account, client: id.clone() }).expect("json"),
            );
        store.commit(&batch)?;
        tracing::info!(client = %id, account, "policy pinned");
        Ok(wire::PinAnswer { policy_id: id })
    }

    /// Issues a single-use enrollment token (the operator's `vigil cosigner token`).
    pub fn issue_token(store: &dyn Store) -> Result<String, StoreError> {
        use vigil_policy::bitcoin::secp256k1::rand::RngCore;
        let mut bytes = [0u8; 32];
        vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut bytes);
        let token = bytes.to_lower_hex_string();
        let mut batch = Batch::default();
        let id = sha256::Hash::hash(token.as_bytes()).to_string();
        batch.expect(kind::TOKEN, id.clone(), None).put(
            kind::TOKEN,
            id,
            serde_json::to_string(&TokenRecord::Issued).expect("json"),
        );
        store.commit(&batch)?;
        Ok(token)
    }

    /// Prometheus text.
    pub fn metrics(&self) -> Result<String, Refusal> {
        let ceremonies = self.ceremonies.lock().map(|c| c.len()).unwrap_or(0);
        let store = self.store();
        let clients = store.count(kind::CLIENT)?;
        let spends = store.list(kind::SPEND, "")?;
        let in_state = |body: &str, s: &str| body.contains(&format!("\"state\":\"{s}\""));
        let approved = spends.iter().filter(|(_, b)| in_state(b, "approved")).count();
        let tip = self.tip().unwrap_or(0);
        // Waiting, not expired: what the guardians can still approve.
        let waiting = spends
            .iter()
            .filter(|(_, b)| in_state(b, "waiting"))
            .filter_map(|(_, b)| serde_json::from_str::<crate::spends::SpendRecord>(b).ok())
            .filter(|s| !s.expired_waiting(tip))
            .count();
        // Plain lockdowns only: a duress code's quiet one shows nowhere but in the alarms.
        let mut locked = 0;
        for (_, body) in store.list(kind::CLIENT, "")? {
            if serde_json::from_str::<ClientRecord>(&body).map(|c| c.locked(tip)).unwrap_or(false) {
                locked += 1;
            }
        }
        let depth = store.outbox_depth(&self.sinks)?;
        let orders = store.count(kind::ORDERS)?;
        Ok(format!(
            "# TYPE vigil_cosigner_clients gauge\nvigil_cosigner_clients {clients}\n\
             # TYPE vigil_cosigner_spends_waiting gauge\nvigil_cosigner_spends_waiting {}\n\
             # TYPE vigil_cosigner_spends_approved gauge\nvigil_cosigner_spends_approved {}\n\
             # TYPE vigil_cosigner_lockdowns gauge\nvigil_cosigner_lockdowns {locked}\n\
             # TYPE vigil_cosigner_alarm_outbox gauge\nvigil_cosigner_alarm_outbox {depth}\n\
             # TYPE vigil_cosigner_tower_orders_pending gauge\nvigil_cosigner_tower_orders_pending {orders}\n\
             # TYPE vigil_cosigner_ceremonies gauge\nvigil_cosigner_ceremonies {}\n",
            waiting, approved, ceremonies,
        ))
    }
}

/// How far below a key's highest nonce an unused one is still taken: a client may have
/// several requests in flight, which can arrive in any order.
pub const NONCE_WINDOW: u64 = 64;

/// A key's used nonces: the highest, and which of the [`NONCE_WINDOW`] below it were used
/// (bit `i`: `max - i`). Stored as `max:bitmap`; a bare number (the first format, which took
/// nonces in increasing order) has every one up to it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonceWindow {
    /// The highest nonce used.
    pub max: u64,
    used: u64,
}

impl NonceWindow {
    fn parse(text: &str) -> Result<NonceWindow, Refusal> {
        let (max, used) = match text.split_once(':') {
            Some((m, u)) => (m.parse(), u.parse()),
            // Nonces were taken in increasing order only: every one up to the highest may
            // have been used, and a replay of one must not pass after an upgrade.
            None => (text.parse(), Ok(u64::MAX)),
        };
        Ok(NonceWindow {
            max: max.map_err(|_| Refusal::Internal)?,
            used: used.map_err(|_| Refusal::Internal)?,
        })
    }

    /// The window with `n` used, or `None` if `n` cannot be used.
    pub fn consume(self, n: u64) -> Option<NonceWindow> {
        if n > self.max {
            let step = n - self.max;
            if step > MAX_NONCE_STEP {
                return None;
            }
            let used = if step >= NONCE_WINDOW { 1 } else { (self.used << step) | 1 };
            return Some(NonceWindow { max: n, used });
        }
        let below = self.max - n;
        if n == 0 || below >= NONCE_WINDOW || self.used & (1 << below) != 0 {
            return None;
        }
        Some(NonceWindow { max: self.max, used: self.used | (1 << below) })
    }
}

impl std::fmt::Display for NonceWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.max, self.used)
    }
}

/// Refuses a request made more than [`wire::MAX_AGE_SECS`] from now.
pub(crate) fn fresh(t: u64) -> Result<(), Refusal> {
    let now = now();
    if t.abs_diff(now) > wire::MAX_AGE_SECS {
        return Err(unauthorized(format!(
            "the request was made at {t}, more than {} s from the co-signer's clock ({now}): stale",
            wire::MAX_AGE_SECS
        )));
    }
    Ok(())
}

/// Most webhooks one client names.
const MAX_CLIENT_WEBHOOKS: usize = 5;
/// Most addresses one client's alarms are e-mailed to: its guardians', through the
/// provider's relay, which must not mail any number of addresses on a client's word.
const MAX_ALARM_EMAILS: usize = 20;

/// A client's alarm addresses.
fn check_emails(emails: &[String]) -> Result<(), Refusal> {
    if emails.len() > MAX_ALARM_EMAILS {
        return Err(bad(format!("alarm_emails: at most {MAX_ALARM_EMAILS}")));
    }
    for (i, e) in emails.iter().enumerate() {
        if e.parse::<lettre::Address>().is_err() {
            return Err(bad(format!("alarm_emails[{i}]: {e:?} is not an e-mail address")));
        }
    }
    Ok(())
}

/// A client's own webhooks, as the operator's `client_webhooks` allows them: the co-signer
/// posts to them from inside the provider's network, so only what the operator accepts.
fn check_webhooks(urls: &[String], allowed: &str) -> Result<(), Refusal> {
    if urls.is_empty() {
        return Ok(());
    }
    if allowed == "off" {
        return Err(bad("alarm_webhooks: this co-signer does not post to clients' webhooks"));
    }
    if urls.len() > MAX_CLIENT_WEBHOOKS {
        return Err(bad(format!("alarm_webhooks: at most {MAX_CLIENT_WEBHOOKS}")));
    }
    for (i, url) in urls.iter().enumerate() {
        let scheme_ok = url.starts_with("https://") || (allowed == "any" && url.starts_with("http://"));
        let parsed = ureq::post(url).request_url();
        if !scheme_ok || parsed.is_err() || url.len() > 512 {
            return Err(bad(format!(
                "alarm_webhooks[{i}]: {url:?} is not {} URL of at most 512 characters",
                if allowed == "any" { "an http or https" } else { "an https" }
            )));
        }
    }
    Ok(())
}

/// A token's store id; refuses what is not a token.
fn token_id(token: &str) -> Result<String, Refusal> {
    if <[u8; 32]>::from_hex(token).is_err() {
        return Err(bad("token: 64 hex characters, as `vigil cosigner token` printed it"));
    }
    Ok(sha256::Hash::hash(token.as_bytes()).to_string())
}

/// A JSON body, or a 400 naming what is wrong.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lift the towers would take for a replay of the last one (or that one again) is never
    /// gathered: the pair (height, end) must pass the last lift's.
    #[test]
    fn a_lift_must_pass_the_last_one_by_height_then_end() {
        let record = |last: u32, until: Option<u32>| {
            let mut r = serde_json::json!({"id": "c", "account": 0, "policy": "", "lockdown_until": 0,
                "duress_until": 0, "heartbeat_real": "", "heartbeat_duress": "", "next_spend": 0,
                "tower_nonce": 0, "last_lift": last});
            if let Some(until) = until {
                r["last_lift_until"] = until.into();
            }
            serde_json::from_value::<ClientRecord>(r).unwrap()
        };
        assert_eq!(record(0, Some(0)).lift_floor(5_000), 0, "no lift yet");
        let lifted = record(2_000, Some(5_000));
        assert_eq!(lifted.lift_floor(5_001), 2_000, "a lockdown ending later: the same height");
        assert_eq!(lifted.lift_floor(5_000), 2_001, "the same end: that lift again, a block later");
        assert_eq!(lifted.lift_floor(4_000), 2_001, "ending sooner: a replay at the towers");
        // A record from before the end was kept: a block past the last lift, whatever the end.
        assert_eq!(record(2_000, None).lift_floor(9_000), 2_001);
    }

    #[test]
    fn a_client_names_only_the_webhooks_the_operator_allows_and_at_most_20_addresses() {
        let https = vec!["https://alarms.family.example/vigil".to_owned()];
        let http = vec!["http://10.0.0.1/alarm".to_owned()];
        assert!(check_webhooks(&https, "https").is_ok());
        assert!(check_webhooks(&http, "any").is_ok());
        assert!(check_webhooks(&[], "off").is_ok());
        let named = |r: Result<(), Refusal>| format!("{:?}", r.unwrap_err());
        assert!(named(check_webhooks(&http, "https")).contains("alarm_webhooks[0]"));
        assert!(named(check_webhooks(&https, "off")).contains("does not post"));
        assert!(named(check_webhooks(&["https://".to_owned()], "https")).contains("alarm_webhooks[0]"));
        assert!(named(check_webhooks(&vec![https[0].clone(); 6], "https")).contains("at most 5"));
        let address = |n: usize| (0..n).map(|i| format!("guardian{i}@family.example")).collect::<Vec<_>>();
        assert!(check_emails(&address(20)).is_ok());
        assert!(named(check_emails(&address(21))).contains("at most 20"));
        assert!(named(check_emails(&["not an address".into()])).contains("alarm_emails[0]"));
    }

    #[test]
    fn a_nonce_is_taken_once_in_any_order_within_the_window() {
        let w = NonceWindow::default();
        let w = w.consume(10).unwrap();
        assert_eq!(w.consume(10), None, "the same again");
        let w = w.consume(8).unwrap();
        assert_eq!(w.consume(8), None);
        let w = w.consume(9).unwrap();
        assert_eq!(w.consume(0), None);
        let w = w.consume(10 + NONCE_WINDOW).unwrap();
        assert_eq!(w.consume(10), None, "slid out of the window");
        assert_eq!(w.consume(11), Some(NonceWindow { max: w.max, used: w.used | (1 << (NONCE_WINDOW - 1)) }));
        assert_eq!(w.consume(w.max + MAX_NONCE_STEP + 1), None, "a jump that would lock the key out");
        let old = NonceWindow::parse("7").unwrap();
        assert_eq!((old.consume(7), old.consume(6), old.consume(1)), (None, None, None), "the first format");
        assert!(old.consume(8).is_some());
        assert_eq!(NonceWindow::parse(&w.to_string()).unwrap(), w);
    }
}
