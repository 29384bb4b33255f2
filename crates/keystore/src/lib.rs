//! Vigil's secrets at rest. A secret (a co-signer's or guardian's master key; later the
//! owner's wallet) is sealed under a passphrase: the passphrase is stretched with argon2id
//! into a key for XChaCha20-Poly1305, which encrypts and authenticates the secret together
//! with the file's header, so neither the parameters nor the ciphertext can be altered
//! unnoticed. An opened secret lives in memory that is wiped when it is dropped. The owner's
//! keystore holds two secrets under two codes, real and duress ([`seal_two`]).
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! "VIGILKS1" | m_cost KiB (u32) | t_cost (u32) | lanes (u32) | salt (16) | nonce (24) | ciphertext+tag
//! ```
//!
//! A file is written once, to a temporary name, synced and renamed into place with mode
//! 0600: a crash leaves the old file or the new one, never half of one; an existing file is
//! never overwritten.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

mod two_codes;
pub use two_codes::{check_two, open_two, seal_two};

const MAGIC: &[u8; 8] = b"VIGILKS1";
const HEADER_LEN: usize = 8 + 12 + 16 + 24;
pub(crate) const TAG_LEN: usize = 16;
/// The largest argon2 memory a file may ask for, KiB: a forged header must not make opening
/// it exhaust the machine.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
/// The most passes a file may ask for.
const MAX_T_COST: u32 = 64;

/// What went wrong sealing or opening a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// The passphrase does not open the file (or the file was altered: the two cannot be told
    /// apart, by design).
    #[error("the passphrase does not open this key file (wrong passphrase, or the file was altered)")]
    WrongPassphrase,
    /// The file is not a sealed secret, or is cut short.
    #[error("not a Vigil key file: {0}")]
    Corrupt(&'static str),
    /// The passphrase is unusable.
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How hard the passphrase is stretched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// For keys people protect with a passphrase: 64 MiB, 3 passes (RFC 9106's second
    /// recommended option).
    pub const INTERACTIVE: KdfParams = KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, lanes: 1 };
    /// Cheap stretching, for tests only: the format records the parameters, so opening is
    /// the same code either way.
    pub const FOR_TESTS: KdfParams = KdfParams { m_cost_kib: 1024, t_cost: 1, lanes: 1 };

    pub(crate) fn argon2(&self, out_len: usize) -> Result<Argon2<'static>, KeystoreError> {
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.lanes == 0 || self.lanes > 16
        {
            return Err(KeystoreError::Corrupt("stretching parameters out of range"));
        }
        let params = Params::new(self.m_cost_kib, self.t_cost, self.lanes, Some(out_len))
            .map_err(|_| KeystoreError::Corrupt("stretching parameters out of range"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

fn cipher(passphrase: &[u8], salt: &[u8], params: &KdfParams) -> Result<XChaCha20Poly1305, KeystoreError> {
    let mut key = Zeroizing::new([0u8; 32]);
    params
        .argon2(32)?
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| KeystoreError::Passphrase(e.to_string()))?;
    Ok(XChaCha20Poly1305::new(key.as_ref().into()))
}

/// Seals `secret` under `passphrase`.
pub fn seal(secret: &[u8], passphrase: &[u8], params: KdfParams) -> Result<Vec<u8>, KeystoreError> {
    if passphrase.is_empty() {
        return Err(KeystoreError::Passphrase("it is empty".into()));
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + secret.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    for v in [params.m_cost_kib, params.t_cost, params.lanes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let sealed = cipher(passphrase, &salt, &params)?
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &out })
        .map_err(|_| KeystoreError::Corrupt("encryption failed"))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed secret; the returned bytes are wiped when dropped.
pub fn open(file: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    if file.len() < 8 || &file[..8] != MAGIC {
        return Err(KeystoreError::Corrupt("it does not start with VIGILKS1"));
    }
    if file.len() < HEADER_LEN + TAG_LEN {
        return Err(KeystoreError::Corrupt("it is cut short"));
    }
    let word = |i: usize| u32::from_le_bytes(file[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
    let params = KdfParams { m_cost_kib: word(0), t_cost: word(1), lanes: word(2) };
    let (header, sealed) = file.split_at(HEADER_LEN);
    let salt = &header[20..36];
    let nonce = XNonce::from_slice(&header[36..60]);
    let plain = cipher(passphrase, salt, &params)?
        .decrypt(nonce, Payload { msg: sealed, aad: header })
        .map_err(|_| KeystoreError::WrongPassphrase)?;
    Ok(Zeroizing::new(plain))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io { path: path.display().to_string(), source }
}

/// Writes a sealed file at `path` (mode 0600, atomically); refuses to replace an existing one.
pub fn write_new(path: &Path, sealed: &[u8]) -> Result<(), KeystoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Err(io(path)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a key file is already there; it is never overwritten",
        )));
    }
    let tmp = path.with_extension("tmp");
    // A leftover temporary file (a crash) is replaced; a symlink there is never followed.
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io(&tmp)(std::io::Error::other("a symlink sits where the temporary key file goes")))
        }
        Ok(_) => std::fs::remove_file(&tmp).map_err(io(&tmp))?,
        Err(_) => {}
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(sealed).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    // hard_link fails if the target appeared meanwhile: never replace a key.
    std::fs::hard_link(&tmp, path).map_err(io(path))?;
    std::fs::remove_file(&tmp).map_err(io(&tmp))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads a sealed file and opens it.
pub fn open_file(path: &Path, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    open(&bytes, passphrase)
}

/// A passphrase from a file (its first line) or an environment variable, wiped when dropped.
pub fn read_passphrase(file: Option<&Path>, env: Option<&str>) -> Result<Zeroizing<String>, KeystoreError> {
    let mut text = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(io(path))?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| KeystoreError::Passphrase(format!("environment variable {var} is not set")))?,
        (None, None) => return Err(KeystoreError::Passphrase("no passphrase file or variable given".into())),
    };
    let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    text.zeroize();
    if line.is_empty() {
        return Err(KeystoreError::Passphrase("it is empty".into()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_passphrase_only() {
        let sealed = seal(b"master key bytes", b"correct horse", KdfParams::FOR_TESTS).unwrap();
        assert_eq!(&open(&sealed, b"correct horse").unwrap()[..], b"master key bytes");
        assert!(matches!(open(&sealed, b"wrong"), Err(KeystoreError::WrongPassphrase)));
        assert!(!sealed.windows(6).any(|w| w == b"master"), "the secret is not in the file");
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let sealed = seal(b"secret", b"pass", KdfParams::FOR_TESTS).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&bad, b"pass").is_err(), "byte {i} altered unnoticed");
        }
        for len in 0..sealed.len() {
            assert!(open(&sealed[..len], b"pass").is_err(), "cut at {len} opened");
        }
    }

    #[test]
    fn a_forged_header_cannot_ask_for_unbounded_memory() {
        let mut sealed = seal(b"secret", b"pass", KdfParams::FOR_TESTS).unwrap();
        sealed[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(&sealed, b"pass"), Err(KeystoreError::Corrupt(_))));
    }

    #[test]
    fn a_key_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.sealed");
        write_new(&path, b"one").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_new(&path, b"two").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
    }

    #[test]
    fn a_passphrase_comes_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "hunter2\n").unwrap();
        assert_eq!(&*read_passphrase(Some(&path), None).unwrap(), "hunter2");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_passphrase(Some(&path), None).is_err());
        assert!(read_passphrase(None, Some("VIGIL_TEST_NO_SUCH_VARIABLE")).is_err());
    }
}
