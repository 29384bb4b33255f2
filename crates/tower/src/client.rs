//! A client of the tower: a pinned policy, the keys allowed to act under it, and the policy
//! changes its guardians signed.
//!
//! A client's id is the sha256 of the policy file it was first pinned with, and stays its id
//! when guardian-signed changes replace the policy: every vault names its client by that id,
//! and the store keeps each client's applied policy, so a restart (or an edit of the file the
//! configuration names) never detaches a vault from the policy it is enforced under.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::{CompiledPolicy, Policy, PolicyError};

use crate::watch::PolicyLimits;

/// Blocks a loosening policy change waits: longer than any captivity (> 7 days).
pub const GOVERNANCE_DELAY_BLOCKS: u32 = 1_009;

/// The longest wait a co-signer may set for a loosening (about three months): a change
/// naming a later height to apply from is refused.
pub const MAX_GOVERNANCE_DELAY_BLOCKS: u32 = 13_104;

/// A policy file's id: the sha256 of its bytes, hex.
pub fn policy_id(text: &str) -> String {
    sha256::Hash::hash(text.as_bytes()).to_string()
}

/// A client's policy as the tower enforces it.
pub struct Client {
    /// The client's id (its first policy's sha256).
    pub id: String,
    /// The applied policy file's text.
    pub text: String,
    /// The applied policy.
    pub policy: Policy,
    /// Compiled, to rebuild graphs.
    pub compiled: CompiledPolicy,
    /// Owner and co-signer auth keys (may register vaults and submit approvals).
    pub registrars: Vec<XOnlyPublicKey>,
    /// The co-signer's auth key (approves).
    pub cosigner: XOnlyPublicKey,
    /// Guardians' auth keys (approve guarded spends, panic, change the policy).
    pub guardians: Vec<XOnlyPublicKey>,
    /// The texts of the versions applied before this one, oldest first: a vault made under
    /// one is registered under it (its scripts and DELAY are that version's).
    pub earlier: Vec<String>,
    /// Those of them that build, compiled.
    earlier_compiled: Vec<CompiledPolicy>,
}

impl Client {
    /// Client `id` under the policy file `text`.
    pub fn new(id: &str, text: &str) -> Result<Client, PolicyError> {
        let policy = Policy::from_toml(text)?;
        let compiled = CompiledPolicy::new(policy.clone())?;
        let mut registrars: Vec<XOnlyPublicKey> = policy.owner.keys.iter().map(|k| k.auth_key()).collect();
        registrars.push(policy.cosigner.auth_key());
        Ok(Client {
            id: id.to_owned(),
            text: text.to_owned(),
            cosigner: policy.cosigner.auth_key(),
            guardians: policy.guardians.keys.iter().map(|k| k.auth_key()).collect(),
            registrars,
            compiled,
            policy,
            earlier: Vec::new(),
            earlier_compiled: Vec::new(),
        })
    }

    /// The same client with `earlier` versions (texts, oldest first) kept. One that no longer
    /// builds (a later build's stricter rules) is kept as text, not used.
    pub fn with_earlier(mut self, earlier: &[String]) -> Client {
        self.earlier = earlier.to_vec();
        self.earlier_compiled = earlier
            .iter()
            .filter_map(|text| match Policy::from_toml(text).and_then(CompiledPolicy::new) {
                Ok(compiled) => Some(compiled),
                Err(e) => {
                    tracing::warn!(client = %self.id, error = %e, "an earlier policy version no longer builds");
                    None
                }
            })
            .collect();
        self
    }

    /// The next version: `text` applied, this one kept among the earlier.
    pub fn changed_to(&self, text: &str) -> Result<Client, PolicyError> {
        let mut next = Client::new(&self.id, text)?;
        next.earlier = self.earlier.clone();
        next.earlier.push(self.text.clone());
        next.earlier_compiled = self.earlier_compiled.clone();
        next.earlier_compiled.push(self.compiled.clone());
        Ok(next)
    }

    /// Every version this tower holds, today's first.
    pub fn versions(&self) -> impl Iterator<Item = &CompiledPolicy> {
        std::iter::once(&self.compiled).chain(self.earlier_compiled.iter().rev())
    }

