//! A guardian's vote to lift a lockdown early: the height to sign (another guardian's
//! proposal, or a new one), checked against the governance wait whatever the co-signer says,
//! and what a person is shown before signing. Shared by `vigil guardian lift` and the
//! guardian's web page.

use vigil_cosigner::wire::{self, LiftLockdown, LockdownState};
use vigil_policy::bitcoin::secp256k1::Keypair;

use crate::guardian::about;

/// Blocks a new proposal leaves the other guardians to sign it (a day): a proposal is void
/// once the chain is within the governance wait of its height before the quorum signed.
pub const LIFT_VOTING_BLOCKS: u32 = 144;

/// Why there is nothing to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoLift {
    /// No lockdown holds.
    #[error("the wallet is not locked down (tip {tip}): there is nothing to lift")]
    NotLocked {
        /// The co-signer's tip.
        tip: u32,
    },
    /// The quorum signed already.
    #[error("{}", lifted(.0))]
    Lifted(LockdownState),
    /// The lockdown ends before the governance wait would.
    #[error(
        "the lockdown ends at block {until} by itself ({}), before a lift could (block {earliest} at the earliest)",
        about(until.saturating_sub(*tip))
    )]
    EndsSooner {
        /// Its end.
        until: u32,
        /// The earliest height a lift may name.
        earliest: u32,
        /// The co-signer's tip.
        tip: u32,
    },
    /// The co-signer proposes a height a guardian must not sign.
    #[error(
        "the co-signer proposes to lift the lockdown until block {until} at block {at} (tip {tip}): not between \
         block {least} (the governance wait) and its end. Do not sign it; tell the other guardians"
    )]
    Unsafe {
        /// The height proposed.
        at: u32,
        /// The lockdown's end.
        until: u32,
        /// The lowest height the wait allows.
        least: u32,
        /// The co-signer's tip.
        tip: u32,
    },
}

/// What the quorum's lift does, for a person.
pub fn lifted(s: &LockdownState) -> String {
    format!(
        "The guardians' quorum signed: the lockdown ends at block {} ({} from the tip {}), at the co-signer and at \
         every watchtower.",
        s.lifted_at,
        about(s.lifted_at.saturating_sub(s.tip)),
        s.tip
    )
}

/// The lift a guardian would sign now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiftVote {
    /// The height it lifts the lockdown at.
    pub at: u32,
    /// The end of the lockdown it lifts, as signed.
    pub until: u32,
    /// No guardian proposed one yet: this vote proposes `at`.
    pub first: bool,
}

impl LiftVote {
    /// The vote `state` calls for: the proposal waiting, else a new one a day past the
    /// earliest height (before the lockdown's end). Its height is checked against the
    /// governance wait from the tip, at least the towers' own: a lift sooner than that
    /// could end a lockdown within a captivity.
    pub fn for_state(state: &LockdownState) -> Result<Self, NoLift> {
        let (tip, until) = (state.tip, state.lockdown_until);
        if !state.locked {
            return Err(NoLift::NotLocked { tip });
        }
        if state.lifted_at > 0 {
            return Err(NoLift::Lifted(state.clone()));
        }
        let first = state.lift_proposed == 0;
        if first && state.earliest_lift >= until {
            return Err(NoLift::EndsSooner { until, earliest: state.earliest_lift, tip });
        }
        let at = if first {
            (state.earliest_lift + LIFT_VOTING_BLOCKS).min(until - 1)
        } else {
            state.lift_proposed
        };
        let least = tip + state.governance_delay_blocks.max(vigil_tower::GOVERNANCE_DELAY_BLOCKS);
        if at < least || at >= until {
            return Err(NoLift::Unsafe { at, until, least, tip });
        }
        Ok(LiftVote { at, until, first })
    }

