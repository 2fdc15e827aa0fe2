-- Audit and index advice: what stands between a multi-tenant database and workspace isolation,
-- as rows an operator can read and fix.
--
-- A tenant table is a table (plain or partitioned, not a partition) outside pg_catalog,
-- information_schema, pg_toast and the extension's schema with a uuid workspace column.
-- audit() inspects the catalogs only: it never changes anything. Each row carries executable
-- SQL (fix) where one exists; identifiers in it are always quoted and schema-qualified.
-- index_advice() lists the indexes workspace-scoped access and the foreign keys' actions need.
-- Both are for operators (superuser or migration owner): EXECUTE is revoked from PUBLIC.
--
-- Errors: 22004 NULL argument. A column name no table has gives an empty result.

-- The call of tenancy.enable_rls that (re)applies the isolation policy to a table.
CREATE FUNCTION @extschema@._enable_rls_sql(qualified text, workspace_column name, hierarchy boolean DEFAULT false)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('SELECT %s.enable_rls(%L::regclass, %L%s);', @extschema@._quote_always('@extschema@'),
                  qualified, workspace_column, CASE WHEN hierarchy THEN ', hierarchy => true' ELSE '' END)
$fn$;
COMMENT ON FUNCTION @extschema@._enable_rls_sql(text, name, boolean) IS
'Internal: SELECT tenancy.enable_rls(''table''::regclass, ''column''[, hierarchy => true]); for a quoted, qualified table name.';

-- A policy's command and roles as CREATE POLICY spells them.
CREATE FUNCTION @extschema@._policy_cmd(cmd "char")
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE cmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END
$fn$;
COMMENT ON FUNCTION @extschema@._policy_cmd("char") IS 'Internal: the command of a policy (pg_policy.polcmd) as CREATE POLICY spells it.';

CREATE FUNCTION @extschema@._policy_roles(roles oid[])
RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN roles = '{0}'::oid[] THEN 'PUBLIC'
                ELSE (SELECT string_agg(@extschema@._quote_always(r.rolname), ', ' ORDER BY r.rolname COLLATE "C")
                        FROM pg_roles r WHERE r.oid = ANY (roles)) END
$fn$;
COMMENT ON FUNCTION @extschema@._policy_roles(oid[]) IS 'Internal: the roles of a policy (pg_policy.polroles) as CREATE POLICY spells them, always quoted.';

