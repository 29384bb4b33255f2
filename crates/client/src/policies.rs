//! The policy versions an owner's wallet follows: the pinned one, then each change the
//! guardians' quorum signed, checked from the pinned copy by [`crate::policy_chain::follow`].
//! New vaults, addresses and change use the version that applies now; a vault or an intake
//! coin keeps the scripts of the version it was made under, so its spends and recoveries are
//! built from that version.
//!
//! The wallet keeps the last record of changes it checked in `state.json`, beside the records
//! that name its versions: it works from that one when the co-signer cannot be reached (gone
//! for good, in a recovery), and a co-signer that later serves a record that does not extend
//! it (a change dropped or replaced) is not followed back.

use std::path::Path;

use vigil_cosigner::wire::PolicyChanges;
use vigil_policy::{CompiledPolicy, Policy};

use crate::policy_chain;
use crate::wallet::{replace_file, WalletDir, WalletError};

/// Every policy version the wallet knows.
#[derive(Debug, Clone)]
pub struct Policies {
    /// The versions that applied, oldest first, the one that applies now last.
    applied: Vec<CompiledPolicy>,
    /// Every version the checked record holds (applied, waiting, or replaced while waiting,
    /// by the heights the co-signer gave): a record names one of these, whatever the heights.
    known: Vec<CompiledPolicy>,
    /// A signed change waiting for its height: its version and that height.
    pub waiting: Option<(u32, u32)>,
    /// Why the co-signer's record of changes was not followed as it was served (the wallet
    /// then works from the one it checked before), in words.
    pub warning: Option<String>,
    /// The changes could not be followed at all and the pinned policy stands in: enough to
    /// lock down, panic, recover and look, not to hand out addresses or make vaults of a
    /// version the guardians may have replaced.
    pub degraded: bool,
}

/// The record of changes to follow from the policy `pinned`: the one the co-signer `served`
/// if it checks, compiles, and extends the one `kept`, else the one kept (also when the
/// co-signer was not asked: `None`); whether that is a new record to keep (a change came, or
/// one waiting by the kept tip came due: offline, the kept tip says which versions applied);
/// and why the served one was not taken, in words. Owners and guardians keep theirs, so that
/// neither follows a co-signer back to an older policy, and both still know every version
/// when it is gone.
pub fn checked_record(
    pinned: &str,
    kept: Option<&PolicyChanges>,
    served: Option<Result<PolicyChanges, String>>,
) -> (Option<PolicyChanges>, bool, Option<String>) {
    let served = match served {
        None => return (kept.cloned(), false, None),
        Some(Ok(served)) => served,
        Some(Err(e)) => {
            let why =
                format!("the co-signer's record of policy changes cannot be read ({e}); using the one kept");
            return (kept.cloned(), false, Some(why));
        }
    };
    let kept_changes = kept.map_or(&[][..], |k| &k.changes[..]);
    let checked = policy_chain::follow(pinned, &served.changes, served.tip).and_then(|f| {
        // A text the quorum signed that this version of Vigil cannot build from is not taken
        // either: the wallet must keep opening. (Those kept already were built before.)
        for (i, change) in served.changes.iter().enumerate().skip(kept_changes.len()) {
            let compiled = Policy::from_toml(&change.policy)
                .map_err(|e| e.to_string())
                .and_then(|p| CompiledPolicy::new(p).map(drop).map_err(|e| e.to_string()));
            compiled.map_err(|reason| policy_chain::ChainError::Unreadable { step: i + 1, reason })?;
        }
        Ok(f)
    });
    match checked {
        Ok(followed) if served.changes.starts_with(kept_changes) => {
            // Heights only rise: a co-signer serving a lower tip than the one kept (lying, or
            // behind) must not make a change that applied look waiting again.
            let mut served = served;
            served.tip = served.tip.max(kept.map_or(0, |k| k.tip));
            let warning = followed.reaches(served.current_version).err().map(|e| e.to_string());
            let came_due = kept.is_some_and(|k| {
                k.changes.iter().any(|c| k.tip < c.effective_height && c.effective_height <= served.tip)
            });
            let new = kept_changes != &served.changes[..] || came_due;
            (Some(served), new, warning)
        }
        Ok(_) => (
            kept.cloned(),
            false,
            Some(
                "the co-signer now serves a record of policy changes that drops or replaces one it served \
                 before; the record checked before is kept to. Tell the guardians and the provider"
                    .into(),
            ),
        ),
        Err(e) => (
            kept.cloned(),
            false,
            Some(format!(
                "{e}: the co-signer serves policy changes that do not check against your copy; the record \
                 checked before is kept to. Tell the guardians and the provider"
            )),
        ),
    }
}

