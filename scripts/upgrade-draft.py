#!/usr/bin/env python3
"""Draft of an upgrade script: the statements of the new install script that the old one lacks,
in the new script's order, with CREATE FUNCTION of a function the old version has turned into
CREATE OR REPLACE FUNCTION. A starting point, never the answer: read docs/releasing.md (result
type changes need DROP + CREATE of the function and its dependents; dropped objects and removed
grants need statements of their own, listed at the end as comments), then let the upgrade test
(tests/upgrade.rs) compare the result with a fresh install.

    scripts/upgrade-draft.py sql/tenancy--0.1.0.sql /usr/share/postgresql/15/extension/tenancy--0.2.0.sql
"""
import re
import sys


def split(sql):
    """SQL text -> statements (comments dropped; quotes and dollar quotes respected)."""
    out, buf, i, n = [], [], 0, len(sql)
    while i < n:
        if sql.startswith('--', i):
            j = sql.find('\n', i)
            i = n if j < 0 else j
            continue
        if sql.startswith('/*', i):
            i = sql.find('*/', i + 2) + 2
            continue
        c = sql[i]
        if c == "'":
            j = i + 1
            while True:
                j = sql.find("'", j)
                if sql.startswith("''", j):
                    j += 2
                    continue
                break
            buf.append(sql[i:j + 1])
            i = j + 1
            continue
        if c == '$':
            m = re.match(r'\$[A-Za-z_]*\$', sql[i:])
            if m:
                j = sql.find(m.group(0), i + len(m.group(0))) + len(m.group(0))
                buf.append(sql[i:j])
                i = j
                continue
        if c == ';':
            s = ''.join(buf).strip()
            if s:
                out.append(s)
            buf, i = [], i + 1
            continue
        buf.append(c)
        i += 1
    if ''.join(buf).strip():
        out.append(''.join(buf).strip())
    return out


def norm(s):
    return re.sub(r'\s+', ' ', s).strip()


def function_name(s):
    m = re.match(r'CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?:@extschema@\.)?"?(\w+)"?\s*\(', s)
    return m.group(1) if m else None


def main(old_path, new_path):
    old, new = split(open(old_path).read()), split(open(new_path).read())
    old_norm = set(map(norm, old))
    new_norm = set(map(norm, new))
    old_functions = {function_name(s) for s in old if function_name(s)}
    for s in new:
        if norm(s) in old_norm:
            continue
        if function_name(s) in old_functions and re.match(r'CREATE\s+FUNCTION', s):
            s = re.sub(r'^CREATE\s+FUNCTION', 'CREATE OR REPLACE FUNCTION', s)
        print(s + ';\n')
    print('-- statements of the old script that the new one lacks (drop or undo what they made):')
    for s in old:
        if norm(s) not in new_norm:
            print('-- ' + norm(s)[:160])


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
