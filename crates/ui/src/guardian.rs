//! `vigil guardian ui`: a guardian's page. What waits for them (each request checked against
//! their own copy of the policy, as `vigil guardian show` does), the alarms of the co-signer
//! and of every tower, lockdown, panic and the policy's coming versions.
//!
//! The server holds the guardian's auth key: it reads the feeds, locks down, and signs panics,
//! policy versions and restore confirmations (those are auth-key signatures by protocol). The
//! key that signs a spend's PSBT is opened from the passphrase typed into the confirmation
//! form, used once, and wiped; the passphrase is asked for panics, policy versions and
//! restores too, as a deliberate step at this keyboard, not as a cryptographic barrier. What
//! is signed is what the confirmation page showed (its digest travels in the form and is
//! compared with the request fetched again). A page never shows a secret.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;
use vigil_client::cosigner::{ClientError, CosignerClient};
use vigil_client::guardian::{
    check_panic, diff, printable, typed_restore, Checked, Checker, OpenPanic, LOCKDOWN_WARNING,
    NOTHING_OUT_WARNING, PANIC_WINDOW, TO_OWNER,
};
use vigil_client::lift::{voted, LiftVote, NoLift};
use vigil_client::policies::checked_record_file;
use vigil_client::towers::{
    hand_change_to_every_tower, hand_panic_to_every_tower, lock_down_as_guardian, median_tip, towers_tip,
    TowerClient,
};
use vigil_cosigner::wire::{self, CosignerAlarm, SpendStatus};
use vigil_cosigner::MasterKey;
use vigil_policy::bitcoin::key::Keypair;
use vigil_policy::Policy;
use vigil_tower::wire::AlarmEntry;

use crate::gate::{Fields, Gate};
use crate::page::{about, btc, esc, form, notice, page, secret_field};

/// How often the main page reloads itself (new requests, new alarms).
pub const REFRESH_SECS: u32 = 10;

/// How far inside that window a panic started here ends: the co-signer's tip may be a few
/// blocks ahead of the towers'.
const PANIC_MARGIN: u32 = 6;

const NAV: &[(&str, &str)] = &[("Requests and alarms", "/"), ("Lock down", "/lockdown"), ("Panic", "/panic")];

/// The guardian's page.
pub struct GuardianPage {
    /// The policy file this guardian pinned (the client's id is its sha256).
    pinned: String,
    /// Where its signed changes lead now.
    current: Mutex<Arc<Current>>,
    key_file: PathBuf,
    /// Where the record of changes this guardian checked is kept (shared with `vigil
    /// guardian`): a restarted page is not led back to an older policy.
    changes_file: PathBuf,
    auth: Keypair,
    co: CosignerClient,
    gate: Arc<Gate>,
    /// The towers' median tip when the main page last read it (0: not yet).
    tip: AtomicU32,
    /// When this page first saw each tower alarm (towers do not date theirs).
    first_seen: Mutex<HashMap<(String, i64), u64>>,
}

impl Drop for GuardianPage {
    fn drop(&mut self) {
        self.auth.non_secure_erase();
    }
}

/// The policy the guardian follows now: the pinned one, or where the changes the guardians'
/// quorum signed lead (checked here, step by step, from the pinned one).
struct Current {
    /// The last chain that checked.
    followed: Arc<Followed>,
    /// Why the changes the co-signer serves now were not followed, if they were not: the
    /// page says so and approves nothing until they are.
    refused: Option<String>,
}

/// Where a chain that checked leads.
struct Followed {
    policy: Policy,
    text: String,
    /// Every version that applied, oldest first.
    history: Vec<Policy>,
    /// Checks requests against it (vaults made under earlier versions too).
    checker: Checker,
}

impl std::ops::Deref for Current {
    type Target = Followed;
    fn deref(&self) -> &Followed {
        &self.followed
    }
}

impl Current {
    fn pinned(text: &str) -> Result<Current, ClientError> {
        let policy = Policy::from_toml(text).map_err(|e| ClientError::Decode(e.to_string()))?;
        let checker = Checker::new(&policy).map_err(|e| ClientError::Decode(e.to_string()))?;
        let followed = Followed { history: vec![policy.clone()], policy, text: text.to_owned(), checker };
        Ok(Current { followed: Arc::new(followed), refused: None })
    }

    /// Where a checked chain leads.
    fn followed(f: vigil_client::policy_chain::Followed) -> Result<Current, String> {
        let checker = Checker::following(&f.history).map_err(|e| e.to_string())?;
        let followed = Followed { policy: f.current, text: f.current_text, history: f.history, checker };
        Ok(Current { followed: Arc::new(followed), refused: None })
    }
}

/// What the towers and the co-signer say now.
struct Feeds {
    spends: Result<Vec<SpendStatus>, ClientError>,
    restore: Option<wire::RestoreState>,
    lockdown: Option<wire::LockdownState>,
    cosigner_alarms: Result<Vec<CosignerAlarm>, ClientError>,
    towers: Vec<TowerView>,
}

struct TowerView {
    name: String,
    state: Result<Value, ClientError>,
    alarms: Result<Vec<AlarmEntry>, ClientError>,
}

impl Feeds {
    /// The median of the tips the towers reported.
    fn tip(&self) -> Option<u32> {
        median_tip(self.towers.iter().map(|t| &t.state))
    }
}

impl GuardianPage {
    /// The page of the guardian whose auth key is `auth`, for the client of `policy_text`.
    /// The record of changes it checked is kept in `changes_file`, and followed at once.
    pub fn new(
        policy_text: String,
        key_file: PathBuf,
        changes_file: PathBuf,
        auth: Keypair,
        nonce_file: PathBuf,
        gate: Arc<Gate>,
    ) -> Result<GuardianPage, ClientError> {
        let kept = checked_record_file(&policy_text, &changes_file, None).ok().and_then(|(r, _)| r);
        let pinned = Current::pinned(&policy_text)?;
        // A kept version this build cannot check leaves the page on the pinned policy, saying
        // so: the lockdown and panic buttons must stay.
        let current = match kept.map(|r| vigil_client::policy_chain::follow(&policy_text, &r.changes, r.tip))
        {
            Some(Ok(f)) => Current::followed(f)
                .unwrap_or_else(|why| Current { followed: pinned.followed.clone(), refused: Some(why) }),
            _ => pinned,
        };
        let co = CosignerClient::new(&policy_text, auth, nonce_file)?;
        let page = GuardianPage {
            current: Mutex::new(Arc::new(current)),
            pinned: policy_text,
            key_file,
            changes_file,
            auth,
            co,
            gate,
            first_seen: Mutex::new(HashMap::new()),
            tip: AtomicU32::new(0),
        };
        page.follow(None);
        Ok(page)
    }

