//! The emulated Ledger's holder and cable, for device tests run with the emulator's harness
//! (`LEDGER_SPECULOS_APDU`, `LEDGER_SPECULOS_API`) and its own approver off.
//!
//! [`Holder`] presses the buttons through the emulator's REST API as a person would: pages
//! through each review and, on its last page, approves or rejects as the test says.
//! [`Cable`] sits between Vigil and the emulator's APDU port, can be pulled out, and records
//! the commands Vigil sends through it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The final page of a review, which approves it with both buttons.
fn is_approve(text: &str) -> bool {
    ["Register account", "Sign transaction", "Confirm", "Continue anyway", "Approve public key"]
        .contains(&text)
}

/// The page after it, which rejects.
fn is_reject(text: &str) -> bool {
    ["Reject operation", "Reject transaction", "Reject", "Cancel", "Back to safety"].contains(&text)
}

/// A spinner: shown while the app works, gone without a press, often before a look at the
/// screen every few tens of milliseconds can catch it; a list of pages compared across two
/// runs leaves these out.
pub fn is_spinner(text: &str) -> bool {
    ["Loading", "Processing", "Signing"].iter().any(|w| text.contains(w))
}

/// Pages that need no button: the app's idle pages, spinners, status pages.
fn is_idle(text: &str) -> bool {
    let idle = ["app is ready", "registered", "verified", "rejected", "signed"];
    text.is_empty()
        || is_spinner(text)
        || idle.iter().any(|w| text.contains(w))
        || text.starts_with("Quit")
        || text.starts_with("Version")
}

/// What the holder does on a review's last page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Both buttons on the approve page.
    Approve,
    /// On to the reject page, then both buttons.
    Reject,
    /// Nothing yet: the test acts (pulls the cable) and says later.
    Wait,
}

