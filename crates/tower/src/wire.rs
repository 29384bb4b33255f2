//! What clients send the tower and how it is authenticated.
//!
//! Every request body is JSON with a `nonce` that must increase per signing key (replays are
//! refused), signed with BIP340 over `sha256("vigil-tower/v1" || path || body)`; the signer's
//! x-only key and signature travel in the `x-vigil-key` and `x-vigil-signature` headers. Keys
//! are the parties' `/2/0` auth keys from the client's pinned policy.

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::hashes::{sha256, Hash, HashEngine};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{schnorr, Keypair, Message, Secp256k1};

/// Domain separation for request signatures.
pub const REQUEST_TAG: &[u8] = b"vigil-tower/v1";

/// The digest a request signature commits to.
pub fn request_digest(path: &str, body: &[u8]) -> Message {
    let mut engine = sha256::Hash::engine();
    engine.input(REQUEST_TAG);
    engine.input(path.as_bytes());
    engine.input(&[0]);
    engine.input(body);
    Message::from_digest(sha256::Hash::from_engine(engine).to_byte_array())
}

/// Signs a request: returns the headers' values (key, signature), hex.
pub fn sign_request(key: &Keypair, path: &str, body: &[u8]) -> (String, String) {
    let secp = Secp256k1::new();
    let sig = secp.sign_schnorr(&request_digest(path, body), key);
    (key.x_only_public_key().0.to_string(), hex(sig.as_ref()))
}

/// Checks a request signature.
pub fn verify_request(key: &XOnlyPublicKey, signature: &schnorr::Signature, path: &str, body: &[u8]) -> bool {
    Secp256k1::verification_only().verify_schnorr(signature, &request_digest(path, body), key).is_ok()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex, or `None`.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A vault's parameters: enough for the tower to rebuild its graph from the pinned policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// sha256 of the client's policy file, as pinned in the tower's config.
    pub policy_id: String,
    /// The vault.
    pub vault: VaultParams,
    /// U, signed, hex.
    pub unvault: String,
    /// C at every rung, signed, hex, cheapest first.
    pub cancels: Vec<String>,
    /// E at every rung.
    pub emergencies: Vec<String>,
    /// UE at every rung.
    pub unvault_emergencies: Vec<String>,
}

/// A co-signer's (and for guarded vaults the guardians') signature over an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    /// The signer's auth key, x-only hex.
    pub key: String,
    /// BIP340 signature over [`Approval::digest`], hex.
    pub signature: String,
}

/// An approval to spend one unvault to one exact transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        request_digest("approval", &text)
    }
}

/// `POST /v1/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterApproval {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client's policy.
    pub policy_id: String,
    /// The approval.
    pub approval: Approval,
    /// Co-signer (and guardian) signatures over it.
    pub signatures: Vec<KeySignature>,
}

/// What the tower answers to a registration: a signed acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// What was acknowledged (the vault outpoint, or the approval's unvault txid).
    pub subject: String,
    /// The tower's key, x-only hex.
    pub tower_key: String,
    /// BIP340 signature over `request_digest("ack", subject)`, hex.
    pub signature: String,
}

/// An error the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What is wrong, for a human.
    pub error: String,
}

impl RegisterVault {
    /// The registration of a signed vault graph under `policy_id`.
    pub fn new(
        policy_id: &str,
        nonce: u64,
        plan: &vigil_policy::VaultPlan,
        graph: &vigil_policy::SignedGraph,
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
                kind: match plan.kind {
                    vigil_policy::VaultKind::Standard => "standard".into(),
                    vigil_policy::VaultKind::Guarded => "guarded".into(),
                },
                owner_once: plan.owner_once.to_string(),
                cosigner_once: plan.cosigner_once.to_string(),
                vault_outpoint: g.vault_outpoint.to_string(),
            },
            unvault: serialize_hex(graph.unvault()),
            cancels: all(&g.cancels),
            emergencies: all(&g.emergencies),
            unvault_emergencies: all(&g.unvault_emergencies),
        }
    }
}

/// Signs an approval with a party's auth key.
pub fn sign_approval(approval: &Approval, key: &Keypair) -> KeySignature {
    let sig = Secp256k1::new().sign_schnorr(&approval.digest(), key);
    KeySignature { key: key.x_only_public_key().0.to_string(), signature: hex(sig.as_ref()) }
}

/// Signs a panic for `policy_id` with a guardian's auth key.
pub fn sign_panic(policy_id: &str, key: &Keypair) -> KeySignature {
    let sig = Secp256k1::new().sign_schnorr(&request_digest("panic", policy_id.as_bytes()), key);
    KeySignature { key: key.x_only_public_key().0.to_string(), signature: hex(sig.as_ref()) }
}

/// `POST /v1/policy`: a new version of a client's policy, signed by its guardian quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePolicy {
    /// Increasing per signing key.
    pub nonce: u64,
    /// The client (its original policy id).
    pub policy_id: String,
    /// The new policy file's text.
    pub policy: String,
    /// Guardian signatures over [`policy_change_digest`].
    pub signatures: Vec<KeySignature>,
}

/// What guardians sign to change a policy: the new file's sha256.
pub fn policy_change_digest(policy_text: &str) -> Message {
    request_digest("policy", sha256::Hash::hash(policy_text.as_bytes()).as_byte_array())
}

/// Signs a policy change with a guardian's auth key.
pub fn sign_policy_change(policy_text: &str, key: &Keypair) -> KeySignature {
    let sig = Secp256k1::new().sign_schnorr(&policy_change_digest(policy_text), key);
    KeySignature { key: key.x_only_public_key().0.to_string(), signature: hex(sig.as_ref()) }
}
