//! The policy versions an owner's wallet follows: the pinned one, then each change the
//! guardians' quorum signed, checked from the pinned copy by [`crate::policy_chain::follow`].
//! New vaults, addresses and change use the version that applies now; a vault or an intake
//! coin keeps the scripts of the version it was made under, so its spends and recoveries are
//! built from that version.
//!
//! The wallet keeps the last record of changes it checked (`policy-changes.json`): it works
//! from that one when the co-signer cannot be reached, and a co-signer that later serves a
//! record that does not extend it (a change dropped or replaced) is not followed back.

use std::collections::HashMap;
use std::path::Path;

use vigil_cosigner::wire::PolicyChanges;
use vigil_policy::{CompiledPolicy, Policy};

use crate::policy_chain;
use crate::wallet::{replace_file, WalletDir, WalletError};

/// The record of changes last checked, in the wallet directory.
pub const CHANGES_FILE: &str = "policy-changes.json";

/// Every policy version the wallet knows, oldest first, the one that applies now last.
#[derive(Debug, Clone)]
pub struct Policies {
    versions: Vec<CompiledPolicy>,
    /// A signed change still waiting for its height (by the last tip seen), compiled: a record
    /// made under it once it applied is still read when the kept tip is behind.
    pending: Option<CompiledPolicy>,
    /// Each version's id (the sha256 of its text, as the co-signer names them).
    ids: HashMap<String, u32>,
    /// A signed change waiting for its height: its version and that height.
    pub waiting: Option<(u32, u32)>,
    /// Why the co-signer's record of changes was not followed as it was served (the wallet
    /// then works from the one it checked before), in words.
    pub warning: Option<String>,
}

/// The record of changes to follow from the policy `pinned`: the one the co-signer `served`
/// if it checks and extends the one kept at `path` (then it is kept there), else the one kept; and why the served one
/// was not taken, in words. Owners and guardians keep theirs, so that neither follows a
/// co-signer back to an older policy, and both still know every version when it is gone.
pub fn checked_record(
    pinned: &str,
    path: &Path,
    served: Option<PolicyChanges>,
) -> Result<(Option<PolicyChanges>, Option<String>), WalletError> {
    let mut warning = None;
    let kept: Option<PolicyChanges> = match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(kept) => Some(kept),
            Err(e) => {
                warning =
                    Some(format!("{} is damaged ({e}); it is read again from the co-signer", path.display()));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(WalletError::Io { path: path.to_owned(), source }),
    };
    let Some(served) = served else { return Ok((kept, warning)) };
    let kept_changes = kept.as_ref().map_or(&[][..], |k| &k.changes[..]);
    match policy_chain::follow(pinned, &served.changes, served.tip) {
        Ok(followed) if served.changes.starts_with(kept_changes) => {
            if let Err(e) = followed.reaches(served.current_version) {
                warning = Some(e.to_string());
            }
            // Written again when a change came, or when one the kept record has waiting came
            // due: offline, the kept record's tip says which versions applied.
            let came_due = kept.as_ref().is_some_and(|k| {
                k.changes.iter().any(|c| k.tip < c.effective_height && c.effective_height <= served.tip)
            });
            if kept_changes != &served.changes[..] || came_due {
                replace_file(path, &serde_json::to_vec_pretty(&served).expect("json"))?;
            }
            Ok((Some(served), warning))
        }
        Ok(_) => Ok((
            kept,
            Some(
                "the co-signer now serves a record of policy changes that drops or replaces one it served \
                 before; the record checked before is kept to. Tell the guardians and the provider"
                    .into(),
            ),
        )),
        Err(e) => Ok((
            kept,
            Some(format!(
                "{e}: the co-signer serves policy changes that do not check against your copy; the record \
                 checked before is kept to. Tell the guardians and the provider"
            )),
        )),
    }
}

impl Policies {
    /// The pinned policy alone.
    pub fn pinned(compiled: CompiledPolicy) -> Policies {
        Policies {
            versions: vec![compiled],
            pending: None,
            ids: HashMap::new(),
            waiting: None,
            warning: None,
        }
    }

    /// Follows the wallet in `dir` from its pinned policy, along the record the co-signer
    /// `served` if it checks and extends the one kept, else along the one kept. A record that
    /// checks is kept for next time.
    pub fn follow(dir: &WalletDir, served: Option<PolicyChanges>) -> Result<Policies, WalletError> {
        let pinned = dir.policy_text()?;
        let path = dir.file(CHANGES_FILE);
        let (record, warning) = checked_record(&pinned, &path, served)?;
        let compile = |p| {
            CompiledPolicy::new(p)
                .map_err(|e| WalletError::Damaged { path: path.clone(), reason: e.to_string() })
        };
        let first = Policy::from_toml(&pinned)
            .map_err(|e| WalletError::Damaged { path: dir.file("policy.toml"), reason: e.to_string() })?;
        let mut ids = HashMap::from([(vigil_tower::policy_id(&pinned), first.version)]);
        let Some(record) = record else {
            return Ok(Policies { ids, warning, ..Policies::pinned(compile(first)?) });
        };
        // The kept record checked when it was kept; checked again, as anything read from disk.
        let followed = policy_chain::follow(&pinned, &record.changes, record.tip)
            .map_err(|e| WalletError::Damaged { path: path.clone(), reason: e.to_string() })?;
        for change in &record.changes {
            if let Ok(p) = Policy::from_toml(&change.policy) {
                ids.insert(vigil_tower::policy_id(&change.policy), p.version);
            }
        }
        Ok(Policies {
            versions: followed.history.into_iter().map(compile).collect::<Result<_, _>>()?,
            pending: followed.waiting.as_ref().map(|(p, _)| compile(p.clone())).transpose()?,
            ids,
            waiting: followed.waiting.map(|(p, at)| (p.version, at)),
            warning,
        })
    }