/// [`checked_record`] with the record kept in the file at `path` (a guardian's, beside their
/// copy of the policy): read, and replaced when a new one is to be kept.
pub fn checked_record_file(
    pinned: &str,
    path: &Path,
    served: Option<Result<PolicyChanges, String>>,
) -> Result<(Option<PolicyChanges>, Option<String>), WalletError> {
    let mut damaged = None;
    let kept: Option<PolicyChanges> = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| {
                damaged =
                    Some(format!("{} is damaged ({e}); it is read again from the co-signer", path.display()))
            })
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(WalletError::Io { path: path.to_owned(), source }),
    };
    let asked = served.is_some();
    let (record, new, warning) = checked_record(pinned, kept.as_ref(), served);
    // A damaged file is replaced by the served record once that checks: healed, not a
    // reason to refuse from then on.
    let healed = damaged.is_some() && asked && warning.is_none();
    if let (Some(record), true) = (&record, new || healed) {
        replace_file(path, &serde_json::to_vec_pretty(record).expect("json"))?;
    }
    Ok((record, warning.or(damaged.filter(|_| !healed))))
}

impl Policies {
    /// The pinned policy alone.
    pub fn pinned(compiled: CompiledPolicy) -> Policies {
        Policies {
            applied: vec![compiled.clone()],
            known: vec![compiled],
            waiting: None,
            warning: None,
            degraded: false,
        }
    }

    /// Follows the wallet in `dir` from its pinned policy, along the record the co-signer
    /// `served` if it checks and extends the one kept in `state.json`, else along the one kept
    /// (`served` is `None` when the co-signer was not asked). A new record is kept.
    pub fn follow(
        dir: &WalletDir,
        served: Option<Result<PolicyChanges, String>>,
    ) -> Result<Policies, WalletError> {
        let pinned = dir.policy_text()?;
        let mut state = dir.state()?;
        let (record, new, warning) = checked_record(&pinned, state.policy_changes.as_ref(), served);
        if new {
            state.policy_changes.clone_from(&record);
            dir.save_state(&state)?;
        }
        let mut policies = Policies::from_record(&pinned, record.as_ref())
            .map_err(|reason| WalletError::Damaged { path: dir.file("state.json"), reason })?;
        policies.warning = warning;
        Ok(policies)
    }

    /// The versions `record` (checked again here, as anything read from disk) leads through
    /// from the pinned policy's text `pinned`.
    pub fn from_record(pinned: &str, record: Option<&PolicyChanges>) -> Result<Policies, String> {
        let compile = |p: Policy| CompiledPolicy::new(p).map_err(|e| e.to_string());
        let first = Policy::from_toml(pinned).map_err(|e| format!("the pinned policy: {e}"))?;
        let mut policies = Policies::pinned(compile(first)?);
        if let Some(record) = record {
            let followed =
                policy_chain::follow(pinned, &record.changes, record.tip).map_err(|e| e.to_string())?;
            for change in &record.changes {
                let p = Policy::from_toml(&change.policy).map_err(|e| e.to_string())?;
                policies.known.push(compile(p)?);
            }
            // Versions rise along the chain, so a version number names one text.
            let by_version = |v: u32| policies.known.iter().find(|c| c.policy().version == v).cloned();
            policies.applied = followed.history.iter().filter_map(|p| by_version(p.version)).collect();
            policies.waiting = followed.waiting.map(|(p, at)| (p.version, at));
        }
        Ok(policies)
    }

    /// The version that applies now.
    pub fn current(&self) -> &CompiledPolicy {
        self.applied.last().expect("at least the pinned policy")
    }

