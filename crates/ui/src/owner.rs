//! `vigil ui`: the owner's page. Balances per tier, each vault's place and timeline, spends
//! (from the allowance at once, or from a vault through the guardians and DELAY), lockdown
//! and the services' health.
//!
//! The page unlocks with the wallet's code, like every command, and is rendered from the
//! same [`overview`] `vigil status` prints. Nothing here branches on which code was typed (it
//! cannot know): under the duress code the page is the same page.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use vigil_client::allowance::{Allowance, AllowanceError};
use vigil_client::overview::{self, Overview};
use vigil_client::recovery::VaultPlace;
use vigil_client::session::Session;
use vigil_client::spending;
use vigil_client::wallet::WalletDir;
use vigil_policy::bitcoin::{Address, Amount};

use crate::gate::{Fields, Gate};
use crate::page::{about, btc, esc, form, notice, page, secret_field};

/// An unlocked page locks itself after this long without a request.
pub const IDLE_LOCK: Duration = Duration::from_secs(5 * 60);

/// And after this long in any case: within the co-signer's window for an unlock's heartbeat
/// (`HEARTBEAT_FRESH_SECS`), so a spend never meets "unlock again" on a page that looks open.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(10 * 60);

const NAV: &[(&str, &str)] = &[("Wallet", "/"), ("Send", "/spend"), ("Lock down", "/lockdown")];

/// The owner's page.
pub struct OwnerPage {
    dir: WalletDir,
    gate: Arc<Gate>,
    /// The unlocked wallet, when it was unlocked and when it was last used.
    session: Mutex<Option<Unlocked>>,
    /// One request at a time reads or writes the wallet's files.
    wallet: Mutex<()>,
    /// The send forms handed out and not sent yet: each is taken once, so a reload or a
    /// double click never pays twice.
    forms: Mutex<HashSet<String>>,
}

struct Unlocked {
    session: Arc<Session>,
    opened: Instant,
    used: Instant,
}

impl OwnerPage {
    /// The page of the wallet in `dir`.
    pub fn new(dir: WalletDir, gate: Arc<Gate>) -> OwnerPage {
        OwnerPage {
            dir,
            gate,
            session: Mutex::new(None),
            wallet: Mutex::new(()),
            forms: Mutex::new(HashSet::new()),
        }
    }

    /// A new send form's one-time id.
    fn new_form(&self) -> String {
        use vigil_policy::bitcoin::hex::DisplayHex;
        use vigil_policy::bitcoin::secp256k1::rand::RngCore;
        let mut b = [0u8; 16];
        vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut b);
        let id = b.to_lower_hex_string();
        self.forms.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        id
    }

    /// Takes a send form's id: false when it was sent already (or never handed out).
    fn take_form(&self, id: &str) -> bool {
        self.forms.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// The page's routes. A background thread drops an expired session even when no request
    /// comes (its keys do not wait in memory for the next one).
    pub fn router(self: Arc<Self>) -> Router {
        let watched = Arc::downgrade(&self);
        std::thread::spawn(move || {
            while let Some(page) = watched.upgrade() {
                page.session();
                drop(page);
                std::thread::sleep(Duration::from_secs(10));
            }
        });
        Router::new()
            .route("/", get(home))
            .route("/unlock", post(unlock))
            .route("/lock", post(lock))
            .route("/spend", get(spend_form).post(spend))
            .route("/spends/continue", post(carry_on))
            .route("/lockdown", get(lockdown_form).post(lockdown))
            .with_state(self)
    }

    /// The unlocked session, if any (an idle or old one is dropped).
    fn session(&self) -> Option<Arc<Session>> {
        let mut held = self.session.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(u) if u.used.elapsed() > IDLE_LOCK || u.opened.elapsed() > SESSION_LIFETIME => {
                *held = None;
                None
            }
            Some(u) => {
                u.used = Instant::now();
                Some(u.session.clone())
            }
            None => None,
        }
    }

    fn show(&self, heading: &str, body: &str) -> Response {
        Html(page("Vigil wallet", heading, NAV, body, None)).into_response()
    }

    fn lock_button(&self) -> String {
        form("/lock", self.gate.csrf(), "<button type=\"submit\" class=\"secondary\">Lock this page</button>")
    }
}

