-- Row-level security helpers: emit and apply the tenant isolation policy.
--
-- The policy compares the workspace column with (SELECT tenancy.current_workspace_id()): the
-- sub-select makes it an initplan, evaluated once per query, and keeps an index on the
-- workspace column usable. With no context the function returns NULL, "col = NULL" is never
-- true: an unset context sees and writes nothing (fail closed).
--
-- Errors: 42703 workspace column missing, 42804 column not uuid, 42809 not a table,
-- 3F000 schema missing (enable_rls_all), 22004 NULL argument.
-- The hierarchy option's policy calls tenancy.readable_workspace_ids() (src/hierarchy.rs).

-- Always-quoted identifier (quote_ident quotes only when needed; emitted DDL quotes always).
CREATE FUNCTION @extschema@._quote_always(ident text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT '"' || replace(ident, '"', '""') || '"' $$;
COMMENT ON FUNCTION @extschema@._quote_always(text) IS 'Internal: identifier in double quotes, always.';

-- The schema-qualified, always-quoted name of a relation.
CREATE FUNCTION @extschema@._qualified_name(rel oid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT @extschema@._quote_always(n.nspname) || '.' || @extschema@._quote_always(c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel
$fn$;
COMMENT ON FUNCTION @extschema@._qualified_name(oid) IS 'Internal: "schema"."relation", always quoted.';

-- The schema-qualified, always-quoted name of a table after checking it can carry the policy.
CREATE FUNCTION @extschema@._rls_target(tbl regclass, workspace_column name)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
    col_type regtype;
BEGIN
    IF tbl IS NULL OR workspace_column IS NULL THEN
        RAISE EXCEPTION 'table and workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT c.relkind INTO r FROM pg_class c WHERE c.oid = tbl;
    IF r.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot apply row-level security to % : it is not a table', tbl USING ERRCODE = '42809';
    END IF;
    SELECT a.atttypid::regtype INTO col_type FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'column % of table % does not exist', @extschema@._quote_always(workspace_column), tbl
            USING ERRCODE = '42703', HINT = 'Pass the workspace column as the second argument (default "workspaceId").';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'workspace column % of table % has type %, not uuid', @extschema@._quote_always(workspace_column), tbl, col_type
            USING ERRCODE = '42804';
    END IF;
    RETURN @extschema@._qualified_name(tbl);
END
$fn$;
COMMENT ON FUNCTION @extschema@._rls_target(regclass, name) IS 'Internal: validated, quoted name of a table for the isolation policy.';

-- Whether Citus is installed in this database: then the policy takes the form Citus accepts on
-- distributed tables (no sub-query: commands/policy.c refuses any), also on tables not yet
-- distributed (create_distributed_table refuses a table whose policy has one).
CREATE FUNCTION @extschema@._citus_installed()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') $fn$;
COMMENT ON FUNCTION @extschema@._citus_installed() IS 'Internal: whether the citus extension is installed in this database.';

-- The isolation policy as separate statements (Citus forwards each utility statement on a
-- distributed table to its shards as one prepared statement, which cannot hold several).
-- SECURITY DEFINER: it only reads the catalog and returns text, and the partition event trigger
-- (run as the user of the DDL, who may call neither enable_rls nor _qualified_name) needs it.
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

CREATE FUNCTION @extschema@.disable_rls(tbl regclass)
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
COMMENT ON FUNCTION @extschema@.disable_rls(regclass) IS
'Removes the isolation policies and turns row-level security off (NO FORCE, DISABLE). Idempotent.';

REVOKE ALL ON FUNCTION @extschema@.enable_rls(regclass, name, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.enable_rls_all(name, name, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.disable_rls(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._qualified_name(oid) FROM PUBLIC;

-- A partition created or attached later gets the policies of its partitioned table (a partition
-- queried directly is not covered by its parent's): an event trigger at the end of CREATE TABLE
-- and ALTER TABLE applies enable_rls() to every partition of a tree whose root carries
-- "tenancy_isolation", in the root's form (column, hierarchy option, form for Citus or not),
-- where the policy, ENABLE or FORCE is missing. Runs as the user of the DDL (who owns the new
-- partition); its own DDL does not fire it again.
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
