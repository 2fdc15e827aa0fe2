//! The master keys: a keyring read from the file `tenancy.master_key_file` or the output of
//! `tenancy.master_key_command` (as PostgreSQL's `ssl_passphrase_command`), never from a table.
//!
//! Format: one key per line, 64 hexadecimal digits (32 bytes); empty lines and lines starting
//! with `#` are ignored. The first key wraps new and re-wrapped data keys; the others only unwrap
//! (a rotation: put the new key first, keep the old one below it, run `rotate_master_key()`,
//! then delete the old line). A key is named by its id: the first 8 bytes of
//! SHA-256("tenancy master key id v1" || key), in hex, stored beside each wrapped data key.
//!
//! Each backend reads the keyring when it first needs it (not at server start: a backend that
//! never encrypts never holds a key) and keeps it in its memory (zeroed when replaced); it reads
//! it again when the settings change, when a wrapped key names a key it does not have, and
//! before wrapping (a workspace's first key, a rotation: never with a stale first key). Key material never enters an error
//! message, a log line or a table.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::PgSqlErrorCode as Code;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{TenancyError, TenancyResult};
use crate::pg::local::BackendLocal;

static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static KEY_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub(crate) fn define_settings() {
    GucRegistry::define_string_guc(
        c"tenancy.master_key_file",
        c"File holding the master keys of per-workspace encryption (64 hexadecimal digits per line; the first one wraps).",
        c"Server configuration only (postgresql.conf or ALTER SYSTEM; reload). The file must be readable by the server's user alone (mode 0600 or 0400).",
        &KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"tenancy.master_key_command",
        c"Command that prints the master keys of per-workspace encryption, as tenancy.master_key_file holds them.",
        c"Server configuration only (postgresql.conf or ALTER SYSTEM; reload). Run by /bin/sh as the server's user when a backend first needs the keys.",
        &KEY_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
}

/// One master key and its id.
pub(crate) struct MasterKey {
    pub(crate) id: String,
    pub(crate) key: Zeroizing<[u8; 32]>,
}

struct Keyring {
    /// The settings it was read under.
    source: (Option<String>, Option<String>),
    keys: Vec<MasterKey>,
}

static KEYRING: BackendLocal<Option<Keyring>> = BackendLocal::new(None);

fn setting(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
}

fn config_error(message: String) -> TenancyError {
    TenancyError::new(Code::ERRCODE_CONFIG_FILE_ERROR, message).hint(
        "The master keys are 64 hexadecimal digits per line (openssl rand -hex 32); see docs/encryption.md.",
    )
}

fn not_configured() -> TenancyError {
    TenancyError::new(
        Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "no master key is configured for per-workspace encryption",
    )
    .detail("Neither tenancy.master_key_file nor tenancy.master_key_command is set.")
    .hint("A superuser sets one of them in postgresql.conf (or ALTER SYSTEM) and reloads; see docs/encryption.md.")
}

/// The id of a master key.
pub(crate) fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"tenancy master key id v1");
    h.update(key);
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Read the keyring text from the configured source.
fn read_source(source: &(Option<String>, Option<String>)) -> TenancyResult<Zeroizing<String>> {
    match source {
        (Some(_), Some(_)) => Err(TenancyError::new(
            Code::ERRCODE_CONFIG_FILE_ERROR,
            "both tenancy.master_key_file and tenancy.master_key_command are set",
        )
        .hint("Set one of them only.")),
        (None, None) => Err(not_configured()),
        (Some(path), None) => {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| {
                config_error(format!(
                    "could not read the master key file \"{path}\": {e}"
                ))
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(TenancyError::new(
                    Code::ERRCODE_CONFIG_FILE_ERROR,
                    format!("the master key file \"{path}\" has group or world access"),
                )
                .detail("The master keys must be readable by the server's user alone.")
                .hint(format!("chmod 0600 \"{path}\" (as the server's user).")));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_error(format!(
                    "could not read the master key file \"{path}\": {e}"
                ))
            })?;
            Ok(Zeroizing::new(text))
        }
        (None, Some(command)) => {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .map_err(|e| {
                    config_error(format!("could not run tenancy.master_key_command: {e}"))
                })?;
            let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
            let mut stdout = out.stdout;
            stdout.zeroize();
            if !out.status.success() {
                return Err(config_error(format!(
                    "tenancy.master_key_command failed ({})",
                    out.status
                )));
            }
            Ok(text)
        }
    }
}

