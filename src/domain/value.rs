//! Validation and canonical forms per field kind.
//!
//! This is the first, deliberately plain version: it rejects what is clearly
//! not a value of the kind and stores a canonical form so trivial format
//! differences do not matter. Errors describe the rule that failed and never
//! quote the value.

use super::{FieldKind, Plaintext};

/// The largest value accepted, in bytes, for any kind.
pub const MAX_VALUE_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_VALUE_BYTES} bytes")]
    TooLong,
    #[error("holds control characters")]
    ControlCharacters,
    #[error("is not a phone number: {0}")]
    Phone(&'static str),
    #[error("is not a national ID number: {0}")]
    NationalId(&'static str),
}

/// Checks a raw value of `kind` and returns its canonical form:
/// - phone: a leading `+` if given, then the digits only (separators
///   ` -().` dropped); 7 to 15 digits (the E.164 maximum).
/// - address: trimmed, runs of whitespace collapsed to one space.
/// - national ID: ASCII letters and digits, upper-cased, separators
///   (space and `-`) dropped; 4 to 32 characters.
pub fn canonicalise(kind: FieldKind, raw: &str) -> Result<Plaintext, ValueError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ValueError::TooLong);
    }
    if raw.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ValueError::ControlCharacters);
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ValueError::Empty);
    }
    match kind {
        FieldKind::Phone => phone(trimmed),
        FieldKind::Address => Ok(Plaintext::new(
            trimmed.split_whitespace().collect::<Vec<_>>().join(" "),
        )),
        FieldKind::NationalId => national_id(trimmed),
    }
}

fn phone(s: &str) -> Result<Plaintext, ValueError> {
    let (plus, rest) = match s.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut out = String::with_capacity(s.len());
    if plus {
        out.push('+');
    }
    for c in rest.chars() {
        match c {
            '0'..='9' => out.push(c),
            ' ' | '-' | '(' | ')' | '.' => {}
            '+' => return Err(ValueError::Phone("'+' is allowed only at the start")),
            _ => {
                return Err(ValueError::Phone(
                    "holds a character other than digits and separators",
                ))
            }
        }
    }
    let digits = out.len() - usize::from(plus);
    if digits < 7 {
        return Err(ValueError::Phone("fewer than 7 digits"));
    }
    if digits > 15 {
        return Err(ValueError::Phone("more than 15 digits"));
    }
    Ok(Plaintext::new(out))
}

fn national_id(s: &str) -> Result<Plaintext, ValueError> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => out.push(c.to_ascii_uppercase()),
            ' ' | '-' => {}
            _ => {
                return Err(ValueError::NationalId(
                    "holds a character other than letters, digits, spaces and '-'",
                ))
            }
        }
    }
    if out.len() < 4 {
        return Err(ValueError::NationalId("fewer than 4 letters and digits"));
    }
    if out.len() > 32 {
        return Err(ValueError::NationalId("more than 32 letters and digits"));
    }
    Ok(Plaintext::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(kind: FieldKind, raw: &str) -> Result<String, ValueError> {
        canonicalise(kind, raw).map(|p| p.expose().to_owned())
    }

    #[test]
    fn phone_numbers_keep_plus_and_digits() {
        assert_eq!(
            canon(FieldKind::Phone, " +1 (202) 555-0142 ").as_deref(),
            Ok("+12025550142")
        );
        assert_eq!(
            canon(FieldKind::Phone, "202.555.0142").as_deref(),
            Ok("2025550142")
        );
        assert!(matches!(
            canon(FieldKind::Phone, "555-01"),
            Err(ValueError::Phone(_))
        ));
        assert!(matches!(
            canon(FieldKind::Phone, "+1 202 555 01x2"),
            Err(ValueError::Phone(_))
        ));
        assert!(matches!(
            canon(FieldKind::Phone, "1+2025550142"),
            Err(ValueError::Phone(_))
        ));
        assert!(matches!(
            canon(FieldKind::Phone, "1234567890123456"),
            Err(ValueError::Phone(_))
        ));
    }

    #[test]
    fn addresses_are_trimmed_and_collapsed() {
        assert_eq!(
            canon(
                FieldKind::Address,
                "  1 Example Way,\n  Springfield,  ZZ 00000 "
            )
            .as_deref(),
            Ok("1 Example Way, Springfield, ZZ 00000")
        );
        assert_eq!(canon(FieldKind::Address, " \t "), Err(ValueError::Empty));
    }

    #[test]
    fn national_ids_are_upper_cased_without_separators() {
        assert_eq!(
            canon(FieldKind::NationalId, "078-05-1120").as_deref(),
            Ok("078051120")
        );
        assert_eq!(
            canon(FieldKind::NationalId, "ab 12 34 56 c").as_deref(),
            Ok("AB123456C")
        );
        assert!(matches!(
            canon(FieldKind::NationalId, "12/34"),
            Err(ValueError::NationalId(_))
        ));
    }

    #[test]
    fn limits_apply_to_every_kind_and_errors_never_quote_the_value() {
        for kind in FieldKind::ALL {
            assert_eq!(canon(kind, ""), Err(ValueError::Empty));
            assert_eq!(
                canon(kind, &"9".repeat(MAX_VALUE_BYTES + 1)),
                Err(ValueError::TooLong)
            );
            assert_eq!(
                canon(kind, "12345\u{0}678"),
                Err(ValueError::ControlCharacters)
            );
            if let Err(e) = canon(kind, "+1 202 555 01x2") {
                assert!(!e.to_string().contains("555"));
            }
        }
    }
}
