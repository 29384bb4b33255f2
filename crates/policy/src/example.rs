//! Deterministic **regtest-only** keys and policies, for the demo, the docs and the tests.
//!
//! Every secret here is derived from a public label, so anyone can recompute it: these keys
//! must never hold real funds. `examples/policy.toml` is exactly
//! `ExamplePolicy::default().to_toml()` (a test checks it).

use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use bitcoin::NetworkKind;

use crate::config::secp;

/// The account path of every example key (BIP48-style, test coin type).
pub const ACCOUNT_PATH: &str = "m/48'/1'/0'/2'";

/// The master key of `role` number `i` under `seed` (a public label: not a secret!).
pub fn master_key(seed: &str, role: &str, i: usize) -> Xpriv {
    let entropy = sha256::Hash::hash(format!("{seed}/{role}/{i}").as_bytes());
    Xpriv::new_master(NetworkKind::Test, entropy.as_byte_array()).expect("32 bytes of entropy")
}

/// `[fingerprint/48h/1h/0h/2h]tpub...` for a master key.
pub fn account_key(master: &Xpriv) -> String {
    let path = DerivationPath::from_str(ACCOUNT_PATH).expect("valid path");
    let account = master.derive_priv(secp(), &path).expect("derivable");
    let xpub = Xpub::from_priv(secp(), &account);
    format!("[{}/48h/1h/0h/2h]{xpub}", master.fingerprint(secp()))
}

/// The request-signing key (`/2/0` under the account) of an example master key.
pub fn auth_keypair(master: &Xpriv) -> bitcoin::secp256k1::Keypair {
    let path = DerivationPath::from_str(&format!("{ACCOUNT_PATH}/2/0")).expect("valid path");
    master.derive_priv(secp(), &path).expect("derivable").to_keypair(secp())
}

/// A tower's identity key.
pub fn tower_secret(seed: &str, i: usize) -> SecretKey {
    SecretKey::from_slice(sha256::Hash::hash(format!("{seed}/tower/{i}").as_bytes()).as_byte_array())
        .expect("valid key")
}

/// `n` regtest destinations for a whitelist, from keys derived from `seed` (a public label:
/// anyone can spend from them).
pub fn destinations(seed: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let secret = sha256::Hash::hash(format!("{seed}/destination/{i}").as_bytes());
            let key =
                SecretKey::from_slice(secret.as_byte_array()).expect("valid key").x_only_public_key(secp()).0;
            bitcoin::Address::p2tr(secp(), key, None, bitcoin::KnownHrp::Regtest).to_string()
        })
        .collect()
}

/// The parameters of an example policy; `Default` is `examples/policy.toml`.
#[derive(Debug, Clone)]
pub struct ExamplePolicy {
    /// The public label every key derives from.
    pub seed: String,
    /// Number of owner keys.
    pub owners: usize,
    /// How many owner keys must sign.
    pub owner_threshold: u32,
    /// Number of guardians.
    pub guardians: usize,
    /// How many guardians must sign.
    pub guardian_threshold: u32,
    /// DELAY, blocks.
    pub delay: u32,
    /// T_RECOVER, blocks.
    pub recovery: u32,
    /// LONG, blocks.
    pub deep_vault: u32,
    /// The unvault's feerate, sat/vB.
    pub unvault_sat_per_vb: u64,
    /// The ladder, sat/vB.
    pub ladder_sat_per_vb: Vec<u64>,
    /// Rung cap, percent of the vault.
    pub max_fee_percent: u64,
    /// The velocity limit, sat.
    pub velocity_limit_sat: u64,
    /// Number of towers.
    pub towers: usize,
    /// The policy format (ADR 0005): 1, or 2 for hardware signers.
    pub format: u32,
    /// Where the co-signer's account key, the co-signer's URL and the towers' URLs differ
    /// from the derived example's: a policy for a real co-signer and real tower processes.
    pub services: Services,
}

/// The parts of an example policy that name running services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    /// The co-signer's `[fp/path]xpub` (enrolled), instead of the example key.
    pub cosigner_key: Option<String>,
    /// The co-signer's URL.
    pub cosigner_url: Option<String>,
    /// Each tower's URL, instead of `http://127.0.0.1:7431 + i`.
    pub tower_urls: Vec<String>,
    /// Each tower's public key (hex), instead of the example's.
    pub tower_keys: Vec<String>,
    /// `allowance.spend_limit_sat`, when set.
    pub spend_limit_sat: Option<u64>,
    /// `allowance.velocity_window_blocks` (1008 when none).
    pub velocity_window_blocks: Option<u32>,
    /// Guardian `i`'s `[fp/path]xpub` when given (a key made elsewhere), instead of the
    /// example's.
    pub guardian_keys: Vec<Option<String>>,
}

impl Default for ExamplePolicy {
    fn default() -> Self {
        ExamplePolicy {
            seed: "vigil example".into(),
            owners: 1,
            owner_threshold: 1,
            guardians: 3,
            guardian_threshold: 2,
            delay: 144,
            recovery: 4_320,
            deep_vault: 8_640,
            unvault_sat_per_vb: 2,
            ladder_sat_per_vb: vec![1, 2, 5, 10, 25, 50, 100, 250],
            max_fee_percent: 5,
            velocity_limit_sat: 10_000_000,
            towers: 2,
            format: 1,
            services: Services::default(),
        }
    }
}

/// The example's private keys (masters), to sign PSBTs in the demo and tests.
#[derive(Debug, Clone)]
pub struct ExampleKeys {
    /// Owner masters.
    pub owners: Vec<Xpriv>,
    /// Backup master.
    pub backup: Xpriv,
    /// Co-signer master.
    pub cosigner: Xpriv,
    /// Guardian masters.
    pub guardians: Vec<Xpriv>,
    /// Tower identity keys.
    pub towers: Vec<SecretKey>,
}

