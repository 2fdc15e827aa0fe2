//! The SQL functions of per-workspace encryption.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

use super::{cipher, keys};
use crate::error::{TenancyError, TenancyResult};
use crate::uuid_text::canonical;

type Out<T> = Result<Option<T>, pgrx::pg_sys::panic::ErrorReport>;

/// The workspace a call is for: the given one or the current context. Another workspace than
/// the context's only for a role that reads without row-level security (superuser, BYPASSRLS:
/// the cross-workspace role of `begin_cross_workspace()`).
fn workspace_for(given: Option<pgrx::Uuid>, what: &str) -> TenancyResult<[u8; 16]> {
    let context = crate::context::current();
    match (given, context) {
        (None, Some(c)) => Ok(c),
        (None, None) => Err(TenancyError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("tenancy.{what}() needs a workspace: tenancy.workspace_id is not set"),
        )
        .hint("Set the context with tenancy.set_workspace(id) first (or pass the workspace, as the cross-workspace role).")),
        (Some(w), c) if Some(*w.as_bytes()) == c => Ok(*w.as_bytes()),
        (Some(w), _) => {
            // SAFETY: role attribute lookups of the current user.
            let free = unsafe {
                let user = pgrx::pg_sys::GetUserId();
                pgrx::pg_sys::superuser_arg(user) || pgrx::pg_sys::has_bypassrls_privilege(user)
            };
            if free {
                Ok(*w.as_bytes())
            } else {
                Err(TenancyError::new(
                    Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "permission denied to use the data key of workspace {} from another context",
                        canonical(w.as_bytes())
                    ),
                )
                .detail("Only a role that reads without row-level security (the cross-workspace role of tenancy.begin_cross_workspace()) names another workspace than its context's.")
                .hint("Set the context to that workspace with tenancy.set_workspace(id)."))
            }
        }
    }
}

fn encrypt_bytes(data: &[u8], workspace: Option<pgrx::Uuid>) -> TenancyResult<Vec<u8>> {
    let ws = workspace_for(workspace, "encrypt")?;
    let (version, key) = crate::pg::local::internal(|| keys::current(ws))?;
    cipher::seal(&key, ws, version, data)
}

fn decrypt_bytes(
    ct: &[u8],
    workspace: Option<pgrx::Uuid>,
    what: &str,
) -> TenancyResult<zeroize::Zeroizing<Vec<u8>>> {
    let ws = workspace_for(workspace, what)?;
    let parsed = cipher::parse(ct)?;
    if parsed.workspace != ws {
        return Err(TenancyError::new(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "the ciphertext belongs to workspace {}, not to workspace {}",
                canonical(&parsed.workspace),
                canonical(&ws)
            ),
        )
        .detail("A value encrypted for one workspace is decrypted in that workspace only (it may have been copied from another workspace's row)."));
    }
    let key = crate::pg::local::internal(|| keys::version(ws, parsed.version))?;
    cipher::open(&key, &parsed).ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!(
                "the ciphertext of workspace {} failed authentication",
                canonical(&ws)
            ),
        )
        .detail("It was altered after encryption (or its header was changed): it is not decrypted.")
    })
}

