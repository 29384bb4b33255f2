//! The web pages end to end, in headless Chromium over WebDriver, against a real `vigil node`,
//! co-signer and three towers (processes), with a household made by the real `vigil init`:
//! a guardian approves a large spend that then completes after DELAY, denies another, and
//! sees an alarm within a minute of an unapproved unvault; the owner's page is the same page
//! under the real and the duress code; other sites and requests without the token are refused.
//!
//! `VIGIL_UI_SCREENSHOTS=DIR` writes the pages' screenshots there (docs/ holds them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_drill::household::{Household, DELAY, DURESS, REAL};
use vigil_drill::world::{fresh_address, World};
use vigil_testenv::browser::{self, Browser};
use vigil_testenv::process::vigil_exe;

/// A page's server: `vigil ui` or `vigil guardian ui`.
struct Served {
    child: Child,
    /// The address it printed (with this start's token).
    login: String,
    /// The pages' root: `http://127.0.0.1:PORT/SECRET`.
    origin: String,
}

impl Served {
    fn start(mut cmd: Command) -> Served {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).env("RUST_LOG", "warn").spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let login =
            lines.find_map(|l| l.ok().filter(|l| l.starts_with("http://"))).expect("the page's address");
        let origin = login.split("/login").next().unwrap().to_owned();
        Served { child, login, origin }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn guardian_page(h: &Household, g: usize) -> Served {
    let key = h.dir.join(format!("guardian-{}.key", g + 1));
    let mut cmd = Command::new(vigil_exe());
    cmd.args(["guardian", "ui", "--key"]).arg(&key).arg("--passphrase-file").arg(key.with_extension("pass"));
    cmd.arg("--policy").arg(h.policy());
    Served::start(cmd)
}

const PASSPHRASE: &str = "a guardian's passphrase";

fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("VIGIL_UI_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join(name), browser.screenshot()).unwrap();
    }
}

/// A world with a household: 0.015 BTC allowance, a standard vault of 0.04 and guarded ones
/// of 0.3 (`guarded` of them).
fn household(dir: &std::path::Path, guarded: usize) -> (World, Household) {
    let mut world = World::start(&vigil_exe(), dir, 3).unwrap();
    let h = Household::set_up(&world, "family").unwrap();
    let mut vaults = vec![4_000_000];
    vaults.extend(std::iter::repeat_n(30_000_000, guarded));
    h.fund(&mut world, 1_500_000, &vaults).unwrap();
    (world, h)
}

