-- Per-workspace row quotas. The trigger and its caches are in src/quota.rs; this file holds
-- the bookkeeping tables, the administrative functions and the quota_usage view.
--
-- Errors (see the "Errors" table of docs/reference.md):
--   53400 configuration_limit_exceeded  a statement would take a workspace over its limit
--   22023 invalid_parameter_value       negative max_rows
--   22004 null_value_not_allowed        NULL table
--   42703 undefined_column              workspace column missing
--   42804 datatype_mismatch             workspace column not uuid
--   42601 syntax_error                  counted_when not a single expression
--   55000 object_not_in_prerequisite_state  set_quota on a table without enforce_quota

-- Enforced tables.
CREATE TABLE @extschema@.quota_table (
    tbl regclass PRIMARY KEY,
    workspace_column name NOT NULL,
    counted_when text,
    enforced_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE @extschema@.quota_table IS
'Tables under quota enforcement (written by tenancy.enforce_quota / release_quota).';

-- Tables counted in shared memory (tenancy preloaded) since their last recount: their rows in
-- tenancy.quota_counter are stale, and the table path (no preload) refuses them until
-- enforce_quota() recounts. Rows are inserted by the quota trigger in the writing transaction
-- (no unique key: an insert never waits for another session) and deleted by enforce_quota,
-- release_quota and the drop event trigger.
CREATE TABLE @extschema@.quota_shared_mark (
    tbl regclass NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quota_shared_mark_tbl ON @extschema@.quota_shared_mark (tbl);
COMMENT ON TABLE @extschema@.quota_shared_mark IS
'Tables counted in shared memory since their last recount (their tenancy.quota_counter rows are stale). Written by the quota trigger and enforce_quota.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quota_shared_mark', '');

-- Limits: a NULL workspace_id row is the table's default; a workspace's row overrides it
-- (max_rows NULL there means: this workspace is unlimited).
CREATE TABLE @extschema@.quota_limit (
    tbl regclass NOT NULL REFERENCES @extschema@.quota_table (tbl) ON DELETE CASCADE,
    workspace_id uuid,
    max_rows bigint CHECK (max_rows >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quota_limit_tbl_workspace_key UNIQUE NULLS NOT DISTINCT (tbl, workspace_id)
);
COMMENT ON TABLE @extschema@.quota_limit IS
'Row limits: workspace_id NULL is the default for every workspace of the table; a workspace row overrides it (max_rows NULL: unlimited). Written by tenancy.set_quota / clear_quota.';

-- Counters: the number of counted rows per (table, workspace), kept exact by the quota
-- trigger inside each writing transaction. fillfactor leaves room for HOT updates.
CREATE TABLE @extschema@.quota_counter (
    tbl regclass NOT NULL,
    workspace_id uuid NOT NULL,
    used bigint NOT NULL,
    last_delta bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, workspace_id)
) WITH (fillfactor = 50);
COMMENT ON TABLE @extschema@.quota_counter IS
'Counted rows per (table, workspace), maintained by tenancy.quota_trigger(); do not write it by hand. last_delta: the change made by the last statement that touched the row.';

-- pg_dump keeps the configuration and the counters (table data is restored before triggers
-- are created, so restored counters match restored rows).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quota_table', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quota_limit', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quota_counter', '');

-- The trigger functions' C entry points check that they are called as triggers (39P01
-- otherwise, as PL/pgSQL's), then run pgrx's trigger wrappers.
CREATE OR REPLACE FUNCTION @extschema@.quota_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_trigger';
CREATE OR REPLACE FUNCTION @extschema@.quota_config_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_config_changed';

-- Any change of settings or limits invalidates every backend's cache of them.
CREATE TRIGGER quota_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.quota_table FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_config_changed();
CREATE TRIGGER quota_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON @extschema@.quota_limit FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_config_changed();

COMMENT ON FUNCTION @extschema@.quota_trigger() IS
'Statement-level AFTER trigger installed by tenancy.enforce_quota(): applies per-workspace row deltas to tenancy.quota_counter and raises 53400 when a workspace would exceed its limit.';
COMMENT ON FUNCTION @extschema@.quota_config_changed() IS
'Invalidates every backend''s cached quota settings and limits when tenancy.quota_table or tenancy.quota_limit changes.';
COMMENT ON FUNCTION @extschema@._assert_expression(text) IS
'Internal: raises 42601 unless the text is exactly one SQL expression (validates counted_when).';

-- Citus (issue 19, src/quota/citus.rs): a table's distribution column, NULL when it is not a
-- Citus table, '' when Citus has it but not hash-distributed (a reference or local table).
CREATE FUNCTION @extschema@._citus_dist_column(tbl regclass)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    col text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT CASE WHEN p.partmethod = ''h'' THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) ELSE '''' END
               FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1'
       INTO col USING tbl;
    RETURN col;
END
$fn$;
COMMENT ON FUNCTION @extschema@._citus_dist_column(regclass) IS
'Internal: the Citus distribution column of a table; NULL: not a Citus table; empty: not hash-distributed.';

-- The limits of distributed tables, on every node: a Citus reference table made at the first
-- enforce_quota() on a distributed table (not a member of the extension: Citus must create it
-- on the workers itself).
CREATE FUNCTION @extschema@._citus_quota_limits()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF to_regclass('@extschema@.quota_limit_citus') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE @extschema@.quota_limit_citus (
        table_key bigint NOT NULL,
        workspace_id uuid,
        max_rows bigint
    );
    COMMENT ON TABLE @extschema@.quota_limit_citus IS
        'The rows of tenancy.quota_limit of Citus distributed tables, on every node (a reference table): table_key is the table''s oid on the coordinator, the first argument of its quota triggers. Rewritten by set_quota / clear_quota; read by the quota trigger on the shards.';
    REVOKE ALL ON @extschema@.quota_limit_citus FROM PUBLIC;
    PERFORM pg_catalog.create_reference_table('@extschema@.quota_limit_citus');
END
$fn$;
COMMENT ON FUNCTION @extschema@._citus_quota_limits() IS
'Internal: creates the reference table tenancy.quota_limit_citus if missing.';
REVOKE ALL ON FUNCTION @extschema@._citus_quota_limits() FROM PUBLIC;

-- Copy a distributed table's limits to every node (in this transaction: Citus commits the
-- reference table on all nodes with two-phase commit).
CREATE FUNCTION @extschema@._citus_quota_sync(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF to_regclass('@extschema@.quota_limit_citus') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM @extschema@.quota_limit_citus WHERE table_key = _citus_quota_sync.tbl::oid::bigint;
    INSERT INTO @extschema@.quota_limit_citus (table_key, workspace_id, max_rows)
    SELECT _citus_quota_sync.tbl::oid::bigint, l.workspace_id, l.max_rows
      FROM @extschema@.quota_limit l WHERE l.tbl = _citus_quota_sync.tbl;
END
$fn$;
COMMENT ON FUNCTION @extschema@._citus_quota_sync(regclass) IS
'Internal: rewrites a distributed table''s rows of tenancy.quota_limit_citus from tenancy.quota_limit.';
REVOKE ALL ON FUNCTION @extschema@._citus_quota_sync(regclass) FROM PUBLIC;

-- On a worker: forget the shared counters of every shard whose quota triggers carry this key
-- (the distributed table's oid on the coordinator): they are recounted at their next write.
-- Called on every worker by enforce_quota() (a new counted_when) and release_quota() on a
-- distributed table, while the coordinator's transaction holds the shards' trigger DDL locks
-- (no writer is in flight on them then).
CREATE FUNCTION @extschema@._quota_forget_key(table_key bigint)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT count(*)::integer
      FROM (SELECT DISTINCT tg.tgrelid AS relid
              FROM pg_trigger tg
             WHERE tg.tgfoid = '@extschema@.quota_trigger()'::regprocedure AND tg.tgnargs = 3
               AND position('\x00'::bytea IN tg.tgargs) > 1
               AND convert_from(substring(tg.tgargs FROM 1 FOR position('\x00'::bytea IN tg.tgargs) - 1), 'SQL_ASCII')
                   = table_key::text) s,
           LATERAL (SELECT @extschema@._quota_forget(s.relid)) f
$fn$;
COMMENT ON FUNCTION @extschema@._quota_forget_key(bigint) IS
'Internal: on a Citus worker, drops the shared quota counters of the shards whose quota triggers carry this table key.';
REVOKE ALL ON FUNCTION @extschema@._quota_forget_key(bigint) FROM PUBLIC;

-- On the coordinator: _quota_forget_key on every worker (separate connections: Citus'
-- run_command_on_workers).
CREATE FUNCTION @extschema@._citus_quota_forget(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE format('SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers(%L)',
                            format('SELECT %s._quota_forget_key(%s)', @extschema@._quote_always('@extschema@'), tbl::oid::bigint)) LOOP
        IF NOT r.success THEN
            RAISE EXCEPTION 'could not drop the quota counters of % on worker %:%', tbl, r.nodename, r.nodeport
                USING ERRCODE = '58000', DETAIL = r.result,
                      HINT = 'Every worker must be up to change a distributed table''s quota enforcement.';
        END IF;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@._citus_quota_forget(regclass) IS
'Internal: drops the shared quota counters of a distributed table''s shards on every worker (recounted at their next write).';
REVOKE ALL ON FUNCTION @extschema@._citus_quota_forget(regclass) FROM PUBLIC;

-- The quota triggers of an enforced table, on it and, for a partitioned table, on every
-- partition (a statement names one table: rows written through the partitioned table fire its
-- triggers, rows written into a partition directly that partition's; the trigger counts them for
-- the partitioned table either way). args: the trigger arguments ('' for none).
CREATE FUNCTION @extschema@._quota_set_triggers(tbl regclass, args text, install boolean, only_missing boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    m regclass;
BEGIN
    -- pg_partition_tree() lists nothing for a table that is not partitioned
    FOR m IN SELECT tbl UNION ALL
             (SELECT t.relid FROM pg_partition_tree(tbl) t WHERE t.relid <> tbl::oid ORDER BY t.level) LOOP
        -- only_missing (a partition added later): the others are not touched, nor locked (a
        -- writer of a partition counting its partitioned table would deadlock with us)
        CONTINUE WHEN only_missing AND (SELECT count(*) FROM pg_trigger tg
                                         WHERE tg.tgrelid = m AND tg.tgname IN ('tenancy_quota_insert', 'tenancy_quota_delete',
                                                                                'tenancy_quota_update', 'tenancy_quota_truncate')) = 4;
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_insert ON %s', m);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_delete ON %s', m);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_update ON %s', m);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_truncate ON %s', m);
        CONTINUE WHEN NOT install;
        EXECUTE format('CREATE TRIGGER tenancy_quota_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS tenancy_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', m, args);
        EXECUTE format('CREATE TRIGGER tenancy_quota_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS tenancy_old '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', m, args);
        EXECUTE format('CREATE TRIGGER tenancy_quota_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS tenancy_old NEW TABLE AS tenancy_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', m, args);
        EXECUTE format('CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', m, args);
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@._quota_set_triggers(regclass, text, boolean, boolean) IS
'Internal: drops and (install) creates the quota triggers on a table and every partition of it (only_missing: on those without all four).';
REVOKE ALL ON FUNCTION @extschema@._quota_set_triggers(regclass, text, boolean, boolean) FROM PUBLIC;

-- enforce_quota: install enforcement on a tenant table and (re)count its rows. Idempotent: a
-- second call with other arguments updates the settings and recounts; a call with the same
-- arguments recounts (a repair that can never hurt).
CREATE FUNCTION @extschema@._enforce_quota(
    tbl regclass,
    workspace_column name,
    counted_when text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    col_type regtype;
    relkind "char";
    persistence "char";
    dist text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004',
            HINT = 'Pass the table, e.g. tenancy.enforce_quota(''"Segment"'').';
    END IF;
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace_column must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT c.relkind, c.relpersistence INTO relkind, persistence FROM pg_class c WHERE c.oid = tbl;
    -- Statement triggers fire only on the table a statement names: what is written through a
    -- partitioned parent, into a partition, or through an inheritance parent or child would not
    -- be counted exactly. A partitioned table gets the triggers on every partition too, and is
    -- the unit of the quota; a partition alone is refused (and an ATTACH or INHERIT of an
    -- enforced table into another tree later is refused by tenancy_quota_on_ddl).
    IF EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl AND c.relispartition) THEN
        RAISE EXCEPTION 'cannot enforce a quota on %: it is a partition', tbl USING ERRCODE = '0A000',
            DETAIL = 'The quota of a partitioned table covers all its partitions.',
            HINT = format('Enforce it on the partitioned table: SELECT tenancy.enforce_quota(%L);', pg_partition_root(tbl)::text);
    END IF;
    IF relkind = 'r' AND EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = tbl OR i.inhparent = tbl) THEN
        RAISE EXCEPTION 'cannot enforce a quota on %: it is part of an inheritance tree', tbl USING ERRCODE = '0A000',
            DETAIL = 'Statement triggers fire only on the table a statement names: rows written or deleted through an inheritance parent or child would not be counted.',
            HINT = 'Enforce quotas on tables without inheritance parents or children (ALTER TABLE ... NO INHERIT).';
    END IF;
    IF persistence = 't' THEN
        RAISE EXCEPTION 'cannot enforce a quota on temporary table %', (SELECT quote_ident(c.relname) FROM pg_class c WHERE c.oid = tbl) USING ERRCODE = '0A000',
            DETAIL = 'A temporary table disappears with its session without an sql_drop event, which would leave its bookkeeping behind.';
    END IF;
    IF relkind IS NULL OR relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot enforce a quota on % : it is not a table', tbl USING ERRCODE = '42809',
            DETAIL = format('relkind is %L.', relkind);
    END IF;
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'column % of table % does not exist', quote_ident(workspace_column), tbl
            USING ERRCODE = '42703',
                  HINT = 'Pass the workspace column as the second argument (default "workspaceId").';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'workspace column % of table % has type %, not uuid', quote_ident(workspace_column), tbl, col_type
            USING ERRCODE = '42804';
    END IF;
    IF counted_when IS NOT NULL THEN
        PERFORM @extschema@._assert_expression(counted_when);
    END IF;
    dist := @extschema@._citus_dist_column(tbl);
    IF dist IS NOT NULL THEN
        IF dist IS DISTINCT FROM workspace_column THEN
            RAISE EXCEPTION 'cannot enforce a quota on %: it is a Citus table not distributed by %', tbl, quote_ident(workspace_column)
                USING ERRCODE = '0A000',
                      DETAIL = 'On Citus a workspace''s rows are counted in the shard that holds them: the table must be hash-distributed by the workspace column.',
                      HINT = format('SELECT create_distributed_table(%L, %L);', tbl::text, workspace_column);
        END IF;
    END IF;

    IF dist IS NULL THEN
        -- Block writers of the table while the triggers go in and the rows are counted, so the
        -- backfilled counts are exact (CREATE TRIGGER takes this lock too).
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
        -- shared-memory counters of the table are recounted after this transaction
        PERFORM @extschema@._quota_forget(tbl);
    ELSE
        -- Citus (src/quota/citus.rs): nothing is counted here, each shard is counted where it
        -- is, at the first write of each workspace; the triggers carry the Citus arguments
        -- (Citus copies them to every shard) and need citus.enable_unsafe_triggers
        -- (commands/trigger.c); the limits go to the reference table
        PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
        PERFORM @extschema@._citus_quota_limits();
    END IF;

    -- Count first (as the table's owner: _quota_count); this validates counted_when against
    -- the table (names, types). Everything below is undone with the transaction on an error.
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _enforce_quota.tbl;
    IF dist IS NULL THEN
        INSERT INTO @extschema@.quota_counter (tbl, workspace_id, used)
        SELECT _enforce_quota.tbl, n.workspace_id, n.n
          FROM @extschema@._quota_count(tbl, workspace_column, counted_when) n;
    END IF;

    INSERT INTO @extschema@.quota_table AS q (tbl, workspace_column, counted_when)
    VALUES (tbl, workspace_column, counted_when)
    ON CONFLICT ON CONSTRAINT quota_table_pkey DO UPDATE
        SET workspace_column = excluded.workspace_column, counted_when = excluded.counted_when
        WHERE (q.workspace_column, q.counted_when) IS DISTINCT FROM (excluded.workspace_column, excluded.counted_when);
    -- the counters below are fresh; with tenancy preloaded they go stale from now on
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _enforce_quota.tbl;
    IF dist IS NULL AND @extschema@._quota_shared() THEN
        INSERT INTO @extschema@.quota_shared_mark (tbl) VALUES (tbl);
    END IF;

    IF dist IS NULL THEN
        PERFORM @extschema@._quota_set_triggers(tbl, '', true);
    ELSE
        PERFORM @extschema@._quota_set_triggers(tbl,
            format('%L, %L, %L', tbl::oid::text, workspace_column, coalesce(counted_when, '')), true);
        PERFORM @extschema@._citus_quota_sync(tbl);
        -- counters of an earlier enforcement (maybe another counted_when): recounted at next write
        PERFORM @extschema@._citus_quota_forget(tbl);
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION @extschema@._enforce_quota(regclass, name, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._enforce_quota(regclass, name, text) IS
'Internal: the body of tenancy.enforce_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE FUNCTION @extschema@.enforce_quota(
    tbl regclass,
    workspace_column name DEFAULT 'workspaceId',
    counted_when text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@._quota_admin('enforce', tbl::oid, workspace_column::text, counted_when, NULL::bigint, NULL::uuid);
END
$fn$;
COMMENT ON FUNCTION @extschema@.enforce_quota(regclass, name, text) IS
'Installs per-workspace row quota enforcement on a tenant table and counts its rows. counted_when optionally restricts which rows count (e.g. ''"resourceType" = ''''Declarative''''''); it is evaluated as the table''s owner, in a security-restricted operation under search_path = pg_catalog (schema-qualify other functions). Idempotent; transactional. The caller must own the table (or be a superuser) and have EXECUTE on this function: a superuser may delegate it with GRANT EXECUTE. Errors: 42501 not the owner / no EXECUTE, 22004, 42703, 42804, 42601, 42809, 0A000.';

-- set_quota: a NULL workspace sets the table's default; a workspace's value overrides it.
-- max_rows NULL removes the limit (the default, or, for a workspace, makes it unlimited).
CREATE FUNCTION @extschema@._set_quota(tbl regclass, max_rows bigint, workspace uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF max_rows < 0 THEN
        RAISE EXCEPTION 'invalid quota % for table %: max_rows must be >= 0', max_rows, tbl
            USING ERRCODE = '22023', HINT = 'Pass NULL to remove the limit, 0 to forbid new rows.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.quota_table q WHERE q.tbl = _set_quota.tbl) THEN
        RAISE EXCEPTION 'table % has no quota enforcement', tbl USING ERRCODE = '55000',
            HINT = format('Call tenancy.enforce_quota(%L) first.', tbl::text);
    END IF;
    IF workspace IS NULL AND max_rows IS NULL THEN
        DELETE FROM @extschema@.quota_limit l WHERE l.tbl = _set_quota.tbl AND l.workspace_id IS NULL;
    ELSE
        INSERT INTO @extschema@.quota_limit AS l (tbl, workspace_id, max_rows)
        VALUES (tbl, workspace, max_rows)
        ON CONFLICT ON CONSTRAINT quota_limit_tbl_workspace_key
        DO UPDATE SET max_rows = excluded.max_rows, updated_at = now();
    END IF;
    IF @extschema@._citus_dist_column(tbl) <> '' THEN
        PERFORM @extschema@._citus_quota_sync(tbl);
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION @extschema@._set_quota(regclass, bigint, uuid) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._set_quota(regclass, bigint, uuid) IS
'Internal: the body of tenancy.set_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE FUNCTION @extschema@.set_quota(tbl regclass, max_rows bigint, workspace uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@._quota_admin('set', tbl::oid, NULL::text, NULL::text, max_rows, workspace);
END
$fn$;
COMMENT ON FUNCTION @extschema@.set_quota(regclass, bigint, uuid) IS
'Sets a row limit on an enforced table: for one workspace, or (workspace NULL) the default for all. NULL max_rows removes the default, or makes that workspace unlimited. Lowering a limit below usage blocks new rows and deletes none. The caller must own the table (or be a superuser) and have EXECUTE on this function. Errors: 22023 negative, 55000 table not enforced, 42501 not the owner / no EXECUTE.';

-- clear_quota: drop a workspace's own limit so that the table's default applies again.
CREATE FUNCTION @extschema@._clear_quota(tbl regclass, workspace uuid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM @extschema@.quota_limit l WHERE l.tbl = _clear_quota.tbl AND l.workspace_id = _clear_quota.workspace;
    IF @extschema@._citus_dist_column(tbl) <> '' THEN
        PERFORM @extschema@._citus_quota_sync(tbl);
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION @extschema@._clear_quota(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._clear_quota(regclass, uuid) IS
'Internal: the body of tenancy.clear_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE FUNCTION @extschema@.clear_quota(tbl regclass, workspace uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@._quota_admin('clear', tbl::oid, NULL::text, NULL::text, NULL::bigint, workspace);
END
$fn$;
COMMENT ON FUNCTION @extschema@.clear_quota(regclass, uuid) IS
'Removes a workspace''s own limit on a table, so the table''s default applies to it again. The caller must own the table (or be a superuser) and have EXECUTE on this function (42501).';

-- release_quota: remove enforcement and all its bookkeeping. Idempotent.
CREATE FUNCTION @extschema@._release_quota(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- a table that is gone (a temporary table of an ended session) has no triggers left
    IF EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl) THEN
        IF @extschema@._citus_dist_column(tbl) IS NOT NULL THEN
            PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
        END IF;
        PERFORM @extschema@._quota_set_triggers(tbl, '', false);
        IF @extschema@._citus_dist_column(tbl) <> '' THEN
            PERFORM @extschema@._citus_quota_forget(tbl);
        END IF;
    END IF;
    PERFORM @extschema@._quota_forget(tbl);
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_table q WHERE q.tbl = _release_quota.tbl; -- cascades to quota_limit
    PERFORM @extschema@._citus_quota_sync(tbl);
END
$fn$;
REVOKE ALL ON FUNCTION @extschema@._release_quota(regclass) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._release_quota(regclass) IS
'Internal: the body of tenancy.release_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE FUNCTION @extschema@.release_quota(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@._quota_admin('release', tbl::oid, NULL::text, NULL::text, NULL::bigint, NULL::uuid);
END
$fn$;
COMMENT ON FUNCTION @extschema@.release_quota(regclass) IS
'Removes quota enforcement from a table: its triggers, counters, limits and settings. Idempotent. The caller must own the table (or be a superuser) and have EXECUTE on this function (42501).';

-- A dropped table takes its quota bookkeeping with it (an sql_drop event trigger). SECURITY
-- DEFINER: whoever drops an enforced table (its owner) has no privilege on the bookkeeping.
CREATE FUNCTION @extschema@._quota_on_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    dropped oid[];
BEGIN
    -- DROP EXTENSION drops the bookkeeping tables themselves
    IF to_regclass('@extschema@.quota_table') IS NULL OR to_regclass('@extschema@.quota_counter') IS NULL THEN
        RETURN;
    END IF;
    -- only enforced tables: statements on the bookkeeping tables (even deleting nothing)
    -- would invalidate every backend's quota caches
    SELECT array_agg(d.objid) INTO dropped
      FROM pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.object_type IN ('table', 'partitioned table')
       AND EXISTS (SELECT FROM @extschema@.quota_table q WHERE q.tbl::oid = d.objid);
    IF dropped IS NULL THEN
        RETURN;
    END IF;
    PERFORM @extschema@._quota_forget(d) FROM unnest(dropped) d;
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl::oid = ANY (dropped);
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl::oid = ANY (dropped);
    DELETE FROM @extschema@.quota_table q WHERE q.tbl::oid = ANY (dropped); -- cascades to quota_limit
END
$fn$;
COMMENT ON FUNCTION @extschema@._quota_on_drop() IS
'Internal: sql_drop event trigger function removing the quota settings, limits and counters of dropped tables.';
REVOKE ALL ON FUNCTION @extschema@._quota_on_drop() FROM PUBLIC;
CREATE EVENT TRIGGER tenancy_quota_on_drop ON sql_drop EXECUTE FUNCTION @extschema@._quota_on_drop();
COMMENT ON EVENT TRIGGER tenancy_quota_on_drop IS 'Removes the quota bookkeeping of dropped tables (tenancy).';

-- An enforced table may not become part of a partition or inheritance tree afterwards (ALTER
-- TABLE ... ATTACH PARTITION / INHERIT, CREATE TABLE ... INHERITS or PARTITION OF): its
-- statement triggers would miss what is written through the other tables. SECURITY DEFINER:
-- whoever runs the DDL has no privilege on the bookkeeping.
CREATE FUNCTION @extschema@._quota_on_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    bad regclass;
    root regclass;
BEGIN
    IF to_regclass('@extschema@.quota_table') IS NULL THEN
        RETURN;
    END IF;
    -- an enforced table put into another table's tree (ATTACH PARTITION, INHERIT, INHERITS),
    -- or an enforced plain table given inheritance children
    SELECT q.tbl INTO bad
      FROM pg_event_trigger_ddl_commands() d
      JOIN pg_inherits i ON d.objid IN (i.inhrelid, i.inhparent)
      JOIN @extschema@.quota_table q ON q.tbl::oid IN (i.inhrelid, i.inhparent)
      JOIN pg_class c ON c.oid = q.tbl
     WHERE d.classid = 'pg_class'::regclass
       AND (c.relkind <> 'p' OR q.tbl::oid = i.inhrelid)
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'table % is under quota enforcement and cannot be part of another partition or inheritance tree', bad
            USING ERRCODE = '0A000',
                  DETAIL = 'Statement triggers fire only on the table a statement names: rows written through the other tables of the tree would not be counted.',
                  HINT = format('Release the quota first: SELECT tenancy.release_quota(%L);', bad::text);
    END IF;
    -- an enforced partitioned table that changed (a partition created, attached or detached):
    -- every partition gets the triggers, and the counters are counted again after this
    -- transaction (an attached table brings rows, a detached one takes them away)
    FOR root IN
        SELECT DISTINCT q.tbl
          FROM pg_event_trigger_ddl_commands() d
          JOIN pg_class c ON c.oid = d.objid
          JOIN @extschema@.quota_table q ON q.tbl::oid = CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END
          JOIN pg_class qc ON qc.oid = q.tbl AND qc.relkind = 'p'
         WHERE d.classid = 'pg_class'::regclass
    LOOP
        PERFORM @extschema@._quota_set_triggers(root, '', true, true);
        PERFORM @extschema@._quota_forget(root);
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@._quota_on_ddl() IS
'Internal: ddl_command_end event trigger function refusing (0A000) to put a quota-enforced table into another partition or inheritance tree, and giving the partitions of an enforced partitioned table their quota triggers.';
REVOKE ALL ON FUNCTION @extschema@._quota_on_ddl() FROM PUBLIC;
CREATE EVENT TRIGGER tenancy_quota_on_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
    EXECUTE FUNCTION @extschema@._quota_on_ddl();
COMMENT ON EVENT TRIGGER tenancy_quota_on_ddl IS 'Refuses to attach or inherit quota-enforced tables (tenancy).';

-- quota_counters: the counters the quota trigger checks against, wherever they live. With
-- tenancy preloaded they are in shared memory (one per table and workspace written since the
-- server started; used = committed rows + rows reserved by transactions in progress, in_flight
-- = those transactions); otherwise they are the rows of tenancy.quota_counter.
CREATE FUNCTION @extschema@.quota_counters(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name regclass, workspace_id uuid, used bigint, in_flight bigint, location text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT e.tbl::regclass, e.workspace_id, e.used, e.in_flight, 'shared memory'
      FROM @extschema@._quota_entries() e
     WHERE @extschema@._quota_shared() AND (quota_counters.tbl IS NULL OR e.tbl = quota_counters.tbl)
    UNION ALL
    SELECT c.tbl, c.workspace_id, c.used, 0, 'table'
      FROM @extschema@.quota_counter c
     WHERE NOT @extschema@._quota_shared() AND (quota_counters.tbl IS NULL OR c.tbl = quota_counters.tbl)
    ORDER BY 1, 2
$fn$;
COMMENT ON FUNCTION @extschema@.quota_counters(regclass) IS
'The quota counters the trigger checks: in shared memory when tenancy is preloaded (used = committed rows + rows reserved by transactions in progress; in_flight = those transactions; absent until first written after a start), else the rows of tenancy.quota_counter.';

-- _quota_counts: rows counted per (table, workspace), committed. With tenancy preloaded the
-- tables are counted (the shared counters include transactions in progress and exist only for
-- workspaces written since the start); otherwise tenancy.quota_counter is exact already.
-- SECURITY DEFINER: counts must see every workspace's rows whatever the caller's privileges or
-- row-level security.
CREATE FUNCTION @extschema@._quota_counts()
RETURNS TABLE (tbl regclass, workspace_id uuid, used bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    q record;
BEGIN
    IF NOT @extschema@._quota_shared() THEN
        RETURN QUERY SELECT c.tbl, c.workspace_id, c.used FROM @extschema@.quota_counter c;
        RETURN;
    END IF;
    -- counted as each table's owner (_quota_count): counted_when never runs as the definer;
    -- a table that is gone or changed (a column renamed, retyped) is skipped with a WARNING,
    -- so one bad entry never fails the view for the whole database
    FOR q IN SELECT t.tbl, t.workspace_column, t.counted_when FROM @extschema@.quota_table t ORDER BY t.tbl LOOP
        BEGIN
            RETURN QUERY
                SELECT q.tbl, n.workspace_id, n.n
                  FROM @extschema@._quota_count(q.tbl, q.workspace_column, q.counted_when) n;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'tenancy: quota usage of table % skipped: %', q.tbl, SQLERRM
                USING DETAIL = format('SQLSTATE %s.', SQLSTATE),
                      HINT = format('Repair it with tenancy.enforce_quota(%L, ...) or remove it with tenancy.release_quota(%L).', q.tbl::text, q.tbl::text);
        END;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@._quota_counts() IS
'Internal: committed counted rows per (table, workspace), for tenancy.quota_usage.';
REVOKE ALL ON FUNCTION @extschema@._quota_counts() FROM PUBLIC;

-- quota_usage: every (workspace, table) that has counted rows or a limit of its own.
CREATE VIEW @extschema@.quota_usage AS
WITH counts AS (
    SELECT c.tbl, c.workspace_id, c.used FROM @extschema@._quota_counts() c
), pairs AS (
    SELECT c.tbl, c.workspace_id FROM counts c WHERE c.used <> 0
    UNION
    SELECT l.tbl, l.workspace_id FROM @extschema@.quota_limit l WHERE l.workspace_id IS NOT NULL
)
SELECT p.workspace_id,
       p.tbl AS table_name,
       COALESCE(c.used, 0) AS used,
       CASE WHEN o.tbl IS NOT NULL THEN o.max_rows ELSE d.max_rows END AS max_rows,
       CASE WHEN o.tbl IS NOT NULL THEN 'workspace' WHEN d.tbl IS NOT NULL THEN 'default' END AS source,
       round(100.0 * COALESCE(c.used, 0)
             / NULLIF(CASE WHEN o.tbl IS NOT NULL THEN o.max_rows ELSE d.max_rows END, 0), 1) AS pct
  FROM pairs p
  JOIN @extschema@.quota_table t ON t.tbl = p.tbl
  LEFT JOIN counts c ON c.tbl = p.tbl AND c.workspace_id = p.workspace_id
  LEFT JOIN @extschema@.quota_limit o ON o.tbl = p.tbl AND o.workspace_id = p.workspace_id
  LEFT JOIN @extschema@.quota_limit d ON d.tbl = p.tbl AND d.workspace_id IS NULL;
COMMENT ON VIEW @extschema@.quota_usage IS
'Per workspace and enforced table: used (committed counted rows), max_rows (effective limit, NULL: none), source (''workspace'' override or ''default''), pct (used as a percentage of max_rows).';
COMMENT ON COLUMN @extschema@.quota_usage.used IS 'rows counted (matching counted_when), committed, exact';
COMMENT ON COLUMN @extschema@.quota_usage.max_rows IS 'effective limit in rows; NULL: unlimited';
COMMENT ON COLUMN @extschema@.quota_usage.pct IS 'used as a percentage of max_rows';

-- quota_drift: counters that differ from the true count (none, unless the triggers were
-- disabled or the counters written by hand). enforce_quota() recounts. With tenancy preloaded
-- only shared counters no transaction in progress holds are compared (the others include
-- reservations; workspaces without a counter are counted when first written).
CREATE FUNCTION @extschema@.quota_drift(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name regclass, workspace_id uuid, counted bigint, actual bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    q record;
    shared boolean := @extschema@._quota_shared();
BEGIN
    FOR q IN SELECT t.tbl, t.workspace_column, t.counted_when FROM @extschema@.quota_table t
              WHERE quota_drift.tbl IS NULL OR t.tbl = quota_drift.tbl ORDER BY t.tbl::text
    LOOP
        -- counted as the table's owner (_quota_count), never as the caller; a table that is
        -- gone or changed is skipped with a WARNING (the others are still compared)
        BEGIN
            RETURN QUERY
                SELECT q.tbl, COALESCE(c.workspace_id, a.workspace_id), COALESCE(c.used, 0), COALESCE(a.n, 0)
                  FROM (SELECT k.workspace_id, k.used FROM @extschema@.quota_counters(q.tbl) k WHERE k.in_flight = 0) c
                  FULL JOIN @extschema@._quota_count(q.tbl, q.workspace_column, q.counted_when) a
                    ON a.workspace_id = c.workspace_id
                 WHERE COALESCE(c.used, 0) <> COALESCE(a.n, 0) AND (NOT shared OR c.workspace_id IS NOT NULL)
                 ORDER BY 2;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'tenancy: quota drift of table % skipped: %', q.tbl, SQLERRM
                USING DETAIL = format('SQLSTATE %s.', SQLSTATE),
                      HINT = format('Repair it with tenancy.enforce_quota(%L, ...) or remove it with tenancy.release_quota(%L).', q.tbl::text, q.tbl::text);
        END;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION @extschema@.quota_drift(regclass) IS
'Lists (table, workspace) pairs whose counter differs from the true count of counted rows; empty when all is exact. tenancy.enforce_quota() recounts a table.';

-- Administrative: not for application roles unless granted.
REVOKE ALL ON FUNCTION @extschema@.enforce_quota(regclass, name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.set_quota(regclass, bigint, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.clear_quota(regclass, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.release_quota(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.quota_drift(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.quota_counters(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._quota_forget(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._quota_entries() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._quota_forget(oid) IS 'Internal: the table''s rows change wholesale in this transaction (under a lock excluding writers): count it directly until the end, then drop its shared counters.';
COMMENT ON FUNCTION @extschema@._quota_entries() IS 'Internal: the shared-memory quota counters of this database.';
COMMENT ON FUNCTION @extschema@._quota_shared() IS 'Internal: true when quota counters live in shared memory (tenancy in shared_preload_libraries).';
REVOKE ALL ON FUNCTION @extschema@._quota_count(oid, text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._quota_count(oid, text, text) IS 'Internal: rows of a table counted per workspace (workspace column not NULL, counted_when true), evaluated as the table''s owner in a security-restricted operation under search_path = pg_catalog. The caller must have the table owner''s privileges (42501).';
COMMENT ON FUNCTION @extschema@._quota_admin(text, oid, text, text, bigint, uuid) IS 'Internal: the checked entry point of enforce_quota, set_quota, clear_quota and release_quota. Refuses (42501) a caller without EXECUTE on the public function or who does not own the table, then runs the internal body as the bookkeeping owner in a security-restricted operation.';
