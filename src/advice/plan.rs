//! Pure logic of the workload advice: reading an `EXPLAIN (FORMAT JSON, VERBOSE)` plan, building
//! a candidate index from a query's predicates and sort, deciding whether an index serves a
//! candidate, and merging candidates. No PostgreSQL call here: unit-tested with `#[test]`.

use serde_json::Value;

/// One key column of an index: attribute number and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub attnum: i16,
    pub desc: bool,
}

/// A scan of a table in a plan, with the sort applied directly to its rows (if any).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scan {
    pub schema: String,
    pub relation: String,
    pub alias: String,
    /// The index the scan uses, if any.
    pub index: Option<String>,
    /// Sort keys of a Sort / Incremental Sort whose input is this scan alone, as written by
    /// EXPLAIN (`"createdAt" DESC`, `j.name`); empty when none.
    pub sort: Vec<String>,
}

/// The plan's total estimated cost and its scans.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub cost: f64,
    pub scans: Vec<Scan>,
}

const SCAN_NODES: &[&str] = &[
    "Seq Scan",
    "Index Scan",
    "Index Only Scan",
    "Bitmap Heap Scan",
    "Tid Scan",
    "Tid Range Scan",
];

/// Parse the output of `EXPLAIN (FORMAT JSON, VERBOSE)`: `[{"Plan": {...}}]`.
pub(crate) fn parse_plan(json: &Value) -> Option<Plan> {
    let plan = json.get(0)?.get("Plan")?;
    let cost = plan.get("Total Cost")?.as_f64()?;
    let mut scans = Vec::new();
    walk(plan, &mut scans);
    Some(Plan { cost, scans })
}

