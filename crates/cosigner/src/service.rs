//! The co-signer's shared state and the requests that are not about vaults or spends:
//! authentication, enrollment, pinning a policy, lockdowns and heartbeats.

use std::collections::HashMap;
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
use crate::keys::{CosignerKeys, MAX_ACCOUNTS};
use crate::orders::TowerOrder;
use crate::store::{kind, Batch, Store};
use crate::wire::{
    self, Enroll, Enrolled, Heartbeat, HeartbeatAck, Lockdown, LockdownStatus, PinPolicy, Signed,
};

/// How far above the last nonce a request's may jump (a nonce of u64::MAX must not lock a
/// key out for good).
pub const MAX_NONCE_STEP: u64 = 1 << 32;
/// The longest lockdown one party may impose, blocks (4 weeks).
pub const MAX_LOCKDOWN_BLOCKS: u32 = 4 * 1008;
/// How long a duress heartbeat locks the client down, blocks: until the guardians decide.
pub const DURESS_LOCKDOWN_BLOCKS: u32 = MAX_LOCKDOWN_BLOCKS;

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Its id: the sha256 of the policy file it was pinned with.
    pub id: String,
    /// Its account under the co-signer's master.
    pub account: u32,
    /// The pinned policy file.
    pub policy: String,
    /// Spends and loosening are refused below this height (0: never locked).
    pub lockdown_until: u32,
    /// A duress heartbeat came: nothing will be co-signed again, whatever is answered.
    pub duress: bool,
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
    /// Height from which the lockdown is lifted early (quorum + governance wait), 0: none.
    #[serde(default)]
    pub lift_at: u32,
    /// Where this client's alarms are e-mailed (its guardians).
    #[serde(default)]
    pub alarm_emails: Vec<String>,
    /// A guardian-signed change waiting for its height.
    #[serde(default)]
    pub pending_policy: Option<crate::governance::PendingPolicy>,
}

