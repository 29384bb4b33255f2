//! What clients (owner, guardians) send the co-signer, what it answers, and how requests are
//! authenticated.
//!
//! A request names its client in `x-vigil-client` (the policy's id), and is signed with BIP340
//! by a party's `/2/0` auth key from that policy (`x-vigil-key`, `x-vigil-signature`) over the
//! same digest towers use ([`vigil_tower::wire::request_digest`]), bound to the co-signer's own
//! auth key *for that client*: a request for one client, or for a tower, verifies nowhere
//! else. A POST body is a [`Signed`] envelope: a nonce above the last one from that key (kept
//! across restarts) and the time it was made (refused more than [`MAX_AGE_SECS`] away from the
//! co-signer's clock). A GET signs its `x-vigil-time` header instead.

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::hashes::{sha256, Hash, HashEngine};
use vigil_policy::bitcoin::key::{Keypair, XOnlyPublicKey};
use vigil_policy::bitcoin::secp256k1::{ecdh, PublicKey};

pub use vigil_tower::wire::{sign, sign_request, Approval, KeySignature, Panic};

/// How far a request's time may be from the co-signer's clock, seconds.
pub const MAX_AGE_SECS: u64 = 120;

/// The size of every heartbeat on the wire: nonce (24) + token (32) + tag (16).
pub const HEARTBEAT_LEN: usize = 72;

/// A signed POST body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    /// Above the last one from the signing key.
    pub nonce: u64,
    /// Unix seconds when it was made.
    pub time: u64,
    /// The request.
    pub request: T,
}

/// `POST /v1/enroll`: a single-use token from the operator buys an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The token (`vigil cosigner token`).
    pub token: String,
}

/// What an enrollment answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The account number under the co-signer's master.
    pub account: u32,
    /// The policy's `[cosigner] key`: `[fp/48h/coinh/accounth/2h]xpub`.
    pub cosigner_key: String,
    /// The co-signer's auth key for this account (x-only hex): requests are bound to it.
    pub auth_key: String,
}

/// `POST /v1/clients`: pins the final policy, signed by one of its owner keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinPolicy {
    /// The token the account was enrolled with (it is used up now).
    pub token: String,
    /// The policy file's text.
    pub policy: String,
    /// sha256 of the heartbeat token a real unlock sends, hex.
    pub heartbeat_real: String,
    /// sha256 of the heartbeat token a duress unlock sends, hex.
    pub heartbeat_duress: String,
    /// Where the client's alarms are e-mailed: its guardians' addresses.
    #[serde(default)]
    pub alarm_emails: Vec<String>,
    /// Where the client's alarms are posted (JSON): its guardians' webhooks.
    #[serde(default)]
    pub alarm_webhooks: Vec<String>,
}

/// What pinning answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinAnswer {
    /// The client's id: the policy's sha256.
    pub policy_id: String,
}

/// An intake coin offered to fund a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coin {
    /// `txid:vout`.
    pub outpoint: String,
    /// The intake index it was received on.
    pub intake_index: u32,
    /// On the intake's change branch (an earlier funding's change, format 2). Left out when
    /// false, so a request is what an earlier release sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub change: bool,
}

/// `POST /v1/vaults`: the start of a vault ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginVault {
    /// The vault's derivation index.
    pub index: u32,
    /// V's value, sat.
    pub amount_sat: u64,
    /// "standard" or "guarded".
    pub kind: String,
    /// The owner's one-time public key (x-only hex).
    pub owner_once: String,
    /// The extended public key it is the child `/0/index` of, kept with the vault so that a
    /// restored wallet's hardware signer can register the vault again (ADR 0005).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_once_xpub: Option<String>,
    /// The coins funding it (segwit intake coins of this client, unspent).
    pub coins: Vec<Coin>,
    /// The intake index the change goes to.
    pub change_index: u32,
    /// The change goes to the intake's change branch (format 2), where the owner's hardware
    /// signer recognises it as its own, not to a receive address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub change_branch: bool,
    /// The funding's feerate, sat/vB.
    pub funding_sat_per_vb: u64,
}

/// The co-signer's half of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultBegun {
    /// V.
    pub vault_outpoint: String,
    /// The funding's txid (the owner checks it built the same).
    pub funding_txid: String,
    /// The co-signer's one-time public key.
    pub cosigner_once: String,
    /// The extended public key it is the child `/0/index` of (ADR 0005).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosigner_once_xpub: Option<String>,
    /// Its signature of every graph transaction, canonical order, hex.
    pub signatures: Vec<String>,
}

