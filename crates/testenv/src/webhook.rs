//! An alarm webhook on loopback that records every body it receives.

use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The alarms received so far.
pub type Received = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver: its URL and what it received.
pub fn webhook() -> (String, Received) {
    webhook_on(0)
}

/// A webhook receiver on `port` (0: any free one).
pub fn webhook_on(port: u16) -> (String, Received) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let url = format!("http://{}/alarm", listener.local_addr().unwrap());
    let seen: Received = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    vigil_drill::world::serve_webhook(listener, move |v| store.lock().unwrap().push(v));
    (url, seen)
}

/// A webhook that accepts connections and never answers (a black hole), and its URL.
pub fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alarm", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}
