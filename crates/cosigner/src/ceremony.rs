//! The co-signer's half of a vault ceremony (DESIGN.md §4 "One-time keys and the ceremony").
//!
//! 1. `begin`: the owner names the vault and the intake coins. The co-signer checks each coin
//!    is an unspent segwit intake output of this client, not promised to another funding,
//!    rebuilds the funding and the graph from the pinned policy, signs the graph with a
//!    one-time key from fresh randomness, kept in RAM only, and answers its signatures.
//! 2. `complete`: the owner's graph signatures and funding signatures. The co-signer checks
//!    them against the graph and funding it built itself (byte for byte: the same txids),
//!    commits the coins to this funding and the vault to its store, registers the vault with
//!    every tower of the policy, and only when every one acknowledged drops its one-time key
//!    and releases the fully signed funding.
//!
//! A crash before step 2 commits leaves nothing funded (the co-signer never signed the
//! funding, and its key died with the process). After it, the store holds the signed graph:
//! on restart the co-signer keeps registering it with the towers that have not acknowledged,
//! and releases the funding only then. Towers that acknowledged already hold every cancel:
//! whatever happens, a funded vault is a protected one.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use vigil_policy::bitcoin::hex::{DisplayHex, FromHex};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::{Amount, OutPoint, Transaction};
use vigil_policy::{
    ChangeTo, CompiledPolicy, FundingInput, GraphSignatures, OneTimeKey, UnsignedGraph, VaultKind, VaultPlan,
};
use vigil_tower::wire::RegisterVault;

use crate::error::{Refusal, StoreError};
use crate::service::{alarm, Caller, Cosigner};
use crate::store::{kind, Batch, Store};
use crate::wire::{BeginVault, CompleteVault, Signed, TowerReport, VaultBegun, VaultStatus};

/// How long a begun ceremony waits for the owner's half.
const CEREMONY_TTL: Duration = Duration::from_secs(600);
/// Ceremonies one client may have open at once.
const MAX_OPEN_CEREMONIES: usize = 16;

/// A ceremony between `begin` and the towers' acknowledgements: the one-time key lives here.
pub struct Ceremony {
    client: String,
    /// The policy the graph was built from, and its id.
    compiled: Arc<CompiledPolicy>,
    policy_id: String,
    /// The client's earlier versions: coins paid to their intake addresses fund it too.
    earlier: Vec<Arc<CompiledPolicy>>,
    plan: VaultPlan,
    graph: UnsignedGraph,
    funding: Psbt,
    coins: Vec<FundingInput>,
    /// Held, not used again: wiped (dropped) only once every tower acknowledged the graph.
    #[allow(dead_code)]
    cosigner_once: OneTimeKey,
    cosigner_signatures: GraphSignatures,
    /// The one-time keys' extended keys, when the owner gave its own.
    once_xpubs: Option<[String; 2]>,
    started: Instant,
}

/// A vault the co-signer took part in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    /// Its client.
    pub client: String,
    /// The registration every tower gets (its nonce is set per tower).
    pub registration: RegisterVault,
    /// The fully signed funding, hex.
    pub funding: String,
    /// "registering" or "protected".
    pub state: String,
    /// Each tower's acknowledgement.
    pub towers: Vec<TowerReport>,
    /// The next approval counter.
    pub next_counter: u64,
    /// The id (sha256) of the policy file the vault was made under: its scripts and DELAY
    /// stay that policy's after the client's changes (empty in records from before it was
    /// kept: the current policy).
    #[serde(default)]
    pub policy_id: String,
    /// The one-time keys' extended keys (the owner's, then the co-signer's), when the owner
    /// gave its own: given back at a restore (ADR 0005).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_xpubs: Option<[String; 2]>,
}

impl Ceremony {
    /// Its client.
    pub(crate) fn client(&self) -> &str {
        &self.client
    }
}

