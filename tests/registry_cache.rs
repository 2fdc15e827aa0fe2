//! The registry cache (issue 17 item 3): `set_workspace()` and `readable_workspace_ids()` answer
//! from a backend-local cache while the registry's change stamps are unchanged, and exactly as
//! the table would: after another session's committed change, after this transaction's own
//! uncommitted change, with the change triggers disabled or re-created, under REPEATABLE READ,
//! and per role (a revoked privilege or a row-security policy on the registry is never bypassed).
//! A randomized concurrent test checks that no answer is ever older than the last commit before
//! the call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tenancy_it::*;

const APP: &str = "rc_app";

/// Scans of the registry and its indexes not yet flushed to the statistics (they are flushed
/// between transactions only: compare two readings in one transaction).
fn scans(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT pg_stat_get_xact_numscans('\"Workspace\"'::regclass)
              + (SELECT coalesce(sum(pg_stat_get_xact_numscans(indexrelid)), 0)::bigint
                   FROM pg_index WHERE indrelid = '\"Workspace\"'::regclass)",
        &[],
    )
    .unwrap()
    .get(0)
}

/// `Ok` or the SQLSTATE of `set_workspace(ws)`.
fn set_ws(c: &mut Client, ws: &str) -> Result<(), String> {
    c.query_one("SELECT tenancy.set_workspace($1::text::uuid)", &[&ws])
        .map(|_| ())
        .map_err(|e| sqlstate(&e))
}

/// Registry scans of `n` calls of `set_workspace(ws)` in one transaction, after a first call.
fn scans_of_calls(c: &mut Client, ws: &str, n: usize) -> i64 {
    c.batch_execute("BEGIN").unwrap();
    set_ws(c, ws).unwrap();
    let before = scans(c);
    for _ in 0..n {
        set_ws(c, ws).unwrap();
    }
    let after = scans(c);
    c.batch_execute("COMMIT").unwrap();
    after - before
}

/// The readable workspaces, sorted.
fn readable(c: &mut Client) -> Vec<String> {
    c.query_one(
        "SELECT ARRAY(SELECT u::text FROM unnest(tenancy.readable_workspace_ids()) u ORDER BY 1)",
        &[],
    )
    .unwrap()
    .get(0)
}

fn setup() -> (String, Client, Client) {
    let db = fresh_db("registry_cache");
    let mut admin = connect(&db);
    app_role(&mut admin, APP);
    admin
        .batch_execute("SELECT tenancy.track_changes('\"Workspace\"', 'id')")
        .unwrap();
    let app = connect_as(&db, APP);
    (db, admin, app)
}

