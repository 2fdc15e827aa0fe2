//! The ciphertext format and the AEAD (XChaCha20-Poly1305, RustCrypto's `chacha20poly1305`:
//! 192-bit random nonces, so a nonce never repeats in practice however many values a key
//! encrypts).
//!
//! A value: `01` (format) | key version (4 bytes, big-endian) | workspace id (16 bytes) | nonce
//! (24 bytes) | ciphertext | tag (16 bytes): 61 bytes more than the plaintext. The first 21
//! bytes (the header) are the associated data: a changed version or workspace, or any changed
//! byte, fails authentication. A data key is wrapped the same way by a master key, with
//! "tenancy data key v1" | workspace | version as associated data.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode as Code;
use zeroize::Zeroizing;

use crate::error::{TenancyError, TenancyResult};

const FORMAT: u8 = 1;
pub(crate) const HEADER: usize = 1 + 4 + 16;
const NONCE: usize = 24;
const TAG: usize = 16;
pub(crate) const OVERHEAD: usize = HEADER + NONCE + TAG;

/// `n` bytes from PostgreSQL's cryptographically secure source (OpenSSL's, or the kernel's).
pub(crate) fn random<const N: usize>() -> TenancyResult<Zeroizing<[u8; N]>> {
    let mut buf = Zeroizing::new([0u8; N]);
    // SAFETY: writes exactly N bytes into the buffer.
    let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), N) };
    if !ok {
        return Err(TenancyError::new(
            Code::ERRCODE_SYSTEM_ERROR,
            "could not generate random bytes for per-workspace encryption",
        )
        .hint("PostgreSQL's strong random source (pg_strong_random) failed; check the server's OpenSSL or /dev/urandom."));
    }
    Ok(buf)
}

/// The parts of a ciphertext.
pub(crate) struct Parsed<'a> {
    pub(crate) version: u32,
    pub(crate) workspace: [u8; 16],
    header: &'a [u8],
    nonce: &'a [u8],
    body: &'a [u8],
}

/// 22P03 unless `ct` has the shape of a tenancy ciphertext.
pub(crate) fn parse(ct: &[u8]) -> TenancyResult<Parsed<'_>> {
    if ct.len() < OVERHEAD || ct[0] != FORMAT {
        return Err(TenancyError::new(
            Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
            "not a tenancy ciphertext",
        )
        .detail(format!(
            "A ciphertext of tenancy.encrypt() starts with byte 01 and is at least {OVERHEAD} bytes long; this value has {} bytes{}.",
            ct.len(),
            if ct.is_empty() { String::new() } else { format!(" and starts with {:02x}", ct[0]) }
        ))
        .hint("Decrypt only what tenancy.encrypt() returned."));
    }
    Ok(Parsed {
        version: u32::from_be_bytes(ct[1..5].try_into().expect("4 bytes")),
        workspace: ct[5..21].try_into().expect("16 bytes"),
        header: &ct[..HEADER],
        nonce: &ct[HEADER..HEADER + NONCE],
        body: &ct[HEADER + NONCE..],
    })
}

/// Encrypt `plain` for (`workspace`, `version`) with `key`.
pub(crate) fn seal(
    key: &[u8; 32],
    workspace: [u8; 16],
    version: u32,
    plain: &[u8],
) -> TenancyResult<Vec<u8>> {
    let nonce = random::<NONCE>()?;
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.push(FORMAT);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&workspace);
    let cipher = XChaCha20Poly1305::new(key.into());
    let body = cipher
        .encrypt(
            XNonce::from_slice(&nonce[..]),
            Payload {
                msg: plain,
                aad: &out[..HEADER],
            },
        )
        .map_err(|_| {
            TenancyError::new(
                Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "value too long to encrypt",
            )
        })?;
    out.extend_from_slice(&nonce[..]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decrypt; `None` when authentication fails (a changed byte, another key).
pub(crate) fn open(key: &[u8; 32], parsed: &Parsed<'_>) -> Option<Zeroizing<Vec<u8>>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(parsed.nonce),
            Payload {
                msg: parsed.body,
                aad: parsed.header,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

fn wrap_aad(workspace: [u8; 16], version: u32) -> Vec<u8> {
    let mut aad = b"tenancy data key v1".to_vec();
    aad.extend_from_slice(&workspace);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// A data key wrapped by a master key: nonce | ciphertext | tag.
pub(crate) fn wrap(
    master: &[u8; 32],
    workspace: [u8; 16],
    version: u32,
    key: &[u8; 32],
) -> TenancyResult<Vec<u8>> {
    let nonce = random::<NONCE>()?;
    let cipher = XChaCha20Poly1305::new(master.into());
    let body = cipher
        .encrypt(
            XNonce::from_slice(&nonce[..]),
            Payload {
                msg: key,
                aad: &wrap_aad(workspace, version),
            },
        )
        .expect("32 bytes always encrypt");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Unwrap a data key; `None` when authentication fails.
pub(crate) fn unwrap(
    master: &[u8; 32],
    workspace: [u8; 16],
    version: u32,
    wrapped: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    if wrapped.len() != NONCE + 32 + TAG {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(master.into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&wrapped[..NONCE]),
                Payload {
                    msg: &wrapped[NONCE..],
                    aad: &wrap_aad(workspace, version),
                },
            )
            .ok()?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain);
    Some(key)
}
