//! The coercion drill (`vigil drill`, ADR 0006): the whole system on one machine as real
//! processes on loopback (the embedded chain, a co-signer, three towers, the owner's `vigil`
//! commands and the guardians'), attacked one scenario at a time, each on a household of
//! its own, with blocks mined as time passes. For each scenario it measures what was at
//! risk, what the attacker ended with (read from the chain), the allowance, and how long the
//! guardians' alarm took from the moment the event was observable; and it writes the
//! timeline and a summary as text, JSON and a self-contained HTML report.
//!
//! - [`world`]: the processes, the payer, the alarm sink.
//! - [`household`]: one family's `vigil` and `vigil guardian` commands.
//! - [`scenarios`]: what each scenario plays and checks.
//! - [`report`]: the text, JSON and HTML.

pub mod household;
pub mod report;
pub mod scenarios;
pub mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why the drill could not play a scenario (a broken step, not a scenario that failed).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A step did not work.
    #[error("{what}: {why}")]
    Step {
        /// The step.
        what: String,
        /// What went wrong.
        why: String,
    },
    /// A file or a process.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The longest an alarm may take from the event to the guardians.
pub const ALARM_LIMIT: Duration = Duration::from_secs(60);

/// What the drill is asked to do.
pub struct Options {
    /// The `vigil` binary the processes run (the running one, for `vigil drill`).
    pub exe: PathBuf,
    /// Its data directory (made; the chain, the services, each household).
    pub dir: PathBuf,
    /// The scenarios to play (`S1`…); all when empty.
    pub only: Vec<String>,
}

/// One moment of a scenario's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The chain's height then.
    pub height: u32,
    /// Milliseconds since the scenario started.
    pub ms: u64,
    /// Who acted: `owner`, `attacker`, `guardians`, `co-signer`, `tower-1`, `chain`.
    pub actor: String,
    /// `action`, `tx` (a transaction seen or mined) or `alarm`.
    pub kind: String,
    /// What happened.
    pub what: String,
}

/// A scenario's result: the numbers the issue names, and the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `S1`…
    pub scenario: String,
    /// What it plays.
    pub title: String,
    /// The household's total at the start, sats.
    pub at_risk_sats: u64,
    /// What the attacker's addresses received, sats.
    pub extracted_sats: u64,
    /// The hot wallet's balance at the start, sats.
    pub hot_wallet_sats: u64,
    /// The most an attacker may end with (DESIGN G1): the hot wallet plus what the velocity
    /// budget releases over the scenario, or the hot wallet alone once the duress code was
    /// given.
    pub allowance_sats: u64,
    /// From the event becoming observable to the guardians' alarm; `None` where none is due.
    pub alarm_latency_ms: Option<u64>,
    /// What happened, in a sentence.
    pub outcome: String,
    /// Whether everything the scenario must show held.
    pub held: bool,
    /// What did not, if anything.
    pub failures: Vec<String>,
    /// Its wall time.
    pub wall_ms: u64,
    /// Blocks from its start to its end.
    pub blocks: (u32, u32),
    /// What happened, in order.
    pub timeline: Vec<Event>,
}

/// A scenario being played: the world, the clock, the timeline.
pub struct Play<'a> {
    /// The processes and the chain.
    pub world: &'a mut world::World,
    started: Instant,
    start_height: u32,
    timeline: Vec<Event>,
    failures: Vec<String>,
    progress: &'a mut dyn FnMut(&str),
    /// Set by the scenario.
    pub at_risk_sats: u64,
    /// Set by the scenario.
    pub extracted_sats: u64,
    /// Set by the scenario.
    pub hot_wallet_sats: u64,
    /// Set by the scenario.
    pub allowance_sats: u64,
    /// Set by the scenario when an alarm is due (`Some(None)`: due and missed).
    pub alarm: Option<Option<u64>>,
    /// Set by the scenario.
    pub outcome: String,
}