/// Runs `act` with the unlocked session, or sends the browser to the unlock form.
async fn unlocked(
    page: Arc<OwnerPage>,
    act: impl FnOnce(&OwnerPage, &Session) -> Response + Send + 'static,
) -> Response {
    let Some(session) = page.session() else { return Redirect::to("/").into_response() };
    crate::blocking(move || act(&page, &session)).await
}

fn unlock_page(page: &OwnerPage, problem: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(p) = problem {
        body += &notice("warn", &esc(p));
    }
    body += &form(
        "/unlock",
        page.gate.csrf(),
        &format!("{}<button type=\"submit\">Unlock</button>", secret_field("code", "Unlock code")),
    );
    Html(crate::page::page("Vigil wallet", "Unlock your wallet", &[], &body, None)).into_response()
}

async fn home(State(page): State<Arc<OwnerPage>>) -> Response {
    if page.session().is_none() {
        return unlock_page(&page, None);
    }
    unlocked(page, |page, session| match overview::read(session) {
        Ok(o) => page.show("Your wallet", &render(page, &o)),
        Err(e) => page.show(
            "Your wallet",
            &notice("warn", &format!("The wallet cannot be read right now: {}", esc(&e.to_string()))),
        ),
    })
    .await
}

fn render(page: &OwnerPage, o: &Overview) -> String {
    let mut body = String::new();
    if let Some(h) = o.locked_until.max(o.towers_locked_until) {
        body += &notice(
            "warn",
            &format!(
                "The wallet is <strong>locked down</strong> until block {h} ({}): vault spends are refused.",
                about(h.saturating_sub(o.height))
            ),
        );
    }
    if let Some(w) = &o.policy_warning {
        body += &notice("warn", &esc(w));
    }
    body += &format!("<p class=\"muted\">At block {}.</p><h2>Balances</h2><dl>", o.height);
    body += &match &o.allowance {
        Ok(a) => {
            let mut line = btc(a.confirmed_sat);
            if a.pending_sat > 0 {
                line += &format!(", and {} not yet confirmed", btc(a.pending_sat));
            }
            format!("<dt>Allowance (spendable at once)</dt><dd>{line}<br><span class=\"muted\">limit {}</span></dd>", btc(o.allowance_limit_sat))
        }
        Err(e) => format!("<dt>Allowance</dt><dd>cannot be read right now ({})</dd>", esc(e)),
    };
    body += &format!(
        "<dt>Waiting to be vaulted</dt><dd>{} in {} coin(s)</dd>",
        btc(o.intake_sat),
        o.intake_coins
    );
    body += &format!("<dt>In vaults</dt><dd>{}</dd>", btc(o.vault_sat));
    if o.cancelled_sat > 0 {
        body += &format!("<dt>Cancelled, back in your recovery output</dt><dd>{}</dd>", btc(o.cancelled_sat));
    }
    if o.deep_vault_sat > 0 {
        body += &format!("<dt>In the deep vault</dt><dd>{}</dd>", btc(o.deep_vault_sat));
    }
    body += "</dl>";
    if !o.spends.is_empty() {
        body += "<h2>Spends under way</h2>";
        for sp in &o.spends {
            body += &format!(
                "<div class=\"card\"><h3>Spend {}: {} to <code>{}</code></h3><p>{}</p></div>",
                sp.id,
                btc(sp.amount_sat),
                esc(&sp.destination),
                esc(&sp.stage)
            );
        }
        body += &form(
            "/spends/continue",
            page.gate.csrf(),
            "<button type=\"submit\">Check and carry on</button>",
        );
    }
    body += "<h2>Vaults</h2>";
    if o.vaults.is_empty() {
        body += "<p>No vault yet: receive coins, then protect them with <code>vigil vault</code>.</p>";
    }
    for v in &o.vaults {
        body += &format!("<div class=\"card vault\"><h3>{} vault: {}</h3><p>{}</p><p class=\"muted\"><code>{}</code></p></div>",
            esc(&capitalized(&v.kind)), btc(v.amount_sat), esc(&timeline(v, o)), esc(&v.outpoint));
    }
    body += "<h2>Services</h2><ul>";
    body += &match o.policy_waiting {
        Some((version, at)) => format!(
            "<li>Policy: version {} (version {version}, signed by your guardians, applies at block {at})</li>",
            o.policy_version
        ),
        None => format!("<li>Policy: version {}</li>", o.policy_version),
    };
    body += &format!(
        "<li>Co-signer: {}</li>",
        if o.cosigner_reachable { "reachable" } else { "<strong>NOT reachable</strong>" }
    );
    for (name, r) in &o.towers {
        body += &match r {
            Ok(()) => format!("<li>Watchtower {}: watching</li>", esc(name)),
            Err(e) => {
                format!("<li>Watchtower {}: <strong>NOT reachable</strong> ({})</li>", esc(name), esc(e))
            }
        };
    }
    body += "</ul>";
    body + &page.lock_button()
}

fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A vault's place, with the heights that matter.
fn timeline(v: &overview::VaultLine, o: &Overview) -> String {
    match &v.place {
        VaultPlace::FundingSent => "Funding sent, waiting for a block.".into(),
        VaultPlace::Protected => match v.confirmed_height {
            Some(h) => format!("Protected since block {h}."),
            None => "Protected.".into(),
        },
        VaultPlace::Unvaulting => "Unvault sent, waiting for a block.".into(),
        VaultPlace::Unvaulted { height, .. } => {
            let at = v.spendable_at().unwrap_or(*height);
            if at > o.height {
                format!(
                    "Unvaulted at block {height}: spendable at block {at} ({} from now).",
                    about(at - o.height)
                )
            } else {
                format!("Unvaulted at block {height}: spendable since block {at}.")
            }
        }
        VaultPlace::Cancelled { height, .. } => {
            format!("Cancelled at block {height}: the coins are back in your recovery output.")
        }
        VaultPlace::DeepVault { height, .. } => format!("Swept to the deep vault at block {height}."),
        VaultPlace::Spent => "Spent.".into(),
        VaultPlace::Unreadable(why) => format!("Not readable now: {why}"),
    }
}

async fn unlock(State(page): State<Arc<OwnerPage>>, Extension(fields): Extension<Fields>) -> Response {
    crate::blocking(move || {
        // Wrong codes wait the keystore's back-off, the same whichever slot exists.
        let _alone = page.wallet.lock().unwrap_or_else(|p| p.into_inner());
        match Session::open(&page.dir, fields.get("code").as_bytes()) {
            Ok(session) => {
                let now = Instant::now();
                *page.session.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Unlocked { session: Arc::new(session), opened: now, used: now });
                Redirect::to("/").into_response()
            }
            Err(e) => unlock_page(&page, Some(&e.to_string())),
        }
    })
    .await
}

async fn lock(State(page): State<Arc<OwnerPage>>) -> Response {
    *page.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Redirect::to("/").into_response()
}

async fn spend_form(State(page): State<Arc<OwnerPage>>) -> Response {
    unlocked(page, |page, _| page.show("Send", &spend_fields(page, "", "", false))).await
}

fn spend_fields(page: &OwnerPage, address: &str, amount: &str, phrase: bool) -> String {
    let mut inner = format!(
        "<label for=\"address\">To address</label><input id=\"address\" name=\"address\" type=\"text\" value=\"{}\" autocomplete=\"off\" required>\
         <label for=\"amount\">Amount in BTC (for example 0.05)</label><input id=\"amount\" name=\"amount\" type=\"text\" inputmode=\"decimal\" value=\"{}\" required>",
        esc(address),
        esc(amount)
    );
    if phrase {
        inner += &secret_field("phrase", "Your recovery phrase (the 24 words on your paper)");
    }
    inner += &format!(
        "<input type=\"hidden\" name=\"form\" value=\"{}\"><button type=\"submit\">Send</button>",
        page.new_form()
    );
    String::from(
        "<p>Payments up to what your allowance holds leave at once. Larger ones come out of a vault: your guardians \
         may have to approve them, and the coins wait a fixed number of blocks, watched by the towers, before they leave.</p>",
    ) + &form("/spend", page.gate.csrf(), &inner)
}