/// `POST /v1/vaults/complete`: the owner's half; the co-signer registers the vault with
/// every tower and releases its funding signature only once all acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteVault {
    /// V.
    pub vault_outpoint: String,
    /// The owner's one-time key's signatures, canonical order, hex.
    pub owner_signatures: Vec<String>,
    /// The funding PSBT signed by the owner (base64).
    pub funding_psbt: String,
}

/// A tower's part in a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerReport {
    /// Its name in the policy.
    pub name: String,
    /// Whether it acknowledged (durably).
    pub acknowledged: bool,
    /// Why it refused the request (a 4xx other than 401), when it did: an order kept being
    /// refused is settled after a while (unsigned, a refusal alone settles nothing at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What came back instead of an acknowledgement (its answer, or why none came).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/towers`: a tower of the policy in force (a change added it) takes the client,
/// with a single-use token from its operator (`vigil tower token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTower {
    /// Its name in the policy.
    pub tower: String,
    /// The token, 64 hex characters.
    pub token: String,
}

/// What the tower took so far; the co-signer keeps sending the rest until it has it all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerEnrolled {
    /// The tower.
    pub tower: String,
    /// Whether it took the client.
    pub enrolled: bool,
    /// What it answered instead, when it did not (a token it does not know, or no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Live vaults it is given.
    pub vaults: u32,
    /// Their approvals still open.
    pub approvals: u32,
    /// Live vaults it is not given, which stay with the towers watching them: an approved
    /// unvault already out (the tower would cancel it at first sight, before its approval).
    pub kept_elsewhere: Vec<String>,
    /// Whether it acknowledged everything it was given.
    pub complete: bool,
}

/// A vault as the co-signer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultStatus {
    /// V.
    pub vault_outpoint: String,
    /// "registering" (some tower has not acknowledged) or "protected".
    pub state: String,
    /// Each tower.
    pub towers: Vec<TowerReport>,
    /// The fully signed funding, hex, once protected: the owner broadcasts it.
    pub funding: Option<String>,
}

/// `POST /v1/spends`: spend a vault's unvault output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendRequest {
    /// V.
    pub vault_outpoint: String,
    /// The spend of U's output, signed by the owner (base64 PSBT).
    pub psbt: String,
}

/// A policy change the guardians' quorum signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    /// The new policy file.
    pub policy: String,
    /// The guardians' signatures over `policy_change_digest(client id, policy)`.
    pub signatures: Vec<KeySignature>,
    /// The tip when the quorum signed it.
    pub signed_height: u32,
    /// It applies from this height (`signed_height` for a change that only tightens).
    pub effective_height: u32,
}

/// `GET /v1/policy/changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanges {
    /// The co-signer's tip.
    pub tip: u32,
    /// Every change signed, oldest first.
    pub changes: Vec<SignedChange>,
    /// The version the co-signer judges by now: where the changes must lead (0: not said).
    #[serde(default)]
    pub current_version: u32,
}

/// One alarm of a client's feed (`GET /v1/alarms`), as the webhooks get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignerAlarm {
    /// The co-signer's sequence number: later alarms have larger ones.
    pub id: i64,
    /// What happened (`duress`, `lockdown`, ...).
    pub kind: String,
    /// For humans.
    pub message: String,
    /// When it was raised, Unix seconds.
    pub time: u64,
    /// A panic waiting for more guardians: what they sign to join it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<ProposedPanic>,
    /// A policy version waiting for more guardians: its text (TOML), which they sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A panic the quorum has not signed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedPanic {
    /// Its id.
    pub id: String,
    /// The last block it may act in.
    pub not_after_height: u32,
    /// The guardians' signatures so far (over [`Panic::digest`]).
    #[serde(default)]
    pub signatures: Vec<KeySignature>,
}