    /// The policy followed now.
    fn current(&self) -> Arc<Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Follows the changes the co-signer serves from the pinned policy, up to `tip` (the
    /// towers' median) or else the co-signer's. An unreachable co-signer leaves the policy as
    /// it was; a chain that does not verify is shown as an alarm and not followed.
    fn follow(&self, tip: Option<u32>) {
        let Ok(served) = self.co.get::<wire::PolicyChanges>("/v1/policy/changes") else { return };
        let now = self.current();
        let refused = |why: String| Current { followed: now.followed.clone(), refused: Some(why) };
        // Kept if it checks and extends the record kept; else refused, as a chain that does
        // not check.
        match checked_record_file(&self.pinned, &self.changes_file, Some(Ok(served.clone()))) {
            Ok((_, None)) => {}
            Ok((_, Some(why))) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(refused(why));
                return;
            }
            Err(e) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(refused(e.to_string()));
                return;
            }
        }
        // The towers' median tip when the page has read it, else the co-signer's.
        let tip =
            tip.or_else(|| Some(self.tip.load(Ordering::Relaxed)).filter(|t| *t > 0)).unwrap_or(served.tip);
        // Checked against where the co-signer is at its own tip, then followed to the page's.
        let chain = |tip| vigil_client::policy_chain::follow(&self.pinned, &served.changes, tip);
        let followed =
            chain(served.tip).and_then(|f| f.reaches(served.current_version)).and_then(|()| chain(tip));
        let next = match followed {
            Ok(f) if f.current.version == now.policy.version && now.refused.is_none() => return,
            Ok(f) if f.current.version < now.policy.version => refused(format!(
                "the co-signer now leads to version {} after version {}",
                f.current.version, now.policy.version
            )),
            Ok(f) => Current::followed(f).unwrap_or_else(refused),
            Err(e) => refused(e.to_string()),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// The towers' median tip, read now (their client views only, not the whole feed).
    fn tower_tip(&self) -> Option<u32> {
        let towers = TowerClient::all(&self.current().policy, &self.auth, self.co.nonces());
        towers_tip(&towers, self.co.client_id())
    }

    /// Whether `key` is a guardian in some version of the policy this page follows.
    pub fn is_guardian(&self, key: &vigil_policy::bitcoin::XOnlyPublicKey) -> bool {
        self.current().history.iter().any(|p| p.guardians.keys.iter().any(|g| g.auth_key() == *key))
    }

    /// The page's routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/requests/{id}", get(request))
            .route("/requests/{id}/{verb}", get(confirm_vote).post(vote))
            .route("/lockdown", get(lockdown_form).post(lockdown))
            .route("/panic", get(panic_form).post(panic))
            .route("/policy/{id}", get(policy_form).post(sign_policy))
            .route("/restore", get(restore_form).post(confirm_restore))
            .route("/lift", get(lift_form).post(lift))
            .with_state(self)
    }

    fn feeds(&self) -> Feeds {
        let id = self.co.client_id().to_owned();
        let towers = TowerClient::all(&self.current().policy, &self.auth, self.co.nonces());
        // Every service at once: one that is down must not hold the page for the others.
        std::thread::scope(|scope| {
            let views: Vec<_> = towers
                .iter()
                .map(|t| {
                    let id = &id;
                    scope.spawn(move || TowerView {
                        name: t.name.clone(),
                        state: t.get(&format!("/v1/clients/{id}")),
                        alarms: t.get(&format!("/v1/clients/{id}/alarms")),
                    })
                })
                .collect();
            let spends = scope.spawn(|| self.co.get("/v1/spends"));
            let restore = scope.spawn(|| self.co.get("/v1/restore").ok());
            let lockdown = scope.spawn(|| self.co.get("/v1/lockdown").ok());
            let cosigner_alarms = self.co.get("/v1/alarms");
            Feeds {
                spends: spends.join().expect("no panic"),
                restore: restore.join().expect("no panic"),
                lockdown: lockdown.join().expect("no panic"),
                cosigner_alarms,
                towers: views.into_iter().map(|v| v.join().expect("no panic")).collect(),
            }
        })
    }

    fn csrf(&self) -> &str {
        self.gate.csrf()
    }

    fn title(&self) -> String {
        format!("Guardian — policy version {}", self.current().policy.version)
    }

    fn show(&self, heading: &str, body: &str) -> Response {
        Html(page(&self.title(), heading, NAV, body, None)).into_response()
    }

    /// A page that ends a handler early.
    fn stop(&self, heading: &str, body: &str) -> Box<Response> {
        Box::new(self.show(heading, body))
    }
}

/// Seconds since the epoch.
fn now() -> u64 {
    vigil_cosigner::service::now()
}

/// A Unix time as `2026-12-03 14:05 UTC`.
fn when(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year}-{month:02}-{day:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// How much an event of the feed asks of a guardian.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Severity {
    /// Something is wrong: act (and think twice before approving anything).
    Alarm,
    /// Worth knowing: a lockdown, a proposal, a restore.
    Notice,
    /// Routine: a request made, approved, denied.
    Routine,
}

/// An event kind (a tower's or the co-signer's), as a title and what to do, in words.
fn explain(kind: &str) -> (Severity, &'static str, &'static str) {
    use Severity::*;
    match kind {
        "unvault-cancelled" => (Alarm, "Coins were taken out of a vault without approval", "The watchtowers are cancelling it: the coins go back to safety. Call the owner, on a number you know."),
        "unapproved-spend" => (Alarm, "Coins are leaving without approval", "Coins are leaving an unvaulted vault by a payment nobody approved. Call the owner and the provider."),
        "foreign-vault-spend" => (Alarm, "A vault was spent in a way that should be impossible", "Call the provider now."),
        "unordered-emergency" => (Alarm, "A vault is being swept with no panic ordered", "The coins go to the deep vault, where they are safe, but nobody ordered it. Call the provider."),
        "deadline" | "bump-ceiling" | "fee-wallet-empty" | "backend-outage" | "reorg-too-deep" => (Alarm, "A watchtower is struggling", "A cancel may not confirm in time. Call the provider."),
        "fee-wallet-low" => (Notice, "A watchtower's fee money runs low", "Its operator should top it up. Tell the provider."),
        "tower-refused" => (Alarm, "A watchtower refused an order", "It will not be sent again, so that tower may not act as the others do. Call the provider."),
        "duress" | "duress-spend-request" => (Alarm, "The owner may be under duress", "The owner's wallet was opened with the duress code. Do not approve anything; speak to the other guardians, not to the owner's phone. The wallet is already locked, silently: a lockdown you press now stays silent too, while a panic sweeps openly, on chain, and a policy change you sign shows on the owner's device at its next unlock."),
        "heartbeat-unrecognised" => (Alarm, "The owner's wallet sent an unknown signal", "Someone may be using a copy of the wallet. Call the owner, on a number you know."),
        "panic-requested" | "panic" => (Alarm, "Panic: every vault is to be swept to the deep vault", "The wallet is locked down. Read the details, and sign the panic if the owner asked for it or you believe they are in danger."),
        "panic-proposed" => (Notice, "A guardian asked for a panic", "Every vault is swept to the deep vault once enough guardians sign."),
        "lockdown" => (Notice, "The wallet was locked down", "No vault can be spent until it ends."),
        "lockdown-lift" => (Notice, "A lockdown was lifted", "Vault spends are possible again."),
        "policy-proposed" => (Notice, "A new policy version was proposed", "Read what changes before you sign it."),
        "policy-change" => (Notice, "A new policy version was signed", "It applies at the block named below."),
        "policy-applied" => (Notice, "A new policy version applies", "The watchtower enforces it from now on."),
        "policy-invalid" => (Alarm, "A signed policy change could not be applied", "A watchtower cannot build the new policy and keeps the old one. Call the provider."),
        "owner-restored" => (Alarm, "The owner's wallet was restored on a new device", "Every vault spend waits for you until the guardians confirm it. Speak to the owner yourself, on a number you know, before you confirm it; if they did not tell you, lock the wallet down."),
        "restore-confirmed" => (Notice, "The guardians confirmed the owner's restored wallet", "Spends within the limits are approved at once again."),
        "tower-enrollment" => (Notice, "A watchtower was enrolled for this wallet", "Expected after a change the guardians signed adds a tower. Check that the tower serves the policy version named below; if nobody added one, call the owner, on a number you know."),
        "tower-retired" => (Notice, "A removed watchtower stopped watching", "A policy change removed it and it watches no vault any more."),
        "deep-vault-returned" => (Notice, "Coins came back from the deep vault", "The owner's backup key, the co-signer and every guardian signed it."),
        "vault-unregistered" => (Notice, "A vault waits for a watchtower", "Its funding is held back until every tower watches it."),
        "approval-needed" => (Routine, "The owner asked for a spend that needs you", "It is in the list above."),
        "spend-approved" => (Routine, "A spend was approved", ""),
        "spend-denied" => (Routine, "A spend was denied", ""),
        _ => (Notice, "An event about this wallet", ""),
    }
}

