//! HTML, written out by hand: every value from outside goes through [`esc`], there is no
//! script, and the one style sheet is served by the page's own server.

use vigil_policy::bitcoin::Amount;

/// The style sheet (`/style.css`).
pub const STYLE: &str = include_str!("style.css");

/// `text`, safe inside an element or a quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An amount in BTC and in sats, as both are read.
pub fn btc(sat: u64) -> String {
    format!("{} BTC <span class=\"sats\">({} sats)</span>", Amount::from_sat(sat).to_btc(), group(sat))
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub use vigil_client::guardian::about;

/// A whole page: `title`, the navigation `nav` (label, href), and `body` (already escaped).
/// `refresh`: seconds after which the browser reloads it (live lists), if any.
pub fn page(title: &str, heading: &str, nav: &[(&str, &str)], body: &str, refresh: Option<u32>) -> String {
    let refresh =
        refresh.map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">")).unwrap_or_default();
    let links: String = nav
        .iter()
        .map(|(label, href)| format!("<li><a href=\"{}\">{}</a></li>", esc(href), esc(label)))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\
         <title>{}</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><header><p class=\"brand\">Vigil</p><h1>{}</h1><nav aria-label=\"Pages\"><ul>{links}</ul></nav></header>\
         <main>{body}</main></body></html>\n",
        esc(title),
        esc(heading),
    )
}

/// A page with no navigation (refusals, errors).
pub fn bare(title: &str, body: &str) -> String {
    page(title, title, &[], body, None)
}

/// A form posting to `action`, with the CSRF token and `inner` (fields and buttons).
pub fn form(action: &str, csrf: &str, inner: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{inner}</form>",
        esc(action),
        esc(csrf)
    )
}

/// A labelled password field (codes, passphrases): never pre-filled, never remembered.
pub fn secret_field(name: &str, label: &str) -> String {
    format!(
        "<label for=\"{name}\">{}</label><input id=\"{name}\" name=\"{name}\" type=\"password\" \
         autocomplete=\"off\" required>",
        esc(label)
    )
}

/// A notice: `class` is `warn`, `alarm`, `ok` or `info`.
pub fn notice(class: &str, html: &str) -> String {
    format!(
        "<div class=\"notice {class}\" role=\"{}\">{html}</div>",
        if class == "alarm" { "alert" } else { "status" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn amounts_read_in_btc_and_grouped_sats() {
        assert_eq!(btc(1_234_567), "0.01234567 BTC <span class=\"sats\">(1,234,567 sats)</span>");
        assert_eq!(group(100), "100");
        assert_eq!(group(1000), "1,000");
        assert_eq!(about(18), "about 3 hours");
        assert_eq!(about(4), "about 40 minutes");
    }
}