async fn spend(State(page): State<Arc<OwnerPage>>, Extension(fields): Extension<Fields>) -> Response {
    unlocked(page, move |page, session| {
        if !page.take_form(fields.get("form")) {
            return page.show(
                "Send",
                &notice(
                    "warn",
                    "That form was sent already (or comes from before a restart): nothing more was sent. \
                     Look at <a href=\"/\">your wallet</a> before sending again.",
                ),
            );
        }
        let (address_text, amount_text) = (fields.get("address").trim(), fields.get("amount").trim());
        let retry = |problem: String| {
            page.show("Send", &(notice("warn", &esc(&problem)) + &spend_fields(page, address_text, amount_text, false)))
        };
        let address = match address_text.parse::<Address<_>>() {
            Ok(a) => match a.require_network(session.network) {
                Ok(a) => a,
                Err(_) => return retry(format!("{address_text} is an address of another network than this wallet's ({}); nothing was sent.", session.network)),
            },
            Err(e) => return retry(format!("{address_text:?} is not a bitcoin address ({e}); nothing was sent.")),
        };
        let amount = match Amount::from_str_in(amount_text, vigil_policy::bitcoin::Denomination::Bitcoin) {
            Ok(a) if a >= address.script_pubkey().minimal_non_dust() => a,
            Ok(a) => return retry(format!("{a} is below what the network relays; nothing was sent.")),
            Err(e) => return retry(format!("{amount_text:?} is not an amount in BTC ({e}); nothing was sent.")),
        };
        let chain = session.chain();
        let mut state = match session.dir.state() {
            Ok(s) => s,
            Err(e) => return retry(e.to_string()),
        };
        if let Err(e) = state.scan(&session.policies, &*chain) {
            return retry(e.to_string());
        }
        // A hardware signer signs in the terminal, where the command says what to check on it.
        if session.dir.file(vigil_client::wallet::SIGNER_FILE).exists() {
            return retry("Your allowance and vaults are signed on your Ledger: send with `vigil spend ADDRESS AMOUNT` \
                          in a terminal, which tells you what to check on the device; nothing was sent."
                .into());
        }
        // From the allowance if it fits: at once, with no phrase and no wait.
        let paid = Allowance::of(session, state.birth_height)
            .and_then(|mut a| {
                a.sync(&*chain)?;
                a.pay(session.keys.allowance(), &*chain, &address, amount)
            });
        match paid {
            Ok(tx) => {
                let txid = tx.compute_txid();
                state.note(format!("allowance payment of {amount} to {address}: {txid}"));
                if let Err(e) = session.dir.save_state(&state) {
                    tracing::warn!(error = %e, "recording an allowance payment in the history");
                }
                return page.show("Sent", &notice("ok", &format!("Sent {} to <code>{}</code> from your allowance (transaction <code>{txid}</code>).", btc(amount.to_sat()), esc(&address.to_string()))));
            }
            Err(AllowanceError::Insufficient { .. }) => {}
            Err(e) => return retry(format!("The allowance could not pay it: {e}")),
        }
        // A vault spend: the phrase signs it (it is never stored).
        let phrase = fields.get("phrase");
        if phrase.is_empty() {
            let body = notice("info", "That is more than your allowance holds: it will come out of a vault. Type your recovery phrase to sign it.")
                + &spend_fields(page, address_text, amount_text, true);
            return page.show("Send from a vault", &body);
        }
        let owner = &session.current().policy().owner;
        let key = match vigil_client::owner::parse_phrase(phrase)
            .and_then(|p| vigil_client::owner::VaultKey::from_phrase(&p, session.network, &owner.keys[0].xpub))
        {
            Ok(k) if owner.threshold == 1 => k,
            Ok(_) => return retry("This wallet needs several owner keys to sign a vault spend: use `vigil spend --sign-elsewhere`.".into()),
            Err(e) => return page.show("Send from a vault", &(notice("warn", &format!("{}; nothing was sent.", esc(&e.to_string()))) + &spend_fields(page, address_text, amount_text, true))),
        };
        let pos = match spending::prepare(session, &mut state, Some(&key), &address, amount) {
            Ok(p) => p,
            Err(e) => return retry(format!("{e}")),
        };
        drop(key);
        // Recorded before it is sent: a lost answer is asked again with the same request.
        if let Err(e) = session.dir.save_state(&state) {
            return retry(e.to_string());
        }
        advance_all(page, session, &mut state, vec![pos])
    })
    .await
}

