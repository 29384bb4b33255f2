//! What the drill tells: a summary table and a timeline per scenario as text, the numbers as
//! JSON, and a self-contained HTML report (inline SVG, no script, no outside resource).

use std::fmt::Write;

use serde_json::{json, Value};

use crate::scenarios::btc;
use crate::{ScenarioReport, ALARM_LIMIT};

/// The summary table.
pub fn table(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<4} {:>14} {:>14} {:>14} {:>14} {:>10} {:>8}  {:<6} outcome",
        "", "at risk", "attacker got", "allowance", "hot wallet", "alarm", "wall", "held"
    );
    for r in reports {
        let alarm = r.alarm_latency_ms.map_or("-".to_owned(), |ms| format!("{ms} ms"));
        let _ = writeln!(
            out,
            "{:<4} {:>14} {:>14} {:>14} {:>14} {:>10} {:>7.1}s  {:<6} {}",
            r.scenario,
            sats(r.at_risk_sats),
            sats(r.extracted_sats),
            sats(r.allowance_sats),
            sats(r.hot_wallet_sats),
            alarm,
            r.wall_ms as f64 / 1000.0,
            if r.held { "yes" } else { "NO" },
            r.outcome
        );
        for f in &r.failures {
            let _ = writeln!(out, "     ! {f}");
        }
    }
    out
}

fn sats(s: u64) -> String {
    format!("{s} sat")
}

/// Each scenario's timeline.
pub fn timelines(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(out, "{} {} (blocks {}..{})", r.scenario, r.title, r.blocks.0, r.blocks.1);
        for e in &r.timeline {
            let _ = writeln!(
                out,
                "  {:>7.1} s  block {:>5}  {:<10} {}",
                e.ms as f64 / 1000.0,
                e.height,
                e.actor,
                e.what
            );
        }
    }
    out
}

/// One object per scenario: the fields the drill promises, and what did not hold.
pub fn json(reports: &[ScenarioReport]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "title": r.title,
                    "at_risk_sats": r.at_risk_sats,
                    "extracted_sats": r.extracted_sats,
                    "allowance_sats": r.allowance_sats,
                    "hot_wallet_sats": r.hot_wallet_sats,
                    "alarm_latency_ms": r.alarm_latency_ms,
                    "outcome": r.outcome,
                    "held": r.held,
                    "failures": r.failures,
                    "wall_ms": r.wall_ms,
                    "blocks": [r.blocks.0, r.blocks.1],
                    "timeline": r.timeline,
                })
            })
            .collect(),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The rows of a timeline, top to bottom.
const ACTORS: [&str; 6] = ["owner", "attacker", "guardians", "co-signer", "tower", "chain"];

fn row(actor: &str) -> usize {
    ACTORS.iter().position(|a| actor.starts_with(a)).unwrap_or(ACTORS.len() - 1)
}

fn colour(kind: &str) -> &'static str {
    match kind {
        "tx" => "#1f6feb",
        "alarm" => "#d1242f",
        "block" => "#8c959f",
        _ => "#1a7f37",
    }
}

/// A scenario's timeline as SVG: blocks across, who acted down; a dot per event, its text
/// on hover and in the table below.
fn svg(r: &ScenarioReport) -> String {
    let (left, width, top, gap) = (90.0, 820.0, 20.0, 28.0);
    let span = f64::from((r.blocks.1 - r.blocks.0).max(1));
    let x = |h: u32| left + width * f64::from(h.saturating_sub(r.blocks.0)) / span;
    let height = top * 2.0 + gap * ACTORS.len() as f64;
    let mut s = format!("<svg width=\"{}\" height=\"{height}\" role=\"img\">", left + width + 30.0);
    for (i, a) in ACTORS.iter().enumerate() {
        let y = top + gap * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{a}</text><line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#d0d7de\"/>",
            y + 4.0,
            left + width
        );
    }
    let axis = top + gap * ACTORS.len() as f64;
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"{axis}\" font-size=\"11\">block {}</text><text x=\"{}\" y=\"{axis}\" font-size=\"11\" text-anchor=\"end\">block {}</text>",
        r.blocks.0,
        left + width,
        r.blocks.1
    );
    for (n, e) in r.timeline.iter().enumerate() {
        let y = top + gap * row(&e.actor) as f64;
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{y}\" r=\"6\" fill=\"{}\"><title>{}: block {}, {:.1} s: {}</title></circle>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
            x(e.height),
            colour(&e.kind),
            escape(&e.actor),
            e.height,
            e.ms as f64 / 1000.0,
            escape(&e.what),
            x(e.height),
            y - 8.0,
            n + 1
        );
    }
    s.push_str("</svg>");
    s
}

/// The whole report, one page.
pub fn html(reports: &[ScenarioReport]) -> String {
    let held = reports.iter().filter(|r| r.held).count();
    let mut page = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Vigil coercion drill</title>\
         <style>body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1000px}\
         table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #d0d7de;padding:4px 8px;font-size:13px;text-align:left}\
         th{background:#f6f8fa}.no{color:#d1242f;font-weight:bold}.yes{color:#1a7f37}.num{text-align:right}\
         h2{margin-top:32px}.legend span{margin-right:16px;font-size:13px}</style></head><body>",
    );
    let _ = write!(
        page,
        "<h1>Vigil coercion drill</h1><p>{held} of {} scenarios held: the attacker ended with no more than the \
         allowance (the hot wallet, and what the velocity budget releases unless the duress code was given), every alarm reached the guardians within {} s of the event, and every honest spend completed.</p>",
        reports.len(),
        ALARM_LIMIT.as_secs()
    );
    page.push_str(
        "<table><tr><th>scenario</th><th>at risk</th><th>attacker got</th><th>allowance</th><th>of it, hot wallet</th><th>alarm</th>\
         <th>wall time</th><th>held</th><th>outcome</th></tr>",
    );
    for r in reports {
        let alarm = r.alarm_latency_ms.map_or("none due".to_owned(), |ms| format!("{ms} ms"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{alarm}</td><td class=\"num\">{:.1} s</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            r.scenario,
            btc(r.at_risk_sats),
            btc(r.extracted_sats),
            btc(r.allowance_sats),
            btc(r.hot_wallet_sats),
            r.wall_ms as f64 / 1000.0,
            if r.held { "yes" } else { "no" },
            if r.held { "yes" } else { "NO" },
            escape(&r.outcome)
        );
    }
    page.push_str("</table><p class=\"legend\">");
    for (kind, name) in
        [("tx", "transaction"), ("alarm", "alarm"), ("action", "action"), ("block", "blocks mined")]
    {
        let _ = write!(page, "<span><svg width=\"12\" height=\"12\"><circle cx=\"6\" cy=\"6\" r=\"5\" fill=\"{}\"/></svg> {name}</span>", colour(kind));
    }
    page.push_str("</p>");
    for r in reports {
        let _ = write!(page, "<h2>{} {}</h2><p>{}</p>", r.scenario, escape(&r.title), escape(&r.outcome));
        for f in &r.failures {
            let _ = write!(page, "<p class=\"no\">{}</p>", escape(f));
        }
        page.push_str(&svg(r));
        page.push_str("<table><tr><th>#</th><th>block</th><th>time</th><th>who</th><th>what</th></tr>");
        for (n, e) in r.timeline.iter().enumerate() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1} s</td><td>{}</td><td>{}</td></tr>",
                n + 1,
                e.height,
                e.ms as f64 / 1000.0,
                escape(&e.actor),
                escape(&e.what)
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>\n");
    page
}
