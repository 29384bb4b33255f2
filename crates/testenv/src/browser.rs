//! A real browser for the web pages' tests: Debian's headless Chromium, driven over the W3C
//! WebDriver protocol through `chromedriver` (a process of its own, on loopback).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A headless Chromium with a fresh profile.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether the browser and its driver are installed; when they are not, a test that needs
/// them fails where `VIGIL_REQUIRE_CHROMIUM` is set (CI) and is skipped elsewhere.
pub fn available() -> bool {
    let found = ["chromium", "chromedriver"].iter().all(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    });
    assert!(
        found || std::env::var_os("VIGIL_REQUIRE_CHROMIUM").is_none(),
        "chromium and chromium-driver are not installed"
    );
    found
}

impl Browser {
    /// Starts the driver and a browser whose window is `width` × `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let ready = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(ready.elapsed() < Duration::from_secs(30), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-background-networking",
                    "--disable-component-update", "--disable-gpu", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let answer: Value =
            ureq::post(&format!("{base}/session")).send_json(caps).expect("a session").into_json().unwrap();
        let session = answer["value"]["sessionId"].as_str().expect("a session id").to_owned();
        Browser { driver, base, session, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = ureq::request(method, &url).timeout(Duration::from_secs(120));
        let answer = match body {
            Some(b) => request.send_json(b),
            None => request.call(),
        };
        match answer {
            Ok(r) => r.into_json::<Value>().unwrap()["value"].take(),
            Err(ureq::Error::Status(code, r)) => {
                panic!("webdriver {method} {path}: {code} {}", r.into_string().unwrap())
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Opens a new tab (same cookies) and returns its handle; the tab shown does not change.
    pub fn new_tab(&self) -> String {
        let tab = self.call("POST", "/window/new", Some(json!({ "type": "tab" })));
        tab["handle"].as_str().expect("a tab handle").to_owned()
    }

    /// The handle of the tab shown.
    pub fn tab(&self) -> String {
        self.call("GET", "/window", None).as_str().expect("a tab handle").to_owned()
    }

    /// Shows tab `handle`: what follows acts on it.
    pub fn show_tab(&self, handle: &str) {
        self.call("POST", "/window", Some(json!({ "handle": handle })));
    }

    /// The address shown.
    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's DOM, serialized.
    pub fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// The visible text of the page's body.
    pub fn text(&self) -> String {
        let body = self.find("body");
        self.call("GET", &format!("/element/{body}/text"), None).as_str().unwrap_or_default().to_owned()
    }

    fn find(&self, css: &str) -> String {
        let found = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element")
            .to_owned()
    }

    /// Whether an element matches `css`.
    pub fn has(&self, css: &str) -> bool {
        let found = self.call("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found.as_array().is_some_and(|a| !a.is_empty())
    }

    /// Types `text` into the field `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css);
        self.call("POST", &format!("/element/{field}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{field}/value"), Some(json!({ "text": text })));
    }

    /// Clicks `css` (a checkbox, an option): nothing is loaded.
    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})));
    }

    /// Clicks `css` (a link, a submit button) and waits until the page it loads is there:
    /// a click does not wait for the navigation it starts.
    pub fn follow(&self, css: &str) {
        self.run("window.vigilOldPage = true");
        self.click(css);
        let start = Instant::now();
        loop {
            let loaded = self.run("return !window.vigilOldPage && document.readyState === 'complete'");
            if loaded == Value::Bool(true) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{css} loaded no page");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Picks the option whose value is `value` in the select `css`.
    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"));
    }

    /// The cookies the browser holds for the page shown (HttpOnly ones included).
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None).as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap()
    }

    /// Resizes the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Runs `script` in the page (tests only: the pages themselves allow no script).
    pub fn run(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
