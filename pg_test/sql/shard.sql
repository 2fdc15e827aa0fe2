-- Readiness for sharding with Citus (docs/scaling.md), on a schema of hostile names of its own,
-- in a transaction rolled back at the end: the rows, their fixes run in order, what is left.
\set SHOW_CONTEXT never
\pset null (null)
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE SCHEMA "we""ird; sch";
CREATE TABLE "we""ird; sch"."t'x" ("workspaceId" uuid, "i d" int PRIMARY KEY, "na$$me" text);
CREATE UNIQUE INDEX "u%s'x" ON "we""ird; sch"."t'x" ("na$$me") NULLS NOT DISTINCT WHERE "i d" > 0;
CREATE TABLE "we""ird; sch"."c)hild" ("workspaceId" uuid NOT NULL,
    "ref;" int CONSTRAINT "f'k" REFERENCES "we""ird; sch"."t'x" ("i d") ON UPDATE CASCADE ON DELETE SET NULL);
CREATE TABLE "we""ird; sch"."p$$arent" ("workspaceId" uuid NOT NULL, "k%s" int PRIMARY KEY);
ALTER TABLE "we""ird; sch"."c)hild" ADD COLUMN "p;" int
    CONSTRAINT "f2'k" REFERENCES "we""ird; sch"."p$$arent" ("k%s") ON UPDATE CASCADE ON DELETE SET NULL;
CREATE TABLE "we""ird; sch"."glob""al" (k int PRIMARY KEY, w int CONSTRAINT "g'k" REFERENCES "we""ird; sch"."t'x" ("i d"));
CREATE TABLE "we""ird; sch".inh_parent (a int);
CREATE TABLE "we""ird; sch".inh_child ("workspaceId" uuid) INHERITS ("we""ird; sch".inh_parent);
CREATE TABLE "we""ird; sch".texty ("workspaceId" text NOT NULL);
CREATE POLICY "p;1" ON "we""ird; sch"."c)hild" USING ("workspaceId" = (SELECT tenancy.current_workspace_id()));
CREATE FUNCTION "we""ird; sch".noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER "t""g" BEFORE INSERT ON "we""ird; sch"."c)hild" FOR EACH ROW EXECUTE FUNCTION "we""ird; sch".noop();
-- this schema's rows
SELECT rule, blocker, object, fix FROM tenancy.shard_readiness() WHERE object LIKE '"we""ird; sch".%';
-- the fixes, in order: each runs as written
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT fix FROM tenancy.shard_readiness() WHERE object LIKE '"we""ird; sch".%' AND fix IS NOT NULL LOOP
        EXECUTE r.fix;
    END LOOP;
END $$;
-- left: what a human decides (a reference table referencing a tenant table, and so the key it
-- references and the foreign keys to that key; inheritance, the
-- column's type, the policy's sub-query, the trigger)
SELECT rule, blocker, object FROM tenancy.shard_readiness() WHERE object LIKE '"we""ird; sch".%';
-- the rebuilt keys
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = '"we""ird; sch"'::regnamespace AND contype IN ('p', 'u', 'f') ORDER BY 1;
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index WHERE indexrelid = '"we""ird; sch"."u%s''x"'::regclass;
-- shard_plan() refuses while blockers remain
SELECT tenancy.shard_plan();
ROLLBACK;
-- bad input
SELECT * FROM tenancy.shard_readiness(NULL);
SELECT tenancy.shard_plan(NULL);
-- another column name: nothing has it, every table is a reference table candidate
SELECT DISTINCT rule, blocker FROM tenancy.shard_readiness('no_such_column') WHERE rule <> 'policy_with_subquery' AND rule <> 'trigger_on_table' ORDER BY 1;