    /// The version a record names (none: the pinned one).
    pub fn version(&self, version: Option<u32>) -> Result<&CompiledPolicy, WalletError> {
        match version {
            None => Ok(&self.known[0]),
            Some(v) => self
                .known
                .iter()
                .find(|c| c.policy().version == v)
                .ok_or(WalletError::UnknownPolicyVersion(v)),
        }
    }

    /// The versions that applied before the one that applies now, newest first: the
    /// co-signer funds vaults from their intake addresses (not from a version still waiting,
    /// or replaced while it waited).
    pub fn earlier(&self) -> Vec<&CompiledPolicy> {
        self.applied.iter().rev().skip(1).collect()
    }

    /// Whether the version a record names (none: the pinned one) applied.
    pub fn applied(&self, version: Option<u32>) -> bool {
        version.is_none_or(|v| self.applied.iter().any(|c| c.policy().version == v))
    }

    /// The versions that applied and the one waiting, if any: the leaves a guardian signs in
    /// a recovery (a version replaced while it waited never held coins).
    pub fn applied_or_waiting(&self) -> Vec<&CompiledPolicy> {
        let waiting = self.waiting.map(|(v, _)| v);
        self.known
            .iter()
            .filter(|c| self.applied(Some(c.policy().version)) || Some(c.policy().version) == waiting)
            .collect()
    }

