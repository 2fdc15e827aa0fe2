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