/// `tenancy.encrypt(data bytea, workspace uuid DEFAULT NULL)`.
#[pg_extern(volatile, parallel_unsafe, name = "encrypt")]
fn encrypt_bytea(
    data: Option<&[u8]>,
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Out<Vec<u8>> {
    data.map(|d| encrypt_bytes(d, workspace))
        .transpose()
        .map_err(Into::into)
}

/// `tenancy.encrypt(data text, workspace uuid DEFAULT NULL)`.
#[pg_extern(volatile, parallel_unsafe, name = "encrypt")]
fn encrypt_text(
    data: Option<&str>,
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Out<Vec<u8>> {
    data.map(|d| encrypt_bytes(d.as_bytes(), workspace))
        .transpose()
        .map_err(Into::into)
}

/// `tenancy.decrypt(ciphertext bytea, workspace uuid DEFAULT NULL)`.
#[pg_extern(volatile, parallel_restricted)]
fn decrypt(
    ciphertext: Option<&[u8]>,
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Out<Vec<u8>> {
    ciphertext
        .map(|c| decrypt_bytes(c, workspace, "decrypt").map(|p| p.to_vec()))
        .transpose()
        .map_err(Into::into)
}

/// `tenancy.decrypt_text(ciphertext bytea, workspace uuid DEFAULT NULL)`.
#[pg_extern(volatile, parallel_restricted)]
fn decrypt_text(
    ciphertext: Option<&[u8]>,
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Out<String> {
    ciphertext
        .map(|c| {
            let plain = decrypt_bytes(c, workspace, "decrypt_text")?;
            std::str::from_utf8(&plain).map(str::to_owned).map_err(|_| {
                TenancyError::new(
                    Code::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
                    "the decrypted value is not valid UTF-8 text",
                )
                .hint("It was encrypted from bytea: use tenancy.decrypt() for it.")
            })
        })
        .transpose()
        .map_err(Into::into)
}

/// `tenancy.ciphertext_key_version(ciphertext bytea)`: the data key version a ciphertext names
/// (NULL for NULL; 22P03 for what is not a tenancy ciphertext).
#[pg_extern(immutable, parallel_safe, strict)]
fn ciphertext_key_version(ciphertext: &[u8]) -> Result<i32, pgrx::pg_sys::panic::ErrorReport> {
    Ok(cipher::parse(ciphertext)
        .map_err(pgrx::pg_sys::panic::ErrorReport::from)?
        .version as i32)
}

/// `tenancy.current_key_version(workspace uuid DEFAULT NULL)`: the version new values of the
/// workspace are encrypted with (created if the workspace has none yet).
#[pg_extern(volatile, parallel_unsafe)]
fn current_key_version(
    workspace: default!(Option<pgrx::Uuid>, "NULL"),
) -> Result<i32, pgrx::pg_sys::panic::ErrorReport> {
    let ws = workspace_for(workspace, "current_key_version")?;
    Ok(crate::pg::local::internal(|| keys::current(ws))?.0 as i32)
}

fn require(workspace: Option<pgrx::Uuid>, what: &str) -> TenancyResult<[u8; 16]> {
    workspace.map(|w| *w.as_bytes()).ok_or_else(|| {
        TenancyError::new(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("tenancy.{what}(): workspace must not be NULL"),
        )
        .hint("Name the workspace whose data keys to change.")
    })
}

/// `tenancy.rotate_workspace_key(workspace uuid)`: the new version.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_workspace_key(
    workspace: Option<pgrx::Uuid>,
) -> Result<i32, pgrx::pg_sys::panic::ErrorReport> {
    let ws = require(workspace, "rotate_workspace_key")?;
    let v = crate::pg::local::internal(|| keys::rotate_workspace(ws))?;
    pgrx::log!(
        "tenancy: data key of workspace {} rotated to version {v} by role {}",
        canonical(&ws),
        session_role()
    );
    Ok(v as i32)
}

fn session_role() -> String {
    // SAFETY: reading the session user id.
    crate::pg::catalog::role_name(unsafe { pgrx::pg_sys::GetSessionUserId() })
}

/// `tenancy.shred_workspace_key(workspace uuid)`: the number of key versions destroyed.
#[pg_extern(volatile, parallel_unsafe)]
fn shred_workspace_key(
    workspace: Option<pgrx::Uuid>,
) -> Result<i32, pgrx::pg_sys::panic::ErrorReport> {
    let ws = require(workspace, "shred_workspace_key")?;
    let n = crate::pg::local::internal(|| keys::shred(ws))?;
    pgrx::log!(
        "tenancy: data keys of workspace {} shredded ({n} version(s)) by role {}: its ciphertexts can no longer be decrypted once this transaction commits",
        canonical(&ws),
        session_role()
    );
    Ok(n)
}

/// `tenancy.rotate_master_key()`: the number of data keys re-wrapped. Superuser only.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_master_key() -> Result<i32, pgrx::pg_sys::panic::ErrorReport> {
    // SAFETY: role attribute lookup of the current user.
    if !unsafe { pgrx::pg_sys::superuser() } {
        return Err(TenancyError::new(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to rotate the master key",
        )
        .detail("tenancy.rotate_master_key() re-wraps every workspace's data key: it needs a superuser.")
        .into());
    }
    let n = crate::pg::local::internal(keys::rotate_master)?;
    pgrx::log!(
        "tenancy: {n} data key(s) re-wrapped with the first master key by role {}",
        session_role()
    );
    Ok(n)
}

pgrx::extension_sql_file!(
    "../../sql/crypto.sql",
    name = "crypto_sql",
    requires = [
        "stats_sql",
        encrypt_bytea,
        encrypt_text,
        decrypt,
        decrypt_text,
        ciphertext_key_version,
        current_key_version,
        rotate_workspace_key,
        shred_workspace_key,
        rotate_master_key
    ]
);