impl VaultRecord {
    /// The vault's plan.
    pub fn plan(&self) -> Result<VaultPlan, Refusal> {
        let v = &self.registration.vault;
        let key = |s: &str| XOnlyPublicKey::from_str(s).map_err(|_| Refusal::Internal);
        Ok(VaultPlan {
            index: v.index,
            amount: Amount::from_sat(v.amount_sat),
            kind: if v.kind == "guarded" { VaultKind::Guarded } else { VaultKind::Standard },
            owner_once: key(&v.owner_once)?,
            cosigner_once: key(&v.cosigner_once)?,
        })
    }

    /// U.
    pub fn unvault(&self) -> Result<Transaction, Refusal> {
        deserialize_hex(&self.registration.unvault).map_err(|_| Refusal::Internal)
    }

    /// Whether it is guarded.
    pub fn guarded(&self) -> bool {
        self.registration.vault.kind == "guarded"
    }
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

/// A stored vault.
pub(crate) fn vault_record(store: &dyn Store, outpoint: &str) -> Result<Option<VaultRecord>, Refusal> {
    Ok(vault_stored(store, outpoint)?.map(|(v, _)| v))
}

/// A stored vault and its text as stored, which a write expects ([`Cosigner::client_stored`]).
pub(crate) fn vault_stored(
    store: &dyn Store,
    outpoint: &str,
) -> Result<Option<(VaultRecord, String)>, Refusal> {
    store
        .get(kind::VAULT, outpoint)?
        .map(|t| {
            serde_json::from_str(&t).map(|v| (v, t)).map_err(|e| StoreError::Corrupt(e.to_string()).into())
        })
        .transpose()
}

impl Cosigner {
    /// `POST /v1/vaults`.
    pub fn begin_vault(&self, caller: &Caller, req: &Signed<BeginVault>) -> Result<VaultBegun, Refusal> {
        self.unlocked_owner(caller)?;
        let r = &req.request;
        let compiled = caller.compiled.clone();
        let kind = match r.kind.as_str() {
            "standard" => VaultKind::Standard,
            "guarded" => VaultKind::Guarded,
            other => return Err(bad(format!("kind: {other:?} is neither \"standard\" nor \"guarded\""))),
        };
        let owner_once = XOnlyPublicKey::from_str(&r.owner_once)
            .map_err(|_| bad("owner_once: not an x-only public key"))?;
        let owner_once_xpub = match &r.owner_once_xpub {
            None => None,
            Some(text) => {
                let xpub = vigil_policy::bitcoin::bip32::Xpub::from_str(text)
                    .map_err(|_| bad("owner_once_xpub: not an extended public key"))?;
                if xpub.network != compiled.policy().network.into()
                    || !vigil_policy::is_vault_child(&xpub, r.index, owner_once)
                {
                    return Err(bad("owner_once_xpub: owner_once is not its child /0/index"));
                }
                Some(xpub)
            }
        };
        if r.coins.is_empty() || r.coins.len() > 100 {
            return Err(bad("coins: 1 to 100 intake coins"));
        }
        if r.funding_sat_per_vb == 0 || r.funding_sat_per_vb > 10_000 {
            return Err(bad("funding_sat_per_vb: 1 to 10,000"));
        }
        // Read only, as the intake coins' records below: complete_vault commits under
        // preconditions on all of them.
        if self.store().get(kind::VAULT_INDEX, &format!("{}/{}", caller.client.id, r.index))?.is_some() {
            return Err(Refusal::Conflict(format!("index: vault {} of this client exists already", r.index)));
        }
        let mut coins = Vec::new();
        for (i, c) in r.coins.iter().enumerate() {
            let outpoint = OutPoint::from_str(&c.outpoint)
                .map_err(|_| bad(format!("coins[{i}].outpoint: not txid:vout")))?;
            if coins.iter().any(|f: &FundingInput| f.outpoint == outpoint) {
                return Err(bad(format!("coins[{i}]: {outpoint} is listed twice")));
            }
            coins.push(FundingInput {
                outpoint,
                txout: vigil_policy::bitcoin::TxOut::NULL,
                intake_index: c.intake_index,
                change: c.change,
            });
        }
        // Coins paid to an intake address of any version the guardians' quorum signed (a change
        // of the guardians or of T_RECOVER changes the addresses) go into a vault of today's.
        let earlier: Vec<Arc<CompiledPolicy>> =
            self.client_policies(&caller.client)?.into_iter().skip(1).collect();
        let earlier_refs: Vec<&CompiledPolicy> = earlier.iter().map(|c| &**c).collect();
        for (i, coin) in coins.iter_mut().enumerate() {
            coin.txout = self
                .chain
                .unspent_output(&coin.outpoint)?
                .ok_or_else(|| bad(format!("coins[{i}]: {} is not an unspent output", coin.outpoint)))?;
            compiled.intake_source(&earlier_refs, i, coin).map_err(|_| {
                bad(format!(
                    "coins[{i}]: {} is not paid to this client's intake address {}{}",
                    coin.outpoint,
                    coin.intake_index,
                    if coin.change { " of the change branch" } else { "" }
                ))
            })?;
            // Only once the coin is known to be this client's: another's would learn which
            // outpoints fund vaults here.
            if let Some(funding) = self.store().get(kind::INTAKE, &coin.outpoint.to_string())? {
                return Err(Refusal::Conflict(format!(
                    "coins[{i}]: {} already funds {funding}; the co-signer never signs a second spend of an intake coin",
                    coin.outpoint
                )));
            }
        }
        // From a one-time extended key: the owner's hardware signer registers the vault's
        // unvault output with it (ADR 0005).
        let cosigner_once = OneTimeKey::for_vault(compiled.policy().network.into(), r.index)
            .map_err(|e| bad(e.to_string()))?;
        let plan = compiled
            .plan(r.index, Amount::from_sat(r.amount_sat), kind, owner_once, cosigner_once.public())
            .map_err(|e| bad(e.to_string()))?;
        let funding = compiled
            .funding_psbt_from(
                &earlier_refs,
                &plan,
                &coins,
                ChangeTo { index: r.change_index, change_branch: r.change_branch },
                r.funding_sat_per_vb,
            )
            .map_err(|e| bad(e.to_string()))?;
        let vault_outpoint = OutPoint { txid: funding.unsigned_tx.compute_txid(), vout: 0 };
        let graph = compiled.build_graph(&plan, vault_outpoint).map_err(|e| bad(e.to_string()))?;
        let cosigner_signatures = cosigner_once.sign(&graph).map_err(|_| Refusal::Internal)?;
        let answer = VaultBegun {
            vault_outpoint: vault_outpoint.to_string(),
            funding_txid: vault_outpoint.txid.to_string(),
            cosigner_once: cosigner_once.public().to_string(),
            cosigner_once_xpub: cosigner_once.xpub().map(|x| x.to_string()),
            signatures: cosigner_signatures
                .signatures
                .iter()
                .map(|s| s.as_ref().to_lower_hex_string())
                .collect(),
        };
        let mut open = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, c| c.started.elapsed() < CEREMONY_TTL);
        if open.values().filter(|c| c.client == caller.client.id).count() >= MAX_OPEN_CEREMONIES {
            return Err(Refusal::Conflict(format!(
                "{MAX_OPEN_CEREMONIES} ceremonies are open already; complete them first"
            )));
        }
        // Only once nothing can refuse it (a refusal changes nothing), and with nothing else:
        // the ceremony itself lives in RAM.
        self.consume_nonce_alone(caller, req)?;
        open.insert(
            vault_outpoint,
            Ceremony {
                client: caller.client.id.clone(),
                compiled: compiled.clone(),
                policy_id: vigil_tower::policy_id(&caller.client.policy),
                earlier: earlier.clone(),
                plan,
                graph,
                funding,
                coins,
                once_xpubs: owner_once_xpub
                    .zip(cosigner_once.xpub())
                    .map(|(o, c)| [o.to_string(), c.to_string()]),
                cosigner_once,
                cosigner_signatures,
                started: Instant::now(),
            },
        );
        Ok(answer)
    }

