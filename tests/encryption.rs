//! Per-workspace encryption (issue 18) on a cluster of its own whose master keys are in a file
//! the test writes: round trips of text and bytea from 0 bytes to 1 MB; wrong workspace, wrong
//! version, tampered ciphertext and a missing master key, each with its SQLSTATE; rotation of a
//! workspace key (old values readable, `reencrypt`) and of the master key; shredding (survives a
//! restart; logged) and the procedure that makes a dump taken before it useless; `pg_dump`
//! holds no unwrapped key (the test unwraps the keys itself and searches the dump for them);
//! 16 concurrent sessions; the Dittofeed migration of `"Secret"`.

use std::io::Write;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use tenancy_it::*;

const APP: &str = "crypto_app";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Write the keyring (one hex key per line), readable by the server's user alone.
fn write_keyring(path: &std::path::Path, keys: &[&str]) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "# tenancy master keys: the first one wraps").unwrap();
    for k in keys {
        writeln!(f, "{k}").unwrap();
    }
    drop(f);
    let run = |args: &[&str]| {
        let s = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap();
        assert!(s.success(), "{args:?}");
    };
    // SAFETY: plain libc call.
    if unsafe { libc_geteuid() } == 0 {
        run(&["chown", "postgres:postgres", path.to_str().unwrap()]);
    }
    run(&["chmod", "0600", path.to_str().unwrap()]);
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn random_key(c: &mut Client) -> String {
    c.query_one("SELECT encode(gen_random_bytes(32), 'hex')", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|_| {
            c.query_one("SELECT md5(random()::text) || md5(random()::text)", &[])
                .unwrap()
                .get(0)
        })
}

fn code<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    sqlstate(&r.unwrap_err())
}

fn set_ws(c: &mut Client, ws: &str) {
    c.query_one(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&ws],
    )
    .unwrap();
}

fn enc(c: &mut Client, data: &[u8]) -> Vec<u8> {
    c.query_one("SELECT tenancy.encrypt($1::bytea)", &[&data])
        .unwrap()
        .get(0)
}

fn dec(c: &mut Client, ct: &[u8]) -> Result<Vec<u8>, postgres::Error> {
    c.query_one("SELECT tenancy.decrypt($1)", &[&ct])
        .map(|r| r.get(0))
}

/// Unwrap a data key as tenancy does (src/crypto/cipher.rs): the test's own implementation.
fn unwrap_key(master: &[u8], ws: &[u8; 16], version: u32, wrapped: &[u8]) -> Vec<u8> {
    let mut aad = b"tenancy data key v1".to_vec();
    aad.extend_from_slice(ws);
    aad.extend_from_slice(&version.to_be_bytes());
    XChaCha20Poly1305::new(master.into())
        .decrypt(
            XNonce::from_slice(&wrapped[..24]),
            Payload {
                msg: &wrapped[24..],
                aad: &aad,
            },
        )
        .expect("the test unwraps the key with the master key")
}

fn open_value(key: &[u8], ct: &[u8]) -> Vec<u8> {
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&ct[21..45]),
            Payload {
                msg: &ct[45..],
                aad: &ct[..21],
            },
        )
        .expect("the test decrypts with the unwrapped key")
}

fn uuid_bytes(s: &str) -> [u8; 16] {
    unhex(&s.replace('-', "")).try_into().unwrap()
}

