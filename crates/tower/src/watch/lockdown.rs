//! Lockdowns: while one holds, every unvault of the client is cancelled, approved or not.
//!
//! A plain lockdown (the owner's, a guardian's) cancels at once. A *quiet*
//! one (the co-signer's answer to a duress code) must not show on chain minutes after the
//! code was typed: an approved unvault is cancelled late, `duress_margin` blocks before its
//! spend leaf opens, with the normal ladder and bumps, always before the deadline. Waiting is
//! safe because the spend leaf also needs the co-signer, which will not sign (ADR 0003). An
//! unapproved unvault is cancelled at once either way: that is what a normal session shows.

use serde::{Deserialize, Serialize};
use vigil_policy::bitcoin::OutPoint;

use super::{Watcher, BURY_MARGIN};
use crate::vault::{Action, AlarmKind};

/// The least `duress_margin` may be: the cancel's burial margin and one block to get in.
pub const MIN_DURESS_MARGIN_BLOCKS: u32 = BURY_MARGIN + 1;
/// The default: a ladder's first rungs and the burial margin before the spend leaf opens.
pub const DURESS_MARGIN_BLOCKS: u32 = 12;

/// A client's lockdowns: a plain one and a quiet one, each holding below its own height (a
/// plain lockdown running when duress comes must not make the duress one cancel at once, nor
/// the other way round).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockdown {
    /// A plain lockdown holds below this height.
    pub plain_until: u32,
    /// A quiet (duress) lockdown holds below this height.
    pub quiet_until: u32,
    /// The height of the last lift applied (0: none).
    #[serde(default)]
    pub last_lift: u32,
    /// The end of the lockdown that lift ended, as its signatures name it: a lift is known by
    /// both, so a new lift for a newer lockdown at the same height is not taken for a replay.
    #[serde(default)]
    pub last_lift_until: u32,
    /// The height the last lockdown request was taken at (one that ends nothing later too: a
    /// newer lockdown absorbed into an older, longer one), never lowered. A lift delivered
    /// late may end only lockdowns taken before it can have been signed. Unknown (taken while
    /// the tower did not follow the chain, or in a record of an earlier release): as recent as
    /// can be, so no late lift is taken, until the tower follows the chain again and dates it
    /// then.
    #[serde(default = "unknown_height")]
    pub last_set_at: u32,
}

fn unknown_height() -> u32 {
    u32::MAX
}

/// What a guardian-quorum lift did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lift {
    /// The lockdowns now end at the lift's height.
    Applied,
    /// This very lift was applied before; nothing changes (a retried delivery).
    AlreadyApplied,
    /// An older lift than one applied since: refused.
    Superseded {
        /// The height of the lift that stands.
        last: u32,
    },
}

/// What holds for a client at a height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockdownNow {
    /// Cancel approved unvaults late (only a quiet lockdown holds).
    pub quiet: bool,
}

impl Watcher {
    /// Sets how many blocks before a spend leaf opens a quiet lockdown cancels.
    pub fn set_duress_margin(&mut self, blocks: u32) {
        self.duress_margin = blocks.max(MIN_DURESS_MARGIN_BLOCKS);
    }

    /// Every client's lockdown, as stored.
    pub fn lockdowns(&self) -> &std::collections::HashMap<String, Lockdown> {
        &self.lockdowns
    }

    /// Restores lockdowns from the store.
    pub fn restore_lockdowns(&mut self, lockdowns: std::collections::HashMap<String, Lockdown>) {
        self.lockdowns = lockdowns;
    }

    /// Whether the lockdowns changed since the last call.
    pub fn take_lockdowns_dirty(&mut self) -> bool {
        std::mem::take(&mut self.lockdowns_dirty)
    }

    /// The lockdown holding for `client` at `height`: a plain one wins over a quiet one.
    pub fn lockdown(&self, client: &str, height: u32) -> Option<LockdownNow> {
        let l = self.lockdowns.get(client)?;
        if height < l.plain_until {
            Some(LockdownNow { quiet: false })
        } else if height < l.quiet_until {
            Some(LockdownNow { quiet: true })
        } else {
            None
        }
    }

    /// Locks `client` down until `until`, plainly or quietly (each only ever grows). A plain
    /// lockdown cancels every unvault under way at once.
    pub fn lock_down(&mut self, client: &str, until: u32, quiet: bool) -> Vec<Action> {
        self.lock_down_at(client, until, quiet, self.tip)
    }