    /// What a guardian is shown before signing it.
    pub fn describe(&self, state: &LockdownState) -> String {
        let (at, until, tip) = (self.at, self.until, state.tip);
        let held = if state.duress {
            "The owner's wallet was opened with the DURESS code: it is locked down, silently"
        } else {
            "The wallet is locked down: the co-signer refuses every spend and the watchtowers cancel any coins \
             leaving a vault"
        };
        let others = if self.first {
            format!(
                "You are the first to sign: the other guardians have until block {} to sign it too.",
                at.saturating_sub(state.governance_delay_blocks)
            )
        } else {
            format!("{} of {} guardians signed it so far.", state.signatures, state.needed)
        };
        format!(
            "{held}, until block {until} ({} from the tip {tip}). With {} guardians' signatures it ends at block {at} \
             instead ({} from now). {others} Sign only if you have spoken to the owner in person and they are free \
             and safe.",
            about(until.saturating_sub(tip)),
            state.needed,
            about(at.saturating_sub(tip)),
        )
    }

    /// The vote, signed with the guardian's auth key.
    pub fn sign(&self, client: &str, auth: &Keypair) -> LiftLockdown {
        let digest = vigil_tower::wire::lift_digest(client, self.at, self.until);
        LiftLockdown {
            lift_at_height: self.at,
            lockdown_until: self.until,
            signature: wire::sign(&digest, auth).signature,
        }
    }
}

/// What a vote at `at` did, by the state read after it.
pub fn voted(after: &LockdownState, at: u32) -> String {
    if after.lifted_at > 0 {
        lifted(after)
    } else {
        format!(
            "Your signature is in: {} of {} guardians, lifting it at block {at}.",
            after.signatures, after.needed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> LockdownState {
        LockdownState {
            tip: 100,
            locked: true,
            duress: false,
            lockdown_until: 5_000,
            ends_at: 5_000,
            lifted_at: 0,
            lift_proposed: 0,
            signatures: 0,
            needed: 2,
            governance_delay_blocks: 1_009,
            earliest_lift: 100 + 1_009 + 6,
        }
    }

    #[test]
    fn a_vote_proposes_a_day_past_the_earliest_or_signs_the_proposal() {
        let s = state();
        assert_eq!(LiftVote::for_state(&s), Ok(LiftVote { at: 1_115 + 144, until: 5_000, first: true }));
        let near_end = LockdownState { lockdown_until: 1_200, ..s.clone() };
        assert_eq!(LiftVote::for_state(&near_end).unwrap().at, 1_199, "before the end");
        let too_short = LockdownState { lockdown_until: 1_115, ..s.clone() };
        assert!(matches!(LiftVote::for_state(&too_short), Err(NoLift::EndsSooner { .. })));
        let proposed = LockdownState { lift_proposed: 1_300, signatures: 1, ..s.clone() };
        assert_eq!(LiftVote::for_state(&proposed), Ok(LiftVote { at: 1_300, until: 5_000, first: false }));
        let none = LockdownState { locked: false, ..s.clone() };
        assert_eq!(LiftVote::for_state(&none), Err(NoLift::NotLocked { tip: 100 }));
        let lifted = LockdownState { lifted_at: 1_300, ..s };
        assert!(matches!(LiftVote::for_state(&lifted), Err(NoLift::Lifted(_))));
    }

    #[test]
    fn a_proposal_sooner_than_the_wait_or_past_the_end_is_not_signed() {
        // Whatever wait the co-signer claims, the towers' own is the least.
        let short_wait = LockdownState { governance_delay_blocks: 6, lift_proposed: 200, ..state() };
        assert!(matches!(LiftVote::for_state(&short_wait), Err(NoLift::Unsafe { least: 1_109, .. })));
        let soon = LockdownState { lift_proposed: 1_108, ..state() };
        assert!(matches!(LiftVote::for_state(&soon), Err(NoLift::Unsafe { .. })));
        let past = LockdownState { lift_proposed: 5_000, ..state() };
        assert!(matches!(LiftVote::for_state(&past), Err(NoLift::Unsafe { .. })));
        let at_wait = LockdownState { lift_proposed: 1_109, ..state() };
        assert_eq!(LiftVote::for_state(&at_wait).unwrap().at, 1_109);
    }
}