/// A spend request as the co-signer answers it. Its shape and size do not depend on whether
/// the client is under duress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendStatus {
    /// The request's number.
    pub id: u64,
    /// The vault's parameters, from which a guardian rebuilds its unvault with its own copy
    /// of the policy (and so checks what it signs without trusting this description).
    pub vault: vigil_tower::wire::VaultParams,
    /// "approved", "waiting" (for guardians), "denied", or "expired" (it waited for its
    /// guardians past its approval's expiry, or lapsed unused and a later request of its
    /// vault took its place).
    pub state: String,
    /// V.
    pub vault_outpoint: String,
    /// The exact spend.
    pub spend_txid: String,
    /// What leaves the vault, sat.
    pub amount_sat: u64,
    /// Where it goes.
    pub destinations: Vec<String>,
    /// The spend itself as a PSBT (base64), with the signatures gathered so far: a guardian
    /// checks amount and destination from it and signs it for a guarded vault.
    pub psbt: String,
    /// The policy version it is judged under.
    pub policy_version: u32,
    /// Guardian approvals so far, and how many are needed (0 when none are).
    pub approvals: u32,
    /// How many guardian approvals it needs.
    pub approvals_needed: u32,
    /// Blocks from the unvault's confirmation until the spend can be signed.
    pub spendable_after_blocks: u32,
    /// The approval's terms (what guardians sign).
    pub approval: Approval,
    /// Whether it was requested while the client was locked down (guardians see it).
    pub under_lockdown: bool,
    /// Each tower, once approved.
    pub towers: Vec<TowerReport>,
}

/// `POST /v1/spends/{id}/vote`: a guardian's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// Approve, or deny (final for the request).
    pub approve: bool,
    /// The guardian's signature over the approval's digest (hex), when approving.
    #[serde(default)]
    pub approval_signature: Option<String>,
    /// For a guarded vault: the spend PSBT signed with the guardian's on-chain key (base64).
    #[serde(default)]
    pub psbt: Option<String>,
}

/// `POST /v1/spends/{id}/sign`: after DELAY, the co-signer's signature of the approved spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignSpend {}

/// The signed spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSpend {
    /// The final transaction, hex.
    pub tx: String,
}

/// `POST /v1/lockdown`: freeze the client now, for `blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockdown {
    /// How long, blocks (6 an hour).
    pub blocks: u32,
    /// The owner also asks the guardians for a panic (every vault swept to the deep vault):
    /// they are alarmed to sign one (`vigil guardian panic`).
    #[serde(default)]
    pub sweep: bool,
}

/// `POST /v1/lockdown/lift`: a guardian's vote to lift the lockdown early, at a height at
/// least the governance wait ahead; the first vote proposes the height, the others sign the
/// same one. With the quorum, the co-signer lifts it then, and so do the towers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftLockdown {
    /// From this height the lockdown no longer holds.
    pub lift_at_height: u32,
    /// The end of the lockdown at hand (the plain one's or duress's, the later, a lift the
    /// quorum signed before counted): a lift is for that lockdown only.
    pub lockdown_until: u32,
    /// The guardian's signature over [`vigil_tower::wire::lift_digest`] (hex).
    pub signature: String,
}

/// `GET /v1/lockdown`, to a guardian only (the owner's device must not learn of a duress
/// lockdown): the lockdown at hand and the guardians' lift of it, what a guardian needs to
/// sign a [`LiftLockdown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdownState {
    /// The co-signer's tip.
    pub tip: u32,
    /// Whether a lockdown holds at the tip (the plain one, a duress one, or both).
    pub locked: bool,
    /// Whether the one holding is a duress lockdown: the owner typed the duress code.
    pub duress: bool,
    /// Where the lockdown at hand ends, as a lift names it: the later of the plain one's and
    /// the duress one's, a lift the quorum signed counted.
    pub lockdown_until: u32,
    /// Where the guardians' quorum ends it (0: they have not signed its lift).
    pub lifted_at: u32,
    /// The height a guardian proposed to lift it at, for the others to sign (0: none, or
    /// one the chain came too close to before the quorum signed).
    pub lift_proposed: u32,
    /// Guardians of the policy in force who signed that proposal.
    pub signatures: u32,
    /// The quorum.
    pub needed: u32,
    /// The co-signer's governance wait: a proposal is void once the chain is within it of
    /// the proposed height before the quorum signed.
    pub governance_delay_blocks: u32,
    /// The lowest height a new proposal may name: the governance wait and its slack ahead,
    /// and no lower than a lift the quorum signed before.
    pub earliest_lift: u32,
}

