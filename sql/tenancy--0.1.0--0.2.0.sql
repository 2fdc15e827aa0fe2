-- tenancy 0.1.0 -> 0.2.0 (ALTER EXTENSION tenancy UPDATE TO '0.2.0').
-- 0.2.0 is the security hardening (issue 10) and robustness (issue 11) release; see CHANGELOG.md.
-- What this script changes, in order:
-- - tenancy._stats_info() gains the column refused_statements: the view tenancy.stats_info and
--   the function are dropped and created again (with their grant and comments), on the new C
--   symbol stats_info_v2_wrapper (the 0.1.0 symbol keeps the old shape for databases not yet
--   updated);
-- - new internal functions: _quota_admin (the checked entry point of the quota administration
--   functions), _quota_count (counts as the table's owner), _enforce_quota, _set_quota,
--   _clear_quota, _release_quota (the bodies, run as the bookkeeping owner), _mentions_name
--   (audit), _quota_on_ddl and its event trigger tenancy_quota_on_ddl;
-- - enforce_quota, set_quota, clear_quota and release_quota become SECURITY INVOKER wrappers
--   over _quota_admin; the trigger functions move to C symbols that refuse a direct call;
--   _quota_counts, quota_drift, _quota_on_drop, audit and its helpers, create_app_role and
--   begin_cross_workspace get their 0.2.0 bodies; comments as in 0.2.0.
-- Every statement was taken from tenancy--0.2.0.sql; tests/upgrade.rs checks that the result
-- equals a fresh install of 0.2.0 (tests/sql/extension_catalog.sql) and that no state is lost.
-- Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2.0'" to load this file. \quit

DROP VIEW @extschema@.stats_info;
DROP FUNCTION @extschema@._stats_info();

CREATE  FUNCTION "_quota_admin"(
	"action" TEXT, 
	"tbl" oid, 
	"workspace_column" TEXT, 
	"counted_when" TEXT, 
	"max_rows" bigint, 
	"workspace" uuid 
) RETURNS VOID 
VOLATILE PARALLEL UNSAFE 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'quota_admin_wrapper';

CREATE  FUNCTION "_quota_count"(
	"tbl" oid, 
	"workspace_column" TEXT, 
	"counted_when" TEXT 
) RETURNS TABLE (
	"workspace_id" uuid,  
	"n" bigint  
)
VOLATILE PARALLEL UNSAFE 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'quota_count_wrapper';

CREATE  FUNCTION "_stats_info"() RETURNS TABLE (
	"capacity" bigint,  
	"entries" bigint,  
	"evictions" bigint,  
	"refused_statements" bigint,  
	"shared_memory_bytes" bigint,  
	"bytes_per_entry" bigint,  
	"last_reset_us" bigint  
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c 
AS 'MODULE_PATHNAME', 'stats_info_v2_wrapper';

CREATE OR REPLACE FUNCTION @extschema@.create_app_role(role_name name, schema_name name DEFAULT 'public')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    r pg_roles;
    owned text;
BEGIN
    PERFORM @extschema@._require_arg(role_name, 'role_name');
    PERFORM @extschema@._require_arg(schema_name, 'schema_name');
    SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
    IF NOT FOUND THEN
        -- NOINHERIT: the privileges of a role it is granted (the cross-workspace role's, on the
        -- registry) stay behind SET ROLE
        EXECUTE format('CREATE ROLE %s LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION',
                       @extschema@._quote_always(role_name));
    ELSIF r.rolsuper OR r.rolbypassrls THEN
        RAISE EXCEPTION 'role % cannot be the application role: it is %', @extschema@._quote_always(role_name),
                CASE WHEN r.rolsuper THEN 'a superuser' ELSE 'BYPASSRLS' END
            USING ERRCODE = '42501',
                  DETAIL = 'Row-level security does not apply to superusers and BYPASSRLS roles.',
                  HINT = 'Choose a new role name; tenancy.create_app_role() creates it.';
    ELSIF r.rolinherit OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication THEN
        -- CREATEROLE (PostgreSQL 15) grants itself any non-superuser role, the cross-workspace
        -- (BYPASSRLS) role included, and resets other roles' passwords; REPLICATION streams
        -- every workspace's rows out of the WAL; CREATEDB has no use here
        EXECUTE format('ALTER ROLE %s%s%s%s%s', @extschema@._quote_always(role_name),
                       CASE WHEN r.rolinherit THEN ' NOINHERIT' ELSE '' END,
                       CASE WHEN r.rolcreaterole THEN ' NOCREATEROLE' ELSE '' END,
                       CASE WHEN r.rolcreatedb THEN ' NOCREATEDB' ELSE '' END,
                       CASE WHEN r.rolreplication THEN ' NOREPLICATION' ELSE '' END);
    END IF;
    SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.relname) INTO owned
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = schema_name AND c.relkind IN ('r', 'p')
       AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = role_name);
    IF owned IS NOT NULL THEN
        RAISE EXCEPTION 'role % cannot be the application role: it owns %', @extschema@._quote_always(role_name), owned
            USING ERRCODE = '42501',
                  DETAIL = 'A table owner can turn row-level security off on its tables.',
                  HINT = 'Keep the migration role as owner and create a separate application role.';
    END IF;
    PERFORM @extschema@._grant_data_privileges(role_name, schema_name);
    -- the registry, when it lives in this schema: no DELETE, no re-parenting (see above)
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = to_regclass(@extschema@._setting('tenancy.registry_table')) AND n.nspname = schema_name) THEN
        EXECUTE @extschema@._registry_restriction_sql(role_name);
    END IF;