/// Moves each spend at `positions` one step on, and says where each stands.
fn advance_all(
    page: &OwnerPage,
    session: &Session,
    state: &mut vigil_client::wallet::WalletState,
    positions: Vec<usize>,
) -> Response {
    let chain = session.chain();
    let mut body = String::new();
    for pos in positions {
        let progress = spending::advance(session, state, &*chain, pos);
        if let Err(e) = session.dir.save_state(state) {
            body += &notice(
                "warn",
                &format!("The wallet could not record the spend's progress: {}", esc(&e.to_string())),
            );
        }
        let tip = chain.tip().map(|t| t.height).unwrap_or(0);
        let sp = &state.spends[pos];
        body += &match progress {
            Ok(p) => notice(
                "info",
                &format!(
                    "Spend {} of {} to <code>{}</code>: {}.",
                    sp.id,
                    btc(sp.amount_sat),
                    esc(&sp.destination),
                    esc(&p.describe(tip))
                ),
            ),
            Err(e) => notice("warn", &format!("Spend {}: {}", sp.id, esc(&e.to_string()))),
        };
    }
    body += "<p><a href=\"/\">Back to your wallet</a></p>";
    page.show("Spends", &body)
}

async fn carry_on(State(page): State<Arc<OwnerPage>>) -> Response {
    unlocked(page, |page, session| {
        let mut state = match session.dir.state() {
            Ok(s) => s,
            Err(e) => return page.show("Spends", &notice("warn", &esc(&e.to_string()))),
        };
        let active: Vec<usize> = (0..state.spends.len()).filter(|&i| state.spends[i].active()).collect();
        advance_all(page, session, &mut state, active)
    })
    .await
}

async fn lockdown_form(State(page): State<Arc<OwnerPage>>) -> Response {
    unlocked(page, |page, _| {
        let body = String::from(
            "<p>A lockdown freezes your wallet at once: the co-signer refuses every vault spend and every watchtower \
             cancels any coins leaving a vault. It ends by itself; only your guardians can lift it sooner.</p>",
        ) + &form(
            "/lockdown",
            page.gate.csrf(),
            "<label for=\"blocks\">For how long</label><select id=\"blocks\" name=\"blocks\">\
             <option value=\"36\">6 hours</option><option value=\"144\" selected>1 day</option><option value=\"1008\">1 week</option></select>\
             <p><label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> Yes, lock my wallet down now.</label></p>\
             <button type=\"submit\" class=\"danger\">Lock down</button>",
        );
        page.show("Lock down", &body)
    })
    .await
}

async fn lockdown(State(page): State<Arc<OwnerPage>>, Extension(fields): Extension<Fields>) -> Response {
    unlocked(page, move |page, session| {
        let blocks: u32 = fields.get("blocks").parse().unwrap_or(0);
        let most = vigil_cosigner::service::MAX_LOCKDOWN_BLOCKS.min(vigil_tower::wire::MAX_LOCKDOWN_BLOCKS);
        if fields.get("confirm") != "yes" || blocks == 0 || blocks > most {
            return page.show(
                "Lock down",
                &notice("warn", "Choose a length and tick the confirmation: nothing was done."),
            );
        }
        let report = match session.lock_down(blocks, false) {
            Ok(r) => r,
            Err(e) => return page.show("Lock down", &notice("warn", &esc(&e.to_string()))),
        };
        let mut body = match &report.cosigner {
            Ok(until) => notice(
                "ok",
                &format!(
                    "Locked down until block {until}: no vault can be spent, every unvault is cancelled."
                ),
            ),
            Err(e) => notice("warn", &format!("The co-signer did not take the lockdown: {}", esc(e))),
        };
        body += "<ul>";
        for (name, e) in &report.towers {
            body += &match e {
                None => format!("<li>Watchtower {}: locked down</li>", esc(name)),
                Some(e) => {
                    format!("<li>Watchtower {}: <strong>NOT reached</strong> ({})</li>", esc(name), esc(e))
                }
            };
        }
        body += "</ul>";
        if report.nobody_took_it() {
            body += &notice("alarm", "Nobody took the lockdown: try again.");
        }
        page.show("Lock down", &body)
    })
    .await
}
