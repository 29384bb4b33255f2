//! The outputs of DESIGN.md §4 as taproot miniscript descriptors (ADR 0001).
//!
//! Each output is written once as a template over placeholder key names, then translated to
//! (a) ranged descriptors with the policy's xpubs, for display and import into Bitcoin Core;
//! (b) definite descriptors at one index, carrying key origins, for PSBTs; and (c) plain x-only
//! keys, for the hot path that builds and signs vault graphs.

use std::collections::HashMap;
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::key::XOnlyPublicKey;
use bitcoin::taproot::{ControlBlock, LeafVersion};
use bitcoin::ScriptBuf;
use miniscript::descriptor::{DefiniteDescriptorKey, DescriptorPublicKey, SinglePub, SinglePubKey};
use miniscript::{Descriptor, TranslatePk, Translator};

use crate::config::{secp, KeyChain, Policy, PolicyKey};
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

/// Descriptor templates over placeholder keys: `O0..` owner, `B` backup, `C` co-signer,
/// `G0..` guardians, `OO`/`CO` the owner's and co-signer's one-time keys, `NUMS`.
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

fn threshold(k: u32, prefix: &str, n: usize) -> String {
    if n == 1 {
        return format!("pk({prefix}0)");
    }
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    format!("multi_a({k},{})", keys.join(","))
}

impl Templates {
    pub fn new(policy: &Policy) -> Result<Templates, PolicyError> {
        let owner = threshold(policy.owner.threshold, "O", policy.owner.keys.len());
        let n = policy.guardians.keys.len();
        let guard_m = threshold(policy.guardians.threshold, "G", n);
        let guard_all = threshold(n as u32, "G", n);
        let (delay, recover_after, long) =
            (policy.delays.unvault, policy.delays.recovery, policy.delays.deep_vault);

        let recover = format!("and_v(v:{owner},and_v(v:{guard_m},older({recover_after})))");
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
                "tr(NUMS,{{and_v(v:pk(B),and_v(v:{guard_m},older({long}))),and_v(v:pk(B),and_v(v:pk(C),{guard_all}))}})"
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

/// The policy's keys one derivation step down (`xpub/0` or `xpub/1`), cached so that deriving
/// a vault's keys costs one child derivation per key.
#[derive(Debug, Clone)]
pub(crate) struct KeyChainCache {
    /// (placeholder, chain-level xpub, the policy key)
    keys: Vec<(String, Xpub, PolicyKey)>,
}

impl KeyChainCache {
    pub fn new(policy: &Policy, chain: KeyChain) -> Result<KeyChainCache, PolicyError> {
        let mut named: Vec<(String, &PolicyKey)> = Vec::new();
        for (i, k) in policy.owner.keys.iter().enumerate() {
            named.push((format!("O{i}"), k));
        }
        named.push(("B".into(), &policy.backup));
        named.push(("C".into(), &policy.cosigner));
        for (i, k) in policy.guardians.keys.iter().enumerate() {
            named.push((format!("G{i}"), k));
        }
        let step = [ChildNumber::from_normal_idx(chain as u32).expect("0 or 1")];
        let keys = named
            .into_iter()
            .map(|(name, k)| {
                let xpub = k.xpub.derive_pub(secp(), &step).map_err(DescriptorError::from)?;
                Ok((name, xpub, k.clone()))
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(KeyChainCache { keys })
    }

    /// Every placeholder's x-only key at `index`.
    pub fn xonly_at(&self, index: u32) -> Result<HashMap<String, XOnlyPublicKey>, PolicyError> {
        // Non-hardened indexes only: the policy holds public keys.
        ChildNumber::from_normal_idx(index).map_err(|_| DescriptorError::HardenedIndex(index))?;
        let mut map = HashMap::with_capacity(self.keys.len() + 3);
        for (name, xpub, _) in &self.keys {
            let key = crate::fast::child_public_key(xpub, index)?;
            map.insert(name.clone(), key.x_only_public_key().0);
        }
        map.insert("NUMS".into(), nums());
        Ok(map)
    }

    /// Every placeholder as a descriptor key on `chain`, ranged or at one index.
    pub fn descriptor_keys(
        &self,
        chain: KeyChain,
        index: Option<u32>,
    ) -> HashMap<String, DescriptorPublicKey> {
        let mut map: HashMap<String, DescriptorPublicKey> = self
            .keys
            .iter()
            .map(|(name, _, k)| {
                let text = k.descriptor_key(chain, index);
                (name.clone(), DescriptorPublicKey::from_str(&text).expect("built from a valid xpub"))
            })
            .collect();
        map.insert("NUMS".into(), single(nums()));
        map
    }
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
