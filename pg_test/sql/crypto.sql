-- Per-workspace encryption without a master key configured (the regress cluster has none; the
-- round trips, rotation and shredding are in tests/encryption.rs, on a cluster with a keyring):
-- what fails, how, and in which order the checks run.
\set SHOW_CONTEXT never
\set VERBOSITY default
\pset null (null)
\set a '''a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'''
-- no context: 55000
RESET tenancy.workspace_id;
SELECT tenancy.encrypt('secret'::text);
-- a context but no master key: 55000, naming the settings
SELECT set_config('tenancy.workspace_id', :a, false) IS NOT NULL AS set;
SELECT tenancy.encrypt('secret'::text);
SELECT tenancy.encrypt('\x00'::bytea);
-- NULL in, NULL out (no key needed)
SELECT tenancy.encrypt(NULL::text), tenancy.decrypt(NULL), tenancy.decrypt_text(NULL);
-- not a tenancy ciphertext: 22P03 before any key is looked up
SELECT tenancy.decrypt('\x00'::bytea);
SELECT tenancy.decrypt('plain'::bytea);
SELECT tenancy.ciphertext_key_version('\x01'::bytea);
-- a well-formed header naming another workspace: 42501, before any key
SELECT tenancy.decrypt(('\x01' || '00000001' || replace('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '-', '') || repeat('00', 40))::bytea);
SELECT tenancy.ciphertext_key_version(('\x01' || '00000007' || repeat('00', 56))::bytea);
-- administration: NULL workspace refused; the master key only by a superuser
SELECT tenancy.rotate_workspace_key(NULL);
SELECT tenancy.shred_workspace_key(NULL);
CREATE ROLE crypto_nobody;
SET ROLE crypto_nobody;
SELECT tenancy.rotate_master_key();
SELECT tenancy.shred_workspace_key(:a);
SELECT count(*) FROM tenancy.workspace_keys;
RESET ROLE;
DROP ROLE crypto_nobody;
-- reencrypt: bad arguments
CALL tenancy.reencrypt('"Secret"', 'value');
CALL tenancy.reencrypt('"Secret"', 'name', batch_size => 0);
-- the key table holds no key yet, and is dumped with the database
SELECT count(*) FROM tenancy.workspace_keys;
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'tenancy' AND c.relname = 'workspace_keys';
RESET tenancy.workspace_id;
