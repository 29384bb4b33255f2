//! RPC credentials, as Core handles them: `rpcuser`/`rpcpassword` when given (a non-empty
//! password), else a random cookie written to `<datadir>/.cookie` (only its owner may read it)
//! and removed at shutdown. Every comparison takes the same time whatever the guess.

use std::path::{Path, PathBuf};

use base64::Engine;
use vigil_regtest::bitcoin::hashes::{sha256, Hash};
use vigil_regtest::bitcoin::hex::DisplayHex;

/// The user name Core writes into its cookie.
pub const COOKIE_USER: &str = "__cookie__";

/// Why the credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// An empty password would let anyone in.
    #[error("an empty RPC password would let anyone in: give a password, or none to use a cookie file")]
    EmptyPassword,
    /// A user without a password (or the reverse).
    #[error("give both --rpcuser and --rpcpassword, or neither (then the node writes a cookie file)")]
    Incomplete,
    /// The cookie file could not be written.
    #[error("cookie file {path}: {source}")]
    Cookie {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the node accepts.
pub struct Credentials {
    /// sha256 of `user:password`: compared digest to digest, in constant time.
    expected: [u8; 32],
    /// The cookie file to remove at shutdown.
    cookie: Option<PathBuf>,
}

impl Credentials {
    /// From the command line: both given, or neither (a cookie in `datadir`).
    pub fn new(user: Option<&str>, password: Option<&str>, datadir: &Path) -> Result<Credentials, AuthError> {
        match (user, password) {
            (_, Some("")) => Err(AuthError::EmptyPassword),
            (Some(user), Some(password)) => {
                Ok(Credentials { expected: digest(format!("{user}:{password}").as_bytes()), cookie: None })
            }
            (None, None) => {
                let secret: [u8; 32] = vigil_regtest::bitcoin::secp256k1::rand::random();
                let line = format!("{COOKIE_USER}:{}", secret.to_lower_hex_string());
                let path = datadir.join(".cookie");
                write_private(&path, &line)
                    .map_err(|source| AuthError::Cookie { path: path.clone(), source })?;
                Ok(Credentials { expected: digest(line.as_bytes()), cookie: Some(path) })
            }
            _ => Err(AuthError::Incomplete),
        }
    }

    /// Whether an `Authorization` header value carries the credentials.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let given = header
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .unwrap_or_default();
        constant_time_eq(&digest(&given), &self.expected)
    }

    /// Removes the cookie file, if there is one.
    pub fn remove_cookie(&self) {
        if let Some(path) = &self.cookie {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    sha256::Hash::hash(bytes).to_byte_array()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes `text` to a new file only its owner can read, created that way (never readable by
/// others, not even for an instant). Whatever was at `path` is removed first, and the file is
/// created anew: a symlink planted there is not followed.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password))
    }

    #[test]
    fn passwords_must_match_and_may_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::new(Some("u"), Some("p"), dir.path()).unwrap();
        assert!(c.allows(Some(&header("u:p"))));
        for wrong in ["u:q", "u:", ":p", "u:pp", ""] {
            assert!(!c.allows(Some(&header(wrong))), "{wrong}");
        }
        assert!(!c.allows(None));
        assert!(!c.allows(Some("Basic not-base64!")));
        assert!(matches!(Credentials::new(Some("u"), Some(""), dir.path()), Err(AuthError::EmptyPassword)));
        assert!(matches!(Credentials::new(Some("u"), None, dir.path()), Err(AuthError::Incomplete)));
    }

    #[test]
    fn without_a_password_a_private_cookie_is_written_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::new(None, None, dir.path()).unwrap();
        let path = dir.path().join(".cookie");
        let cookie = std::fs::read_to_string(&path).unwrap();
        assert!(cookie.starts_with("__cookie__:") && cookie.len() == 11 + 64, "{cookie}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(c.allows(Some(&header(&cookie))));
        assert!(!c.allows(Some(&header("__cookie__:00"))));
        let other = Credentials::new(None, None, dir.path()).unwrap();
        assert!(!other.allows(Some(&header(&cookie))), "a new cookie at every start");
        other.remove_cookie();
        assert!(!path.exists());
        // A symlink planted where the cookie goes is replaced, not followed.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        Credentials::new(None, None, dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }
}
