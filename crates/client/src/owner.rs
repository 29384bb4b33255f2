//! The owner's keys on the device: made from BIP-39 phrases, sealed in one keystore that opens
//! with the real code or the duress code (`vigil_keystore::seal_two`).
//!
//! Both slots hold the same record: the allowance key (what a coerced owner gives up: it
//! really spends), the key that signs requests to the co-signer and the towers, and a
//! heartbeat token; the real slot holds the real token, the duress slot the duress one. The
//! tokens are drawn at random, so nothing on the device, the phrases included, says which
//! slot a code opened: only the co-signer, which pinned both tokens' hashes, can tell.
//! [`Unlocked`] has no way to say which code opened it, so the code that runs after an
//! unlock is the same for both.
//!
//! The owner's *vault* key is not in the keystore at all. Any vault key the device could
//! produce under the duress code could be checked against the policy's public key, and a
//! decoy that fails that check gives the duress code away. So the vault key comes from the
//! recovery phrase, typed when a vault is made or spent ([`VaultKey::from_phrase`]), or
//! from a hardware signer; the same prompt under either code. It alone moves nothing: every
//! vault path also needs the co-signer (which refuses under duress) or the guardians.
//!
//! Paths under the owner's master (the phrase's seed), all hardened:
//!
//! | key | path |
//! | --- | --- |
//! | vault key (the policy's `[owner] keys`) | `m/48'/coin'/0'/2'` (BIP-48, as the example's) |
//! | allowance (hot) wallet | `m/86'/coin'/0'` (BIP-86) |
//! | request-signing key (the policy's `[owner] auth_keys`) | `m/7420'/coin'/0'` |
//!
//! The allowance and auth keys are hardened children, so neither yields the vault key (a
//! non-hardened auth key would: see `PolicyKey::auth_key`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use vigil_keystore::{KdfParams, KeystoreError};
use vigil_policy::bitcoin::bip32::{DerivationPath, Fingerprint, Xpriv, Xpub};
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::key::{Keypair, PrivateKey};
use vigil_policy::bitcoin::psbt::{GetKey, KeyRequest, Psbt};
use vigil_policy::bitcoin::secp256k1::{rand::RngCore, Secp256k1, SecretKey, Signing};
use vigil_policy::bitcoin::{Network, NetworkKind};
use zeroize::Zeroizing;

/// The keystore's file name in the data directory.
pub const KEYSTORE_FILE: &str = "keystore";
/// The copy made when the keystore was written, kept if the keystore is ever damaged.
pub const KEYSTORE_BACKUP_FILE: &str = "keystore.backup";
/// The wrong-code counter (fixed size, rewritten by every unlock attempt).
pub const UNLOCK_STATE_FILE: &str = "unlock.state";
/// Wrong codes allowed before the back-off starts.
pub const FREE_ATTEMPTS: u32 = 3;
/// The longest back-off between two attempts, seconds.
pub const MAX_BACKOFF_SECS: u64 = 3600;

/// How hard the owner's codes are stretched (ADR 0004): argon2id, 128 MiB, 3 passes, about
/// half a second here; twice RFC 9106's low-memory option.
pub const KDF: KdfParams = KdfParams { m_cost_kib: 128 * 1024, t_cost: 3, lanes: 1 };

const SECRETS_VERSION: u8 = 1;
const SECRETS_LEN: usize = 1 + 4 + 78 + 32 + 32;