/// Waits until `done` holds, reloading the page, for at most `limit`.
fn wait_on_page(browser: &Browser, url: &str, limit: Duration, done: impl Fn(&Browser) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        browser.goto(url);
        if done(browser) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not shown within {limit:?}:\n{}", browser.text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A guardian votes on request `id` through the page: review, the choice, the passphrase and
/// the confirmation tick.
fn vote(browser: &Browser, page: &Served, id: u64, approve: bool, passphrase: &str) -> String {
    browser.goto(&format!("{}/", page.origin));
    browser.follow(&format!("#request-{id} a.button"));
    browser.follow(if approve { "a[href$='/approve']" } else { "a[href$='/deny']" });
    browser.type_into("#passphrase", passphrase);
    browser.click("input[name=confirm]");
    browser.follow("button[type=submit]");
    browser.text()
}

/// Signs the form on the page: the guardian's passphrase, the confirmation tick, submit.
fn sign_on_page(browser: &Browser) {
    browser.type_into("#passphrase", PASSPHRASE);
    browser.click("input[name=confirm]");
    browser.follow("button[type=submit]");
}

#[test]
fn a_guardian_approves_denies_and_sees_an_alarm_in_the_browser() {
    if !browser::available() {
        eprintln!("SKIPPED: no chromium");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (world, h) = household(dir.path(), 2);
    let (first, second) = (guardian_page(&h, 0), guardian_page(&h, 1));
    let browser = Browser::start(1000, 1400);
    browser.goto(&first.login);
    browser.goto(&second.login);

    // The owner asks for 0.2 BTC: above the velocity limit, from a guarded vault.
    let shop = fresh_address();
    let asked = h.owner_json(&["spend", &shop.to_string(), "0.2"], &[REAL, &h.phrase]).unwrap();
    let id = asked[0]["id"].as_u64().unwrap();
    browser.goto(&format!("{}/", first.origin));
    let card = browser.text();
    assert!(card.contains(&format!("Request {id}: send 0.2 BTC")), "{card}");
    assert!(card.contains(&shop.to_string()) && card.contains("0 of 2 needed"), "{card}");
    // The change goes back to an address of the owner's (recognised from the policy, not
    // taken from the co-signer's word), and the fee is shown.
    assert!(
        card.contains("to one of the owner's receive addresses") && card.contains(", fee 0.0000"),
        "{card}"
    );
    assert!(
        card.contains("Policy version") && card.contains("Expires") && card.contains("the owner's wallet"),
        "{card}"
    );
    screenshot(&browser, "ui-guardian.png");

    // A wrong passphrase signs nothing.
    let wrong = vote(&browser, &first, id, true, "not the passphrase");
    assert!(
        wrong.contains("did not open your guardian key") && wrong.contains("Nothing was signed"),
        "{wrong}"
    );
    let pending = h.guardian_json(0, &["show", &id.to_string()], true).unwrap();
    assert_eq!(pending["approvals"], 0, "{pending}");

    // A request that changed after the confirmation page showed it is not signed (the page
    // carries the digest of what it showed; here the test alters it in the browser).
    browser.goto(&format!("{}/requests/{id}/approve", first.origin));
    browser.run("document.querySelector('input[name=shown]').value = '00'");
    sign_on_page(&browser);
    assert!(browser.text().contains("The request changed after it was shown to you"), "{}", browser.text());
    assert_eq!(h.guardian_json(0, &["show", &id.to_string()], true).unwrap()["approvals"], 0);

    // Two guardians approve; the spend completes once the unvault waited DELAY.
    let done = vote(&browser, &first, id, true, PASSPHRASE);
    assert!(done.contains("Your approval is in") && done.contains("1 of 2 approvals"), "{done}");
    let done = vote(&browser, &second, id, true, PASSPHRASE);
    assert!(done.contains("now approved"), "{done}");
    let from = world.height().unwrap();
    let unlocking = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    assert_eq!(unlocking[0]["progress"]["stage"], "unlocking", "{unlocking}");
    let unvault_height = world.mine(1).unwrap();
    let waiting = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    let spendable = waiting[0]["progress"]["spendable_from_height"].as_u64().unwrap() as u32;
    // Broadcast from this tip on, the spend is mined at the unvault's height + DELAY.
    assert_eq!(spendable, unvault_height + DELAY - 1, "{waiting}");
    world.mine(spendable - unvault_height - 1).unwrap();
    let early = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    assert_eq!(early[0]["progress"]["stage"], "unlocking", "one block early: {early}");
    world.mine(1).unwrap();
    let sent = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    assert_eq!(sent[0]["progress"]["stage"], "sent", "{sent}");
    assert_eq!(world.mine(1).unwrap(), unvault_height + DELAY);
    let done = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    assert_eq!(done[0]["progress"]["stage"], "done", "{done}");
    assert_eq!(world.received(&shop.script_pubkey(), from).unwrap(), 20_000_000);

    // Another request, denied from the page: final for it.
    let asked = h.owner_json(&["spend", &shop.to_string(), "0.2"], &[REAL, &h.phrase]).unwrap();
    let id = asked[0]["id"].as_u64().unwrap();
    let denied = vote(&browser, &first, id, false, PASSPHRASE);
    assert!(denied.contains("Your denial is in") && denied.contains("denied"), "{denied}");
    let after = h.owner_json(&["spend", "--resume"], &[REAL]).unwrap();
    assert_eq!(after[0]["progress"]["stage"], "denied", "{after}");

    // Someone broadcasts the standard vault's pre-signed unvault: the alarm is on the page
    // within a minute.
    let vault = h.vaults().unwrap().into_iter().find(|v| v["amount_sat"] == 4_000_000).unwrap();
    world.rpc.call("sendrawtransaction", serde_json::json!([vault["unvault"]])).unwrap();
    let took = wait_on_page(&browser, &format!("{}/", first.origin), Duration::from_secs(60), |b| {
        b.has("[data-kind='unvault-cancelled']")
    });
    eprintln!("the alarm showed on the guardian's page {took:?} after the unvault was broadcast");
    let text = browser.text();
    assert!(text.contains("taken out of a vault without approval"), "{text}");
    assert!(text.contains("tower-1") && text.contains("tower-2") && text.contains("tower-3"), "{text}");
    screenshot(&browser, "ui-guardian-alarm.png");

    // The owner's wallet is restored on a new device: the page says so, and the guardian
    // confirms it from there, passphrase and tick.
    let id = h.client_id().unwrap();
    let restored = dir.path().join("new-phone");
    let mut init = Command::new(vigil_exe());
    init.args(["init", "--restore", "--wallet"]).arg(&restored);
    init.args(["--cosigner", &world.cosigner.url, "--chain-url", &world.rpc_url, "--chain-cookie"]);
    init.arg(&world.rpc_cookie).env("RUST_LOG", "warn").stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = init.stderr(Stdio::piped()).spawn().unwrap();
    let typed = [&id[..16], h.phrase.as_str(), "8642", "8642", "9753", "9753"].join("\n") + "\n";
    child.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The owner's new device names the restore; the guardian's page names the same one.
    assert!(String::from_utf8_lossy(&out.stdout).contains("this is restore number 1"));
    browser.goto(&format!("{}/", first.origin));
    assert!(browser.text().contains("restored on a new device"), "{}", browser.text());
    // The guardian types the number the owner reads out; the page does not show it.
    browser.follow("a[href$='/restore']");
    let asked = browser.text();
    assert!(
        asked.contains("Ask them which restore number") && !asked.contains("restore number 1"),
        "{asked}"
    );
    browser.type_into("input[name=restore]", "2");
    sign_on_page(&browser);
    let other = browser.text();
    assert!(other.contains("showed restore number 2") && other.contains("Nothing was confirmed"), "{other}");
    browser.goto(&format!("{}/restore", first.origin));
    browser.type_into("input[name=restore]", "1");
    sign_on_page(&browser);
    assert!(browser.text().contains("Your confirmation is in: 1 of 2"), "{}", browser.text());

    // Guardian 1 proposes version 2 (a higher velocity limit: a loosening, which waits);
    // guardian 2 sees what changes on the page and signs it there.
    let current = std::fs::read_to_string(h.policy()).unwrap();
    let proposed = current
        .replace("version = 1", "version = 2")
        .replace("velocity_limit_sat = 10000000", "velocity_limit_sat = 20000000");
    assert_ne!(proposed, current);
    let file = dir.path().join("policy-2.toml");
    std::fs::write(&file, &proposed).unwrap();
    h.guardian_json(0, &["policy", file.to_str().unwrap(), "--yes"], true).unwrap();
    browser.goto(&format!("{}/", second.origin));
    let text = browser.text();
    assert!(text.contains("A new policy version was proposed") && text.contains("Version 1 → 2"), "{text}");
    assert!(
        text.contains("- velocity_limit_sat = 10000000") && text.contains("+ velocity_limit_sat = 20000000"),
        "{text}"
    );
    browser.follow("a[href*='/policy/']");
    let review = browser.url();
    browser.run("document.querySelector('input[name=shown]').value = '00'");
    sign_on_page(&browser);
    assert!(browser.text().contains("The proposal changed after it was shown"), "{}", browser.text());
    browser.goto(&review);
    assert!(browser.text().contains("The whole proposed policy"), "{}", browser.text());
    sign_on_page(&browser);
    let signed = browser.text();
    assert!(signed.contains("The quorum signed version 2: it applies at block"), "{signed}");
    // The page handed the signed change to every tower itself too.
    assert_eq!(signed.matches("told directly: took it").count(), 3, "{signed}");
    let at = signed.split("applies at block ").nth(1).unwrap().split('.').next().unwrap().trim().to_owned();
    browser.goto(&format!("{}/", second.origin));
    let text = browser.text();
    assert!(
        text.contains(&format!("Version 2 was signed by the guardians' quorum and applies at block {at}")),
        "{text}"
    );
    screenshot(&browser, "ui-guardian-policy.png");

    // Guardian 1 locks the wallet down from the page: the co-signer and every tower.
    browser.goto(&format!("{}/lockdown", first.origin));
    browser.select("#blocks", "36");
    browser.click("input[name=confirm]");
    browser.follow("button[type=submit]");
    let said = browser.text();
    assert!(said.contains("The wallet is locked down until block"), "{said}");
    assert_eq!(said.matches(": locked down").count(), 3, "{said}");
    // Too short to lift early: it ends before the governance wait would.
    browser.goto(&format!("{}/lift", first.origin));
    assert!(browser.text().contains("before a lift could"), "{}", browser.text());

    // Locked down for four weeks, the guardians lift it early: the first proposes a height
    // a day past the governance wait, the second, told on their page, opens the form.
    browser.goto(&format!("{}/lockdown", first.origin));
    browser.select("#blocks", "4032");
    browser.click("input[name=confirm]");
    browser.follow("button[type=submit]");
    browser.goto(&format!("{}/lift", first.origin));
    let shown = browser.text();
    assert!(shown.contains("You are the first to sign") && !shown.contains("DURESS"), "{shown}");
    sign_on_page(&browser);
    assert!(browser.text().contains("Your signature is in: 1 of 2 guardians"), "{}", browser.text());
    browser.goto(&format!("{}/", second.origin));
    assert!(browser.text().contains("Lift it early with the other guardians"), "{}", browser.text());
    browser.follow("a[href$='/lift']");
    assert!(browser.text().contains("1 of 2 guardians signed it so far"), "{}", browser.text());
    // Meanwhile the first guardian locks down again, for longer: the lift starts over, and the
    // second's form, for the lockdown as it was, signs nothing.
    world.mine(1).unwrap();
    h.guardian_json(0, &["lockdown", "--blocks", "4032"], true).unwrap();
    sign_on_page(&browser);
    assert!(browser.text().contains("changed since you looked: nothing was signed"), "{}", browser.text());
    // The second proposes anew on the page; the first signs it on the command line: the quorum.
    browser.goto(&format!("{}/lift", second.origin));
    assert!(browser.text().contains("You are the first to sign"), "{}", browser.text());
    sign_on_page(&browser);
    assert!(browser.text().contains("Your signature is in: 1 of 2 guardians"), "{}", browser.text());
    let lifted = h.guardian_json(0, &["lift", "--yes"], true).unwrap();
    let at = lifted["lifted_at"].as_u64().unwrap();
    browser.goto(&format!("{}/", second.origin));
    let text = browser.text();
    assert!(
        text.contains(&format!("The guardians' quorum signed: the lockdown ends at block {at}")),
        "{text}"
    );

    // Guardian 1 starts a panic; guardian 2 sees it and joins: the quorum sweeps the vault
    // still protected to the deep vault. Guardian 2's Panic form, opened before (in another
    // window), signs nothing when submitted after: it offers guardian 1's panic.
    browser.goto(&format!("{}/panic", second.origin));
    assert!(browser.text().contains("Start a panic"), "{}", browser.text());
    let stale_form = browser.tab();
    browser.show_tab(&browser.new_tab());
    browser.goto(&format!("{}/panic", first.origin));
    sign_on_page(&browser);
    assert!(browser.text().contains("Your signature is in: 1 of 2 guardians"), "{}", browser.text());
    browser.show_tab(&stale_form);
    sign_on_page(&browser);
    let stale = browser.text();
    assert!(
        stale.contains("Another guardian proposed a panic meanwhile")
            && stale.contains("Nothing was signed yet")
            && stale.contains("You are joining the panic guardian 1 started"),
        "{stale}"
    );
    // Guardian 2 going to the Panic page is offered that panic, not a second one: two panics
    // would split the signatures, and neither sweep.
    browser.goto(&format!("{}/panic", second.origin));
    let offered = browser.text();
    assert!(
        offered.contains("You are joining the panic guardian 1 started")
            && offered.contains("Sign this panic"),
        "{offered}"
    );
    // Not trusting who started it, a guardian may still start another, knowingly.
    browser.follow("button[value=fresh]");
    let fresh = browser.text();
    assert!(fresh.contains("Start a panic") && !fresh.contains("You are joining"), "{fresh}");
    browser.goto(&format!("{}/", second.origin));
    assert!(browser.text().contains("A guardian asked for a panic"), "{}", browser.text());
    browser.follow("button[value=review]");
    let joining = browser.text();
    assert!(
        joining.contains("You are joining the panic guardian 1 started")
            && joining.contains("their signature checks"),
        "{joining}"
    );
    browser.type_into("#passphrase", PASSPHRASE);
    browser.click("input[name=confirm]");
    browser.follow("button[value=sign]");
    let swept = browser.text();
    assert!(swept.contains("The quorum signed: every vault is being swept"), "{swept}");
    assert_eq!(swept.matches("told directly: took it").count(), 3, "{swept}");
    let start = Instant::now();
    while !h.status().unwrap()["vaults"].as_array().unwrap().iter().any(|v| v["state"] == "in the deep vault")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no vault was swept: {}", h.status().unwrap());
        world.mine(1).unwrap();
    }
}

/// The page's DOM and pixels, with the per-start token (the same for both) left in.
fn capture(browser: &Browser, origin: &str) -> (String, Vec<u8>) {
    browser.goto(&format!("{origin}/"));
    (browser.source(), browser.screenshot())
}

fn unlock(browser: &Browser, origin: &str, code: &str) {
    browser.goto(&format!("{origin}/"));
    browser.type_into("#code", code);
    browser.follow("button[type=submit]");
}

fn lock(browser: &Browser, origin: &str) {
    browser.goto(&format!("{origin}/"));
    browser.follow("form[action$='/lock'] button");
    assert!(browser.has("#code"), "locked: {}", browser.text());
}

#[test]
fn the_owners_page_is_the_same_under_both_codes_and_refuses_other_sites() {
    if !browser::available() {
        eprintln!("SKIPPED: no chromium");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (world, h) = household(dir.path(), 1);
    let mut cmd = Command::new(vigil_exe());
    cmd.arg("ui").arg("--wallet").arg(h.wallet());
    let page = Served::start(cmd);
    let origin = page.origin.clone();
    let browser = Browser::start(1000, 1400);
    browser.goto(&page.login);
    assert!(browser.has("#code"), "{}", browser.text());

    // A wrong code opens nothing and says so.
    unlock(&browser, &origin, "0000");
    assert!(browser.has("#code") && !browser.text().contains("Balances"), "{}", browser.text());

    unlock(&browser, &origin, REAL);
    let text = browser.text();
    for shown in [
        "Allowance (spendable at once)",
        "0.015 BTC",
        "In vaults",
        "0.34 BTC",
        "Standard vault",
        "Guarded vault",
        "Protected since block",
        "Co-signer: reachable",
        "Watchtower tower-3: watching",
    ] {
        assert!(text.contains(shown), "{shown:?} in\n{text}");
    }
    screenshot(&browser, "ui-owner.png");
    // A small payment leaves the allowance at once.
    let shop = fresh_address();
    let from = world.height().unwrap();
    browser.goto(&format!("{origin}/spend"));
    let form = browser.run("return document.querySelector('input[name=form]').value");
    browser.type_into("#address", &shop.to_string());
    browser.type_into("#amount", "0.001");
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("from your allowance"), "{}", browser.text());
    // The same form sent again (a reload, a double click) pays nothing more.
    browser.goto(&format!("{origin}/spend"));
    browser.run(&format!("document.querySelector('input[name=form]').value = {form}"));
    browser.type_into("#address", &shop.to_string());
    browser.type_into("#amount", "0.001");
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("That form was sent already"), "{}", browser.text());
    assert_eq!(world.received(&shop.script_pubkey(), from).unwrap(), 100_000);
    // An address of another network is refused, naming the problem.
    browser.goto(&format!("{origin}/spend"));
    browser.type_into("#address", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq");
    browser.type_into("#amount", "0.001");
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("another network"), "{}", browser.text());

    // A large one comes out of the guarded vault: the phrase signs it, the guardians approve,
    // and "Check and carry on" takes it through the wait to the payment.
    browser.goto(&format!("{origin}/spend"));
    browser.type_into("#address", &shop.to_string());
    browser.type_into("#amount", "0.2");
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("more than your allowance holds"), "{}", browser.text());
    browser.type_into("#phrase", "not a phrase");
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("nothing was sent"), "{}", browser.text());
    assert!(h.status().unwrap()["spends"].as_array().unwrap().is_empty(), "a bad phrase made a spend");
    browser.type_into("#phrase", &h.phrase);
    browser.follow("button[type=submit]");
    assert!(browser.text().contains("waiting for your guardians: 0 of 2 approved"), "{}", browser.text());
    let id = h.status().unwrap()["spends"][0]["id"].as_u64().unwrap();
    for g in 0..2 {
        h.guardian_json(g, &["approve", &id.to_string(), "--yes"], true).unwrap();
    }
    let carry_on = || {
        browser.goto(&format!("{origin}/"));
        browser.follow("form[action$='/spends/continue'] button");
        browser.text()
    };
    assert!(carry_on().contains("approved; the unlocking transaction"), "{}", browser.text());
    let unvault_height = world.mine(1).unwrap();
    world.mine(DELAY - 2).unwrap();
    assert!(carry_on().contains("spendable from block"), "one block early: {}", browser.text());
    world.mine(1).unwrap();
    assert!(carry_on().contains("sent: transaction"), "{}", browser.text());
    assert_eq!(world.mine(1).unwrap(), unvault_height + DELAY);
    assert_eq!(world.received(&shop.script_pubkey(), from).unwrap(), 20_100_000);
    browser.goto(&format!("{origin}/"));
    assert!(
        browser.text().contains("Guarded vault: 0.3 BTC (30,000,000 sats)\nSpent."),
        "{}",
        browser.text()
    );

    // The duress code opens the same page: after the spends (a duress unlock quietly locks
    // the vaults down, so it comes last), the real and the duress unlock are compared.
    let real = capture(&browser, &origin);
    lock(&browser, &origin);
    unlock(&browser, &origin, DURESS);
    let duress = capture(&browser, &origin);
    lock(&browser, &origin);
    unlock(&browser, &origin, REAL);
    let again = capture(&browser, &origin);
    assert!(real.0.contains("Balances") && real.0.contains("Guarded vault"), "{}", real.0);
    assert_eq!(real.0, duress.0, "the DOM differs between the real and the duress code");
    assert!(real.1 == duress.1, "the screenshots differ between the real and the duress code");
    assert_eq!(real.0, again.0);
    eprintln!(
        "owner's page: real and duress DOM identical ({} bytes), screenshots identical ({} bytes)",
        real.0.len(),
        real.1.len()
    );

    // Readable on a phone and at 200 % zoom (half the CSS width): nothing wider than the
    // window, every field labelled.
    for width in [390, 500] {
        browser.resize(width, 900);
        browser.goto(&format!("{origin}/spend"));
        let fits = browser.run("return document.documentElement.scrollWidth <= window.innerWidth");
        assert_eq!(fits, Value::Bool(true), "wider than {width} px");
        let unlabelled = browser.run(
            "return [...document.querySelectorAll('input:not([type=hidden]),select')].filter(e => e.labels.length == 0).length",
        );
        assert_eq!(unlabelled, Value::from(0));
        browser.goto(&format!("{origin}/"));
        assert_eq!(
            browser.run("return document.documentElement.scrollWidth <= window.innerWidth"),
            Value::Bool(true)
        );
    }
    screenshot(&browser, "ui-owner-phone.png");
    browser.resize(1000, 1400);

    refusals(&page, &browser, &h);

    // The owner locks down from the page.
    browser.goto(&format!("{origin}/lockdown"));
    browser.click("input[name=confirm]");
    browser.follow("button[type=submit]");
    let said = browser.text();
    assert!(
        said.contains("Locked down until block") && said.contains("Watchtower tower-1: locked down"),
        "{said}"
    );
    let status = h.status().unwrap();
    assert!(status["locked_down_until"].as_u64().is_some(), "{status}");
}