impl ExamplePolicy {
    /// The private keys behind this policy.
    pub fn keys(&self) -> ExampleKeys {
        ExampleKeys {
            owners: (0..self.owners).map(|i| master_key(&self.seed, "owner", i)).collect(),
            backup: master_key(&self.seed, "backup", 0),
            cosigner: master_key(&self.seed, "cosigner", 0),
            guardians: (0..self.guardians).map(|i| master_key(&self.seed, "guardian", i)).collect(),
            towers: (0..self.towers).map(|i| tower_secret(&self.seed, i)).collect(),
        }
    }

    /// The policy file.
    pub fn to_toml(&self) -> String {
        let keys = self.keys();
        let list = |ks: &[Xpriv]| {
            ks.iter().map(|k| format!("  \"{}\",", account_key(k))).collect::<Vec<_>>().join("\n")
        };
        let ladder = self.ladder_sat_per_vb.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let towers: String = keys
            .towers
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let url = self.services.tower_urls.get(i).cloned();
                let key = self.services.tower_keys.get(i).cloned();
                format!(
                    "\n[[towers]]\nname = \"tower-{}\"\nurl = \"{}\"\nkey = \"{}\"\n",
                    (b'a' + i as u8) as char,
                    url.unwrap_or_else(|| format!("http://127.0.0.1:{}", 7431 + i)),
                    key.unwrap_or_else(|| PublicKey::from_secret_key(secp(), k).to_string())
                )
            })
            .collect();
        format!(
            r#"# Vigil custody policy: REGTEST EXAMPLE. Every key below derives from the public label
# "{seed}" (see vigil_policy::example): anyone can spend from it. Never use it for real funds.
version = 1
{format}network = "regtest"

[owner]
# The owner's everyday keys (phone, hardware signer) and how many must sign.
threshold = {owner_threshold}
keys = [
{owners}
]
# The off-site backup key: only the deep vault uses it.
backup = "{backup}"

[cosigner]
key = "{cosigner}"
url = "{cosigner_url}"

[guardians]
threshold = {guardian_threshold}
keys = [
{guardians}
]

[delays]
# DELAY: blocks between an unvault's confirmation and its spend (the towers' window).
unvault = {delay}
# T_RECOVER: owner + guardians may act without the co-signer after this many blocks.
recovery = {recovery}
# LONG: the deep vault's slow path.
deep_vault = {deep}

[fees]
# The unvault has one version at this feerate; its anchor output lets the owner bump it.
unvault_sat_per_vb = {unvault_rate}
# Cancel, emergency and unvault-emergency are signed at each of these feerates.
ladder_sat_per_vb = [{ladder}]
# Rungs costing more than this share of the vault are not signed (the lowest always is).
max_fee_percent = {max_fee_percent}

[allowance]
hot_limit_sat = 2_000_000
# The most unvaults may release per window; also the largest standard vault.
velocity_limit_sat = {velocity}
velocity_window_blocks = {window}
{spend_limit}whitelist = []
{towers}"#,
            seed = self.seed,
            format = match self.format {
                1 => String::new(),
                n => format!(
                    "# Keys derive per leaf, so a hardware signer can register each output.\nformat = {n}\n"
                ),
            },
            owner_threshold = self.owner_threshold,
            owners = list(&keys.owners),
            backup = account_key(&keys.backup),
            cosigner = self.services.cosigner_key.clone().unwrap_or_else(|| account_key(&keys.cosigner)),
            cosigner_url = self.services.cosigner_url.as_deref().unwrap_or("http://127.0.0.1:7420"),
            window = self.services.velocity_window_blocks.unwrap_or(1008),
            spend_limit =
                self.services.spend_limit_sat.map(|s| format!("spend_limit_sat = {s}\n")).unwrap_or_default(),
            guardian_threshold = self.guardian_threshold,
            guardians = keys
                .guardians
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let given = self.services.guardian_keys.get(i).cloned().flatten();
                    format!("  \"{}\",", given.unwrap_or_else(|| account_key(k)))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            delay = self.delay,
            recovery = self.recovery,
            deep = self.deep_vault,
            unvault_rate = self.unvault_sat_per_vb,
            max_fee_percent = self.max_fee_percent,
            velocity = self.velocity_limit_sat,
        )
    }
}

/// Who signs a PSBT, among the example keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// Owner key `i`.
    Owner(usize),
    /// The owner's off-site backup key.
    Backup,
    /// The co-signer.
    Cosigner,
    /// Guardian `i`.
    Guardian(usize),
}

impl ExampleKeys {
    /// The master key of `who`.
    pub fn master(&self, who: Signer) -> &Xpriv {
        match who {
            Signer::Owner(i) => &self.owners[i],
            Signer::Backup => &self.backup,
            Signer::Cosigner => &self.cosigner,
            Signer::Guardian(i) => &self.guardians[i],
        }
    }

    /// Signs a PSBT with the keys of `signers` (inputs a key cannot sign are skipped).
    pub fn sign_psbt(&self, psbt: &mut bitcoin::psbt::Psbt, signers: &[Signer]) {
        for s in signers {
            let _ = psbt.sign(self.master(*s), secp());
        }
    }

    /// The key pair of `who` at `branch/index` under the account.
    pub fn keypair(&self, who: Signer, branch: u32, index: u32) -> bitcoin::secp256k1::Keypair {
        let path = DerivationPath::from_str(&format!("{ACCOUNT_PATH}/{branch}/{index}")).expect("valid path");
        self.master(who).derive_priv(secp(), &path).expect("derivable").to_keypair(secp())
    }
}
