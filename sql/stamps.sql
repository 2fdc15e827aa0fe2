-- Change stamps (src/stamps.rs, docs/caching.md): per (table, workspace), a number that moves
-- when a transaction that changed rows of that workspace in that table commits, and only then.

CREATE FUNCTION @extschema@._change_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_change_trigger';
COMMENT ON FUNCTION @extschema@._change_trigger() IS
'Internal: the trigger of tenancy.track_changes() (BEFORE ... FOR EACH ROW, and AFTER TRUNCATE; arguments: the workspace column, the tracked table''s oid); notes the workspaces a transaction changed, bumped at commit.';

CREATE FUNCTION @extschema@.track_changes(tbl regclass, workspace_column name DEFAULT 'workspaceId')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    coltype regtype;
BEGIN
    IF tbl IS NULL OR workspace_column IS NULL THEN
        RAISE EXCEPTION 'tenancy.track_changes(): table and workspace column must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot track changes of %: not a table', tbl
            USING ERRCODE = '42809', HINT = 'Change stamps are kept for ordinary and partitioned tables.';
    END IF;
    SELECT a.atttypid::regtype INTO coltype FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF coltype IS NULL THEN
        RAISE EXCEPTION 'column "%" of % does not exist', workspace_column, tbl
            USING ERRCODE = '42703', HINT = 'Name the table''s workspace column: tenancy.track_changes(table, column).';
    ELSIF coltype <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'the workspace column "%" of % is of type %, not uuid', workspace_column, tbl, coltype
            USING ERRCODE = '42804';
    END IF;
    -- as the caller: creating triggers needs the TRIGGER privilege on the table (its owner)
    PERFORM @extschema@.untrack_changes(tbl);
    -- row triggers BEFORE (no transition tables, no after-trigger queue: the cheapest form);
    -- the second argument names the tracked table, so a partition's cloned trigger notes it
    EXECUTE format('CREATE TRIGGER tenancy_changes_insert BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_update BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_delete BEFORE DELETE ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
    EXECUTE format('CREATE TRIGGER tenancy_changes_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._change_trigger(%L, %L)', tbl, workspace_column, tbl::oid);
END
$fn$;
COMMENT ON FUNCTION @extschema@.track_changes(regclass, name) IS
'Keeps change stamps for the table: row triggers note the workspaces each statement changes (both of a row moved between workspaces; TRUNCATE: all), and their stamps move when the transaction commits. Needs the TRIGGER privilege on the table (its owner). Idempotent.';

CREATE FUNCTION @extschema@.untrack_changes(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t name;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = tbl AND tgname IN ('tenancy_changes_insert', 'tenancy_changes_update',
                                                 'tenancy_changes_delete', 'tenancy_changes_truncate')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@.untrack_changes(regclass) IS
'Stops keeping change stamps for the table (drops the triggers of track_changes).';

CREATE FUNCTION @extschema@.change_stamp(tbl regclass, workspace uuid DEFAULT NULL)
RETURNS bigint
-- the C function itself (regclass is an oid): no SQL wrapper, no search path to set (it runs no
-- SQL); a cache asks it once per table per request
LANGUAGE c VOLATILE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'change_stamp_wrapper';
COMMENT ON FUNCTION @extschema@.change_stamp(regclass, uuid) IS
'The change stamp of (table, workspace); workspace NULL: the current context. It moves when a transaction that changed rows of that workspace in that table commits, and only then; it never repeats or goes back, across restarts and crashes too. Read it in one statement, then the data in a later one (docs/caching.md).';

CREATE FUNCTION @extschema@.change_stamps(workspace uuid DEFAULT NULL)
RETURNS TABLE (table_name regclass, stamp bigint)
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT t.tgrelid::regclass, @extschema@._change_stamp(t.tgrelid, workspace)
      FROM pg_catalog.pg_trigger t
     WHERE t.tgname = 'tenancy_changes_insert'
       AND t.tgparentid = 0  -- not a partition's clone: stamps are kept for the tracked table
       AND t.tgfoid = '@extschema@._change_trigger()'::pg_catalog.regprocedure
       AND pg_catalog.has_table_privilege(t.tgrelid, 'SELECT')
     ORDER BY 1
$fn$;
COMMENT ON FUNCTION @extschema@.change_stamps(uuid) IS
'The change stamp of the workspace (NULL: the current context) in every tracked table of this database the caller may read.';
COMMENT ON FUNCTION @extschema@._change_stamp(oid, uuid) IS 'Internal: tenancy.change_stamp().';