#[test]
fn the_registry_cache_serves_repeats_and_follows_every_change() {
    let (_db, mut admin, mut app) = setup();
    let root1 = ws_id(&mut admin, "root", 1);
    let root2 = ws_id(&mut admin, "root", 2);
    let root3 = ws_id(&mut admin, "root", 3);

    // served from the cache: repeated calls do not read the registry...
    assert_eq!(
        scans_of_calls(&mut app, &root1, 50),
        0,
        "cached calls read the registry"
    );
    // ...and untracked, every call does (the measurement can tell the two apart)
    admin
        .batch_execute("SELECT tenancy.untrack_changes('\"Workspace\"')")
        .unwrap();
    assert!(
        scans_of_calls(&mut app, &root1, 50) >= 50,
        "untracked: every call reads"
    );
    admin
        .batch_execute("SELECT tenancy.track_changes('\"Workspace\"', 'id')")
        .unwrap();
    assert_eq!(scans_of_calls(&mut app, &root1, 50), 0);

    // another session's committed change is seen at the next call
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Tombstoned' WHERE id = $1::text::uuid",
            &[&root1],
        )
        .unwrap();
    assert_eq!(set_ws(&mut app, &root1), Err("42704".into()), "tombstoned");
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Active' WHERE id = $1::text::uuid",
            &[&root1],
        )
        .unwrap();
    assert_eq!(set_ws(&mut app, &root1), Ok(()), "revived");

    // a cached "does not exist" ends when the workspace is created
    let new = "dddddddd-0000-4000-8000-000000000001";
    assert_eq!(set_ws(&mut app, new), Err("42704".into()));
    assert_eq!(set_ws(&mut app, new), Err("42704".into()));
    admin
        .execute(
            "INSERT INTO \"Workspace\" (id, name) VALUES ($1::text::uuid, 'new')",
            &[&new],
        )
        .unwrap();
    assert_eq!(set_ws(&mut app, new), Ok(()), "created");

    // this transaction's own, uncommitted change: read from the table
    let mine = "dddddddd-0000-4000-8000-000000000002";
    assert_eq!(set_ws(&mut app, mine), Err("42704".into()));
    app.batch_execute(&format!(
        "BEGIN; INSERT INTO \"Workspace\" (id, name) VALUES ('{mine}', 'mine')"
    ))
    .unwrap();
    assert_eq!(
        set_ws(&mut app, mine),
        Ok(()),
        "own insert seen in its transaction"
    );
    app.batch_execute("ROLLBACK").unwrap();
    assert_eq!(set_ws(&mut app, mine), Err("42704".into()), "rolled back");

    // a change trigger disabled: nothing is trusted, every call reads
    admin
        .batch_execute("ALTER TABLE \"Workspace\" DISABLE TRIGGER tenancy_changes_update")
        .unwrap();
    assert!(
        scans_of_calls(&mut app, &root2, 10) >= 10,
        "disabled trigger: read"
    );
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Tombstoned' WHERE id = $1::text::uuid",
            &[&root2],
        )
        .unwrap();
    assert_eq!(
        set_ws(&mut app, &root2),
        Err("42704".into()),
        "unstamped change seen"
    );
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Active' WHERE id = $1::text::uuid",
            &[&root2],
        )
        .unwrap();
    admin
        .batch_execute("ALTER TABLE \"Workspace\" ENABLE TRIGGER tenancy_changes_update")
        .unwrap();

    // a change made while untracked (no stamp moved) is not hidden by a cache of the earlier
    // tracking period
    assert_eq!(set_ws(&mut app, &root2), Ok(()));
    assert_eq!(scans_of_calls(&mut app, &root2, 5), 0, "cached again");
    admin
        .batch_execute("SELECT tenancy.untrack_changes('\"Workspace\"')")
        .unwrap();
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Tombstoned' WHERE id = $1::text::uuid",
            &[&root2],
        )
        .unwrap();
    admin
        .batch_execute("SELECT tenancy.track_changes('\"Workspace\"', 'id')")
        .unwrap();
    assert_eq!(
        set_ws(&mut app, &root2),
        Err("42704".into()),
        "new tracking period"
    );

    // tracked by another column than the registry's id: not trusted
    admin
        .batch_execute("SELECT tenancy.track_changes('\"Workspace\"', 'parentWorkspaceId')")
        .unwrap();
    assert!(
        scans_of_calls(&mut app, &root1, 10) >= 10,
        "other column: read"
    );
    admin
        .batch_execute("SELECT tenancy.track_changes('\"Workspace\"', 'id')")
        .unwrap();

    // REPEATABLE READ: the transaction's snapshot, as without a cache
    assert_eq!(set_ws(&mut app, &root3), Ok(()));
    app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Tombstoned' WHERE id = $1::text::uuid",
            &[&root3],
        )
        .unwrap();
    assert_eq!(set_ws(&mut app, &root3), Ok(()), "the snapshot's answer");
    app.batch_execute("COMMIT").unwrap();
    assert_eq!(
        set_ws(&mut app, &root3),
        Err("42704".into()),
        "next transaction"
    );

    // per role: a revoked privilege is not bypassed by what the cache holds...
    assert_eq!(set_ws(&mut app, &root1), Ok(()));
    admin
        .batch_execute(&format!("REVOKE SELECT ON \"Workspace\" FROM {APP}"))
        .unwrap();
    assert_eq!(set_ws(&mut app, &root1), Err("42501".into()), "revoked");
    admin
        .batch_execute(&format!("GRANT SELECT ON \"Workspace\" TO {APP}"))
        .unwrap();
    assert_eq!(set_ws(&mut app, &root1), Ok(()));
    // ...nor a row-security policy on the registry (a policy may depend on anything)
    admin
        .batch_execute(&format!(
            "ALTER TABLE \"Workspace\" ENABLE ROW LEVEL SECURITY;
             CREATE POLICY only_others ON \"Workspace\" FOR SELECT TO {APP} USING (id <> '{root1}')"
        ))
        .unwrap();
    assert_eq!(
        set_ws(&mut app, &root1),
        Err("42704".into()),
        "hidden by a policy"
    );
    admin
        .batch_execute("DROP POLICY only_others ON \"Workspace\"; ALTER TABLE \"Workspace\" DISABLE ROW LEVEL SECURITY")
        .unwrap();
    assert_eq!(set_ws(&mut app, &root1), Ok(()));
    // ...nor another role's answer served to a role that may not read (SET ROLE in one backend)
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE rc_nobody NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT USAGE ON SCHEMA tenancy TO rc_nobody"
        ))
        .unwrap();
    assert_eq!(set_ws(&mut admin, &root1), Ok(()));
    admin.batch_execute("SET ROLE rc_nobody").unwrap();
    assert_eq!(
        set_ws(&mut admin, &root1),
        Err("42501".into()),
        "another role"
    );
    admin.batch_execute("RESET ROLE").unwrap();
}