fn walk(node: &Value, scans: &mut Vec<Scan>) {
    let kind = node
        .get("Node Type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let children: &[Value] = node
        .get("Plans")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if SCAN_NODES.contains(&kind) {
        if let Some(scan) = scan_of(node, children) {
            scans.push(scan);
        }
        return; // a bitmap heap scan's children are its bitmap index scans
    }
    let first = scans.len();
    for child in children {
        walk(child, scans);
    }
    if matches!(kind, "Sort" | "Incremental Sort") && scans.len() == first + 1 {
        let keys = node.get("Sort Key").and_then(Value::as_array).map(|k| {
            k.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        });
        if let Some(keys) = keys {
            scans[first].sort = keys;
        }
    }
}

fn scan_of(node: &Value, children: &[Value]) -> Option<Scan> {
    let s = |k: &str| node.get(k).and_then(Value::as_str).map(str::to_string);
    let index = s("Index Name").or_else(|| {
        // bitmap heap scan: the index of its (first) bitmap index scan
        children.iter().find_map(|c| {
            c.get("Index Name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    });
    Some(Scan {
        schema: s("Schema")?,
        relation: s("Relation Name")?,
        alias: s("Alias").unwrap_or_default(),
        index,
        sort: Vec::new(),
    })
}

/// A sort key as EXPLAIN writes it, for a scan with alias `alias`: the column name and whether
/// it is descending; None for an expression or a key of another relation.
pub(crate) fn parse_sort_key(key: &str, alias: &str) -> Option<(String, bool)> {
    let mut rest = key.trim();
    let mut desc = false;
    for suffix in [" NULLS FIRST", " NULLS LAST"] {
        if let Some(r) = rest.strip_suffix(suffix) {
            rest = r;
        }
    }
    if let Some(r) = rest.strip_suffix(" DESC") {
        rest = r;
        desc = true;
    } else if let Some(r) = rest.strip_suffix(" ASC") {
        rest = r;
    }
    let parts = split_qualified(rest)?;
    match parts.as_slice() {
        [column] => Some((column.clone(), desc)),
        [qualifier, column] if qualifier == alias => Some((column.clone(), desc)),
        _ => None,
    }
}

/// `a."b c".d` -> ["a", "b c", "d"]; None if it is not a dotted list of identifiers.
fn split_qualified(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut ident = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        ident.push('"');
                    }
                    '"' => break,
                    c => ident.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' {
                    ident.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if ident.is_empty() {
                return None;
            }
        }
        out.push(ident);
        match chars.next() {
            None => return Some(out),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// The index a query would want on one table: the workspace column, the other equality columns
/// in the order given (the caller orders them the same way for every query of the table, so
/// that shapes sharing columns share prefixes), then the sort keys the query orders by (with
/// their direction), or else one range column.
pub(crate) fn candidate(
    workspace: i16,
    equal: &[i16],
    sort: Option<&[Key]>,
    range: &[i16],
) -> Vec<Key> {
    let mut keys = vec![Key {
        attnum: workspace,
        desc: false,
    }];
    let mut eq: Vec<i16> = Vec::new();
    for &a in equal {
        if a != workspace && !eq.contains(&a) {
            eq.push(a);
        }
    }
    keys.extend(eq.iter().map(|&attnum| Key {
        attnum,
        desc: false,
    }));
    let fixed = |a: i16| a == workspace || eq.contains(&a);
    match sort {
        Some(sort) if !sort.is_empty() => {
            for k in sort {
                if !fixed(k.attnum) && !keys.iter().any(|x| x.attnum == k.attnum) {
                    keys.push(*k);
                }
            }
        }
        _ => {
            if let Some(&r) = range.iter().find(|&&r| !fixed(r)) {
                keys.push(Key {
                    attnum: r,
                    desc: false,
                });
            }
        }
    }
    keys
}

/// Whether an index with key columns `index` (plain columns, in order) serves `want`: its
/// leading columns are the equality prefix of `want` in any order (`n_equal` columns, the
/// workspace column included), followed by `want`'s remaining keys in order, all in the same
/// directions or all reversed (a btree scans backwards).
pub(crate) fn serves(index: &[Key], want: &[Key], n_equal: usize) -> bool {
    if index.len() < want.len() || n_equal > want.len() {
        return false;
    }
    let mut lead: Vec<i16> = index[..n_equal].iter().map(|k| k.attnum).collect();
    let mut eq: Vec<i16> = want[..n_equal].iter().map(|k| k.attnum).collect();
    lead.sort_unstable();
    eq.sort_unstable();
    if lead != eq {
        return false;
    }
    let tail_index = &index[n_equal..want.len()];
    let tail_want = &want[n_equal..];
    let same = tail_index
        .iter()
        .zip(tail_want)
        .all(|(a, b)| a.attnum == b.attnum && a.desc == b.desc);
    let reversed = tail_index
        .iter()
        .zip(tail_want)
        .all(|(a, b)| a.attnum == b.attnum && a.desc != b.desc);
    same || reversed
}

/// Whether `prefix` is a strict prefix of `of` (same columns, all in the same directions or all
/// reversed): an index on `prefix` serves nothing an index on `of` does not.
pub(crate) fn strict_prefix(prefix: &[Key], of: &[Key]) -> bool {
    if prefix.is_empty() || prefix.len() >= of.len() {
        return false;
    }
    let head = &of[..prefix.len()];
    let same = prefix.iter().zip(head).all(|(a, b)| a == b);
    let reversed = prefix
        .iter()
        .zip(head)
        .all(|(a, b)| a.attnum == b.attnum && a.desc != b.desc);
    same || reversed
}

/// Merge candidates of one table: longest first; a candidate that is a prefix of one already
/// chosen is served by it. Returns (chosen index keys, indexes into `candidates` it serves).
pub(crate) fn merge(candidates: &[Vec<Key>]) -> Vec<(Vec<Key>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        candidates[b]
            .len()
            .cmp(&candidates[a].len())
            .then(candidates[a].cmp(&candidates[b]))
    });
    let mut chosen: Vec<(Vec<Key>, Vec<usize>)> = Vec::new();
    for i in order {
        let c = &candidates[i];
        match chosen
            .iter_mut()
            .find(|(keys, _)| keys.len() >= c.len() && keys[..c.len()] == c[..])
        {
            Some((_, served)) => served.push(i),
            None => chosen.push((c.clone(), vec![i])),
        }
    }
    for (_, served) in chosen.iter_mut() {
        served.sort_unstable();
    }
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    chosen
}

/// Strip a leading `PREPARE name [(types)] AS` (pg_qualstats keeps the text of a SQL-level
/// PREPARE as it was written).
pub(crate) fn strip_prepare(text: &str) -> &str {
    let t = text.trim_start();
    if t.len() < 8 || !t[..7].eq_ignore_ascii_case("prepare") {
        return text;
    }
    // find the first " AS " (case-insensitive) outside parentheses
    let bytes = t.as_bytes();
    let mut depth = 0i32;
    let mut i = 7;
    while i + 4 <= bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        if depth == 0
            && bytes[i].is_ascii_whitespace()
            && t[i + 1..].len() >= 3
            && t[i + 1..i + 3].eq_ignore_ascii_case("as")
            && t.as_bytes()
                .get(i + 3)
                .is_some_and(|c| c.is_ascii_whitespace())
        {
            return t[i + 3..].trim_start();
        }
        i += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(attnum: i16, desc: bool) -> Key {
        Key { attnum, desc }
    }

    #[test]
    fn reads_scans_and_the_sort_over_them() {
        let json: Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Limit", "Total Cost": 15.67, "Plans": [
                {"Node Type": "Sort", "Sort Key": ["j.\"createdAt\" DESC"], "Plans": [
                  {"Node Type": "Bitmap Heap Scan", "Schema": "public", "Relation Name": "Journey", "Alias": "j",
                   "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": "Journey_workspaceId_name_key"}]}]}]}}]"#,
        )
        .unwrap();
        let plan = parse_plan(&json).unwrap();
        assert_eq!(plan.cost, 15.67);
        assert_eq!(plan.scans.len(), 1);
        assert_eq!(plan.scans[0].relation, "Journey");
        assert_eq!(
            plan.scans[0].index.as_deref(),
            Some("Journey_workspaceId_name_key")
        );
        assert_eq!(plan.scans[0].sort, vec!["j.\"createdAt\" DESC".to_string()]);
    }

    #[test]
    fn a_sort_over_a_join_belongs_to_no_scan() {
        let json: Value = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Sort", "Total Cost": 9, "Sort Key": ["a.x"], "Plans": [
                {"Node Type": "Hash Join", "Plans": [
                  {"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "A", "Alias": "a"},
                  {"Node Type": "Hash", "Plans": [{"Node Type": "Seq Scan", "Schema": "public", "Relation Name": "B", "Alias": "b"}]}]}]}}]"#,
        )
        .unwrap();
        let plan = parse_plan(&json).unwrap();
        assert_eq!(plan.scans.len(), 2);
        assert!(plan.scans.iter().all(|s| s.sort.is_empty()));
    }

    #[test]
    fn sort_keys_parse_with_quotes_aliases_and_directions() {
        assert_eq!(
            parse_sort_key("\"createdAt\" DESC", "j"),
            Some(("createdAt".into(), true))
        );
        assert_eq!(
            parse_sort_key("j.\"created\"\"At\" DESC NULLS LAST", "j"),
            Some(("created\"At".into(), true))
        );
        assert_eq!(
            parse_sort_key("segment.name", "segment"),
            Some(("name".into(), false))
        );
        assert_eq!(parse_sort_key("other.name", "segment"), None);
        assert_eq!(parse_sort_key("(lower(name))", "segment"), None);
        assert_eq!(parse_sort_key("\"a.b\"", "x"), Some(("a.b".into(), false)));
    }

    #[test]
    fn candidates_lead_with_the_workspace_then_equality_then_sort() {
        // workspace 2, equality on 9 and 3 (in that order), ordered by 5 DESC
        assert_eq!(
            candidate(2, &[9, 3, 2], Some(&[k(5, true)]), &[]),
            vec![k(2, false), k(9, false), k(3, false), k(5, true)]
        );
        // no sort: one range column
        assert_eq!(
            candidate(2, &[4], None, &[7, 8]),
            vec![k(2, false), k(4, false), k(7, false)]
        );
        // a sort key that is also an equality column adds nothing
        assert_eq!(
            candidate(2, &[4], Some(&[k(4, false), k(6, false)]), &[]),
            vec![k(2, false), k(4, false), k(6, false)]
        );
    }

    #[test]
    fn an_index_serves_a_candidate_in_any_equality_order_and_either_direction() {
        let want = vec![k(2, false), k(4, false), k(6, true)];
        assert!(serves(&[k(4, false), k(2, false), k(6, true)], &want, 2));
        assert!(
            serves(&[k(2, false), k(4, false), k(6, false)], &want, 2),
            "backward scan"
        );
        assert!(
            serves(
                &[k(2, false), k(4, false), k(6, true), k(9, false)],
                &want,
                2
            ),
            "longer"
        );
        assert!(!serves(&[k(2, false), k(6, true), k(4, false)], &want, 2));
        assert!(!serves(&[k(2, false), k(4, false)], &want, 2));
    }

    #[test]
    fn merging_keeps_the_longest_and_is_stable() {
        let a = vec![k(2, false), k(9, false)];
        let b = vec![k(2, false), k(9, false), k(5, true)];
        let c = vec![k(2, false), k(3, false)];
        let merged = merge(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(merged, vec![(c.clone(), vec![2]), (b.clone(), vec![0, 1])]);
        assert_eq!(
            merge(&[b, c, a]),
            vec![
                (vec![k(2, false), k(3, false)], vec![1]),
                (vec![k(2, false), k(9, false), k(5, true)], vec![0, 2])
            ]
        );
    }

    #[test]
    fn prefixes_in_either_direction() {
        let of = vec![k(2, false), k(4, true), k(5, false)];
        assert!(strict_prefix(&[k(2, false), k(4, true)], &of));
        assert!(strict_prefix(&[k(2, true), k(4, false)], &of));
        assert!(!strict_prefix(&[k(2, false), k(4, false)], &of));
        assert!(!strict_prefix(&of, &of));
        assert!(!strict_prefix(&[k(4, true)], &of));
    }

    #[test]
    fn prepare_is_stripped() {
        assert_eq!(
            strip_prepare("PREPARE p(uuid, text) AS SELECT 1"),
            "SELECT 1"
        );
        assert_eq!(strip_prepare("prepare q as\n select 2"), "select 2");
        assert_eq!(strip_prepare("SELECT 3"), "SELECT 3");
    }
}
