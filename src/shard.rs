//! Readiness for sharding with Citus (issue 19, item 3): `shard_readiness()` lists what Citus
//! would refuse about distributing the database's tables by the workspace column, with the DDL
//! that fixes it where one exists, and `shard_plan()` writes the script that distributes them.
//! Catalog reads only, in SQL (`sql/shard.sql`); each rule mirrors a check of Citus 13.2
//! (docs/scaling.md names the file and function).

pgrx::extension_sql_file!(
    "../sql/shard.sql",
    name = "shard_sql",
    requires = ["stats_sql", "quota_sql", "audit_sql"]
);