#[test]
fn readable_workspace_ids_follows_the_children_of_a_parent() {
    let (_db, mut admin, mut app) = setup();
    let parent1 = ws_id(&mut admin, "parent", 1);
    let parent2 = ws_id(&mut admin, "parent", 2);
    app.query_one(
        "SELECT tenancy.set_workspace($1::text::uuid, false)",
        &[&parent1],
    )
    .unwrap();
    let first = readable(&mut app);
    assert!(first.len() > 2, "a parent with children: {first:?}");
    let child = first.iter().find(|w| **w != parent1).unwrap().clone();
    // cached: repeated calls do not read the registry
    app.batch_execute("BEGIN").unwrap();
    readable(&mut app);
    let before = scans(&mut app);
    for _ in 0..20 {
        assert_eq!(readable(&mut app), first);
    }
    assert_eq!(scans(&mut app), before, "cached");
    app.batch_execute("COMMIT").unwrap();

    // a child moved to another parent, paused, back: each seen at the next call
    admin
        .execute(
            "UPDATE \"Workspace\" SET \"parentWorkspaceId\" = $1::text::uuid WHERE id = $2::text::uuid",
            &[&parent2, &child],
        )
        .unwrap();
    assert!(!readable(&mut app).contains(&child), "moved away");
    admin
        .execute(
            "UPDATE \"Workspace\" SET \"parentWorkspaceId\" = $1::text::uuid, status = 'Paused' WHERE id = $2::text::uuid",
            &[&parent1, &child],
        )
        .unwrap();
    assert!(!readable(&mut app).contains(&child), "paused");
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Active' WHERE id = $1::text::uuid",
            &[&child],
        )
        .unwrap();
    assert_eq!(readable(&mut app), first, "back");
    // a new child
    let new = "dddddddd-0000-4000-8000-000000000003";
    admin
        .execute(
            "INSERT INTO \"Workspace\" (id, name, type, \"parentWorkspaceId\") VALUES ($1::text::uuid, 'new child', 'Child', $2::text::uuid)",
            &[&new, &parent1],
        )
        .unwrap();
    assert!(readable(&mut app).contains(&new.to_string()), "new child");
    // this transaction's own change
    app.batch_execute(&format!(
        "BEGIN; UPDATE \"Workspace\" SET status = 'Paused' WHERE id = '{new}'"
    ))
    .unwrap();
    assert!(
        !readable(&mut app).contains(&new.to_string()),
        "own change seen"
    );
    app.batch_execute("ROLLBACK").unwrap();
    assert!(readable(&mut app).contains(&new.to_string()), "rolled back");
}