    /// [`Watcher::lock_down`], the request taken at height `taken_at` (see
    /// [`Lockdown::last_set_at`]).
    pub fn lock_down_at(&mut self, client: &str, until: u32, quiet: bool, taken_at: u32) -> Vec<Action> {
        let l = self.lockdowns.entry(client.to_owned()).or_default();
        // Only a lockdown that ends later than the one holding is alarmed: one any party may
        // send again and again must not fill the guardians' feed.
        let extended = !quiet && until > l.plain_until;
        l.last_set_at = l.last_set_at.max(taken_at);
        if quiet {
            l.quiet_until = l.quiet_until.max(until);
        } else {
            l.plain_until = l.plain_until.max(until);
        }
        self.lockdowns_dirty = true;
        let mut actions = Vec::new();
        if extended {
            actions.push(Action::client_alarm(
                client,
                AlarmKind::Lockdown,
                format!("client {client} locked down until block {until}: every unvault is cancelled"),
            ));
        }
        if !quiet {
            for id in self.unvaulted_uncancelled(client) {
                self.start_cancel(id, ": the client is locked down", &mut actions);
            }
        }
        actions
    }

    /// Dates at `height` the lockdowns taken while the tower could not tell the height (see
    /// [`Lockdown::last_set_at`]): at the latest they can have been taken, so a late lift
    /// signed before then is refused and one signed since is taken.
    pub fn date_undated_lockdowns(&mut self, height: u32) {
        for l in self.lockdowns.values_mut().filter(|l| l.last_set_at == u32::MAX) {
            l.last_set_at = height;
            self.lockdowns_dirty = true;
        }
    }

    /// What lifting `client`'s lockdown that ends at `until` at `height` would do, without
    /// doing it: the same lift again changes nothing; one at a height below the last lift's
    /// was signed before it (each lift is at least the governance wait ahead of its signing),
    /// a replay of a past decision. At a later height not judged by the end it names: a
    /// lockdown set after a lift may end sooner than the one lifted, and its own lift must
    /// apply; at the same height, only one for a lockdown ending later is new. Which lockdown
    /// a lift ends is checked against the one held (see `governance::lift_lockdown`).
    pub fn check_lift(&self, client: &str, height: u32, until: u32) -> Lift {
        let (last, last_until) =
            self.lockdowns.get(client).map_or((0, 0), |l| (l.last_lift, l.last_lift_until));
        if (height, until) == (last, last_until) {
            Lift::AlreadyApplied
        } else if height < last || (height == last && until < last_until) {
            Lift::Superseded { last }
        } else {
            Lift::Applied
        }
    }

    /// Ends `client`'s lockdowns at `height` if they would hold longer (the guardians' quorum,
    /// after the governance wait), for the lockdown ending at `until`. Each lift applies once:
    /// replaying it later changes nothing.
    pub fn lift_lockdown(&mut self, client: &str, height: u32, until: u32) -> Lift {
        self.lift_lockdown_at(client, height, until, height)
    }

    /// [`Watcher::lift_lockdown`], the lockdowns ending at `ends_at` rather than at `height`
    /// (a lift delivered after its wait had passed, postponed to a full wait from now); known
    /// by `height` as signed.
    pub fn lift_lockdown_at(&mut self, client: &str, height: u32, until: u32, ends_at: u32) -> Lift {
        let lift = self.check_lift(client, height, until);
        if lift == Lift::Applied {
            let l = self.lockdowns.entry(client.to_owned()).or_default();
            l.plain_until = l.plain_until.min(ends_at);
            l.quiet_until = l.quiet_until.min(ends_at);
            l.last_lift = height;
            l.last_lift_until = until;
            self.lockdowns_dirty = true;
        }
        lift
    }

    fn unvaulted_uncancelled(&self, client: &str) -> Vec<OutPoint> {
        self.vaults
            .values()
            .filter(|v| v.policy_id == client)
            .filter(|v| v.state.unvault_seen && v.state.untouched())
            .map(|v| v.outpoint)
            .collect()
    }

    /// Every block: under a quiet lockdown, each confirmed unvault whose spend leaf opens
    /// within `duress_margin` blocks gets its cancel.
    pub(super) fn quiet_cancels(&mut self, height: u32, actions: &mut Vec<Action>) {
        let due: Vec<OutPoint> = self
            .active
            .iter()
            .filter_map(|id| {
                let v = self.vaults.get(id)?;
                let s = &v.state;
                let quiet = match self.lockdown(&v.policy_id, height) {
                    Some(l) => l.quiet,
                    None => self.approvals.get(&v.unvault.compute_txid()).is_some_and(|a| a.under_duress),
                };
                let opens = s.unvault_height? + v.delay as u32;
                (quiet && s.untouched() && height + self.duress_margin >= opens).then_some(*id)
            })
            .collect();
        for id in due {
            self.start_cancel(
                id,
                ": the client is under a duress lockdown (cancelled late, on purpose)",
                actions,
            );
        }
    }
}
