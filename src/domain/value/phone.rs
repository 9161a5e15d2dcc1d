//! Phone numbers, parsed and validated with the `phonenumber` crate
//! (libphonenumber's metadata). Canonical form: E.164.

use super::ValueError;
use phonenumber::country;
use phonenumber::{Mode, ParseError};
use std::fmt;
use std::str::FromStr;

/// A region (ISO 3166 alpha-2, e.g. `CN`) for reading numbers written in
/// national format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(country::Id);

impl PhoneRegion {
    /// Parses an ISO 3166 alpha-2 code (any case) that has phone metadata.
    pub fn parse(code: &str) -> Result<Self, String> {
        let upper = code.trim().to_ascii_uppercase();
        if upper.len() != 2 || !upper.chars().all(|c| c.is_ascii_uppercase()) {
            return Err("must be an ISO 3166 alpha-2 region code such as 'US' or 'CN'".into());
        }
        country::Id::from_str(&upper)
            .map(Self)
            .map_err(|_| format!("'{upper}' is not a region with phone numbering metadata"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Debug for PhoneRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneRegion({})", self.as_str())
    }
}

fn invalid(reason: impl Into<String>) -> ValueError {
    ValueError::new("value", reason)
}

/// Parses `raw` (international, or national format for `region`) and returns
/// its E.164 form. Numbers that are not valid for their region are refused.
pub(super) fn canonical(raw: &str, region: Option<PhoneRegion>) -> Result<String, ValueError> {
    // libphonenumber accepts letters (vanity numbers) and a lot of
    // punctuation; a vault should store digits people actually dial.
    if raw.chars().any(|c| c.is_alphabetic()) {
        return Err(invalid("not a number: letters are not accepted"));
    }
    // Keep digits and a leading '+', drop the separators people write. This
    // also sidesteps a parser bug in phonenumber 0.3 with some separator
    // placements ("+86138-1234-5678" overflows its integer parsing).
    let trimmed = raw.trim();
    let (plus, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", trimmed),
    };
    let mut compact = String::with_capacity(trimmed.len());
    compact.push_str(plus);
    for c in rest.chars() {
        match c {
            '0'..='9' => compact.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
            _ => return Err(invalid(
                "not a number: only digits, a leading '+' and separators ( ) - . / are accepted",
            )),
        }
    }
    let compact = zeroize::Zeroizing::new(compact);
    // An international number names its own country; the region hint only
    // reads national and IDD-prefixed numbers. (phonenumber 0.3 wrongly
    // applies the hint's national-prefix rules to +CC numbers.)
    let hint = if plus.is_empty() {
        region.map(|r| r.0)
    } else {
        None
    };
    let number = phonenumber::parse(hint, compact.as_str()).map_err(|e| {
        invalid(match e {
            ParseError::NoNumber => "not a number".to_owned(),
            // A '+' was given: the digits after it are no calling code.
            ParseError::InvalidCountryCode if !plus.is_empty() => {
                "unknown country calling code: no country or service uses the code after '+'"
                    .to_owned()
            }
            ParseError::InvalidCountryCode => match region {
                Some(_) => "unknown country calling code after the international prefix".to_owned(),
                None => {
                    "no country calling code and no region to read it in (send 'region' or use +CC)"
                        .to_owned()
                }
            },
            ParseError::TooShortAfterIdd | ParseError::TooShortNsn => "too short".to_owned(),
            ParseError::TooLong => "too long".to_owned(),
            // The parser's own words (`malformed integer part …: cannot
            // parse integer from empty string`) say nothing to a caller.
            ParseError::MalformedInteger(_) => {
                "not a number: the digits after the country calling code form no phone number"
                    .to_owned()
            }
        })
    })?;
    if number.extension().is_some() {
        return Err(invalid("extensions are not accepted"));
    }
    if !phonenumber::is_valid(&number) {
        let national_format = plus.is_empty() && hint.is_some();
        return Err(invalid(not_valid_reason(
            &number,
            hint.filter(|_| national_format),
        )));
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

/// Why a number that parsed is not valid, naming what it was checked
/// against: the region it was read in (national format), or its country
/// calling code (`+1` is shared by 25 regions, so it is no region), and how
/// many digits follow the calling code when no number there has that many.
/// It never quotes a digit of the number.
fn not_valid_reason(number: &phonenumber::PhoneNumber, read_in: Option<country::Id>) -> String {
    let code = number.code().value();
    let regions = phonenumber::metadata::DATABASE
        .by_code(&code)
        .unwrap_or_default();
    let against = match read_in {
        Some(region) => format!("region {}", region.as_ref()),
        None => match regions.as_slice() {
            [only] if only.id() != "001" => {
                format!("country calling code +{code} ({})", only.id())
            }
            _ => format!("country calling code +{code}"),
        },
    };
    let mut lengths: Vec<u16> = regions
        .iter()
        .flat_map(|m| {
            // This metadata leaves the general descriptor's lengths empty:
            // those of the numbers people give (fixed-line, mobile), not of
            // rare kinds (Canada's 7-digit UAN numbers).
            let d = m.descriptors();
            [Some(d.general()), d.fixed_line(), d.mobile()]
                .into_iter()
                .flatten()
                .flat_map(|desc| desc.possible_length().iter().copied())
                .collect::<Vec<_>>()
        })
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let national = number.national();
    let digits = u16::from(national.zeros())
        + if national.value() == 0 {
            0
        } else {
            // At most 20 digits: a u64.
            u16::try_from(national.value().ilog10() + 1).unwrap_or(u16::MAX)
        };
    if lengths.is_empty() || lengths.contains(&digits) {
        return format!("not a valid number for {against}: no number range there holds it");
    }
    let expected = match lengths.as_slice() {
        [one] => one.to_string(),
        [first @ .., last] => format!(
            "{} or {last}",
            first
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        [] => String::new(),
    };
    format!(
        "not a valid number for {against}: {digits} digits follow the calling code, \
         fixed-line and mobile numbers there have {expected}"
    )
}

/// The country calling code of a canonical E.164 number (`86` for `+86…`).
pub(super) fn calling_code(e164: &str) -> Option<u16> {
    phonenumber::parse(None, e164)
        .ok()
        .map(|n| n.code().value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cn() -> Option<PhoneRegion> {
        PhoneRegion::parse("CN").ok()
    }

    #[test]
    fn format_variants_of_one_number_are_one_value() {
        let expected = Ok("+8613812345678".to_owned());
        assert_eq!(canonical("+86 138-1234-5678", None), expected);
        assert_eq!(canonical("+86 138-1234-5678", cn()), expected);
        assert_eq!(canonical("008613812345678", cn()), expected);
        assert_eq!(canonical("13812345678", cn()), expected);
        assert_eq!(canonical("138 1234 5678", cn()), expected);
        let us = PhoneRegion::parse("us").ok();
        assert_eq!(
            canonical("(202) 555-0142", us),
            Ok("+12025550142".to_owned())
        );
        assert_eq!(
            canonical("+1 202 555 0142", cn()),
            Ok("+12025550142".to_owned())
        );
    }

    #[test]
    fn invalid_numbers_are_refused_with_the_reason() {
        let reason = |raw: &str, region| {
            canonical(raw, region)
                .err()
                .map(|e| e.reason)
                .unwrap_or_default()
        };
        assert!(!reason("12", cn()).is_empty());
        assert!(reason("+86 138 1234 5678 + 1", None).contains("only digits"));
        assert!(
            reason("+86 1", None).contains("too short"),
            "{}",
            reason("+86 1", None)
        );
        assert_eq!(
            reason("+86 138", None),
            "not a valid number for country calling code +86 (CN): \
             3 digits follow the calling code, fixed-line and mobile numbers there have \
             7, 8, 9, 10 or 11"
        );
        let r = reason("12812345678", cn());
        assert!(r.contains("not a valid number"), "{r}");
        assert!(reason("13812345678", None).contains("no country calling code"));
        assert!(reason("1-800-FLOWERS", PhoneRegion::parse("US").ok()).contains("letters"));
        assert!(reason("hello", None).contains("not a number"));
        // The reason never quotes the input.
        assert!(!r.contains("1281"));
    }

    #[test]
    fn a_shared_calling_code_is_named_as_a_calling_code_not_a_region() {
        let reason = |raw: &str, region| canonical(raw, region).err().map(|e| e.reason);
        // +1 is shared by the US, Canada and 23 other regions.
        let r = reason("+1 202-555-01", None).unwrap_or_default();
        assert_eq!(
            r,
            "not a valid number for country calling code +1: \
             8 digits follow the calling code, fixed-line and mobile numbers there have 10"
        );
        // The right length, in no number range: said so, no digit quoted.
        let r = reason("+1 000-555-0142", None).unwrap_or_default();
        assert_eq!(
            r,
            "not a valid number for country calling code +1: no number range there holds it"
        );
        // A national number names the region it was read in.
        let r = reason("12812345678", cn()).unwrap_or_default();
        assert!(r.starts_with("not a valid number for region CN: "), "{r}");
        for r in [reason("+1 202-555-01", None), reason("12812345678", cn())] {
            let r = r.unwrap_or_default();
            assert!(
                !r.contains("202") && !r.contains("555") && !r.contains("1281"),
                "{r}"
            );
        }
    }

    #[test]
    fn an_unassigned_calling_code_is_named_as_such_and_zeros_get_a_clean_message() {
        let reason = |raw: &str| {
            canonical(raw, None)
                .err()
                .map(|e| e.reason)
                .unwrap_or_default()
        };
        for raw in ["+999 202 555 0142", "+0 202 555 0142"] {
            let r = reason(raw);
            assert!(r.starts_with("unknown country calling code"), "{raw}: {r}");
            assert!(!r.contains("use +CC") && !r.contains("202"), "{raw}: {r}");
        }
        let r = reason("+86 000000000000000000");
        assert!(r.starts_with("not a number"), "{r}");
        assert!(!r.contains("integer") && !r.contains("000"), "{r}");
    }

    #[test]
    fn regions_must_be_alpha_2_codes_with_metadata() {
        assert!(PhoneRegion::parse("CN").is_ok());
        assert!(PhoneRegion::parse("gb").is_ok());
        assert!(PhoneRegion::parse("CHN").is_err());
        assert!(PhoneRegion::parse("XX").is_err());
    }

    #[test]
    fn calling_codes_come_from_the_number() {
        assert_eq!(calling_code("+8613812345678"), Some(86));
        assert_eq!(calling_code("+12025550142"), Some(1));
    }
}
