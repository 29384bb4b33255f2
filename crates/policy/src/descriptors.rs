//! The outputs of DESIGN.md §4 as taproot miniscript descriptors (ADR 0001).
//!
//! Each output is written once as a template over placeholder key names, then translated to
//! (a) ranged descriptors with the policy's xpubs, for display and import into Bitcoin Core;
//! (b) definite descriptors at one index, carrying key origins, for PSBTs; and (c) plain x-only
//! keys, for the hot path that builds and signs vault graphs.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::key::XOnlyPublicKey;
use bitcoin::secp256k1::PublicKey;
use bitcoin::taproot::{ControlBlock, LeafVersion};
use bitcoin::ScriptBuf;
use miniscript::descriptor::{DefiniteDescriptorKey, DescriptorPublicKey, SinglePub, SinglePubKey};
use miniscript::{Descriptor, TranslatePk, Translator};

use crate::config::{secp, KeyChain, Policy, PolicyFormat, PolicyKey};
use crate::error::{DescriptorError, PolicyError, TaprootError};

/// BIP341's provably unspendable point H: no key path, every spend goes through a leaf.
pub const NUMS_POINT: &str = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0";

/// Whether a vault's spend leaf also needs the guardians (DESIGN.md §4 "Two kinds of vault").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultKind {
    /// Owner + co-signer after DELAY; holds at most the velocity limit.
    Standard,
    /// Owner + co-signer + m-of-n guardians after DELAY.
    Guarded,
}

impl VaultKind {
    /// Its name on the wire and in records: "standard" or "guarded".
    pub fn name(&self) -> &'static str {
        match self {
            VaultKind::Standard => "standard",
            VaultKind::Guarded => "guarded",
        }
    }

    /// The kind named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<VaultKind> {
        [VaultKind::Standard, VaultKind::Guarded].into_iter().find(|k| k.name() == name)
    }
}

/// Descriptor templates over placeholder keys: `O0..` owner, `B` backup, `C` co-signer,
/// `G0..` guardians, `OO`/`CO` the owner's and co-signer's one-time keys, `NUMS`. A party's
/// name alone is its key in the first leaf it sits in; with [`SECOND`] appended, in the
/// second (the recovery leaf; the deep vault's fast leaf). Format 1 derives both alike.
#[derive(Debug, Clone)]
pub(crate) struct Templates {
    pub intake: Descriptor<String>,
    pub vault: Descriptor<String>,
    pub unvault_standard: Descriptor<String>,
    pub unvault_guarded: Descriptor<String>,
    pub recovery: Descriptor<String>,
    pub deep_vault: Descriptor<String>,
    /// The recovery leaf alone (owner + guardians after T_RECOVER), shared by the intake,
    /// unvault and recovery outputs: what a guardian signs to recover without the co-signer.
    pub recover_leaf: Descriptor<String>,
    /// The unvault output's spend leaf alone, per kind, and the owner's keys' names in it.
    pub spend_leaf_standard: Descriptor<String>,
    pub spend_leaf_guarded: Descriptor<String>,
    pub owner_names: Vec<String>,
}

/// Appended to a party's placeholder for its key in the second leaf it sits in.
pub(crate) const SECOND: &str = "_2";

fn threshold(k: u32, prefix: &str, n: usize, suffix: &str) -> String {
    if n == 1 {
        return format!("pk({prefix}0{suffix})");
    }
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}{suffix}")).collect();
    format!("multi_a({k},{})", keys.join(","))
}