/// `POST /v1/panic`: a guardian hands in the quorum's decision; the co-signer relays it to
/// every tower and says which acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicOrder {
    /// The decision (a fresh id, a window).
    pub panic: Panic,
    /// The guardian quorum's signatures over [`Panic::digest`].
    pub signatures: Vec<KeySignature>,
}

/// A panic's progress: the guardians who signed it, and once the quorum did, which towers
/// acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicRelayed {
    /// Guardians who signed so far.
    pub approvals: u32,
    /// How many must.
    pub needed: u32,
    /// Each tower (empty until the quorum signed).
    pub towers: Vec<TowerReport>,
    /// The quorum's signatures, once it signed: the guardian hands the panic to every tower
    /// itself too (a compromised co-signer could hold it back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<KeySignature>,
}

/// A lockdown as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdownStatus {
    /// Spends and loosening are refused below this height.
    pub until_height: u32,
    /// In a guardian's answer only, while the owner is under duress: the lockdown is kept
    /// quiet, and the guardian tells the towers so too (a tower the duress order has not
    /// reached yet would take a plain one, cancel at once and show it). Never in an answer
    /// the owner's device reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
}

/// `POST /v1/heartbeat`: sent once by every unlock of the owner's client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// [`seal_heartbeat`]'s output, hex: always [`HEARTBEAT_LEN`] bytes.
    pub sealed: String,
}

/// What every heartbeat is answered, whatever it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Always true.
    pub ok: bool,
}

/// The key a heartbeat is sealed under: both sides derive it by ECDH from their auth keys
/// (the x coordinate only, so x-only keys' parity does not matter).
pub fn heartbeat_key(mine: &Keypair, theirs: &XOnlyPublicKey) -> zeroize::Zeroizing<[u8; 32]> {
    let point = PublicKey::from_x_only_public_key(*theirs, vigil_policy::bitcoin::secp256k1::Parity::Even);
    let mut secret = mine.secret_key();
    let shared = zeroize::Zeroizing::new(ecdh::shared_secret_point(&point, &secret));
    secret.non_secure_erase();
    let mut engine = sha256::Hash::engine();
    engine.input(b"vigil-heartbeat/v1");
    engine.input(&shared[..32]);
    zeroize::Zeroizing::new(sha256::Hash::from_engine(engine).to_byte_array())
}

/// Seals a 32-byte heartbeat token for the co-signer.
pub fn seal_heartbeat(key: &[u8; 32], token: &[u8; 32]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    use vigil_policy::bitcoin::secp256k1::rand::RngCore;
    let mut nonce = [0u8; 24];
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let mut out = nonce.to_vec();
    out.extend(cipher.encrypt((&nonce).into(), &token[..]).expect("in-memory encryption"));
    out
}

/// Opens a heartbeat; `None` if it is not one sealed under `key`.
pub fn open_heartbeat(key: &[u8; 32], sealed: &[u8]) -> Option<[u8; 32]> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    if sealed.len() != HEARTBEAT_LEN {
        return None;
    }
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let plain = cipher.decrypt(sealed[..24].into(), &sealed[24..]).ok()?;
    plain.try_into().ok()
}

/// sha256 of a heartbeat token, hex: what the co-signer keeps.
pub fn token_hash(token: &[u8]) -> String {
    sha256::Hash::hash(token).to_string()
}

/// `POST /v1/policy`: a new version of the client's policy, signed by its guardian quorum
/// over [`vigil_tower::wire::policy_change_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// The new policy file.
    pub policy: String,
    /// The guardians' signatures.
    pub signatures: Vec<KeySignature>,
}

/// What a policy change does (once its quorum signed; before, who signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChangeStatus {
    /// Guardians who signed so far.
    pub approvals: u32,
    /// How many must.
    pub needed: u32,
    /// Its version.
    pub version: u32,
    /// It applies from this height (now, for a change that only tightens); 0 while the
    /// quorum has not signed.
    pub effective_height: u32,
    /// Each tower told.
    pub towers: Vec<TowerReport>,
}

/// `POST /v1/deep-vault/sign`: the deep vault's fast path. A PSBT spending deep-vault coins of
/// this client, already signed on the fast leaf by the backup key and every guardian; the
/// co-signer adds its signature to that leaf and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepVaultSpend {
    /// The PSBT, base64.
    pub psbt: String,
}

/// The PSBT with the co-signer's signatures added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepVaultSigned {
    /// The PSBT, base64.
    pub psbt: String,
}

