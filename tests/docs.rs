//! The documentation against the code: `docs/reference.md` must describe what the live server's
//! catalog and the sources actually contain, so that a function, setting or SQLSTATE added
//! without its documentation (or documented and then removed) fails the suite.
//!
//! What "documented" means, in `docs/reference.md` (paths relative to the repository root,
//! `CARGO_MANIFEST_DIR/..`):
//! - **Functions and views.** Every function and view of schema `tenancy` whose name does not
//!   start with `_` has an *entry*: a line that starts, after leading spaces and an optional list
//!   marker (`12.` or `-`), with ``**`tenancy.NAME`` or ``**View `tenancy.NAME``, where NAME is
//!   followed by `(`, `` ` `` or a space. A mere mention elsewhere (prose, the Errors table) does
//!   not count, so deleting a function's entry fails this test. Conversely, every entry names a
//!   function or view that exists.
//! - **Settings.** Every `tenancy.*` row of `pg_settings` is the first cell of a row of the table
//!   under `## Settings`, written `` `tenancy.name` ``; every row there is a real setting (the
//!   suite's cluster preloads tenancy, so the server-start settings exist too).
//! - **Errors.** The first cell of each row of the table under `## Errors` holds one or more
//!   SQLSTATEs (5 characters of `0-9A-Z` with a digit, e.g. `0A000 (quota)`, `42804 / 42809`).
//!   Each must be raised by the code: as `ERRCODE_<NAME>` in `src/**/*.rs` (mapped to its code by
//!   [`ERRCODE_NAMES`]) or `ERRCODE = '<code>'` in `sql/*.sql`, or appear there as a quoted
//!   literal; the few PostgreSQL raises on tenancy's behalf are allowed by [`RAISED_BY_POSTGRES`],
//!   each only while the source still calls what makes PostgreSQL raise it. Conversely, every
//!   code the sources raise has a row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tenancy_it::*;

/// `PgSqlErrorCode::ERRCODE_<NAME>` → SQLSTATE, for the names the sources use (and a few likely
/// next ones). A name missing here fails the test with a message saying so: add it, with its code
/// from PostgreSQL's `src/backend/utils/errcodes.txt`.
const ERRCODE_NAMES: &[(&str, &str)] = &[
    ("IO_ERROR", "58030"),
    ("ACTIVE_SQL_TRANSACTION", "25001"),
    ("CONFIGURATION_LIMIT_EXCEEDED", "53400"),
    ("DATATYPE_MISMATCH", "42804"),
    ("INSUFFICIENT_RESOURCES", "53000"),
    ("DUPLICATE_OBJECT", "42710"),
    ("E_R_I_E_TRIGGER_PROTOCOL_VIOLATED", "39P01"),
    ("FEATURE_NOT_SUPPORTED", "0A000"),
    ("INSUFFICIENT_PRIVILEGE", "42501"),
    ("INTERNAL_ERROR", "XX000"),
    ("INVALID_NAME", "42602"),
    ("INVALID_OBJECT_DEFINITION", "42P17"),
    ("INVALID_PARAMETER_VALUE", "22023"),
    ("INVALID_SCHEMA_NAME", "3F000"),
    ("INVALID_TEXT_REPRESENTATION", "22P02"),
    ("NULL_VALUE_NOT_ALLOWED", "22004"),
    ("OBJECT_NOT_IN_PREREQUISITE_STATE", "55000"),
    ("OUT_OF_MEMORY", "53200"),
    ("PROGRAM_LIMIT_EXCEEDED", "54000"),
    ("READ_ONLY_SQL_TRANSACTION", "25006"),
    ("SYNTAX_ERROR", "42601"),
    ("T_R_SERIALIZATION_FAILURE", "40001"),
    ("TRIGGERED_ACTION_EXCEPTION", "09000"),
    ("UNDEFINED_COLUMN", "42703"),
    ("UNDEFINED_FUNCTION", "42883"),
    ("UNDEFINED_OBJECT", "42704"),
    ("UNDEFINED_TABLE", "42P01"),
    ("WARNING", "01000"),
    ("WRONG_OBJECT_TYPE", "42809"),
    ("CONFIG_FILE_ERROR", "F0000"),
    ("INVALID_BINARY_REPRESENTATION", "22P03"),
    ("DATA_CORRUPTED", "XX001"),
    ("CHARACTER_NOT_IN_REPERTOIRE", "22021"),
    ("SYSTEM_ERROR", "58000"),
];

