//! A party's key outside the household: one BIP32 master, sealed at rest (`vigil-keystore`),
//! held in memory that is wiped on drop. The co-signer gives each client its own account
//! under it (BIP48 layout, `m/48'/coin'/account'/2'`, one account number per client), so no
//! two clients share a key and the master itself is never handed out; a guardian uses
//! account 0.

use std::path::Path;
use std::str::FromStr;

use vigil_keystore::{KdfParams, KeystoreError};
use vigil_policy::bitcoin::bip32::{ChainCode, ChildNumber, DerivationPath, Xpriv, Xpub};
use vigil_policy::bitcoin::key::{Keypair, PrivateKey, XOnlyPublicKey};
use vigil_policy::bitcoin::psbt::{GetKey, KeyRequest};
use vigil_policy::bitcoin::secp256k1::{rand::RngCore, Secp256k1, Signing};
use vigil_policy::bitcoin::{Network, NetworkKind};
use zeroize::Zeroizing;

/// The most accounts (clients) one master serves: below the hardened range's end.
pub const MAX_ACCOUNTS: u32 = (1 << 31) - 1;

/// A master key, in memory only while it is needed.
pub struct MasterKey {
    master: Xpriv,
    network: Network,
    /// Computed once: each costs an elliptic-curve multiplication, and requests ask often.
    fingerprint: vigil_policy::bitcoin::bip32::Fingerprint,
    /// Each client's auth key pair, derived once: every request is verified against it and
    /// every request to a tower signed with it. No more secret than the master beside it;
    /// wiped with it.
    auth_keys: std::sync::Mutex<std::collections::HashMap<u32, Keypair>>,
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.master.private_key.non_secure_erase();
        self.master.chain_code = ChainCode::from([0u8; 32]);
        let mut auth_keys = self.auth_keys.lock().unwrap_or_else(|p| p.into_inner());
        auth_keys.values_mut().for_each(Keypair::non_secure_erase);
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

impl MasterKey {
    /// A new master from the operating system's randomness, sealed into `path` under
    /// `passphrase` (the file must not exist).
    pub fn create(
        path: &Path,
        passphrase: &[u8],
        network: Network,
        kdf: KdfParams,
    ) -> Result<MasterKey, KeystoreError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(seed.as_mut());
        let master = Xpriv::new_master(NetworkKind::from(network), seed.as_ref()).expect("32 bytes of seed");
        let keys = MasterKey::new(master, network);
        let encoded = Zeroizing::new(keys.master.encode());
        vigil_keystore::write_new(path, &vigil_keystore::seal(encoded.as_ref(), passphrase, kdf)?)?;
        Ok(keys)
    }

    /// Opens the sealed master at `path`.
    pub fn open(path: &Path, passphrase: &[u8], network: Network) -> Result<MasterKey, KeystoreError> {
        let bytes = vigil_keystore::open_file(path, passphrase)?;
        let master = Xpriv::decode(&bytes)
            .map_err(|_| KeystoreError::Corrupt("the sealed secret is not a BIP32 master key"))?;
        if master.network != NetworkKind::from(network) {
            return Err(KeystoreError::Corrupt("the key is for another network"));
        }
        Ok(MasterKey::new(master, network))
    }

    fn new(master: Xpriv, network: Network) -> MasterKey {
        let fingerprint = master.fingerprint(vigil_policy::secp());
        MasterKey { master, network, fingerprint, auth_keys: Default::default() }
    }

    /// The master's fingerprint (names it in logs; reveals nothing).
    pub fn fingerprint(&self) -> vigil_policy::bitcoin::bip32::Fingerprint {
        self.fingerprint
    }

    fn account_path(&self, account: u32) -> DerivationPath {
        let coin = if self.network == Network::Bitcoin { 0 } else { 1 };
        DerivationPath::from_str(&format!("m/48'/{coin}'/{account}'/2'")).expect("valid path")
    }

    /// Client `account`'s extended private key (its callers wipe it).
    fn account_xpriv(&self, account: u32) -> Xpriv {
        self.master.derive_priv(vigil_policy::secp(), &self.account_path(account)).expect("derivable")
    }

    /// Client `account`'s key as its policy's `[cosigner] key` names it:
    /// `[fingerprint/48h/coinh/accounth/2h]xpub`.
    pub fn account_key(&self, account: u32) -> String {
        let mut xpriv = self.account_xpriv(account);
        let xpub = Xpub::from_priv(vigil_policy::secp(), &xpriv);
        xpriv.private_key.non_secure_erase();
        let path = self.account_path(account).to_string().trim_start_matches("m/").replace('\'', "h");
        format!("[{}/{path}]{xpub}", self.fingerprint())
    }

    /// Client `account`'s request-signing key (`/2/0` under the account), wiped when dropped.
    pub fn auth_keypair(&self, account: u32) -> WipedKeypair {
        let mut known = self.auth_keys.lock().unwrap_or_else(|p| p.into_inner());
        WipedKeypair(*known.entry(account).or_insert_with(|| {
            let tail =
                [ChildNumber::from_normal_idx(2).expect("2"), ChildNumber::from_normal_idx(0).expect("0")];
            let mut xpriv = self.account_xpriv(account);
            let mut child = xpriv.derive_priv(vigil_policy::secp(), &tail).expect("derivable");
            let key = child.to_keypair(vigil_policy::secp());
            xpriv.private_key.non_secure_erase();
            child.private_key.non_secure_erase();
            key
        }))
    }

    /// Client `account`'s auth key.
    pub fn auth_key(&self, account: u32) -> XOnlyPublicKey {
        self.auth_keypair(account).x_only_public_key().0
    }

