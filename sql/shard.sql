-- Readiness for sharding by the workspace column with Citus (docs/scaling.md): what Citus would
-- refuse about the schema, with the DDL that fixes it where one exists, and the script that
-- distributes the tables once it is fixed. Catalog reads only; nothing here changes the schema.

-- The tables shard_readiness() and shard_plan() consider: ordinary and partitioned tables (not
-- partitions, which follow their parent) outside the system schemas and not members of an
-- extension; tenant tables have the workspace column.
CREATE FUNCTION @extschema@._shard_tables(workspace_column name)
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
COMMENT ON FUNCTION @extschema@._shard_tables(name) IS
'Internal: the tables shard_readiness() and shard_plan() consider, and whether each has the workspace column.';

-- Column names of attnums, quoted, comma-separated, in the given order.
CREATE FUNCTION @extschema@._shard_cols(rel oid, cols smallint[])
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i)
      FROM unnest(cols) WITH ORDINALITY AS k(attnum, i)
      JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum
$fn$;
COMMENT ON FUNCTION @extschema@._shard_cols(oid, smallint[]) IS
'Internal: the quoted names of a table''s columns, for the DDL shard_readiness() writes.';

-- A foreign key rebuilt as Citus accepts it when the workspace column is in the key
-- (foreign_constraint.c, EnsureSupportedFKeyOnDistKey): (workspace, cols) -> (workspace, refcols)
-- when both tables are tenant tables; ON UPDATE NO ACTION; ON DELETE CASCADE and RESTRICT kept,
-- SET NULL and SET DEFAULT become NO ACTION (Citus refuses them, column list or not).
CREATE FUNCTION @extschema@._shard_fk_ddl(con oid, workspace_column name, composite boolean)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I, ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %s (%s)%s%s',
                  k.conrelid::regclass, k.conname, k.conname,
                  CASE WHEN composite THEN quote_ident(workspace_column) || ', ' ELSE '' END
                      || @extschema@._shard_cols(k.conrelid, k.conkey),
                  k.confrelid::regclass,
                  CASE WHEN composite THEN quote_ident(workspace_column) || ', ' ELSE '' END
                      || @extschema@._shard_cols(k.confrelid, k.confkey),
                  CASE k.confdeltype
                      WHEN 'c' THEN ' ON DELETE CASCADE'
                      WHEN 'r' THEN ' ON DELETE RESTRICT'
                      ELSE '' END,
                  CASE WHEN k.condeferrable THEN ' DEFERRABLE' || CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END ELSE '' END)
      FROM pg_constraint k WHERE k.oid = con
$fn$;
COMMENT ON FUNCTION @extschema@._shard_fk_ddl(oid, name, boolean) IS
'Internal: the DDL that rebuilds a foreign key in the form Citus accepts between distributed tables.';

CREATE FUNCTION @extschema@.shard_readiness(workspace_column name DEFAULT 'workspaceId')
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
COMMENT ON FUNCTION @extschema@.shard_readiness(name) IS
'What Citus would refuse about distributing this database''s tables by the workspace column: one row per (rule, object), blocker or not, with the DDL that fixes it where one exists (run the fixes in the order of the rows). Rules: key_without_workspace_column, foreign_key_without_workspace_column, foreign_key_action, reference_table_references_tenant_table, policy_with_subquery, trigger_on_table, inheritance, partitioned_reference_table, multi_level_partitioning, workspace_column_type, generated_workspace_column, nullable_workspace_column, reference_table_candidate (docs/scaling.md). Reads the catalog only.';

CREATE FUNCTION @extschema@.shard_plan(workspace_column name DEFAULT 'workspaceId')
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
COMMENT ON FUNCTION @extschema@.shard_plan(name) IS
'The ordered, commented script that distributes every table of this database with Citus once tenancy.shard_readiness() shows no blocker (55000 otherwise, or when foreign keys form a cycle): foreign keys from tenant tables to reference tables dropped, create_reference_table, create_distributed_table(..., colocate_with => ...) each table after those it references, the foreign keys added again. Run it on the Citus coordinator.';