/// The text of the emulator's current screen, its lines joined by one space.
pub fn screen(api: &str) -> Option<String> {
    let events: serde_json::Value =
        ureq::get(&format!("{api}/events?currentscreenonly=true")).call().ok()?.into_json().ok()?;
    let lines: Vec<String> = events["events"]
        .as_array()?
        .iter()
        .flat_map(|e| {
            e["text"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect();
    Some(lines.join(" "))
}

fn press(api: &str, button: &str) {
    let _ = ureq::post(&format!("{api}/button/{button}"))
        .send_json(serde_json::json!({"action": "press-and-release", "delay": 0.05}));
}

/// The current screen as a PNG.
pub fn screenshot(api: &str) -> Vec<u8> {
    let mut png = Vec::new();
    ureq::get(&format!("{api}/screenshot"))
        .call()
        .expect("a screenshot")
        .into_reader()
        .read_to_end(&mut png)
        .unwrap();
    png
}

/// A thread that reads the device's screen every `period` while it lives, keeping every page
/// it shows, and hands each reading to `tick` with whether the page is new.
struct ScreenReader {
    stop: Arc<AtomicBool>,
    pages: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl ScreenReader {
    fn start(
        api: &str,
        period: Duration,
        mut tick: impl FnMut(&str, &str, bool) + Send + 'static,
    ) -> ScreenReader {
        let (api, stop, pages) =
            (api.to_owned(), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stop_, pages_) = (stop.clone(), pages.clone());
        let thread = std::thread::spawn(move || {
            let mut last = String::new();
            while !stop_.load(Ordering::SeqCst) {
                std::thread::sleep(period);
                let Some(text) = screen(&api) else { continue };
                let new = text != last;
                if new {
                    pages_.lock().unwrap().push(text.clone());
                    last.clone_from(&text);
                }
                tick(&api, &text, new);
            }
        });
        ScreenReader { stop, pages, thread: Some(thread) }
    }

    fn pages(&self) -> Vec<String> {
        self.pages.lock().unwrap().clone()
    }
}

impl Drop for ScreenReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A person holding the device, deciding each review's last page with `decide` (given the
/// review's pages so far, the first its title).
pub struct Holder(ScreenReader);

impl Holder {
    /// Starts pressing on the emulator at `api`.
    pub fn start(api: &str, mut decide: impl FnMut(&[String]) -> Answer + Send + 'static) -> Holder {
        let mut review: Vec<String> = Vec::new();
        let mut rejecting = false;
        let (mut since, mut acted_at) = (Instant::now(), None::<Instant>);
        Holder(ScreenReader::start(api, Duration::from_millis(50), move |api, text, new| {
            if new {
                (since, acted_at) = (Instant::now(), None);
                return;
            }
            // A page is read once it is still; a press waits for the page to change (a press
            // that changed nothing is tried again after a while).
            if since.elapsed() < Duration::from_millis(150)
                || acted_at.is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            {
                return;
            }
            if is_idle(text) {
                review.clear();
                rejecting = false;
                return;
            }
            if review.last().map(String::as_str) != Some(text) {
                review.push(text.to_owned());
            }
            let button = if is_approve(text) && !rejecting {
                match decide(&review) {
                    Answer::Approve => "both",
                    Answer::Reject => {
                        rejecting = true;
                        "right"
                    }
                    Answer::Wait => return,
                }
            } else if is_reject(text) && rejecting {
                "both"
            } else {
                "right"
            };
            press(api, button);
            acted_at = Some(Instant::now());
        }))
    }

    /// Every page seen so far.
    pub fn pages(&self) -> Vec<String> {
        self.0.pages()
    }
}

/// A cable between Vigil and the emulator's APDU port that can be pulled out and plugged
/// back: pulled, every connection through it is cut and new ones are closed at once. It
/// records the header of every command sent to the device.
pub struct Cable {
    /// Where Vigil connects instead of the emulator.
    pub addr: SocketAddr,
    plugged: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    commands: Arc<Mutex<Vec<[u8; 4]>>>,
}

impl Cable {
    /// A cable to the emulator at `device`.
    pub fn new(device: SocketAddr) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (plugged, open) =
            (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(Vec::<TcpStream>::new())));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let (plugged_, open_, commands_) = (plugged.clone(), open.clone(), commands.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !plugged_.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(device) else { continue };
                for s in [&client, &server] {
                    open_.lock().unwrap().push(s.try_clone().unwrap());
                }
                let to_device =
                    (client.try_clone().unwrap(), server.try_clone().unwrap(), Some(commands_.clone()));
                for (mut from, mut to, record) in [to_device, (server, client, None)] {
                    std::thread::spawn(move || {
                        let (mut buf, mut pending) = ([0u8; 4096], Vec::new());
                        while let Ok(n) = from.read(&mut buf) {
                            // Recorded before it goes on: a command is in the list before the
                            // device can answer it.
                            if let Some(record) = record.as_ref().filter(|_| n > 0) {
                                pending.extend_from_slice(&buf[..n]);
                                record.lock().unwrap().extend(take_frames(&mut pending));
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Cable { addr, plugged, open, commands }
    }

    /// The header (class, instruction, two parameters) of every command sent since the last
    /// call, in order.
    pub fn take_commands(&self) -> Vec<[u8; 4]> {
        std::mem::take(&mut self.commands.lock().unwrap())
    }

    /// Pulled out: every connection cut.
    pub fn pull(&self) {
        self.plugged.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Plugged back in.
    pub fn plug(&self) {
        self.plugged.store(true, Ordering::SeqCst);
    }
}

/// The headers of the whole commands at the start of `bytes` (the emulator's framing: a 4-byte
/// big-endian length, then the command), which are taken out of it.
fn take_frames(bytes: &mut Vec<u8>) -> Vec<[u8; 4]> {
    let mut headers = Vec::new();
    while bytes.len() >= 4 {
        let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if bytes.len() < 4 + length {
            break;
        }
        let command: Vec<u8> = bytes.drain(..4 + length).skip(4).collect();
        if let Some(header) = command.get(..4) {
            headers.push(header.try_into().unwrap());
        }
    }
    headers
}

/// Watches the device's screen while it lives, pressing nothing: every page it shows, and a
/// screenshot of the first page of each kind (by its title) into a directory when asked, as
/// `NN-title.png` (what the docs show a holder).
pub struct Watcher(ScreenReader);

impl Watcher {
    /// Starts watching the emulator at `api`; with `shots`, pages whose text starts with one
    /// of the titles are saved into the directory.
    pub fn start(api: &str, shots: Option<(&std::path::Path, &'static [&'static str])>) -> Watcher {
        let shots = shots.map(|(dir, titles)| {
            std::fs::create_dir_all(dir).unwrap();
            (dir.to_owned(), titles)
        });
        let mut saved = Vec::<&str>::new();
        Watcher(ScreenReader::start(api, Duration::from_millis(30), move |api, text, new| {
            let Some((dir, titles)) = shots.as_ref().filter(|_| new) else { return };
            let Some(title) = titles.iter().find(|t| text.starts_with(**t) && !saved.contains(t)) else {
                return;
            };
            saved.push(title);
            let slug: String = title
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                .collect();
            let _ = std::fs::write(
                dir.join(format!("{:02}-{}.png", saved.len(), slug.trim_matches('-'))),
                screenshot(api),
            );
        }))
    }

    /// Every page seen so far.
    pub fn pages(&self) -> Vec<String> {
        self.0.pages()
    }
}

/// A second emulated Ledger, set up with its own words, started beside the harness's (whose
/// program, app and network it shares), its every review approved by a [`Holder`]: a holder's
/// backup device. None when the harness did not say where its emulator lives.
pub struct SecondDevice {
    /// Its APDU address, as `--…-emulator` takes it.
    pub apdu: SocketAddr,
    emulator: std::process::Child,
    _holder: Holder,
}

impl SecondDevice {
    /// Starts it with `words` (a BIP-39 phrase other than the first device's).
    pub fn start(words: &str) -> Option<SecondDevice> {
        let venv = std::env::var("LEDGER_SPECULOS_VENV").ok()?;
        let app = std::env::var("LEDGER_ELF").ok()?;
        let port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (apdu_port, api_port) = (port(), port());
        let mut emulator = std::process::Command::new(format!("{venv}/bin/speculos"))
            .args(["--display", "headless", "-m", "nanosp", "--seed", words])
            .args(["--apdu-port", &apdu_port.to_string(), "--api-port", &api_port.to_string(), &app])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the emulator starts");
        let api = format!("http://127.0.0.1:{api_port}");
        let apdu: SocketAddr = format!("127.0.0.1:{apdu_port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while screen(&api).is_none_or(|s| !s.contains("app is ready")) || TcpStream::connect(apdu).is_err() {
            assert!(Instant::now() < deadline, "the second emulated Ledger did not come up");
            assert!(emulator.try_wait().unwrap().is_none(), "the second emulated Ledger stopped");
            std::thread::sleep(Duration::from_millis(200));
        }
        let holder = Holder::start(&api, |_| Answer::Approve);
        Some(SecondDevice { apdu, emulator, _holder: holder })
    }
}

impl Drop for SecondDevice {
    fn drop(&mut self) {
        // The emulator runs the app in a child process of its own, which goes first.
        let pid = self.emulator.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = std::process::Command::new("kill").args(["-9", child]).status();
        }
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::take_frames;

    #[test]
    fn commands_are_read_whole_across_reads_and_only_their_headers_kept() {
        let frame = |apdu: &[u8]| [&(apdu.len() as u32).to_be_bytes()[..], apdu].concat();
        let stream =
            [frame(&[0xe1, 0x04, 0, 1, 2, 9, 9]), frame(&[0xf8, 0x01, 0, 0]), frame(&[0xe1])].concat();
        // Read in two pieces split inside the second command's length.
        let (first, rest) = stream.split_at(13);
        let mut pending = first.to_vec();
        assert_eq!(take_frames(&mut pending), vec![[0xe1, 0x04, 0, 1]]);
        pending.extend_from_slice(rest);
        assert_eq!(
            take_frames(&mut pending),
            vec![[0xf8, 0x01, 0, 0]],
            "a command shorter than a header is skipped"
        );
        assert!(pending.is_empty());
    }
}