/// `POST /v1/restore`: the owner's wallet rebuilt on a new device (`vigil init --restore`):
/// the new keystore's heartbeat hashes replace the old ones (the old device's unlock code
/// stops counting; its duress code still locks the client down), and the guardians are
/// alarmed, whichever code the new device will be opened with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    /// sha256 of the new real heartbeat token, hex.
    pub heartbeat_real: String,
    /// sha256 of the new duress heartbeat token, hex.
    pub heartbeat_duress: String,
}

/// `POST /v1/restore/confirm`: a guardian confirms the owner's restore (the request's own
/// signature and nonce are the vote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRestore {
    /// The restore confirmed (its number, [`RestoreState::restore`]): a later one needs a
    /// confirmation of its own.
    pub restore: u32,
}

/// `GET /v1/restore`: the last restore of the owner's wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    /// Restores so far (0: never restored).
    pub restore: u32,
    /// The tip when it was made.
    pub restored_at_height: u32,
    /// Vault spends wait for the guardians until the quorum confirms it.
    pub unconfirmed: bool,
    /// Guardians who confirmed it so far.
    pub confirmations: u32,
    /// The quorum.
    pub needed: u32,
}

/// The answer to [`ConfirmRestore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreConfirmation {
    /// Guardians who confirmed so far.
    pub confirmations: u32,
    /// The quorum.
    pub needed: u32,
    /// Whether vault spends still wait for the guardians.
    pub held: bool,
}

/// `POST /v1/restore/policy`: a lost device's owner, holding only the recovery phrase and the
/// policy id's first 16 hex characters written at setup, asks for the pinned policy. Signed
/// by the owner's request key over [`PolicyFetch::digest`] (no headers: without the policy
/// the device knows neither the client's id nor the co-signer's key), and fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFetch {
    /// The policy id's first 16 hex characters.
    pub id_prefix: String,
    /// The owner's request key (the policy's `[owner] auth_keys`), x-only hex.
    pub owner_key: String,
    /// Unix seconds.
    pub time: u64,
    /// The owner key's signature over the digest, hex.
    pub signature: String,
}

impl PolicyFetch {
    /// A fetch signed now by `key`.
    pub fn new(id_prefix: &str, key: &Keypair, time: u64) -> PolicyFetch {
        let digest = Self::digest(id_prefix, time);
        let sig = vigil_policy::secp().sign_schnorr(&digest, key);
        PolicyFetch {
            id_prefix: id_prefix.to_owned(),
            owner_key: key.x_only_public_key().0.to_string(),
            time,
            signature: sig.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// What the owner's key signs.
    pub fn digest(id_prefix: &str, time: u64) -> vigil_policy::bitcoin::secp256k1::Message {
        let mut engine = sha256::Hash::engine();
        for part in [b"vigil-policy-fetch/v1".as_slice(), id_prefix.as_bytes(), &time.to_le_bytes()] {
            engine.input(&(part.len() as u64).to_le_bytes());
            engine.input(part);
        }
        vigil_policy::bitcoin::secp256k1::Message::from_digest(
            sha256::Hash::from_engine(engine).to_byte_array(),
        )
    }
}

/// The answer to a [`PolicyFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedPolicy {
    /// The client's id (the sha256 of the policy it was pinned with).
    pub client: String,
    /// The policy as it was pinned (the client's id names it), not as changed since: the
    /// owner's wallet follows the guardians' changes from it.
    pub policy: String,
}

/// What the co-signer holds of the client's vaults, to rebuild the wallet's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// Every vault the co-signer made with this client, as the towers hold it.
    pub vaults: Vec<RestoredVault>,
    /// This restore's number: the owner tells the guardians, who confirm only that one (a
    /// restore made since, by whoever else holds the phrase, has another).
    #[serde(default)]
    pub restore: u32,
}

/// One vault, from the co-signer's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredVault {
    /// Its parameters (index, amount, kind, one-time keys, V).
    pub vault: vigil_tower::wire::VaultParams,
    /// V's funding, signed, hex: only once every tower holds the vault (DESIGN §4's order).
    pub funding: Option<String>,
    /// U, signed, hex.
    pub unvault: String,
    /// "registering" or "protected".
    pub state: String,
    /// The one-time keys' extended keys (the owner's, then the co-signer's), when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_xpubs: Option<[String; 2]>,
}
