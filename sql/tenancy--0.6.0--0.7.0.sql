-- tenancy 0.6.0 -> 0.7.0 (ALTER EXTENSION tenancy UPDATE TO '0.7.0')
--
-- change_stamp() calls the C function directly instead of through an SQL wrapper with a
-- SET search_path clause (it runs no SQL): a third of the cost of a cache's stamp check
-- (bench/caching.sh). Same signature, result and errors; CREATE OR REPLACE keeps the function's
-- oid, privileges and comment, and drops the SET clause. tests/upgrade.rs checks the result
-- against a fresh install. Released: never edit this file (docs/releasing.md).

\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.7.0'" to load this file. \quit

CREATE OR REPLACE FUNCTION @extschema@.change_stamp(tbl regclass, workspace uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'change_stamp_wrapper';
