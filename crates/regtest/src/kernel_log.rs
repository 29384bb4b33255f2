//! The kernel's reasons for rejecting a block arrive only through its process-wide log. One
//! logger is installed for the whole process; each thread can capture the lines the kernel
//! writes while that thread is inside a kernel call (the kernel logs synchronously, on the
//! calling thread), so parallel tests never read each other's reasons.

use std::cell::RefCell;
use std::sync::OnceLock;

use bitcoinkernel::{Log, Logger};

thread_local! {
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct ThreadCapture;

impl Log for ThreadCapture {
    fn log(&self, message: &str) {
        CAPTURE.with(|c| {
            if let Some(lines) = c.borrow_mut().as_mut() {
                lines.push(message.trim_end().to_owned());
            }
        });
    }
}

struct InstalledLogger(#[allow(dead_code)] Logger);
// SAFETY: the logger handle is only created once and never used after; the kernel's logging
// connection is itself thread-safe.
#[allow(unsafe_code)]
unsafe impl Send for InstalledLogger {}
#[allow(unsafe_code)]
unsafe impl Sync for InstalledLogger {}

static LOGGER: OnceLock<Option<InstalledLogger>> = OnceLock::new();

/// Installs the process-wide kernel logger (once).
pub(crate) fn install() {
    LOGGER.get_or_init(|| Logger::new(ThreadCapture).ok().map(InstalledLogger));
}

/// Runs `f`, returning its result and the kernel log lines written on this thread meanwhile.
pub(crate) fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    install();
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let lines = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (out, lines)
}

/// The most telling reject reason among captured lines: Core logs a failed block as
/// "ConnectBlock <hash> failed, <reason>" or "... <reason>, <detail>" lines; prefer lines that
/// name the block, then any error-like line.
pub(crate) fn reject_reason(lines: &[String], block_hash: &str) -> String {
    let interesting = |l: &&String| {
        let l = l.to_ascii_lowercase();
        l.contains("fail") || l.contains("invalid") || l.contains("bad-") || l.contains("error")
    };
    let naming: Vec<&String> = lines.iter().filter(|l| l.contains(block_hash)).filter(interesting).collect();
    let chosen: Vec<&String> =
        if naming.is_empty() { lines.iter().filter(interesting).collect() } else { naming };
    if chosen.is_empty() {
        return "the kernel did not connect the block (no reason logged)".to_owned();
    }
    chosen.iter().map(|l| strip_timestamp(l)).collect::<Vec<_>>().join(" | ")
}

fn strip_timestamp(line: &str) -> &str {
    // "2026-01-01T00:00:00Z message" -> "message"
    match line.split_once(' ') {
        Some((first, rest)) if first.ends_with('Z') && first.contains('T') => rest,
        _ => line,
    }
}
