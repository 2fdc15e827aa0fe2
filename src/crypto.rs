//! Per-workspace encryption (issue 18): envelope keys. A keyring of master keys outside the
//! database ([`keyring`]: a file or a command, never a table or a dump); one data key per
//! workspace and version, stored only wrapped by a master key in `tenancy.workspace_keys`
//! ([`keys`]); values encrypted with authenticated encryption, the workspace and key version
//! bound as associated data ([`cipher`]); the SQL functions ([`sql`], `sql/crypto.sql`).
//!
//! Errors (docs/reference.md, "Errors"): 55000 no master key configured, or a data key wrapped
//! by a master key the keyring no longer holds, or no context; F0000 the key file or command
//! unusable (permissions, format, failure); 42501 another workspace than the context's without
//! the cross-workspace role, a ciphertext of another workspace, `rotate_master_key()` by a
//! non-superuser; 42704 a key version the workspace does not have, a shredded key; 22P03 not a
//! tenancy ciphertext, or one that fails authentication (altered); XX001 a wrapped key that
//! does not unwrap (its row altered); 22021 `decrypt_text()` of bytes that are not UTF-8.

pub(crate) mod cipher;
pub(crate) mod keyring;
pub(crate) mod keys;
mod sql;

pub(crate) use keyring::define_settings;
pub(crate) use keys::on_relcache;
