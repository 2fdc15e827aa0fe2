//! Compiles the C part of the `pg` layer (`src/pg/hooks.c`: the planner, executor and utility
//! hook trampolines) against the server headers of the PostgreSQL that pgrx builds for (its
//! `pg_config`: `PGRX_PG_CONFIG_PATH`, else `~/.pgrx/config.toml`, as pgrx's own build does).

fn main() {
    println!("cargo:rerun-if-changed=src/pg/hooks.c");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    let pgrx = pgrx_pg_config::Pgrx::from_config().expect("pgrx configuration (cargo pgrx init)");
    let pg_config = pgrx
        .get("pg15")
        .expect("a pg_config for PostgreSQL 15 in pgrx's configuration");
    let include = pg_config
        .includedir_server()
        .expect("pg_config --includedir-server");
    let mut build = cc::Build::new();
    build.warnings(false); // cc adds -Wextra, which PostgreSQL's own headers do not pass
    build
        .file("src/pg/hooks.c")
        .include(include)
        .flag_if_supported("-ffunction-sections")
        .flag_if_supported("-fdata-sections")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wmissing-prototypes")
        .flag_if_supported("-fno-strict-aliasing")
        .flag_if_supported("-fwrapv");
    build.compile("tenancy-pg-hooks");
}
