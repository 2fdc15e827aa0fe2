-- Per-workspace encryption (src/crypto.rs, docs/encryption.md): one data key per workspace and
-- version, stored only wrapped by a master key that lives outside the database.

CREATE TABLE @extschema@.workspace_keys (
    workspace_id uuid NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    wrapped_key bytea,
    master_key_id text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retired_at timestamptz,
    shredded_at timestamptz,
    PRIMARY KEY (workspace_id, version),
    CHECK ((wrapped_key IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped_key IS NULL) = (master_key_id IS NULL))
);
REVOKE ALL ON @extschema@.workspace_keys FROM PUBLIC;
-- dumped with the database (wrapped keys only: a dump holds no key it could decrypt with alone)
SELECT pg_catalog.pg_extension_config_dump('@extschema@.workspace_keys', '');
COMMENT ON TABLE @extschema@.workspace_keys IS
'Per-workspace data keys, each wrapped (XChaCha20-Poly1305) by the master key named by master_key_id; the master keys live outside the database (tenancy.master_key_file or tenancy.master_key_command). The current version of a workspace is the one not retired; shredded keys keep their row without key. Read and written by tenancy''s functions only.';

COMMENT ON FUNCTION @extschema@.encrypt(bytea, uuid) IS
'Encrypts data with the data key of the workspace (NULL: the current context; another workspace only for a role without row-level security, the cross-workspace role), XChaCha20-Poly1305, the workspace and key version bound as associated data; the workspace''s first key is created on first use. Pass plaintext as a query parameter, not a literal (log_statement would log it). Errors: 55000 no context or no master key, 42501 another workspace, 42704 shredded.';
COMMENT ON FUNCTION @extschema@.encrypt(text, uuid) IS
'Encrypts text (its UTF-8 bytes) as encrypt(bytea, uuid) does; decrypt it with decrypt_text().';
COMMENT ON FUNCTION @extschema@.decrypt(bytea, uuid) IS
'Decrypts a value of tenancy.encrypt() in its own workspace (NULL: the current context). Errors: 42501 a ciphertext of another workspace, or another workspace than the context''s without the cross-workspace role; 42704 a key version the workspace does not have, or a shredded key; 22P03 not a tenancy ciphertext, or altered (fails authentication); 55000 no master key, or the key''s master key is not in the keyring.';
COMMENT ON FUNCTION @extschema@.decrypt_text(bytea, uuid) IS
'decrypt() as text; 22021 when the bytes are not UTF-8 (a value encrypted from bytea).';
COMMENT ON FUNCTION @extschema@.ciphertext_key_version(bytea) IS
'The data key version a ciphertext of tenancy.encrypt() names (22P03 for anything else).';
COMMENT ON FUNCTION @extschema@.current_key_version(uuid) IS
'The data key version new values of the workspace (NULL: the current context) are encrypted with; creates the workspace''s first key.';
COMMENT ON FUNCTION @extschema@.rotate_workspace_key(uuid) IS
'Retires the workspace''s current data key and creates the next version, returned: new values use it, old ciphertexts stay readable (re-encrypt them with CALL tenancy.reencrypt(...)). Logged. Revoked from PUBLIC.';
COMMENT ON FUNCTION @extschema@.shred_workspace_key(uuid) IS
'Destroys every data key of the workspace (crypto-shredding): once committed, its ciphertexts cannot be decrypted, here or in a copy made after; returns the number of versions destroyed; logged in the server log. A backup taken before still holds the wrapped keys: rotate the master key and destroy the old one (docs/encryption.md). Revoked from PUBLIC.';
COMMENT ON FUNCTION @extschema@.rotate_master_key() IS
'Reads the keyring again and re-wraps every data key not wrapped by its first key; returns how many (no value is re-encrypted). Then remove the old master key from the keyring. Superuser only; logged.';
REVOKE ALL ON FUNCTION @extschema@.rotate_workspace_key(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.shred_workspace_key(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.rotate_master_key() FROM PUBLIC;

-- Re-encrypt a column's values older than their workspace's current key version, batch by
-- batch, each batch committed (CALL it outside a transaction block). Runs as the caller, one
-- workspace context at a time: the caller needs UPDATE on the table and reads it under its
-- policies as that workspace. No SET clause: a procedure with one cannot commit; every name is
-- qualified.
CREATE PROCEDURE @extschema@.reencrypt(tbl regclass, col name, workspace_column name DEFAULT 'workspaceId',
                                       batch_size integer DEFAULT 1000)
LANGUAGE plpgsql
AS $fn$
DECLARE
    ws uuid;
    cur integer;
    n bigint;
    total bigint := 0;
BEGIN
    IF tbl IS NULL OR col IS NULL OR workspace_column IS NULL OR batch_size IS NULL THEN
        RAISE EXCEPTION 'tenancy.reencrypt(): arguments must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'tenancy.reencrypt(): batch_size must be at least 1, not %', batch_size
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col
                      AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'column "%" of % is not a bytea column', col, tbl
            USING ERRCODE = '42703', HINT = 'Name the column that holds tenancy.encrypt() values.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = workspace_column
                      AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'column "%" of % is not a uuid column', workspace_column, tbl
            USING ERRCODE = '42703', HINT = 'Name the table''s workspace column: tenancy.reencrypt(table, column, workspace_column).';
    END IF;
    FOR ws IN EXECUTE pg_catalog.format('SELECT DISTINCT %I FROM %s WHERE %I IS NOT NULL', workspace_column, tbl, col) LOOP
        LOOP
            PERFORM pg_catalog.set_config('tenancy.workspace_id', ws::text, true);
            cur := @extschema@.current_key_version();
            EXECUTE pg_catalog.format(
                'UPDATE %1$s SET %2$I = @extschema@.encrypt(@extschema@.decrypt(%2$I))
                  WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
                        SELECT ctid FROM %1$s WHERE %3$I OPERATOR(pg_catalog.=) $1 AND %2$I IS NOT NULL
                           AND @extschema@.ciphertext_key_version(%2$I) OPERATOR(pg_catalog.<>) $2
                         LIMIT $3))',
                tbl, col, workspace_column) USING ws, cur, batch_size;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
            COMMIT;
            EXIT WHEN n < batch_size;
        END LOOP;
    END LOOP;
    RAISE NOTICE 'tenancy.reencrypt(): % value(s) of %.% re-encrypted', total, tbl, pg_catalog.quote_ident(col);
END
$fn$;
COMMENT ON PROCEDURE @extschema@.reencrypt(regclass, name, name, integer) IS
'Re-encrypts the values of a bytea column of tenancy.encrypt() ciphertexts that are not at their workspace''s current key version (after rotate_workspace_key), batch_size rows at a time, each batch committed: CALL it outside a transaction block. Runs as the caller under each workspace''s context. Errors: 22004, 22023 batch_size < 1, 42703 no such bytea / uuid column.';