END
$fn$;

COMMENT ON FUNCTION @extschema@.create_app_role(name, name) IS
'Creates (if missing) the application role, or brings an existing one to that shape: LOGIN, NOINHERIT, NOCREATEROLE, NOCREATEDB, NOREPLICATION (an existing role loses these attributes: in PostgreSQL 15 a CREATEROLE role can grant itself the cross-workspace BYPASSRLS role), not superuser, not BYPASSRLS, owning nothing, with SELECT, INSERT, UPDATE, DELETE on the tables of the schema (also those the calling role creates later) and USAGE on its sequences. No TRUNCATE (it ignores row-level security). On the workspace registry (tenancy.registry_table, when in the schema): no DELETE (the cascade would ignore row-level security) and no UPDATE of the id and parent columns. Set its password separately. Errors: 42501 when the role is a superuser, BYPASSRLS or owns tables; 22004 NULL argument; 3F000 missing schema. Idempotent.';

CREATE OR REPLACE FUNCTION @extschema@.begin_cross_workspace(reason text, role_name name DEFAULT 'tenancy_cross_workspace')
RETURNS name
LANGUAGE plpgsql
AS $fn$
DECLARE
    target pg_catalog.pg_roles;
    logged text[];
    ch text;
    i int;
BEGIN
    IF reason IS NULL OR pg_catalog.btrim(reason) = '' THEN
        RAISE EXCEPTION 'a reason is required for cross-workspace access'
            USING ERRCODE = '22023',
                  DETAIL = 'The reason is written to the server log with the session user.',
                  HINT = 'For example: SELECT tenancy.begin_cross_workspace(''admin api key lookup'').';
    END IF;
    PERFORM @extschema@._require_arg(role_name, 'role_name');
    SELECT * INTO target FROM pg_catalog.pg_roles WHERE rolname = role_name;
    IF NOT FOUND OR NOT target.rolbypassrls OR target.rolcanlogin THEN
        RAISE EXCEPTION 'role % is not a cross-workspace role', @extschema@._quote_always(role_name)
            USING ERRCODE = '42501',
                  HINT = 'A superuser creates it with tenancy.create_cross_workspace_role(role_name, member).';
    END IF;
    IF NOT pg_catalog.pg_has_role(session_user, target.oid, 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not assume cross-workspace role %', @extschema@._quote_always(session_user),
                @extschema@._quote_always(role_name)
            USING ERRCODE = '42501',
                  HINT = pg_catalog.format('A superuser grants it with tenancy.create_cross_workspace_role(%L, %L).',
                                           role_name, session_user);
    END IF;
    -- The reason and application_name come from the client, and role names may hold any
    -- character: each value is logged as a JSON string (quotes, backslashes and control
    -- characters escaped, also DEL, C1 controls and U+2028/U+2029), so a line break cannot
    -- forge a log line and a reader can decode the exact value.
    logged := ARRAY[session_user::text, role_name::text, pg_catalog.current_setting('application_name'), reason];
    FOR i IN 1 .. 4 LOOP
        logged[i] := pg_catalog.to_json(logged[i])::text;
        FOR ch IN SELECT DISTINCT m[1] FROM pg_catalog.regexp_matches(logged[i], '([\u007f-\u009f\u2028\u2029])', 'g') AS m LOOP
            logged[i] := pg_catalog.replace(logged[i], ch,
                                            '\u' || pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.ascii(ch)), 4, '0'));
        END LOOP;
    END LOOP;
    RAISE LOG 'tenancy: cross-workspace access: session user %, role %, application %, reason: %',
        logged[1], logged[2], logged[3], logged[4];
    PERFORM pg_catalog.set_config('role', role_name, true);
    RETURN role_name;
