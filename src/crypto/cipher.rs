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
    /// nonce | ciphertext | tag
    sealed: &'a [u8],
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
        sealed: &ct[HEADER..],
    })
}

/// Append `nonce | ciphertext | tag` of `msg` under `key` and `aad` to `out` (a fresh random
/// nonce each time): values and wrapped data keys alike.
fn seal_into(out: &mut Vec<u8>, key: &[u8; 32], aad: &[u8], msg: &[u8]) -> TenancyResult<()> {
    let nonce = random::<NONCE>()?;
    let body = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce[..]), Payload { msg, aad })
        .map_err(|_| {
            TenancyError::new(
                Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "value too long to encrypt",
            )
        })?;
    out.extend_from_slice(&nonce[..]);
    out.extend_from_slice(&body);
    Ok(())
}

/// The plaintext of `nonce | ciphertext | tag` under `key` and `aad`; `None` when
/// authentication fails (a changed byte, another key, other associated data).
fn open_sealed(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE + TAG {
        return None;
    }
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&sealed[..NONCE]),
            Payload {
                msg: &sealed[NONCE..],
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Encrypt `plain` for (`workspace`, `version`) with `key`.
pub(crate) fn seal(
    key: &[u8; 32],
    workspace: [u8; 16],
    version: u32,
    plain: &[u8],
) -> TenancyResult<Vec<u8>> {
    let mut header = [0u8; HEADER];
    header[0] = FORMAT;
    header[1..5].copy_from_slice(&version.to_be_bytes());
    header[5..].copy_from_slice(&workspace);
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.extend_from_slice(&header);
    seal_into(&mut out, key, &header, plain)?;
    Ok(out)
}

/// Decrypt; `None` when authentication fails (a changed byte, another key).
pub(crate) fn open(key: &[u8; 32], parsed: &Parsed<'_>) -> Option<Zeroizing<Vec<u8>>> {
    open_sealed(key, parsed.header, parsed.sealed)
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
    let mut out = Vec::with_capacity(NONCE + 32 + TAG);
    seal_into(&mut out, master, &wrap_aad(workspace, version), key)?;
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
    let plain = open_sealed(master, &wrap_aad(workspace, version), wrapped)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain);
    Some(key)
}
