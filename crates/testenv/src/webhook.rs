//! An alarm webhook on loopback that records every body it receives.

use std::io::{BufRead, BufReader, Read, Write};
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
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            if let Ok(v) = serde_json::from_slice(&body) {
                store.lock().unwrap().push(v);
            }
            let _ = reader
                .into_inner()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
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
