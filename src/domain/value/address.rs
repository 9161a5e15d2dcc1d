//! Postal addresses, free-form or structured.
//!
//! Normalised: every text part is Unicode NFKC, trimmed, with whitespace runs
//! collapsed to one space; the country becomes its ISO 3166 alpha-2 code
//! (from alpha-2, alpha-3 or the English short name, any case); postal codes
//! are checked and formatted for the countries in [`postal_code`]. Not
//! normalised: street names, abbreviations ("St" vs "Street"), the order of
//! parts in a free-form address, transliteration between scripts.

use super::{format_character_reason, is_format_character, ValueError, WipedString};
use serde::{Deserialize, Serialize};
use std::fmt;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The most street lines a structured address may carry.
pub const MAX_STREET_LINES: usize = 8;
/// The longest a single part may be, in bytes, after normalisation.
pub const MAX_PART_BYTES: usize = 256;

/// A structured postal address. Holds personal data: wiped on drop,
/// redacted in `Debug`. Empty strings mean "not given".
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub city: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub district: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub street_lines: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub postal_code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recipient: String,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address(<redacted>)")
    }
}

impl Address {
    /// One line, most specific part first, empty parts skipped:
    /// `recipient, street lines…, district, city, region, postal code, country`.
    pub fn one_line(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        parts.push(&self.recipient);
        parts.extend(self.street_lines.iter().map(String::as_str));
        parts.extend([
            self.district.as_str(),
            self.city.as_str(),
            self.region.as_str(),
            self.postal_code.as_str(),
            self.country.as_str(),
        ]);
        parts.retain(|p| !p.is_empty());
        parts.join(", ")
    }

    /// Only what a masked reveal shows: country, region and city.
    pub fn masked(&self) -> Address {
        Address {
            country: self.country.clone(),
            region: self.region.clone(),
            city: self.city.clone(),
            district: String::new(),
            street_lines: Vec::new(),
            postal_code: String::new(),
            recipient: String::new(),
        }
    }
}

/// NFKC, trimmed, whitespace collapsed; refuses control characters,
/// bidirectional overrides and isolates, and over-long parts. Built in
/// wiped memory.
pub(super) fn normalise_text(
    field: &'static str,
    raw: &str,
) -> Result<Zeroizing<String>, ValueError> {
    // Tabs and line breaks are whitespace (collapsed below); every other
    // control character, C1 ones such as U+0085 included, is refused.
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(ValueError::new(field, "holds control characters"));
    }
    let mut nfkc = WipedString::with_capacity(raw.len());
    for c in raw.nfkc() {
        nfkc.push(c);
    }
    if nfkc.as_str().chars().any(|c| is_format_character(c, false)) {
        return Err(ValueError::new(field, format_character_reason(false)));
    }
    let mut out = WipedString::with_capacity(nfkc.as_str().len());
    for (i, word) in nfkc.as_str().split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.as_str().len() > MAX_PART_BYTES {
        return Err(ValueError::new(
            field,
            format!("is longer than {MAX_PART_BYTES} bytes once normalised (NFKC)"),
        ));
    }
    Ok(out.into_zeroizing())
}

/// `a`, `sep`, `b` in one exactly sized allocation (`format!` may grow and
/// leave an unwiped copy behind).
fn joined(a: &str, sep: &str, b: &str) -> String {
    let mut out = WipedString::with_capacity(a.len() + sep.len() + b.len());
    out.push_str(a);
    out.push_str(sep);
    out.push_str(b);
    out.into_string()
}

/// The sealed encoding of a structured address: `s:` and its JSON, written
/// into one wiped buffer sized for the worst case.
pub(super) fn encode_structured(address: &Address) -> Result<String, ValueError> {
    let text_bytes: usize = [
        &address.country,
        &address.region,
        &address.city,
        &address.district,
        &address.postal_code,
        &address.recipient,
    ]
    .iter()
    .map(|s| s.len())
    .chain(address.street_lines.iter().map(String::len))
    .sum();
    // JSON escapes at most double a text (control characters are refused,
    // so only `"` and `\` are escaped); keys and punctuation take < 512.
    let mut buf = Zeroizing::new(Vec::with_capacity(2 + 2 * text_bytes + 512));
    buf.extend_from_slice(b"s:");
    serde_json::to_writer(&mut *buf, address)
        .map_err(|_| ValueError::new("address", "cannot be encoded"))?;
    String::from_utf8(std::mem::take(&mut *buf))
        .map_err(|_| ValueError::new("address", "cannot be encoded"))
}

/// ISO 3166 alpha-2 from alpha-2, alpha-3 or the English short name.
pub(super) fn country_code(raw: &str) -> Result<String, ValueError> {
    use isocountry::CountryCode;
    let s = raw.trim();
    let found = CountryCode::for_alpha2_caseless(s)
        .or_else(|_| CountryCode::for_alpha3_caseless(s))
        .ok()
        .or_else(|| {
            CountryCode::as_array()
                .iter()
                .copied()
                .find(|c| c.name().eq_ignore_ascii_case(s))
        });
    found.map(|c| c.alpha2().to_owned()).ok_or_else(|| {
        ValueError::new(
            "address.country",
            "is not an ISO 3166 country (alpha-2, alpha-3 or English name)",
        )
    })
}