    /// Version `version`'s compiled policy: this one's or an earlier one's.
    pub fn version(&self, version: u32) -> Option<&CompiledPolicy> {
        self.versions().find(|c| c.policy().version == version)
    }

    /// The limits the watcher enforces for it.
    pub fn limits(&self) -> PolicyLimits {
        PolicyLimits {
            velocity_limit_sat: self.policy.allowance.velocity_limit_sat,
            velocity_window_blocks: self.policy.allowance.velocity_window_blocks,
        }
    }

    /// Whether `key` is one of the client's parties (owner, co-signer, guardian).
    pub fn is_party(&self, key: &XOnlyPublicKey) -> bool {
        self.registrars.contains(key) || self.guardians.contains(key)
    }

    /// How many distinct guardians are among `signers`.
    pub fn guardians_among(&self, signers: &[XOnlyPublicKey]) -> u32 {
        let distinct: HashSet<&XOnlyPublicKey> =
            signers.iter().filter(|k| self.guardians.contains(k)).collect();
        distinct.len() as u32
    }

    /// Whether `signers` hold the guardian quorum.
    pub fn has_guardian_quorum(&self, signers: &[XOnlyPublicKey]) -> bool {
        self.guardians_among(signers) >= self.policy.guardians.threshold
    }
}

/// Why `policy`'s fee ladder is out of reach of a fee wallet sized at `stress_sat_per_vb`, if
/// it is: the wallet must pay beyond the ladder's top rung, or the last bumps a cancel needs
/// under a fee spike could not be paid.
pub fn ladder_out_of_reach(policy: &Policy, stress_sat_per_vb: u64) -> Option<String> {
    let top = policy.fees.ladder_sat_per_vb.last().copied().unwrap_or(0);
    (stress_sat_per_vb <= top).then(|| {
        format!("its top ladder rung ({top} sat/vB) is not below the fee wallet's stress feerate ({stress_sat_per_vb} sat/vB)")
    })
}

/// A client's new policy, signed by its guardian quorum, waiting to take effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// The client's id.
    pub client: String,
    /// The new policy file's text.
    pub policy: String,
    /// The new version.
    pub version: u32,
    /// It applies from this height.
    pub effective_height: u32,
}

/// What the store keeps of a client: its applied policy and the change waiting, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client's id.
    pub id: String,
    /// The applied policy file's text.
    pub policy: String,
    /// A guardian-signed change waiting for its height.
    pub pending: Option<PolicyChange>,
    /// The texts of the versions applied before it, oldest first.
    pub earlier: Vec<String>,
}

/// Whether `new` lets more leave, or sooner, than `old`: a higher limit, a shorter window,
/// a whitelist entry added (or the whitelist emptied), a shorter delay, fewer guardians (or
/// owner keys) to agree or more keys to choose them from, fewer towers, or cancels that may
/// pay less (a lower top rung of the fee ladder, a lower `max_fee_percent`: a cancel that
/// cannot outbid the unvault's spend in a busy mempool lets it through). A lockdown refuses
/// such a change; one that only replaces keys or towers (a guardian who keeps locking the
/// family down, the owner's stolen keys) still waits out the governance delay.
pub fn loosens(old: &Policy, new: &Policy) -> bool {
    let (a, b) = (&old.allowance, &new.allowance);
    let (d, e) = (&old.delays, &new.delays);
    b.velocity_limit_sat > a.velocity_limit_sat
        || b.spend_limit_sat > a.spend_limit_sat
        || b.hot_limit_sat > a.hot_limit_sat
        || b.velocity_window_blocks < a.velocity_window_blocks
        // An empty whitelist restricts nothing: filling one tightens, emptying one loosens.
        || (!a.whitelist.is_empty()
            && (b.whitelist.is_empty() || b.whitelist.iter().any(|w| !a.whitelist.contains(w))))
        || e.unvault < d.unvault
        || e.recovery < d.recovery
        || e.deep_vault < d.deep_vault
        || looser(&old.guardians, &new.guardians)
        || looser(&old.owner, &new.owner)
        || new.towers.len() < old.towers.len()
        || new.fees.ladder_sat_per_vb.last() < old.fees.ladder_sat_per_vb.last()
        || new.fees.max_fee_percent < old.fees.max_fee_percent
}