END
$fn$;

COMMENT ON FUNCTION @extschema@.begin_cross_workspace(text, name) IS
'Assumes the cross-workspace role (BYPASSRLS) until the end of the transaction, like SET LOCAL ROLE, after logging session user, role, application_name and reason to the server log, on one line: each value is written as a JSON string (quotes, backslashes, line breaks and other control characters escaped), since the reason and application_name come from the client and could otherwise forge log lines. For the code paths that legitimately span workspaces. RESET ROLE ends it early. Errors: 22023 missing reason, 42501 not a cross-workspace role or not a member.';

CREATE OR REPLACE FUNCTION @extschema@._audit_roles(workspace_column name)
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

CREATE OR REPLACE FUNCTION @extschema@._audit_dependents(workspace_column name)
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
        UNION ALL SELECT * FROM @extschema@._audit_dependents(workspace_column)),
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
'Audits workspace isolation of the tenant tables (tables with the uuid workspace column). One row per finding: severity (fail, warn, info), check, object, detail, fix (executable SQL, NULL when none). Checks: rls_disabled, rls_not_forced, policy_missing, policy_altered, policy_incomplete (fail); policy_per_row, permissive_policy (warn); superuser_login (warn), bypassrls_login (fail), createrole_login (fail: a login role subject to row-level security with CREATEROLE, or a member of a role with it: in PostgreSQL 15 it can grant itself a BYPASSRLS role), superuser_member (fail: such a role can SET ROLE to a superuser role), bypassrls_grantable (fail: such a role holds, or can SET ROLE to a holder of, ADMIN OPTION on a BYPASSRLS role), replication_login (warn: REPLICATION reads every workspace through replication), bypassrls_role (info, with members), owner_login (fail without FORCE, else warn), no_application_role (fail), application_role (info: none of the fails above, no REPLICATION), truncate_granted (fail), registry_writable (warn: a login role can delete workspaces, whose cascade ignores row-level security, or re-parent them), view_not_security_invoker (fail), materialized_view (warn), security_definer_function (a SECURITY DEFINER function using a tenant table: found through pg_depend for SQL-standard bodies, by the table''s name as an identifier in other sources; fail when its owner bypasses row-level security, else warn), fk_without_workspace, missing_workspace_index, invalid_index (warn); context_default (fail: a role or database default of tenancy.workspace_id in pg_db_role_setting, for this database or all; fix: ALTER ROLE/DATABASE ... RESET tenancy.workspace_id); isolated, shared_preload_libraries (info). Ordered fail, warn, info, then check, object. No rows when no table has the column. Fixes using CONCURRENTLY must run outside a transaction block. Error 22004 on NULL.';

REVOKE ALL ON FUNCTION @extschema@._mentions_name(text, name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.quota_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_trigger';

CREATE OR REPLACE FUNCTION @extschema@.quota_config_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'tenancy_quota_config_changed';

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

REVOKE ALL ON FUNCTION @extschema@._enforce_quota(regclass, name, text) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._enforce_quota(regclass, name, text) IS
'Internal: the body of tenancy.enforce_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE OR REPLACE FUNCTION @extschema@.enforce_quota(
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
END
$fn$;

REVOKE ALL ON FUNCTION @extschema@._set_quota(regclass, bigint, uuid) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._set_quota(regclass, bigint, uuid) IS
'Internal: the body of tenancy.set_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE OR REPLACE FUNCTION @extschema@.set_quota(tbl regclass, max_rows bigint, workspace uuid DEFAULT NULL)
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

CREATE FUNCTION @extschema@._clear_quota(tbl regclass, workspace uuid)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    DELETE FROM @extschema@.quota_limit l WHERE l.tbl = _clear_quota.tbl AND l.workspace_id = _clear_quota.workspace;
$fn$;

REVOKE ALL ON FUNCTION @extschema@._clear_quota(regclass, uuid) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._clear_quota(regclass, uuid) IS
'Internal: the body of tenancy.clear_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE OR REPLACE FUNCTION @extschema@.clear_quota(tbl regclass, workspace uuid)
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
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_insert ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_delete ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_update ON %s', tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS tenancy_quota_truncate ON %s', tbl);
    END IF;
    PERFORM @extschema@._quota_forget(tbl);
    DELETE FROM @extschema@.quota_counter c WHERE c.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_shared_mark m WHERE m.tbl = _release_quota.tbl;
    DELETE FROM @extschema@.quota_table q WHERE q.tbl = _release_quota.tbl; -- cascades to quota_limit
