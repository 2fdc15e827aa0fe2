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
--   _citus_dist_column(), _citus_quota_limits(), _citus_quota_sync(), _citus_quota_forget(),
--   _quota_forget_key();
--   _enforce_quota(), _set_quota(), _clear_quota(), _release_quota() call them.
-- - cluster_workspace_stats(): the usage statistics of every node of a Citus cluster.
-- - shard_readiness(): rule quota_triggers, a fix for tenancy's policies with sub-selects;
--   shard_plan(): quota triggers dropped before distributing, enforce_quota() after;
--   _shard_tables() leaves out the extension's schema.
-- - Hash-partitioned tenant tables (issue 19, item 2): enable_rls()/disable_rls() cover every
--   partition; event trigger tenancy_rls_on_ddl (_rls_on_ddl) gives a partition created or
--   attached later its table's policies; audit() check partition_unprotected
--   (_audit_partitions); quotas on a partitioned table (triggers on every partition through
--   _quota_set_triggers, _quota_on_ddl installs them on new partitions and recounts after
--   ATTACH/DETACH).
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
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    target text := @extschema@._rls_target(tbl, workspace_column);
    col text := @extschema@._quote_always(workspace_column);
    ext text := @extschema@._quote_always('@extschema@');
    inline boolean := coalesce(distributed, @extschema@._citus_installed());
    own text;
    readable text;
    stmts text[];
    result text[];
    member oid;
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
        stmts := ARRAY[
            format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', target),
            format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s;', target),
            format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s;', target),
            format(E'CREATE POLICY "tenancy_isolation" ON %1$s AS PERMISSIVE FOR ALL TO PUBLIC\n'
                    '    USING (%2$s)\n'
                    '    WITH CHECK (%2$s);', target, own)];
    ELSIF inline THEN
        -- Citus (13.2.2, commands/policy.c) creates a distributed table's policies on its shards
        -- without AS RESTRICTIVE: a restrictive policy would become permissive there and let a
        -- parent update and delete its children's rows. So one permissive policy per command:
        -- reads the readable workspaces, writes the current one (UPDATE and DELETE with a
        -- WHERE clause also get the SELECT policy, AND-ed: still the current workspace).
        stmts := ARRAY[
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
    ELSE
        -- Hierarchy: reads cover the current workspace and its active children (an index
        -- condition); inserts and the new row of updates are checked against the current
        -- workspace (WITH CHECK), and the restrictive policies keep UPDATE and DELETE from reaching
        -- a child's rows.
        stmts := ARRAY[
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
    END IF;
    -- A partition queried directly is not covered by its parent's policies: every partition of
    -- a partitioned table (at any depth) gets the same statements.
    result := stmts;
    FOR member IN SELECT t.relid FROM pg_partition_tree(tbl) t
                   WHERE t.relid <> tbl::oid ORDER BY t.level, t.relid::regclass::text COLLATE "C" LOOP
        result := result || ARRAY(SELECT replace(x, target, @extschema@._qualified_name(member))
                                    FROM unnest(stmts) WITH ORDINALITY AS u(x, o) ORDER BY o);
    END LOOP;
    RETURN result;
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
    -- the table, then its partitions (pg_partition_tree() lists nothing for a plain table)
    FOR target IN SELECT @extschema@._qualified_name(tbl) UNION ALL
                  (SELECT @extschema@._qualified_name(t.relid) FROM pg_partition_tree(tbl) t
                    WHERE t.relid <> tbl::oid ORDER BY t.level) LOOP
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_insert" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_update" ON %s', target);
    EXECUTE format('DROP POLICY IF EXISTS "tenancy_isolation_delete" ON %s', target);
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', target);
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION @extschema@.enable_rls(regclass, name, boolean, boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.enable_rls_all(name, name, boolean, boolean) FROM PUBLIC;

CREATE FUNCTION @extschema@._rls_on_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    r record;
    m oid;
    col name;
    stmt text;
BEGIN
    IF current_setting('tenancy_internal.rls_on_ddl', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT DISTINCT pg_partition_root(d.objid) AS root, p.polqual, p.polwithcheck
          FROM pg_event_trigger_ddl_commands() d
          JOIN pg_class c ON c.oid = d.objid
          JOIN pg_policy p ON p.polrelid = pg_partition_root(d.objid) AND p.polname = 'tenancy_isolation'
         WHERE d.classid = 'pg_class'::regclass AND (c.relispartition OR c.relkind = 'p')
    LOOP
        SELECT a.attname INTO col FROM pg_attribute a
         WHERE a.attrelid = r.root
           AND a.attnum = (regexp_match(coalesce(r.polwithcheck, r.polqual)::text, ':varattno (\d+)'))[1]::smallint;
        CONTINUE WHEN col IS NULL;
        FOR m IN SELECT t.relid FROM pg_partition_tree(r.root) t JOIN pg_class c ON c.oid = t.relid
                  WHERE t.relid <> r.root
                    AND (NOT c.relrowsecurity OR NOT c.relforcerowsecurity
                         OR NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = t.relid AND p.polname = 'tenancy_isolation'))
                  ORDER BY t.level LOOP
            -- the statements of enable_rls() (revoked from PUBLIC: the owner of a new partition
            -- need not be allowed to call it), run as that owner; the hierarchy form is the one
            -- with the update and delete companions
            PERFORM set_config('tenancy_internal.rls_on_ddl', 'on', true);
            FOREACH stmt IN ARRAY @extschema@._rls_statements(
                    m::regclass, col,
                    EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = r.root
                               AND p.polname IN ('tenancy_isolation_update', 'tenancy_isolation_delete')),
                    r.polqual::text NOT LIKE '%{SUBLINK %') LOOP
                EXECUTE stmt;
            END LOOP;
            PERFORM set_config('tenancy_internal.rls_on_ddl', '', true);
        END LOOP;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION @extschema@._rls_on_ddl() IS
'Internal: event trigger function giving a new or attached partition the tenancy policies of its partitioned table.';

CREATE EVENT TRIGGER tenancy_rls_on_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION @extschema@._rls_on_ddl();

REVOKE ALL ON FUNCTION @extschema@._rls_on_ddl() FROM PUBLIC;

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

CREATE FUNCTION @extschema@._audit_partitions(workspace_column name)
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text, relid oid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT 'fail', 'partition_unprotected', 'table ' || @extschema@._qualified_name(pt.relid),
           format('a partition of %s without row-level security enabled and forced and the "tenancy_isolation" policy: queried directly, it shows and takes every workspace''s rows', t.qualified),
           @extschema@._enable_rls_sql(t.qualified, workspace_column,
                                       @extschema@._policy_state(t.relid, workspace_column) = 'hierarchy'),
           t.relid
      FROM @extschema@._tenant_tables(workspace_column) t
      JOIN LATERAL pg_partition_tree(t.relid) pt ON pt.relid <> t.relid
      JOIN pg_class c ON c.oid = pt.relid
     WHERE t.relkind = 'p'
       AND (NOT c.relrowsecurity OR NOT c.relforcerowsecurity
            OR NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = pt.relid AND p.polname = 'tenancy_isolation'))
$fn$;

COMMENT ON FUNCTION @extschema@._audit_partitions(name) IS
'Internal: audit() check partition_unprotected.';

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

CREATE OR REPLACE FUNCTION @extschema@.audit(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
    WITH f AS MATERIALIZED (
        SELECT * FROM @extschema@._audit_tables(workspace_column)
        UNION ALL SELECT * FROM @extschema@._audit_policies(workspace_column)
        UNION ALL SELECT * FROM @extschema@._audit_roles(workspace_column)
        UNION ALL SELECT * FROM @extschema@._audit_dependents(workspace_column)
        UNION ALL SELECT * FROM @extschema@._audit_partitions(workspace_column)),
    t AS MATERIALIZED (SELECT * FROM @extschema@._tenant_tables(workspace_column))
    SELECT x.sev, x.chk, x.obj, x.det, x.fx
      FROM (SELECT f.severity AS sev, f."check" AS chk, f.object AS obj, f.detail AS det, f.fix AS fx FROM f
            UNION ALL
            SELECT 'info', 'isolated', 'table ' || t.qualified,
                   format('row-level security enabled and forced, policy "tenancy_isolation" (%s form) on %s',
                          @extschema@._policy_state(t.relid, workspace_column), @extschema@._quote_always(workspace_column)),
                   NULL
              FROM t
             WHERE t.rls_enabled AND t.rls_forced
               AND @extschema@._policy_state(t.relid, workspace_column) IN ('standard', 'hierarchy')
               AND NOT EXISTS (SELECT 1 FROM f WHERE f.relid = t.relid AND f.severity = 'fail')
            UNION ALL
            SELECT 'info', 'shared_preload_libraries', 'setting shared_preload_libraries',
                   CASE WHEN l.loaded
                        THEN 'tenancy is in shared_preload_libraries: per-workspace statistics are collected'
                        ELSE 'tenancy is not in shared_preload_libraries: the statistics views raise 55000 (add it in postgresql.conf and restart)'
                   END,
                   NULL
              FROM (SELECT EXISTS (SELECT 1 FROM unnest(string_to_array(current_setting('shared_preload_libraries'), ',')) AS lib
                                    WHERE btrim(lib, ' "') ~ '(^|/)tenancy$') AS loaded) AS l
            UNION ALL
            -- A login default of the context (pg_db_role_setting, for this database or all):
            -- refused by ALTER ROLE / DATABASE ... SET and ignored at connection start, but one
            -- stored before the extension was loaded or written into the catalog is reported.
            -- RESET removes an entry only when spelled exactly as the setting's name (guc.c
            -- compares the stored name case-sensitively); another spelling needs RESET ALL.
            SELECT 'fail', 'context_default',
                   CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'all roles'
                        WHEN d.setrole = 0 THEN 'database ' || @extschema@._quote_always(current_database())
                        WHEN d.setdatabase = 0 THEN 'role ' || COALESCE(@extschema@._quote_always(r.rolname), d.setrole::text)
                        ELSE 'role ' || COALESCE(@extschema@._quote_always(r.rolname), d.setrole::text)
                             || ' in database ' || @extschema@._quote_always(current_database()) END,
                   format('%s = %L is a login default: PostgreSQL would start every new connection inside that '
                          'workspace; tenancy ignores it at connection start (WARNING, no context)%s',
                          d.name, d.value,
                          CASE WHEN d.name <> 'tenancy.workspace_id'
                               THEN '; RESET cannot remove this spelling: RESET ALL removes every setting of the entry '
                                    || '(' || array_to_string(d.setconfig, ', ') || ')'
                               ELSE '' END),
                   CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN format('ALTER ROLE ALL RESET %s;', d.reset)
                        WHEN d.setrole = 0 THEN format('ALTER DATABASE %s RESET %s;',
                                                       @extschema@._quote_always(current_database()), d.reset)
                        WHEN r.rolname IS NULL THEN NULL
                        WHEN d.setdatabase = 0 THEN format('ALTER ROLE %s RESET %s;',
                                                           @extschema@._quote_always(r.rolname), d.reset)
                        ELSE format('ALTER ROLE %s IN DATABASE %s RESET %s;', @extschema@._quote_always(r.rolname),
                                    @extschema@._quote_always(current_database()), d.reset) END
              FROM (SELECT s.setdatabase, s.setrole, s.setconfig, split_part(c.setting, '=', 1) AS name,
                           substr(c.setting, strpos(c.setting, '=') + 1) AS value,
                           CASE WHEN split_part(c.setting, '=', 1) = 'tenancy.workspace_id'
                                THEN 'tenancy.workspace_id' ELSE 'ALL' END AS reset
                      FROM pg_db_role_setting s, unnest(s.setconfig) AS c(setting)
                     WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                       AND lower(split_part(c.setting, '=', 1)) = 'tenancy.workspace_id') AS d
              LEFT JOIN pg_roles r ON r.oid = d.setrole
           ) AS x
     WHERE EXISTS (SELECT 1 FROM t)
     ORDER BY CASE x.sev WHEN 'fail' THEN 0 WHEN 'warn' THEN 1 ELSE 2 END, x.chk COLLATE "C", x.obj COLLATE "C", x.det COLLATE "C";
END
$fn$;

COMMENT ON FUNCTION @extschema@.audit(name) IS
'Audits workspace isolation of the tenant tables (tables with the uuid workspace column). One row per finding: severity (fail, warn, info), check, object, detail, fix (executable SQL, NULL when none). Checks: rls_disabled, rls_not_forced, policy_missing, policy_altered, policy_incomplete (fail); partition_unprotected (fail: a partition of a tenant table without the policy, ENABLE or FORCE); restrictive_policy_citus (fail: a RESTRICTIVE policy where Citus is installed, which Citus makes permissive on the shards); policy_per_row, permissive_policy (warn); superuser_login (warn), bypassrls_login (fail), createrole_login (fail: a login role subject to row-level security with CREATEROLE, or a member of a role with it: in PostgreSQL 15 it can grant itself a BYPASSRLS role), superuser_member (fail: such a role can SET ROLE to a superuser role), bypassrls_grantable (fail: such a role holds, or can SET ROLE to a holder of, ADMIN OPTION on a BYPASSRLS role), replication_login (warn: REPLICATION reads every workspace through replication), bypassrls_role (info, with members), owner_login (fail without FORCE, else warn), no_application_role (fail), application_role (info: none of the fails above, no REPLICATION), truncate_granted (fail), registry_writable (warn: a login role can delete workspaces, whose cascade ignores row-level security, or re-parent them), view_not_security_invoker (fail), materialized_view (warn), security_definer_function (a SECURITY DEFINER function using a tenant table: found through pg_depend for SQL-standard bodies, by the table''s name as an identifier in other sources; fail when its owner bypasses row-level security, else warn), fk_without_workspace, missing_workspace_index, invalid_index (warn); context_default (fail: a role or database default of tenancy.workspace_id in pg_db_role_setting, for this database or all; fix: ALTER ROLE/DATABASE ... RESET tenancy.workspace_id); isolated, shared_preload_libraries (info). Ordered fail, warn, info, then check, object. No rows when no table has the column. Fixes using CONCURRENTLY must run outside a transaction block. Error 22004 on NULL.';

REVOKE ALL ON FUNCTION @extschema@._audit_partitions(name) FROM PUBLIC;

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

CREATE OR REPLACE FUNCTION @extschema@._quota_on_ddl()
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

CREATE OR REPLACE FUNCTION @extschema@._shard_tables(workspace_column name)
RETURNS TABLE (relid oid, tenant boolean, wsnum smallint, ws_not_null boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT c.oid, a.attnum IS NOT NULL, a.attnum, coalesce(a.attnotnull, false)
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = workspace_column
                              AND a.attnum > 0 AND NOT a.attisdropped
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
       -- tenancy's own (tenancy.quota_limit_citus is a reference table already)
       AND n.nspname <> '@extschema@'
$fn$;

CREATE OR REPLACE FUNCTION @extschema@.shard_readiness(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (rule text, blocker boolean, object text, detail text, fix text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'tenancy.shard_readiness(): workspace_column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
    WITH t AS (SELECT * FROM @extschema@._shard_tables(workspace_column)),
    -- unique indexes of tenant tables referenced by a foreign key from a table that is not a
    -- tenant table: a fix dropping them (CASCADE) would drop that foreign key, which nothing
    -- re-creates; a human decides about that foreign key first
    held AS (
        SELECT f.conindid AS indid, string_agg(format('%s constraint %I', f.conrelid::regclass, f.conname), ', ') AS by
          FROM pg_constraint f
          JOIN t pt ON pt.relid = f.confrelid AND pt.tenant
         WHERE f.contype = 'f'
           AND NOT EXISTS (SELECT FROM t t2 WHERE t2.relid = f.conrelid AND t2.tenant)
         GROUP BY f.conindid
    ),
    -- 1. every primary key, unique constraint and unique index of a distributed table includes
    --    the distribution column (commands/table.c, ErrorIfUnsupportedConstraint)
    keys AS (
        SELECT 1 AS prio, 'key_without_workspace_column'::text AS rule, true AS blocker,
               format('%s constraint %I', con.conrelid::regclass, con.conname) AS object,
               format('%s (%s) does not include %I: Citus requires every primary key, unique and exclusion constraint of a distributed table to include the distribution column.%s',
                      CASE con.contype WHEN 'p' THEN 'Primary key' WHEN 'u' THEN 'Unique constraint' ELSE 'Exclusion constraint' END,
                      @extschema@._shard_cols(con.conrelid, con.conkey), workspace_column,
                      (SELECT ' No fix yet: it is referenced by ' || h.by || ', from a table that is not a tenant table; decide about that foreign key first.'
                         FROM held h WHERE h.indid = con.conindid)) AS detail,
               -- no fix while a foreign key from a table that is not a tenant table references
               -- the key (held)
               CASE WHEN con.contype IN ('p', 'u') AND NOT EXISTS (SELECT FROM held h WHERE h.indid = con.conindid) THEN
                   format('ALTER TABLE %s DROP CONSTRAINT %I CASCADE, ADD CONSTRAINT %I %s (%s)',
                          con.conrelid::regclass, con.conname, con.conname,
                          CASE con.contype WHEN 'p' THEN 'PRIMARY KEY'
                               ELSE 'UNIQUE' || CASE WHEN i.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END END,
                          quote_ident(workspace_column) || ', ' || @extschema@._shard_cols(con.conrelid, con.conkey))
               END AS fix
          FROM pg_constraint con
          JOIN t ON t.relid = con.conrelid AND t.tenant
          LEFT JOIN pg_index i ON i.indexrelid = con.conindid
         WHERE con.contype IN ('p', 'u', 'x') AND NOT (t.wsnum = ANY (con.conkey))
        UNION ALL
        SELECT 1, 'key_without_workspace_column', true,
               format('%s index %I', i.indrelid::regclass, ic.relname),
               format('Unique index on (%s) does not include %I: Citus requires every unique index of a distributed table to include the distribution column.',
                      coalesce(@extschema@._shard_cols(i.indrelid, i.indkey::smallint[]), 'an expression'), workspace_column),
               CASE WHEN i.indexprs IS NULL THEN
                   format('DROP INDEX %s; CREATE UNIQUE INDEX %I ON %s USING %s (%s)%s%s',
                          i.indexrelid::regclass, ic.relname, i.indrelid::regclass, am.amname,
                          quote_ident(workspace_column) || ', ' || @extschema@._shard_cols(i.indrelid, i.indkey::smallint[]),
                          CASE WHEN i.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END,
                          CASE WHEN i.indpred IS NOT NULL THEN ' WHERE ' || pg_get_expr(i.indpred, i.indrelid) ELSE '' END)
               END
          FROM pg_index i
          JOIN t ON t.relid = i.indrelid AND t.tenant
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_am am ON am.oid = ic.relam
         WHERE i.indisunique
           AND NOT EXISTS (SELECT FROM pg_constraint c2 WHERE c2.conindid = i.indexrelid AND c2.contype IN ('p', 'u', 'x'))
           AND NOT (t.wsnum = ANY (i.indkey::smallint[]))
    ),
    -- 2. foreign keys (commands/foreign_constraint.c, ErrorIfUnsupportedForeignConstraintExists)
    fks AS (
        SELECT con.oid, con.conrelid, con.confrelid, con.conname, con.confupdtype, con.confdeltype, con.conindid,
               ct.tenant AS child_tenant, pt.tenant AS parent_tenant,
               EXISTS (SELECT FROM unnest(con.conkey, con.confkey) AS p(c, f)
                        WHERE p.c = ct.wsnum AND p.f = pt.wsnum) AS keyed,
               ct.wsnum = ANY (con.conkey) AS child_ws_in_key
          FROM pg_constraint con
          JOIN t ct ON ct.relid = con.conrelid
          JOIN t pt ON pt.relid = con.confrelid
         WHERE con.contype = 'f'
    ),
    fkrules AS (
        -- between two tenant tables: the workspace column on both sides, at the same place
        SELECT 2 AS prio, 'foreign_key_without_workspace_column'::text AS rule, true AS blocker,
               format('%s constraint %I', f.conrelid::regclass, f.conname) AS object,
               format('Foreign key to %s does not include %I on both sides: Citus accepts foreign keys between distributed tables only when they include the distribution column at the same place (and the tables are co-located). The fix makes it composite%s.',
                      f.confrelid::regclass, workspace_column,
                      CASE WHEN f.confupdtype IN ('c', 'n', 'd') OR f.confdeltype IN ('n', 'd')
                           THEN ', with ON UPDATE NO ACTION and ON DELETE SET NULL / SET DEFAULT as NO ACTION (clear the reference before deleting the referenced row)' ELSE '' END) AS detail,
               CASE WHEN NOT EXISTS (SELECT FROM held h WHERE h.indid = f.conindid)
                    THEN @extschema@._shard_fk_ddl(f.oid, workspace_column, true) END AS fix
          FROM fks f WHERE f.child_tenant AND f.parent_tenant AND NOT f.keyed
        UNION ALL
        -- referential actions Citus refuses: ON UPDATE CASCADE / SET NULL / SET DEFAULT between
        -- distributed tables and towards reference tables; SET NULL / SET DEFAULT on the
        -- distribution column
        SELECT 2, 'foreign_key_action', true,
               format('%s constraint %I', f.conrelid::regclass, f.conname),
               format('Foreign key to %s includes the distribution column and has %s: Citus refuses ON UPDATE CASCADE, SET NULL and SET DEFAULT and ON DELETE SET NULL and SET DEFAULT then (with a column list too). The fix keeps ON DELETE CASCADE and RESTRICT; SET NULL and SET DEFAULT become NO ACTION: clear the reference before deleting the referenced row.',
                      f.confrelid::regclass,
                      concat_ws(' and ',
                                CASE WHEN f.confupdtype IN ('c', 'n', 'd') THEN 'ON UPDATE ' || CASE f.confupdtype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END END,
                                CASE WHEN f.confdeltype IN ('n', 'd') THEN 'ON DELETE ' || CASE f.confdeltype WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END END)),
               @extschema@._shard_fk_ddl(f.oid, workspace_column, false)
          FROM fks f
         WHERE f.child_tenant AND (NOT f.parent_tenant OR f.keyed) AND f.child_ws_in_key
           AND (f.confupdtype IN ('c', 'n', 'd') OR f.confdeltype IN ('n', 'd'))
        UNION ALL
        -- a reference table cannot reference a distributed table
        SELECT 2, 'reference_table_references_tenant_table', true,
               format('%s constraint %I', f.conrelid::regclass, f.conname),
               format('%s has no column %I, so it would be a reference table, but its foreign key references the tenant table %s: Citus refuses foreign keys from reference tables to distributed tables.',
                      f.conrelid::regclass, workspace_column, f.confrelid::regclass),
               NULL
          FROM fks f WHERE NOT f.child_tenant AND f.parent_tenant
    ),
    other AS (
        -- row-level security policies with a sub-query (commands/policy.c)
        SELECT 3 AS prio, 'policy_with_subquery'::text AS rule, true AS blocker,
               format('%s policy %I', p.polrelid::regclass, p.polname) AS object,
               'Its expression has a sub-query, which Citus refuses in policies of distributed tables (tenancy''s policies have one unless made with distributed => true, the form for Citus).'::text AS detail,
               CASE WHEN p.polname IN ('tenancy_isolation', 'tenancy_isolation_update', 'tenancy_isolation_delete')
                    THEN format('SELECT %s.enable_rls(%L::regclass, %L, hierarchy => %s, distributed => true)',
                                @extschema@._quote_always('@extschema@'), p.polrelid::regclass::text, workspace_column,
                                CASE WHEN @extschema@._policy_state(p.polrelid, workspace_column) IN ('hierarchy', 'incomplete')
                                     THEN 'true' ELSE 'false' END)
               END AS fix
          FROM pg_policy p JOIN t ON t.relid = p.polrelid
         WHERE coalesce(p.polqual::text, '') LIKE '%{SUBLINK %' OR coalesce(p.polwithcheck::text, '') LIKE '%{SUBLINK %'
        UNION ALL
        -- triggers on a table to distribute (commands/trigger.c)
        SELECT 3, 'trigger_on_table', true,
               format('%s trigger %I', tg.tgrelid::regclass, tg.tgname),
               'Citus refuses to distribute a table (or make a reference table) with triggers unless citus.enable_unsafe_triggers is on (on every node; triggers depending on an extension are refused even then); they then run on the shards, on the workers. Drop the trigger, or set it and accept that.',
               NULL
          FROM pg_trigger tg JOIN t ON t.relid = tg.tgrelid
         WHERE NOT tg.tgisinternal AND tg.tgparentid = 0
           AND NOT (tg.tgfoid = '@extschema@.quota_trigger()'::regprocedure AND t.tenant)
        UNION ALL
        -- tenancy's own quota triggers: shard_plan() drops them before distributing the table and
        -- enforce_quota() makes them again after, in the form counted on the shards
        SELECT 4, 'quota_triggers', false,
               format('%s trigger %I', tg.tgrelid::regclass, tg.tgname),
               'A quota trigger of tenancy.enforce_quota(): shard_plan() drops it before distributing the table and calls enforce_quota() again afterwards (the quota is then counted on the shards); its limits are kept.',
               NULL
          FROM pg_trigger tg JOIN t ON t.relid = tg.tgrelid
         WHERE tg.tgfoid = '@extschema@.quota_trigger()'::regprocedure AND t.tenant
        UNION ALL
        -- table shapes create_distributed_table / create_reference_table refuse
        -- (create_distributed_table.c, EnsureRelationCanBeDistributed; citus_ruleutils.c)
        SELECT 3, 'inheritance', true,
               format('%s', i.inhrelid::regclass),
               format('It inherits from %s (INHERITS): Citus distributes ordinary and partitioned tables only.', i.inhparent::regclass),
               NULL
          FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent AND pc.relkind = 'r'
         WHERE i.inhrelid IN (SELECT relid FROM t) OR i.inhparent IN (SELECT relid FROM t)
        UNION ALL
        SELECT 3, 'partitioned_reference_table', true,
               format('%s', t.relid::regclass),
               format('A partitioned table without %I would be a reference table: Citus refuses partitioned reference tables.', workspace_column),
               NULL
          FROM t JOIN pg_class c ON c.oid = t.relid
         WHERE NOT t.tenant AND c.relkind = 'p'
        UNION ALL
        SELECT 3, 'multi_level_partitioning', true,
               format('%s', t.relid::regclass),
               'A partition of it is partitioned itself: Citus distributes one level of partitions only.',
               NULL
          FROM t JOIN pg_class c ON c.oid = t.relid
         WHERE t.tenant AND c.relkind = 'p'
           AND EXISTS (SELECT FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhrelid
                        WHERE i.inhparent = t.relid AND pc.relkind = 'p')
        UNION ALL
        SELECT 3, 'workspace_column_type', true,
               format('%s column %I', t.relid::regclass, workspace_column),
               format('Its type is %s, not %s like the other tenant tables: co-located tables need the same distribution column type.',
                      format_type(a.atttypid, a.atttypmod), format_type(m.typ, -1)),
               NULL
          FROM t JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = t.wsnum
          CROSS JOIN (SELECT a2.atttypid AS typ FROM t t2 JOIN pg_attribute a2 ON a2.attrelid = t2.relid AND a2.attnum = t2.wsnum
                       WHERE t2.tenant GROUP BY a2.atttypid ORDER BY count(*) DESC, a2.atttypid LIMIT 1) m
         WHERE t.tenant AND a.atttypid <> m.typ
        UNION ALL
        SELECT 3, 'generated_workspace_column', true,
               format('%s column %I', t.relid::regclass, workspace_column),
               'It is GENERATED ALWAYS AS (...) STORED: Citus refuses a generated distribution column.',
               NULL
          FROM t JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = t.wsnum
         WHERE t.tenant AND a.attgenerated = 's'
        UNION ALL
        -- a nullable distribution column: rows with NULL cannot be inserted
        SELECT 4, 'nullable_workspace_column', false,
               format('%s column %I', t.relid::regclass, workspace_column),
               'Citus refuses to insert a row whose distribution column is NULL.',
               format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', t.relid::regclass, workspace_column)
          FROM t WHERE t.tenant AND NOT t.ws_not_null
        UNION ALL
        -- tables without the column: copied to every node
        SELECT 5, 'reference_table_candidate', false,
               format('%s', t.relid::regclass),
               format('No column %I: a reference table (create_reference_table, a copy on every node), or leave it on the coordinator.', workspace_column),
               NULL
          FROM t WHERE NOT t.tenant
    )
    SELECT x.rule, x.blocker, x.object, x.detail, x.fix
      FROM (SELECT * FROM keys UNION ALL SELECT * FROM fkrules UNION ALL SELECT * FROM other) x
     ORDER BY x.prio, x.object COLLATE "C", x.rule;
END
$fn$;

CREATE OR REPLACE FUNCTION @extschema@.shard_plan(workspace_column name DEFAULT 'workspaceId')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    blockers integer;
    plan text;
    anchor regclass;
    r record;
    done oid[] := '{}';
    todo oid[];
    progress boolean;
    readd text;
    requota text;
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'tenancy.shard_plan(): workspace_column must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT count(*) INTO blockers FROM @extschema@.shard_readiness(workspace_column) s WHERE s.blocker;
    IF blockers > 0 THEN
        RAISE EXCEPTION 'the schema has % blocker(s) for distribution by %', blockers, quote_ident(workspace_column)
            USING ERRCODE = '55000',
                  HINT = pg_catalog.format('SELECT * FROM tenancy.shard_readiness(%L) WHERE blocker; apply the fixes in order (or decide those without one).', workspace_column);
    END IF;
    plan := format(E'-- tenancy.shard_plan(%L): distribute this database''s tables with Citus, on the coordinator,\n-- after tenancy.shard_readiness() shows no blocker. Every node: shared_preload_libraries =\n-- ''citus,tenancy'' (citus first) and max_prepared_transactions high enough for Citus'' two-phase\n-- commits (e.g. 200). Each statement commits on its own (Citus copies a table''s rows to its\n-- shards as it distributes it).\n', workspace_column);
    -- the foreign keys from tenant tables to reference tables go first and come back last:
    -- create_reference_table() would otherwise turn every table referencing it into a Citus
    -- local table, which then cannot be distributed while another local table references it
    -- (found on a real Citus 13.2 cluster)
    FOR r IN SELECT c.conrelid::regclass AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def
               FROM pg_constraint c
               JOIN @extschema@._shard_tables(workspace_column) ct ON ct.relid = c.conrelid AND ct.tenant
               JOIN @extschema@._shard_tables(workspace_column) pt ON pt.relid = c.confrelid AND NOT pt.tenant
              WHERE c.contype = 'f'
              ORDER BY c.conrelid::regclass::text COLLATE "C", c.conname LOOP
        IF readd IS NULL THEN
            plan := plan || E'\n-- foreign keys to reference tables: dropped now, added again at the end\n';
            readd := E'\n-- foreign keys to reference tables, back\n';
        END IF;
        plan := plan || format(E'ALTER TABLE %s DROP CONSTRAINT %I;\n', r.tbl, r.conname);
        readd := readd || format(E'ALTER TABLE %s ADD CONSTRAINT %I %s;\n', r.tbl, r.conname, r.def);
    END LOOP;
    -- tenancy's quota triggers: dropped before the tables are distributed (Citus refuses a table
    -- with triggers), made again by enforce_quota() at the end, counted on the shards
    FOR r IN SELECT q.tbl, q.workspace_column, q.counted_when
               FROM @extschema@.quota_table q
               JOIN @extschema@._shard_tables(shard_plan.workspace_column) s ON s.relid = q.tbl AND s.tenant
              ORDER BY q.tbl::text COLLATE "C" LOOP
        IF requota IS NULL THEN
            plan := plan || E'\n-- quota triggers: dropped now, made again by enforce_quota() at the end (limits kept)\n';
            requota := E'\n-- quotas, counted on the shards\n';
        END IF;
        plan := plan || format(E'DROP TRIGGER IF EXISTS tenancy_quota_insert ON %1$s;\nDROP TRIGGER IF EXISTS tenancy_quota_delete ON %1$s;\n'
                               'DROP TRIGGER IF EXISTS tenancy_quota_update ON %1$s;\nDROP TRIGGER IF EXISTS tenancy_quota_truncate ON %1$s;\n', r.tbl);
        requota := requota || format(E'SELECT %s.enforce_quota(%L, %L, %L);\n', @extschema@._quote_always('@extschema@'),
                                     r.tbl::text, r.workspace_column, r.counted_when);
    END LOOP;
    -- tables in foreign-key order: a table once every table it references is placed
    FOR pass IN 1 .. 2 LOOP  -- 1: reference tables, 2: distributed tables
        plan := plan || CASE pass WHEN 1 THEN E'\n-- reference tables: a copy on every node\n'
                                  ELSE E'\n-- distributed tables: sharded by the workspace column, co-located\n' END;
        SELECT array_agg(s.relid ORDER BY s.relid::regclass::text COLLATE "C") INTO todo
          FROM @extschema@._shard_tables(workspace_column) s WHERE s.tenant = (pass = 2);
        todo := coalesce(todo, '{}');
        LOOP
            progress := false;
            FOR r IN SELECT u.rel FROM unnest(todo) WITH ORDINALITY AS u(rel, i) ORDER BY u.i LOOP
                CONTINUE WHEN r.rel = ANY (done);
                CONTINUE WHEN EXISTS (SELECT FROM pg_constraint c
                                       WHERE c.contype = 'f' AND c.conrelid = r.rel AND c.confrelid <> r.rel
                                         AND c.confrelid = ANY (todo) AND NOT c.confrelid = ANY (done));
                IF pass = 1 THEN
                    plan := plan || format(E'SELECT create_reference_table(%L);\n', r.rel::regclass::text);
                ELSIF anchor IS NULL THEN
                    anchor := r.rel::regclass;
                    plan := plan || format(E'SELECT create_distributed_table(%L, %L);\n', r.rel::regclass::text, workspace_column);
                ELSE
                    plan := plan || format(E'SELECT create_distributed_table(%L, %L, colocate_with => %L);\n',
                                           r.rel::regclass::text, workspace_column, anchor::text);
                END IF;
                done := done || r.rel;
                progress := true;
            END LOOP;
            EXIT WHEN NOT progress;
        END LOOP;
        IF EXISTS (SELECT FROM unnest(todo) u WHERE NOT u = ANY (done)) THEN
            RAISE EXCEPTION 'foreign keys form a cycle between tables to distribute'
                USING ERRCODE = '55000',
                      DETAIL = (SELECT string_agg(u::regclass::text, ', ') FROM unnest(todo) u WHERE NOT u = ANY (done)),
                      HINT = 'Drop one foreign key of the cycle before distributing, and create it again afterwards.';
        END IF;
    END LOOP;
    RETURN plan || coalesce(readd, '') || coalesce(requota, '');
END
$fn$;
