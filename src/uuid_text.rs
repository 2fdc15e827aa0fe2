//! PostgreSQL-compatible uuid text handling, in pure Rust so that GUC check hooks (which must
//! never raise an ERROR) can validate without calling `uuid_in`.
//!
//! [`parse`] accepts exactly what PostgreSQL 15's `uuid_in` (`string_to_uuid` in
//! `src/backend/utils/adt/uuid.c`) accepts: 32 hex digits in either case, an optional hyphen
//! after any group of four digits (but not at the end), optionally surrounded by braces, and
//! nothing else (no white space). A `#[pg_test]` checks the two agree on many inputs.

/// Value of each byte as a hex digit; `INVALID` for every other byte.
const INVALID: u8 = 0xff;
const HEX_VALUE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
/// Offsets of the hyphens in the canonical form.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];
/// Offset of each byte's two digits in the canonical form.
const DIGIT_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// Parse a uuid spelling; `None` when PostgreSQL would reject it.
///
/// This runs in the check hook of `tenancy.workspace_id`, i.e. on every `set_config` of a
/// request, so the common spelling (8-4-4-4-12) takes a straight path through a lookup table.
pub fn parse(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() == 36 && HYPHENS.iter().all(|&i| text[i] == b'-') {
        let mut out = [0u8; 16];
        let mut bad = 0u8;
        for (byte, pos) in out.iter_mut().zip(DIGIT_AT) {
            let (hi, lo) = (
                HEX_VALUE[text[pos] as usize],
                HEX_VALUE[text[pos + 1] as usize],
            );
            bad |= hi | lo;
            *byte = (hi << 4) | (lo & 0xf);
        }
        // Every valid digit is < 16, so a set high bit means some byte was not a digit.
        return (bad & 0xf0 == 0).then_some(out);
    }
    parse_any(text)
}

/// Every other spelling `uuid_in` accepts: braces, no hyphens, hyphens after any group of four.
fn parse_any(text: &[u8]) -> Option<[u8; 16]> {
    let mut src = text;
    let braces = src.first() == Some(&b'{');
    if braces {
        src = &src[1..];
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let (hi, lo) = match src {
            [a, b, ..] => (hex(*a)?, hex(*b)?),
            _ => return None,
        };
        *byte = (hi << 4) | lo;
        src = &src[2..];
        if src.first() == Some(&b'-') && i % 2 == 1 && i < 15 {
            src = &src[1..];
        }
    }
    if braces {
        src = src.strip_prefix(b"}")?;
    }
    src.is_empty().then_some(out)
}

fn hex(c: u8) -> Option<u8> {
    match HEX_VALUE[c as usize] {
        INVALID => None,
        v => Some(v),
    }
}

/// The canonical text form as bytes, without allocating: lowercase, 8-4-4-4-12.
pub fn canonical_bytes(bytes: &[u8; 16]) -> [u8; 36] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = [b'-'; 36];
    for (b, pos) in bytes.iter().zip(DIGIT_AT) {
        s[pos] = DIGITS[(b >> 4) as usize];
        s[pos + 1] = DIGITS[(b & 0xf) as usize];
    }
    s
}

/// The canonical text form, as `uuid_out` prints it: lowercase, 8-4-4-4-12.
pub fn canonical(bytes: &[u8; 16]) -> String {
    canonical_bytes(bytes).iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    const CANON: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

    #[test]
    fn accepts_every_spelling_postgres_documents() {
        // The spellings listed in the PostgreSQL 15 manual, section 8.12 "UUID Type".
        for s in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            let parsed = parse(s.as_bytes()).unwrap_or_else(|| panic!("rejected {s}"));
            assert_eq!(canonical(&parsed), CANON, "{s}");
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        // Every byte value in every position of the common spelling: the table-driven path
        // must accept and reject exactly what the general one does.
        let base = CANON.as_bytes().to_vec();
        for pos in 0..36 {
            for c in 0..=255u8 {
                let mut s = base.clone();
                s[pos] = c;
                assert_eq!(
                    parse(&s),
                    parse_any(&s),
                    "{:?}",
                    String::from_utf8_lossy(&s)
                );
            }
        }
        let upper = CANON.to_uppercase();
        assert_eq!(parse(upper.as_bytes()), parse_any(upper.as_bytes()));
        assert_eq!(
            &canonical_bytes(&parse(upper.as_bytes()).unwrap()),
            CANON.as_bytes()
        );
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        for s in [
            "",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1-",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "not-a-uuid",
            "1",
        ] {
            assert_eq!(parse(s.as_bytes()), None, "accepted {s:?}");
        }
    }
}