/// Checks and formats a postal code for the countries with a known format;
/// for other countries the normalised text is kept as given (upper-cased).
/// Checked: US, CN, IN, DE, FR, ES, IT, BR, JP, GB, CA, NL, HK (none issued).
pub(super) fn postal_code(country: &str, raw: &str) -> Result<String, ValueError> {
    let mut upper = WipedString::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_uppercase) {
        upper.push(c);
    }
    let mut compact = WipedString::with_capacity(raw.len());
    for c in upper
        .as_str()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
    {
        compact.push(c);
    }
    let compact = compact.as_str();
    let all_digits = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
    let bad = |format: &str| {
        ValueError::new(
            "address.postal_code",
            format!("is not a {country} postal code ({format})"),
        )
    };
    match country {
        "US" => {
            if all_digits(compact, 5) {
                Ok(compact.to_owned())
            } else if all_digits(compact, 9) {
                Ok(joined(&compact[..5], "-", &compact[5..]))
            } else {
                Err(bad("5 digits or ZIP+4"))
            }
        }
        "CN" | "IN" if !all_digits(compact, 6) => Err(bad("6 digits")),
        "IN" if compact.starts_with('0') => Err(bad("6 digits, not starting with 0")),
        "CN" | "IN" => Ok(compact.to_owned()),
        "DE" | "FR" | "ES" | "IT" if !all_digits(compact, 5) => Err(bad("5 digits")),
        "DE" | "FR" | "ES" | "IT" => Ok(compact.to_owned()),
        "BR" if all_digits(compact, 8) => Ok(joined(&compact[..5], "-", &compact[5..])),
        "BR" => Err(bad("8 digits, NNNNN-NNN")),
        "JP" if all_digits(compact, 7) => Ok(joined(&compact[..3], "-", &compact[3..])),
        "JP" => Err(bad("7 digits, NNN-NNNN")),
        "NL" if compact.len() == 6
            && all_digits(&compact[..4], 4)
            && compact[4..].chars().all(|c| c.is_ascii_uppercase()) =>
        {
            Ok(joined(&compact[..4], " ", &compact[4..]))
        }
        "NL" => Err(bad("4 digits and 2 letters")),
        "CA" => {
            let b = compact.as_bytes();
            let shape = b.len() == 6
                && b.iter().enumerate().all(|(i, c)| {
                    if i % 2 == 0 {
                        c.is_ascii_uppercase()
                    } else {
                        c.is_ascii_digit()
                    }
                });
            if shape {
                Ok(joined(&compact[..3], " ", &compact[3..]))
            } else {
                Err(bad("A1A 1A1"))
            }
        }
        "GB" => {
            // Outward code (2-4 chars) + inward code (digit, 2 letters).
            let n = compact.len();
            let b = compact.as_bytes();
            let inward_ok = n >= 5
                && b[n - 3].is_ascii_digit()
                && b[n - 2].is_ascii_uppercase()
                && b[n - 1].is_ascii_uppercase();
            let outward = &compact[..n.saturating_sub(3)];
            let outward_ok = (2..=4).contains(&outward.len())
                && outward.as_bytes()[0].is_ascii_uppercase()
                && outward.chars().all(|c| c.is_ascii_alphanumeric())
                && outward.chars().any(|c| c.is_ascii_digit());
            if inward_ok && outward_ok {
                Ok(joined(outward, " ", &compact[n - 3..]))
            } else {
                Err(bad("like SW1A 1AA"))
            }
        }
        "HK" if !compact.is_empty() => Err(bad("Hong Kong has no postal codes; leave it empty")),
        _ => Ok(upper.into_string()),
    }
}

/// Normalises a structured address. The country is required.
pub(super) fn canonical_structured(raw: &Address) -> Result<Address, ValueError> {
    if raw.country.trim().is_empty() {
        return Err(ValueError::new(
            "address.country",
            "is required in a structured address",
        ));
    }
    let country = country_code(&raw.country)?;
    if raw.street_lines.len() > MAX_STREET_LINES {
        return Err(ValueError::new(
            "address.street_lines",
            format!("holds more than {MAX_STREET_LINES} lines"),
        ));
    }
    // Filled part by part: if a later part is refused, the parts already
    // normalised are wiped with `out` on the way out.
    let mut out = Address::default();
    out.country = country;
    out.street_lines.reserve_exact(raw.street_lines.len());
    let take = |mut text: Zeroizing<String>| std::mem::take(&mut *text);
    for line in &raw.street_lines {
        let line = normalise_text("address.street_lines", line)?;
        if !line.is_empty() {
            out.street_lines.push(take(line));
        }
    }
    let postal = normalise_text("address.postal_code", &raw.postal_code)?;
    if !postal.is_empty() || out.country == "HK" {
        out.postal_code = postal_code(&out.country, &postal)?;
    }
    out.region = take(normalise_text("address.region", &raw.region)?);
    out.city = take(normalise_text("address.city", &raw.city)?);
    out.district = take(normalise_text("address.district", &raw.district)?);
    out.recipient = take(normalise_text("address.recipient", &raw.recipient)?);
    if out.street_lines.is_empty()
        && out.city.is_empty()
        && out.region.is_empty()
        && out.postal_code.is_empty()
    {
        return Err(ValueError::new(
            "address",
            "needs more than a country: give street lines, a city, a region or a postal code",
        ));
    }
    Ok(out)
}