impl Templates {
    pub fn new(policy: &Policy) -> Result<Templates, PolicyError> {
        let (k, n_owner) = (policy.owner.threshold, policy.owner.keys.len());
        let owner = threshold(k, "O", n_owner, "");
        let n = policy.guardians.keys.len();
        let guard_m = threshold(policy.guardians.threshold, "G", n, "");
        let (delay, recover_after, long) =
            (policy.delays.unvault, policy.delays.recovery, policy.delays.deep_vault);

        // The recovery leaf is every key's second leaf; the deep vault's fast leaf the
        // backup's and the guardians'.
        let (owner_2, guard_m_2) =
            (threshold(k, "O", n_owner, SECOND), threshold(policy.guardians.threshold, "G", n, SECOND));
        let guard_all_2 = threshold(n as u32, "G", n, SECOND);
        let recover = format!("and_v(v:{owner_2},and_v(v:{guard_m_2},older({recover_after})))");
        let once = "and_v(v:pk(OO),pk(CO))";
        let spend_standard = format!("and_v(v:{owner},and_v(v:pk(C),older({delay})))");
        let spend_guarded = format!("and_v(v:{owner},and_v(v:pk(C),and_v(v:{guard_m},older({delay}))))");
        // The pre-signed leaf sits at depth 1: cancels are the transactions that must be cheapest.
        let unvault = |spend: &str| format!("tr(NUMS,{{{once},{{{spend},{recover}}}}})");
        let parse = |s: String| {
            let template = |source| DescriptorError::Template { descriptor: s.clone(), source };
            let d = Descriptor::<String>::from_str(&s).map_err(template)?;
            d.sanity_check().map_err(template)?;
            Ok::<_, PolicyError>(d)
        };
        Ok(Templates {
            intake: parse(format!("tr(NUMS,{{and_v(v:{owner},pk(C)),{recover}}})"))?,
            vault: parse(format!("tr(NUMS,{once})"))?,
            unvault_standard: parse(unvault(&spend_standard))?,
            unvault_guarded: parse(unvault(&spend_guarded))?,
            recovery: parse(format!("tr(NUMS,{{and_v(v:{owner},and_v(v:pk(C),{guard_m})),{recover}}})"))?,
            deep_vault: parse(format!(
                "tr(NUMS,{{and_v(v:pk(B),and_v(v:{guard_m},older({long}))),and_v(v:pk(B{SECOND}),and_v(v:pk(C),{guard_all_2}))}})"
            ))?,
            recover_leaf: parse(format!("tr(NUMS,{recover})"))?,
            spend_leaf_standard: parse(format!("tr(NUMS,{spend_standard})"))?,
            spend_leaf_guarded: parse(format!("tr(NUMS,{spend_guarded})"))?,
            owner_names: (0..policy.owner.keys.len()).map(|i| format!("O{i}")).collect(),
        })
    }

    pub fn unvault(&self, kind: VaultKind) -> &Descriptor<String> {
        match kind {
            VaultKind::Standard => &self.unvault_standard,
            VaultKind::Guarded => &self.unvault_guarded,
        }
    }
}

/// Replaces placeholder names with keys from a map.
pub(crate) struct Placeholders<'a, K>(pub &'a HashMap<String, K>);

impl<K: miniscript::MiniscriptKey + Clone> Translator<String, K, DescriptorError> for Placeholders<'_, K> {
    fn pk(&mut self, pk: &String) -> Result<K, DescriptorError> {
        self.0.get(pk).cloned().ok_or_else(|| DescriptorError::NoKey(pk.clone()))
    }
    // Vigil's templates have no hash locks.
    fn sha256(&mut self, _: &String) -> Result<K::Sha256, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn hash256(&mut self, _: &String) -> Result<K::Hash256, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn ripemd160(&mut self, _: &String) -> Result<K::Ripemd160, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn hash160(&mut self, _: &String) -> Result<K::Hash160, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
}

pub(crate) fn translate<K>(
    template: &Descriptor<String>,
    keys: &HashMap<String, K>,
) -> Result<Descriptor<K>, PolicyError>
where
    K: miniscript::MiniscriptKey + Clone,
{
    template.translate_pk(&mut Placeholders(keys)).map_err(|e| match e {
        miniscript::TranslateErr::TranslatorErr(e) => e.into(),
        miniscript::TranslateErr::OuterError(e) => {
            DescriptorError::Template { descriptor: template.to_string(), source: e }.into()
        }
    })
}

/// The policy's keys one derivation step down (`xpub/branch`), cached so that deriving a
/// vault's keys costs one child derivation per key and branch.
#[derive(Debug, Clone)]
pub(crate) struct KeyChainCache {
    /// (placeholders, branch-level xpub, the policy key, branch): format 1 has one entry per
    /// key naming both its placeholders; format 2 one per key and branch.
    keys: Vec<(Vec<String>, Xpub, PolicyKey, u32)>,
    /// The internal key in format 2: [`nums_xpub`], it one step down, and the branch; format
    /// 1 uses the NUMS point itself.
    nums: Option<(Xpub, Xpub, u32)>,
    /// The keys derived at recent indexes: one request looks at a vault's keys several
    /// times (its descriptors, its spend leaf), each a derivation per key otherwise.
    recent: RecentKeys,
}

/// Every entry of [`KeyChainCache::keys`] at one index, and the format-2 internal key.
type KeysAt = (Vec<PublicKey>, Option<PublicKey>);

/// A small memo of derived keys, dropped whole when full; a clone starts empty.
#[derive(Debug, Default)]
struct RecentKeys(Mutex<HashMap<u32, Arc<KeysAt>>>);

impl Clone for RecentKeys {
    fn clone(&self) -> RecentKeys {
        RecentKeys::default()
    }
}