END
$fn$;

REVOKE ALL ON FUNCTION @extschema@._release_quota(regclass) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._release_quota(regclass) IS
'Internal: the body of tenancy.release_quota, run by tenancy._quota_admin as the bookkeeping owner after its privilege and ownership checks.';

CREATE OR REPLACE FUNCTION @extschema@.release_quota(tbl regclass)
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

CREATE OR REPLACE FUNCTION @extschema@._quota_on_drop()
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

CREATE FUNCTION @extschema@._quota_on_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    bad regclass;
BEGIN
    IF to_regclass('@extschema@.quota_table') IS NULL THEN
        RETURN;
    END IF;
    SELECT q.tbl INTO bad
      FROM pg_event_trigger_ddl_commands() d
      JOIN pg_inherits i ON d.objid IN (i.inhrelid, i.inhparent)
      JOIN @extschema@.quota_table q ON q.tbl::oid IN (i.inhrelid, i.inhparent)
     WHERE d.classid = 'pg_class'::regclass
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'table % is under quota enforcement and cannot be part of a partition or inheritance tree', bad
            USING ERRCODE = '0A000',
                  DETAIL = 'Statement triggers fire only on the table a statement names: rows written through the other tables of the tree would not be counted.',
                  HINT = format('Release the quota first: SELECT tenancy.release_quota(%L);', bad::text);
    END IF;
END
$fn$;

COMMENT ON FUNCTION @extschema@._quota_on_ddl() IS
'Internal: ddl_command_end event trigger function refusing (0A000) to put a quota-enforced table into a partition or inheritance tree.';

REVOKE ALL ON FUNCTION @extschema@._quota_on_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER tenancy_quota_on_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
    EXECUTE FUNCTION @extschema@._quota_on_ddl();

COMMENT ON EVENT TRIGGER tenancy_quota_on_ddl IS 'Refuses to attach or inherit quota-enforced tables (tenancy).';

CREATE OR REPLACE FUNCTION @extschema@._quota_counts()
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

CREATE OR REPLACE FUNCTION @extschema@.quota_drift(tbl regclass DEFAULT NULL)
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

REVOKE ALL ON FUNCTION @extschema@._quota_count(oid, text, text) FROM PUBLIC;

COMMENT ON FUNCTION @extschema@._quota_count(oid, text, text) IS 'Internal: rows of a table counted per workspace (workspace column not NULL, counted_when true), evaluated as the table''s owner in a security-restricted operation under search_path = pg_catalog. The caller must have the table owner''s privileges (42501).';

COMMENT ON FUNCTION @extschema@._quota_admin(text, oid, text, text, bigint, uuid) IS 'Internal: the checked entry point of enforce_quota, set_quota, clear_quota and release_quota. Refuses (42501) a caller without EXECUTE on the public function or who does not own the table, then runs the internal body as the bookkeeping owner in a security-restricted operation.';

COMMENT ON VIEW @extschema@.workspace_stats IS
'Per workspace and database, since the last reset: top-level statements (queries) and nested ones, rows returned or affected, execution, planning and CPU time in milliseconds, rows added/removed in quota-enforced tables and quota rejections, sessions now holding the workspace, last activity. Tracked only in databases where the extension is installed. Rows are visible to roles with the privileges of pg_read_all_stats (superusers included) or of the extension''s owner; other roles see no row, whatever workspace they claim (tenancy.stats_info shows them the totals).';

COMMENT ON COLUMN @extschema@.workspace_stats.cpu_time_ms IS 'user + system CPU of top-level statements, planning included, and of the parallel workers of their queries';

CREATE VIEW @extschema@.stats_info AS
SELECT capacity, entries, evictions, refused_statements, shared_memory_bytes, bytes_per_entry,
       @extschema@._pg_time(last_reset_us) AS last_reset
  FROM @extschema@._stats_info();

COMMENT ON VIEW @extschema@.stats_info IS
'Capacity (tenancy.max_workspaces), entries in use, evictions since start, statements left untracked since start because their backend had used up its tenancy.stats_new_entry_limit (refused_statements), shared memory reserved, and the last full reset.';

GRANT SELECT ON @extschema@.stats_info TO PUBLIC;

COMMENT ON FUNCTION @extschema@._stats_info() IS 'Internal: row of tenancy.stats_info.';