/// What must not drive the page: no token, a wrong token, another host name, a post without
/// the CSRF token or from another origin, and a real cross-site form in the browser.
fn refusals(page: &Served, browser: &Browser, h: &Household) {
    let origin = &page.origin;
    let (site, _secret) = origin.rsplit_once('/').unwrap();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let status = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status(agent.get(&format!("{origin}/")).call()), 403, "no token");
    assert_eq!(status(agent.get(&format!("{origin}/login?token=00")).call()), 403, "a wrong token");
    assert_eq!(status(agent.get(&page.login).call()), 403, "the address, opened a second time");
    // The browser's cookie: HttpOnly, SameSite=Strict, scoped to the secret path.
    browser.goto(&format!("{origin}/"));
    let cookies = browser.cookies();
    let ours = cookies.iter().find(|c| c["name"].as_str().unwrap().starts_with("vigil_ui_")).unwrap();
    assert_eq!(
        (ours["httpOnly"].as_bool(), ours["sameSite"].as_str()),
        (Some(true), Some("Strict")),
        "{ours}"
    );
    assert!(origin.ends_with(ours["path"].as_str().unwrap().trim_end_matches('/')), "{ours}");
    let cookie = format!("{}={}", ours["name"].as_str().unwrap(), ours["value"].as_str().unwrap());
    // The cookie alone (as a page on another port would be sent it) opens nothing.
    assert_eq!(status(agent.get(&format!("{site}/")).set("cookie", &cookie).call()), 404, "no secret path");
    let home = agent.get(&format!("{origin}/")).set("cookie", &cookie).call().unwrap();
    let csp = home.header("content-security-policy").unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("form-action 'self'"), "{csp}");
    let home = home.into_string().unwrap();
    let csrf = home.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let post = |extra: &[(&str, &str)], body: &str| {
        let mut r = agent.post(&format!("{origin}/lockdown")).set("cookie", &cookie);
        r = r.set("content-type", "application/x-www-form-urlencoded");
        for (k, v) in extra {
            r = r.set(k, v);
        }
        status(r.send_string(body))
    };
    let fields = format!("blocks=144&confirm=yes&csrf={csrf}");
    assert_eq!(post(&[], "blocks=144&confirm=yes"), 403, "no CSRF token");
    assert_eq!(post(&[], "blocks=144&confirm=yes&csrf=00"), 403, "a wrong CSRF token");
    assert_eq!(post(&[("origin", "http://evil.example")], &fields), 403, "another origin");
    assert_eq!(post(&[("sec-fetch-site", "cross-site")], &fields), 403, "cross-site");
    let port = site.rsplit(':').next().unwrap();
    let rebound = agent
        .get(&format!("{origin}/"))
        .set("cookie", &cookie)
        .set("host", &format!("evil.example:{port}"))
        .call();
    assert_eq!(status(rebound), 421, "a rebound host name");

    // Another site's page, in the same browser (logged in to the wallet page), posts a
    // lockdown form to it, CSRF token included: the browser does not send the cookie across
    // sites and the page refuses the request.
    let attacker = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = attacker.local_addr().unwrap().port();
    let html = format!(
        "<html><body><form id=f method=post action=\"{origin}/lockdown\"><input name=blocks value=144>\
         <input name=confirm value=yes><input name=csrf value=\"{csrf}\"></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    std::thread::spawn(move || {
        for stream in attacker.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}", html.len());
        }
    });
    // From another host name (cross-site: the cookie stays home) and from another port of
    // this one (same site, so the cookie goes along: the origin check refuses it).
    for attacker_url in [format!("http://localhost:{port}/"), format!("http://127.0.0.1:{port}/")] {
        browser.goto(&attacker_url);
        let start = Instant::now();
        while !browser.url().starts_with(origin.as_str()) {
            assert!(start.elapsed() < Duration::from_secs(10), "the attacker's form did not submit");
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = browser.text();
        assert!(
            answer.contains("Refused") && !answer.contains("Locked down until"),
            "{attacker_url}: {answer}"
        );
        let status = h.status().unwrap();
        assert!(
            status["locked_down_until"].is_null(),
            "a form of {attacker_url} locked the wallet down: {status}"
        );
    }
    eprintln!("refused: no token, a wrong token, a second login, the cookie without the secret path, a rebound host, no or a wrong CSRF token, another origin, cross-site forms");
}