/// One line of the alarm feed: the co-signer's dated ones, the towers' grouped by event.
struct AlarmLine {
    when: String,
    sort: u64,
    kind: String,
    message: String,
    sources: Vec<String>,
    panic: Option<wire::ProposedPanic>,
    /// The co-signer's id of the event (none for a tower's).
    cosigner_id: Option<i64>,
    /// A proposed policy: the co-signer's alarm id, and its text.
    policy: Option<(i64, String)>,
}

fn alarm_lines(page: &GuardianPage, feeds: &Feeds) -> (Vec<AlarmLine>, Vec<String>) {
    let mut lines = Vec::new();
    let mut unreachable = Vec::new();
    match &feeds.cosigner_alarms {
        Ok(alarms) => lines.extend(alarms.iter().map(|a| AlarmLine {
            when: when(a.time),
            sort: a.time,
            kind: a.kind.clone(),
            message: a.message.clone(),
            sources: vec!["co-signer".into()],
            panic: a.panic.clone(),
            cosigner_id: Some(a.id),
            policy: a.policy.clone().map(|p| (a.id, p)),
        })),
        Err(e) => unreachable.push(format!("co-signer: {e}")),
    }
    let mut seen = page.first_seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut grouped: BTreeMap<(String, String), AlarmLine> = BTreeMap::new();
    for tower in &feeds.towers {
        let alarms = match &tower.alarms {
            Ok(a) => a,
            Err(e) => {
                unreachable.push(format!("{}: {e}", tower.name));
                continue;
            }
        };
        for a in alarms {
            let first = *seen.entry((tower.name.clone(), a.id)).or_insert_with(now);
            let key = (a.kind.clone(), a.vault.clone().unwrap_or_else(|| a.message.clone()));
            let line = grouped.entry(key).or_insert_with(|| AlarmLine {
                when: format!("seen {}", when(first)),
                sort: first,
                kind: a.kind.clone(),
                message: a.message.clone(),
                sources: Vec::new(),
                panic: None,
                cosigner_id: None,
                policy: None,
            });
            line.sources.push(tower.name.clone());
        }
    }
    lines.extend(grouped.into_values());
    lines.sort_by_key(|l| std::cmp::Reverse(l.sort));
    (lines, unreachable)
}

/// How far back an alarm still marks every request: a captivity may last a week.
const ALARM_MEMORY_SECS: u64 = 7 * 86_400;

/// Whether anything alarming happened to the wallet in the last week.
fn recently_alarmed(lines: &[AlarmLine]) -> bool {
    lines.iter().any(|a| a.sort + ALARM_MEMORY_SECS > now() && explain(&a.kind).0 == Severity::Alarm)
}

/// `settled`: the highest policy version the towers applied or hold signed by the quorum
/// (a proposal at or below it needs no more signatures).
fn render_alarms(page: &GuardianPage, lines: &[AlarmLine], unreachable: &[String], settled: u32) -> String {
    let mut out = String::from("<h2 id=\"alarms\">Alarms and events</h2>");
    for u in unreachable {
        out += &notice("warn", &format!("Could not read the alarms of {}.", esc(u)));
    }
    if lines.is_empty() {
        out += "<p>Nothing has happened to this wallet yet.</p>";
    }
    for line in lines {
        let (severity, title, what) = explain(&line.kind);
        let class = match severity {
            Severity::Alarm => "alarm",
            Severity::Notice => "warn",
            Severity::Routine => "routine",
        };
        let mut body = format!(
            "<h3>{}</h3><p>{}</p><dl><dt>When</dt><dd>{}</dd><dt>Reported by</dt><dd>{}</dd><dt>Details</dt><dd>{}</dd></dl>",
            esc(title),
            esc(what),
            esc(&line.when),
            esc(&line.sources.join(", ")),
            esc(&line.message)
        );
        if let (Some(_), Some(alarm)) = (&line.panic, line.cosigner_id) {
            body += &form(
                "/panic",
                page.csrf(),
                &format!(
                    "<input type=\"hidden\" name=\"alarm\" value=\"{alarm}\">\
                     <button class=\"secondary\" type=\"submit\" name=\"step\" value=\"review\">Review this panic</button>"
                ),
            );
        }
        if let Some((id, text)) = &line.policy {
            body += &proposed_policy(page, text);
            let version = Policy::from_toml(text).map(|p| p.version).unwrap_or(0);
            body += &if version <= settled {
                "<p class=\"muted\">The guardians' quorum has signed this version.</p>".to_owned()
            } else if page.current().refused.is_some() {
                "<p class=\"muted\">Not offered for signing while the policy changes the co-signer serves do not \
                 check.</p>"
                    .to_owned()
            } else {
                format!(
                    "<a class=\"button secondary\" href=\"/policy/{id}\">Review and sign this version…</a>"
                )
            };
        }
        out += &format!("<div class=\"card {class}\" data-kind=\"{}\">{body}</div>", esc(&line.kind));
    }
    out
}

/// What a checked spend pays: outside the household first; then what goes to the owner's
/// receive addresses (not safe in a vault: the owner and the co-signer can move it) and the
/// fee.
fn payments(c: &Checked) -> String {
    let out: Vec<String> = c
        .payments
        .iter()
        .filter(|p| !p.to_owner)
        .map(|p| format!("{} to <code>{}</code>", btc(p.sat), esc(&p.to)))
        .collect();
    let mut text = if out.is_empty() { "nothing outside the household".to_owned() } else { out.join(", ") };
    for p in c.payments.iter().filter(|p| p.to_owner) {
        text += &format!(", and {} {} (<code>{}</code>)", btc(p.sat), esc(TO_OWNER), esc(&p.to));
    }
    text + &format!(", fee {}", btc(c.fee_sat))
}

/// A waiting request, checked, as a card.
fn request_card(page: &GuardianPage, s: &SpendStatus, tip: Option<u32>, alarmed: bool, link: bool) -> String {
    let checked = page.current().checker.check(s);
    let mut out = format!("<div class=\"card request\" id=\"request-{}\">", s.id);
    match &checked {
        Ok(c) => {
            out += &format!("<h3>Request {}: send {}</h3>", s.id, payments(c));
        }
        Err(e) => {
            out += &format!("<h3>Request {}</h3>", s.id);
            out += &notice("alarm", &format!("<strong>Do not approve.</strong> {}", esc(&e.to_string())));
        }
    }
    let expires = match tip {
        Some(tip) if s.approval.expiry_height > tip => {
            format!("block {} ({} from now)", s.approval.expiry_height, about(s.approval.expiry_height - tip))
        }
        Some(_) => format!("block {} (passed)", s.approval.expiry_height),
        None => format!("block {}", s.approval.expiry_height),
    };
    let taken = checked.as_ref().map(|c: &Checked| c.taken_sat).unwrap_or(s.amount_sat);
    // The vault, kind and version the approval signs (checked, when the check passed), not
    // the co-signer's summary beside them.
    let kind = checked.as_ref().map_or_else(|_| printable(&s.vault.kind), |c| c.kind.name().to_owned());
    out += &format!(
        "<dl><dt>State</dt><dd>{}</dd><dt>From vault</dt><dd><code>{}</code> ({}, {} leaves it)</dd>\
         <dt>Asked by</dt><dd>the owner's wallet</dd><dt>Policy version</dt><dd>{}</dd>\
         <dt>Approvals</dt><dd>{} of {} needed</dd><dt>Expires</dt><dd>{}</dd></dl>",
        esc(&s.state),
        esc(&s.vault.vault_outpoint),
        esc(&kind),
        btc(taken),
        s.approval.policy_version,
        s.approvals,
        s.approvals_needed,
        esc(&expires),
    );
    if s.under_lockdown {
        out += &notice("alarm", &esc(LOCKDOWN_WARNING));
    }
    if checked.as_ref().is_ok_and(|c| !c.pays_out()) {
        out += &notice("alarm", &esc(NOTHING_OUT_WARNING));
    }
    if alarmed {
        out += &notice(
            "warn",
            "There were alarms about this wallet in the last week. Read them, and speak to the owner yourself, before you approve.",
        );
    }
    if link {
        out += &format!("<a class=\"button\" href=\"/requests/{}\">Review and decide</a>", s.id);
    }
    out + "</div>"
}

