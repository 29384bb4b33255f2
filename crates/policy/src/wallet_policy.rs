//! BIP-388 wallet policies: each output a hardware signer signs for, as a descriptor template
//! over `@i` key placeholders and the list of keys they stand for (ADR 0005). A device signs a
//! script path only for a wallet it registered and showed its holder, so a format 2 policy
//! whose outputs a device cannot register is refused when it is compiled, naming the limit.

use std::collections::HashMap;

use miniscript::{Descriptor, TranslatePk, Translator};

use crate::config::PolicyFormat;
use crate::descriptors::KeyChainCache;
use crate::error::{DescriptorError, PolicyError};

/// The most keys one wallet policy may hold (the Ledger Bitcoin app's limit).
pub const MAX_KEYS: usize = 15;
/// The longest descriptor template a device takes (the Ledger Bitcoin app's limit).
pub const MAX_TEMPLATE_LEN: usize = 512;

/// The names of the per-vault one-time keys in [`WalletPolicy::keys`], filled with the
/// vault's one-time xpubs before its unvault output is registered.
pub const ONE_TIME_KEYS: [&str; 2] = ["OO", "CO"];

/// One output as a BIP-388 wallet policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletPolicy {
    /// The name the device shows (`Vigil intake`).
    pub name: String,
    /// The descriptor template: `tr(@0/<6;7>/*,{...})`.
    pub template: String,
    /// `@i`'s key: `[fingerprint/path]xpub`, an xpub alone (the unspendable internal key),
    /// or one of [`ONE_TIME_KEYS`] for a vault's one-time key.
    pub keys: Vec<String>,
}

impl WalletPolicy {
    /// Whether it names per-vault one-time keys (registered once per vault).
    pub fn per_vault(&self) -> bool {
        self.keys.iter().any(|k| ONE_TIME_KEYS.contains(&k.as_str()))
    }
}

/// Replaces each placeholder with `@i/<a;b>/*`, numbering the keys in order of first use.
struct Placeholders<'a> {
    cache: &'a KeyChainCache,
    keys: Vec<String>,
    index: HashMap<String, usize>,
}

impl Translator<String, String, DescriptorError> for Placeholders<'_> {
    fn pk(&mut self, name: &String) -> Result<String, DescriptorError> {
        let (key, branch) = match self.cache.key_and_branch(name) {
            Some(found) => found,
            None if ONE_TIME_KEYS.contains(&name.as_str()) => (name.clone(), 0),
            None => return Err(DescriptorError::NoKey(name.clone())),
        };
        let next = self.keys.len();
        let i = *self.index.entry(key.clone()).or_insert(next);
        if i == next {
            self.keys.push(key);
        }
        Ok(match branch {
            0 => format!("@{i}/**"),
            b => format!("@{i}/<{b};{}>/*", b + 1),
        })
    }
    fn sha256(&mut self, _: &String) -> Result<String, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn hash256(&mut self, _: &String) -> Result<String, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn ripemd160(&mut self, _: &String) -> Result<String, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
    fn hash160(&mut self, _: &String) -> Result<String, DescriptorError> {
        Err(DescriptorError::HashLock)
    }
}

/// `template` (over Vigil's placeholder names) as the wallet policy `name`, checked against
/// what a device registers.
pub(crate) fn wallet_policy(
    format: PolicyFormat,
    name: &str,
    template: &Descriptor<String>,
    cache: &KeyChainCache,
) -> Result<WalletPolicy, PolicyError> {
    let refused = |reason: String| PolicyError::NotRegistrable { output: name.to_owned(), reason };
    if format == PolicyFormat::Shared {
        return Err(refused(
            "a format 1 policy repeats keys across leaves and has a literal internal key; make it with \
             `format = 2`"
                .into(),
        ));
    }
    let mut names = Placeholders { cache, keys: Vec::new(), index: HashMap::new() };
    let translated = template.translate_pk(&mut names).map_err(|e| match e {
        miniscript::TranslateErr::TranslatorErr(e) => PolicyError::from(e),
        miniscript::TranslateErr::OuterError(e) => {
            DescriptorError::Template { descriptor: template.to_string(), source: e }.into()
        }
    })?;
    let text = translated.to_string();
    let (text, keys) = in_order_of_use(text.split('#').next().unwrap_or_default(), names.keys);
    // The same key twice with one derivation is refused by the device: a bug in the table.
    let mut uses: Vec<&str> = text.split(['(', ',', ')', '{', '}']).filter(|t| t.starts_with('@')).collect();
    let all = uses.len();
    uses.sort_unstable();
    uses.dedup();
    if uses.len() != all {
        return Err(refused(format!("a key is used twice with one derivation in {text}")));
    }
    if keys.len() > MAX_KEYS {
        return Err(refused(format!(
            "it holds {} keys and a device registers at most {MAX_KEYS} (the owner's keys, the \
             co-signer, every guardian, the unspendable key and, in an unvault output, two one-time \
             keys): use fewer guardians or owner keys",
            keys.len()
        )));
    }
    if text.len() > MAX_TEMPLATE_LEN {
        return Err(refused(format!(
            "its template is {} characters long and a device takes at most {MAX_TEMPLATE_LEN}",
            text.len()
        )));
    }
    Ok(WalletPolicy { name: name.to_owned(), template: text, keys })
}

/// `@i` renumbered in the order the template first uses each key (miniscript visits the
/// internal key last; BIP-388 tools number keys as they are read), with the keys reordered
/// to match.
fn in_order_of_use(text: &str, keys: Vec<String>) -> (String, Vec<String>) {
    let mut order: Vec<usize> = Vec::with_capacity(keys.len());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let old: usize = rest[..digits].parse().expect("a placeholder this module wrote");
        let new = order.iter().position(|o| *o == old).unwrap_or_else(|| {
            order.push(old);
            order.len() - 1
        });
        out.push_str(&new.to_string());
        rest = &rest[digits..];
    }
    out.push_str(rest);
    (out, order.into_iter().map(|i| keys[i].clone()).collect())
}
