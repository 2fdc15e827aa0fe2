-- The extension's catalog contract: every function and view in schema tenancy is documented
-- (COMMENT ON), and what application roles may execute is deliberate.
SELECT p.oid::regprocedure AS undocumented_function
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'tenancy' AND obj_description(p.oid, 'pg_proc') IS NULL
 ORDER BY 1;
SELECT c.relname AS undocumented_relation
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'tenancy' AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1;
-- functions an ordinary role can execute
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'tenancy' AND has_function_privilege('public', p.oid, 'EXECUTE')
   AND p.prorettype <> 'trigger'::regtype
 ORDER BY 1, 2;