async fn home(State(page): State<Arc<GuardianPage>>) -> Response {
    crate::blocking(move || {
        let feeds = page.feeds();
        let tip = feeds.tip();
        if let Some(t) = tip {
            page.tip.store(t, Ordering::Relaxed);
        }
        page.follow(tip);
        let (alarms, unreachable) = alarm_lines(&page, &feeds);
        let alarmed = recently_alarmed(&alarms);
        let mut body = String::new();
        if let Some(r) = feeds.restore.as_ref().filter(|r| r.unconfirmed) {
            body += &notice(
                "warn",
                &format!(
                    "The owner's wallet was restored on a new device at block {} ({} of {} guardians confirmed). \
                     Until the guardians confirm it, every vault spend waits for you. \
                     <a href=\"/restore\">Confirm it once you have spoken to the owner yourself…</a>",
                    r.restored_at_height, r.confirmations, r.needed
                ),
            );
        }
        match feeds.lockdown.as_ref().filter(|l| l.locked) {
            Some(l) if l.lifted_at > 0 => body += &notice("info", &esc(&vigil_client::lift::lifted(l))),
            Some(l) => {
                let duress = if l.duress { " (the owner typed the duress code)" } else { "" };
                body += &notice(
                    "warn",
                    &format!(
                        "The wallet is locked down until block {}{duress}, {} from now. <a href=\"/lift\">Lift it \
                         early with the other guardians…</a>",
                        l.lockdown_until,
                        about(l.lockdown_until.saturating_sub(l.tip))
                    ),
                )
            }
            None => {}
        }
        body += "<h2 id=\"requests\">Requests waiting for you</h2>";
        match &feeds.spends {
            Ok(spends) => {
                let waiting: Vec<&SpendStatus> = spends.iter().filter(|s| s.state == "waiting").collect();
                if waiting.is_empty() {
                    body += "<p>No spend request is waiting for the guardians.</p>";
                }
                for s in waiting {
                    body += &request_card(&page, s, tip, alarmed, true);
                }
            }
            Err(e) => body += &notice("warn", &format!("The co-signer cannot be reached: {}", esc(&e.to_string()))),
        }
        let settled = feeds
            .towers
            .iter()
            .filter_map(|t| t.state.as_ref().ok())
            .flat_map(|s| {
                let pending = s["pending"].as_array().into_iter().flatten().filter_map(|p| p["version"].as_u64());
                s["version"].as_u64().into_iter().chain(pending)
            })
            .max()
            .unwrap_or(0) as u32;
        body += &render_alarms(&page, &alarms, &unreachable, settled);
        body += "<h2 id=\"policy\">Policy</h2>";
        let current = page.current();
        body += &format!("<p>You follow version {} of the policy.</p>", current.policy.version);
        if let Some(why) = &current.refused {
            body += &notice(
                "alarm",
                &format!(
                    "The co-signer serves policy changes that do not check against your copy ({}). Do not approve \
                     anything; tell the other guardians and the provider.",
                    esc(why)
                ),
            );
        }
        let mut coming: BTreeMap<u64, u64> = BTreeMap::new();
        for t in &feeds.towers {
            for p in t.state.as_ref().ok().and_then(|s| s["pending"].as_array().cloned()).unwrap_or_default() {
                coming.insert(p["version"].as_u64().unwrap_or(0), p["effective_height"].as_u64().unwrap_or(0));
            }
        }
        for (version, height) in coming {
            let wait = tip.map(|t| about((height as u32).saturating_sub(t))).unwrap_or_default();
            body += &notice(
                "info",
                &format!(
                    "Version {version} was signed by the guardians' quorum and applies at block {height} ({wait} from now)."
                ),
            );
        }
        body += "<h2 id=\"services\">Services</h2><ul>";
        body += &format!(
            "<li>Co-signer: {}</li>",
            if feeds.spends.is_ok() { "reachable" } else { "<strong>NOT reachable</strong>" }
        );
        for t in &feeds.towers {
            body += &match &t.state {
                Ok(s) => format!(
                    "<li>Watchtower {}: watching, at block {}{}</li>",
                    esc(&t.name),
                    s["tip"].as_u64().unwrap_or(0),
                    s["locked_until"].as_u64().map(|h| format!(", wallet locked down until block {h}")).unwrap_or_default()
                ),
                Err(e) => format!("<li>Watchtower {}: <strong>NOT reachable</strong> ({})</li>", esc(&t.name), esc(&e.to_string())),
            };
        }
        body += "</ul>";
        Html(crate::page::page(&page.title(), "Requests and alarms", NAV, &body, Some(REFRESH_SECS))).into_response()
    })
    .await
}

fn fetch(page: &GuardianPage, id: u64) -> Result<SpendStatus, Box<Response>> {
    page.follow(None);
    page.co.get(&format!("/v1/spends/{id}")).map_err(|e| {
        page.stop("Request not found", &notice("warn", &format!("Request {id}: {}", esc(&e.to_string()))))
    })
}

async fn request(State(page): State<Arc<GuardianPage>>, Path(id): Path<u64>) -> Response {
    crate::blocking(move || {
        let s = match fetch(&page, id) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        let feeds = page.feeds();
        let (alarms, _) = alarm_lines(&page, &feeds);
        let alarmed = recently_alarmed(&alarms);
        let mut body = request_card(&page, &s, feeds.tip(), alarmed, false);
        if s.state == "waiting" {
            if page.current().refused.is_none() && page.current().checker.check(&s).is_ok() {
                body += &format!("<a class=\"button\" href=\"/requests/{id}/approve\">Approve…</a>");
            }
            body += &format!("<a class=\"button danger\" href=\"/requests/{id}/deny\">Deny…</a>");
        }
        body += "<p><a href=\"/\">Back to the list</a></p>";
        page.show(&format!("Request {id}"), &body)
    })
    .await
}

/// Which way a guardian votes.
fn verb(text: &str) -> Option<bool> {
    match text {
        "approve" => Some(true),
        "deny" => Some(false),
        _ => None,
    }
}

