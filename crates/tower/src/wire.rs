//! What clients send the tower and how it is authenticated.
//!
//! Every request is signed with BIP340 by one of the parties' `/2/0` auth keys from the
//! client's pinned policy, over [`request_digest`]: the tower's own public key (so one tower
//! cannot replay a request at another), the path, and the body. The signer's x-only key and
//! signature travel in the `x-vigil-key` and `x-vigil-signature` headers. A POST body carries
//! a `nonce` that must increase per signing key (replays are refused); a GET has no body and
//! signs the `x-vigil-time` header instead (unix seconds, accepted within
//! [`GET_VALIDITY_SECS`]).
//!
//! What parties sign for each other (approvals, panics, policy changes) is signed once for
//! every tower, each over its own tagged digest.

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::hashes::{sha256, Hash, HashEngine};
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{schnorr, Keypair, Message};

/// Domain separation for request signatures.
pub const REQUEST_TAG: &[u8] = b"vigil-tower/v2";

/// How far a signed GET's time may be from the tower's clock, seconds.
pub const GET_VALIDITY_SECS: u64 = 120;

/// The longest a panic may stay valid, blocks: guardians sign one for the emergency at hand.
pub const MAX_PANIC_WINDOW_BLOCKS: u32 = 144;

/// sha256 over a domain tag and `parts`, each length-prefixed.
fn tagged(tag: &[u8], parts: &[&[u8]]) -> Message {
    let mut engine = sha256::Hash::engine();
    engine.input(tag);
    for p in parts {
        engine.input(&(p.len() as u64).to_le_bytes());
        engine.input(p);
    }
    Message::from_digest(sha256::Hash::from_engine(engine).to_byte_array())
}

/// The digest a request to `tower` signs.
pub fn request_digest(tower: &XOnlyPublicKey, path: &str, body: &[u8]) -> Message {
    tagged(REQUEST_TAG, &[&tower.serialize(), path.as_bytes(), body])
}

/// Signs a request to `tower`: returns the headers' values (key, signature), hex.
pub fn sign_request(key: &Keypair, tower: &XOnlyPublicKey, path: &str, body: &[u8]) -> (String, String) {
    let sig = vigil_policy::secp().sign_schnorr(&request_digest(tower, path, body), key);
    (key.x_only_public_key().0.to_string(), sig.as_ref().to_lower_hex_string())
}

/// Checks a request signature.
pub fn verify_request(
    key: &XOnlyPublicKey,
    signature: &schnorr::Signature,
    tower: &XOnlyPublicKey,
    path: &str,
    body: &[u8],
) -> bool {
    vigil_policy::secp().verify_schnorr(signature, &request_digest(tower, path, body), key).is_ok()
}

/// The digest a tower's acknowledgement signs.
pub fn ack_digest(tower: &XOnlyPublicKey, subject: &str) -> Message {
    tagged(b"vigil-tower-ack/v2", &[&tower.serialize(), subject.as_bytes()])
}

/// A vault's parameters: enough for the tower to rebuild its graph from the pinned policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultParams {
    /// The vault index.
    pub index: u32,
    /// V's value, sat.
    pub amount_sat: u64,
    /// "standard" or "guarded".
    pub kind: String,
    /// The owner's one-time public key (x-only hex).
    pub owner_once: String,
    /// The co-signer's one-time public key.
    pub cosigner_once: String,
    /// V, as `txid:vout`.
    pub vault_outpoint: String,
}

/// `POST /v1/vaults`: register a vault's fully signed cancel/emergency set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVault {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client's id.
    pub policy_id: String,
    /// The vault.
    pub vault: VaultParams,
    /// V's funding transaction, signed, hex: needed while it is not yet on chain (the funding
    /// is broadcast once every tower acknowledged), so the tower can check it creates V from
    /// coins that exist.
    #[serde(default)]
    pub funding: Option<String>,
    /// U, signed, hex.
    pub unvault: String,
    /// C at every rung, signed, hex, cheapest first.
    pub cancels: Vec<String>,
    /// E at every rung.
    pub emergencies: Vec<String>,
    /// UE at every rung.
    pub unvault_emergencies: Vec<String>,
    /// The policy version the vault was made under, when not the pinned one (a vault made
    /// before a change, registered after it): its graph is that version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
}