/// The state of the registry after the writer's `k`-th commit: even `k`: the child is Active
/// under parent 1; odd: Tombstoned under parent 2.
fn expected(k: u64) -> bool {
    k % 2 == 0
}

#[test]
fn the_registry_cache_never_answers_older_than_the_last_commit() {
    let (db, mut admin, _app) = setup();
    let parent1 = ws_id(&mut admin, "parent", 1);
    let parent2 = ws_id(&mut admin, "parent", 2);
    let child = ws_id(&mut admin, "child", 1001);
    admin
        .execute(
            "UPDATE \"Workspace\" SET status = 'Active', \"parentWorkspaceId\" = $1::text::uuid WHERE id = $2::text::uuid",
            &[&parent1, &child],
        )
        .unwrap();
    // `started`: the writer began the transaction making state k; `committed`: its COMMIT returned
    let started = Arc::new(AtomicU64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, started, committed, stop) =
            (db.clone(), started.clone(), committed.clone(), stop.clone());
        let (parent1, parent2, child) = (parent1.clone(), parent2.clone(), child.clone());
        std::thread::spawn(move || {
            let mut c = connect(&db);
            let mut k = 0u64;
            let mut rng = 0x2545F4914F6CDD1Du64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                std::thread::sleep(std::time::Duration::from_micros(rng % 4000));
                k += 1;
                started.store(k, Ordering::SeqCst);
                let (status, parent) = if expected(k) {
                    ("Active", &parent1)
                } else {
                    ("Tombstoned", &parent2)
                };
                c.execute(
                    "UPDATE \"Workspace\" SET status = $1::text::\"WorkspaceStatus\", \"parentWorkspaceId\" = $2::text::uuid WHERE id = $3::text::uuid",
                    &[&status, parent, &child],
                )
                .unwrap();
                committed.store(k, Ordering::SeqCst);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, started, committed) = (db.clone(), started.clone(), committed.clone());
            let (parent1, child) = (parent1.clone(), child.clone());
            std::thread::spawn(move || {
                let mut c = connect_as(&db, APP);
                c.query_one(
                    "SELECT tenancy.set_workspace($1::text::uuid, false)",
                    &[&parent1],
                )
                .unwrap();
                let (mut checks, mut stale) = (0u64, 0u64);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
                while std::time::Instant::now() < deadline {
                    let c0 = committed.load(Ordering::SeqCst);
                    let active = c
                        .query_one(
                            "SELECT tenancy.set_workspace($1::text::uuid) IS NOT NULL",
                            &[&child],
                        )
                        .is_ok();
                    let s1 = started.load(Ordering::SeqCst);
                    if c0 == s1 {
                        checks += 1;
                        stale += u64::from(active != expected(c0));
                    }
                    let c0 = committed.load(Ordering::SeqCst);
                    let under_parent: bool = c
                        .query_one(
                            "SELECT $1::text::uuid = ANY (tenancy.readable_workspace_ids())",
                            &[&child],
                        )
                        .unwrap()
                        .get(0);
                    let s1 = started.load(Ordering::SeqCst);
                    if c0 == s1 {
                        checks += 1;
                        stale += u64::from(under_parent != expected(c0));
                    }
                }
                (checks, stale)
            })
        })
        .collect();
    let (mut checks, mut stale) = (0, 0);
    for r in readers {
        let (c, s) = r.join().unwrap();
        checks += c;
        stale += s;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let commits = committed.load(Ordering::SeqCst);
    eprintln!("{checks} determinate checks, {stale} stale, {commits} commits");
    assert!(commits >= 500, "too few commits: {commits}");
    assert!(checks >= 4000, "too few determinate checks: {checks}");
    assert_eq!(stale, 0, "{stale} stale answers of {checks} checks");
}
