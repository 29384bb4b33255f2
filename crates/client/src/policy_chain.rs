//! Following a client's policy from the version a party pinned: each change the guardians'
//! quorum signed (served by the co-signer, `GET /v1/policy/changes`) is checked here against
//! the policy it changed, so a co-signer cannot make a party adopt a policy the guardians did
//! not sign. The same rules as the co-signer and the towers apply: a change is judged by the
//! policy applied when the quorum signed it; one that only tightens applies at once, any other
//! at its height, and a later change replaces one still waiting.

use vigil_cosigner::config::MIN_GOVERNANCE_DELAY_BLOCKS;
use vigil_cosigner::wire::SignedChange;
use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::Policy;

/// Why a chain of changes is not followed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A change does not parse.
    #[error("policy change {step}: {reason}")]
    Unreadable {
        /// Its place in the chain (1-based).
        step: usize,
        /// Why.
        reason: String,
    },
    /// The chain does not lead to the version the co-signer judges by.
    #[error(
        "the co-signer judges by policy version {served}, and the changes it recorded lead to version {followed}: \
         a change is missing from its record (one made before it kept them?); ask the provider"
    )]
    Incomplete {
        /// The co-signer's version.
        served: u32,
        /// Where the recorded changes lead.
        followed: u32,
    },
    /// A change is not what the policy it changes allows.
    #[error("policy change {step} is refused: {reason}")]
    Refused {
        /// Its place in the chain (1-based).
        step: usize,
        /// Why.
        reason: String,
    },
}

impl Followed {
    /// Refuses a chain that does not lead where the co-signer is: `version`, the one it
    /// judges by (0: it did not say). A change still waiting here may already apply there
    /// (the two read the chain at slightly different tips). A client changed before the
    /// co-signer recorded its changes shows here, instead of as requests refused one by one.
    pub fn reaches(&self, version: u32) -> Result<(), ChainError> {
        let waiting = self.waiting.as_ref().map(|(p, _)| p.version);
        if version == 0 || version == self.current.version || Some(version) == waiting {
            return Ok(());
        }
        Err(ChainError::Incomplete { served: version, followed: self.current.version })
    }
}

/// Where the chain leads.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The policy that applies now (the pinned one when nothing changed).
    pub current: Policy,
    /// Its text.
    pub current_text: String,
    /// A signed change waiting for its height, and that height.
    pub waiting: Option<(Policy, u32)>,
    /// Every policy that applied at some point, oldest first, the current one last: a vault
    /// keeps the scripts of the policy it was made under.
    pub history: Vec<Policy>,
}

