//! A TCP proxy on loopback that counts what crosses it, connection by connection: what a
//! network observer between a device and a service sees (how many connections, how many
//! bytes each way), without the content.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Bytes sent to the service and received from it, for one connection.
pub type Flow = (u64, u64);

/// The first bytes sent on a connection, kept to tell whose it was.
const HEAD: usize = 4096;

/// Finished connections, each with the first bytes sent on it.
type Flows = Arc<Mutex<Vec<(Flow, Vec<u8>)>>>;

/// A counting proxy in front of one service.
pub struct CountingProxy {
    /// `http://127.0.0.1:PORT`: give this to the client instead of the service's URL.
    pub url: String,
    flows: Flows,
    open: Arc<Mutex<usize>>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Copies `from` to `to` until either ends, each chunk held back `delay` ms first; the bytes
/// copied and the first [`HEAD`] of them.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: u64) -> (u64, Vec<u8>) {
    let (mut total, mut head) = (0, Vec::new());
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n > 0 && delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        head.extend_from_slice(&buf[..n.min(HEAD.saturating_sub(head.len()))]);
    }
    let _ = to.shutdown(Shutdown::Write);
    (total, head)
}

impl CountingProxy {
    /// A proxy to `target` (`http://host:port`).
    pub fn new(target: &str) -> CountingProxy {
        let target = target.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let flows: Flows = Arc::default();
        let open: Arc<Mutex<usize>> = Arc::default();
        let delay_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (f, o, d) = (flows.clone(), open.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(service) = TcpStream::connect(&target) else { continue };
                *o.lock().unwrap() += 1;
                let (f, o) = (f.clone(), o.clone());
                let delay = d.load(std::sync::atomic::Ordering::SeqCst);
                let (c2, s2) = (client.try_clone().unwrap(), service.try_clone().unwrap());
                std::thread::spawn(move || {
                    let down = std::thread::spawn(move || pump(s2, c2, delay).0);
                    let (up, head) = pump(client, service, 0);
                    let down = down.join().unwrap_or(0);
                    f.lock().unwrap().push(((up, down), head));
                    *o.lock().unwrap() -= 1;
                });
            }
        });
        CountingProxy { url, flows, open, delay_ms }
    }

    /// Holds back every answer of connections opened from now on by `ms` (0: none): a slow
    /// service, whose requests are in flight long enough to be interrupted.
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// The connections finished since the last call whose first bytes contain `party` (a
    /// signing key's hex in a request header: that party's own traffic), sorted; waits up to
    /// 5 s for open ones to end. The others are dropped.
    pub fn take(&self, party: &str) -> Vec<Flow> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while *self.open.lock().unwrap() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let all = std::mem::take(&mut *self.flows.lock().unwrap());
        let mut flows: Vec<Flow> = all
            .into_iter()
            .filter(|(_, head)| head.windows(party.len()).any(|w| w == party.as_bytes()))
            .map(|(flow, _)| flow)
            .collect();
        flows.sort();
        flows
    }
}