/// How many indexes [`RecentKeys`] holds: the vaults a client works on at once.
const RECENT_INDEXES: usize = 64;

impl KeyChainCache {
    pub fn new(policy: &Policy, chain: KeyChain) -> Result<KeyChainCache, PolicyError> {
        let [first, second] = chain.branches(policy.format);
        let mut named: Vec<(String, &PolicyKey)> = Vec::new();
        for (i, k) in policy.owner.keys.iter().enumerate() {
            named.push((format!("O{i}"), k));
        }
        named.push(("B".into(), &policy.backup));
        named.push(("C".into(), &policy.cosigner));
        for (i, k) in policy.guardians.keys.iter().enumerate() {
            named.push((format!("G{i}"), k));
        }
        let step = |xpub: &Xpub, branch: u32| -> Result<Xpub, PolicyError> {
            let step = [ChildNumber::from_normal_idx(branch).expect("a small branch")];
            Ok(xpub.derive_pub(secp(), &step).map_err(DescriptorError::from)?)
        };
        let mut keys = Vec::with_capacity(2 * named.len());
        for (name, k) in named {
            let second_name = format!("{name}{SECOND}");
            if first == second {
                keys.push((vec![name, second_name], step(&k.xpub, first)?, k.clone(), first));
            } else {
                keys.push((vec![name], step(&k.xpub, first)?, k.clone(), first));
                keys.push((vec![second_name], step(&k.xpub, second)?, k.clone(), second));
            }
        }
        let nums = match policy.format {
            PolicyFormat::Shared => None,
            PolicyFormat::PerLeaf => {
                let root = nums_xpub(policy);
                Some((root, step(&root, first)?, first))
            }
        };
        Ok(KeyChainCache { keys, nums, recent: RecentKeys::default() })
    }

    /// Every key at `index` (non-hardened), derived once while it stays recent.
    fn keys_at(&self, index: u32) -> Result<Arc<KeysAt>, PolicyError> {
        ChildNumber::from_normal_idx(index).map_err(|_| DescriptorError::HardenedIndex(index))?;
        let recent = || self.recent.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = recent().get(&index) {
            return Ok(hit.clone());
        }
        let keys = self
            .keys
            .iter()
            .map(|(_, xpub, ..)| crate::fast::child_public_key(xpub, index))
            .collect::<Result<Vec<_>, _>>()?;
        let internal =
            self.nums.as_ref().map(|(_, xpub, _)| crate::fast::child_public_key(xpub, index)).transpose()?;
        let derived = Arc::new((keys, internal));
        let mut recent = recent();
        if recent.len() >= RECENT_INDEXES {
            recent.clear();
        }
        recent.insert(index, derived.clone());
        Ok(derived)
    }

    /// Every placeholder's x-only key at `index`.
    pub fn xonly_at(&self, index: u32) -> Result<HashMap<String, XOnlyPublicKey>, PolicyError> {
        let derived = self.keys_at(index)?;
        let mut map = HashMap::with_capacity(2 * self.keys.len() + 3);
        for ((names, ..), key) in self.keys.iter().zip(&derived.0) {
            let key = key.x_only_public_key().0;
            for name in names {
                map.insert(name.clone(), key);
            }
        }
        map.insert("NUMS".into(), internal(&derived));
        Ok(map)
    }

    /// The unspendable internal key at `index`.
    pub fn internal_key(&self, index: u32) -> Result<XOnlyPublicKey, PolicyError> {
        Ok(internal(&*self.keys_at(index)?))
    }

    /// A placeholder's key without derivation (`[fp/path]xpub`; the NUMS xpub) and the
    /// branch it derives on; `None` for a name the policy does not hold (`OO`, `CO`).
    pub fn key_and_branch(&self, name: &str) -> Option<(String, u32)> {
        if name == "NUMS" {
            return self.nums.as_ref().map(|(root, _, branch)| (root.to_string(), *branch));
        }
        let (_, _, key, branch) = self.keys.iter().find(|(names, ..)| names.iter().any(|n| n == name))?;
        Some((key.key_expression(), *branch))
    }

    /// Every placeholder as a ranged descriptor key (`[origin]xpub/branch/*`): what a wallet
    /// imports and a hardware signer registers.
    pub fn ranged_keys(&self) -> HashMap<String, DescriptorPublicKey> {
        let parse = |text: String| DescriptorPublicKey::from_str(&text).expect("built from a valid xpub");
        let mut map = HashMap::with_capacity(2 * self.keys.len() + 3);
        for (names, _, k, branch) in &self.keys {
            let key = parse(k.descriptor_key(*branch, None));
            for name in names {
                map.insert(name.clone(), key.clone());
            }
        }
        let internal = match &self.nums {
            None => single(nums()),
            Some((root, _, branch)) => parse(format!("{root}/{branch}/*")),
        };
        map.insert("NUMS".into(), internal);
        map
    }

