//! A real SMTP server on loopback (aiosmtpd, Debian's `python3-aiosmtpd`), printing every
//! message it receives to a file the test reads.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// The SMTP server, killed when dropped.
pub struct SmtpServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Everything it received so far (headers and bodies, as printed).
    pub fn received(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts aiosmtpd with `VIGIL_SMTP_PYTHON` (default `/usr/bin/python3`), or `None`
/// (skipped) when it is not installed and `VIGIL_REQUIRE_SMTP` is unset.
pub fn smtp_server() -> Option<SmtpServer> {
    let python = std::env::var("VIGIL_SMTP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let installed = Command::new(&python).args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var("VIGIL_REQUIRE_SMTP").is_err(), "aiosmtpd is not installed for {python}");
        eprintln!("SKIPPED: aiosmtpd is not installed (scripts/test.sh installs python3-aiosmtpd)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    let port = free_port();
    let child = Command::new(&python)
        .args(["-u", "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Debugging", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the SMTP server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(SmtpServer { child, port, log, _dir: dir })
}