    /// Every version known, the one that applies now first, then the others newest first:
    /// coins may come to any of their addresses (one waiting may apply before the kept tip
    /// says so).
    pub fn known(&self) -> impl Iterator<Item = &CompiledPolicy> {
        let current = self.current().policy().version;
        std::iter::once(self.current())
            .chain(self.known.iter().rev().filter(move |c| c.policy().version != current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_chain::tests::signed;
    use crate::wallet::WalletState;
    use vigil_policy::example::ExamplePolicy;

    fn served(
        changes: Vec<vigil_cosigner::wire::SignedChange>,
        tip: u32,
    ) -> Option<Result<PolicyChanges, String>> {
        Some(Ok(PolicyChanges { tip, changes, current_version: 0 }))
    }

    #[test]
    fn a_wallet_follows_the_changes_it_checked_and_is_not_led_back() {
        let home = tempfile::tempdir().unwrap();
        let dir = WalletDir::new(home.path());
        let v1 = ExamplePolicy::default().to_toml();
        std::fs::write(dir.file("policy.toml"), &v1).unwrap();
        dir.save_state(&WalletState::default()).unwrap();
        let kept = || dir.state().unwrap().policy_changes;
        let v2 = v1
            .replacen("version = 1", "version = 2", 1)
            .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000");
        let v3 = v2.replacen("version = 2", "version = 3", 1).replace("unvault = 144", "unvault = 150");
        assert!(v3.contains("unvault = 150"));
        let now = signed(&v1, &v2, &[0, 1], 10, 10);
        let later = signed(&v1, &v3, &[0, 1], 20, 1029);

        // Nothing changed: the pinned policy, and nothing written.
        let p = Policies::follow(&dir, served(vec![], 100)).unwrap();
        assert_eq!((p.current().policy().version, p.warning.is_none()), (1, true));
        assert!(p.version(None).is_ok() && p.version(Some(1)).is_ok());
        assert_eq!(kept(), None);

        // A change the quorum signed: followed and kept; earlier versions stay at hand, and
        // one still waiting is known (a record made under it once it applied reads offline).
        let p = Policies::follow(&dir, served(vec![now.clone(), later.clone()], 100)).unwrap();
        assert_eq!((p.current().policy().version, p.waiting), (2, Some((3, 1029))));
        assert_eq!(p.version(None).unwrap().policy().version, 1);
        assert_eq!(p.version(Some(3)).unwrap().policy().delays.unvault, 150);
        assert!(matches!(p.version(Some(7)), Err(WalletError::UnknownPolicyVersion(7))));
        assert_eq!(kept().unwrap().changes.len(), 2);
        let versions: Vec<u32> = p.known().map(|c| c.policy().version).collect();
        assert_eq!(versions, [2, 3, 1], "today's first, then the others newest first");
        // Coins fund vaults from versions that applied only; a guardian signs recovery leaves
        // of those and of the one waiting.
        let earlier: Vec<u32> = p.earlier().iter().map(|c| c.policy().version).collect();
        assert_eq!(earlier, [1]);
        assert!(p.applied(None) && p.applied(Some(2)) && !p.applied(Some(3)));
        let signable: Vec<u32> = p.applied_or_waiting().iter().map(|c| c.policy().version).collect();
        assert_eq!(signable, [1, 2, 3]);

        // Offline: the kept record. Once the waiting change came due, it is kept anew so that
        // offline it applies.
        assert_eq!(Policies::follow(&dir, None).unwrap().current().policy().version, 2);
        assert_eq!(
            Policies::follow(&dir, served(vec![now.clone(), later.clone()], 1029))
                .unwrap()
                .current()
                .policy()
                .version,
            3
        );
        assert_eq!(kept().unwrap().tip, 1029);
        assert_eq!(Policies::follow(&dir, None).unwrap().current().policy().version, 3);
        // A co-signer serving a lower tip (lying, or behind) does not make it wait again.
        let p = Policies::follow(&dir, served(vec![now.clone(), later.clone()], 100)).unwrap();
        assert_eq!((p.current().policy().version, p.waiting), (3, None));

        // A co-signer that now serves fewer changes, or one with a forged signature, does not
        // lead the wallet back; it says so. One that cannot answer says that.
        let back = Policies::follow(&dir, served(vec![now.clone()], 2000)).unwrap();
        assert_eq!(back.current().policy().version, 3);
        assert!(
            back.warning.as_deref().is_some_and(|w| w.contains("drops or replaces")),
            "{:?}",
            back.warning
        );
        let forged = signed(&v1, &v3.replace("version = 3", "version = 4"), &[0], 30, 30);
        let p = Policies::follow(&dir, served(vec![now, later, forged], 2000)).unwrap();
        assert_eq!(p.current().policy().version, 3);
        assert!(p.warning.as_deref().is_some_and(|w| w.contains("do not check")), "{:?}", p.warning);
        let p = Policies::follow(&dir, Some(Err("connection refused".into()))).unwrap();
        assert!(p.warning.as_deref().is_some_and(|w| w.contains("cannot be read")), "{:?}", p.warning);
        assert_eq!(kept().unwrap().changes.len(), 2);
    }

    #[test]
    fn a_guardian_keeps_the_record_beside_their_copy() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("policy.changes.json");
        let v1 = ExamplePolicy::default().to_toml();
        let v2 = v1
            .replacen("version = 1", "version = 2", 1)
            .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000");
        let change = signed(&v1, &v2, &[0, 1], 10, 10);
        let (record, warning) = checked_record_file(&v1, &path, served(vec![change.clone()], 100)).unwrap();
        assert_eq!((record.unwrap().changes.len(), warning), (1, None));
        assert_eq!(
            checked_record_file(&v1, &path, None).unwrap().0.unwrap().changes,
            std::slice::from_ref(&change)
        );
        // A damaged record is read again from the co-signer.
        std::fs::write(&path, b"{ not json").unwrap();
        let (record, warning) = checked_record_file(&v1, &path, served(vec![change], 100)).unwrap();
        assert_eq!(record.unwrap().changes.len(), 1);
        assert!(warning.is_none(), "healed by a record that checks: {warning:?}");
        assert!(checked_record_file(&v1, &path, None).unwrap().0.is_some(), "kept again");
        // With nothing to heal it from, it says so.
        std::fs::write(&path, b"{ not json").unwrap();
        let (record, warning) = checked_record_file(&v1, &path, None).unwrap();
        assert!(record.is_none() && warning.is_some_and(|w| w.contains("damaged")));
        // Healed even when the co-signer's record holds no change yet.
        let (_, warning) = checked_record_file(&v1, &path, served(vec![], 100)).unwrap();
        assert!(warning.is_none() && checked_record_file(&v1, &path, None).unwrap().1.is_none());
    }
}
