//! PostgreSQL-compatible uuid text handling, in pure Rust so that GUC check hooks (which must
//! never raise an ERROR) can validate without calling `uuid_in`.
//!
//! [`parse`] accepts exactly what PostgreSQL 15's `uuid_in` (`string_to_uuid` in
//! `src/backend/utils/adt/uuid.c`) accepts: 32 hex digits in either case, an optional hyphen
//! after any group of four digits (but not at the end), optionally surrounded by braces, and
//! nothing else (no white space). A `#[pg_test]` checks the two agree on many inputs.

/// Parse a uuid spelling; `None` when PostgreSQL would reject it.
pub fn parse(text: &[u8]) -> Option<[u8; 16]> {
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
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The canonical text form, as `uuid_out` prints it: lowercase, 8-4-4-4-12.
pub fn canonical(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
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