    /// `POST /v1/vaults/complete`.
    pub fn complete_vault(
        &self,
        caller: &Caller,
        req: &Signed<CompleteVault>,
    ) -> Result<VaultStatus, Refusal> {
        self.unlocked_owner(caller)?;
        let r = &req.request;
        let outpoint =
            OutPoint::from_str(&r.vault_outpoint).map_err(|_| bad("vault_outpoint: not txid:vout"))?;
        // Already committed (the answer was lost, or a tower was missing): carry on with it.
        // The canonical spelling names it everywhere (store, towers' acknowledgements).
        let vault_key = outpoint.to_string();
        let existing = vault_record(self.store(), &vault_key)?;
        if let Some(v) = existing {
            if v.client != caller.client.id {
                return Err(Refusal::NotFound(format!("no vault {outpoint} of this client")));
            }
            self.consume_nonce_alone(caller, req)?;
            return self.register_with_towers(&caller.client.id, &vault_key);
        }
        let open = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        let ceremony = match open.get(&outpoint) {
            Some(c) if c.client == caller.client.id && c.started.elapsed() < CEREMONY_TTL => c,
            _ => {
                return Err(Refusal::NotFound(format!(
                    "no ceremony in progress for {outpoint} (it expired, or the co-signer restarted): begin again"
                )))
            }
        };
        let signatures = r
            .owner_signatures
            .iter()
            .map(|s| <[u8; 64]>::from_hex(s).ok().and_then(|b| schnorr::Signature::from_slice(&b).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("owner_signatures: 64-byte hex signatures"))?;
        let owner = GraphSignatures { signer: ceremony.plan.owner_once, signatures };
        owner.verify(&ceremony.graph).map_err(|e| bad(format!("owner_signatures: {e}")))?;
        let signed = ceremony
            .graph
            .finalize(&owner, &ceremony.cosigner_signatures)
            .map_err(|e| bad(format!("owner_signatures: {e}")))?;
        let theirs = base64::engine::general_purpose::STANDARD
            .decode(&r.funding_psbt)
            .ok()
            .and_then(|b| Psbt::deserialize(&b).ok())
            .ok_or_else(|| bad("funding_psbt: not a base64 PSBT"))?;
        if theirs.unsigned_tx != ceremony.funding.unsigned_tx {
            return Err(bad("funding_psbt: not the funding this ceremony built (its transaction differs)"));
        }
        // Only the owner's valid signatures on its leaf are taken from theirs; everything
        // else is ours.
        let mut candidate = ceremony.funding.clone();
        for (mine, given) in candidate.inputs.iter_mut().zip(&theirs.inputs) {
            mine.tap_script_sigs.clone_from(&given.tap_script_sigs);
        }
        let earlier: Vec<&CompiledPolicy> = ceremony.earlier.iter().map(|c| &**c).collect();
        let owner = ceremony
            .compiled
            .owner_funding_signatures_from(&earlier, &ceremony.coins, &candidate)
            .map_err(|e| bad(format!("funding_psbt: {e}")))?;
        let mut funding = ceremony.funding.clone();
        for (input, (mine, signed)) in funding.inputs.iter_mut().zip(owner).enumerate() {
            if !signed.enough() {
                return Err(bad(format!(
                    "funding_psbt: input {input} carries {} valid signature(s) of the owner's keys, {} needed",
                    signed.valid.len(),
                    signed.needed
                )));
            }
            mine.tap_script_sigs.extend(signed.valid);
        }
        self.keys.sign_psbt(caller.client.account, &mut funding);
        let funding = vigil_policy::finalize(funding)
            .map_err(|e| bad(format!("funding_psbt: the owner's signatures do not complete it: {e}")))?;
        let registration = RegisterVault::new(&caller.client.id, 0, &ceremony.plan, &signed, Some(&funding));
        let record = VaultRecord {
            client: caller.client.id.clone(),
            registration,
            funding: serialize_hex(&funding),
            state: "registering".into(),
            towers: Vec::new(),
            next_counter: 1,
            policy_id: ceremony.policy_id.clone(),
            once_xpubs: ceremony.once_xpubs.clone(),
        };
        // The ceremonies' lock, then the client's (never the other way round).
        let deciding = self.decide(&caller.client.id);
        let store = self.store();
        let mut batch = Self::consume_nonce(store, &caller.key, req)?;
        for coin in ceremony.coins.iter().map(|c| c.outpoint) {
            batch.expect(kind::INTAKE, coin.to_string(), None).put(
                kind::INTAKE,
                coin.to_string(),
                vault_key.clone(),
            );
        }
        let index_id = format!("{}/{}", caller.client.id, ceremony.plan.index);
        batch
            .expect(kind::VAULT_INDEX, index_id.clone(), None)
            .put(kind::VAULT_INDEX, index_id, vault_key.clone())
            .expect(kind::VAULT, vault_key.clone(), None)
            .put(kind::VAULT, vault_key.clone(), serde_json::to_string(&record).expect("json"))
            .put(kind::UNREGISTERED, vault_key.clone(), caller.client.id.clone());
        store.commit(&batch)?;
        drop(deciding);
        drop(open);
        tracing::info!(client = %caller.client.id, vault = %outpoint, "vault signed; registering with towers");
        self.register_with_towers(&caller.client.id, &vault_key)
    }

    /// Registers a committed vault with every tower that has not acknowledged it; once all
    /// have, drops the ceremony's one-time key and marks it protected (its funding released).
    pub fn register_with_towers(&self, client_id: &str, outpoint: &str) -> Result<VaultStatus, Refusal> {
        let record = vault_record(self.store(), outpoint)?.ok_or(Refusal::Internal)?;
        let client = Self::client(self.store(), client_id)?.ok_or(Refusal::Internal)?;
        if record.state == "protected" {
            return Ok(status(outpoint, &record));
        }
        // The towers of the version the vault was made under: a change that applied a moment
        // ago may not be in the stored record yet, and its new towers must hear of it too.
        let compiled = self.vault_policy(&client, &record)?;
        // A change applied since the vault was made: the towers judge it by its own version,
        // named (left out otherwise, so a tower of an earlier release takes the request).
        let now = self.as_of_now(&client).unwrap_or_else(|_| client.clone());
        let version = compiled.policy().version;
        let named = (self.compiled(&now)?.policy().version != version).then_some(version);
        let missing: Vec<String> = compiled
            .policy()
            .towers
            .iter()
            .filter(|t| !acknowledged(&record, &t.name))
            .map(|t| t.name.clone())
            .collect();
        let lock = self.towers_lock(&client.id);
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        let nonce = self.tower_nonces(&client.id, compiled.policy().towers.len() as u64)?;
        let key = self.keys.auth_keypair(client.account);
        let reports = crate::towers::post_all(
            compiled.policy(),
            &key,
            "/v1/vaults",
            outpoint,
            &|i| {
                let mut reg = record.registration.clone();
                reg.nonce = nonce + i as u64;
                reg.policy_version = reg.policy_version.or(named);
                serde_json::to_vec(&reg).expect("json")
            },
            Some(&missing),
        );
        let all = reports.iter().all(|t| t.acknowledged);
        // Asked before the client's lock (below); without it, the versions stored.
        let tip = if all { self.tip().ok() } else { None };
        let deciding = self.decide(client_id);
        let store = self.store();
        let (mut latest, before) = vault_stored(store, outpoint)?.ok_or(Refusal::Internal)?;
        let first_attempt = latest.towers.is_empty();
        latest.towers = reports;
        let mut batch = Batch::default();
        if !all && first_attempt {
            batch.alarm(alarm(
                &client.id,
                "vault-unregistered",
                format!("vault {outpoint} is not registered with every tower yet; its funding is withheld until it is"),
            ));
        }
        if all {
            latest.state = "protected".into();
            batch.delete(kind::UNREGISTERED, outpoint);
            tracing::info!(client = %client.id, vault = %outpoint, "every tower acknowledged: vault protected");
            self.give_joined_towers(&mut batch, client_id, &compiled, &latest.registration, tip)?;
        }
        batch.expect(kind::VAULT, outpoint.to_owned(), Some(before)).put(
            kind::VAULT,
            outpoint.to_owned(),
            serde_json::to_string(&latest).expect("json"),
        );
        store.commit(&batch)?;
        drop(deciding);
        if all {
            // DESIGN §4's order: the towers hold the graph; now the one-time key goes.
            if let Ok(op) = OutPoint::from_str(outpoint) {
                self.ceremonies.lock().unwrap_or_else(|p| p.into_inner()).remove(&op);
            }
        }
        Ok(status(outpoint, &latest))
    }

    /// Consumes a request's nonce with nothing else (its effect lives in RAM, or was
    /// committed already), under its client's lock.
    fn consume_nonce_alone<T>(&self, caller: &Caller, req: &Signed<T>) -> Result<(), Refusal> {
        let _deciding = self.decide(&caller.client.id);
        Ok(self.store().commit(&Self::consume_nonce(self.store(), &caller.key, req)?)?)
    }

    /// The lock a client's requests to its towers are sent under: each tower takes a key's
    /// nonces in increasing order only, so they leave in the order they were numbered.
    pub(crate) fn towers_lock(&self, client: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
        let mut locks = self.tower_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(client.to_owned()).or_default().clone()
    }

    /// `n` consecutive nonces for the co-signer's requests to this client's towers (call it
    /// under [`Cosigner::towers_lock`]). They are reserved in the store a block at a time, so
    /// most requests write nothing for them; a restart skips what was reserved and unused
    /// (towers take gaps).
    pub(crate) fn tower_nonces(&self, client: &str, n: u64) -> Result<u64, Refusal> {
        const BLOCK: u64 = 4096;
        {
            let mut reserved = self.tower_nonce_blocks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((next, end)) = reserved.get_mut(client) {
                if *next + n <= *end {
                    let start = *next;
                    *next += n;
                    return Ok(start);
                }
            }
        }
        // A new block: only this client's towers' lock is held while it is committed.
        let _deciding = self.decide(client);
        let store = self.store();
        let (mut record, before) = Self::client_stored(store, client)?.ok_or(Refusal::Internal)?;
        // Never below the clock (as the parties' counters): a store restored from an older
        // backup would otherwise repeat nonces the towers have seen, and its orders would be
        // refused until retries walked past them.
        let start = record.tower_nonce.max(crate::service::now());
        record.tower_nonce = start + n.max(BLOCK);
        let mut batch = Batch::default();
        batch.expect(kind::CLIENT, client.to_owned(), Some(before)).put(
            kind::CLIENT,
            client.to_owned(),
            serde_json::to_string(&record).expect("json"),
        );
        store.commit(&batch)?;
        let mut reserved = self.tower_nonce_blocks.lock().unwrap_or_else(|p| p.into_inner());
        reserved.insert(client.to_owned(), (start + n, record.tower_nonce));
        Ok(start)
    }

    /// `GET /v1/vaults/{outpoint}`.
    pub fn vault_status(&self, caller: &Caller, outpoint: &str) -> Result<VaultStatus, Refusal> {
        match vault_record(self.store(), outpoint)? {
            Some(v) if v.client == caller.client.id => Ok(status(outpoint, &v)),
            _ => Err(Refusal::NotFound(format!("no vault {outpoint} of this client"))),
        }
    }

    /// Vaults committed but not yet acknowledged by every tower (after a restart): registers
    /// them again; alarms when one stays unprotected.
    pub fn retry_registrations(&self) {
        let pending = match self.store().list(kind::UNREGISTERED, "") {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = %e, "cannot list vaults to register");
                return;
            }
        };
        for (outpoint, client) in pending {
            // Alarmed once, at the first attempt; here only retried.
            match self.register_with_towers(&client, &outpoint) {
                Err(e) => {
                    tracing::warn!(%client, vault = %outpoint, error = %e.message(), "vault still not registered with every tower");
                }
                // Protected: this pass's commit dropped it from the retries already, unless an
                // earlier release's write made it so (its entry left behind).
                Ok(s) if s.state == "protected" => {
                    let mut done = Batch::default();
                    done.delete(kind::UNREGISTERED, outpoint);
                    if let Err(e) = self.store().commit(&done) {
                        tracing::warn!(%client, error = %e, "cannot drop a protected vault from the retries");
                    }
                }
                Ok(_) => {}
            }
        }
        // Ceremonies never completed: their one-time keys go.
        self.ceremonies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| c.started.elapsed() < CEREMONY_TTL);
    }
}

