-- A Drizzle-style migration for Dittofeed: encrypt the provider credentials of "Secret"
-- ("value" text, "configValue" jsonb) with each workspace's own data key (docs/encryption.md).
-- Run as a superuser, or as the migration role inside tenancy.begin_cross_workspace('...'):
-- encrypting for the row's workspace (not the session's context) needs a role that reads
-- without row-level security. The server needs a master key (tenancy.master_key_file).
-- Tested by tests/encryption.rs on the Dittofeed-shaped fixture.

ALTER TABLE "Secret" ADD COLUMN "valueCiphertext" bytea, ADD COLUMN "configValueCiphertext" bytea;

UPDATE "Secret"
   SET "valueCiphertext" = tenancy.encrypt("value", "workspaceId"),
       "configValueCiphertext" = tenancy.encrypt("configValue"::text, "workspaceId");

-- the plaintext columns go; their old row versions stay in the table's free space until
-- VACUUM (FULL) rewrites it, and in WAL and in backups taken before (docs/encryption.md)
ALTER TABLE "Secret" DROP COLUMN "value", DROP COLUMN "configValue";

-- what the application reads instead, after tenancy.set_workspace(workspace):
--   SELECT id, name, tenancy.decrypt_text("valueCiphertext") AS value,
--          tenancy.decrypt_text("configValueCiphertext")::jsonb AS "configValue"
--     FROM "Secret" WHERE "workspaceId" = $1 AND name = $2 LIMIT 1;
-- and writes:
--   INSERT INTO "Secret" ("workspaceId", name, "valueCiphertext") VALUES ($1, $2, tenancy.encrypt($3::text));