/// Whether `new` takes fewer of its keys to agree, or leaves more of them free not to.
fn looser(old: &vigil_policy::config::KeySet, new: &vigil_policy::config::KeySet) -> bool {
    let spare = |k: &vigil_policy::config::KeySet| k.keys.len().saturating_sub(k.threshold as usize);
    new.threshold < old.threshold || spare(new) > spare(old)
}

/// Whether `new` only tightens `old`: the same everything but lower limits, a longer window,
/// a shorter whitelist. Tightening applies at once; anything else waits out the governance
/// delay.
pub fn only_tightens(old: &Policy, new: &Policy) -> bool {
    let (a, b) = (&old.allowance, &new.allowance);
    let mut same = new.clone();
    same.version = old.version;
    same.allowance = old.allowance.clone();
    same == *old
        && b.velocity_limit_sat <= a.velocity_limit_sat
        && b.spend_limit_sat <= a.spend_limit_sat
        && b.hot_limit_sat <= a.hot_limit_sat
        && b.velocity_window_blocks >= a.velocity_window_blocks
        && b.whitelist.iter().all(|w| a.whitelist.contains(w))
        // An empty whitelist restricts nothing: emptying one loosens.
        && (a.whitelist.is_empty() || !b.whitelist.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_policy::example::ExamplePolicy;

    #[test]
    fn what_lets_more_leave_or_sooner_loosens_and_replacing_keys_does_not() {
        let old = Policy::from_toml(&ExamplePolicy::default().to_toml()).unwrap();
        let changed = |f: &dyn Fn(&mut Policy)| {
            let mut p = old.clone();
            p.version += 1;
            f(&mut p);
            loosens(&old, &p)
        };
        assert!(!changed(&|_| {}));
        assert!(!changed(&|p| p.guardians.keys.reverse()), "keys replaced, the threshold kept");
        assert!(!changed(&|p| p.allowance.velocity_limit_sat -= 1));
        assert!(changed(&|p| p.allowance.velocity_limit_sat += 1));
        assert!(changed(&|p| p.allowance.spend_limit_sat += 1));
        assert!(changed(&|p| p.allowance.hot_limit_sat += 1));
        assert!(changed(&|p| p.allowance.velocity_window_blocks -= 1));
        assert!(changed(&|p| p.delays.unvault -= 1));
        assert!(changed(&|p| p.delays.recovery -= 1));
        assert!(changed(&|p| p.delays.deep_vault -= 1));
        assert!(changed(&|p| p.guardians.threshold -= 1));
        assert!(changed(&|p| p.owner.threshold = 0));
        assert!(changed(&|p| p.guardians.keys.push(p.guardians.keys[0].clone())), "one more to choose from");
        assert!(changed(&|p| {
            p.towers.pop();
        }));
        // Cancels that may pay less; a ladder with more rungs below its top does not.
        assert!(changed(&|p| *p.fees.ladder_sat_per_vb.last_mut().unwrap() -= 1));
        assert!(changed(&|p| p.fees.max_fee_percent -= 1));
        assert!(!changed(&|p| p.fees.ladder_sat_per_vb.insert(2, 3)));
        assert!(!changed(&|p| p.fees.max_fee_percent += 1));
        // Whitelists: filling an empty one tightens; adding to one, or emptying it, loosens.
        use vigil_policy::bitcoin::{hashes::Hash, Address, ScriptBuf, WScriptHash};
        let to = |n: u8| {
            let script = ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array([n; 32]));
            Address::from_script(&script, old.network).unwrap()
        };
        assert!(!changed(&|p| p.allowance.whitelist = vec![to(1)]));
        let listed = |f: &dyn Fn(&mut Policy)| {
            let mut before = old.clone();
            before.allowance.whitelist = vec![to(1), to(2)];
            let mut after = before.clone();
            f(&mut after);
            loosens(&before, &after)
        };
        assert!(!listed(&|p| p.allowance.whitelist.truncate(1)));
        assert!(listed(&|p| p.allowance.whitelist.push(to(3))));
        assert!(listed(&|p| p.allowance.whitelist.clear()));
    }
}
