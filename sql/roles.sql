-- Roles: the recommended application role, and the one audited path around isolation.
--
-- Row-level security is inert for superusers, for roles with BYPASSRLS and for table owners
-- (unless FORCE): the application must connect as a role that is none of these. Work that
-- legitimately spans workspaces (admin-key lookups across a parent and its children, member
-- role lookups, compute workflows listing every workspace) switches, for one transaction, to a
-- NOLOGIN role with BYPASSRLS through tenancy.begin_cross_workspace(reason), which logs who did
-- it and why. tenancy.audit() lists such roles and who may assume them.
--
-- Errors: 22004 NULL argument, 22023 empty reason, 42501 refused role (superuser, BYPASSRLS or
-- owner as application role; not a member of the cross-workspace role), 3F000 missing schema.

-- GRANT the data privileges of an application on every table and sequence of a schema, now and
-- for tables the current role creates later (migrations).
CREATE FUNCTION @extschema@._grant_data_privileges(role_name name, schema_name name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r text := @extschema@._quote_always(role_name);
    s text := @extschema@._quote_always(schema_name);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
        RAISE EXCEPTION 'schema % does not exist', s USING ERRCODE = '3F000';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %s', s, r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO %s', s, r);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %s TO %s', s, r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %s', s, r);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT USAGE, SELECT ON SEQUENCES TO %s', s, r);
END
$fn$;
COMMENT ON FUNCTION @extschema@._grant_data_privileges(name, name) IS 'Internal: SELECT, INSERT, UPDATE, DELETE on the tables of a schema (also future ones of the current role) and USAGE on its sequences.';

CREATE FUNCTION @extschema@._require_arg(value anyelement, what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', what USING ERRCODE = '22004';
    END IF;
END
$fn$;
COMMENT ON FUNCTION @extschema@._require_arg(anyelement, text) IS 'Internal: 22004 when an argument is NULL.';

-- A tenancy.* setting, for SQL-only functions. The library defines the settings when it loads;
-- without shared_preload_libraries a session loads it at its first call of one of its C
-- functions, so read through this, which makes one such call first.
CREATE FUNCTION @extschema@._setting(setting_name text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM @extschema@.current_workspace_id(); -- loads the library, which defines the settings
    RETURN current_setting(setting_name);
END
$fn$;
COMMENT ON FUNCTION @extschema@._setting(text) IS 'Internal: current_setting() of a tenancy.* setting, loading the library first (its settings exist once it is loaded).';

-- The workspace registry ("Workspace") has no workspace column, so no isolation policy: an
-- application role with DELETE on it could delete any workspace, and the foreign-key cascade
-- removes that workspace's rows from every tenant table whatever the policies say; with UPDATE
-- of the parent column it could re-parent another tenant's workspace under its own and read it
-- under the hierarchy option. The SQL that narrows the role to reading, inserting and updating
-- the other columns (hard deletes go through the cross-workspace role). NULL when the registry
-- table does not exist.
CREATE FUNCTION @extschema@._registry_restriction_sql(role_name name)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format(E'REVOKE DELETE, TRUNCATE, UPDATE ON %1$s FROM %2$s;\nGRANT UPDATE (%3$s) ON %1$s TO %2$s;',
                  @extschema@._qualified_name(c.oid),
                  @extschema@._quote_always(role_name),
                  (SELECT string_agg(@extschema@._quote_always(a.attname), ', ' ORDER BY a.attnum)
                     FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname NOT IN (@extschema@._setting('tenancy.registry_id_column'),
                                            @extschema@._setting('tenancy.registry_parent_column'))))
      FROM pg_class c
     WHERE c.oid = to_regclass(@extschema@._setting('tenancy.registry_table'))
$fn$;
COMMENT ON FUNCTION @extschema@._registry_restriction_sql(name) IS 'Internal: REVOKE DELETE, TRUNCATE, UPDATE on the workspace registry and GRANT UPDATE of its columns but the id and parent columns, for a role.';

CREATE FUNCTION @extschema@.create_app_role(role_name name, schema_name name DEFAULT 'public')
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

CREATE FUNCTION @extschema@.create_cross_workspace_role(role_name name, member name,
                                                         schema_name name DEFAULT 'public')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning
AS $fn$
DECLARE
    r pg_roles;
    m pg_roles;
BEGIN
    PERFORM @extschema@._require_arg(role_name, 'role_name');
    PERFORM @extschema@._require_arg(member, 'member');
    PERFORM @extschema@._require_arg(schema_name, 'schema_name');
    SELECT * INTO m FROM pg_roles WHERE rolname = member;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role % does not exist', @extschema@._quote_always(member) USING ERRCODE = '42704',
            HINT = 'Create the application role first: SELECT tenancy.create_app_role(''app'').';
    END IF;
    IF m.rolinherit THEN
        RAISE EXCEPTION 'role % inherits the privileges of the roles granted to it', @extschema@._quote_always(member)
            USING ERRCODE = '42501',
                  DETAIL = 'It would use the cross-workspace role''s privileges (DELETE on the workspace registry) without tenancy.begin_cross_workspace().',
                  HINT = format('ALTER ROLE %s NOINHERIT (tenancy.create_app_role() creates it so).', @extschema@._quote_always(member));
    END IF;
    SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
    IF NOT FOUND THEN
        EXECUTE format('CREATE ROLE %s NOLOGIN NOINHERIT BYPASSRLS NOSUPERUSER NOCREATEDB NOCREATEROLE',
                       @extschema@._quote_always(role_name));
    ELSIF r.rolcanlogin OR r.rolsuper OR NOT r.rolbypassrls THEN
        RAISE EXCEPTION 'role % exists and is not a cross-workspace role', @extschema@._quote_always(role_name)
            USING ERRCODE = '42501',
                  DETAIL = 'A cross-workspace role is NOLOGIN, not superuser, with BYPASSRLS.',
                  HINT = 'Choose another name.';
    END IF;
    EXECUTE format('COMMENT ON ROLE %s IS %L', @extschema@._quote_always(role_name),
                   'tenancy cross-workspace role: BYPASSRLS, assumed for one transaction through tenancy.begin_cross_workspace(reason)');
    PERFORM @extschema@._grant_data_privileges(role_name, schema_name);
    EXECUTE format('GRANT %s TO %s', @extschema@._quote_always(role_name), @extschema@._quote_always(member));
END
$fn$;
COMMENT ON FUNCTION @extschema@.create_cross_workspace_role(name, name, name) IS
'Creates (if missing) a NOLOGIN role with BYPASSRLS and data privileges on the schema, and lets member (the application role) assume it. BYPASSRLS is never inherited: the member gets it only by tenancy.begin_cross_workspace(reason) (SET LOCAL ROLE, logged). Needs a superuser. Errors: 42704 unknown member, 42501 a member that inherits privileges (ALTER ROLE ... NOINHERIT) or an existing role of that name that is not a cross-workspace role, 22004 NULL argument. Idempotent.';

-- No SET clause on this function: a function with SET options restores every setting changed
-- inside it when it returns, and the role switch must outlive the call (it lasts until the end
-- of the transaction). Names are schema-qualified instead.
CREATE FUNCTION @extschema@.begin_cross_workspace(reason text, role_name name DEFAULT 'tenancy_cross_workspace')
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

REVOKE ALL ON FUNCTION @extschema@.create_app_role(name, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.create_cross_workspace_role(name, name, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._grant_data_privileges(name, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._registry_restriction_sql(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@._setting(text) FROM PUBLIC;