    /// Signs every input of `psbt` whose key origin names client `account`'s key (this
    /// master's fingerprint and a path under the account), with that key, and nothing else:
    /// one client's request can never obtain another's signature. Callers decide first that
    /// the PSBT is one the policy allows.
    pub fn sign_psbt(&self, account: u32, psbt: &mut vigil_policy::bitcoin::psbt::Psbt) {
        let signer =
            AccountSigner { keys: self, fingerprint: self.fingerprint(), prefix: self.account_path(account) };
        let _ = psbt.sign(&signer, vigil_policy::secp());
    }
}

/// A key pair whose secret is overwritten when it is dropped.
pub struct WipedKeypair(Keypair);

impl std::ops::Deref for WipedKeypair {
    type Target = Keypair;
    fn deref(&self) -> &Keypair {
        &self.0
    }
}

impl Drop for WipedKeypair {
    fn drop(&mut self) {
        self.0.non_secure_erase();
    }
}

/// Hands out keys under one account only. rust-bitcoin's own lookup on a master also answers
/// a request naming the master's *parent* fingerprint (all zeros) with any path at all, which
/// would let a PSBT's key origin reach another client's account.
struct AccountSigner<'a> {
    keys: &'a MasterKey,
    fingerprint: vigil_policy::bitcoin::bip32::Fingerprint,
    prefix: DerivationPath,
}

impl GetKey for AccountSigner<'_> {
    type Error = std::convert::Infallible;

    fn get_key<C: Signing>(
        &self,
        request: KeyRequest,
        secp: &Secp256k1<C>,
    ) -> Result<Option<PrivateKey>, Self::Error> {
        let KeyRequest::Bip32((fingerprint, path)) = request else { return Ok(None) };
        if fingerprint != self.fingerprint || !path.as_ref().starts_with(self.prefix.as_ref()) {
            return Ok(None);
        }
        Ok(self.keys.master.derive_priv(secp, &path).ok().map(|k| k.to_priv()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_policy::bitcoin::bip32::Fingerprint;
    use vigil_policy::bitcoin::psbt::Psbt;

    #[test]
    fn each_client_gets_its_own_account_and_the_file_opens_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosigner.key");
        let keys = MasterKey::create(&path, b"pass", Network::Regtest, KdfParams::FOR_TESTS).unwrap();
        assert_ne!(keys.account_key(0), keys.account_key(1));
        assert!(keys.account_key(7).contains("/48h/1h/7h/2h]tpub"), "{}", keys.account_key(7));
        let again = MasterKey::open(&path, b"pass", Network::Regtest).unwrap();
        assert_eq!(again.account_key(3), keys.account_key(3));
        assert!(MasterKey::open(&path, b"wrong", Network::Regtest).is_err());
        assert!(MasterKey::open(&path, b"pass", Network::Bitcoin).is_err());
        // The key a client's policy names gives the same auth key as the co-signer signs with.
        let policy_key = vigil_policy::PolicyKey {
            xpub: Xpub::from_str(keys.account_key(3).split(']').nth(1).unwrap()).unwrap(),
            origin: None,
            auth: None,
        };
        assert_eq!(policy_key.auth_key(), keys.auth_key(3));
    }

    /// A one-input PSBT paying from the key at `path` under `keys`, with `origin` as the
    /// input's claimed key origin.
    fn psbt_for(keys: &MasterKey, path: &str, origin: (Fingerprint, &str)) -> Psbt {
        use vigil_policy::bitcoin::{
            absolute, transaction, Amount, CompressedPublicKey, OutPoint, ScriptBuf, TxIn, TxOut,
        };
        let secp = vigil_policy::secp();
        let key = keys.master.derive_priv(secp, &DerivationPath::from_str(path).unwrap()).unwrap();
        let public = CompressedPublicKey(key.private_key.public_key(secp));
        let tx = vigil_policy::bitcoin::Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn { previous_output: OutPoint::null(), ..Default::default() }],
            output: vec![TxOut { value: Amount::from_sat(1_000), script_pubkey: ScriptBuf::new() }],
        };
        let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
        psbt.inputs[0].witness_utxo = Some(TxOut {
            value: Amount::from_sat(2_000),
            script_pubkey: ScriptBuf::new_p2wpkh(&public.wpubkey_hash()),
        });
        psbt.inputs[0]
            .bip32_derivation
            .insert(public.0, (origin.0, DerivationPath::from_str(origin.1).unwrap()));
        psbt
    }

    #[test]
    fn a_psbt_gets_a_signature_only_from_the_requesting_clients_account() {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            MasterKey::create(&dir.path().join("k"), b"p", Network::Regtest, KdfParams::FOR_TESTS).unwrap();
        let fp = keys.fingerprint();
        let signed = |mut psbt: Psbt, account| {
            keys.sign_psbt(account, &mut psbt);
            !psbt.inputs[0].partial_sigs.is_empty()
        };
        // Client 0 asking for its own key is answered.
        assert!(signed(psbt_for(&keys, "m/48'/1'/0'/2'/0/0", (fp, "m/48'/1'/0'/2'/0/0")), 0));
        // Client 0 naming client 1's path under the master's fingerprint gets nothing.
        assert!(!signed(psbt_for(&keys, "m/48'/1'/1'/2'/0/0", (fp, "m/48'/1'/1'/2'/0/0")), 0));
        // Nor under the master's parent fingerprint (zero) with the master's child number in
        // front, which a plain master lookup would answer with client 1's key.
        assert!(!signed(
            psbt_for(&keys, "m/48'/1'/1'/2'/0/0", (Fingerprint::default(), "m/0/48'/1'/1'/2'/0/0")),
            0
        ));
        assert!(!signed(psbt_for(&keys, "m/0/0", (Fingerprint::default(), "m/0/0/0")), 0));
    }
}