async fn confirm_vote(State(page): State<Arc<GuardianPage>>, Path((id, v)): Path<(u64, String)>) -> Response {
    let Some(approve) = verb(&v) else { return Redirect::to("/").into_response() };
    crate::blocking(move || {
        let s = match fetch(&page, id) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        let checked = page.current().checker.check(&s);
        if approve && checked.is_err() {
            return Redirect::to(&format!("/requests/{id}")).into_response();
        }
        let what = match &checked {
            Ok(c) => payments(c),
            Err(_) => format!("request {id}"),
        };
        let mut body = if approve {
            format!(
                "<p>You are about to <strong>approve</strong> sending {what}, out of vault <code>{}</code>.</p>\
                 <p>Approve only if the owner asked you for this payment themselves, by a way you trust, and they are free and safe.</p>",
                esc(&s.vault.vault_outpoint)
            )
        } else {
            format!("<p>You are about to <strong>deny</strong> request {id} ({what}). A denial is final for this request.</p>")
        };
        if s.under_lockdown {
            body += &notice("alarm", &esc(LOCKDOWN_WARNING));
            if !approve {
                body += &notice(
                    "warn",
                    "The owner's device will show that a guardian denied this request. If the owner may be \
                     held, leaving it waiting is safer: it expires by itself, and the towers cancel it anyway.",
                );
            }
        }
        let action = if approve { "Approve this spend" } else { "Deny this spend" };
        let agree = if approve { "I checked the amount and the address with the owner." } else { "Yes, deny it." };
        body += &signing_form(
            &page,
            &format!("/requests/{id}/{v}"),
            &[("shown", &shown_digest(&s))],
            agree,
            &format!(
                "<button type=\"submit\" class=\"{}\">{action}</button><a class=\"button secondary\" href=\"/requests/{id}\">Go back</a>",
                if approve { "" } else { "danger" }
            ),
        );
        page.show(if approve { "Approve?" } else { "Deny?" }, &body)
    })
    .await
}

/// What the confirmation page showed of a request, as the digest of the approval's terms
/// (which name the exact spend, its unvault, vault, expiry and policy version).
fn shown_digest(s: &SpendStatus) -> String {
    use vigil_policy::bitcoin::hex::DisplayHex;
    s.approval.digest().as_ref().to_lower_hex_string()
}

/// A form that signs: the `hidden` fields (what was shown), the passphrase, a tick saying
/// `agree`, then `buttons` (markup: the submit button and any link after it).
fn signing_form(
    page: &GuardianPage,
    action: &str,
    hidden: &[(&str, &str)],
    agree: &str,
    buttons: &str,
) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(name, value)| {
            format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value))
        })
        .collect();
    form(
        action,
        page.csrf(),
        &format!(
            "{hidden}{}<p><label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> {}</label></p>{buttons}",
            secret_field("passphrase", "Your guardian passphrase"),
            esc(agree)
        ),
    )
}

/// The guardian's signing key, from the passphrase typed in a form; an error page when it
/// does not open.
fn open_key(page: &GuardianPage, fields: &Fields) -> Result<MasterKey, Box<Response>> {
    if fields.get("confirm") != "yes" {
        return Err(page.stop(
            "Not confirmed",
            &notice("warn", "You did not tick the confirmation: nothing was signed."),
        ));
    }
    MasterKey::open(&page.key_file, fields.get("passphrase").as_bytes(), page.current().policy.network)
        .map_err(|e| {
            tracing::info!("a guardian passphrase did not open the key");
            page.stop(
                "Nothing was signed",
                &notice(
                    "warn",
                    &format!(
                        "That passphrase did not open your guardian key ({}). Nothing was signed.",
                        esc(&e.to_string())
                    ),
                ),
            )
        })
}

async fn vote(
    State(page): State<Arc<GuardianPage>>,
    Path((id, v)): Path<(u64, String)>,
    Extension(fields): Extension<Fields>,
) -> Response {
    let Some(approve) = verb(&v) else { return Redirect::to("/").into_response() };
    crate::blocking(move || {
        let s = match fetch(&page, id) {
            Ok(s) => s,
            Err(r) => return *r,
        };
        // What is signed is what was shown: the co-signer may not swap the request between the
        // confirmation page and this post.
        if fields.get("shown") != shown_digest(&s) {
            return page.show(
                "Nothing was signed",
                &notice("alarm", "The request changed after it was shown to you. Nothing was signed: review it again, and tell the other guardians."),
            );
        }
        let current = page.current();
        if let (true, Some(why)) = (approve, &current.refused) {
            return page.show(
                "Nothing was signed",
                &notice("alarm", &format!("The policy changes the co-signer serves do not check ({}). Nothing was signed.", esc(why))),
            );
        }
        let checked = current.checker.check(&s);
        if approve {
            if let Err(e) = &checked {
                return page.show("Nothing was signed", &notice("alarm", &esc(&e.to_string())));
            }
        }
        let keys = match open_key(&page, &fields) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let vote = match checked {
            Ok(mut c) if approve => {
                keys.sign_psbt(0, &mut c.psbt);
                let auth = keys.auth_keypair(0);
                wire::Vote {
                    approve: true,
                    approval_signature: Some(wire::sign(&s.approval.digest(), &auth).signature),
                    psbt: Some(base64(&c.psbt.serialize())),
                }
            }
            _ => wire::Vote { approve: false, approval_signature: None, psbt: None },
        };
        drop(keys);
        match page.co.post::<_, SpendStatus>(&format!("/v1/spends/{id}/vote"), &vote) {
            Ok(after) => {
                let said = if approve { "Your approval is in" } else { "Your denial is in" };
                let body = notice(
                    "ok",
                    &format!(
                        "{said}. Request {id} is now <strong>{}</strong> ({} of {} approvals).",
                        esc(&after.state),
                        after.approvals,
                        after.approvals_needed
                    ),
                ) + "<p><a href=\"/\">Back to the list</a></p>";
                page.show("Done", &body)
            }
            Err(e) => page.show(
                "Not recorded",
                &notice("warn", &format!("The co-signer did not take your vote: {}", esc(&e.to_string()))),
            ),
        }
    })
    .await
}

async fn lockdown_form(State(page): State<Arc<GuardianPage>>) -> Response {
    let choices = [(6, "1 hour"), (36, "6 hours"), (144, "1 day"), (1008, "1 week"), (4032, "4 weeks")];
    let options: String = choices
        .iter()
        .map(|(b, l)| {
            format!(
                "<option value=\"{b}\"{}>{l} ({b} blocks)</option>",
                if *b == 144 { " selected" } else { "" }
            )
        })
        .collect();
    let body = String::from(
        "<p>A lockdown freezes the wallet at once: the co-signer refuses every spend and every watchtower cancels \
         any coins leaving a vault. Use it when something is wrong and you cannot reach the owner. It ends by itself.</p>",
    ) + &form(
        "/lockdown",
        page.csrf(),
        &format!(
            "<label for=\"blocks\">For how long</label><select id=\"blocks\" name=\"blocks\">{options}</select>\
             <p><label><input type=\"checkbox\" name=\"silent\" value=\"yes\"> The owner may be under duress (a duress \
             alarm came): keep it silent even if the co-signer does not answer (when it answers, it knows).</label></p>\
             <p><label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> Yes, lock the wallet down now.</label></p>\
             <button type=\"submit\" class=\"danger\">Lock down</button>"
        ),
    );
    page.show("Lock down the wallet", &body)
}

async fn lockdown(State(page): State<Arc<GuardianPage>>, Extension(fields): Extension<Fields>) -> Response {
    crate::blocking(move || {
        let blocks: u32 = fields.get("blocks").parse().unwrap_or(0);
        let most = vigil_cosigner::service::MAX_LOCKDOWN_BLOCKS.min(vigil_tower::wire::MAX_LOCKDOWN_BLOCKS);
        if fields.get("confirm") != "yes" || blocks == 0 || blocks > most {
            return page.show(
                "Not locked down",
                &notice("warn", "Choose a length and tick the confirmation: nothing was done."),
            );
        }
        let silent = fields.get("silent") == "yes";
        let lock = lock_down_as_guardian(&page.co, &page.current().policy, &page.auth, blocks, silent);
        let mut body = notice(if lock.cosigner.is_ok() { "ok" } else { "warn" }, &esc(&lock.headline()));
        body += "<ul>";
        for (name, e) in &lock.towers {
            body += &match e {
                None => format!("<li>Watchtower {}: locked down</li>", esc(name)),
                Some(e) => {
                    format!("<li>Watchtower {}: <strong>NOT reached</strong> ({})</li>", esc(name), esc(e))
                }
            };
        }
        body += "</ul>";
        if lock.nobody_took_it() {
            body += &notice("alarm", "Nobody took the lockdown: try again, and call the provider.");
        }
        page.show("Lock down", &body)
    })
    .await
}

