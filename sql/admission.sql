-- Fair sharing: per-workspace limits on concurrent statements, on the wait for a slot and on
-- statement time (src/admission.rs enforces them; docs/admission.md).

CREATE TABLE @extschema@.workspace_limit (
    workspace_id uuid,
    max_active integer CHECK (max_active >= 1),
    max_wait interval CHECK (max_wait >= interval '0'),
    statement_timeout interval CHECK (statement_timeout > interval '0'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workspace_limit_workspace_key UNIQUE NULLS NOT DISTINCT (workspace_id)
);
COMMENT ON TABLE @extschema@.workspace_limit IS
'Per-workspace limits: workspace_id NULL is the default for every workspace; a workspace''s own row overrides the whole default (NULL in a column: no limit for that item). Written by tenancy.set_limits / clear_limits.';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.workspace_limit', '');
-- every backend caches the limits: a change invalidates the caches when its transaction commits
CREATE TRIGGER workspace_limit_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.workspace_limit
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.quota_config_changed();

CREATE FUNCTION @extschema@.set_limits(max_active integer, max_wait interval DEFAULT NULL,
                                       statement_timeout interval DEFAULT NULL, workspace uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF max_active < 1 THEN
        RAISE EXCEPTION 'max_active must be at least 1 (or NULL: no limit), not %', max_active
            USING ERRCODE = '22023', HINT = 'To stop a workspace entirely, revoke its access; a limit of 0 would make every statement wait.';
    END IF;
    IF max_wait < interval '0' THEN
        RAISE EXCEPTION 'max_wait must not be negative: %', max_wait
            USING ERRCODE = '22023', HINT = 'interval ''0'' refuses at once when the workspace is at its limit; NULL waits without limit.';
    END IF;
    IF statement_timeout <= interval '0' THEN
        RAISE EXCEPTION 'statement_timeout must be positive: %', statement_timeout
            USING ERRCODE = '22023', HINT = 'NULL leaves the session''s own statement_timeout alone.';
    END IF;
    INSERT INTO @extschema@.workspace_limit AS l (workspace_id, max_active, max_wait, statement_timeout)
    VALUES (workspace, max_active, max_wait, statement_timeout)
    ON CONFLICT ON CONSTRAINT workspace_limit_workspace_key
    DO UPDATE SET max_active = EXCLUDED.max_active, max_wait = EXCLUDED.max_wait,
                  statement_timeout = EXCLUDED.statement_timeout, updated_at = now();
END
$fn$;
COMMENT ON FUNCTION @extschema@.set_limits(integer, interval, interval, uuid) IS
'Sets the limits of one workspace, or (workspace NULL) the default for every workspace: max_active, the most statements of the workspace running at once in the database (nested statements take no extra slot); max_wait, how long a statement waits for a slot before failing with 53000; statement_timeout, applied to the workspace''s statements when smaller than the session''s. NULL: no limit for that item. Transactional and idempotent; takes effect in every backend at commit. 22023 on a bad value.';

CREATE FUNCTION @extschema@.clear_limits(workspace uuid)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    DELETE FROM @extschema@.workspace_limit WHERE workspace_id IS NOT DISTINCT FROM workspace;
$fn$;
COMMENT ON FUNCTION @extschema@.clear_limits(uuid) IS
'Removes a workspace''s own limits, so that the default applies to it again; with NULL, removes the default (workspaces without their own row are then unlimited). Idempotent.';

CREATE VIEW @extschema@.workspace_limits AS
WITH slots AS (
    SELECT s.workspace_id, s.active, s.waiting FROM @extschema@._admission_slots() s
     WHERE s.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
), dflt AS (
    SELECT l.* FROM @extschema@.workspace_limit l WHERE l.workspace_id IS NULL
)
SELECT l.workspace_id, l.max_active, l.max_wait, l.statement_timeout,
       CASE WHEN l.workspace_id IS NULL THEN 'default' ELSE 'workspace' END AS source,
       coalesce(s.active, 0) AS active, coalesce(s.waiting, 0) AS waiting
  FROM @extschema@.workspace_limit l
  LEFT JOIN slots s ON s.workspace_id = l.workspace_id
UNION ALL
-- workspaces without a row of their own that have statements running or waiting now
SELECT s.workspace_id, d.max_active, d.max_wait, d.statement_timeout, 'default', s.active, s.waiting
  FROM slots s CROSS JOIN dflt d
 WHERE NOT EXISTS (SELECT FROM @extschema@.workspace_limit l WHERE l.workspace_id = s.workspace_id);
COMMENT ON VIEW @extschema@.workspace_limits IS
'Limits in force: the default (workspace_id NULL, source default), each workspace''s own row (source workspace), and each workspace running under the default with statements active now (source default); active and waiting: its statements holding a slot and waiting for one now, in this database.';

REVOKE ALL ON TABLE @extschema@.workspace_limit FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.set_limits(integer, interval, interval, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.clear_limits(uuid) FROM PUBLIC;