impl Play<'_> {
    /// Records that `actor` did `what` (`kind`: action, tx, alarm), and says so.
    pub fn note(&mut self, actor: &str, kind: &str, what: impl Into<String>) {
        let what = what.into();
        let height = self.world.height().unwrap_or(self.start_height);
        let ms = household::millis(self.started, Instant::now());
        (self.progress)(&format!("  [{:>6.1} s, block {height}] {actor}: {what}", ms as f64 / 1000.0));
        self.timeline.push(Event { height, ms, actor: actor.into(), kind: kind.into(), what });
    }

    /// Records a check that failed.
    pub fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        (self.progress)(&format!("  FAILED: {why}"));
        self.failures.push(why);
    }

    /// Checks `ok`, recording `why` if not.
    pub fn check(&mut self, ok: bool, why: impl Into<String>) {
        if !ok {
            self.fail(why);
        }
    }

    /// Mines `n` blocks (time passing), recorded.
    pub fn mine(&mut self, n: u32) -> Result<u32, DrillError> {
        let h = self.world.mine(n)?;
        self.note("chain", "block", format!("{n} block{} mined", if n == 1 { "" } else { "s" }));
        Ok(h)
    }

    /// Waits for an alarm of `kind` matching `matches` since `event`, records it and its
    /// latency (the scenario's alarm latency is its first due alarm's).
    pub fn expect_alarm(
        &mut self,
        kind: &str,
        event: Instant,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<u64> {
        let got = self.world.alarms.first(kind, event, ALARM_LIMIT, matches);
        let latency = got.as_ref().map(|a| household::millis(event, a.at));
        match (&got, latency) {
            (Some(a), Some(ms)) => {
                let from = a.body["tower"].as_str().map_or("co-signer".to_owned(), |_| "a tower".to_owned());
                self.note(
                    "guardians",
                    "alarm",
                    format!("alarm \"{kind}\" from {from}, {ms} ms after the event"),
                );
            }
            _ => self.fail(format!("no \"{kind}\" alarm within {} s", ALARM_LIMIT.as_secs())),
        }
        if self.alarm.is_none() || self.alarm == Some(None) {
            self.alarm = Some(latency);
        }
        latency
    }
}

/// Plays the asked scenarios; `progress` receives a line at each step.
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Vec<ScenarioReport>, DrillError> {
    let chosen: Vec<&scenarios::Scenario> = scenarios::ALL
        .iter()
        .filter(|s| options.only.is_empty() || options.only.iter().any(|o| o.eq_ignore_ascii_case(s.id)))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = scenarios::ALL.iter().map(|s| s.id).collect();
        return Err(DrillError::Step {
            what: "choosing scenarios".into(),
            why: format!("none of {:?} is a scenario (there are {})", options.only, known.join(", ")),
        });
    }
    progress(&format!("starting the chain, a co-signer and three towers in {}", options.dir.display()));
    let mut world = world::World::start(&options.exe, &options.dir, 3)?;
    let mut reports = Vec::new();
    for scenario in chosen {
        progress(&format!("{} {}", scenario.id, scenario.title));
        let started = Instant::now();
        let start_height = world.height()?;
        let mut play = Play {
            world: &mut world,
            started,
            start_height,
            timeline: Vec::new(),
            failures: Vec::new(),
            progress: &mut *progress,
            at_risk_sats: 0,
            extracted_sats: 0,
            hot_wallet_sats: 0,
            allowance_sats: 0,
            alarm: None,
            outcome: String::new(),
        };
        if let Err(e) = (scenario.play)(&mut play) {
            play.fail(format!("the scenario could not be played: {e}"));
        }
        if play.extracted_sats > play.allowance_sats {
            let why = format!("the attacker got {} sats, above the allowance", play.extracted_sats);
            play.fail(why);
        }
        let end = play.world.height().unwrap_or(start_height);
        let report = ScenarioReport {
            scenario: scenario.id.into(),
            title: scenario.title.into(),
            at_risk_sats: play.at_risk_sats,
            extracted_sats: play.extracted_sats,
            hot_wallet_sats: play.hot_wallet_sats,
            allowance_sats: play.allowance_sats,
            alarm_latency_ms: play.alarm.flatten(),
            outcome: play.outcome,
            held: play.failures.is_empty(),
            failures: play.failures,
            wall_ms: household::millis(started, Instant::now()),
            blocks: (start_height, end),
            timeline: play.timeline,
        };
        progress(&format!(
            "{} {} in {:.1} s",
            report.scenario,
            if report.held { "held" } else { "FAILED" },
            report.wall_ms as f64 / 1000.0
        ));
        reports.push(report);
    }
    Ok(reports)
}