/// A party's signature over something parties sign for each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySignature {
    /// The signer's auth key, x-only hex.
    pub key: String,
    /// BIP340 signature, hex.
    pub signature: String,
}

/// An approval to spend one unvault to one exact transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// V, as `txid:vout`.
    pub vault_outpoint: String,
    /// U's txid.
    pub unvault_txid: String,
    /// The approved spend's txid.
    pub spend_txid: String,
    /// The policy version it was approved under.
    pub policy_version: u32,
    /// Valid for unvaults confirmed at or below this height.
    pub expiry_height: u32,
    /// Increasing per vault.
    pub counter: u64,
}

impl Approval {
    /// What approvers sign.
    pub fn digest(&self) -> Message {
        let text = serde_json::to_vec(self).expect("serializable");
        tagged(b"vigil-approval/v1", &[&text])
    }
}

/// `POST /v1/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterApproval {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client's id: it must be the vault's.
    pub policy_id: String,
    /// The approval.
    pub approval: Approval,
    /// Co-signer (and guardian) signatures over it.
    pub signatures: Vec<KeySignature>,
    /// The co-signer's word that the spend was asked under duress: it is never signed, so the
    /// tower cancels the unvault late even once the quiet lockdown ended. Outside the approval
    /// (which the owner's device holds), sent only when set, and only ever makes the tower
    /// cancel: taken from whoever submits it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duress: bool,
}

/// A guardians' decision to sweep a client's vaults to the deep vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panic {
    /// The client.
    pub policy_id: String,
    /// Fresh for each panic (32 random bytes, hex): a tower acts on each id once.
    pub id: String,
    /// Valid up to this height; at most [`MAX_PANIC_WINDOW_BLOCKS`] above the tip.
    pub not_after_height: u32,
}

impl Panic {
    /// What guardians sign.
    pub fn digest(&self) -> Message {
        tagged(
            b"vigil-panic/v1",
            &[self.policy_id.as_bytes(), self.id.as_bytes(), &self.not_after_height.to_le_bytes()],
        )
    }
}

/// `POST /v1/panic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicRequest {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The decision.
    pub panic: Panic,
    /// The guardian quorum's signatures over [`Panic::digest`].
    pub signatures: Vec<KeySignature>,
}

/// `POST /v1/policy`: a new version of a client's policy, signed by its guardian quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePolicy {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client's id.
    pub policy_id: String,
    /// The new policy file's text.
    pub policy: String,
    /// Guardian signatures over [`policy_change_digest`].
    pub signatures: Vec<KeySignature>,
    /// The height the co-signer applies it from (its wait may be longer than a tower's): a
    /// change that does not only tighten applies at the later of this and the tower's own
    /// wait, so no tower applies it before the co-signer does. Taken from the co-signer only
    /// (the guardians sign the file, not this height).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_height: Option<u32>,
}

/// What guardians sign to change a client's policy: the client and the new file's sha256.
pub fn policy_change_digest(client: &str, policy_text: &str) -> Message {
    tagged(
        b"vigil-policy-change/v1",
        &[client.as_bytes(), sha256::Hash::hash(policy_text.as_bytes()).as_byte_array()],
    )
}

/// `POST /v1/clients`: a client pins its policy with a single-use token from the tower's
/// operator (`vigil tower token`), signed by one of the policy's owner or co-signer keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollClient {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The token (64 hex characters).
    pub token: String,
    /// The policy file's text: its sha256 is the client's id.
    pub policy: String,
    /// The changes the guardians' quorum signed that applied since, oldest first: a tower a
    /// change added is enrolled at the version in force, under the client's first id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<SignedPolicy>,
}

/// A version of a client's policy with the guardian quorum's signatures over
/// [`policy_change_digest`] (the quorum of the version before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicy {
    /// The policy file's text.
    pub policy: String,
    /// The guardians' signatures.
    pub signatures: Vec<KeySignature>,
}