/// Follows `changes` from the pinned policy `original` (whose sha256 is the client's id) up
/// to the tip `tip`.
pub fn follow(original: &str, changes: &[SignedChange], tip: u32) -> Result<Followed, ChainError> {
    let client_id = sha256::Hash::hash(original.as_bytes()).to_string();
    let first =
        Policy::from_toml(original).map_err(|e| ChainError::Unreadable { step: 0, reason: e.to_string() })?;
    let mut applied = (first.clone(), original.to_owned());
    let mut history = vec![first];
    let mut waiting: Option<(Policy, String, u32)> = None;
    for (i, change) in changes.iter().enumerate() {
        let step = i + 1;
        let refused = |reason: String| ChainError::Refused { step, reason };
        // A waiting change whose height came before this one was signed had applied by then.
        if let Some((p, text, at)) = waiting.take() {
            if at <= change.signed_height {
                history.push(p.clone());
                applied = (p, text);
            } else {
                waiting = Some((p, text, at));
            }
        }
        let new = Policy::from_toml(&change.policy)
            .map_err(|e| ChainError::Unreadable { step, reason: e.to_string() })?;
        let old = &applied.0;
        if new.version <= old.version || waiting.as_ref().is_some_and(|(w, _, _)| new.version <= w.version) {
            return Err(refused(format!(
                "version {} does not come after version {}",
                new.version, old.version
            )));
        }
        if new.network != old.network {
            return Err(refused("it names another network".into()));
        }
        if new.cosigner != old.cosigner {
            return Err(refused("it names another co-signer key".into()));
        }
        let digest = vigil_tower::wire::policy_change_digest(&client_id, &change.policy);
        let signers = vigil_tower::registration::verified_signers(&change.signatures, &digest)
            .map_err(|_| refused("a signature does not verify".into()))?;
        let guardians = old.guardians.keys.iter().filter(|g| signers.contains(&g.auth_key())).count();
        if guardians < old.guardians.threshold as usize {
            return Err(refused(format!(
                "{guardians} of the guardians of version {} signed it; {} must",
                old.version, old.guardians.threshold
            )));
        }
        // The heights are the co-signer's word, not signed by the guardians: held to the rule
        // every party applies, they cannot make a loosening apply early or a tightening late.
        if changes[..i].last().is_some_and(|prev| change.signed_height < prev.signed_height) {
            return Err(refused("it was signed before the change that comes before it".into()));
        }
        let tightens = vigil_tower::client::only_tightens(old, &new);
        let delay = change.effective_height.saturating_sub(change.signed_height);
        if tightens && change.effective_height != change.signed_height {
            return Err(refused("it only tightens the policy, so it applies at once, not later".into()));
        }
        if !tightens && delay < MIN_GOVERNANCE_DELAY_BLOCKS {
            return Err(refused(format!(
                "it loosens the policy, so it waits at least {MIN_GOVERNANCE_DELAY_BLOCKS} blocks, not {delay}"
            )));
        }
        if change.effective_height <= change.signed_height {
            history.push(new.clone());
            applied = (new, change.policy.clone());
            waiting = None;
        } else {
            waiting = Some((new, change.policy.clone(), change.effective_height));
        }
    }
    if let Some((p, text, at)) = waiting.take() {
        if at <= tip {
            history.push(p.clone());
            applied = (p, text);
        } else {
            waiting = Some((p, text, at));
        }
    }
    Ok(Followed {
        current: applied.0,
        current_text: applied.1,
        waiting: waiting.map(|(p, _, at)| (p, at)),
        history,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vigil_policy::example::{auth_keypair, ExamplePolicy};

    /// `text` as a change of the client pinned as `original`, signed by the example's
    /// guardians `by`, dated as given.
    pub(crate) fn signed(
        original: &str,
        text: &str,
        by: &[usize],
        signed_height: u32,
        effective_height: u32,
    ) -> SignedChange {
        let keys = ExamplePolicy::default().keys();
        let id = sha256::Hash::hash(original.as_bytes()).to_string();
        let digest = vigil_tower::wire::policy_change_digest(&id, text);
        SignedChange {
            policy: text.to_owned(),
            signatures: by
                .iter()
                .map(|g| vigil_tower::wire::sign(&digest, &auth_keypair(&keys.guardians[*g])))
                .collect(),
            signed_height,
            effective_height,
        }
    }

    #[test]
    fn a_chain_is_followed_only_where_the_guardians_signed_it() {
        let v1 = ExamplePolicy::default().to_toml();
        let v2 = v1
            .replacen("version = 1", "version = 2", 1)
            .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000");
        let v3 = v2
            .replacen("version = 2", "version = 3", 1)
            .replace("hot_limit_sat = 1_000_000", "hot_limit_sat = 1_500_000");
        assert!(v2.contains("hot_limit_sat = 1_000_000"));
        // Nothing changed: the pinned policy.
        assert_eq!(follow(&v1, &[], 100).unwrap().current.version, 1);
        // A tightening applies at once; a loosening waits for its height.
        let now = signed(&v1, &v2, &[0, 1], 10, 10);
        let later = signed(&v1, &v3, &[0, 2], 20, 1029);
        let f = follow(&v1, &[now.clone(), later.clone()], 100).unwrap();
        assert_eq!(
            (f.current.version, f.waiting.as_ref().map(|(p, at)| (p.version, *at))),
            (2, Some((3, 1029)))
        );
        assert_eq!(f.current_text, v2);
        // Where the co-signer is must be where the chain leads (or the change still waiting).
        assert!(f.reaches(2).is_ok() && f.reaches(3).is_ok() && f.reaches(0).is_ok());
        assert!(matches!(f.reaches(4), Err(ChainError::Incomplete { served: 4, followed: 2 })));
        assert!(follow(&v1, &[], 100).unwrap().reaches(2).is_err(), "an unrecorded change");
        let f = follow(&v1, &[now.clone(), later.clone()], 1029).unwrap();
        assert_eq!((f.current.version, f.waiting.is_none(), f.history.len()), (3, true, 3));
        // One guardian is not the quorum; a stranger's signature does not verify as theirs;
        // a version that does not go up, or an edited text, is refused.
        let alone = signed(&v1, &v2, &[0], 10, 10);
        assert!(matches!(follow(&v1, &[alone], 100), Err(ChainError::Refused { step: 1, .. })));
        let mut edited = now.clone();
        edited.policy = edited.policy.replace("hot_limit_sat = 1_000_000", "hot_limit_sat = 9_000_000");
        assert!(matches!(follow(&v1, &[edited], 100), Err(ChainError::Refused { step: 1, .. })));
        let again = signed(&v1, &v2, &[0, 1], 12, 12);
        assert!(matches!(follow(&v1, &[now.clone(), again], 100), Err(ChainError::Refused { step: 2, .. })));
        // The heights are held to the rule: a loosening dated to apply at once, a tightening
        // dated to apply later, a change dated before the one it follows.
        let early = signed(&v1, &v3, &[0, 2], 20, 20);
        assert!(matches!(follow(&v1, &[now.clone(), early], 100), Err(ChainError::Refused { step: 2, .. })));
        let late = signed(&v1, &v2, &[0, 1], 10, 2000);
        assert!(matches!(follow(&v1, &[late], 100), Err(ChainError::Refused { step: 1, .. })));
        let backdated = signed(&v1, &v3, &[0, 2], 5, 1014);
        assert!(matches!(follow(&v1, &[now, backdated], 100), Err(ChainError::Refused { step: 2, .. })));
    }
}