    /// Every placeholder at `index`: the derived key itself with its full origin. It gives
    /// the same scripts and PSBT key origins as [`Self::ranged_keys`] derived there, and
    /// spares every use (a PSBT update, a script) a BIP32 derivation per key.
    pub fn keys_with_origin(&self, index: u32) -> Result<HashMap<String, DescriptorPublicKey>, PolicyError> {
        let mut map = HashMap::with_capacity(2 * self.keys.len() + 3);
        let derived = self.keys_at(index)?;
        let at = |key: &PublicKey, origin: (Fingerprint, DerivationPath)| {
            DescriptorPublicKey::Single(SinglePub {
                origin: Some(origin),
                key: SinglePubKey::FullKey(bitcoin::PublicKey::new(*key)),
            })
        };
        for ((names, _, k, branch), key) in self.keys.iter().zip(&derived.0) {
            let key = at(key, k.key_source(*branch, index));
            for name in names {
                map.insert(name.clone(), key.clone());
            }
        }
        let internal = match (&self.nums, &derived.1) {
            (Some((root, _, branch)), Some(key)) => {
                let path = [*branch, index].map(|i| ChildNumber::from_normal_idx(i).expect("checked"));
                at(key, (root.fingerprint(), DerivationPath::from(path.to_vec())))
            }
            _ => single(nums()),
        };
        map.insert("NUMS".into(), internal);
        Ok(map)
    }
}

/// Format 2's unspendable internal key: an xpub over BIP341's point H, whose chain code
/// binds it to `policy`'s keys (ADR 0005). Nobody knows H's discrete logarithm, so no child
/// of it has a private key either; anyone holding the policy recomputes it.
pub fn nums_xpub(policy: &Policy) -> Xpub {
    let mut engine = sha256::Hash::engine();
    engine.input(b"vigil/nums");
    let keys =
        policy.owner.keys.iter().chain([&policy.backup, &policy.cosigner]).chain(&policy.guardians.keys);
    for key in keys {
        engine.input(&key.xpub.encode());
    }
    let chain_code = sha256::Hash::from_engine(engine).to_byte_array();
    Xpub {
        network: policy.network.into(),
        depth: 0,
        parent_fingerprint: Default::default(),
        child_number: ChildNumber::from_normal_idx(0).expect("0"),
        public_key: nums().public_key(bitcoin::secp256k1::Parity::Even),
        chain_code: chain_code.into(),
    }
}

/// The internal key among `derived`: format 2's, or the NUMS point.
fn internal(derived: &KeysAt) -> XOnlyPublicKey {
    derived.1.map_or_else(nums, |k| k.x_only_public_key().0)
}

/// The NUMS point as a key.
pub fn nums() -> XOnlyPublicKey {
    // Parsing lifts x to a point (a square root): do it once.
    static NUMS: std::sync::OnceLock<XOnlyPublicKey> = std::sync::OnceLock::new();
    *NUMS.get_or_init(|| XOnlyPublicKey::from_str(NUMS_POINT).expect("a valid point"))
}

/// A plain x-only key as a descriptor key (the one-time keys, the NUMS point).
pub(crate) fn single(key: XOnlyPublicKey) -> DescriptorPublicKey {
    DescriptorPublicKey::Single(SinglePub { origin: None, key: SinglePubKey::XOnly(key) })
}

/// Makes every key of a descriptor definite (it must have no wildcard).
pub(crate) fn definite(
    d: Descriptor<DescriptorPublicKey>,
) -> Result<Descriptor<DefiniteDescriptorKey>, PolicyError> {
    Ok(d.at_derivation_index(0).map_err(DescriptorError::from)?)
}

/// Every leaf of a taproot descriptor: its script and the control block that reveals it, in
/// the order the descriptor lists them.
pub fn taproot_leaves<K: miniscript::ToPublicKey>(
    d: &Descriptor<K>,
) -> Result<Vec<(ScriptBuf, ControlBlock)>, PolicyError> {
    let Descriptor::Tr(tr) = d else { return Err(TaprootError::NotTaproot.into()) };
    let info = tr.spend_info();
    tr.iter_scripts()
        .map(|(_, ms)| {
            let script = ms.encode();
            let control = info
                .control_block(&(script.clone(), LeafVersion::TapScript))
                .ok_or(TaprootError::LeafMissing)?;
            Ok((script, control))
        })
        .collect()
}