/// What the towers said when handed a decision directly, as a list; an alarm naming
/// `missing` when the co-signer gave nothing to hand them.
fn told_directly(direct: Option<vigil_client::towers::TowerAnswers>, missing: &str) -> String {
    let Some(reports) = direct else {
        return notice("alarm", &format!("{missing}: the towers were not told directly. Call the provider."));
    };
    let items: String = reports
        .iter()
        .map(|(name, why)| match why {
            None => format!("<li>Watchtower {}, told directly: took it</li>", esc(name)),
            Some(e) => {
                format!(
                    "<li>Watchtower {}, told directly: <strong>NOT taken</strong> ({})</li>",
                    esc(name),
                    esc(e)
                )
            }
        })
        .collect();
    format!("<ul>{items}</ul>")
}

async fn panic_form(State(page): State<Arc<GuardianPage>>) -> Response {
    crate::blocking(move || {
        let body = match open_panic(&page, page.tower_tip()) {
            Some(open) => panic_page(&page, Some((open.alarm, &open.panic, &open.proposers)), false),
            None => panic_page(&page, None, false),
        };
        page.show("Panic", &body)
    })
    .await
}

/// The panic another guardian proposed that this one is offered to join at the towers' `tip`,
/// if any (see [`vigil_client::guardian::open_panic`]).
fn open_panic(page: &GuardianPage, tip: Option<u32>) -> Option<OpenPanic> {
    let alarms: Vec<CosignerAlarm> = page.co.get("/v1/alarms").ok()?;
    let me = page.auth.x_only_public_key().0;
    vigil_client::guardian::open_panic(alarms, &page.current().policy, page.co.client_id(), &me, tip?)
}

/// A panic another guardian proposed, as the co-signer's event `alarm` carries it, checked
/// (see [`checked_panic`]).
fn proposed_panic(page: &GuardianPage, alarm: i64) -> Result<(wire::Panic, Vec<usize>), Box<Response>> {
    let refuse = |why: &str| do_not_sign(page, why);
    let alarms: Vec<CosignerAlarm> =
        page.co.get("/v1/alarms").map_err(|e| refuse(&format!("the co-signer cannot be reached: {e}")))?;
    let proposed = alarms
        .into_iter()
        .find(|a| a.id == alarm)
        .and_then(|a| a.panic)
        .ok_or_else(|| refuse("that panic is no longer in the co-signer's feed"))?;
    checked_panic(page, proposed, page.tower_tip())
}

/// The page saying why a panic is not signed.
fn do_not_sign(page: &GuardianPage, why: &str) -> Box<Response> {
    page.stop("Do not sign", &notice("alarm", &format!("{}. Nothing was signed.", esc(why))))
}

/// A proposed panic checked (see [`vigil_client::guardian::check_panic`]), or the page
/// saying why it is not signed.
fn checked_panic(
    page: &GuardianPage,
    proposed: wire::ProposedPanic,
    tip: Option<u32>,
) -> Result<(wire::Panic, Vec<usize>), Box<Response>> {
    check_panic(&page.current().policy, page.co.client_id(), proposed, tip)
        .map_err(|why| do_not_sign(page, &why))
}

/// The panic form: a new panic, or joining the one of the co-signer's event `alarm` (with a
/// way to start a new one instead: that one may be a rogue guardian's, or about to run out).
fn panic_page(
    page: &GuardianPage,
    joining: Option<(i64, &wire::Panic, &[usize])>,
    past_offer: bool,
) -> String {
    let mut body = String::from(
        "<p>A panic sweeps <strong>every vault</strong> to the deep vault, which nobody in the household can open \
         for a long time; only the owner's off-site backup key with the co-signer and every guardian brings the coins \
         back sooner. It needs enough guardians to sign it.</p>",
    );
    let mut hidden = Vec::new();
    if let Some((alarm, panic, proposers)) = joining {
        let who: Vec<String> = proposers.iter().map(|g| format!("guardian {g}")).collect();
        body += &notice(
            "warn",
            &format!(
                "You are joining the panic {} started (id <code>{}</code>, acting until block {}); their signature checks.",
                esc(&who.join(" and ")),
                esc(&panic.id),
                panic.not_after_height
            ),
        );
        use vigil_policy::bitcoin::hex::DisplayHex;
        hidden = vec![("alarm", alarm.to_string()), ("shown", panic.digest().as_ref().to_lower_hex_string())];
    }
    // A new panic asked for knowingly, past one offered: not offered it again.
    if past_offer {
        hidden.push(("fresh", "1".to_owned()));
    }
    let hidden: Vec<(&str, &str)> = hidden.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = body
        + &signing_form(
            page,
            "/panic",
            &hidden,
            "Yes, sweep every vault to the deep vault.",
            &format!(
                "<button type=\"submit\" class=\"danger\" name=\"step\" value=\"sign\">{}</button>",
                if joining.is_some() { "Sign this panic" } else { "Start a panic" }
            ),
        );
    if joining.is_some() {
        out += &form(
            "/panic",
            page.csrf(),
            "<p class=\"muted\">Not this one (you do not trust who started it)?</p>\
             <button class=\"secondary\" type=\"submit\" name=\"step\" value=\"fresh\">Start a new panic instead</button>",
        );
    }
    out
}

