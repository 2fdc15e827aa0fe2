-- Change stamps (this cluster preloads tenancy): a stamp moves when a transaction that changed
-- rows of the workspace in the table commits, and only then.
\set SHOW_CONTEXT never
\pset null (null)
\set a '''a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'''
\set b '''b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'''
CREATE TABLE stamped (id serial PRIMARY KEY, "workspaceId" uuid NOT NULL, name text);
SELECT tenancy.track_changes('stamped');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'stamped'::regclass ORDER BY 1;
CREATE TEMP TABLE seen AS SELECT 0 AS step, tenancy.change_stamp('stamped', :a) AS a, tenancy.change_stamp('stamped', :b) AS b;
-- an insert into a moves a, not b
INSERT INTO stamped ("workspaceId", name) VALUES (:a, 'one');
INSERT INTO seen SELECT 1, tenancy.change_stamp('stamped', :a), tenancy.change_stamp('stamped', :b);
-- a rolled-back transaction and a rolled-back savepoint move nothing
BEGIN; INSERT INTO stamped ("workspaceId", name) VALUES (:a, 'two'); ROLLBACK;
BEGIN; SAVEPOINT s; DELETE FROM stamped; ROLLBACK TO s; COMMIT;
INSERT INTO seen SELECT 2, tenancy.change_stamp('stamped', :a), tenancy.change_stamp('stamped', :b);
-- a row moved from a to b moves both
UPDATE stamped SET "workspaceId" = :b;
INSERT INTO seen SELECT 3, tenancy.change_stamp('stamped', :a), tenancy.change_stamp('stamped', :b);
SELECT step, a > lag(a) OVER w AS a_moved, b > lag(b) OVER w AS b_moved FROM seen WINDOW w AS (ORDER BY step) ORDER BY step;
-- the current context's stamp; every tracked table's
RESET tenancy.workspace_id;
SELECT tenancy.change_stamp('stamped');
SELECT table_name, stamp > 0 AS has_stamp FROM tenancy.change_stamps(:b);
-- bad input: a column that does not exist, of the wrong type; an untracked table; a view
SELECT tenancy.track_changes('stamped', 'nope');
SELECT tenancy.track_changes('stamped', 'name');
CREATE TABLE unstamped ("workspaceId" uuid);
SELECT tenancy.change_stamp('unstamped', :a);
CREATE VIEW stamped_view AS SELECT * FROM stamped;
SELECT tenancy.track_changes('stamped_view');
-- two-phase commit of a change is refused
BEGIN; INSERT INTO stamped ("workspaceId", name) VALUES (:a, 'p'); PREPARE TRANSACTION 'stamped';
-- untracking drops the triggers; the stamp is then refused
SELECT tenancy.untrack_changes('stamped');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'stamped'::regclass;
SELECT tenancy.change_stamp('stamped', :a);
DROP VIEW stamped_view;
DROP TABLE stamped, unstamped;