impl ClientRecord {
    /// Whether spends are refused at `tip`.
    pub fn locked(&self, tip: u32) -> bool {
        let until =
            if self.lift_at > 0 { self.lockdown_until.min(self.lift_at) } else { self.lockdown_until };
        tip < until
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

/// The co-signer.
pub struct Cosigner {
    pub(crate) keys: CosignerKeys,
    pub(crate) config: CosignerConfig,
    pub(crate) network: Network,
    pub(crate) chain: Box<dyn ChainBackend>,
    /// The store, behind the one lock every decision takes.
    store: Mutex<Box<dyn Store>>,
    /// Compiled policies by the policy's sha256 (compiling takes milliseconds).
    compiled: Mutex<HashMap<String, Arc<CompiledPolicy>>>,
    /// Vault ceremonies in progress, with the co-signer's one-time keys: RAM only.
    pub(crate) ceremonies: Mutex<HashMap<OutPoint, Ceremony>>,
    /// Alarm sinks (webhook URLs).
    pub(crate) sinks: Vec<String>,
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

impl Cosigner {
    /// A co-signer over `store`, with its unlocked keys.
    pub fn new(
        keys: CosignerKeys,
        config: CosignerConfig,
        chain: Box<dyn ChainBackend>,
        store: Box<dyn Store>,
    ) -> Result<Cosigner, crate::error::CosignerError> {
        let network = config.network()?;
        let mut sinks = config.alarms.webhooks.clone();
        if config.smtp.is_some() {
            sinks.push(crate::alarms::EMAIL_SINK.to_owned());
        }
        Ok(Cosigner {
            keys,
            config,
            network,
            chain,
            store: Mutex::new(store),
            compiled: Mutex::new(HashMap::new()),
            ceremonies: Mutex::new(HashMap::new()),
            sinks,
        })
    }

    /// The store, under the decision lock.
    pub(crate) fn store(&self) -> MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chain's tip height.
    pub(crate) fn tip(&self) -> Result<u32, Refusal> {
        Ok(self.chain.tip()?.height)
    }

    pub(crate) fn compiled(&self, client: &ClientRecord) -> Result<Arc<CompiledPolicy>, Refusal> {
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        let key = vigil_tower::policy_id(&client.policy);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let policy = Policy::from_toml(&client.policy).map_err(|e| {
            tracing::error!(client = %client.id, error = %e, "a pinned policy no longer builds");
            Refusal::Internal
        })?;
        let compiled = Arc::new(CompiledPolicy::new(policy).map_err(|_| Refusal::Internal)?);
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// A client's record.
    pub(crate) fn client(store: &mut dyn Store, id: &str) -> Result<Option<ClientRecord>, Refusal> {
        store
            .get(kind::CLIENT, id)?
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string()).into()))
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
        let mut client = Self::client(&mut **self.store(), id)?
            .ok_or_else(|| unauthorized(format!("no client {id} is pinned at this co-signer")))?;
        if client
            .pending_policy
            .as_ref()
            .is_some_and(|p| p.effective_height <= self.chain.tip().map(|t| t.height).unwrap_or(0))
        {
            // Its change is due: the background loop applies it; judge by it already.
            client.apply_due(u32::MAX);
        }
        let key = self.verify(creds, client.account, path, signed)?;
        let compiled = self.compiled(&client)?;
        let policy = compiled.policy();
        let role = if let Some(i) = policy.owner.keys.iter().position(|k| k.auth_key() == key) {
            Role::Owner(i)
        } else if let Some(i) = policy.guardians.keys.iter().position(|k| k.auth_key() == key) {
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
        store: &mut dyn Store,
        key: &XOnlyPublicKey,
        body: &Signed<T>,
    ) -> Result<Batch, Refusal> {
        fresh(body.time)?;
        let id = key.to_string();
        let last = store.get(kind::NONCE, &id)?;
        let n: u64 = last.as_deref().map(str::parse).transpose().map_err(|_| Refusal::Internal)?.unwrap_or(0);
        if body.nonce <= n || body.nonce - n > MAX_NONCE_STEP {
            return Err(unauthorized(format!(
                "nonce {} is not above this key's last ({n}), or jumps more than 2^32 past it: a replay is refused",
                body.nonce
            )));
        }
        let mut batch = Batch::default();
        batch.expect(kind::NONCE, id.clone(), last).put(kind::NONCE, id, body.nonce.to_string());
        Ok(batch)
    }

    /// `POST /v1/enroll`.
    pub fn enroll(&self, req: &Enroll) -> Result<Enrolled, Refusal> {
        let hash = token_id(&req.token)?;
        let mut store = self.store();
        let record: TokenRecord = match store.get(kind::TOKEN, &hash)? {
            Some(t) => serde_json::from_str(&t).map_err(|_| Refusal::Internal)?,
            None => return Err(unauthorized("unknown enrollment token")),
        };
        let account = match record {
            // The same token again (the answer was lost): the same account.
            TokenRecord::Enrolled { account } => account,
            TokenRecord::Used { .. } => return Err(unauthorized("this enrollment token was already used")),
            TokenRecord::Issued => {
                let next: u32 =
                    store.get(kind::META, "next_account")?.map(|t| t.parse().unwrap_or(0)).unwrap_or(0);
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
        let mut store = self.store();
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
        let mut batch = Self::consume_nonce(&mut **store, &signer, &req)?;
        match token {
            TokenRecord::Used { client, .. } if client == id => {
                store.commit(&batch)?;
                return Ok(wire::PinAnswer { policy_id: id });
            }
            TokenRecord::Used { .. } => return Err(unauthorized("this enrollment token was already used")),
            _ => {}
        }
        let policy = Policy::from_toml(&p.policy).map_err(|e| bad(format!("policy: {e}")))?;
        if policy.network != self.network {
            return Err(bad(format!(
                "policy: network {} is not this co-signer's ({})",
                policy.network, self.network
            )));
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
        for (i, e) in p.alarm_emails.iter().enumerate() {
            if e.parse::<lettre::Address>().is_err() {
                return Err(bad(format!("alarm_emails[{i}]: {e:?} is not an e-mail address")));
            }
        }
        if p.heartbeat_real == p.heartbeat_duress {
            return Err(bad("heartbeat_real and heartbeat_duress must differ"));
        }
        CompiledPolicy::new(policy).map_err(|e| bad(format!("policy: {e}")))?;
        let record = ClientRecord {
            id: id.clone(),
            account,
            policy: p.policy.clone(),
            lockdown_until: 0,
            duress: false,
            heartbeat_real: p.heartbeat_real.clone(),
            heartbeat_duress: p.heartbeat_duress.clone(),
            next_spend: 1,
            tower_nonce: 1,
            lift_votes: Vec::new(),
            lift_proposed: 0,
            lift_at: 0,
            alarm_emails: p.alarm_emails.clone(),
            pending_policy: None,
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

    /// `POST /v1/lockdown`: any owner or guardian freezes the client at once; every tower is
    /// told (quietly if the client is under duress: its cancels must not show early).
    pub fn lockdown(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<Lockdown>,
    ) -> Result<LockdownStatus, Refusal> {
        let blocks = req.request.blocks;
        if blocks == 0 || blocks > MAX_LOCKDOWN_BLOCKS {
            return Err(bad(format!(
                "blocks: {blocks} is outside 1..={MAX_LOCKDOWN_BLOCKS} (6 blocks an hour)"
            )));
        }
        let tip = self.tip()?;
        let mut store = self.store();
        let mut client = Self::client(&mut **store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let before = serde_json::to_string(&client).expect("json");
        let mut batch = Self::consume_nonce(&mut **store, &caller.key, req)?;
        client.lockdown_until = client.lockdown_until.max(tip + blocks);
        let message = format!(
            "client {} locked down by {:?} until block {} (tip {tip}): spends are refused",
            client.id, caller.role, client.lockdown_until
        );
        Self::queue_order(&mut **store, &mut batch, &client.id, lockdown_order(&client))?;
        batch
            .expect(kind::CLIENT, client.id.clone(), Some(before))
            .put(kind::CLIENT, client.id.clone(), serde_json::to_string(&client).expect("json"))
            .alarm(alarm(&client.id, "lockdown", message));
        store.commit(&batch)?;
        drop(store);
        self.push_soon(client.id.clone());
        Ok(LockdownStatus { until_height: client.lockdown_until })
    }

    /// `POST /v1/lockdown/lift`: a guardian's vote to lift the lockdown early; with the
    /// quorum's signatures over the same height (at least the governance wait ahead: a captor
    /// could make guardians vote), it lifts then, here and at every tower.
    pub fn lift(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<wire::LiftLockdown>,
    ) -> Result<LockdownStatus, Refusal> {
        caller.guardian()?;
        let r = &req.request;
        let tip = self.tip()?;
        let mut store = self.store();
        let mut client = Self::client(&mut **store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        if !client.locked(tip) {
            return Err(Refusal::Conflict("the client is not locked down".into()));
        }
        if client.lift_proposed == 0 && r.lift_at_height < tip + self.config.governance_delay_blocks {
            return Err(bad(format!(
                "lift_at_height {} is sooner than the governance wait allows (block {} at the earliest)",
                r.lift_at_height,
                tip + self.config.governance_delay_blocks
            )));
        }
        if client.lift_proposed != 0 && r.lift_at_height != client.lift_proposed {
            return Err(Refusal::Conflict(format!(
                "the guardians are lifting the lockdown at block {}: sign that height",
                client.lift_proposed
            )));
        }
        let digest = vigil_tower::wire::lift_digest(&client.id, r.lift_at_height);
        let sig = <[u8; 64]>::from_hex(&r.signature)
            .ok()
            .and_then(|b| schnorr::Signature::from_slice(&b).ok())
            .filter(|s| {
                vigil_policy::bitcoin::secp256k1::Secp256k1::verification_only()
                    .verify_schnorr(s, &digest, &caller.key)
                    .is_ok()
            })
            .ok_or_else(|| bad("signature: does not verify over this client and height with your key"))?;
        let before = serde_json::to_string(&client).expect("json");
        let mut batch = Self::consume_nonce(&mut **store, &caller.key, req)?;
        let me = caller.key.to_string();
        client.lift_proposed = r.lift_at_height;
        if !client.lift_votes.iter().any(|v| v.key == me) {
            client
                .lift_votes
                .push(wire::KeySignature { key: me, signature: sig.as_ref().to_lower_hex_string() });
        }
        if client.lift_votes.len() as u32 >= caller.policy().guardians.threshold && client.lift_at == 0 {
            client.lift_at = client.lift_proposed;
            batch.alarm(alarm(
                &client.id,
                "lockdown-lift",
                format!(
                    "the guardians' quorum lifts the lockdown of {} at block {}",
                    client.id, client.lift_at
                ),
            ));
            let order = vigil_tower::wire::LiftLockdown {
                nonce: 0,
                policy_id: client.id.clone(),
                lift_at_height: client.lift_at,
                signatures: client.lift_votes.clone(),
            };
            let subject = format!("lockdown lift {} {}", client.id, client.lift_at);
            Self::queue_order(
                &mut **store,
                &mut batch,
                &client.id,
                order_of("/v1/lockdown/lift", &order, subject),
            )?;
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        drop(store);
        self.push_soon(client.id.clone());
        let until = if client.lift_at > 0 {
            client.lockdown_until.min(client.lift_at)
        } else {
            client.lockdown_until
        };
        Ok(LockdownStatus { until_height: until })
    }

    /// `POST /v1/panic`: a guardian hands in the quorum's decision; it is relayed to every
    /// tower now (and again until each acknowledged), and the answer says which acted.
    pub fn panic(
        &self,
        caller: &Caller,
        req: &Signed<wire::PanicOrder>,
    ) -> Result<wire::PanicRelayed, Refusal> {
        caller.guardian()?;
        let p = &req.request;
        if p.panic.policy_id != caller.client.id {
            return Err(Refusal::Forbidden(
                "panic.policy_id: a guardian acts for its own client only".into(),
            ));
        }
        if <[u8; 32]>::from_hex(&p.panic.id).is_err() {
            return Err(bad("panic.id: 32 random bytes in hex, fresh for each panic"));
        }
        let signers = vigil_tower::registration::verified_signers(&p.signatures, &p.panic.digest())?;
        let policy = caller.policy();
        let guardians: std::collections::HashSet<XOnlyPublicKey> = signers
            .into_iter()
            .filter(|k| policy.guardians.keys.iter().any(|g| g.auth_key() == *k))
            .collect();
        if (guardians.len() as u32) < policy.guardians.threshold {
            return Err(bad(format!(
                "a panic needs {} guardian signatures, {} verify",
                policy.guardians.threshold,
                guardians.len()
            )));
        }
        let tip = self.tip()?;
        let window = vigil_tower::wire::MAX_PANIC_WINDOW_BLOCKS;
        if p.panic.not_after_height < tip || p.panic.not_after_height > tip + window {
            return Err(bad(format!(
                "panic.not_after_height must be between the tip {tip} and {window} blocks ahead"
            )));
        }
        {
            let mut store = self.store();
            if store.get(kind::PANIC, &p.panic.id)?.is_some() {
                return Err(Refusal::Conflict(format!("panic {} was already relayed", p.panic.id)));
            }
            let mut batch = Self::consume_nonce(&mut **store, &caller.key, req)?;
            let order = vigil_tower::wire::PanicRequest {
                nonce: 0,
                panic: p.panic.clone(),
                signatures: p.signatures.clone(),
            };
            Self::queue_order(
                &mut **store,
                &mut batch,
                &caller.client.id,
                order_of("/v1/panic", &order, format!("panic {}", p.panic.id)),
            )?;
            batch
                .expect(kind::PANIC, p.panic.id.clone(), None)
                .put(kind::PANIC, p.panic.id.clone(), tip.to_string())
                .alarm(alarm(
                    &caller.client.id,
                    "panic",
                    format!("panic {} of {}: relayed to every tower", p.panic.id, caller.client.id),
                ));
            store.commit(&batch)?;
        }
        let towers = self.push_orders(&caller.client.id)?;
        Ok(wire::PanicRelayed { towers })
    }

    /// `POST /v1/heartbeat`: every unlock of the owner's client sends one. A duress one locks
    /// the client down and alarms the guardians, silently: the answer is the same.
    pub fn heartbeat(
        self: &Arc<Self>,
        caller: &Caller,
        req: &Signed<Heartbeat>,
    ) -> Result<HeartbeatAck, Refusal> {
        caller.owner()?;
        let sealed = Vec::<u8>::from_hex(&req.request.sealed)
            .ok()
            .filter(|s| s.len() == wire::HEARTBEAT_LEN)
            .ok_or_else(|| bad(format!("sealed: {} bytes in hex", wire::HEARTBEAT_LEN)))?;
        let key = wire::heartbeat_key(&self.keys.auth_keypair(caller.client.account), &caller.key);
        let token = wire::open_heartbeat(&key, &sealed).map(|t| wire::token_hash(&t));
        let tip = self.tip()?;
        let mut store = self.store();
        let mut client = Self::client(&mut **store, &caller.client.id)?.ok_or(Refusal::Internal)?;
        let before = serde_json::to_string(&client).expect("json");
        let mut batch = Self::consume_nonce(&mut **store, &caller.key, req)?;
        match token {
            Some(t) if t == client.heartbeat_real => {}
            Some(t) if t == client.heartbeat_duress => {
                if !client.duress {
                    tracing::warn!(client = %client.id, "duress heartbeat");
                }
                client.duress = true;
                client.lockdown_until = client.lockdown_until.max(tip + DURESS_LOCKDOWN_BLOCKS);
                Self::queue_order(&mut **store, &mut batch, &client.id, lockdown_order(&client))?;
                batch.alarm(alarm(
                    &client.id,
                    "duress",
                    format!(
                        "DURESS: the owner of {} unlocked with the duress code at block {tip}. The client is \
                         silently locked down; nothing will be co-signed. Do not contact the owner by phone.",
                        client.id
                    ),
                ));
            }
            _ => {
                batch.alarm(alarm(
                    &client.id,
                    "heartbeat-unrecognised",
                    format!("a heartbeat of {} carried no token the co-signer knows", client.id),
                ));
            }
        }
        batch.expect(kind::CLIENT, client.id.clone(), Some(before)).put(
            kind::CLIENT,
            client.id.clone(),
            serde_json::to_string(&client).expect("json"),
        );
        store.commit(&batch)?;
        Ok(HeartbeatAck { ok: true })
    }

    /// Issues a single-use enrollment token (the operator's `vigil cosigner token`).
    pub fn issue_token(store: &mut dyn Store) -> Result<String, StoreError> {
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
        let mut store = self.store();
        let clients = store.count(kind::CLIENT)?;
        let spends = store.list(kind::SPEND, "")?;
        let state =
            |s: &str| spends.iter().filter(|(_, b)| b.contains(&format!("\"state\":\"{s}\""))).count();
        let tip = self.chain.tip().map(|t| t.height).unwrap_or(0);
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
            state("waiting"),
            state("approved"),
            self.ceremonies.lock().map(|c| c.len()).unwrap_or(0),
        ))
    }
}

/// The lockdown every tower of `client` must hold: quiet under duress.
fn lockdown_order(client: &ClientRecord) -> TowerOrder {
    let order = vigil_tower::wire::LockdownRequest {
        nonce: 0,
        policy_id: client.id.clone(),
        until_height: client.lockdown_until,
        quiet: client.duress,
    };
    order_of("/v1/lockdown", &order, format!("lockdown {} {}", client.id, client.lockdown_until))
}

fn order_of<T: Serialize>(path: &str, body: &T, subject: String) -> TowerOrder {
    TowerOrder {
        path: path.into(),
        body: serde_json::to_value(body).expect("json"),
        subject,
        acked: Vec::new(),
    }
}

/// Refuses a request made more than [`wire::MAX_AGE_SECS`] from now.
fn fresh(t: u64) -> Result<(), Refusal> {
    let now = now();
    if t.abs_diff(now) > wire::MAX_AGE_SECS {
        return Err(unauthorized(format!(
            "the request was made at {t}, more than {} s from the co-signer's clock ({now}): stale",
            wire::MAX_AGE_SECS
        )));
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