    /// The version that applies now.
    pub fn current(&self) -> &CompiledPolicy {
        self.versions.last().expect("at least the pinned policy")
    }

    /// The version a record names (none: the pinned one).
    pub fn version(&self, version: Option<u32>) -> Result<&CompiledPolicy, WalletError> {
        match version {
            None => Ok(&self.versions[0]),
            Some(v) => self
                .versions
                .iter()
                .rev()
                .chain(&self.pending)
                .find(|c| c.policy().version == v)
                .ok_or(WalletError::UnknownPolicyVersion(v)),
        }
    }

    /// The version of the policy whose id (the sha256 of its text) is `id`, if the wallet
    /// follows it.
    pub fn version_of_id(&self, id: &str) -> Option<u32> {
        self.ids.get(id).copied()
    }

    /// Every version, oldest first, and a signed change still waiting last: coins may come
    /// to its addresses once it applies, before this wallet's kept tip says so.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = &CompiledPolicy> {
        self.versions.iter().chain(&self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_chain::tests::signed;
    use vigil_policy::example::ExamplePolicy;

    fn served(changes: Vec<vigil_cosigner::wire::SignedChange>) -> Option<PolicyChanges> {
        Some(PolicyChanges { tip: 100, changes, current_version: 0 })
    }

    #[test]
    fn a_wallet_follows_the_changes_it_checked_and_is_not_led_back() {
        let home = tempfile::tempdir().unwrap();
        let dir = WalletDir::new(home.path());
        let v1 = ExamplePolicy::default().to_toml();
        std::fs::write(dir.file("policy.toml"), &v1).unwrap();
        let v2 = v1
            .replacen("version = 1", "version = 2", 1)
            .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000");
        let change = signed(&v1, &v2, &[0, 1], 10, 10);

        // Nothing changed: the pinned policy, and nothing written.
        let p = Policies::follow(&dir, served(vec![])).unwrap();
        assert_eq!((p.current().policy().version, p.warning.is_none()), (1, true));
        assert!(p.version(None).is_ok() && p.version(Some(1)).is_ok());
        assert!(!dir.file(CHANGES_FILE).exists());

        // A change the quorum signed: followed and kept; earlier versions stay at hand.
        let p = Policies::follow(&dir, served(vec![change.clone()])).unwrap();
        assert_eq!(p.current().policy().version, 2);
        assert_eq!(p.version(None).unwrap().policy().version, 1);
        assert!(matches!(p.version(Some(7)), Err(WalletError::UnknownPolicyVersion(7))));
        assert_eq!(p.version_of_id(&vigil_tower::policy_id(&v2)), Some(2));
        assert!(dir.file(CHANGES_FILE).exists());

        // Offline: the kept record. A co-signer that now serves fewer changes, or one with a
        // forged signature, does not lead the wallet back; it says so.
        assert_eq!(Policies::follow(&dir, None).unwrap().current().policy().version, 2);
        let back = Policies::follow(&dir, served(vec![])).unwrap();
        assert_eq!(back.current().policy().version, 2);
        assert!(
            back.warning.as_deref().is_some_and(|w| w.contains("drops or replaces")),
            "{:?}",
            back.warning
        );
        let forged = signed(&v1, &v2.replace("version = 2", "version = 3"), &[0], 20, 20);
        let p = Policies::follow(&dir, served(vec![change.clone(), forged])).unwrap();
        assert_eq!(p.current().policy().version, 2);
        assert!(p.warning.as_deref().is_some_and(|w| w.contains("do not check")), "{:?}", p.warning);

        // A damaged record is read again from the co-signer; with none to ask, the pinned one.
        std::fs::write(dir.file(CHANGES_FILE), b"{ not json").unwrap();
        let p = Policies::follow(&dir, served(vec![change])).unwrap();
        assert_eq!(p.current().policy().version, 2);
        assert!(p.warning.as_deref().is_some_and(|w| w.contains("damaged")));
        std::fs::write(dir.file(CHANGES_FILE), b"{ not json").unwrap();
        let p = Policies::follow(&dir, None).unwrap();
        assert_eq!(p.current().policy().version, 1);
    }
}