-- The tenant tables for a workspace column.
CREATE FUNCTION @extschema@._tenant_tables(workspace_column name)
RETURNS TABLE (relid oid, nspname name, relname name, relkind "char", attnum smallint, relowner oid,
               rls_enabled boolean, rls_forced boolean, qualified text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
           @extschema@._qualified_name(c.oid)
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND a.atttypid = 'uuid'::regtype
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', '@extschema@')
       AND NOT pg_is_other_temp_schema(n.oid)
$fn$;
COMMENT ON FUNCTION @extschema@._tenant_tables(name) IS
'Internal: the tenant tables (relkind r/p, not a partition, outside system schemas and the extension''s schema) with a non-dropped uuid column of that name, with their RLS flags and quoted, schema-qualified name.';

-- Always-quoted, comma-separated column names of a table, in the order given.
CREATE FUNCTION @extschema@._column_list(tbl oid, cols smallint[])
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT string_agg(@extschema@._quote_always(a.attname), ', ' ORDER BY u.o)
      FROM unnest(cols) WITH ORDINALITY AS u(k, o)
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = u.k
$fn$;
COMMENT ON FUNCTION @extschema@._column_list(oid, smallint[]) IS
'Internal: the columns'' names, always quoted, comma-separated, in the order given.';

-- Whether an index (btree or hash, no predicate) has exactly these columns, in any order, as its
-- leading key columns. valid = true: the index is usable (indisvalid, indisready);
-- valid = false: the index exists but is invalid (a failed or running CREATE INDEX CONCURRENTLY).
CREATE FUNCTION @extschema@._has_leading_index(tbl oid, cols smallint[], valid boolean DEFAULT true)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT EXISTS (
        SELECT 1
          FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_am am ON am.oid = ic.relam
         WHERE i.indrelid = tbl
           AND i.indpred IS NULL
           AND (i.indisvalid AND i.indisready) = valid
           AND am.amname IN ('btree', 'hash')
           AND i.indnkeyatts >= cardinality(cols)
           AND (SELECT array_agg(u.k ORDER BY u.k) FROM unnest(i.indkey::smallint[]) WITH ORDINALITY AS u(k, o)
                 WHERE u.o <= cardinality(cols))
             = (SELECT array_agg(DISTINCT c ORDER BY c) FROM unnest(cols) AS c))
$fn$;
COMMENT ON FUNCTION @extschema@._has_leading_index(oid, smallint[], boolean) IS
'Internal: whether the table has a non-partial btree or hash index whose leading key columns are exactly the given set (any order); valid selects usable (indisvalid and indisready) or invalid indexes.';

-- The deparsed policy expressions tenancy emits (pg_get_expr with search_path = pg_catalog):
--   standard  "col" = (SELECT tenancy.current_workspace_id())
--             -> ("col" = ( SELECT tenancy.current_workspace_id() AS current_workspace_id))
--   hierarchy "col" = ANY ((SELECT tenancy.readable_workspace_ids())::uuid[])
--             -> ("col" = ANY (( SELECT tenancy.readable_workspace_ids() AS readable_workspace_ids)::uuid[]))
-- pg_get_expr quotes identifiers only where needed, as quote_ident does.
CREATE FUNCTION @extschema@._policy_expr(workspace_column name, form text)
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

-- The state of a table's tenancy policies: 'standard', 'hierarchy' (complete), 'incomplete'
-- (hierarchy form without both restrictive companions), 'altered' or 'missing'.
CREATE FUNCTION @extschema@._policy_state(tbl oid, workspace_column name)
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

-- The context functions a policy expression calls where they are evaluated per row: outside any
-- uncorrelated sub-select (SUBLINK). An uncorrelated sub-select is planned as an initplan (or a
-- hashed subplan) and runs once per query; a correlated one runs for every row, and so do the
-- calls inside it, unless they sit in an uncorrelated sub-select of their own. Walks the stored
-- node tree: QUERY nodes open a level (Var.varlevelsup counts those levels), a QUERY directly
-- under a SUBLINK is a sub-select, others (FROM subqueries, CTEs) belong to their parent's plan.
CREATE FUNCTION @extschema@._per_row_calls(expr pg_node_tree)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    watched oid[];
    tok text;
    stack text[] := '{}';       -- node names, innermost last
    depth int := 0;             -- query level: 0 is the policy's own row
    sublink boolean[] := '{}';  -- per level: the QUERY is a sub-select
    correlated boolean[] := '{}';   -- per level: references a level outside it
    call_fn oid[] := '{}';      -- watched calls found, with the level they currently belong to
    call_lvl int[] := '{}';
    lvl int;
    i int;
BEGIN
    IF expr IS NULL THEN
        RETURN '{}';
    END IF;
    SELECT array_agg(p.oid) INTO watched
      FROM pg_proc p
     WHERE (p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = 'current_setting')
        OR (p.pronamespace = '@extschema@'::regnamespace
            AND p.proname IN ('current_workspace_id', 'require_workspace_id', 'readable_workspace_ids'));
    -- backslash-escaped characters (inside names and strings) are dropped before tokenizing
    FOR tok IN
        SELECT m[1] FROM regexp_matches(regexp_replace(expr::text, '\\.', '', 'g'),
                                        '(\{[A-Z_]+|\}|:funcid [0-9]+|:varlevelsup [0-9]+)', 'g') AS m
    LOOP
        IF left(tok, 1) = '{' THEN
            IF tok = '{QUERY' THEN
                depth := depth + 1;
                sublink[depth] := coalesce(stack[cardinality(stack)] = 'SUBLINK', false);
                correlated[depth] := false;
            END IF;
            stack := stack || substr(tok, 2);
        ELSIF tok = '}' THEN
            IF stack[cardinality(stack)] = 'QUERY' THEN
                FOR i IN 1 .. coalesce(cardinality(call_lvl), 0) LOOP
                    IF call_lvl[i] = depth THEN
                        -- an uncorrelated sub-select runs once: its calls are fine (level -1)
                        call_lvl[i] := CASE WHEN sublink[depth] AND NOT correlated[depth] THEN -1 ELSE depth - 1 END;
                    END IF;
                END LOOP;
                depth := depth - 1;
            END IF;
            stack := stack[1:cardinality(stack) - 1];
        ELSIF tok LIKE ':funcid %' THEN
            IF split_part(tok, ' ', 2)::oid = ANY (watched) THEN
                call_fn := call_fn || split_part(tok, ' ', 2)::oid;
                call_lvl := call_lvl || depth;
            END IF;
        ELSE
            -- a Var of level (depth - varlevelsup): every level inside that one is correlated
            lvl := depth - split_part(tok, ' ', 2)::int;
            FOR i IN lvl + 1 .. depth LOOP
                correlated[i] := true;
            END LOOP;
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT u.f::regprocedure::text FROM unnest(call_fn, call_lvl) AS u(f, l) WHERE u.l = 0 ORDER BY 1);
END
$fn$;
COMMENT ON FUNCTION @extschema@._per_row_calls(pg_node_tree) IS
'Internal: the calls of current_setting, current_workspace_id, require_workspace_id or readable_workspace_ids in a policy expression that are evaluated per row (not inside an uncorrelated sub-select).';

-- Foreign-key action names (pg_constraint.confupdtype / confdeltype).
CREATE FUNCTION @extschema@._fk_action(action "char")
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE action WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                       WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END
$fn$;
COMMENT ON FUNCTION @extschema@._fk_action("char") IS 'Internal: the SQL name of a foreign-key action code.';

