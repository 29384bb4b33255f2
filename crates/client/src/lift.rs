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

/// How far the co-signer's tip may be from the towers' (their nodes may be a block or two
/// apart).
pub const TIP_TOLERANCE_BLOCKS: u32 = 6;

/// The furthest a lockdown's end can be from the co-signer's tip: the ends a lift names are
/// the co-signer's (a lockdown or a duress one, each at most this long), and its tip may be a
/// few blocks past the one it answered with.
const LONGEST_LOCKDOWN_BLOCKS: u32 = {
    let (plain, duress) =
        (vigil_cosigner::service::MAX_LOCKDOWN_BLOCKS, vigil_cosigner::service::DURESS_LOCKDOWN_BLOCKS);
    (if plain > duress { plain } else { duress }) + TIP_TOLERANCE_BLOCKS
};

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
    /// No watchtower answered: the co-signer's heights cannot be checked.
    #[error("no watchtower can be reached to check the co-signer's height of the chain; try again")]
    NoTowers,
    /// The towers are behind the co-signer (catching up): its heights cannot be checked yet.
    #[error(
        "the watchtowers are at block {towers}, behind the co-signer's {tip}: try again in a few minutes"
    )]
    TowersBehind {
        /// The co-signer's tip.
        tip: u32,
        /// The towers' median tip.
        towers: u32,
    },
    /// The lockdown or the proposal is no longer the one shown.
    #[error("the lockdown or its lift changed since it was shown")]
    Changed,
    /// What the co-signer says does not add up: signing could end a lockdown no guardian meant
    /// to end (a future duress one, say).
    #[error("the co-signer's account of the lockdown does not add up: {0}. Do not sign it; tell the other guardians")]
    Unsafe(String),
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
}

impl LiftVote {
    /// The vote `state` calls for: the proposal waiting, else a new one a day past the
    /// earliest height (before the lockdown's end). `towers_tip`: the towers' median tip,
    /// which the co-signer's must match (`None`: no tower answered, and nothing is signed).
    pub fn for_state(state: &LockdownState, towers_tip: Option<u32>) -> Result<Self, NoLift> {
        checked(state, towers_tip)?;
        let until = state.lockdown_until;
        let at = if state.lift_proposed != 0 {
            state.lift_proposed
        } else if state.earliest_lift >= until {
            return Err(NoLift::EndsSooner { until, earliest: state.earliest_lift, tip: state.tip });
        } else {
            state.earliest_lift.saturating_add(LIFT_VOTING_BLOCKS).min(until - 1).min(latest(state))
        };
        Self::at(state, at)
    }

    /// The vote shown earlier (at `at`, for the lockdown ending at `until`), if `state` still
    /// calls for it: the same proposal, or, for a first one, a height still allowed.
    pub fn as_shown(
        state: &LockdownState,
        towers_tip: Option<u32>,
        at: u32,
        until: u32,
    ) -> Result<Self, NoLift> {
        checked(state, towers_tip)?;
        let proposed = state.lift_proposed;
        if until != state.lockdown_until
            || (proposed != 0 && at != proposed)
            || (proposed == 0 && at < state.earliest_lift)
        {
            return Err(NoLift::Changed);
        }
        Self::at(state, at)
    }

