-- Workspace context: the tenancy.workspace_id setting and the functions around it.
-- Each error is followed by its SQLSTATE (\echo :LAST_ERROR_SQLSTATE).
\set SHOW_CONTEXT never
\pset null '(null)'

-- 1. Unset means NULL.
SELECT tenancy.current_workspace_id();
SHOW tenancy.workspace_id;

-- 2. Every spelling uuid_in accepts is stored in canonical lowercase form.
SET tenancy.workspace_id = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11';
SHOW tenancy.workspace_id;
SELECT tenancy.current_workspace_id();
SET tenancy.workspace_id = '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}';
SHOW tenancy.workspace_id;
SET tenancy.workspace_id = 'a0eebc999c0b4ef8bb6d6bb9bd380a13';
SHOW tenancy.workspace_id;
SET tenancy.workspace_id = 'a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a14';
SELECT tenancy.current_workspace_id(), current_setting('tenancy.workspace_id');

-- 3. Anything else is rejected when set (22023) and the previous value stays.
SET tenancy.workspace_id = 'not-a-uuid';
\echo :LAST_ERROR_SQLSTATE
SET tenancy.workspace_id = ' a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
\echo :LAST_ERROR_SQLSTATE
SET tenancy.workspace_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1';
\echo :LAST_ERROR_SQLSTATE
SELECT set_config('tenancy.workspace_id', '42', false);
\echo :LAST_ERROR_SQLSTATE
SHOW tenancy.workspace_id;

-- 4. RESET and the empty string unset it.
RESET tenancy.workspace_id;
SELECT tenancy.current_workspace_id();
SET tenancy.workspace_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
SET tenancy.workspace_id = '';
SELECT tenancy.current_workspace_id();

-- 5. SET LOCAL: visible inside the transaction, NULL after it (PostgreSQL leaves '' behind).
BEGIN;
SET LOCAL tenancy.workspace_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
SELECT tenancy.current_workspace_id();
COMMIT;
SELECT tenancy.current_workspace_id(), current_setting('tenancy.workspace_id') AS raw_setting;

-- A rolled-back SET and a rolled-back savepoint restore the previous value.
SET tenancy.workspace_id = '00000000-0000-0000-0000-00000000000a';
BEGIN;
SET tenancy.workspace_id = '00000000-0000-0000-0000-00000000000b';
SAVEPOINT s;
SET LOCAL tenancy.workspace_id = '00000000-0000-0000-0000-00000000000c';
SELECT tenancy.current_workspace_id();
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.current_workspace_id();
ROLLBACK;
SELECT tenancy.current_workspace_id();
RESET tenancy.workspace_id;

-- 6. require_workspace_id(): the value, or 55000 with a hint.
SELECT tenancy.require_workspace_id();
\echo :LAST_ERROR_SQLSTATE
SET tenancy.workspace_id = '00000000-0000-0000-0000-00000000000a';
SELECT tenancy.require_workspace_id();
RESET tenancy.workspace_id;

-- 7. set_workspace() checks the registry ("Workspace"). Active and Paused are accepted.
BEGIN;
SELECT tenancy.set_workspace(fixture.ws_id('root', 1)) = fixture.ws_id('root', 1) AS returned;
SELECT tenancy.current_workspace_id() = fixture.ws_id('root', 1) AS is_root_1;
COMMIT;
-- transaction-local by default: gone after the transaction
SELECT tenancy.current_workspace_id();
SELECT tenancy.set_workspace(fixture.ws_id('paused', 1), false) IS NOT NULL AS session_wide;
SELECT tenancy.current_workspace_id() = fixture.ws_id('paused', 1) AS is_paused_1;

-- Tombstoned, unknown and NULL are refused; the setting stays as it was.
SELECT tenancy.set_workspace(fixture.ws_id('tombstoned', 1));
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_workspace('00000000-0000-0000-0000-000000000000');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_workspace(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.set_workspace(fixture.ws_id('root', 1), NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.current_workspace_id() = fixture.ws_id('paused', 1) AS still_paused_1;
RESET tenancy.workspace_id;

-- 8. A misspelled setting is an error, not a silently created placeholder.
SET tenancy.workspaceid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
\echo :LAST_ERROR_SQLSTATE
SELECT set_config('tenancy.workspace', 'x', true);
\echo :LAST_ERROR_SQLSTATE

-- 9. A non-superuser application role sets its own workspace; it cannot move the registry.
CREATE ROLE tenancy_regress_app LOGIN;
GRANT USAGE ON SCHEMA fixture TO tenancy_regress_app;
GRANT SELECT ON "Workspace" TO tenancy_regress_app;
SET ROLE tenancy_regress_app;
BEGIN;
SELECT tenancy.set_workspace(fixture.ws_id('child', 1001)) = fixture.ws_id('child', 1001) AS ok;
SELECT tenancy.require_workspace_id() = fixture.ws_id('child', 1001) AS ok;
COMMIT;
SET tenancy.workspace_id = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11';
SELECT tenancy.current_workspace_id();
SET tenancy.registry_table = 'public.somewhere_else';
\echo :LAST_ERROR_SQLSTATE
RESET tenancy.workspace_id;
RESET ROLE;

-- 10. Not settable inside a security-restricted operation (here: REFRESH MATERIALIZED VIEW).
CREATE FUNCTION pick_workspace() RETURNS text LANGUAGE sql VOLATILE
AS $$ SELECT set_config('tenancy.workspace_id', '00000000-0000-0000-0000-00000000000d', true) $$;
CREATE MATERIALIZED VIEW picked AS SELECT pick_workspace() AS x WITH NO DATA;
REFRESH MATERIALIZED VIEW picked;
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.current_workspace_id();
DROP MATERIALIZED VIEW picked;
DROP FUNCTION pick_workspace();

-- 11. A superuser can point the registry at another table and columns.
CREATE TABLE tenants (tenant_id uuid PRIMARY KEY, state text NOT NULL);
INSERT INTO tenants VALUES ('00000000-0000-0000-0000-0000000000e1', 'live'),
                           ('00000000-0000-0000-0000-0000000000e2', 'deleted');
SET tenancy.registry_table = 'public.tenants';
SET tenancy.registry_id_column = 'tenant_id';
SET tenancy.registry_status_column = 'state';
SET tenancy.registry_deleted_status = 'deleted';
SELECT tenancy.set_workspace('00000000-0000-0000-0000-0000000000e1', false);
SELECT tenancy.set_workspace('00000000-0000-0000-0000-0000000000e2');
\echo :LAST_ERROR_SQLSTATE
-- no status column: existence only
SET tenancy.registry_status_column = '';
SELECT tenancy.set_workspace('00000000-0000-0000-0000-0000000000e2', false);
-- misconfiguration is reported precisely
SET tenancy.registry_table = 'public.no_such_table';
SELECT tenancy.set_workspace('00000000-0000-0000-0000-0000000000e1');
\echo :LAST_ERROR_SQLSTATE
SET tenancy.registry_table = 'public.tenants';
SET tenancy.registry_id_column = 'no_such_column';
SELECT tenancy.set_workspace('00000000-0000-0000-0000-0000000000e1');
\echo :LAST_ERROR_SQLSTATE
RESET tenancy.registry_table;
RESET tenancy.registry_id_column;
RESET tenancy.registry_status_column;
RESET tenancy.registry_deleted_status;
RESET tenancy.workspace_id;
DROP TABLE tenants;
DROP OWNED BY tenancy_regress_app;
DROP ROLE tenancy_regress_app;