/// Why the keys cannot be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum OwnerKeyError {
    /// The code opens nothing. Same message for every wrong code.
    #[error("that code is not right{}", wait_text(*.wait_secs))]
    WrongCode {
        /// Seconds before the next attempt is taken.
        wait_secs: u64,
    },
    /// Too many wrong codes: the next attempt is taken only later.
    #[error("too many wrong codes: try again in {wait_secs} seconds")]
    TooSoon {
        /// Seconds to wait.
        wait_secs: u64,
    },
    /// The keystore is damaged; it was left as it is.
    #[error(
        "the keystore {path} is damaged ({reason}); it was left untouched. A copy made when it was \
         created is at {backup}: copy it over the damaged file, or rebuild the wallet with \
         `vigil init --restore` and your recovery phrases"
    )]
    Damaged {
        /// The keystore.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The copy.
        backup: PathBuf,
    },
    /// No keystore there.
    #[error("no wallet in {0}: create one with `vigil init`")]
    Missing(PathBuf),
    /// A recovery phrase does not parse.
    #[error("recovery phrase: {0}")]
    Phrase(String),
    /// A code is unusable, or the file cannot be written.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Reading or writing the data directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn wait_text(secs: u64) -> String {
    if secs == 0 {
        String::new()
    } else {
        format!(": the next attempt is taken in {secs} seconds")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OwnerKeyError + '_ {
    move |source| OwnerKeyError::Io { path: path.to_owned(), source }
}

fn coin(network: Network) -> u32 {
    if network == Network::Bitcoin {
        0
    } else {
        1
    }
}

fn path(text: &str) -> DerivationPath {
    DerivationPath::from_str(text).expect("a valid constant path")
}

/// A BIP-39 recovery phrase.
pub type Phrase = bip39::Mnemonic;

/// A new 24-word phrase from the operating system's randomness.
pub fn new_phrase() -> Phrase {
    let mut entropy = Zeroizing::new([0u8; 32]);
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(entropy.as_mut());
    bip39::Mnemonic::from_entropy(entropy.as_ref()).expect("32 bytes is a valid entropy length")
}

/// Parses a phrase as the owner typed it (any case, any spacing).
pub fn parse_phrase(text: &str) -> Result<bip39::Mnemonic, OwnerKeyError> {
    let words = Zeroizing::new(text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase());
    bip39::Mnemonic::parse_normalized(&words).map_err(|e| OwnerKeyError::Phrase(e.to_string()))
}

fn master(phrase: &bip39::Mnemonic, network: Network) -> Xpriv {
    let seed = Zeroizing::new(phrase.to_seed_normalized(""));
    Xpriv::new_master(NetworkKind::from(network), seed.as_ref()).expect("a 64-byte seed")
}

/// An account key with its origin: signs a PSBT's inputs whose key origin is this master's
/// fingerprint and a path under the account, and nothing else.
pub struct AccountKey {
    fingerprint: Fingerprint,
    path: DerivationPath,
    xpriv: Xpriv,
}

impl Drop for AccountKey {
    fn drop(&mut self) {
        self.xpriv.private_key.non_secure_erase();
    }
}

impl AccountKey {
    fn derive(master: &Xpriv, path: DerivationPath) -> AccountKey {
        let secp = Secp256k1::new();
        let xpriv = master.derive_priv(&secp, &path).expect("derivable");
        AccountKey { fingerprint: master.fingerprint(&secp), path, xpriv }
    }

    /// `[fingerprint/path]xpub`, as a policy names it.
    pub fn policy_key(&self) -> String {
        let xpub = Xpub::from_priv(&Secp256k1::new(), &self.xpriv);
        let path = self.path.to_string().trim_start_matches("m/").replace('\'', "h");
        format!("[{}/{path}]{xpub}", self.fingerprint)
    }

    /// Signs what it can of `psbt`.
    pub fn sign_psbt(&self, psbt: &mut Psbt) {
        let _ = psbt.sign(self, &Secp256k1::new());
    }
}

impl GetKey for AccountKey {
    type Error = std::convert::Infallible;

    fn get_key<C: Signing>(
        &self,
        request: KeyRequest,
        secp: &Secp256k1<C>,
    ) -> Result<Option<PrivateKey>, Self::Error> {
        let KeyRequest::Bip32((fingerprint, full)) = request else { return Ok(None) };
        let Some(rest) = full.as_ref().strip_prefix(self.path.as_ref()) else { return Ok(None) };
        if fingerprint != self.fingerprint {
            return Ok(None);
        }
        Ok(self.xpriv.derive_priv(secp, &rest).ok().map(|k| k.to_priv()))
    }
}