/// Indexes the vaults a store of an earlier release holds unacknowledged (it kept no
/// [`kind::UNREGISTERED`]), once: reads every vault a single time.
pub(crate) fn index_unregistered(store: &dyn Store) -> Result<(), StoreError> {
    crate::store::index_once(
        store,
        "unregistered-indexed",
        kind::VAULT,
        kind::UNREGISTERED,
        |outpoint, v: VaultRecord| (v.state != "protected").then(|| (outpoint.to_owned(), v.client)),
    )
}

fn acknowledged(record: &VaultRecord, tower: &str) -> bool {
    record.towers.iter().any(|t| t.name == tower && t.acknowledged)
}

fn status(outpoint: &str, v: &VaultRecord) -> VaultStatus {
    VaultStatus {
        vault_outpoint: outpoint.to_owned(),
        state: v.state.clone(),
        towers: v.towers.clone(),
        funding: (v.state == "protected").then(|| v.funding.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_tower::wire::VaultParams;

    fn vault(client: &str, state: &str) -> String {
        let params = VaultParams {
            index: 0,
            amount_sat: 1,
            kind: "standard".into(),
            owner_once: String::new(),
            cosigner_once: String::new(),
            vault_outpoint: String::new(),
        };
        let registration = RegisterVault {
            nonce: 0,
            policy_id: client.into(),
            vault: params,
            funding: None,
            unvault: String::new(),
            cancels: vec![],
            emergencies: vec![],
            unvault_emergencies: vec![],
            policy_version: None,
        };
        let record = VaultRecord {
            client: client.into(),
            registration,
            funding: String::new(),
            state: state.into(),
            towers: vec![],
            next_counter: 1,
            policy_id: String::new(),
            once_xpubs: None,
        };
        serde_json::to_string(&record).unwrap()
    }

    #[test]
    fn a_store_of_the_previous_release_gets_its_unregistered_vaults_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let mut before = Batch::default();
        // An unreadable record is skipped: it does not stop the start.
        before
            .put(kind::VAULT, "v1", vault("alice", "registering"))
            .put(kind::VAULT, "v2", vault("bob", "protected"))
            .put(kind::VAULT, "v4", "not json");
        store.commit(&before).unwrap();
        index_unregistered(&store).unwrap();
        assert_eq!(store.list(kind::UNREGISTERED, "").unwrap(), vec![("v1".to_owned(), "alice".to_owned())]);
        // Once: a vault unindexed since (none is, but by an earlier release's write) is not
        // looked for at the next start.
        let mut unindexed = Batch::default();
        unindexed.put(kind::VAULT, "v3", vault("carol", "registering"));
        store.commit(&unindexed).unwrap();
        index_unregistered(&store).unwrap();
        assert_eq!(store.list(kind::UNREGISTERED, "").unwrap().len(), 1);
    }
}
