//! What keeps anyone but the person at this machine's browser from driving the page.
//!
//! - The server listens on loopback only, and answers only requests whose `Host` is its own
//!   address (a rebound DNS name pointing at 127.0.0.1 is refused).
//! - Each start draws two secrets: a path every page lives under, and a login token. The
//!   address printed once holds both; opening it (once: the login is single-use) sets an
//!   `HttpOnly`, `SameSite=Strict` cookie holding the token, scoped to the secret path, and
//!   every request needs the path and the cookie. Browsers do not keep cookies apart by port:
//!   a page another local user serves on another port of 127.0.0.1 would be sent a cookie of
//!   ours, but not one scoped to a path it does not know, and the cookie alone opens nothing.
//!   Pages are written as if served at `/`; the gate mounts them under the secret path (our
//!   own `href="/` and `action="/` attributes and redirects; outside text is escaped, so it
//!   never forms such an attribute).
//! - Every state-changing request is a form post that must carry the per-start CSRF token
//!   (only ever rendered into this server's own pages), come from this origin (`Origin`,
//!   `Sec-Fetch-Site`), and be small.
//! - Every answer carries a strict Content-Security-Policy (no script at all, styles from this
//!   server only, forms posting back to it only, no framing) and is never cached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use zeroize::Zeroizing;

/// The largest form a page posts.
const MAX_FORM: usize = 16 * 1024;

/// The policy every page is served under.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A form post's fields, checked and parsed by the gate (handlers read them from here).
#[derive(Clone, Default)]
pub struct Fields(Arc<HashMap<String, Zeroizing<String>>>);

impl Fields {
    /// A field's value, or "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(|v| v.as_str()).unwrap_or("")
    }
}

/// The per-start secrets and the address they are good for.
pub struct Gate {
    token: Zeroizing<String>,
    csrf: Zeroizing<String>,
    /// `/` and 64 hex digits: every page lives under it.
    base: Zeroizing<String>,
    origin: String,
    host: String,
    cookie: String,
    logged_in: AtomicBool,
}

impl Gate {
    /// Fresh secrets for a server listening at `addr` (loopback).
    pub fn new(addr: SocketAddr) -> Gate {
        Gate {
            token: random_hex(),
            csrf: random_hex(),
            base: Zeroizing::new(format!("/{}", random_hex().as_str())),
            origin: format!("http://{addr}"),
            host: addr.to_string(),
            // The owner's and a guardian's page on one machine must not overwrite each
            // other's cookie (ports do not keep them apart).
            cookie: format!("vigil_ui_{}", addr.port()),
            logged_in: AtomicBool::new(false),
        }
    }

    /// The address to open, once: it sets the cookie and leaves the token out of the address
    /// bar. A second browser needs a new start.
    pub fn login_url(&self) -> String {
        format!("{}{}/login?token={}", self.origin, self.base.as_str(), self.token.as_str())
    }

    /// The CSRF token, for the forms of this server's pages.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    fn has_cookie(&self, request: &Request) -> bool {
        request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie && same(value, &self.token))
    }
}

fn random_hex() -> Zeroizing<String> {
    use vigil_policy::bitcoin::hex::DisplayHex;
    use vigil_policy::bitcoin::secp256k1::rand::RngCore;
    let mut bytes = Zeroizing::new([0u8; 32]);
    vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(bytes.as_mut());
    Zeroizing::new(bytes.to_lower_hex_string())
}

/// Equality that takes as long whatever the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refusal page: plain words, no detail an attacker could use.
fn refuse(status: StatusCode, why: &str) -> Response {
    let body = crate::page::bare("Refused", &format!("<p>{}</p>", crate::page::esc(why)));
    (status, body).into_response()
}

