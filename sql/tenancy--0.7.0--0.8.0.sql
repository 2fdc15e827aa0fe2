-- tenancy 0.7.0 -> 0.8.0 (ALTER EXTENSION tenancy UPDATE TO '0.8.0')
--
-- Scale-out on Citus (issue 19, item 1):
-- - rls_policy_sql(), enable_rls(), enable_rls_all() take `distributed boolean DEFAULT NULL`:
--   the policy form Citus accepts (no sub-selects; the hierarchy option as permissive
--   policies per command, since Citus creates shard policies without AS RESTRICTIVE), chosen
--   by default where the citus extension is installed; enable_rls() runs one statement at a
--   time (Citus forwards each to the shards as one prepared statement). The old signatures
--   are dropped (a function's argument list is part of its identity).
-- - _citus_installed(), _rls_statements() (internal); audit(): both policy forms, check
--   restrictive_policy_citus.
-- - Quotas on tables hash-distributed by the workspace column (counted on the shards, limits in
--   the reference table tenancy.quota_limit_citus made at the first such enforce_quota):
--   _citus_dist_column(), _citus_quota_limits(), _citus_quota_sync(), _enforce_quota_citus();
--   _enforce_quota(), _set_quota(), _clear_quota(), _release_quota() call them.
-- - cluster_workspace_stats(): the usage statistics of every node of a Citus cluster.
-- - (no SQL) PREPARE TRANSACTION of a transaction that changed counted rows is no longer refused.
-- tests/upgrade.rs checks the result against a fresh install. Released with 0.8.0: never edit
-- this file after that (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.8.0'" to load this file. \quit

DROP FUNCTION @extschema@.rls_policy_sql(regclass, name, boolean);
DROP FUNCTION @extschema@.enable_rls(regclass, name, boolean);
DROP FUNCTION @extschema@.enable_rls_all(name, name, boolean);

CREATE FUNCTION @extschema@._citus_installed()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') $fn$;

COMMENT ON FUNCTION @extschema@._citus_installed() IS 'Internal: whether the citus extension is installed in this database.';

CREATE FUNCTION @extschema@._rls_statements(tbl regclass, workspace_column name, hierarchy boolean, distributed boolean)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    target text := @extschema@._rls_target(tbl, workspace_column);
    col text := @extschema@._quote_always(workspace_column);
    ext text := @extschema@._quote_always('@extschema@');
    inline boolean := coalesce(distributed, @extschema@._citus_installed());
    own text;
    readable text;
BEGIN
    IF hierarchy IS NULL THEN
        RAISE EXCEPTION 'hierarchy must not be NULL' USING ERRCODE = '22004',
            HINT = 'Pass false (the workspace reads its own rows) or true (a parent also reads its active children).';
    END IF;
    IF inline THEN
        -- Citus' form: the call per row (a STABLE function: still an index condition)
        own := format('%s = %s.current_workspace_id()', col, ext);
        readable := format('%s = ANY (%s.readable_workspace_ids())', col, ext);
    ELSE
        own := format('%s = (SELECT %s.current_workspace_id())', col, ext);
        readable := format('%s = ANY ((SELECT %s.readable_workspace_ids())::uuid[])', col, ext);
    END IF;
    IF NOT hierarchy THEN
        RETURN ARRAY[
            format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', target),
            format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation" ON %1$s AS PERMISSIVE FOR ALL TO PUBLIC\n'
                    '    USING (%2$s)\n'
                    '    WITH CHECK (%2$s);', target, own)];
    END IF;
    IF inline THEN
        -- Citus (13.2.2, commands/policy.c) creates a distributed table's policies on its shards
        -- without AS RESTRICTIVE: a restrictive policy would become permissive there and let a
        -- parent update and delete its children's rows. So one permissive policy per command:
        -- reads the readable workspaces, writes the current one (UPDATE and DELETE with a
        -- WHERE clause also get the SELECT policy, AND-ed: still the current workspace).
        RETURN ARRAY[
            format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', target),
            format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation" ON %1$s AS PERMISSIVE FOR SELECT TO PUBLIC\n'
                    '    USING (%2$s);', target, readable),
            format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation_insert" ON %1$s AS PERMISSIVE FOR INSERT TO PUBLIC\n'
                    '    WITH CHECK (%2$s);', target, own),
            format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation_update" ON %1$s AS PERMISSIVE FOR UPDATE TO PUBLIC\n'
                    '    USING (%2$s)\n'
                    '    WITH CHECK (%2$s);', target, own),
            format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation_delete" ON %1$s AS PERMISSIVE FOR DELETE TO PUBLIC\n'
                    '    USING (%2$s);', target, own)];
    END IF;
    -- Hierarchy: reads cover the current workspace and its active children (an index
    -- condition); inserts and the new row of updates are checked against the current
    -- workspace (WITH CHECK), and the restrictive policies keep UPDATE and DELETE from reaching
    -- a child's rows.
    RETURN ARRAY[
        format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s;', target),
        format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', target),
        format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', target),
        format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s;', target),
        format(E'CREATE POLICY "tenancy_isolation" ON %1$s AS PERMISSIVE FOR ALL TO PUBLIC\n'
                '    USING (%3$s)\n'
                '    WITH CHECK (%2$s);', target, own, readable),
        format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s;', target),
        format(E'CREATE POLICY "tenancy_isolation_update" ON %1$s AS RESTRICTIVE FOR UPDATE TO PUBLIC\n'
                '    USING (%2$s)\n'
                '    WITH CHECK (%2$s);', target, own),
        format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s;', target),
        format(E'CREATE POLICY "tenancy_isolation_delete" ON %1$s AS RESTRICTIVE FOR DELETE TO PUBLIC\n'
                '    USING (%2$s);', target, own)];
