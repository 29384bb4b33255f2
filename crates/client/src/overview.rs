//! What the owner sees of their wallet: balances per tier, each vault and where its coins are,
//! the spends under way, lockdowns and the services' health. `vigil status` prints it and the
//! owner's page renders it, so they never disagree; both read it the same way whichever code
//! opened the session.

use crate::allowance::{Allowance, AllowanceBalance};
use crate::recovery::{self, RecoveryError, VaultPlace};
use crate::session::Session;
use crate::wallet::{WalletError, WalletState};

/// Why the overview could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OverviewError {
    /// The wallet's files or the chain.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// A vault's place on the chain.
    #[error(transparent)]
    Vault(#[from] RecoveryError),
}

/// One vault.
#[derive(Debug, Clone)]
pub struct VaultLine {
    /// Its outpoint.
    pub outpoint: String,
    /// Its amount, sat.
    pub amount_sat: u64,
    /// "standard" or "guarded".
    pub kind: String,
    /// Where its coins are.
    pub place: VaultPlace,
    /// The funding's height, once confirmed.
    pub confirmed_height: Option<u32>,
    /// Its DELAY (the policy version it was made under may have had another).
    pub delay: u16,
    /// The policy version it was made under.
    pub policy_version: u32,
}

impl VaultLine {
    /// When an unvaulted vault's coins can be paid out: its unvault's height + DELAY.
    pub fn spendable_at(&self) -> Option<u32> {
        match self.place {
            VaultPlace::Unvaulted { height, .. } => Some(height + u32::from(self.delay)),
            _ => None,
        }
    }

    /// The height of the last move of its coins (unvault, cancel, sweep), if any.
    pub fn moved_at(&self) -> Option<u32> {
        match self.place {
            VaultPlace::Unvaulted { height, .. }
            | VaultPlace::Cancelled { height, .. }
            | VaultPlace::DeepVault { height, .. } => Some(height),
            _ => None,
        }
    }
}

/// One spend under way.
#[derive(Debug, Clone)]
pub struct SpendLine {
    /// Its number.
    pub id: u64,
    /// Sats.
    pub amount_sat: u64,
    /// Where to.
    pub destination: String,
    /// Where it is (the spend state machine's stage).
    pub stage: String,
}

/// The wallet as the owner sees it.
pub struct Overview {
    /// The chain's tip.
    pub height: u32,
    /// Whether this unlock's heartbeat reached the co-signer.
    pub cosigner_reachable: bool,
    /// The allowance, or why it cannot be read now.
    pub allowance: Result<AllowanceBalance, String>,
    /// The allowance's limit, sat.
    pub allowance_limit_sat: u64,
    /// Coins waiting to be vaulted, sat, and how many.
    pub intake_sat: u64,
    /// How many intake coins.
    pub intake_coins: usize,
    /// Every vault.
    pub vaults: Vec<VaultLine>,
    /// Still under the vaults' protection (funding sent, protected, unvaulting, unvaulted),
    /// or not readable now.
    pub vault_sat: u64,
    /// Swept to the deep vault.
    pub deep_vault_sat: u64,
    /// Cancelled, in the recovery output.
    pub cancelled_sat: u64,
    /// Spends under way.
    pub spends: Vec<SpendLine>,
    /// A lockdown the owner set from this wallet, while it holds.
    pub locked_until: Option<u32>,
    /// A later lockdown the towers report (set by the guardians or elsewhere).
    pub towers_locked_until: Option<u32>,
    /// Each tower's name and whether it answered (why not).
    pub towers: Vec<(String, Result<(), String>)>,
    /// The version of the policy that applies now.
    pub policy_version: u32,
    /// A change the guardians signed, waiting for its block: its version and that block.
    pub policy_waiting: Option<(u32, u32)>,
    /// Why the co-signer's record of policy changes is not followed, if it is not.
    pub policy_warning: Option<String>,
}

/// Reads the overview: scans the chain for the wallet's coins (saving what it found), syncs
/// the allowance and asks every tower about the client.
pub fn read(session: &Session) -> Result<Overview, OverviewError> {
    let chain = session.chain();
    let mut state: WalletState = session.dir.state()?;
    let height = state.scan(&session.policies, &*chain)?;
    session.dir.save_state(&state)?;
    let intake: Vec<_> = state.coins.iter().filter(|c| !c.spent).collect();
    // A damaged allowance file or a node error hides the allowance, not the rest.
    let allowance = Allowance::of(session, state.birth_height)
        .and_then(|mut a| {
            a.sync(&*chain)?;
            Ok(a.balance())
        })
        .map_err(|e| e.to_string());
    let answers = session.tower_views();
    let mut vaults = Vec::new();
    for v in &state.vaults {
        // A vault of a version the wallet cannot read now is shown as such, not a reason to
        // show nothing.
        let (place, delay) = match session.policies.version(v.policy_version) {
            Ok(compiled) => (recovery::locate(compiled, v, &*chain)?, compiled.policy().delays.unvault),
            Err(e) => (VaultPlace::Unreadable(e.to_string()), 0),
        };
        vaults.push(VaultLine {
            outpoint: v.outpoint.to_string(),
            amount_sat: v.amount_sat,
            kind: v.kind.clone(),
            place,
            confirmed_height: v.confirmed_height,
            delay,
            policy_version: v.policy_version.unwrap_or(session.policies.version(None)?.policy().version),
        });
    }
    let sum = |wanted: &dyn Fn(&VaultPlace) -> bool| -> u64 {
        vaults.iter().filter(|v| wanted(&v.place)).map(|v| v.amount_sat).sum()
    };
    let vault_sat = sum(&|p| {
        matches!(
            p,
            VaultPlace::FundingSent
                | VaultPlace::Protected
                | VaultPlace::Unreadable(_)
                | VaultPlace::Unvaulting
                | VaultPlace::Unvaulted { .. }
        )
    });
    let deep_vault_sat = sum(&|p| matches!(p, VaultPlace::DeepVault { .. }));
    let cancelled_sat = sum(&|p| matches!(p, VaultPlace::Cancelled { .. }));
    let locked_until = state.lockdown_until.filter(|h| *h > height);
    let towers_locked_until =
        crate::towers::shown_lockdown(answers.iter().filter_map(|(_, r)| r.as_ref().ok()))
            .filter(|h| *h > height && Some(*h) > locked_until);
    Ok(Overview {
        height,
        cosigner_reachable: session.heartbeat.is_ok(),
        allowance,
        allowance_limit_sat: session.current().policy().allowance.hot_limit_sat,
        intake_sat: intake.iter().map(|c| c.value_sat).sum(),
        intake_coins: intake.len(),
        vault_sat,
        deep_vault_sat,
        cancelled_sat,
        spends: state
            .spends
            .iter()
            .filter(|sp| sp.active())
            .map(|sp| SpendLine {
                id: sp.id,
                amount_sat: sp.amount_sat,
                destination: sp.destination.clone(),
                stage: sp.stage.clone(),
            })
            .collect(),
        vaults,
        locked_until,
        towers_locked_until,
        towers: answers.into_iter().map(|(n, r)| (n, r.map(|_| ()))).collect(),
        policy_version: session.current().policy().version,
        policy_waiting: session.policies.waiting,
        policy_warning: session.policies.warning.clone(),
    })
}