/// What one slot of the keystore holds.
struct Secrets {
    /// The allowance wallet's account key.
    allowance: AccountKey,
    /// The request-signing key.
    auth: SecretKey,
    /// The heartbeat token this unlock sends.
    heartbeat: [u8; 32],
}

impl Drop for Secrets {
    fn drop(&mut self) {
        self.auth.non_secure_erase();
        zeroize::Zeroize::zeroize(&mut self.heartbeat);
    }
}

fn paths(network: Network) -> [DerivationPath; 3] {
    let c = coin(network);
    [path(&format!("m/48'/{c}'/0'/2'")), path(&format!("m/86'/{c}'/0'")), path(&format!("m/7420'/{c}'/0'"))]
}

fn random_token() -> [u8; 32] {
    let mut token = [0u8; 32];
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut token);
    token
}

impl Secrets {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRETS_LEN));
        out.push(SECRETS_VERSION);
        out.extend_from_slice(self.allowance.fingerprint.as_bytes());
        out.extend_from_slice(Zeroizing::new(self.allowance.xpriv.encode()).as_ref());
        out.extend_from_slice(&self.auth.secret_bytes());
        out.extend_from_slice(&self.heartbeat);
        debug_assert_eq!(out.len(), SECRETS_LEN);
        out
    }

    fn decode(bytes: &[u8], network: Network) -> Option<Secrets> {
        if bytes.len() != SECRETS_LEN || bytes[0] != SECRETS_VERSION {
            return None;
        }
        let fingerprint = Fingerprint::from(<[u8; 4]>::try_from(&bytes[1..5]).ok()?);
        let xpriv = Xpriv::decode(&bytes[5..83]).ok()?;
        if xpriv.network != NetworkKind::from(network) {
            return None;
        }
        let allowance = AccountKey { fingerprint, path: paths(network)[1].clone(), xpriv };
        let auth = SecretKey::from_slice(&bytes[83..115]).ok()?;
        let heartbeat = bytes[115..147].try_into().ok()?;
        Some(Secrets { allowance, auth, heartbeat })
    }
}

/// What the policy and the services learn of the owner's keys (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerPublic {
    /// The owner's vault key, `[fp/48h/coinh/0h/2h]xpub`: the policy's `[owner] keys`.
    pub owner_key: String,
    /// The request-signing key: the policy's `[owner] auth_keys`.
    pub auth_key: String,
    /// The off-site backup key: the policy's `[owner] backup`.
    pub backup_key: String,
    /// The allowance wallet's account key, `[fp/86h/coinh/0h]xpub`.
    pub allowance_key: String,
}

/// The heartbeat tokens' hashes the co-signer pins (hex). Never written to the device: the
/// pair would tell which slot is which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatHashes {
    /// sha256 of the real token.
    pub real: String,
    /// sha256 of the duress token.
    pub duress: String,
}

fn token_hash(token: &[u8; 32]) -> String {
    sha256::Hash::hash(token).to_string()
}

/// The backup key's policy form, from its phrase (which is never stored).
pub fn backup_key(phrase: &bip39::Mnemonic, network: Network) -> String {
    AccountKey::derive(&master(phrase, network), paths(network)[0].clone()).policy_key()
}

/// The owner's request-signing key from the phrase (a restore's first request, before the
/// keystore exists).
pub fn auth_keypair(phrase: &bip39::Mnemonic, network: Network) -> Keypair {
    let mut master = master(phrase, network);
    let [_, _, auth_path] = paths(network);
    let mut auth = master.derive_priv(&Secp256k1::new(), &auth_path).expect("derivable").private_key;
    let keypair = Keypair::from_secret_key(&Secp256k1::new(), &auth);
    auth.non_secure_erase();
    master.private_key.non_secure_erase();
    keypair
}