/// After the guardians' quorum changed the policy, a guardian whose copy is still the first
/// version follows the change (each step checked from that copy) and approves a request the
/// co-signer judges under the new version, on the command line and on the page.
#[test]
fn guardians_follow_a_policy_change_the_quorum_signed() {
    if !browser::available() {
        eprintln!("SKIPPED: no chromium");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut world, h) = household(dir.path(), 1);
    let pinned = std::fs::read_to_string(h.policy()).unwrap();
    // A lower velocity limit only tightens: it applies as soon as the quorum signed.
    let tightened = pinned
        .replace("version = 1", "version = 2")
        .replace("velocity_limit_sat = 10000000", "velocity_limit_sat = 5000000");
    assert!(tightened.contains("velocity_limit_sat = 5000000"), "{tightened}");
    let file = dir.path().join("policy-2.toml");
    std::fs::write(&file, &tightened).unwrap();
    for g in 0..2 {
        h.guardian_json(g, &["policy", file.to_str().unwrap(), "--yes"], true).unwrap();
    }
    assert_eq!(std::fs::read_to_string(h.policy()).unwrap(), pinned, "the guardians' copy is unchanged");
    let asked = h.owner_json(&["spend", &fresh_address().to_string(), "0.2"], &[REAL, &h.phrase]).unwrap();
    let id = asked[0]["id"].as_u64().unwrap();
    let shown = h.guardian_json(0, &["show", &id.to_string()], true).unwrap();
    assert_eq!(shown["approval"]["policy_version"], 2, "{shown}");
    let approved = h.guardian_json(0, &["approve", &id.to_string(), "--yes"], true).unwrap();
    assert_eq!(approved["approvals"], 1, "{approved}");
    let page = guardian_page(&h, 1);
    let browser = Browser::start(1000, 1400);
    browser.goto(&page.login);
    assert!(browser.text().contains("You follow version 2 of the policy"), "{}", browser.text());
    let done = vote(&browser, &page, id, true, PASSPHRASE);
    assert!(done.contains("now approved"), "{done}");

    // Guardian 1 proposes version 3; then the co-signer serves version 2 with a signature the
    // guardians did not make (its store rewritten): the page offers no version for signing,
    // and refuses to sign one asked for directly.
    let v3 = tightened.replace("version = 2", "version = 3").replace("= 5000000", "= 4000000");
    let file = dir.path().join("policy-3.toml");
    std::fs::write(&file, &v3).unwrap();
    h.guardian_json(0, &["policy", file.to_str().unwrap(), "--yes"], true).unwrap();
    world.cosigner.kill();
    let db = rusqlite::Connection::open(world.cosigner.config.with_file_name("data").join("cosigner.sqlite"))
        .unwrap();
    let body: String =
        db.query_row("SELECT body FROM records WHERE kind = 'client'", [], |r| r.get(0)).unwrap();
    let mut client: serde_json::Value = serde_json::from_str(&body).unwrap();
    let signature = &mut client["changes"][0]["signatures"][0]["signature"];
    let forged = signature.as_str().unwrap().replacen('0', "1", 1).replacen('a', "b", 1);
    assert_ne!(signature.as_str(), Some(forged.as_str()));
    *signature = forged.into();
    db.execute("UPDATE records SET body = ?1 WHERE kind = 'client'", [client.to_string()]).unwrap();
    world.cosigner.start().unwrap();
    browser.goto(&format!("{}/", page.origin));
    let home = browser.text();
    assert!(
        home.contains("Not offered for signing while the policy changes the co-signer serves do not check")
            && !home.contains("Review and sign this version"),
        "{home}"
    );
    browser.goto(&format!("{}/policy/1", page.origin));
    let refused = browser.text();
    assert!(
        refused.contains("Nothing was signed")
            && refused.contains("No policy version is signed until they do"),
        "{refused}"
    );
}