async fn panic(State(page): State<Arc<GuardianPage>>, Extension(fields): Extension<Fields>) -> Response {
    crate::blocking(move || {
        let joining = match fields.get("alarm") {
            "" => None,
            alarm => match alarm
                .parse::<i64>()
                .map_err(|_| page.stop("Panic", ""))
                .and_then(|a| Ok((a, proposed_panic(&page, a)?)))
            {
                Ok(found) => Some(found),
                Err(r) => return *r,
            },
        };
        if fields.get("step") == "review" {
            let shown = joining.as_ref().map(|(a, (p, who))| (*a, p, who.as_slice()));
            return page.show("Panic", &panic_page(&page, shown, false));
        }
        if fields.get("step") == "fresh" {
            return page.show("Panic", &panic_page(&page, None, true));
        }
        let panic = match joining {
            Some((_, (panic, _))) => {
                use vigil_policy::bitcoin::hex::DisplayHex;
                if fields.get("shown") != panic.digest().as_ref().to_lower_hex_string() {
                    return page.show(
                        "Nothing was signed",
                        &notice("alarm", "The panic changed after it was shown to you. Nothing was signed."),
                    );
                }
                panic
            }
            None => {
                // Another guardian proposed one since this form was shown: theirs is offered,
                // not a second panic splitting the signatures (unless this form was asked for
                // past it).
                let tip = page.tower_tip();
                let offered = if fields.get("fresh") == "1" { None } else { open_panic(&page, tip) };
                if let Some(open) = offered {
                    return page.show(
                        "Nothing was signed",
                        &(notice(
                            "warn",
                            "Another guardian proposed a panic meanwhile: sign theirs (two panics split the \
                             signatures). Nothing was signed yet.",
                        ) + &panic_page(&page, Some((open.alarm, &open.panic, &open.proposers)), false)),
                    );
                }
                let Some(tip) = tip else {
                    return page.show(
                        "Not signed",
                        &notice(
                            "warn",
                            "No watchtower can be reached to read the chain's height: nothing was signed.",
                        ),
                    );
                };
                // A few blocks inside the window: the co-signer's tip may be ahead of the towers'.
                wire::Panic {
                    policy_id: page.co.client_id().to_owned(),
                    id: random_id(),
                    not_after_height: tip + PANIC_WINDOW - PANIC_MARGIN,
                }
            }
        };
        // The panic is signed with the auth key (what towers check); the passphrase is asked
        // all the same: it is a decision, made at this keyboard.
        let keys = match open_key(&page, &fields) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        drop(keys);
        let (id, not_after) = (panic.id.clone(), panic.not_after_height);
        let signatures = vec![wire::sign(&panic.digest(), &page.auth)];
        let order = wire::PanicOrder { panic: panic.clone(), signatures };
        match page.co.post::<_, wire::PanicRelayed>("/v1/panic", &order) {
            Ok(r) if r.towers.is_empty() => page.show(
                "Panic signed",
                &notice(
                    "warn",
                    &format!(
                        "Your signature is in: {} of {} guardians. The others see it on their page (or run \
                         <code>vigil guardian panic --id {} --not-after {not_after}</code>).",
                        r.approvals,
                        r.needed,
                        esc(&id)
                    ),
                ),
            ),
            Ok(r) => {
                let towers: Vec<String> = r
                    .towers
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}",
                            esc(&t.name),
                            if t.acknowledged { "acted" } else { "NOT reached yet" }
                        )
                    })
                    .collect();
                // Every tower is handed the panic directly too: a compromised co-signer must not
                // hold it back, nor claim it went out.
                let clients = TowerClient::all(&page.current().policy, &page.auth, page.co.nonces());
                let told = told_directly(
                    hand_panic_to_every_tower(&clients, panic, &r.signatures),
                    "The co-signer says the quorum signed but gives no signatures",
                );
                let body = notice(
                    "alarm",
                    &format!(
                        "The quorum signed: every vault is being swept to the deep vault. Towers, as the \
                         co-signer reports: {}.",
                        towers.join(", ")
                    ),
                );
                page.show("Panic under way", &(body + &told))
            }
            Err(e) => page.show(
                "Not signed",
                &notice("warn", &format!("The co-signer did not take it: {}", esc(&e.to_string()))),
            ),
        }
    })
    .await
}

fn random_id() -> String {
    use vigil_policy::bitcoin::hex::DisplayHex;
    use vigil_policy::bitcoin::secp256k1::rand::RngCore;
    let mut b = [0u8; 32];
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut b);
    b.to_lower_hex_string()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn restore_form(State(page): State<Arc<GuardianPage>>) -> Response {
    crate::blocking(move || {
        let last: wire::RestoreState = match page.co.get("/v1/restore") {
            Ok(r) => r,
            Err(e) => return page.show("Restore", &notice("warn", &format!("The co-signer cannot be reached: {}", esc(&e.to_string())))),
        };
        if !last.unconfirmed {
            return page.show("Restore", "<p>No restore of the owner's wallet waits for confirmation.</p>");
        }
        let body = format!(
            "<p>The owner's wallet was restored on a new device at block {}. Confirm it only if you have spoken to \
             the owner yourself since, on a number you know, and they are free and safe: whoever restored it holds \
             their own codes. Ask them which restore number their new device shows, and type it here.</p>",
            last.restored_at_height
        ) + &signing_form(
            &page,
            "/restore",
            &[],
            "I spoke to the owner myself; they are free and safe.",
            "<p><label>Restore number their new device shows <input name=\"restore\" inputmode=\"numeric\" \
             autocomplete=\"off\" required></label></p><button type=\"submit\">Confirm the restore</button>",
        );
        page.show("Confirm the owner's restore?", &body)
    })
    .await
}

async fn confirm_restore(
    State(page): State<Arc<GuardianPage>>,
    Extension(fields): Extension<Fields>,
) -> Response {
    crate::blocking(move || {
        // The passphrase is asked although the auth key signs this: it is a decision, not a read.
        let keys = match open_key(&page, &fields) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        drop(keys);
        let last: wire::RestoreState = match page.co.get("/v1/restore") {
            Ok(r) => r,
            Err(e) => {
                let why = format!("The co-signer cannot be reached: {}. Nothing was confirmed.", e);
                return page.show("Not confirmed", &notice("warn", &esc(&why)));
            }
        };
        let restore = match typed_restore(fields.get("restore"), last.restore) {
            Ok(n) => n,
            Err(why) => return page.show("Not confirmed", &notice("alarm", &esc(&format!("{why}.")))),
        };
        match page
            .co
            .post::<_, wire::RestoreConfirmation>("/v1/restore/confirm", &wire::ConfirmRestore { restore })
        {
            Ok(r) => page.show(
                "Confirmed",
                &notice(
                    "ok",
                    &format!("Your confirmation is in: {} of {} guardians.", r.confirmations, r.needed),
                ),
            ),
            Err(e) => page.show(
                "Not confirmed",
                &notice("warn", &format!("The co-signer did not take it: {}", esc(&e.to_string()))),
            ),
        }
    })
    .await
}

async fn lift_form(State(page): State<Arc<GuardianPage>>) -> Response {
    crate::blocking(move || {
        let state: wire::LockdownState = match page.co.get("/v1/lockdown") {
            Ok(s) => s,
            Err(e) => {
                return page.show(
                    "Lift",
                    &notice("warn", &format!("The co-signer cannot be reached: {}", esc(&e.to_string()))),
                )
            }
        };
        let vote = match LiftVote::for_state(&state, page.tower_tip()) {
            Ok(v) => v,
            Err(e @ NoLift::Unsafe { .. }) => {
                return page.show("Lift", &notice("alarm", &esc(&e.to_string())))
            }
            Err(e) => return page.show("Lift", &format!("<p>{}</p>", esc(&e.to_string()))),
        };
        let body = format!("<p>{}</p>", esc(&vote.describe(&state)))
            + &signing_form(
                &page,
                "/lift",
                &[("at", &vote.at.to_string()), ("until", &vote.until.to_string())],
                "I spoke to the owner myself; they are free and safe.",
                &format!("<button type=\"submit\">Lift the lockdown at block {}</button>", vote.at),
            );
        page.show("Lift the lockdown early?", &body)
    })
    .await
}

async fn lift(State(page): State<Arc<GuardianPage>>, Extension(fields): Extension<Fields>) -> Response {
    crate::blocking(move || {
        // The passphrase is asked although the auth key signs this: it is a decision, not a read.
        match open_key(&page, &fields) {
            Ok(keys) => drop(keys),
            Err(r) => return *r,
        }
        let not_signed = |why: &str| page.show("Not signed", &notice("warn", why));
        let (Ok(at), Ok(until)) = (fields.get("at").parse::<u32>(), fields.get("until").parse::<u32>())
        else {
            return not_signed("That form names no lift: nothing was signed.");
        };
        // Signed only as shown: what holds is read again, and must still call for that vote.
        let state: wire::LockdownState = match page.co.get("/v1/lockdown") {
            Ok(s) => s,
            Err(e) => {
                return not_signed(&format!("The co-signer cannot be reached: {}", esc(&e.to_string())))
            }
        };
        let vote = match LiftVote::as_shown(&state, page.tower_tip(), at, until) {
            Ok(v) => v,
            Err(NoLift::Changed) => {
                return not_signed(
                    "The lockdown or its lift changed since you looked: nothing was signed. Look again.",
                )
            }
            Err(e) => return not_signed(&format!("{}: nothing was signed.", esc(&e.to_string()))),
        };
        let taken = page.co.post::<_, wire::LockdownStatus>(
            "/v1/lockdown/lift",
            &vote.sign(page.co.client_id(), &page.auth),
        );
        if let Err(e) = taken {
            return not_signed(&format!("The co-signer did not take it: {}", esc(&e.to_string())));
        }
        // Signed and taken: how many signed so far is told if it can be read.
        let said = match page.co.get::<wire::LockdownState>("/v1/lockdown") {
            Ok(after) => voted(&after, vote.at),
            Err(e) => {
                format!(
                    "Your signature is in, lifting it at block {}; how many signed could not be read: {e}",
                    vote.at
                )
            }
        };
        page.show("Signed", &notice("ok", &esc(&said)))
    })
    .await
}