/// Builds an address from `(part, text)` pairs (tests only): `country`,
/// `region`, `city`, `district`, `street` (appends a line), `postal_code`,
/// `recipient`.
#[cfg(test)]
pub(crate) fn address_of(parts: &[(&str, &str)]) -> Address {
    let mut a = Address::default();
    for (part, text) in parts {
        let text = (*text).to_owned();
        match *part {
            "country" => a.country = text,
            "region" => a.region = text,
            "city" => a.city = text,
            "district" => a.district = text,
            "street" => a.street_lines.push(text),
            "postal_code" => a.postal_code = text,
            "recipient" => a.recipient = text,
            other => panic!("no address part {other}"),
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structured(country: &str, city: &str, postal: &str) -> Address {
        address_of(&[
            ("country", country),
            ("city", city),
            ("postal_code", postal),
            ("street", "  1   Example\u{3000}Way "),
        ])
    }

    #[test]
    fn structured_addresses_are_normalised() {
        let a = canonical_structured(&structured(
            "united states of america",
            " Springfield ",
            "20500 1234",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.country, "US");
        assert_eq!(a.city, "Springfield");
        assert_eq!(a.postal_code, "20500-1234");
        assert_eq!(a.street_lines, vec!["1 Example Way".to_owned()]);
        let b = canonical_structured(&structured("GBR", "London", "sw1a1aa"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (b.country.as_str(), b.postal_code.as_str()),
            ("GB", "SW1A 1AA")
        );
        // NFKC folds full-width forms.
        let c = canonical_structured(&structured("cn", "Ｂｅｉｊｉｎｇ", "１０００００"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.city.as_str(), c.postal_code.as_str()),
            ("Beijing", "100000")
        );
    }

    #[test]
    fn bad_structured_addresses_name_the_part() {
        let field = |a: Address| {
            canonical_structured(&a)
                .err()
                .map(|e| e.field)
                .unwrap_or_default()
        };
        assert_eq!(field(structured("", "X", "")), "address.country");
        assert_eq!(field(structured("Atlantis", "X", "")), "address.country");
        assert_eq!(field(structured("US", "X", "1234")), "address.postal_code");
        assert_eq!(
            field(structured("CN", "X", "1000001")),
            "address.postal_code"
        );
        assert_eq!(
            field(structured("HK", "X", "999077")),
            "address.postal_code"
        );
        assert_eq!(field(address_of(&[("country", "US")])), "address");
    }

    #[test]
    fn a_worst_case_structured_address_is_encoded_without_growing_its_buffer() {
        // Every part at its longest and made of the one character JSON
        // escapes: a reallocation would leave an unwiped copy behind.
        let quotes = "\"".repeat(MAX_PART_BYTES);
        let mut a = Address::default();
        a.country = "AQ".into();
        for part in [
            &mut a.region,
            &mut a.city,
            &mut a.district,
            &mut a.postal_code,
            &mut a.recipient,
        ] {
            *part = quotes.clone();
        }
        a.street_lines = vec![quotes.clone(); MAX_STREET_LINES];
        let canonical = canonical_structured(&a).unwrap_or_else(|e| panic!("{e}"));
        let text_bytes = 2 + 5 * MAX_PART_BYTES + MAX_STREET_LINES * MAX_PART_BYTES;
        let encoded = encode_structured(&canonical).unwrap_or_else(|e| panic!("{e}"));
        assert!(encoded.len() > 2 * (text_bytes - 2), "{}", encoded.len());
        assert_eq!(encoded.capacity(), 2 + 2 * text_bytes + 512);
    }

    #[test]
    fn wiped_strings_keep_their_text_as_they_grow() {
        let mut s = WipedString::with_capacity(1);
        for i in 0..100 {
            s.push_str(&i.to_string());
            s.push('\u{00FC}');
        }
        let expected: String = (0..100).map(|i| format!("{i}\u{00FC}")).collect();
        assert_eq!(s.as_str(), expected);
    }

    #[test]
    fn one_line_and_masked_forms() {
        let mut raw = structured("US", "Springfield", "00000");
        raw.recipient = "Test Person".into();
        raw.region = "ZZ".into();
        let a = canonical_structured(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.one_line(),
            "Test Person, 1 Example Way, Springfield, ZZ, 00000, US"
        );
        assert_eq!(a.masked().one_line(), "Springfield, ZZ, US");
        assert_eq!(format!("{a:?}"), "Address(<redacted>)");
    }
}