-- The index advice with its kind: 'workspace_index', 'fk_index', 'invalid_index'.
CREATE FUNCTION @extschema@._index_advice(workspace_column name)
RETURNS TABLE (relid oid, kind text, reason text, ddl text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH t AS MATERIALIZED (
        SELECT tt.*,
               CASE WHEN tt.relkind = 'p' THEN '' ELSE 'CONCURRENTLY ' END AS concurrently,
               CASE WHEN tt.relkind = 'p'
                    THEN ' (partitioned table: CREATE INDEX CONCURRENTLY is not supported, this blocks writes while it builds; to avoid that, build the index on each partition concurrently and attach it to an index created ON ONLY the table)'
                    ELSE ' (CREATE INDEX CONCURRENTLY cannot run inside a transaction block)' END AS build_note
          FROM @extschema@._tenant_tables(workspace_column) AS tt)
    -- (a) no index led by the workspace column (an invalid one is reported under (c))
    SELECT t.relid, 'workspace_index',
           format('no valid index led by %s: workspace-scoped queries and the row-level security policy read the whole table%s',
                  @extschema@._quote_always(workspace_column), t.build_note),
           format('CREATE INDEX %sON %s (%s);', t.concurrently, t.qualified, @extschema@._quote_always(workspace_column))
      FROM t
     WHERE NOT @extschema@._has_leading_index(t.relid, ARRAY[t.attnum])
       AND NOT @extschema@._has_leading_index(t.relid, ARRAY[t.attnum], false)
    UNION ALL
    -- (b) foreign keys (other than the workspace column alone) whose columns lead no index;
    -- one row per set of columns
    (SELECT DISTINCT ON (t.relid, (SELECT array_agg(c ORDER BY c) FROM unnest(k.conkey) AS c))
           t.relid, 'fk_index',
           format('foreign key %s (%s) references %s ON DELETE %s ON UPDATE %s: each delete or key update there looks rows of this table up by (%s), and no index serves it; (%s) also serves workspace-scoped lookups by that key%s',
                  @extschema@._quote_always(k.conname), @extschema@._column_list(t.relid, k.conkey),
                  @extschema@._qualified_name(k.confrelid),
                  @extschema@._fk_action(k.confdeltype), @extschema@._fk_action(k.confupdtype),
                  @extschema@._column_list(t.relid, k.conkey), idx.cols, t.build_note),
           format('CREATE INDEX %sON %s (%s);', t.concurrently, t.qualified, idx.cols)
      FROM t
      JOIN pg_constraint k ON k.conrelid = t.relid AND k.contype = 'f'
      CROSS JOIN LATERAL (
          SELECT @extschema@._column_list(t.relid,
                     ARRAY(SELECT u.a FROM unnest(k.conkey) WITH ORDINALITY AS u(a, o) WHERE u.a <> t.attnum ORDER BY u.o)
                     || t.attnum) AS cols) AS idx
     WHERE k.conkey <> ARRAY[t.attnum]
       AND NOT @extschema@._has_leading_index(t.relid, k.conkey)
       AND NOT @extschema@._has_leading_index(t.relid, k.conkey, false)
     ORDER BY t.relid, (SELECT array_agg(c ORDER BY c) FROM unnest(k.conkey) AS c), k.conname COLLATE "C")
    UNION ALL
    -- (c) invalid indexes: rebuild (transient _ccnew/_ccold indexes of a failed REINDEX CONCURRENTLY: drop)
    SELECT t.relid, 'invalid_index',
           format('index %s is invalid (a failed or unfinished CREATE INDEX or REINDEX CONCURRENTLY): queries cannot use it (CONCURRENTLY cannot run inside a transaction block)',
                  @extschema@._quote_always(ic.relname)),
           format('%s %s;', CASE WHEN ic.relname ~ '_cc(new|old)[0-9]*$' THEN 'DROP INDEX CONCURRENTLY'
                                 ELSE 'REINDEX INDEX CONCURRENTLY' END,
                  @extschema@._qualified_name(ic.oid))
      FROM t
      JOIN pg_index i ON i.indrelid = t.relid AND NOT (i.indisvalid AND i.indisready)
      JOIN pg_class ic ON ic.oid = i.indexrelid AND ic.relkind = 'i'
$fn$;
COMMENT ON FUNCTION @extschema@._index_advice(name) IS
'Internal: index_advice() rows with their kind (workspace_index, fk_index, invalid_index), shared with audit().';

CREATE FUNCTION @extschema@.index_advice(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (table_name regclass, reason text, ddl text, queries text, calls bigint,
               cost_before numeric, cost_after numeric)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
        WITH workload AS MATERIALIZED (
            SELECT * FROM @extschema@._workload_advice(workspace_column)
        ), catalog AS (
            SELECT a.relid, a.kind, a.reason, a.ddl FROM @extschema@._index_advice(workspace_column) AS a
             -- an advised workload index leads with the workspace column: it is the workspace index
             WHERE NOT (a.kind = 'workspace_index'
                        AND EXISTS (SELECT FROM workload w WHERE w.relid = a.relid AND w.kind = 'workload_index'))
        ), advice AS (
            SELECT c.relid, 1 AS section, c.reason, c.ddl, NULL::text AS queries, NULL::bigint AS calls,
                   NULL::float8 AS cost_before, NULL::float8 AS cost_after
              FROM catalog c
            UNION ALL
            SELECT w.relid, CASE w.kind WHEN 'note' THEN 0 WHEN 'workload_index' THEN 2 ELSE 3 END,
                   CASE w.kind WHEN 'note' THEN 'note: ' || w.reason ELSE w.reason END,
                   w.ddl, w.queries, w.calls, w.cost_before, w.cost_after
              FROM workload w
        )
        SELECT a.relid::regclass, a.reason, a.ddl, a.queries, a.calls,
               round(a.cost_before::numeric, 2), round(a.cost_after::numeric, 2)
          FROM advice a
          LEFT JOIN pg_class c ON c.oid = a.relid
          LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
         ORDER BY a.relid IS NOT NULL, n.nspname COLLATE "C", c.relname COLLATE "C", a.section,
                  a.reason COLLATE "C", a.ddl COLLATE "C";
END
$fn$;
COMMENT ON FUNCTION @extschema@.index_advice(name) IS
'Indexes workspace-scoped access needs on the tenant tables (tables with the uuid workspace column). From the catalog: (a) an index led by the workspace column where none is valid; (b) for each foreign key of a tenant table (except the workspace column alone) whose columns lead no index: (key columns..., workspace column); (c) invalid indexes: REINDEX INDEX CONCURRENTLY. From the observed workload (with pg_qualstats; verified with hypopg): composite indexes led by the workspace column, then the equality columns, then the sort (with its direction) or a range column, merged across queries, each with the queries it serves (calls as sampled by pg_qualstats) and the planner''s estimated cost per execution before and after; existing indexes an advised one makes redundant (DROP INDEX CONCURRENTLY); notes (table_name NULL) on what is missing. Every ddl uses CONCURRENTLY: run each outside a transaction block. Error 22004 on NULL.';

-- Whether the indexes the workload advice proposed (named ..._tenancy_idx) are used since.
CREATE FUNCTION @extschema@.index_advice_usage(workspace_column name DEFAULT 'workspaceId')
RETURNS TABLE (index_name regclass, table_name regclass, scans bigint, size text, verdict text, ddl text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF workspace_column IS NULL THEN
        RAISE EXCEPTION 'workspace column must not be NULL' USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
        SELECT i.indexrelid::regclass, i.indrelid::regclass, coalesce(s.idx_scan, 0),
               pg_size_pretty(pg_relation_size(i.indexrelid)),
               CASE WHEN NOT i.indisvalid THEN 'invalid (a failed CREATE INDEX CONCURRENTLY): drop it and create it again'
                    WHEN coalesce(s.idx_scan, 0) > 0 THEN format('used: %s scans since it was created (or since the statistics were reset)', s.idx_scan)
                    ELSE 'unused since it was created (or since the statistics were reset): if the workload has run since, drop it' END,
               CASE WHEN NOT i.indisvalid OR coalesce(s.idx_scan, 0) = 0
                    THEN format('DROP INDEX CONCURRENTLY %s;', i.indexrelid::regclass) END
          FROM @extschema@._tenant_tables(workspace_column) AS t
          JOIN pg_index i ON i.indrelid = t.relid
          JOIN pg_class ic ON ic.oid = i.indexrelid
          LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = i.indexrelid
         WHERE ic.relname LIKE '%\_tenancy\_idx'
         ORDER BY t.nspname COLLATE "C", t.relname COLLATE "C", ic.relname COLLATE "C";
END
$fn$;
COMMENT ON FUNCTION @extschema@.index_advice_usage(name) IS
'After applying index_advice(): the advised indexes (named ..._tenancy_idx) on the tenant tables, their scans since they were created (pg_stat_all_indexes.idx_scan) and size, and for an unused or invalid one the DROP INDEX CONCURRENTLY to run. Error 22004 on NULL.';

-- Audit checks on the tenant tables themselves: row-level security, FORCE, the policy, owners,
-- TRUNCATE grants, the workspace index. relid: the table a row is about (NULL: none).
CREATE FUNCTION @extschema@._audit_tables(workspace_column name)
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text, relid oid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH t AS MATERIALIZED (
        SELECT tt.*, @extschema@._policy_state(tt.relid, workspace_column) AS state,
               'table ' || tt.qualified AS label,
               @extschema@._enable_rls_sql(tt.qualified, workspace_column) AS enable_sql
          FROM @extschema@._tenant_tables(workspace_column) AS tt)
    SELECT 'fail', 'rls_disabled', t.label,
           'row-level security is disabled: every role with privileges on the table reads and writes every workspace''s rows',
           CASE WHEN t.state IN ('standard', 'hierarchy') THEN format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', t.qualified)
                ELSE t.enable_sql END,
           t.relid
      FROM t WHERE NOT t.rls_enabled
    UNION ALL
    SELECT 'fail', 'rls_not_forced', t.label,
           'row-level security is not forced: the table''s owner (and members of its role) bypass the policy',
           format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', t.qualified), t.relid
      FROM t WHERE NOT t.rls_forced
    UNION ALL
    SELECT 'fail', 'policy_missing', t.label,
           'the table has no "tenancy_isolation" policy: nothing ties its rows to the current workspace',
           t.enable_sql, t.relid
      FROM t WHERE t.state = 'missing'
    UNION ALL
    SELECT 'fail', 'policy_altered', format('policy "tenancy_isolation" on %s', t.qualified),
           format('the policy is not in a form tenancy emits (edited by hand?): %s %s TO %s USING %s WITH CHECK %s',
                  CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                  'FOR ' || @extschema@._policy_cmd(p.polcmd), @extschema@._policy_roles(p.polroles),
                  coalesce(pg_get_expr(p.polqual, p.polrelid), '(none)'),
                  coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '(none)')),
           t.enable_sql, t.relid
      FROM t JOIN pg_policy p ON p.polrelid = t.relid AND p.polname = 'tenancy_isolation'
     WHERE t.state = 'altered'
    UNION ALL
    SELECT 'fail', 'policy_incomplete', format('policy "tenancy_isolation" on %s', t.qualified),
           'the hierarchy form of the policy reads readable_workspace_ids() but the RESTRICTIVE policies "tenancy_isolation_update" and "tenancy_isolation_delete" (USING the current workspace) are missing or altered: updates and deletes reach other workspaces',
           @extschema@._enable_rls_sql(t.qualified, workspace_column, true),
           t.relid
      FROM t WHERE t.state = 'incomplete'
    UNION ALL
    -- login roles that own a tenant table (or are members of its owner); superusers: see audit_roles
    SELECT CASE WHEN t.rls_forced THEN 'warn' ELSE 'fail' END, 'owner_login', t.label,
           format('login role %s %s%s',
                  @extschema@._quote_always(r.rolname),
                  CASE WHEN r.oid = t.relowner THEN 'owns the table'
                       ELSE 'is a member of the table''s owner ' || @extschema@._quote_always(o.rolname) END,
                  CASE WHEN t.rls_forced
                       THEN ': it can turn row-level security off; connect the application as a separate role'
                       ELSE ' and the table lacks FORCE ROW LEVEL SECURITY: row-level security is inert for it' END),
           CASE WHEN NOT t.rls_forced THEN format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', t.qualified) END,
           t.relid
      FROM t
      JOIN pg_roles o ON o.oid = t.relowner
      JOIN pg_roles r ON r.rolcanlogin AND NOT r.rolsuper AND pg_has_role(r.oid, t.relowner, 'MEMBER')
    UNION ALL
    -- TRUNCATE ignores row-level security; owners have it implicitly
    SELECT 'fail', 'truncate_granted', t.label,
           format('%s holds TRUNCATE on the table, which ignores row-level security: it can wipe every workspace''s rows',
                  CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE 'role ' || @extschema@._quote_always(ge.rolname) END),
           CASE WHEN g.grantor = t.relowner
                THEN format('REVOKE TRUNCATE ON TABLE %s FROM %s CASCADE;', t.qualified,
                            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE @extschema@._quote_always(ge.rolname) END)
                ELSE format(E'SET ROLE %s;\nREVOKE TRUNCATE ON TABLE %s FROM %s CASCADE;\nRESET ROLE;',
                            @extschema@._quote_always(gr.rolname), t.qualified,
                            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE @extschema@._quote_always(ge.rolname) END)
           END,
           t.relid
      FROM t
      JOIN pg_class c ON c.oid = t.relid
      CROSS JOIN LATERAL aclexplode(c.relacl) AS g
      LEFT JOIN pg_roles ge ON ge.oid = g.grantee
      JOIN pg_roles gr ON gr.oid = g.grantor
     WHERE g.privilege_type = 'TRUNCATE'
       AND CASE WHEN g.grantee = 0 THEN true
                ELSE NOT ge.rolsuper AND NOT pg_has_role(g.grantee, t.relowner, 'MEMBER') END
    UNION ALL
    SELECT 'warn', CASE a.kind WHEN 'workspace_index' THEN 'missing_workspace_index' ELSE 'invalid_index' END,
           t.label, a.reason, a.ddl, t.relid
      FROM t JOIN @extschema@._index_advice(workspace_column) AS a ON a.relid = t.relid
     WHERE a.kind IN ('workspace_index', 'invalid_index')
$fn$;
COMMENT ON FUNCTION @extschema@._audit_tables(name) IS
'Internal: audit() checks on each tenant table: rls_disabled, rls_not_forced, policy_missing, policy_altered, policy_incomplete, owner_login, truncate_granted, missing_workspace_index, invalid_index.';

-- A partition of a partitioned tenant table is a table of its own: queried directly, only its
-- own row-level security applies, not its parent's.
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

-- Audit checks on the policies of the tenant tables: per-row context calls, extra permissive policies.
CREATE FUNCTION @extschema@._audit_policies(workspace_column name)
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

-- Audit checks on roles: superusers, BYPASSRLS, the application role.
CREATE FUNCTION @extschema@._audit_roles(workspace_column name)
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text, relid oid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH t AS MATERIALIZED (SELECT * FROM @extschema@._tenant_tables(workspace_column)),
    subject AS MATERIALIZED (   -- login roles row-level security applies to
        SELECT r.oid, r.rolname, r.rolcreaterole, r.rolreplication FROM pg_roles r
         WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolbypassrls),
    escalation AS MATERIALIZED (   -- ways such a role can leave row-level security behind
        -- CREATEROLE held: in PostgreSQL 15 it can grant itself any non-superuser role
        SELECT s.oid, s.rolname, 'createrole_login' AS chk,
               'login role subject to row-level security has CREATEROLE: in PostgreSQL 15 it can grant itself any non-superuser role, a BYPASSRLS (cross-workspace) role included, and then SET ROLE to it, unlogged; it can also change the password of other roles, the migration role included' AS detail,
               format('ALTER ROLE %s NOCREATEROLE;', @extschema@._quote_always(s.rolname)) AS fix
          FROM subject s WHERE s.rolcreaterole
        UNION ALL
        -- CREATEROLE or superuser reached by SET ROLE (membership, direct or through other roles;
        -- attributes are never inherited, SET ROLE is allowed whatever INHERIT says)
        SELECT s.oid, s.rolname, CASE WHEN x.super THEN 'superuser_member' ELSE 'createrole_login' END,
               format('login role subject to row-level security is a member of %s, which %s: it can SET ROLE to it %s',
                      x.roles, CASE WHEN x.super THEN 'is a superuser' ELSE 'has CREATEROLE' END,
                      CASE WHEN x.super THEN 'and then ignores row-level security'
                           ELSE 'and, in PostgreSQL 15, grant itself any non-superuser role, a BYPASSRLS (cross-workspace) role included' END),
               (SELECT string_agg(format('REVOKE %s FROM %s;', @extschema@._quote_always(g.rolname), @extschema@._quote_always(s.rolname)),
                                  E'\n' ORDER BY g.rolname COLLATE "C")
                  FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid
                 WHERE am.member = s.oid AND (x.super OR NOT g.rolsuper)   -- a superuser is a member of every role
                   AND EXISTS (SELECT 1 FROM pg_roles c
                                WHERE (CASE WHEN x.super THEN c.rolsuper ELSE c.rolcreaterole AND NOT c.rolsuper END)
                                  AND pg_has_role(g.oid, c.oid, 'MEMBER')))
          FROM subject s
          CROSS JOIN LATERAL (
              SELECT c.rolsuper AS super,
                     string_agg(@extschema@._quote_always(c.rolname), ', ' ORDER BY c.rolname COLLATE "C") AS roles
                FROM pg_roles c
               WHERE (c.rolsuper OR c.rolcreaterole) AND c.oid <> s.oid AND pg_has_role(s.oid, c.oid, 'MEMBER')
               GROUP BY c.rolsuper) AS x
        UNION ALL
        -- ADMIN OPTION (its own or of a role it can SET ROLE to) on a BYPASSRLS role, or on a
        -- role that is a member of one: it can hand cross-workspace access to any role
        SELECT s.oid, s.rolname, 'bypassrls_grantable',
               format('login role subject to row-level security can grant %s, which %s, to any role (ADMIN OPTION%s): cross-workspace access is meant for the application role only, through tenancy.begin_cross_workspace()',
                      string_agg(DISTINCT @extschema@._quote_always(g.rolname), ', '),
                      CASE WHEN bool_and(g.rolbypassrls) THEN 'bypasses row-level security' ELSE 'leads to a BYPASSRLS role' END,
                      CASE WHEN bool_and(am.member = s.oid) THEN ''
                           ELSE ' held by ' || string_agg(DISTINCT @extschema@._quote_always(h.rolname), ', ') END),
               string_agg(DISTINCT format('REVOKE ADMIN OPTION FOR %s FROM %s;', @extschema@._quote_always(g.rolname),
                                          @extschema@._quote_always(h.rolname)), E'\n')
          FROM subject s
          JOIN pg_auth_members am ON am.admin_option AND pg_has_role(s.oid, am.member, 'MEMBER')
          JOIN pg_roles g ON g.oid = am.roleid AND NOT g.rolsuper
          JOIN pg_roles h ON h.oid = am.member
         WHERE EXISTS (SELECT 1 FROM pg_roles b WHERE b.rolbypassrls AND NOT b.rolsuper AND pg_has_role(g.oid, b.oid, 'MEMBER'))
         GROUP BY s.oid, s.rolname),
    app AS MATERIALIZED (   -- login roles row-level security applies to, with DML on every tenant table,
                            -- no way out of it and no REPLICATION
        SELECT r.rolname FROM subject r
         WHERE NOT r.rolreplication
           AND NOT EXISTS (SELECT 1 FROM escalation e WHERE e.oid = r.oid)
           AND NOT EXISTS (SELECT 1 FROM t WHERE pg_has_role(r.oid, t.relowner, 'MEMBER'))
           AND NOT EXISTS (SELECT 1 FROM t
                            WHERE NOT (has_table_privilege(r.oid, t.relid, 'SELECT') AND has_table_privilege(r.oid, t.relid, 'INSERT')
                                   AND has_table_privilege(r.oid, t.relid, 'UPDATE') AND has_table_privilege(r.oid, t.relid, 'DELETE')))),
    registry_privileges AS (   -- what login roles subject to row-level security may do to the registry
        SELECT r.rolname, reg.oid AS registry,
               has_table_privilege(r.oid, reg.oid, 'DELETE') OR has_table_privilege(r.oid, reg.oid, 'TRUNCATE') AS can_delete,
               has_column_privilege(r.oid, reg.oid, reg.id_column, 'UPDATE')
                   OR CASE WHEN reg.parent_column <> '' THEN has_column_privilege(r.oid, reg.oid, reg.parent_column, 'UPDATE')
                           ELSE false END AS can_reparent
          FROM (SELECT c.oid, c.relowner,
                       @extschema@._setting('tenancy.registry_id_column') AS id_column,
                       @extschema@._setting('tenancy.registry_parent_column') AS parent_column
                  FROM pg_class c WHERE c.oid = to_regclass(@extschema@._setting('tenancy.registry_table'))) AS reg,
               pg_roles r
         WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolbypassrls
           AND NOT pg_has_role(r.oid, reg.relowner, 'MEMBER')),
    new_role AS (
        SELECT c.n
          FROM (SELECT 'app' AS n, 0 AS o UNION ALL SELECT 'app_' || g, g FROM generate_series(1, 1000) AS g) AS c
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = c.n)
         ORDER BY c.o LIMIT 1)
    SELECT 'warn', 'superuser_login', 'role ' || @extschema@._quote_always(r.rolname),
           'login role is a superuser: row-level security never applies to it (fine for migrations, never for the application)',
           NULL::text, NULL::oid
      FROM pg_roles r WHERE r.rolcanlogin AND r.rolsuper
    UNION ALL
    SELECT 'fail', 'bypassrls_login', 'role ' || @extschema@._quote_always(r.rolname),
           'login role has BYPASSRLS: it reads and writes every workspace''s rows; grant cross-workspace access through a NOLOGIN BYPASSRLS role instead',
           format('ALTER ROLE %s NOBYPASSRLS;', @extschema@._quote_always(r.rolname)), NULL
      FROM pg_roles r WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolbypassrls
    UNION ALL
    SELECT 'fail', e.chk, 'role ' || @extschema@._quote_always(e.rolname), e.detail, e.fix, NULL
      FROM escalation e
    UNION ALL
    SELECT 'warn', 'replication_login', 'role ' || @extschema@._quote_always(s.rolname),
           'login role has REPLICATION: through streaming replication, a base backup or logical decoding it reads every workspace''s rows, row-level security aside (fine for a replica''s role, never for the application)',
           format('ALTER ROLE %s NOREPLICATION;', @extschema@._quote_always(s.rolname)), NULL
      FROM subject s WHERE s.rolreplication
    UNION ALL
    SELECT 'info', 'bypassrls_role', 'role ' || @extschema@._quote_always(r.rolname),
           format('NOLOGIN role with BYPASSRLS (cross-workspace access by SET ROLE); members: %s',
                  coalesce((SELECT string_agg(@extschema@._quote_always(m.rolname), ', ' ORDER BY m.rolname COLLATE "C")
                              FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member
                             WHERE am.roleid = r.oid), 'none')),
           NULL, NULL
      FROM pg_roles r WHERE NOT r.rolcanlogin AND NOT r.rolsuper AND r.rolbypassrls
    UNION ALL
    SELECT 'warn', 'registry_writable', 'role ' || @extschema@._quote_always(p.rolname),
           format('login role subject to row-level security can %s the workspace registry %s: deleting a workspace cascades to its rows in every tenant table (foreign-key actions ignore row-level security); re-parenting a workspace hands its rows to another parent under the hierarchy option',
                  concat_ws(' or ', CASE WHEN p.can_delete THEN 'delete from' END,
                                    CASE WHEN p.can_reparent THEN 'update the id or parent column of' END),
                  p.registry::regclass),
           @extschema@._registry_restriction_sql(p.rolname), NULL
      FROM registry_privileges AS p
     WHERE p.can_delete OR p.can_reparent
    UNION ALL
    SELECT 'info', 'application_role', 'role ' || @extschema@._quote_always(app.rolname),
           'login role subject to row-level security (not superuser, not BYPASSRLS, owns no tenant table, no CREATEROLE, REPLICATION or other way to a superuser or BYPASSRLS role) with SELECT, INSERT, UPDATE, DELETE on every tenant table',
           NULL, NULL
      FROM app
    UNION ALL
    SELECT 'fail', 'no_application_role', 'database ' || @extschema@._quote_always(current_database()),
           'no login role that is neither superuser nor BYPASSRLS nor a table owner (nor able to become one of these: CREATEROLE, REPLICATION, ADMIN OPTION on a BYPASSRLS role) has SELECT, INSERT, UPDATE and DELETE on every tenant table: the application connects as a role row-level security does not apply to',
           format(E'-- Connect the application as this role (set its password); keep the owner for migrations.\n%s',
                  (SELECT string_agg(format('SELECT %s.create_app_role(%L, %L);', @extschema@._quote_always('@extschema@'),
                                            nr.n, s.nspname), E'\n' ORDER BY s.nspname)
                     FROM (SELECT DISTINCT t.nspname FROM t) AS s)),
           NULL
      FROM new_role AS nr
     WHERE NOT EXISTS (SELECT 1 FROM app) AND EXISTS (SELECT 1 FROM t)
$fn$;
COMMENT ON FUNCTION @extschema@._audit_roles(name) IS
'Internal: audit() checks on roles: superuser_login, bypassrls_login, createrole_login, superuser_member, bypassrls_grantable, replication_login, bypassrls_role, registry_writable, application_role, no_application_role.';

-- Whether a function's source names a relation as an identifier, not as a substring of a longer
-- one ("Segment" in "SegmentAssignment"): quoted ("Segment", embedded quotes doubled), as a
-- string literal ('Segment', for dynamic SQL), or as a word between characters that cannot
-- continue an identifier (unquoted, schema-qualified, inside a literal); an unquoted name folds to lower case, so an all-lower-case
-- name matches in any case. For SQL-standard bodies (BEGIN ATOMIC, prosrc empty) audit uses
-- pg_depend instead.
CREATE FUNCTION @extschema@._mentions_name(src text, relname name)
RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT strpos(src, @extschema@._quote_always(relname)) > 0
        OR strpos(src, quote_literal(relname)) > 0
        OR CASE WHEN relname::text = lower(relname) THEN src ~* w.pattern ELSE src ~ w.pattern END
      FROM (SELECT '(^|[^[:alnum:]_$])' || regexp_replace(relname, '([^[:alnum:]_])', '\\\1', 'g') || '($|[^[:alnum:]_$])'
                   AS pattern) AS w
$fn$;
COMMENT ON FUNCTION @extschema@._mentions_name(text, name) IS
'Internal: whether source text names a relation as an identifier (quoted, as a string literal, or as a whole word; case-insensitively when the name is all lower case), not as part of a longer name.';

-- Audit checks on objects around the tenant tables: views, materialized views, SECURITY DEFINER
-- functions, foreign keys.
CREATE FUNCTION @extschema@._audit_dependents(workspace_column name)
RETURNS TABLE (severity text, "check" text, object text, detail text, fix text, relid oid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH RECURSIVE t AS MATERIALIZED (SELECT * FROM @extschema@._tenant_tables(workspace_column)),
    reads (viewid, baseid) AS (     -- views and materialized views over tenant tables, also through other views
        SELECT rw.ev_class, d.refobjid
          FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid IN (SELECT t.relid FROM t) AND rw.ev_class <> d.refobjid
        UNION
        SELECT rw.ev_class, reads.baseid
          FROM reads
          JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = reads.viewid AND d.classid = 'pg_rewrite'::regclass
          JOIN pg_rewrite rw ON rw.oid = d.objid
         WHERE rw.ev_class <> reads.viewid),
    v AS (
        SELECT c.oid, c.relkind, @extschema@._qualified_name(c.oid) AS qualified,
               o.rolname AS owner,
               string_agg(DISTINCT t.qualified, ', ') AS bases,
               EXISTS (SELECT 1 FROM pg_options_to_table(c.reloptions) AS opt
                        WHERE opt.option_name = 'security_invoker' AND opt.option_value::boolean) AS invoker
          FROM (SELECT DISTINCT viewid, baseid FROM reads) AS rd
          JOIN t ON t.relid = rd.baseid
          JOIN pg_class c ON c.oid = rd.viewid
          JOIN pg_roles o ON o.oid = c.relowner
         WHERE NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
         GROUP BY c.oid, c.relkind, o.rolname),
    f AS (
        SELECT p.oid,
               @extschema@._quote_always(n.nspname) || '.' || @extschema@._quote_always(p.proname)
                   || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS signature,
               o.rolname AS owner,
               string_agg(t.qualified, ', ' ORDER BY t.qualified) AS bases,
               bool_or(o.rolsuper OR o.rolbypassrls OR (pg_has_role(p.proowner, t.relowner, 'MEMBER') AND NOT t.rls_forced)) AS inert
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang
          JOIN pg_roles o ON o.oid = p.proowner
          -- a SQL-standard body (BEGIN ATOMIC, RETURN) records its tables, and the views it reads,
          -- in pg_depend; other bodies are text, searched for the table's name as an identifier
          JOIN t ON EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                               AND d.refclassid = 'pg_class'::regclass
                               AND (d.refobjid = t.relid
                                    OR EXISTS (SELECT 1 FROM reads WHERE reads.viewid = d.refobjid AND reads.baseid = t.relid)))
                 OR (p.prosqlbody IS NULL AND @extschema@._mentions_name(p.prosrc, t.relname))
         WHERE p.prosecdef AND l.lanname NOT IN ('internal', 'c')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
         GROUP BY p.oid, n.nspname, p.proname, o.rolname),
    fk AS (
        SELECT k.oid, k.conname, s.relid, s.qualified AS src, d.qualified AS dst, s.relid AS srcid, d.relid AS dstid,
               s.attnum AS src_ws, d.attnum AS dst_ws, k.conkey, k.confkey, k.confupdtype, k.confdeltype,
               k.confdelsetcols, k.condeferrable, k.condeferred,
               d.relname AS dst_name, s.relkind AS src_kind,
               ARRAY(SELECT u.a FROM unnest(k.conkey, k.confkey) WITH ORDINALITY AS u(a, b, o)
                      WHERE u.a <> s.attnum AND u.b <> d.attnum ORDER BY u.o) AS src_rest,
               ARRAY(SELECT u.b FROM unnest(k.conkey, k.confkey) WITH ORDINALITY AS u(a, b, o)
                      WHERE u.a <> s.attnum AND u.b <> d.attnum ORDER BY u.o) AS dst_rest
          FROM pg_constraint k
          JOIN t AS s ON s.relid = k.conrelid
          JOIN t AS d ON d.relid = k.confrelid
         WHERE k.contype = 'f' AND k.conparentid = 0
           AND NOT EXISTS (SELECT 1 FROM unnest(k.conkey, k.confkey) AS u(a, b) WHERE u.a = s.attnum AND u.b = d.attnum))
    SELECT 'fail', 'view_not_security_invoker', 'view ' || v.qualified,
           format('the view reads %s without security_invoker: queries through it are checked as its owner %s, for whom row-level security is inert when superuser, BYPASSRLS or the tables'' owner',
                  v.bases, @extschema@._quote_always(v.owner)),
           format('ALTER VIEW %s SET (security_invoker = on);', v.qualified), NULL::oid
      FROM v WHERE v.relkind = 'v' AND NOT v.invoker
    UNION ALL
    SELECT 'warn', 'materialized_view', 'materialized view ' || v.qualified,
           format('the materialized view holds rows of %s for every workspace, and row-level security does not apply to it: grant it to no application role, or replace it by a security_invoker view', v.bases),
           NULL, NULL
      FROM v WHERE v.relkind = 'm'
    UNION ALL
    SELECT CASE WHEN f.inert THEN 'fail' ELSE 'warn' END, 'security_definer_function', 'function ' || f.signature,
           CASE WHEN f.inert
                THEN format('SECURITY DEFINER function mentioning %s runs as its owner %s, for whom row-level security is inert (superuser, BYPASSRLS, or the owner of a table without FORCE): callers reach every workspace''s rows',
                            f.bases, @extschema@._quote_always(f.owner))
                ELSE format('SECURITY DEFINER function mentioning %s runs with the rights of its owner %s: check that it keeps to the caller''s workspace',
                            f.bases, @extschema@._quote_always(f.owner))
           END,
           format('ALTER ROUTINE %s SECURITY INVOKER;', f.signature), NULL
      FROM f
    UNION ALL
    SELECT 'warn', 'fk_without_workspace', format('constraint %s on %s', @extschema@._quote_always(fk.conname), fk.src),
           format('foreign key (%s) references %s (%s) without the workspace column: a row can reference another workspace''s row',
                  @extschema@._column_list(fk.srcid, fk.conkey), fk.dst, @extschema@._column_list(fk.dstid, fk.confkey)),
           concat(
               CASE WHEN NOT EXISTS (
                        SELECT 1 FROM pg_index i
                         WHERE i.indrelid = fk.dstid AND i.indisunique AND i.indisvalid AND i.indimmediate
                           AND i.indpred IS NULL AND i.indexprs IS NULL
                           AND i.indnkeyatts = cardinality(fk.dst_rest) + 1
                           AND (SELECT array_agg(u.k ORDER BY u.k) FROM unnest(i.indkey::smallint[]) WITH ORDINALITY AS u(k, o)
                                 WHERE u.o <= i.indnkeyatts)
                             = (SELECT array_agg(c ORDER BY c) FROM unnest(fk.dst_rest || fk.dst_ws) AS c))
                    THEN format(E'-- %1$s has no unique index on (%2$s), which the composite foreign key needs (this locks %1$s against writes while it builds):\n'
                                'CREATE UNIQUE INDEX IF NOT EXISTS %3$s ON %1$s (%2$s);\n',
                                fk.dst, @extschema@._column_list(fk.dstid, fk.dst_ws || fk.dst_rest),
                                @extschema@._quote_always(fk.dst_name || '_' || workspace_column || '_'
                                    || (SELECT string_agg(a.attname, '_' ORDER BY u.o)
                                          FROM unnest(fk.dst_rest) WITH ORDINALITY AS u(k, o)
                                          JOIN pg_attribute a ON a.attrelid = fk.dstid AND a.attnum = u.k) || '_key'))
               END,
               -- NOT VALID, then VALIDATE: a short lock for the swap, the check under a weaker one
               -- (not supported on partitioned tables: validated at once there)
               format('ALTER TABLE %1$s DROP CONSTRAINT %2$s, ADD CONSTRAINT %2$s FOREIGN KEY (%3$s) REFERENCES %4$s (%5$s) ON UPDATE %6$s ON DELETE %7$s%8$s%9$s%10$s',
                      fk.src, @extschema@._quote_always(fk.conname),
                      @extschema@._column_list(fk.srcid, fk.src_ws || fk.src_rest), fk.dst,
                      @extschema@._column_list(fk.dstid, fk.dst_ws || fk.dst_rest),
                      @extschema@._fk_action(fk.confupdtype), @extschema@._fk_action(fk.confdeltype),
                      -- SET NULL / SET DEFAULT on delete: only the key columns, never the workspace column
                      CASE WHEN fk.confdeltype IN ('n', 'd')
                           THEN ' (' || @extschema@._column_list(fk.srcid, coalesce(fk.confdelsetcols, fk.src_rest)) || ')' END,
                      CASE WHEN fk.condeferrable THEN ' DEFERRABLE' || CASE WHEN fk.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END END,
                      CASE WHEN fk.src_kind = 'p' THEN ';'
                           ELSE format(E' NOT VALID;\nALTER TABLE %s VALIDATE CONSTRAINT %s;', fk.src, @extschema@._quote_always(fk.conname)) END)),
           fk.relid
      FROM fk
$fn$;
COMMENT ON FUNCTION @extschema@._audit_dependents(name) IS
'Internal: audit() checks on objects around the tenant tables: view_not_security_invoker, materialized_view, security_definer_function, fk_without_workspace.';

CREATE FUNCTION @extschema@.audit(workspace_column name DEFAULT 'workspaceId')
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

REVOKE ALL ON FUNCTION @extschema@._tenant_tables(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._enable_rls_sql(text, name, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._policy_cmd("char") FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._policy_roles(oid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._column_list(oid, smallint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._has_leading_index(oid, smallint[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._policy_expr(name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._policy_state(oid, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._per_row_calls(pg_node_tree) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._fk_action("char") FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._index_advice(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._audit_tables(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._audit_policies(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._audit_roles(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._audit_dependents(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._audit_partitions(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._mentions_name(text, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.index_advice(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.index_advice_usage(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.audit(name) FROM PUBLIC;