/// The middleware: host, token cookie, then for a post its origin and CSRF token.
pub async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let mut response = check(&gate, request, next).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` even for our own forms.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn check(gate: &Gate, mut request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if host != gate.host {
        return refuse(StatusCode::MISDIRECTED_REQUEST, "This page answers only at its own address.");
    }
    // Outside the secret path there is nothing, not even a hint that a page is here.
    let Some(rest) = request.uri().path().strip_prefix(gate.base.as_str()).map(str::to_owned) else {
        return (StatusCode::NOT_FOUND, "").into_response();
    };
    if rest.is_empty() {
        return see_other(&format!("{}/", gate.base.as_str()));
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    *request.uri_mut() = match format!("{rest}{query}").parse() {
        Ok(uri) => uri,
        Err(_) => return (StatusCode::NOT_FOUND, "").into_response(),
    };
    mounted(gate, route(gate, request, next).await).await
}

/// A redirect to `location`.
fn see_other(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .expect("a redirect")
}

/// The largest page the gate rewrites.
const MAX_PAGE: usize = 4 * 1024 * 1024;

/// `response` with the pages' own links and redirects moved under the secret path.
async fn mounted(gate: &Gate, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(location) = parts.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()) {
        if location.starts_with('/') && !location.starts_with(gate.base.as_str()) {
            let moved = format!("{}{location}", gate.base.as_str());
            parts.headers.insert(header::LOCATION, HeaderValue::from_str(&moved).expect("a path"));
        }
    }
    let html = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("text/html"));
    if !html {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PAGE).await else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "That page was too large to show.");
    };
    let text = String::from_utf8_lossy(&bytes)
        .replace("href=\"/", &format!("href=\"{}/", gate.base.as_str()))
        .replace("action=\"/", &format!("action=\"{}/", gate.base.as_str()));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(text))
}

async fn route(gate: &Gate, request: Request, next: Next) -> Response {
    if request.uri().path() == "/login" && request.method() == Method::GET {
        let token = request
            .uri()
            .query()
            .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))
            .map(|(_, v)| Zeroizing::new(v.into_owned()));
        if !token.is_some_and(|t| same(&t, &gate.token)) {
            return refuse(
                StatusCode::FORBIDDEN,
                "That address is not this page's (it changes at each start).",
            );
        }
        if gate.logged_in.swap(true, Ordering::SeqCst) {
            return refuse(
                StatusCode::FORBIDDEN,
                "This address was opened already, in a browser that can keep using it. To open the page in \
                 another browser, stop the command and start it again.",
            );
        }
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path={}/",
            gate.cookie,
            gate.token.as_str(),
            gate.base.as_str()
        );
        let mut response = see_other("/");
        response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a cookie"));
        return response;
    }
    if !gate.has_cookie(&request) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Open this page from the address the command printed when it started.",
        );
    }
    match *request.method() {
        Method::GET | Method::HEAD => next.run(request).await,
        Method::POST => match checked_form(gate, request).await {
            Ok(request) => next.run(request).await,
            Err(why) => refuse(StatusCode::FORBIDDEN, why),
        },
        _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "This page only reads and posts forms."),
    }
}

/// A post from this server's own page, its fields parsed into the request's extensions.
async fn checked_form(gate: &Gate, request: Request) -> Result<Request, &'static str> {
    // Checked before the body is read (no borrow of the request lives across the await).
    let refusal = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if header("origin").is_some_and(|o| o != gate.origin)
            || header("sec-fetch-site").is_some_and(|s| s != "same-origin")
        {
            Some("A request from another site was refused.")
        } else if header("content-type").and_then(|c| c.split(';').next()).map(str::trim)
            != Some("application/x-www-form-urlencoded")
        {
            Some("Only this page's own forms are accepted.")
        } else {
            None
        }
    };
    if let Some(why) = refusal {
        return Err(why);
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| "That form was too large.")?;
    let fields: HashMap<String, Zeroizing<String>> = form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
        .collect();
    if !fields.get("csrf").is_some_and(|t| same(t, &gate.csrf)) {
        return Err(
            "That form is not from this page (or the page was restarted since): reload it and try again.",
        );
    }
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(Fields(Arc::new(fields)));
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_compared_whole() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (a, b) = (Gate::new(addr), Gate::new(addr));
        assert_ne!(a.base, b.base);
        assert!(a.login_url().starts_with(&format!("http://127.0.0.1:1/{}/login?token=", &a.base[1..])));
        assert_ne!(a.token, b.token);
        assert_ne!(a.csrf, a.token);
        assert_eq!(a.token.len(), 64);
        assert!(same(&a.token, &a.token.clone()));
        assert!(!same(&a.token, &a.token[..63]));
        assert!(!same(&a.token, &b.token));
    }
}