    /// A vote at `at`, its height checked against the governance wait from the tip (at least
    /// the towers' own: a lift sooner could end the lockdown within a captivity) and the
    /// latest a proposal may name (a week past the earliest, or past a lift signed before).
    fn at(state: &LockdownState, at: u32) -> Result<Self, NoLift> {
        let (tip, until) = (state.tip, state.lockdown_until);
        let wait = state.governance_delay_blocks.max(vigil_tower::GOVERNANCE_DELAY_BLOCKS);
        let least = tip.saturating_add(wait);
        let latest = latest(state);
        if at < least || at >= until || at > latest {
            return Err(NoLift::Unsafe(format!(
                "a lift at block {at} of the lockdown until block {until} (tip {tip}) is not between block {least} \
                 (the governance wait), block {latest} (the latest a lift may be proposed for) and the lockdown's end"
            )));
        }
        Ok(LiftVote { at, until })
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
        // No guardian proposed one yet: this vote proposes `at`.
        let others = if state.lift_proposed == 0 {
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

/// What any vote needs: a lockdown holding and not lifted yet, the co-signer's tip the
/// towers' median (`None`: no tower answered), and an end no later than the longest lockdown
/// from that tip (a guardian must not sign the lift of a lockdown still to come: a duress
/// one's end is easy to foresee).
fn checked(state: &LockdownState, towers_tip: Option<u32>) -> Result<(), NoLift> {
    let (tip, until) = (state.tip, state.lockdown_until);
    if !state.locked {
        return Err(NoLift::NotLocked { tip });
    }
    if state.lifted_at > 0 {
        return Err(NoLift::Lifted(state.clone()));
    }
    // A tower reports the last block it decided: one catching up is behind, not lying; a
    // co-signer behind the towers is.
    let towers = towers_tip.ok_or(NoLift::NoTowers)?;
    if tip > towers.saturating_add(TIP_TOLERANCE_BLOCKS) {
        return Err(NoLift::TowersBehind { tip, towers });
    }
    if towers > tip.saturating_add(TIP_TOLERANCE_BLOCKS) {
        return Err(NoLift::Unsafe(format!("its tip is block {tip}, the watchtowers' block {towers}")));
    }
    if until <= tip || until > tip.saturating_add(LONGEST_LOCKDOWN_BLOCKS) {
        return Err(NoLift::Unsafe(format!(
            "a lockdown holding at block {tip} cannot end at block {until} (at most {LONGEST_LOCKDOWN_BLOCKS} blocks ahead)"
        )));
    }
    Ok(())
}

/// The latest height a first proposal may name, as the co-signer judges it: a week past the
/// earliest the wait allows, or a lift signed before if that is later.
fn latest(state: &LockdownState) -> u32 {
    let earliest = state
        .tip
        .saturating_add(state.governance_delay_blocks)
        .saturating_add(vigil_cosigner::emergency::LIFT_SLACK_BLOCKS);
    earliest.saturating_add(vigil_cosigner::emergency::LIFT_VOTING_BLOCKS).max(state.earliest_lift)
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
            lockdown_until: 4_000,
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
        let vote = |s: &LockdownState| LiftVote::for_state(s, Some(s.tip));
        assert_eq!(vote(&s), Ok(LiftVote { at: 1_115 + 144, until: 4_000 }));
        let near_end = LockdownState { lockdown_until: 1_200, ..s.clone() };
        assert_eq!(vote(&near_end).unwrap().at, 1_199, "before the end");
        let too_short = LockdownState { lockdown_until: 1_115, ..s.clone() };
        assert!(matches!(vote(&too_short), Err(NoLift::EndsSooner { .. })));
        let proposed = LockdownState { lift_proposed: 1_300, signatures: 1, ..s.clone() };
        assert_eq!(vote(&proposed), Ok(LiftVote { at: 1_300, until: 4_000 }));
        // A lift signed before raises the earliest height, and the latest with it.
        let after_a_lift = LockdownState { earliest_lift: 2_000, ..s.clone() };
        assert_eq!(vote(&after_a_lift).unwrap().at, 2_123, "no later than the co-signer takes");
        let none = LockdownState { locked: false, ..s.clone() };
        assert_eq!(LiftVote::for_state(&none, None), Err(NoLift::NotLocked { tip: 100 }));
        let lifted = LockdownState { lifted_at: 1_300, ..s.clone() };
        assert!(matches!(LiftVote::for_state(&lifted, None), Err(NoLift::Lifted(_))));
        // Anything else needs a tower's word on the tip.
        assert_eq!(LiftVote::for_state(&s, None), Err(NoLift::NoTowers));
    }

    #[test]
    fn what_a_lying_co_signer_says_is_not_signed() {
        let unsafe_ =
            |s: &LockdownState| matches!(LiftVote::for_state(s, Some(s.tip)), Err(NoLift::Unsafe(_)));
        // Whatever wait it claims, the towers' own is the least.
        assert!(unsafe_(&LockdownState { governance_delay_blocks: 6, lift_proposed: 200, ..state() }));
        assert!(unsafe_(&LockdownState { lift_proposed: 1_108, ..state() }));
        let at_the_wait = LockdownState { lift_proposed: 1_109, ..state() };
        assert_eq!(LiftVote::for_state(&at_the_wait, Some(100)).unwrap().at, 1_109);
        // Past the lockdown's end, or further ahead than a lift may be proposed.
        assert!(unsafe_(&LockdownState { lift_proposed: 4_000, ..state() }));
        assert!(unsafe_(&LockdownState { lift_proposed: 100 + 1_009 + 6 + 1_008 + 1, ..state() }));
        // The lift of a lockdown still to come (a duress one's end is easy to foresee).
        assert!(unsafe_(&LockdownState { lockdown_until: 100 + 4_032 + 6 + 1, ..state() }));
        assert!(!unsafe_(&LockdownState { lockdown_until: 100 + 4_032 + 6, ..state() }));
        // A tip below the towers'; towers behind it only need time to catch up.
        assert!(matches!(LiftVote::for_state(&state(), Some(107)), Err(NoLift::Unsafe(_))));
        assert_eq!(
            LiftVote::for_state(&state(), Some(93)),
            Err(NoLift::TowersBehind { tip: 100, towers: 93 })
        );
        assert!(LiftVote::for_state(&state(), Some(94)).is_ok());
        // Heights that would overflow.
        let end = LockdownState {
            tip: u32::MAX - 10,
            lockdown_until: u32::MAX,
            earliest_lift: u32::MAX,
            ..state()
        };
        assert!(matches!(LiftVote::for_state(&end, Some(end.tip)), Err(NoLift::EndsSooner { .. })));
        assert!(unsafe_(&LockdownState { lift_proposed: 800, ..end }));
    }

    #[test]
    fn a_vote_shown_is_signed_while_it_is_still_the_one_due() {
        let s = state();
        let shown = LiftVote::for_state(&s, Some(100)).unwrap();
        let again = |s: &LockdownState| LiftVote::as_shown(s, Some(s.tip), shown.at, shown.until);
        // Blocks later, a first proposal's height still stands while the wait allows it; so
        // does another guardian's proposal of that same height.
        assert_eq!(again(&LockdownState { tip: 110, earliest_lift: 1_125, ..s.clone() }), Ok(shown.clone()));
        let same = LockdownState { lift_proposed: shown.at, signatures: 1, ..s.clone() };
        assert_eq!(again(&same), Ok(shown.clone()));
        assert_eq!(
            again(&LockdownState { tip: 250, earliest_lift: 1_265, ..s.clone() }),
            Err(NoLift::Changed)
        );
        // Another guardian proposed another height meanwhile, or the lockdown changed.
        assert_eq!(again(&LockdownState { lift_proposed: shown.at + 1, ..s.clone() }), Err(NoLift::Changed));
        assert_eq!(again(&LockdownState { lockdown_until: 4_100, ..s }), Err(NoLift::Changed));
    }
}