END
$fn$;

COMMENT ON FUNCTION @extschema@._rls_statements(regclass, name, boolean, boolean) IS
'Internal: the statements of tenancy.rls_policy_sql, one per array element.';

CREATE FUNCTION @extschema@.rls_policy_sql(tbl regclass, workspace_column name DEFAULT 'workspaceId',
                                            hierarchy boolean DEFAULT false, distributed boolean DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT array_to_string(@extschema@._rls_statements(tbl, workspace_column, hierarchy, distributed), E'\n') || E'\n'
$fn$;

COMMENT ON FUNCTION @extschema@.rls_policy_sql(regclass, name, boolean, boolean) IS
'The DDL that isolates a tenant table: ENABLE and FORCE ROW LEVEL SECURITY and a policy "tenancy_isolation" for all commands, USING and WITH CHECK column = (SELECT tenancy.current_workspace_id()). With hierarchy => true, reads use column = ANY ((SELECT tenancy.readable_workspace_ids())::uuid[]) (a parent also reads its active children) while writes stay on the current workspace (WITH CHECK, and restrictive policies "tenancy_isolation_update" and "tenancy_isolation_delete"). distributed => true emits the policies without sub-selects (column = tenancy.current_workspace_id(), column = ANY (tenancy.readable_workspace_ids())), the form Citus accepts, and the hierarchy option as permissive policies per command ("tenancy_isolation" FOR SELECT, "tenancy_isolation_insert", "_update", "_delete" on the current workspace), since Citus creates a table''s policies on its shards without AS RESTRICTIVE; NULL (the default) chooses it when the citus extension is installed in the database. Identifiers always quoted. For migrations that keep their SQL explicit.';

CREATE FUNCTION @extschema@.enable_rls(tbl regclass, workspace_column name DEFAULT 'workspaceId',
                                        hierarchy boolean DEFAULT false, distributed boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    stmt text;
BEGIN
    FOREACH stmt IN ARRAY @extschema@._rls_statements(tbl, workspace_column, hierarchy, distributed) LOOP
        EXECUTE stmt;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION @extschema@.enable_rls(regclass, name, boolean, boolean) IS
'Applies tenancy.rls_policy_sql(tbl, workspace_column, hierarchy, distributed), one statement at a time (as Citus requires on distributed tables). Idempotent (also to switch the hierarchy option or the form); transactional.';

CREATE FUNCTION @extschema@.enable_rls_all(schema_name name DEFAULT 'public', workspace_column name DEFAULT 'workspaceId',
                                            hierarchy boolean DEFAULT false, distributed boolean DEFAULT NULL)
RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
        RAISE EXCEPTION 'schema % does not exist', @extschema@._quote_always(schema_name) USING ERRCODE = '3F000';
    END IF;
    FOR t IN
        SELECT c.oid::regclass
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = schema_name AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND a.atttypid = 'uuid'::regtype
         ORDER BY c.relname
    LOOP
        PERFORM @extschema@.enable_rls(t, workspace_column, hierarchy, distributed);
        RETURN NEXT t;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION @extschema@.enable_rls_all(name, name, boolean, boolean) IS
'Applies the isolation policy (with the hierarchy option and the form if asked) to every table of the schema that has the workspace column (uuid); returns those tables. Idempotent; transactional.';

CREATE OR REPLACE FUNCTION @extschema@.disable_rls(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    target text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    target := @extschema@._qualified_name(tbl);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s', target);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', target);
END
$fn$;

REVOKE ALL ON FUNCTION @extschema@.enable_rls(regclass, name, boolean, boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.enable_rls_all(name, name, boolean, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._policy_expr(workspace_column name, form text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE form
        WHEN 'standard' THEN format('(%s = ( SELECT %s.current_workspace_id() AS current_workspace_id))',
                                    quote_ident(workspace_column), quote_ident('@extschema@'))
        WHEN 'hierarchy' THEN format('(%s = ANY (( SELECT %s.readable_workspace_ids() AS readable_workspace_ids)::uuid[]))',
                                     quote_ident(workspace_column), quote_ident('@extschema@'))
        WHEN 'standard inline' THEN format('(%s = %s.current_workspace_id())',
                                           quote_ident(workspace_column), quote_ident('@extschema@'))
        WHEN 'hierarchy inline' THEN format('(%s = ANY (%s.readable_workspace_ids()))',
                                            quote_ident(workspace_column), quote_ident('@extschema@'))
    END
$fn$;

COMMENT ON FUNCTION @extschema@._policy_expr(name, text) IS
'Internal: the deparsed text (pg_get_expr) of the USING expression tenancy emits, form ''standard'' or ''hierarchy'' (sub-selects), ''standard inline'' or ''hierarchy inline'' (the form for Citus).';

CREATE OR REPLACE FUNCTION @extschema@._policy_state(tbl oid, workspace_column name)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    std text;
    suffix text;
    p record;
    companions int;
BEGIN
    SELECT pol.polcmd, pol.polpermissive, pol.polroles,
           pg_get_expr(pol.polqual, pol.polrelid) AS qual, pg_get_expr(pol.polwithcheck, pol.polrelid) AS wcheck
      INTO p
      FROM pg_policy pol WHERE pol.polrelid = tbl AND pol.polname = 'tenancy_isolation';
    IF NOT FOUND THEN
        RETURN 'missing';
    END IF;
    IF p.polcmd = 'r' THEN
        -- the hierarchy form for Citus: permissive policies per command (sql/rls.sql)
        std := @extschema@._policy_expr(workspace_column, 'standard inline');
        IF NOT p.polpermissive OR p.polroles <> '{0}'::oid[] OR p.wcheck IS NOT NULL
           OR p.qual IS DISTINCT FROM @extschema@._policy_expr(workspace_column, 'hierarchy inline') THEN
            RETURN 'altered';
        END IF;
        SELECT count(*) INTO companions
          FROM pg_policy pol
         WHERE pol.polrelid = tbl AND pol.polpermissive AND pol.polroles = '{0}'::oid[]
           AND ((pol.polname = 'tenancy_isolation_insert' AND pol.polcmd = 'a' AND pol.polqual IS NULL
                 AND pg_get_expr(pol.polwithcheck, pol.polrelid) = std)
             OR (pol.polname = 'tenancy_isolation_update' AND pol.polcmd = 'w'
                 AND pg_get_expr(pol.polqual, pol.polrelid) = std AND pg_get_expr(pol.polwithcheck, pol.polrelid) = std)
             OR (pol.polname = 'tenancy_isolation_delete' AND pol.polcmd = 'd'
                 AND pg_get_expr(pol.polqual, pol.polrelid) = std));
        RETURN CASE WHEN companions = 3 THEN 'hierarchy' ELSE 'incomplete' END;
    END IF;
    -- the form (sub-selects, or inline for Citus) is the one of the WITH CHECK expression
    suffix := CASE p.wcheck WHEN @extschema@._policy_expr(workspace_column, 'standard') THEN ''
                            WHEN @extschema@._policy_expr(workspace_column, 'standard inline') THEN ' inline' END;
    IF p.polcmd <> '*' OR NOT p.polpermissive OR p.polroles <> '{0}'::oid[] OR suffix IS NULL THEN
        RETURN 'altered';
    END IF;
    std := p.wcheck;
    IF p.qual = std THEN
        RETURN 'standard';
    END IF;
    IF p.qual IS DISTINCT FROM @extschema@._policy_expr(workspace_column, 'hierarchy' || suffix) THEN
        RETURN 'altered';
    END IF;
    SELECT count(*) INTO companions
      FROM pg_policy pol
     WHERE pol.polrelid = tbl AND NOT pol.polpermissive AND pol.polroles = '{0}'::oid[]
       AND pg_get_expr(pol.polqual, pol.polrelid) = std
       AND ((pol.polname = 'tenancy_isolation_update' AND pol.polcmd = 'w'
             AND (pol.polwithcheck IS NULL OR pg_get_expr(pol.polwithcheck, pol.polrelid) = std))
         OR (pol.polname = 'tenancy_isolation_delete' AND pol.polcmd = 'd'));
    RETURN CASE WHEN companions = 2 THEN 'hierarchy' ELSE 'incomplete' END;
END
$fn$;

COMMENT ON FUNCTION @extschema@._policy_state(oid, name) IS
'Internal: ''standard'', ''hierarchy'', ''incomplete'' (hierarchy USING without the restrictive tenancy_isolation_update/_delete policies), ''altered'' or ''missing'': the table''s tenancy_isolation policy compared with the forms tenancy emits (with sub-selects, or inline, the form for Citus).';

CREATE OR REPLACE FUNCTION @extschema@._audit_policies(workspace_column name)
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text, relid oid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH p AS MATERIALIZED (
        SELECT t.relid, t.qualified, pol.polname, pol.polcmd, pol.polpermissive, pol.polroles,
               pg_get_expr(pol.polqual, pol.polrelid) AS qual, pg_get_expr(pol.polwithcheck, pol.polrelid) AS wcheck,
               @extschema@._per_row_calls(pol.polqual) || @extschema@._per_row_calls(pol.polwithcheck) AS calls,
               format('policy %s on %s', @extschema@._quote_always(pol.polname), t.qualified) AS label
          FROM @extschema@._tenant_tables(workspace_column) AS t
          JOIN pg_policy pol ON pol.polrelid = t.relid)
    SELECT 'warn', 'policy_per_row', p.label,
           format('the policy calls %s outside a sub-select: it can be evaluated once per row instead of once per query; wrap the call as (SELECT ...), as tenancy''s policy does',
                  array_to_string(ARRAY(SELECT DISTINCT c FROM unnest(p.calls) AS c ORDER BY 1), ', ')),
           CASE WHEN p.polname = 'tenancy_isolation'
                THEN @extschema@._enable_rls_sql(p.qualified, workspace_column) END,
           p.relid
      FROM p WHERE cardinality(p.calls) > 0
       -- with Citus, tenancy's own policies call per row on purpose (Citus refuses sub-queries)
       AND NOT (p.polname IN ('tenancy_isolation', 'tenancy_isolation_insert', 'tenancy_isolation_update', 'tenancy_isolation_delete')
                AND @extschema@._citus_installed())
    UNION ALL
    -- permissive policies are OR-ed: any besides tenancy's widens access. Fix: recreate it RESTRICTIVE.
    SELECT 'warn', 'permissive_policy', p.label,
           'a PERMISSIVE policy besides "tenancy_isolation": permissive policies are OR-ed, so it widens access beyond the current workspace; make it RESTRICTIVE (AND-ed) or drop it',
           format(E'DROP POLICY %1$s ON %2$s;\nCREATE POLICY %1$s ON %2$s AS RESTRICTIVE FOR %3$s TO %4$s%5$s%6$s;',
                  @extschema@._quote_always(p.polname), p.qualified,
                  @extschema@._policy_cmd(p.polcmd), @extschema@._policy_roles(p.polroles),
                  ' USING (' || p.qual || ')', ' WITH CHECK (' || p.wcheck || ')'),
           p.relid
      FROM p WHERE p.polpermissive AND p.polname <> 'tenancy_isolation'
       -- tenancy's own per-command policies of the hierarchy form for Citus
       AND NOT (p.polname IN ('tenancy_isolation_insert', 'tenancy_isolation_update', 'tenancy_isolation_delete')
                AND @extschema@._policy_state(p.relid, workspace_column) = 'hierarchy')
    UNION ALL
    -- Citus 13.2.2 (commands/policy.c) creates a table's policies on its shards without AS
    -- RESTRICTIVE: there a restrictive policy is OR-ed with the others and widens access.
    SELECT 'fail', 'restrictive_policy_citus', p.label,
           'a RESTRICTIVE policy in a database with Citus: Citus creates the policies of a distributed table on its shards without AS RESTRICTIVE, where it becomes permissive and widens access (the hierarchy form of tenancy''s policy uses restrictive policies only without Citus)',
           CASE WHEN p.polname IN ('tenancy_isolation_update', 'tenancy_isolation_delete')
                THEN @extschema@._enable_rls_sql(p.qualified, workspace_column, true) END,
           p.relid
      FROM p WHERE NOT p.polpermissive AND @extschema@._citus_installed()
$fn$;

COMMENT ON FUNCTION @extschema@._audit_policies(name) IS
'Internal: audit() checks on the policies of the tenant tables: policy_per_row, permissive_policy, restrictive_policy_citus.';

COMMENT ON FUNCTION @extschema@.audit(name) IS
'Audits workspace isolation of the tenant tables (tables with the uuid workspace column). One row per finding: severity (fail, warn, info), check, object, detail, fix (executable SQL, NULL when none). Checks: rls_disabled, rls_not_forced, policy_missing, policy_altered, policy_incomplete (fail); restrictive_policy_citus (fail: a RESTRICTIVE policy where Citus is installed, which Citus makes permissive on the shards); policy_per_row, permissive_policy (warn); superuser_login (warn), bypassrls_login (fail), createrole_login (fail: a login role subject to row-level security with CREATEROLE, or a member of a role with it: in PostgreSQL 15 it can grant itself a BYPASSRLS role), superuser_member (fail: such a role can SET ROLE to a superuser role), bypassrls_grantable (fail: such a role holds, or can SET ROLE to a holder of, ADMIN OPTION on a BYPASSRLS role), replication_login (warn: REPLICATION reads every workspace through replication), bypassrls_role (info, with members), owner_login (fail without FORCE, else warn), no_application_role (fail), application_role (info: none of the fails above, no REPLICATION), truncate_granted (fail), registry_writable (warn: a login role can delete workspaces, whose cascade ignores row-level security, or re-parent them), view_not_security_invoker (fail), materialized_view (warn), security_definer_function (a SECURITY DEFINER function using a tenant table: found through pg_depend for SQL-standard bodies, by the table''s name as an identifier in other sources; fail when its owner bypasses row-level security, else warn), fk_without_workspace, missing_workspace_index, invalid_index (warn); context_default (fail: a role or database default of tenancy.workspace_id in pg_db_role_setting, for this database or all; fix: ALTER ROLE/DATABASE ... RESET tenancy.workspace_id); isolated, shared_preload_libraries (info). Ordered fail, warn, info, then check, object. No rows when no table has the column. Fixes using CONCURRENTLY must run outside a transaction block. Error 22004 on NULL.';

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

CREATE FUNCTION @extschema@._enforce_quota_citus(tbl regclass, workspace_column name, counted_when text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    args text := format('%L, %L, %L', tbl::oid::text, workspace_column, coalesce(counted_when, ''));
BEGIN
    -- Citus refuses triggers on distributed tables unless this is on (commands/trigger.c); the
    -- quota trigger only counts the rows of its own shard
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM @extschema@._citus_quota_limits();
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _enforce_quota_citus.tbl;
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _enforce_quota_citus.tbl;
    INSERT INTO @extschema@.quota_table AS q (tbl, workspace_column, counted_when)
    VALUES (tbl, workspace_column, counted_when)
    ON CONFLICT ON CONSTRAINT quota_table_pkey DO UPDATE
        SET workspace_column = excluded.workspace_column, counted_when = excluded.counted_when
        WHERE (q.workspace_column, q.counted_when) IS DISTINCT FROM (excluded.workspace_column, excluded.counted_when);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_truncate ON %s', tbl);
    EXECUTE format('CREATE TRIGGER tenancy_quota_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS tenancy_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER tenancy_quota_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS tenancy_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER tenancy_quota_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS tenancy_old NEW TABLE AS tenancy_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger(%s)', tbl, args);
    PERFORM @extschema@._citus_quota_sync(tbl);
END
$fn$;

COMMENT ON FUNCTION @extschema@._enforce_quota_citus(regclass, name, text) IS
'Internal: the part of enforce_quota for a table hash-distributed by the workspace column (src/quota/citus.rs).';

REVOKE ALL ON FUNCTION @extschema@._enforce_quota_citus(regclass, name, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@._enforce_quota(
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
    -- be counted exactly. Refused until partitioned tables are supported (and an ATTACH or
    -- INHERIT of an enforced table later is refused by tenancy_quota_on_ddl).
    IF relkind = 'p' OR EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl AND c.relispartition) THEN
        RAISE EXCEPTION 'cannot enforce a quota on %: it is a partitioned table or a partition', tbl USING ERRCODE = '0A000',
            DETAIL = 'Statement triggers fire only on the table a statement names: rows written through the partitioned table, or into a partition directly, would not be counted.',
            HINT = 'Quotas are not supported on partitioned tables yet: enforce them on a table that is not partitioned.';
    END IF;
    IF EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = tbl OR i.inhparent = tbl) THEN
        RAISE EXCEPTION 'cannot enforce a quota on %: it is part of an inheritance tree', tbl USING ERRCODE = '0A000',
            DETAIL = 'Statement triggers fire only on the table a statement names: rows written or deleted through an inheritance parent or child would not be counted.',
            HINT = 'Enforce quotas on tables without inheritance parents or children (ALTER TABLE ... NO INHERIT).';
    END IF;
    IF persistence = 't' THEN
        RAISE EXCEPTION 'cannot enforce a quota on temporary table %', (SELECT quote_ident(c.relname) FROM pg_class c WHERE c.oid = tbl) USING ERRCODE = '0A000',
            DETAIL = 'A temporary table disappears with its session without an sql_drop event, which would leave its bookkeeping behind.';
    END IF;
    IF relkind IS DISTINCT FROM 'r' THEN
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
        PERFORM @extschema@._enforce_quota_citus(tbl, workspace_column, counted_when);
        RETURN;
    END IF;

    -- Block writers of the table while the triggers go in and the rows are counted, so the
    -- backfilled counts are exact (CREATE TRIGGER takes this lock too).
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
    -- shared-memory counters of the table are recounted after this transaction
    PERFORM @extschema@._quota_forget(tbl);

    -- Count first (as the table's owner: _quota_count); this validates counted_when against
    -- the table (names, types). Everything below is undone with the transaction on an error.
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _enforce_quota.tbl;
    INSERT INTO @extschema@.quota_counter (tbl, workspace_id, used)
    SELECT _enforce_quota.tbl, n.workspace_id, n.n
      FROM @extschema@._quota_count(tbl, workspace_column, counted_when) n;

    INSERT INTO @extschema@.quota_table AS q (tbl, workspace_column, counted_when)
    VALUES (tbl, workspace_column, counted_when)
    ON CONFLICT ON CONSTRAINT quota_table_pkey DO UPDATE
        SET workspace_column = excluded.workspace_column, counted_when = excluded.counted_when
        WHERE (q.workspace_column, q.counted_when) IS DISTINCT FROM (excluded.workspace_column, excluded.counted_when);
    -- the counters below are fresh; with tenancy preloaded they go stale from now on
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _enforce_quota.tbl;
    IF @extschema@._quota_shared() THEN
        INSERT INTO @extschema@.quota_shared_mark (tbl) VALUES (tbl);
    END IF;

    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_truncate ON %s', tbl);
    EXECUTE format('CREATE TRIGGER tenancy_quota_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS tenancy_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger()', tbl);
    EXECUTE format('CREATE TRIGGER tenancy_quota_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS tenancy_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger()', tbl);
    EXECUTE format('CREATE TRIGGER tenancy_quota_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS tenancy_old NEW TABLE AS tenancy_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger()', tbl);
    EXECUTE format('CREATE TRIGGER tenancy_quota_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_trigger()', tbl);

END
$fn$;

CREATE OR REPLACE FUNCTION @extschema@._set_quota(tbl regclass, max_rows bigint, workspace uuid)
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

CREATE OR REPLACE FUNCTION @extschema@._clear_quota(tbl regclass, workspace uuid)
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

CREATE OR REPLACE FUNCTION @extschema@._release_quota(tbl regclass)
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
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_insert ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_delete ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_update ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_truncate ON %s', tbl);
    END IF;
    PERFORM @extschema@._quota_forget(tbl);
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_table q WHERE q.tbl = _release_quota.tbl; -- cascades to quota_limit
    PERFORM @extschema@._citus_quota_sync(tbl);
END
$fn$;

CREATE FUNCTION @extschema@.cluster_workspace_stats()
RETURNS TABLE (node text, workspace_id uuid, queries bigint, nested_queries bigint, "rows" bigint,
               exec_time_ms numeric, plan_time_ms numeric, cpu_time_ms numeric,
               quota_rows_added bigint, quota_rows_removed bigint, quota_rejections bigint,
               last_activity timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
BEGIN
    IF NOT @extschema@._citus_installed() THEN
        RETURN QUERY
            SELECT 'local'::text, s.workspace_id, s.queries, s.nested_queries, s.rows, s.exec_time_ms,
                   s.plan_time_ms, s.cpu_time_ms, s.quota_rows_added, s.quota_rows_removed,
                   s.quota_rejections, s.last_activity
              FROM @extschema@.workspace_stats s WHERE s.database = current_database();
        RETURN;
    END IF;
    FOR r IN EXECUTE
        $q$SELECT n.nodename || ':' || n.nodeport AS node, a.success, a.result
             FROM pg_catalog.run_command_on_all_nodes(
                    'SELECT coalesce(json_agg(s), ''[]'') FROM @extschema@.workspace_stats s WHERE s.database = current_database()') a
             JOIN pg_catalog.pg_dist_node n ON n.nodeid = a.nodeid
            ORDER BY 1$q$
    LOOP
        IF NOT r.success THEN
            RAISE WARNING 'usage statistics of node % could not be read: %', r.node, r.result;
            CONTINUE;
        END IF;
        RETURN QUERY
            SELECT r.node, (j->>'workspace_id')::uuid, (j->>'queries')::bigint, (j->>'nested_queries')::bigint,
                   (j->>'rows')::bigint, (j->>'exec_time_ms')::numeric, (j->>'plan_time_ms')::numeric,
                   (j->>'cpu_time_ms')::numeric, (j->>'quota_rows_added')::bigint,
                   (j->>'quota_rows_removed')::bigint, (j->>'quota_rejections')::bigint,
                   (j->>'last_activity')::timestamptz
              FROM json_array_elements(r.result::json) j;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION @extschema@.cluster_workspace_stats() IS
'Usage statistics of this database on every node of a Citus cluster, one row per (node, workspace): the coordinator counts the client''s statements, each worker the shard queries it ran for the workspace. Sum per workspace for the cluster''s total work (queries: statements on the coordinator plus shard queries on the workers). Without Citus: this node''s rows, node ''local''.';
