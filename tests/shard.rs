//! `shard_readiness()` and `shard_plan()` (issue 19, item 3) on the Dittofeed-shaped fixture:
//! the exact list of what Citus would refuse, every fix run in order, no blocker afterwards, the
//! data and the rebuilt keys intact (a composite foreign key now also refuses a reference across
//! workspaces), and the plan distributing every tenant table once, referenced tables first, the
//! foreign keys to the reference table dropped before and added after. (The plan was run on a
//! real Citus 13.2.2 cluster of a coordinator and two workers by hand in session 7: every table
//! distributed; a test on such a cluster is issue 19's next step.)

use tenancy_it::*;

#[test]
fn dittofeed_fixture_readiness_fixes_and_plan() {
    let db = fresh_db("shard");
    let mut c = connect(&db);
    let rows: Vec<(String, bool, String, bool)> = c
        .query(
            "SELECT rule, blocker, object, fix IS NOT NULL FROM tenancy.shard_readiness()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let got: Vec<String> = rows
        .iter()
        .map(|(rule, blocker, object, fix)| format!("{rule} {blocker} {object} {fix}"))
        .collect();
    let keys = [
        "Broadcast",
        "EmailTemplate",
        "Journey",
        "MessageTemplate",
        "Secret",
        "Segment",
        "SubscriptionGroup",
        "UserProperty",
        "UserPropertyIndex",
    ];
    let mut expected: Vec<String> = Vec::new();
    for t in keys {
        expected.push(format!(
            "key_without_workspace_column true public.\"{t}\" constraint \"{t}_pkey\" true"
        ));
        if t == "UserPropertyIndex" {
            expected.push("key_without_workspace_column true public.\"UserPropertyIndex\" index \"UserPropertyIndex_userPropertyId_key\" true".into());
        }
    }
    expected.push(
        "key_without_workspace_column true public.\"WriteKey\" constraint \"WriteKey_pkey\" true"
            .into(),
    );
    let fk = |t: &str, c: &str, rule: &str| {
        format!("{rule} true public.\"{t}\" constraint \"{t}_{c}_fkey\" true")
    };
    let composite = "foreign_key_without_workspace_column";
    let action = "foreign_key_action";
    for (t, cols) in [
        (
            "Broadcast",
            vec![
                "journeyId",
                "messageTemplateId",
                "segmentId",
                "subscriptionGroupId",
            ],
        ),
        ("EmailTemplate", vec![]),
        ("Journey", vec![]),
        ("MessageTemplate", vec![]),
        ("Secret", vec![]),
        ("Segment", vec!["subscriptionGroupId"]),
        ("SegmentAssignment", vec!["segmentId"]),
        ("SubscriptionGroup", vec![]),
        ("UserProperty", vec![]),
        ("UserPropertyIndex", vec!["userPropertyId"]),
        ("WriteKey", vec!["secretId"]),
    ] {
        for col in cols {
            expected.push(fk(t, col, composite));
        }
        expected.push(fk(t, "workspaceId", action));
    }
    expected.push("reference_table_candidate false public.\"Workspace\" false".into());
    assert_eq!(got, expected, "shard_readiness() on the fixture");

    // every fix, in order
    let before: i64 = c
        .query_one("SELECT count(*) FROM \"Broadcast\"", &[])
        .unwrap()
        .get(0);
    apply_shard_fixes(&mut c);
    let after: i64 = c
        .query_one("SELECT count(*) FROM \"Broadcast\"", &[])
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    // the composite keys: a broadcast cannot reference another workspace's segment any more
    let a = ws_id(&mut c, "root", 1);
    let b = ws_id(&mut c, "root", 2);
    let err = c
        .execute(
            "INSERT INTO \"Broadcast\" (\"workspaceId\", name, \"segmentId\")
             SELECT $1::text::uuid, 'cross', s.id FROM \"Segment\" s WHERE s.\"workspaceId\" = $2::text::uuid LIMIT 1",
            &[&a, &b],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23503", "{err}");
    // the primary key widened with the workspace column
    let pk: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'Segment_pkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (\"workspaceId\", id)");

    // the plan: the registry as a reference table first, then every tenant table once,
    // co-located, each after the tables it references
    let plan: String = c
        .query_one("SELECT tenancy.shard_plan()", &[])
        .unwrap()
        .get(0);
    let lines: Vec<&str> = plan.lines().filter(|l| l.starts_with("SELECT")).collect();
    assert_eq!(
        lines[0],
        "SELECT create_reference_table('public.\"Workspace\"');"
    );
    let tenant: Vec<String> = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM tenancy._shard_tables('workspaceId') s
               JOIN pg_class c ON c.oid = s.relid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.tenant",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lines.len(), tenant.len() + 1);
    let position = |t: &str| {
        lines
            .iter()
            .position(|l| l.contains(&format!("create_distributed_table('{t}'")))
            .unwrap_or_else(|| panic!("{t} not in the plan:\n{plan}"))
    };
    for t in &tenant {
        position(t);
    }
    assert!(position("public.\"Segment\"") < position("public.\"Broadcast\""));
    assert!(position("public.\"SubscriptionGroup\"") < position("public.\"Segment\""));
    assert!(position("public.\"Secret\"") < position("public.\"WriteKey\""));
    // the foreign keys to the reference table: dropped before create_reference_table (which
    // would turn the tables referencing it into Citus local tables), added again at the end
    let all: Vec<&str> = plan
        .lines()
        .filter(|l| !l.starts_with("--") && !l.is_empty())
        .collect();
    let drops = all
        .iter()
        .filter(|l| l.contains(" DROP CONSTRAINT "))
        .count();
    let adds: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].contains(" ADD CONSTRAINT "))
        .collect();
    assert_eq!((drops, adds.len()), (11, 11), "{plan}");
    let last_select = (0..all.len())
        .filter(|&i| all[i].starts_with("SELECT"))
        .max()
        .unwrap();
    assert!(adds.iter().all(|&i| i > last_select), "{plan}");
    assert!(all[0].contains(" DROP CONSTRAINT "), "{plan}");
    let anchor = lines[1]
        .split('\'')
        .nth(1)
        .expect("the first distributed table")
        .to_string();
    for l in &lines[2..] {
        assert!(
            l.ends_with(&format!("colocate_with => '{anchor}');")),
            "{l}"
        );
    }
}
