//! One file, two codes: the owner's keystore opens with the real code or with a duress code,
//! and nothing about the file or the work of opening it tells which.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "VIGILKD1" | m_cost KiB (u32) | t_cost (u32) | lanes (u32) | salt (16)
//!   | slot 0: nonce (24) | ciphertext+tag
//!   | slot 1: nonce (24) | ciphertext+tag
//! ```
//!
//! A code is stretched once (argon2id, 64 bytes out): the first half is slot 0's key, the
//! second slot 1's. Opening always stretches once and tries both slots, whichever code was
//! typed, so the real code, the duress code and a wrong one cost the same. The two secrets
//! must have the same length, and which slot holds which is drawn at random when sealing: the
//! file's bytes say nothing about the codes beyond "two slots".

use argon2::Argon2;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{KdfParams, KeystoreError, TAG_LEN};

const MAGIC: &[u8; 8] = b"VIGILKD1";
const HEADER_LEN: usize = 8 + 12 + 16;
const NONCE_LEN: usize = 24;

fn slot_keys(argon2: &Argon2<'_>, code: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 64]>, KeystoreError> {
    let mut keys = Zeroizing::new([0u8; 64]);
    argon2
        .hash_password_into(code, salt, keys.as_mut())
        .map_err(|e| KeystoreError::Passphrase(e.to_string()))?;
    Ok(keys)
}

fn slot_aad(header: &[u8], slot: u8) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.push(slot);
    aad
}

/// Seals `real` under `real_code` and `duress` under `duress_code` into one file. The
/// secrets must be the same length; the codes must differ and not be empty.
pub fn seal_two(
    real: &[u8],
    real_code: &[u8],
    duress: &[u8],
    duress_code: &[u8],
    params: KdfParams,
) -> Result<Vec<u8>, KeystoreError> {
    if real_code.is_empty() || duress_code.is_empty() {
        return Err(KeystoreError::Passphrase("a code is empty".into()));
    }
    if real_code == duress_code {
        return Err(KeystoreError::Passphrase("the duress code must differ from the real one".into()));
    }
    if real.len() != duress.len() {
        return Err(KeystoreError::Corrupt(
            "the two secrets differ in length: the file would tell them apart",
        ));
    }
    let argon2 = params.argon2(64)?;
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let mut out = Vec::with_capacity(HEADER_LEN + 2 * (NONCE_LEN + real.len() + TAG_LEN));
    out.extend_from_slice(MAGIC);
    for v in [params.m_cost_kib, params.t_cost, params.lanes] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    let header = out.clone();
    let real_slot = (OsRng.next_u32() & 1) as usize;
    let (real_keys, duress_keys) =
        (slot_keys(&argon2, real_code, &salt)?, slot_keys(&argon2, duress_code, &salt)?);
    for slot in 0..2 {
        let (keys, secret) = if slot == real_slot { (&real_keys, real) } else { (&duress_keys, duress) };
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(keys[32 * slot..32 * slot + 32].into());
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &slot_aad(&header, slot as u8) })
            .map_err(|_| KeystoreError::Corrupt("encryption failed"))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// Checks `file`'s shape; returns its stretching parameters and the length of one slot.
fn shape(file: &[u8]) -> Result<(KdfParams, usize), KeystoreError> {
    if file.len() < 8 || &file[..8] != MAGIC {
        return Err(KeystoreError::Corrupt("it does not start with VIGILKD1"));
    }
    let slots = file.len().saturating_sub(HEADER_LEN);
    if file.len() < HEADER_LEN || !slots.is_multiple_of(2) || slots / 2 < NONCE_LEN + TAG_LEN {
        return Err(KeystoreError::Corrupt("it is cut short or has bytes added"));
    }
    let word = |i: usize| u32::from_le_bytes(file[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"));
    Ok((KdfParams { m_cost_kib: word(0), t_cost: word(1), lanes: word(2) }, slots / 2))
}

/// Checks that `file` has the two-code layout without opening it (no code needed).
pub fn check_two(file: &[u8]) -> Result<(), KeystoreError> {
    shape(file)?;
    Ok(())
}

/// Opens whichever slot `code` seals; the same work is done whichever it is, or if it is
/// none ([`KeystoreError::WrongPassphrase`]).
pub fn open_two(file: &[u8], code: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let (params, slot_len) = shape(file)?;
    let header = &file[..HEADER_LEN];
    let keys = slot_keys(&params.argon2(64)?, code, &header[20..36])?;
    let mut opened = None;
    // Both slots are tried every time: no early exit on the first that opens.
    for slot in 0..2 {
        let start = HEADER_LEN + slot * slot_len;
        let (nonce, sealed) = file[start..start + slot_len].split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(keys[32 * slot..32 * slot + 32].into());
        let result = cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &slot_aad(header, slot as u8) });
        if let Ok(plain) = result {
            opened = Some(Zeroizing::new(plain));
        }
    }
    opened.ok_or(KeystoreError::WrongPassphrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_opens_its_own_secret_and_a_wrong_code_neither() {
        let file =
            seal_two(b"real secret!", b"1234", b"decoy secret", b"9999", KdfParams::FOR_TESTS).unwrap();
        assert_eq!(&open_two(&file, b"1234").unwrap()[..], b"real secret!");
        assert_eq!(&open_two(&file, b"9999").unwrap()[..], b"decoy secret");
        assert!(matches!(open_two(&file, b"0000"), Err(KeystoreError::WrongPassphrase)));
        assert!(seal_two(b"a", b"x", b"ab", b"y", KdfParams::FOR_TESTS).is_err(), "lengths must match");
        assert!(seal_two(b"a", b"x", b"b", b"x", KdfParams::FOR_TESTS).is_err(), "codes must differ");
    }

    #[test]
    fn the_real_slot_is_drawn_at_random() {
        let mut slots = std::collections::HashSet::new();
        for _ in 0..40 {
            let file = seal_two(b"R", b"real", b"D", b"duress", KdfParams::FOR_TESTS).unwrap();
            let (_, slot_len) = shape(&file).unwrap();
            // Which slot does the real code open? Alter slot 0 and see whether it still opens.
            let mut altered = file.clone();
            altered[HEADER_LEN + slot_len - 1] ^= 1;
            slots.insert(open_two(&altered, b"real").is_ok());
        }
        assert_eq!(slots.len(), 2, "the real secret always sat in the same slot");
    }

    #[test]
    fn every_altered_or_cut_byte_is_refused() {
        let file = seal_two(b"real", b"1", b"fake", b"2", KdfParams::FOR_TESTS).unwrap();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 1;
            // One slot may still open with its own code; an altered byte never changes a secret.
            for (code, secret) in [(b"1", b"real"), (b"2", b"fake")] {
                if let Ok(plain) = open_two(&bad, code) {
                    assert_eq!(&plain[..], secret, "byte {i} altered a secret");
                    assert!(i >= HEADER_LEN, "a header byte {i} altered unnoticed");
                }
            }
        }
        for len in 0..file.len() {
            assert!(open_two(&file[..len], b"1").is_err(), "cut at {len} opened");
        }
    }
}