/// The owner's public keys, from the phrase.
pub fn public_keys(
    owner_phrase: &bip39::Mnemonic,
    backup_phrase_key: String,
    network: Network,
) -> OwnerPublic {
    let mut master = master(owner_phrase, network);
    let [vault_path, allowance_path, auth_path] = paths(network);
    let secp = Secp256k1::new();
    let mut auth = master.derive_priv(&secp, &auth_path).expect("derivable").private_key;
    let public = OwnerPublic {
        owner_key: AccountKey::derive(&master, vault_path).policy_key(),
        auth_key: auth.x_only_public_key(&secp).0.to_string(),
        backup_key: backup_phrase_key,
        allowance_key: AccountKey::derive(&master, allowance_path).policy_key(),
    };
    auth.non_secure_erase();
    master.private_key.non_secure_erase();
    public
}

/// Makes the owner's keystore in `dir` from the owner's phrase, sealed under the real code
/// and the duress code, with a backup copy beside it. Returns the hashes of the two fresh
/// heartbeat tokens, for the co-signer (they are not kept). Refuses to replace an existing
/// keystore.
pub fn create(
    dir: &Path,
    owner_phrase: &bip39::Mnemonic,
    real_code: &[u8],
    duress_code: &[u8],
    network: Network,
    kdf: KdfParams,
) -> Result<HeartbeatHashes, OwnerKeyError> {
    let mut master = master(owner_phrase, network);
    let [_, allowance_path, auth_path] = paths(network);
    let mut auth = master.derive_priv(&Secp256k1::new(), &auth_path).expect("derivable").private_key;
    let slot = |heartbeat| Secrets {
        allowance: AccountKey::derive(&master, allowance_path.clone()),
        auth,
        heartbeat,
    };
    let (real, duress) = (slot(random_token()), slot(random_token()));
    master.private_key.non_secure_erase();
    auth.non_secure_erase();
    let hashes = HeartbeatHashes { real: token_hash(&real.heartbeat), duress: token_hash(&duress.heartbeat) };
    let sealed = vigil_keystore::seal_two(&real.encode(), real_code, &duress.encode(), duress_code, kdf)?;
    crate::wallet::private_dir(dir).map_err(io(dir))?;
    vigil_keystore::write_new(&dir.join(KEYSTORE_FILE), &sealed)?;
    vigil_keystore::write_new(&dir.join(KEYSTORE_BACKUP_FILE), &sealed)?;
    write_state(dir, UnlockState::default())?;
    Ok(hashes)
}

/// The owner's vault key, from the recovery phrase typed for one signing, checked against
/// the policy's owner key (a mistyped phrase is named, not used).
pub struct VaultKey(AccountKey);

impl VaultKey {
    /// The vault key of `phrase`, if it is the policy's owner key `owner`.
    pub fn from_phrase(
        phrase: &bip39::Mnemonic,
        network: Network,
        owner: &Xpub,
    ) -> Result<VaultKey, OwnerKeyError> {
        let mut master = master(phrase, network);
        let key = AccountKey::derive(&master, paths(network)[0].clone());
        master.private_key.non_secure_erase();
        if Xpub::from_priv(&Secp256k1::new(), &key.xpriv) != *owner {
            return Err(OwnerKeyError::Phrase(
                "this is not the recovery phrase of this wallet (check the words and their order)".into(),
            ));
        }
        Ok(VaultKey(key))
    }

    /// Signs the owner's part of a vault PSBT (intake, unvault spend leaf).
    pub fn sign_psbt(&self, psbt: &mut Psbt) {
        self.0.sign_psbt(psbt);
    }
}

/// The keys an unlock opened. Nothing here says whether the code was the real one.
pub struct Unlocked {
    secrets: Secrets,
}

impl Unlocked {
    /// The key requests to the co-signer and the towers are signed with.
    pub fn auth_keypair(&self) -> Keypair {
        Keypair::from_secret_key(&Secp256k1::new(), &self.secrets.auth)
    }