#[test]
fn encryption_end_to_end() {
    let cluster = Cluster::start("it-crypto", 25482, &[]);
    let keyfile = cluster.dir().join("master.keys");
    let mut admin = cluster.fixture_db("crypt");
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .unwrap();
    admin
        .batch_execute(&format!("SELECT tenancy.create_app_role('{APP}')"))
        .unwrap();
    let a = ws_id(&mut admin, "root", 1);
    let b = ws_id(&mut admin, "root", 2);

    // no master key configured: 55000
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &a);
    assert_eq!(
        code(app.query_one("SELECT tenancy.encrypt('x'::text)", &[])),
        "55000"
    );
    // a key file others can read: F0000; a malformed one: F0000, its content not in the message
    let k1 = random_key(&mut admin);
    write_keyring(&keyfile, &[&k1]);
    std::process::Command::new("chmod")
        .args(["0644", keyfile.to_str().unwrap()])
        .status()
        .unwrap();
    set_keyfile(&mut admin, Some(&keyfile));
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &a);
    assert_eq!(
        code(app.query_one("SELECT tenancy.encrypt('x'::text)", &[])),
        "F0000"
    );
    write_keyring(&keyfile, &["not a key"]);
    let err = app
        .query_one("SELECT tenancy.encrypt('x'::text)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "F0000");
    assert!(!err.to_string().contains("not a key"), "{err}");
    write_keyring(&keyfile, &[&k1]);

    // round trips, both types, 0 bytes to 1 MB, as the application role under its context
    for n in [0usize, 1, 15, 100, 4096, 65_537, 1 << 20] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        let ct = enc(&mut app, &data);
        assert_eq!(ct.len(), n + 61, "size {n}");
        assert_eq!(dec(&mut app, &ct).unwrap(), data, "bytea of {n} bytes");
        let text: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let back: String = app
            .query_one(
                "SELECT tenancy.decrypt_text(tenancy.encrypt($1::text))",
                &[&text],
            )
            .unwrap()
            .get(0);
        assert_eq!(back, text, "text of {n} bytes");
    }
    let unicode = "clé secrète ✓ 🔑";
    let back: String = app
        .query_one(
            "SELECT tenancy.decrypt_text(tenancy.encrypt($1::text))",
            &[&unicode],
        )
        .unwrap()
        .get(0);
    assert_eq!(back, unicode);
    let null: Option<Vec<u8>> = app
        .query_one("SELECT tenancy.encrypt(NULL::bytea)", &[])
        .unwrap()
        .get(0);
    assert!(null.is_none());
    // decryption writes nothing: no transaction id, and it works in a read-only transaction
    // (a standby's case)
    // (a backend of its own: the key is read from the table, not from a cache)
    let ct = enc(&mut app, b"read only");
    let mut ro = cluster.connect_as("crypt", APP);
    set_ws(&mut ro, &a);
    ro.batch_execute("BEGIN READ ONLY").unwrap();
    assert_eq!(dec(&mut ro, &ct).unwrap(), b"read only");
    let xid: Option<String> = ro
        .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(xid, None, "decrypt assigned a transaction id");
    ro.batch_execute("COMMIT").unwrap();
    // two encryptions of one value differ (random nonces)
    assert_ne!(enc(&mut app, b"same"), enc(&mut app, b"same"));

    // wrong workspace: a ciphertext of A read in B's context, or naming A from B's context
    let secret = enc(&mut app, b"A's api key");
    set_ws(&mut app, &b);
    assert_eq!(code(dec(&mut app, &secret)), "42501");
    assert_eq!(
        code(app.query_one("SELECT tenancy.decrypt($1, $2::text::uuid)", &[&secret, &a])),
        "42501"
    );
    assert_eq!(
        code(app.query_one("SELECT tenancy.encrypt('x'::text, $1::text::uuid)", &[&a])),
        "42501"
    );
    // the superuser (no row-level security) names the workspace
    let plain: Vec<u8> = admin
        .query_one("SELECT tenancy.decrypt($1, $2::text::uuid)", &[&secret, &a])
        .unwrap()
        .get(0);
    assert_eq!(plain, b"A's api key");
    set_ws(&mut app, &a);
    // tampered: every byte of the body, the nonce and the tag, and the format byte: 22P03; the
    // version field: 42704 (no such version); the workspace field: 42501
    for i in (0..secret.len()).step_by(3) {
        let mut t = secret.clone();
        t[i] ^= 0x01;
        let expected = match i {
            0 => "22P03",
            1..=4 => "42704",
            5..=20 => "42501",
            _ => "22P03",
        };
        assert_eq!(code(dec(&mut app, &t)), expected, "byte {i} changed");
    }
    assert_eq!(code(dec(&mut app, &secret[..40])), "22P03", "truncated");
    assert_eq!(code(dec(&mut app, b"plain text")), "22P03");
    // wrong version: the header names version 2, which A does not have yet
    let mut v2 = secret.clone();
    v2[4] = 2;
    assert_eq!(code(dec(&mut app, &v2)), "42704");
    // bytes that are not UTF-8, read as text
    let bin = enc(&mut app, &[0xff, 0xfe, 0x00]);
    assert_eq!(
        code(app.query_one("SELECT tenancy.decrypt_text($1)", &[&bin])),
        "22021"
    );

    // the application role administers nothing and reads no key
    assert_eq!(
        code(app.query_one("SELECT count(*) FROM tenancy.workspace_keys", &[])),
        "42501"
    );
    for f in [
        "SELECT tenancy.rotate_workspace_key($1::text::uuid)",
        "SELECT tenancy.shred_workspace_key($1::text::uuid)",
    ] {
        assert_eq!(code(app.query_one(f, &[&a])), "42501", "{f}");
    }
    assert_eq!(
        code(app.query_one("SELECT tenancy.rotate_master_key()", &[])),
        "42501"
    );

    // rotation of A's data key: old values readable, new ones at version 2, reencrypt moves all
    admin
        .batch_execute(
            "CREATE TABLE vault (id serial PRIMARY KEY, \"workspaceId\" uuid NOT NULL, v bytea)",
        )
        .unwrap();
    admin
        .batch_execute(&format!("GRANT ALL ON vault, vault_id_seq TO {APP}"))
        .unwrap();
    for i in 0..25 {
        let ct = enc(&mut app, format!("value {i}").as_bytes());
        app.execute(
            "INSERT INTO vault (\"workspaceId\", v) VALUES ($1::text::uuid, $2)",
            &[&a, &ct],
        )
        .unwrap();
    }
    let v: i32 = admin
        .query_one("SELECT tenancy.rotate_workspace_key($1::text::uuid)", &[&a])
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    assert_eq!(
        dec(&mut app, &secret).unwrap(),
        b"A's api key",
        "old version readable"
    );
    let new = enc(&mut app, b"new");
    let version: i32 = app
        .query_one("SELECT tenancy.ciphertext_key_version($1)", &[&new])
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    admin
        .batch_execute("CALL tenancy.reencrypt('vault', 'v', batch_size => 10)")
        .unwrap();
    let (n, at2): (i64, i64) = {
        let r = admin
            .query_one("SELECT count(*), count(*) FILTER (WHERE tenancy.ciphertext_key_version(v) = 2) FROM vault", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, at2), (25, 25), "every value re-encrypted");
    let back: Vec<String> = app
        .query("SELECT tenancy.decrypt_text(v) FROM vault ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        back,
        (0..25).map(|i| format!("value {i}")).collect::<Vec<_>>()
    );

    // rotation of the master key: K2 first, K1 kept below, rotate, K1 removed: all readable
    let k2 = random_key(&mut admin);
    write_keyring(&keyfile, &[&k2, &k1]);
    let rewrapped: i32 = admin
        .query_one("SELECT tenancy.rotate_master_key()", &[])
        .unwrap()
        .get(0);
    assert!(rewrapped >= 2, "A's two versions at least: {rewrapped}");
    // a backend that read the keyring before the rotation creates a new workspace's first key:
    // wrapped with the new first key, not its stale one (which is about to be destroyed)
    let late = random_ws(&mut admin);
    admin
        .execute(
            "INSERT INTO \"Workspace\" (id, name) VALUES ($1::text::uuid, $1)",
            &[&late],
        )
        .unwrap();
    set_ws(&mut app, &late);
    let late_secret = enc(&mut app, b"created after the rotation");
    write_keyring(&keyfile, &[&k2]);
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &a);
    assert_eq!(
        dec(&mut app, &secret).unwrap(),
        b"A's api key",
        "after master rotation"
    );
    set_ws(&mut app, &late);
    assert_eq!(
        dec(&mut app, &late_secret).unwrap(),
        b"created after the rotation",
        "wrapped by the new first key"
    );
    set_ws(&mut app, &b);
    let secret_b = enc(&mut app, b"B's api key");

    // pg_dump holds wrapped keys only: unwrap them here, then search the dump for them
    let dump = cluster.dir().join("before-shred.sql");
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "25482",
            "-U",
            "postgres",
            "-d",
            "crypt",
            "-f",
        ])
        .arg(&dump)
        .status()
        .unwrap();
    assert!(out.success());
    let dump_text = std::fs::read_to_string(&dump).unwrap();
    let keys = admin
        .query("SELECT workspace_id::text, version, wrapped_key, master_key_id FROM tenancy.workspace_keys WHERE wrapped_key IS NOT NULL", &[])
        .unwrap();
    assert!(keys.len() >= 3);
    for row in &keys {
        let ws: String = row.get(0);
        let version: i32 = row.get(1);
        let wrapped: Vec<u8> = row.get(2);
        assert!(
            dump_text.contains(&hex(&wrapped)),
            "the dump keeps the wrapped key"
        );
        let key = unwrap_key(&unhex(&k2), &uuid_bytes(&ws), version as u32, &wrapped);
        assert!(
            !dump_text.contains(&hex(&key)),
            "unwrapped key of {ws} v{version} in the dump"
        );
        if ws == b && version == 1 {
            assert_eq!(
                open_value(&key, &secret_b),
                b"B's api key",
                "the test's unwrap is right"
            );
        }
    }
    for k in [&k1, &k2] {
        assert!(!dump_text.contains(k.as_str()), "a master key in the dump");
    }

    // shredding A: unreadable at once, in every session, logged, also after a restart
    let mut other = cluster.connect_as("crypt", APP);
    set_ws(&mut other, &a);
    assert_eq!(
        dec(&mut other, &secret).unwrap(),
        b"A's api key",
        "cached in that backend"
    );
    let shredded: i32 = admin
        .query_one("SELECT tenancy.shred_workspace_key($1::text::uuid)", &[&a])
        .unwrap()
        .get(0);
    assert_eq!(shredded, 2);
    assert_eq!(
        code(dec(&mut other, &secret)),
        "42704",
        "another backend's cached key dropped"
    );
    assert_eq!(
        code(other.query_one("SELECT tenancy.encrypt('x'::text)", &[])),
        "42704"
    );
    let log = std::fs::read_to_string(cluster.dir().join("server.log")).unwrap();
    assert!(
        log.contains(&format!(
            "data keys of workspace {a} shredded (2 version(s)) by role postgres"
        )),
        "audited"
    );
    drop((app, other));
    cluster.restart();
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &a);
    assert_eq!(code(dec(&mut app, &secret)), "42704", "after restart");
    set_ws(&mut app, &b);
    assert_eq!(
        dec(&mut app, &secret_b).unwrap(),
        b"B's api key",
        "B untouched"
    );

    // the procedure: a new master key first, rotate, destroy the old one; then the dump taken
    // before the shredding restores A's wrapped key but nothing can unwrap it
    let mut admin = cluster.connect("crypt");
    let k3 = random_key(&mut admin);
    write_keyring(&keyfile, &[&k3, &k2]);
    admin
        .query_one("SELECT tenancy.rotate_master_key()", &[])
        .unwrap();
    write_keyring(&keyfile, &[&k3]);
    let mut pg = cluster.connect("postgres");
    pg.batch_execute("CREATE DATABASE restored").unwrap();
    let st = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            "25482",
            "-U",
            "postgres",
            "-d",
            "restored",
            "-f",
        ])
        .arg(&dump)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "restore the dump");
    let mut restored = cluster.connect("restored");
    set_ws(&mut restored, &a);
    assert_eq!(
        code(dec(&mut restored, &secret)),
        "55000",
        "old backup: its master key is gone"
    );
    // and in the live database B still reads (its key re-wrapped by K3)
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &b);
    assert_eq!(dec(&mut app, &secret_b).unwrap(), b"B's api key");

    // the keyring from a command instead of the file (as ssl_passphrase_command): the same
    // keys; a failing command and both settings at once: F0000
    set_command(&mut admin, Some(&format!("cat '{}'", keyfile.display())));
    set_keyfile(&mut admin, None);
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &b);
    assert_eq!(
        dec(&mut app, &secret_b).unwrap(),
        b"B's api key",
        "keys from the command"
    );
    set_command(&mut admin, Some("exit 3"));
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &b);
    assert_eq!(code(dec(&mut app, &secret_b)), "F0000", "failing command");
    set_command(&mut admin, Some(&format!("cat '{}'", keyfile.display())));
    set_keyfile(&mut admin, Some(&keyfile));
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &b);
    assert_eq!(code(dec(&mut app, &secret_b)), "F0000", "both set");
    set_command(&mut admin, None);

    // without any master key: 55000
    set_keyfile(&mut admin, None);
    let mut app = cluster.connect_as("crypt", APP);
    set_ws(&mut app, &b);
    assert_eq!(code(dec(&mut app, &secret_b)), "55000");
    set_keyfile(&mut admin, Some(&keyfile));

    // 16 concurrent sessions over 4 workspaces, two of them without a key yet
    let fresh: Vec<String> = (0..2).map(|_| random_ws(&mut admin)).collect();
    for w in &fresh {
        admin
            .execute(
                "INSERT INTO \"Workspace\" (id, name) VALUES ($1::text::uuid, $1)",
                &[w],
            )
            .unwrap();
    }
    let wss: Vec<String> = vec![
        b.clone(),
        ws_id(&mut admin, "root", 3),
        fresh[0].clone(),
        fresh[1].clone(),
    ];
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let ws = wss[i % 4].clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(
                    &format!("host=127.0.0.1 port=25482 user={APP} dbname=crypt"),
                    NoTls,
                )
                .unwrap();
                set_ws(&mut c, &ws);
                for j in 0..40 {
                    let data = format!("session {i} value {j}");
                    let ct = enc(&mut c, data.as_bytes());
                    assert_eq!(dec(&mut c, &ct).unwrap(), data.as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for w in &fresh {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM tenancy.workspace_keys WHERE workspace_id = $1::text::uuid",
                &[w],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "one first key for concurrent first uses");
    }

    // the Dittofeed walkthrough: the migration on the fixture's "Secret", read back per workspace
    // (A's keys are shredded: its secrets could not be encrypted)
    let workspaces: Vec<String> = admin
        .query(
            "SELECT id::text FROM \"Workspace\" WHERE status <> 'Tombstoned' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|w| *w != a)
        .collect();
    for w in &workspaces {
        admin
            .execute(
                "INSERT INTO \"Secret\" (\"workspaceId\", name, value, \"configValue\")
                 VALUES ($1::text::uuid, 'sendgrid', 'SG.' || $1, jsonb_build_object('apiKey', 'key-' || $1))
                 ON CONFLICT DO NOTHING",
                &[w],
            )
            .unwrap();
    }
    let before: i64 = admin
        .query_one("SELECT count(*) FROM \"Secret\"", &[])
        .unwrap()
        .get(0);
    admin
        .batch_execute(include_str!(
            "../examples/dittofeed/0001_encrypt_secrets.sql"
        ))
        .unwrap();
    let mut app = cluster.connect_as("crypt", APP);
    let mut read = 0;
    for w in &workspaces {
        set_ws(&mut app, w);
        let rows = app
            .query(
                "SELECT name, tenancy.decrypt_text(\"valueCiphertext\"), tenancy.decrypt_text(\"configValueCiphertext\")::jsonb ->> 'apiKey'
                   FROM \"Secret\" WHERE \"workspaceId\" = $1::text::uuid AND name = 'sendgrid'",
                &[w],
            )
            .unwrap();
        assert_eq!(rows.len(), 1, "{w}");
        let value: String = rows[0].get(1);
        let api: String = rows[0].get(2);
        assert_eq!((value, api), (format!("SG.{w}"), format!("key-{w}")));
        read += 1;
    }
    assert!(
        read >= 5 && before >= read as i64,
        "{read} workspaces read of {before} secrets"
    );
    let plaintext_columns: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = '\"Secret\"'::regclass AND attname IN ('value', 'configValue') AND NOT attisdropped",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(plaintext_columns, 0);
}

/// ALTER SYSTEM (its own statement: not in a transaction block) and reload.
fn set_keyfile(admin: &mut Client, path: Option<&std::path::Path>) {
    let path = path.map(|p| p.display().to_string());
    alter_system(admin, "tenancy.master_key_file", path.as_deref());
}

fn set_command(admin: &mut Client, command: Option<&str>) {
    alter_system(admin, "tenancy.master_key_command", command);
}

/// ALTER SYSTEM SET (or RESET) `name`, then reload.
fn alter_system(admin: &mut Client, name: &str, value: Option<&str>) {
    match value {
        Some(v) => admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET {name} = '{}'",
                v.replace('\'', "''")
            ))
            .unwrap(),
        None => admin
            .batch_execute(&format!("ALTER SYSTEM RESET {name}"))
            .unwrap(),
    }
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
}