/// A proposed policy: its version and the lines that change from the guardian's copy.
fn proposed_policy(page: &GuardianPage, proposed: &str) -> String {
    let version = match Policy::from_toml(proposed) {
        Ok(p) => p.version,
        Err(e) => {
            return notice(
                "alarm",
                &format!("The proposed policy does not read: {}. Do not sign it.", esc(&e.to_string())),
            )
        }
    };
    let current = page.current();
    let lines = diff(&current.text, proposed);
    let rows: String = lines
        .iter()
        .map(|l| {
            let class = if l.starts_with('+') { "diff-add" } else { "diff-del" };
            format!("<span class=\"{class}\">{}</span>\n", esc(l))
        })
        .collect();
    format!(
        "<p>Version {} → {version}. If the guardians' quorum signs it, it applies after the co-signer's waiting \
         period (a change that only tightens the policy applies at once). What changes (− your copy, + the proposal):</p>\
         <pre>{rows}</pre><details><summary>The whole proposed policy</summary><pre>{}</pre></details>",
        current.policy.version,
        esc(proposed)
    )
}

/// What a guardian was shown of a proposed policy: its text's sha256.
fn text_digest(text: &str) -> String {
    use vigil_policy::bitcoin::hashes::{sha256, Hash};
    sha256::Hash::hash(text.as_bytes()).to_string()
}

/// The text of the proposed policy the co-signer's alarm `id` carries.
fn proposal(page: &GuardianPage, id: i64) -> Result<String, Box<Response>> {
    let alarms: Vec<CosignerAlarm> = page.co.get("/v1/alarms").map_err(|e| {
        page.stop(
            "Not found",
            &notice("warn", &format!("The co-signer cannot be reached: {}", esc(&e.to_string()))),
        )
    })?;
    alarms.into_iter().find(|a| a.id == id).and_then(|a| a.policy).ok_or_else(|| {
        page.stop("Not found", &notice("warn", "That proposal is no longer in the co-signer's feed."))
    })
}

/// What the page says, signing nothing, while the policy changes the co-signer serves do not
/// check: which version is current is unknown, so no change of it is signed (as on the
/// command line).
fn chain_refused(page: &GuardianPage) -> Option<Response> {
    let current = page.current();
    let why = current.refused.as_ref()?;
    Some(page.show(
        "Nothing was signed",
        &notice(
            "alarm",
            &format!(
                "The policy changes the co-signer serves do not check ({}). No policy version is signed until they \
                 do: tell the other guardians and the provider.",
                esc(why)
            ),
        ),
    ))
}

async fn policy_form(State(page): State<Arc<GuardianPage>>, Path(id): Path<i64>) -> Response {
    crate::blocking(move || {
        if let Some(refused) = chain_refused(&page) {
            return refused;
        }
        let text = match proposal(&page, id) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let body = proposed_policy(&page, &text)
            + &signing_form(
                &page,
                &format!("/policy/{id}"),
                &[("shown", &text_digest(&text))],
                "I have read what changes and agree.",
                "<button type=\"submit\">Sign this version</button><a class=\"button secondary\" href=\"/\">Go back</a>",
            );
        page.show("Sign a new policy version?", &body)
    })
    .await
}

async fn sign_policy(
    State(page): State<Arc<GuardianPage>>,
    Path(id): Path<i64>,
    Extension(fields): Extension<Fields>,
) -> Response {
    crate::blocking(move || {
        if let Some(refused) = chain_refused(&page) {
            return refused;
        }
        let text = match proposal(&page, id) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        if let Err(e) = Policy::from_toml(&text) {
            return page.show(
                "Nothing was signed",
                &notice("alarm", &format!("The proposal does not read: {}", esc(&e.to_string()))),
            );
        }
        // What is signed is the text that was shown, not whatever the co-signer serves now.
        if fields.get("shown") != text_digest(&text) {
            return page.show(
                "Nothing was signed",
                &notice("alarm", "The proposal changed after it was shown to you. Nothing was signed."),
            );
        }
        // Signed with the auth key (what towers check); the passphrase is asked all the same:
        // it is a decision, made at this keyboard.
        let keys = match open_key(&page, &fields) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        drop(keys);
        let digest = vigil_tower::wire::policy_change_digest(page.co.client_id(), &text);
        let signatures = vec![wire::sign(&digest, &page.auth)];
        match page.co.post::<_, wire::PolicyChangeStatus>(
            "/v1/policy",
            &wire::PolicyChange { policy: text.clone(), signatures },
        ) {
            Ok(r) if r.effective_height == 0 => page.show(
                "Signed",
                &notice(
                    "ok",
                    &format!("Your signature is in: {} of {} guardians so far.", r.approvals, r.needed),
                ),
            ),
            Ok(r) => {
                let body = notice(
                    "ok",
                    &format!(
                        "The quorum signed version {}: it applies at block {}.",
                        r.version, r.effective_height
                    ),
                );
                // Every tower is handed the change directly too (each checks the signatures): a
                // compromised co-signer must not keep a tightening from them.
                let served = page.co.get::<wire::PolicyChanges>("/v1/policy/changes");
                let clients = TowerClient::all(&page.current().policy, &page.auth, page.co.nonces());
                let direct = served
                    .ok()
                    .and_then(|s| hand_change_to_every_tower(&clients, page.co.client_id(), &text, &s));
                let told = told_directly(
                    direct,
                    "The co-signer does not serve the change it says the quorum signed",
                );
                page.show("Signed", &(body + &told))
            }
            Err(e) => page.show(
                "Not signed",
                &notice("warn", &format!("The co-signer did not take it: {}", esc(&e.to_string()))),
            ),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_796_299_500), "2026-12-03 12:05 UTC");
    }

    /// Every kind the co-signer and the towers raise reads as itself, not as "an event": a
    /// forced restore must count as an alarm on the requests' cards.
    #[test]
    fn every_alarm_kind_has_its_own_words() {
        let cosigner = [
            "approval-needed",
            "deep-vault-returned",
            "duress",
            "duress-spend-request",
            "heartbeat-unrecognised",
            "lockdown",
            "lockdown-lift",
            "owner-restored",
            "panic",
            "panic-proposed",
            "panic-requested",
            "policy-applied",
            "policy-change",
            "policy-proposed",
            "restore-confirmed",
            "spend-approved",
            "spend-denied",
            "tower-enrollment",
            "tower-refused",
            "tower-retired",
            "vault-unregistered",
        ];
        // The towers' kinds from their type (a kind added there must be listed there).
        let towers = vigil_tower::vault::AlarmKind::ALL.map(|k| k.as_str());
        let unknown = explain("no such kind");
        for kind in cosigner.iter().chain(&towers) {
            assert_ne!(explain(kind).1, unknown.1, "{kind}");
        }
        for kind in ["owner-restored", "tower-refused", "heartbeat-unrecognised", "duress"] {
            assert!(matches!(explain(kind).0, Severity::Alarm), "{kind}");
        }
    }
}
