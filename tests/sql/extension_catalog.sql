-- Every catalog fact of the extension `tenancy` in the current database, one line per fact,
-- sorted: what an upgrade must reproduce exactly. Two databases, one updated with ALTER
-- EXTENSION tenancy UPDATE and one with a fresh CREATE EXTENSION tenancy of the same version,
-- must give the same lines (tests/upgrade.rs diffs them; docs/releasing.md shows how to run it by
-- hand: psql -XAt -f tests/sql/extension_catalog.sql DB).
-- Covered: the extension row (version, schema, configuration tables), the schema, every member
-- function (signature, result, language, volatility, strictness, security, leakproofness,
-- parallel safety, cost, rows, search_path and other settings, body or C symbol, owner, grants,
-- comment), relation (kind, options, row security, grants, comment, view definition), column
-- (type, default, not null, identity, generated, collation, grants, comment), constraint, index,
-- trigger and policy on member tables, event trigger, type, sequence, and pg_init_privs (what
-- pg_dump treats as the extension's own grants).
WITH ext AS (
    SELECT oid, extname, extversion, extnamespace, extconfig, extcondition, extrelocatable
      FROM pg_extension WHERE extname = 'tenancy'
), members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), lines(line) AS (
    SELECT format('extension version=%s schema=%s relocatable=%s', extversion,
                  extnamespace::regnamespace, extrelocatable) FROM ext
    UNION ALL
    SELECT format('extension config %s condition=%s', c::regclass, cond)
      FROM ext, unnest(extconfig, extcondition) AS u(c, cond)
    UNION ALL
    SELECT format('schema %s owner=%s acl=%s comment=%s', n.nspname, pg_get_userbyid(n.nspowner),
                  (SELECT string_agg(format('%s:%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                                            a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END), ',' ORDER BY 1)
                     FROM aclexplode(n.nspacl) a),
                  obj_description(n.oid, 'pg_namespace'))
      FROM pg_namespace n, ext WHERE n.oid = ext.extnamespace
    UNION ALL
    -- functions and procedures
    SELECT format('function %s kind=%s returns=%s language=%s volatile=%s strict=%s secdef=%s leakproof=%s '
                  'parallel=%s cost=%s rows=%s config=%s owner=%s acl=%s body=%s comment=%s',
                  p.oid::regprocedure, p.prokind, pg_get_function_result(p.oid), l.lanname, p.provolatile,
                  p.proisstrict, p.prosecdef, p.proleakproof, p.proparallel, p.procost, p.prorows,
                  coalesce(p.proconfig::text, '-'), pg_get_userbyid(p.proowner),
                  coalesce((SELECT string_agg(format('%s:%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                                                     a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END), ',' ORDER BY 1)
                              FROM aclexplode(p.proacl) a), 'default'),
                  CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END,
                  coalesce(obj_description(p.oid, 'pg_proc'), '-'))
      FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
      JOIN pg_language l ON l.oid = p.prolang
    UNION ALL
    -- relations: tables, views, sequences, indexes, composite types' relations
    SELECT format('relation %s kind=%s persistence=%s options=%s rls=%s force_rls=%s owner=%s acl=%s comment=%s%s',
                  c.oid::regclass, c.relkind, c.relpersistence, coalesce(c.reloptions::text, '-'),
                  c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner),
                  coalesce((SELECT string_agg(format('%s:%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                                                     a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END), ',' ORDER BY 1)
                              FROM aclexplode(c.relacl) a), 'default'),
                  coalesce(obj_description(c.oid, 'pg_class'), '-'),
                  CASE WHEN c.relkind IN ('v', 'm') THEN ' definition=' || pg_get_viewdef(c.oid) ELSE '' END)
      FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
    UNION ALL
    SELECT format('column %s.%s type=%s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
                  c.oid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-'), a.attidentity, a.attgenerated,
                  coalesce(nullif(a.attcollation, 0)::regcollation::text, '-'),
                  coalesce((SELECT string_agg(format('%s:%s', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
                                                     x.privilege_type), ',' ORDER BY 1)
                              FROM aclexplode(a.attacl) x), 'default'),
                  coalesce(col_description(c.oid, a.attnum), '-'))
      FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('constraint %s on %s: %s', co.conname, co.conrelid::regclass, pg_get_constraintdef(co.oid))
      FROM members m JOIN pg_constraint co ON m.classid = 'pg_class'::regclass AND co.conrelid = m.objid
    UNION ALL
    SELECT format('index on %s: %s', i.indrelid::regclass,
                  regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \S+', 'CREATE \1INDEX'))
      FROM members m JOIN pg_index i ON m.classid = 'pg_class'::regclass AND i.indrelid = m.objid
    UNION ALL
    SELECT format('trigger %s', pg_get_triggerdef(t.oid))
      FROM members m JOIN pg_trigger t ON m.classid = 'pg_class'::regclass AND t.tgrelid = m.objid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s on %s cmd=%s permissive=%s roles=%s using=%s check=%s', po.polname,
                  po.polrelid::regclass, po.polcmd, po.polpermissive,
                  (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END, ',' ORDER BY 1) FROM unnest(po.polroles) r),
                  coalesce(pg_get_expr(po.polqual, po.polrelid), '-'), coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '-'))
      FROM members m JOIN pg_policy po ON m.classid = 'pg_class'::regclass AND po.polrelid = m.objid
    UNION ALL
    SELECT format('event trigger %s event=%s function=%s enabled=%s tags=%s owner=%s comment=%s', e.evtname,
                  e.evtevent, e.evtfoid::regprocedure, e.evtenabled, coalesce(e.evttags::text, '-'),
                  pg_get_userbyid(e.evtowner), coalesce(obj_description(e.oid, 'pg_event_trigger'), '-'))
      FROM members m JOIN pg_event_trigger e ON m.classid = 'pg_event_trigger'::regclass AND e.oid = m.objid
    UNION ALL
    SELECT format('type %s kind=%s owner=%s acl=%s comment=%s%s', t.oid::regtype, t.typtype, pg_get_userbyid(t.typowner),
                  coalesce(t.typacl::text, 'default'), coalesce(obj_description(t.oid, 'pg_type'), '-'),
                  CASE WHEN t.typtype = 'c' THEN ' attributes=' || (
                      SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
                       WHEN t.typtype = 'e' THEN ' labels=' || (
                      SELECT string_agg(enumlabel, ', ' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
                       WHEN t.typtype = 'd' THEN ' base=' || format_type(t.typbasetype, t.typtypmod) || ' notnull=' || t.typnotnull
                       ELSE '' END)
      FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
    UNION ALL
    SELECT format('member %s', pg_describe_object(m.classid, m.objid, 0))
      FROM members m
     WHERE m.classid NOT IN ('pg_proc'::regclass, 'pg_class'::regclass, 'pg_event_trigger'::regclass, 'pg_type'::regclass)
    UNION ALL
    SELECT format('init privilege %s sub=%s type=%s acl=%s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
                  ip.objsubid, ip.privtype,
                  (SELECT string_agg(format('%s:%s%s', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                                            a.privilege_type, CASE WHEN a.is_grantable THEN '*' ELSE '' END), ',' ORDER BY 1)
                     FROM aclexplode(ip.initprivs) a))
      FROM pg_init_privs ip
     WHERE (ip.classoid, ip.objoid) IN (SELECT classid, objid FROM members)
        OR (ip.classoid = 'pg_namespace'::regclass AND ip.objoid = (SELECT extnamespace FROM ext))
)
SELECT line FROM lines ORDER BY line COLLATE "C";