    /// The heartbeat token this unlock sends to the co-signer.
    pub fn heartbeat_token(&self) -> &[u8; 32] {
        &self.secrets.heartbeat
    }

    /// The hash the co-signer knows this unlock's token by.
    pub fn heartbeat_hash(&self) -> String {
        token_hash(&self.secrets.heartbeat)
    }

    /// The allowance wallet's key.
    pub fn allowance(&self) -> &AccountKey {
        &self.secrets.allowance
    }
}

/// The wrong-code counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UnlockState {
    failures: u32,
    not_before: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Seconds to wait after `failures` wrong codes in a row.
pub fn backoff_secs(failures: u32) -> u64 {
    if failures < FREE_ATTEMPTS {
        0
    } else {
        1u64.checked_shl(failures - FREE_ATTEMPTS).unwrap_or(u64::MAX).min(MAX_BACKOFF_SECS)
    }
}

fn read_state(dir: &Path) -> Result<UnlockState, OwnerKeyError> {
    let file = dir.join(UNLOCK_STATE_FILE);
    match std::fs::read(&file) {
        Ok(bytes) if bytes.len() == 12 => Ok(UnlockState {
            failures: u32::from_le_bytes(bytes[..4].try_into().expect("4")),
            not_before: u64::from_le_bytes(bytes[4..].try_into().expect("8")),
        }),
        // A missing or mangled counter is not trusted to be zero: treat it as at the limit.
        Ok(_) => Ok(UnlockState { failures: FREE_ATTEMPTS, not_before: 0 }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(UnlockState { failures: FREE_ATTEMPTS, not_before: 0 })
        }
        Err(e) => Err(io(&file)(e)),
    }
}

/// Replaces the counter atomically (same size whatever it says).
fn write_state(dir: &Path, state: UnlockState) -> Result<(), OwnerKeyError> {
    use std::io::Write;
    let file = dir.join(UNLOCK_STATE_FILE);
    let tmp = dir.join(format!("{UNLOCK_STATE_FILE}.tmp"));
    let mut bytes = state.failures.to_le_bytes().to_vec();
    bytes.extend_from_slice(&state.not_before.to_le_bytes());
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &file).map_err(io(&file))
}

/// Opens the keystore in `dir` with `code`: the real code or the duress code open it alike,
/// a wrong one counts towards the back-off. Every attempt is counted *before* the code is
/// tried (killing the process mid-attempt saves nothing) and reset once a code opens; one
/// attempt at a time (the keystore is locked meanwhile); the same work and the same
/// fixed-size counter writes whichever code it was. The back-off slows guessing at the
/// device; it cannot slow an attacker who copied the keystore (the stretching does that).
pub fn unlock(dir: &Path, code: &[u8], network: Network) -> Result<Unlocked, OwnerKeyError> {
    use std::io::Read;
    let path = dir.join(KEYSTORE_FILE);
    let damaged = |reason: String| OwnerKeyError::Damaged {
        path: path.clone(),
        reason,
        backup: dir.join(KEYSTORE_BACKUP_FILE),
    };
    let mut handle = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OwnerKeyError::Missing(dir.to_owned()))
        }
        Err(e) => return Err(io(&path)(e)),
    };
    handle.lock().map_err(io(&path))?;
    let mut file = Vec::new();
    handle.read_to_end(&mut file).map_err(io(&path))?;
    vigil_keystore::check_two(&file).map_err(|e| damaged(e.to_string()))?;
    let state = read_state(dir)?;
    let now = now_secs();
    if now < state.not_before {
        return Err(OwnerKeyError::TooSoon { wait_secs: state.not_before - now });
    }
    let failures = state.failures.saturating_add(1);
    let wait_secs = backoff_secs(failures);
    write_state(dir, UnlockState { failures, not_before: now + wait_secs })?;
    match vigil_keystore::open_two(&file, code) {
        Ok(plain) => {
            let secrets = Secrets::decode(&plain, network)
                .ok_or_else(|| damaged("a slot opened but does not hold keys for this network".into()))?;
            write_state(dir, UnlockState::default())?;
            Ok(Unlocked { secrets })
        }
        Err(KeystoreError::WrongPassphrase) => Err(OwnerKeyError::WrongCode { wait_secs }),
        Err(e) => Err(damaged(e.to_string())),
    }
}

