//! `vigil drill` end to end, as the README's first command runs it: every scenario holds,
//! the JSON carries the numbers it promises, and the HTML report renders in a real browser.

use std::process::Command;

use serde_json::Value;
use vigil_testenv::process::vigil_exe;

/// Renders `page` in headless Chromium into `png`; false when no Chromium is installed
/// (required under `VIGIL_REQUIRE_CHROMIUM`, as the test script sets it).
fn screenshot(page: &std::path::Path, png: &std::path::Path) -> bool {
    let Some(browser) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new("sh").args(["-c", &format!("command -v {b}")]).output().is_ok_and(|o| o.status.success())
    }) else {
        assert!(std::env::var_os("VIGIL_REQUIRE_CHROMIUM").is_none(), "chromium is not installed");
        eprintln!("SKIPPED: the screenshot (no chromium)");
        return false;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--hide-scrollbars", "--window-size=1060,1400"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    true
}

#[test]
fn the_coercion_drill_holds_in_every_scenario_and_reports_it() {
    let out_dir = tempfile::tempdir().unwrap();
    let run = Command::new(vigil_exe())
        .args(["drill", "--json", "--out"])
        .arg(out_dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the drill failed:\n{stderr}");
    eprintln!("{stderr}");
    let reports: Value = serde_json::from_slice(&run.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    let ids: Vec<&str> = reports.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(ids, ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10"]);
    for r in reports {
        let field = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f} in {r}"));
        assert!(field("at_risk_sats") > 0, "{r}");
        // DESIGN G1: the hot wallet and what the velocity budget releases; after the duress
        // code (S4, S8), the hot wallet alone.
        assert!(
            field("extracted_sats") <= field("allowance_sats"),
            "the attacker got more than the allowance: {r}"
        );
        let duress = ["S4", "S8"].contains(&r["scenario"].as_str().unwrap());
        let velocity = if duress { 0 } else { 10_000_000 };
        assert_eq!(field("allowance_sats"), field("hot_wallet_sats") + velocity, "{r}");
        assert!(r["outcome"].as_str().is_some_and(|o| !o.is_empty()), "{r}");
        assert_eq!(r["held"], true, "{r}");
        match r["scenario"].as_str().unwrap() {
            // An honest small spend alarms nobody.
            "S1" => assert!(r["alarm_latency_ms"].is_null(), "{r}"),
            _ => assert!(field("alarm_latency_ms") <= 60_000, "{r}"),
        }
    }
    let s5 = &reports[4];
    assert!(
        s5["extracted_sats"].as_u64().unwrap() > s5["hot_wallet_sats"].as_u64().unwrap(),
        "a co-signer in the captor's hands releases standard vaults within the velocity budget: {s5}"
    );
    let s4 = &reports[3];
    assert!(s4["extracted_sats"].as_u64().unwrap() > 0, "under duress the allowance really spends: {s4}");

    let page = out_dir.path().join("drill-report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script") && !html.contains("http"), "self-contained");
    let png = std::env::var_os("VIGIL_DRILL_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| out_dir.path().join("drill-report.png"));
    if screenshot(&page, &png) {
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "a rendered page");
    }
}