/// Parse the keyring text: the line numbers of bad lines in errors, never their content.
fn parse(text: &str, what: &str) -> TenancyResult<Vec<MasterKey>> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(config_error(format!(
                "line {} of {what} is not a master key of 64 hexadecimal digits",
                n + 1
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = |c: u8| (c as char).to_digit(16).expect("checked above") as u8;
            key[i] = hex(pair[0]) << 4 | hex(pair[1]);
        }
        keys.push(MasterKey {
            id: key_id(&key),
            key,
        });
    }
    if keys.is_empty() {
        return Err(config_error(format!("{what} holds no master key")));
    }
    Ok(keys)
}

fn current_source() -> (Option<String>, Option<String>) {
    (setting(&KEY_FILE), setting(&KEY_COMMAND))
}

/// Read the keyring again now (a rotation, or a wrapped key naming a key this backend lacks).
pub(crate) fn reload() -> TenancyResult<()> {
    let source = current_source();
    let what = match &source.0 {
        Some(path) => format!("the master key file \"{path}\""),
        None => "the output of tenancy.master_key_command".to_string(),
    };
    let text = read_source(&source)?;
    let keys = parse(&text, &what)?;
    KEYRING.with(|k| *k.borrow_mut() = Some(Keyring { source, keys }));
    Ok(())
}

fn ensure_loaded() -> TenancyResult<()> {
    let source = current_source();
    let fresh = KEYRING.with(|k| k.borrow().as_ref().is_some_and(|r| r.source == source));
    if fresh {
        Ok(())
    } else {
        reload()
    }
}

/// The id and key that wrap (the first of the keyring), read from the source now: a backend
/// that loaded the keyring before a rotation put a new key first must not wrap a new data key
/// with the old one (deleted from the keyring after the rotation, it would take that key with
/// it). Wrapping is rare (a workspace's first key, a rotation), so the read costs little.
pub(crate) fn active() -> TenancyResult<(String, Zeroizing<[u8; 32]>)> {
    reload()?;
    Ok(KEYRING.with(|k| {
        let k = k.borrow();
        let first = &k.as_ref().expect("loaded above").keys[0];
        (first.id.clone(), first.key.clone())
    }))
}

/// `f` with the key named `id`, reading the keyring again once if this backend lacks it;
/// 55000 when the configured keyring does not hold it.
pub(crate) fn with_key<R>(id: &str, f: impl FnOnce(&MasterKey) -> R) -> TenancyResult<R> {
    ensure_loaded()?;
    let has = |id: &str| {
        KEYRING.with(|k| {
            k.borrow()
                .as_ref()
                .is_some_and(|r| r.keys.iter().any(|m| m.id == id))
        })
    };
    if !has(id) {
        reload()?;
        if !has(id) {
            return Err(TenancyError::new(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("master key {id} is not in the configured keyring"),
            )
            .detail("The data key was wrapped by a master key that tenancy.master_key_file or tenancy.master_key_command no longer provides (rotated away, or destroyed).")
            .hint("Put that master key back in the keyring (below the first one) to read it; see docs/encryption.md."));
        }
    }
    Ok(KEYRING.with(|k| {
        let k = k.borrow();
        let ring = k.as_ref().expect("loaded above");
        f(ring
            .keys
            .iter()
            .find(|m| m.id == id)
            .expect("checked above"))
    }))
}