/// The longest lockdown a tower takes, blocks (five weeks): a duress lockdown lasts four.
pub const MAX_LOCKDOWN_BLOCKS: u32 = 5 * 1008;

/// `POST /v1/lockdown`: any party of the client (owner, co-signer, guardian) freezes it at
/// once: every unvault is cancelled, approved or not, until `until_height`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockdownRequest {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client.
    pub policy_id: String,
    /// It holds below this height (a lockdown only grows).
    pub until_height: u32,
    /// Cancel approved unvaults late, just before their spend leaf opens, not at once (the
    /// co-signer's answer to a duress code: nothing shows on chain minutes after it).
    pub quiet: bool,
}

/// `POST /v1/lockdown/lift`: the guardian quorum lifts a lockdown early, after the
/// governance wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftLockdown {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client.
    pub policy_id: String,
    /// From this height the lockdown no longer holds: at least the governance wait ahead.
    pub lift_at_height: u32,
    /// The end of the lockdown it lifts, as the guardians signed it: a tower whose lockdown
    /// ends later was locked down again since, and that newer lockdown is not lifted.
    pub lockdown_until: u32,
    /// The guardian quorum's signatures over [`lift_digest`].
    pub signatures: Vec<KeySignature>,
}

/// What guardians sign to lift a client's lockdown at a height.
pub fn lift_digest(client: &str, lift_at_height: u32, lockdown_until: u32) -> Message {
    tagged(
        b"vigil-lockdown-lift/v2",
        &[client.as_bytes(), &lift_at_height.to_le_bytes(), &lockdown_until.to_le_bytes()],
    )
}

/// What the tower answers to a registration: a signed acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// What was acknowledged (the vault outpoint, or the approval's unvault txid).
    pub subject: String,
    /// The tower's key, x-only hex.
    pub tower_key: String,
    /// BIP340 signature over [`ack_digest`], hex.
    pub signature: String,
}

/// One alarm of a client's feed (`GET /v1/clients/{id}/alarms`), as the webhooks get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmEntry {
    /// The tower's sequence number: later alarms have larger ones.
    pub id: i64,
    /// What happened (`unvault-cancelled`, ...).
    pub kind: String,
    /// The vault's outpoint, for an alarm about one vault.
    pub vault: Option<String>,
    /// The client's policy id, for an alarm about the client but no one vault of it (a
    /// policy change, a lockdown, a panic). Absent from towers before schema 3.
    #[serde(default)]
    pub client: Option<String>,
    /// For humans.
    pub message: String,
}

/// An error the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What is wrong, for a human.
    pub error: String,
}

impl RegisterVault {
    /// The registration of a signed vault graph for client `policy_id`, with its funding.
    pub fn new(
        policy_id: &str,
        nonce: u64,
        plan: &vigil_policy::VaultPlan,
        graph: &vigil_policy::SignedGraph,
        funding: Option<&vigil_policy::bitcoin::Transaction>,
    ) -> RegisterVault {
        use vigil_policy::bitcoin::consensus::encode::serialize_hex;
        let g = graph.graph();
        let all = |set: &[vigil_policy::PresignedTx]| set.iter().map(|p| serialize_hex(&p.tx)).collect();
        RegisterVault {
            nonce,
            policy_id: policy_id.to_owned(),
            vault: VaultParams {
                index: plan.index,
                amount_sat: plan.amount.to_sat(),
                kind: plan.kind.name().into(),
                owner_once: plan.owner_once.to_string(),
                cosigner_once: plan.cosigner_once.to_string(),
                vault_outpoint: g.vault_outpoint.to_string(),
            },
            funding: funding.map(serialize_hex),
            unvault: serialize_hex(graph.unvault()),
            cancels: all(&g.cancels),
            emergencies: all(&g.emergencies),
            unvault_emergencies: all(&g.unvault_emergencies),
            policy_version: None,
        }
    }
}

/// A party's signature over `digest`.
pub fn sign(digest: &Message, key: &Keypair) -> KeySignature {
    let sig = vigil_policy::secp().sign_schnorr(digest, key);
    KeySignature { key: key.x_only_public_key().0.to_string(), signature: sig.as_ref().to_lower_hex_string() }
}