/// SQLSTATEs of the Errors table that PostgreSQL raises itself, because of something tenancy
/// does: (code, a string that must appear in `src/**/*.rs` for the exemption to hold, why).
/// The rows "42501 (policy)" and "0A000" (COPY under row-level security) are PostgreSQL's own
/// errors too, but tenancy raises both codes itself, so they need no exemption.
const RAISED_BY_POSTGRES: &[(&str, &str, &str)] = &[
    (
        "42602",
        "MarkGUCPrefixReserved",
        "a misspelled tenancy.* setting: the prefix is reserved in src/context.rs",
    ),
    (
        "25006",
        "PreventCommandIfReadOnly",
        "quota administration in a read-only transaction: src/quota.rs calls the check",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The files under `dir` (recursively) whose name ends with `ext`, with their text.
fn sources(dir: &str, ext: &str) -> Vec<(String, String)> {
    fn walk(p: &Path, ext: &str, out: &mut Vec<(String, String)>) {
        let root = repo();
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap_or_else(|e| panic!("read dir {}: {e}", p.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                walk(&e, ext, out);
            } else if e.to_string_lossy().ends_with(ext) {
                let text = std::fs::read_to_string(&e).unwrap();
                out.push((
                    e.strip_prefix(&root).unwrap_or(&e).display().to_string(),
                    text,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join(dir), ext, &mut out);
    assert!(!out.is_empty(), "no *{ext} files under {dir}");
    out
}

/// The lines of the section that starts with the line `heading` (e.g. `## Errors`), up to the next
/// heading of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "docs/reference.md has no line `{heading}`"
    );
    lines
        .take_while(|l| {
            let hashes = l.chars().take_while(|&c| c == '#').count();
            !(hashes >= 1 && hashes <= level && l[hashes..].starts_with(' '))
        })
        .collect()
}

/// First cells of the table rows of `lines` (header and separator rows excluded).
fn first_cells(lines: &[&str]) -> Vec<String> {
    let rows: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() > 2, "no table found");
    rows.iter()
        .skip(2) // header, |---|
        .map(|r| {
            r.trim_start_matches('|')
                .split('|')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Names of the entries of `doc` (see the module comment).
fn entries(doc: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in doc.lines() {
        let mut l = line.trim_start();
        let digits = l.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && l[digits..].starts_with(". ") {
            l = &l[digits + 2..];
        } else if let Some(rest) = l.strip_prefix("- ") {
            l = rest;
        }
        let Some(rest) = l
            .strip_prefix("**`tenancy.")
            .or_else(|| l.strip_prefix("**View `tenancy."))
        else {
            continue;
        };
        let name: String = rest.chars().take_while(|&c| is_ident_char(c)).collect();
        if matches!(rest[name.len()..].chars().next(), Some('(' | '`' | ' ')) && !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// 5-character SQLSTATE tokens (digits and capitals, at least one digit) in `cell`.
fn sqlstates(cell: &str) -> Vec<String> {
    cell.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| {
            t.len() == 5
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
                && t.chars().any(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect()
}

/// SQLSTATEs the sources raise: `ERRCODE_<NAME>` in Rust, `ERRCODE = '<code>'` in SQL. Returns
/// code → where, and the `ERRCODE_` names that `ERRCODE_NAMES` lacks.
fn raised(
    rust: &[(String, String)],
    sql: &[(String, String)],
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let names: BTreeMap<&str, &str> = ERRCODE_NAMES.iter().copied().collect();
    let mut codes = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for (file, text) in rust {
        for (i, _) in text.match_indices("ERRCODE_") {
            let name: String = text[i + "ERRCODE_".len()..]
                .chars()
                .take_while(|&c| is_ident_char(c))
                .collect();
            match names.get(name.as_str()) {
                Some(code) => {
                    codes
                        .entry(code.to_string())
                        .or_insert_with(|| format!("ERRCODE_{name} in {file}"));
                }
                None => {
                    unknown.insert(format!("ERRCODE_{name} ({file})"));
                }
            }
        }
    }
    for (file, text) in sql {
        let upper = text.to_uppercase();
        for (i, _) in upper.match_indices("ERRCODE") {
            let rest = upper[i + "ERRCODE".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('=') else {
                continue;
            };
            let rest = rest.trim_start();
            if let Some(code) = rest
                .strip_prefix('\'')
                .and_then(|r| r.get(..6))
                .and_then(|r| r.strip_suffix('\''))
            {
                codes
                    .entry(code.to_string())
                    .or_insert_with(|| format!("ERRCODE = '{code}' in {file}"));
            }
        }
    }
    (codes, unknown)
}

#[test]
fn reference_matches_catalog_settings_and_errors() {
    let doc = read("docs/reference.md");
    let rust = sources("src", ".rs");
    let sql = sources("sql", ".sql");
    let all_rust: String = rust
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let all_sources: String = rust
        .iter()
        .chain(sql.iter())
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut problems: Vec<String> = Vec::new();

    let db = fresh_db("docs");
    let mut c = connect(&db);

    // Functions and views.
    let catalog: BTreeSet<String> = c
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'tenancy' AND left(p.proname, 1) <> '_'
             UNION
             SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'tenancy' AND c.relkind IN ('v', 'm') AND left(c.relname, 1) <> '_'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        catalog.contains("set_workspace"),
        "schema tenancy looks empty: {catalog:?}"
    );
    let documented = entries(&doc);
    for name in catalog.difference(&documented) {
        problems.push(format!("function or view tenancy.{name} has no entry in docs/reference.md (a line starting **`tenancy.{name}(...)` or **View `tenancy.{name}`)"));
    }
    for name in documented.difference(&catalog) {
        problems.push(format!("docs/reference.md has an entry for tenancy.{name}, which is no function or view of schema tenancy"));
    }

    // Settings.
    let settings: BTreeSet<String> = c
        .query(
            "SELECT name FROM pg_settings WHERE name LIKE 'tenancy.%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let preloaded: String = c
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert!(
        preloaded.contains("tenancy"),
        "the suite's cluster should preload tenancy, has {preloaded:?}"
    );
    let table: BTreeSet<String> = first_cells(&section(&doc, "## Settings"))
        .iter()
        .map(|cell| cell.trim_matches('`').to_string())
        .collect();
    for name in settings.difference(&table) {
        problems.push(format!(
            "setting {name} has no row in the Settings table of docs/reference.md"
        ));
    }
    for name in table.difference(&settings) {
        problems.push(format!(
            "the Settings table of docs/reference.md lists {name}, which pg_settings does not have"
        ));
    }

    // Errors.
    let documented_codes: BTreeSet<String> = first_cells(&section(&doc, "## Errors"))
        .iter()
        .flat_map(|cell| sqlstates(cell))
        .collect();
    assert!(
        documented_codes.contains("53400"),
        "no SQLSTATE read from the Errors table: {documented_codes:?}"
    );
    let (raised_codes, unknown) = raised(&rust, &sql);
    for name in &unknown {
        problems.push(format!(
            "{name}: add its SQLSTATE to ERRCODE_NAMES in tests/docs.rs"
        ));
    }
    for code in &documented_codes {
        if raised_codes.contains_key(code)
            || all_sources.contains(&format!("'{code}'"))
            || all_sources.contains(&format!("\"{code}\""))
        {
            continue;
        }
        match RAISED_BY_POSTGRES.iter().find(|(c, _, _)| c == code) {
            Some((_, marker, why)) if all_rust.contains(marker) => {
                let _ = why; // allowed: PostgreSQL raises it for tenancy
            }
            Some((_, marker, why)) => problems.push(format!(
                "SQLSTATE {code} ({why}) is in the Errors table, but src/ no longer calls {marker}"
            )),
            None => problems.push(format!(
                "SQLSTATE {code} is in the Errors table of docs/reference.md, but nothing in src/ or sql/ raises it"
            )),
        }
    }
    for (code, place) in &raised_codes {
        if !documented_codes.contains(code) {
            problems.push(format!("SQLSTATE {code} is raised ({place}) but has no row in the Errors table of docs/reference.md"));
        }
    }

    assert!(
        problems.is_empty(),
        "docs/reference.md disagrees with the code ({} problem(s)):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    eprintln!(
        "docs/reference.md: {} functions and views, {} settings, {} SQLSTATEs checked",
        catalog.len(),
        settings.len(),
        documented_codes.len()
    );
}

#[test]
fn parsers() {
    assert_eq!(sqlstates("0A000 (quota)"), vec!["0A000"]);
    assert_eq!(sqlstates("42804 / 42809"), vec!["42804", "42809"]);
    assert_eq!(sqlstates("42501 (policy)"), vec!["42501"]);
    assert!(sqlstates("SQLSTATE").is_empty());
    let doc =
        "1. **`tenancy.a(x int)`** — a\n   **`tenancy.b(tbl)`** — b\n9. **View `tenancy.c`** — c\n\
               - **`tenancy.d()`** — d\nsee `tenancy.e` and **`tenancy.f`**x\n";
    let names: Vec<String> = entries(doc).into_iter().collect();
    assert_eq!(names, vec!["a", "b", "c", "d"]);
    let doc = "## A\nx\n### B\ny\n## C\nz\n";
    assert_eq!(section(doc, "## A"), vec!["x", "### B", "y"]);
}

/// PostgreSQL 15 keeps 10 relcache callbacks per process for every extension loaded together
/// (`MAX_RELCACHE_CALLBACKS`); with Citus preloaded too, tenancy's five (one per capability)
/// made every connection fail ("FATAL: out of relcache_callback_list slots"). tenancy registers
/// one, in src/hooks.rs, which calls each capability's handler: keep it that way.
#[test]
fn one_relcache_callback() {
    let calls: Vec<String> = sources("src", "rs")
        .into_iter()
        .filter(|(_, text)| text.contains("CacheRegisterRelcacheCallback("))
        .map(|(path, text)| {
            format!(
                "{path}: {}",
                text.matches("CacheRegisterRelcacheCallback(").count()
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec!["src/hooks.rs: 1".to_string()],
        "relcache callbacks registered"
    );
}