/// Whether `dir` holds a keystore.
pub fn exists(dir: &Path) -> bool {
    dir.join(KEYSTORE_FILE).exists()
}

// The record's fixed layout: version, allowance (fingerprint, xpriv), auth key, heartbeat token.
const _: () = assert!(SECRETS_LEN == 147);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const NET: Network = Network::Regtest;

    fn wallet() -> (tempfile::TempDir, OwnerPublic, HeartbeatHashes, bip39::Mnemonic) {
        let dir = tempfile::tempdir().unwrap();
        let phrase = new_phrase();
        let hashes = create(dir.path(), &phrase, b"1234", b"9999", NET, KdfParams::FOR_TESTS).unwrap();
        let public = public_keys(&phrase, backup_key(&new_phrase(), NET), NET);
        (dir, public, hashes, phrase)
    }

    /// Every file of `dir`: name → (size, sha256).
    fn listing(dir: &Path) -> BTreeMap<String, (u64, String)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let bytes = std::fs::read(e.path()).unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    (bytes.len() as u64, sha256::Hash::hash(&bytes).to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn both_codes_open_the_same_view_and_neither_holds_a_vault_key() {
        let (dir, public, hashes, phrase) = wallet();
        let real = unlock(dir.path(), b"1234", NET).unwrap();
        let duress = unlock(dir.path(), b"9999", NET).unwrap();
        assert_eq!(real.auth_keypair().x_only_public_key().0.to_string(), public.auth_key);
        assert_eq!(duress.auth_keypair().public_key(), real.auth_keypair().public_key());
        assert_eq!(real.allowance().policy_key(), public.allowance_key);
        assert_eq!(duress.allowance().policy_key(), public.allowance_key, "the allowance really spends");
        assert_eq!(
            (real.heartbeat_hash(), duress.heartbeat_hash()),
            (hashes.real.clone(), hashes.duress.clone())
        );
        assert_ne!(hashes.real, hashes.duress);
        // Neither slot holds a secret that gives vault keys: the phrase brings the vault key.
        let file = std::fs::read(dir.path().join(KEYSTORE_FILE)).unwrap();
        let m = master(&phrase, NET);
        let account = m.derive_priv(&Secp256k1::new(), &paths(NET)[0]).unwrap();
        for code in [&b"1234"[..], b"9999"] {
            let plain = vigil_keystore::open_two(&file, code).unwrap();
            for secret in [m.private_key.secret_bytes(), account.private_key.secret_bytes()] {
                assert!(!plain.windows(32).any(|w| w == secret), "a vault secret in the keystore");
            }
            assert!(!plain.windows(32).any(|w| w == account.chain_code.as_bytes()));
        }
        // The tokens are random: the phrase does not say which slot is which.
        let again = tempfile::tempdir().unwrap();
        let other = create(again.path(), &phrase, b"1234", b"9999", NET, KdfParams::FOR_TESTS).unwrap();
        assert!(other.real != hashes.real && other.duress != hashes.duress);
        // The phrase gives the vault key the policy names; another phrase is refused by name.
        let owner = Xpub::from_str(public.owner_key.split(']').nth(1).unwrap()).unwrap();
        VaultKey::from_phrase(&phrase, NET, &owner).unwrap();
        let wrong = VaultKey::from_phrase(&new_phrase(), NET, &owner).err().unwrap();
        assert!(wrong.to_string().contains("not the recovery phrase of this wallet"), "{wrong}");
    }

    #[test]
    fn a_real_and_a_duress_unlock_leave_the_same_files() {
        let (dir, _, _, _) = wallet();
        let before = listing(dir.path());
        unlock(dir.path(), b"1234", NET).unwrap();
        let after_real = listing(dir.path());
        unlock(dir.path(), b"9999", NET).unwrap();
        let after_duress = listing(dir.path());
        assert_eq!(after_real, after_duress);
        assert_eq!(before, after_real, "an unlock changes no file's size or content");
    }

    #[test]
    fn wrong_codes_back_off_alike_whichever_code_comes_next() {
        for next in [b"1234", b"9999"] {
            let (dir, _, _, _) = wallet();
            for _ in 0..FREE_ATTEMPTS - 1 {
                assert!(matches!(
                    unlock(dir.path(), b"0000", NET),
                    Err(OwnerKeyError::WrongCode { wait_secs: 0 })
                ));
            }
            assert!(matches!(
                unlock(dir.path(), b"0000", NET),
                Err(OwnerKeyError::WrongCode { wait_secs: 1 })
            ));
            // Inside the wait, even the right code is not tried.
            let err = unlock(dir.path(), next, NET).err().unwrap();
            assert!(matches!(err, OwnerKeyError::TooSoon { .. }), "{err}");
            std::thread::sleep(std::time::Duration::from_millis(2_100));
            unlock(dir.path(), next, NET).unwrap();
            assert!(
                matches!(unlock(dir.path(), b"0000", NET), Err(OwnerKeyError::WrongCode { wait_secs: 0 })),
                "reset"
            );
        }
        assert_eq!((backoff_secs(4), backoff_secs(10), backoff_secs(u32::MAX)), (2, 128, MAX_BACKOFF_SECS));
    }

    /// The allowance key the backup copy opens to.
    fn wallet_key(dir: &Path) -> String {
        let file = std::fs::read(dir.join(KEYSTORE_BACKUP_FILE)).unwrap();
        let plain = vigil_keystore::open_two(&file, b"1234").unwrap();
        Secrets::decode(&plain, NET).unwrap().allowance.policy_key()
    }

    #[test]
    fn a_damaged_keystore_is_named_left_untouched_and_its_backup_opens() {
        let (dir, _, _, _) = wallet();
        let path = dir.path().join(KEYSTORE_FILE);
        let good = std::fs::read(&path).unwrap();
        for bad in [good[..good.len() / 2].to_vec(), Vec::new(), b"VIGILKS1 not this kind".to_vec()] {
            std::fs::write(&path, &bad).unwrap();
            let err = unlock(dir.path(), b"1234", NET).err().unwrap();
            assert!(matches!(err, OwnerKeyError::Damaged { .. }), "{err}");
            assert!(err.to_string().contains("keystore.backup"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), bad, "left as it was");
        }
        // A flipped byte inside a slot reads as a wrong code (the two cannot be told apart),
        // never as a different key.
        let mut flipped = good.clone();
        flipped[good.len() - 1] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        for code in [b"1234", b"9999"] {
            match unlock(dir.path(), code, NET) {
                Ok(keys) => assert_eq!(keys.allowance().policy_key(), wallet_key(dir.path())),
                Err(e) => assert!(matches!(e, OwnerKeyError::WrongCode { .. }), "{e}"),
            }
        }
        std::fs::copy(dir.path().join(KEYSTORE_BACKUP_FILE), &path).unwrap();
        unlock(dir.path(), b"1234", NET).unwrap();
        assert!(create(dir.path(), &new_phrase(), b"1", b"2", NET, KdfParams::FOR_TESTS).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), good, "an existing keystore is never replaced");
    }

    #[test]
    fn the_phrase_gives_the_same_public_keys_however_it_is_typed() {
        let (_dir, public, _, phrase) = wallet();
        let typed = phrase.to_string().to_uppercase().replace(' ', "   ");
        let again = public_keys(&parse_phrase(&typed).unwrap(), public.backup_key.clone(), NET);
        assert_eq!(again, public);
        assert!(parse_phrase("abandon abandon").is_err());
    }
}
