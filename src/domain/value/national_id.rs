//! National ID numbers by scheme. Each scheme checks its published format
//! and, where it has one, its check digit. Written by hand: no maintained
//! Rust crate covers these schemes. Errors name the scheme and the rule,
//! never the number.

use super::{ValueError, WipedString};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdScheme {
    /// People's Republic of China resident identity card (18 characters,
    /// ISO 7064 MOD 11-2 check character).
    CnRic,
    /// United States Social Security number (no check digit; structural rules).
    UsSsn,
    /// Brazil CPF (11 digits, two mod-11 check digits).
    BrCpf,
    /// India Aadhaar (12 digits, Verhoeff check digit).
    InAadhaar,
    /// Hong Kong identity card (1–2 letters, 6 digits, mod-11 check character).
    HkHkid,
    /// Spain DNI (8 digits, mod-23 check letter).
    EsDni,
}

impl IdScheme {
    pub const ALL: [IdScheme; 6] = [
        IdScheme::CnRic,
        IdScheme::UsSsn,
        IdScheme::BrCpf,
        IdScheme::InAadhaar,
        IdScheme::HkHkid,
        IdScheme::EsDni,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdScheme::CnRic => "cn_ric",
            IdScheme::UsSsn => "us_ssn",
            IdScheme::BrCpf => "br_cpf",
            IdScheme::InAadhaar => "in_aadhaar",
            IdScheme::HkHkid => "hk_hkid",
            IdScheme::EsDni => "es_dni",
        }
    }
}

impl fmt::Display for IdScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdScheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scheme (expected one of: {})", names.join(", "))
            })
    }
}

/// Checks `raw` under `scheme` and returns its canonical form. The copies
/// made on the way are wiped.
pub(super) fn canonical(scheme: IdScheme, raw: &str) -> Result<Zeroizing<String>, ValueError> {
    let fail =
        |rule: &str| ValueError::new("value", format!("not a valid {scheme} number: {rule}"));
    // Separators people write: spaces, dashes, dots, slashes, parentheses.
    let mut compact = WipedString::with_capacity(raw.len());
    for c in raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '/' | '(' | ')'))
    {
        compact.push(c.to_ascii_uppercase());
    }
    let compact = compact.as_str();
    if !compact.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail(
            "holds characters other than letters, digits and separators",
        ));
    }
    let result = match scheme {
        IdScheme::CnRic => cn_ric(compact),
        IdScheme::UsSsn => us_ssn(raw.trim(), compact),
        IdScheme::BrCpf => br_cpf(compact),
        IdScheme::InAadhaar => in_aadhaar(compact),
        IdScheme::HkHkid => hk_hkid(compact),
        IdScheme::EsDni => es_dni(compact),
    };
    // Each scheme returns one exactly sized allocation.
    result.map(Zeroizing::new).map_err(fail)
}

/// The digits of `s`, in a wiped buffer allocated once.
fn digits(s: &str) -> Option<Zeroizing<Vec<u32>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(s.len()));
    for c in s.chars() {
        out.push(c.to_digit(10)?);
    }
    Some(out)
}

/// GB 11643-1999: 6-digit region code, birth date YYYYMMDD, 3-digit
/// sequence, ISO 7064 MOD 11-2 check character (0-9 or X).
fn cn_ric(s: &str) -> Result<String, &'static str> {
    if s.len() != 18 {
        return Err("must be 18 characters");
    }
    let body = digits(&s[..17]).ok_or("the first 17 characters must be digits")?;
    let check = s.as_bytes()[17];
    if !(check.is_ascii_digit() || check == b'X') {
        return Err("the check character must be a digit or X");
    }
    // Province-level codes of GB/T 2260 (plus 71 Taiwan, 81 Hong Kong, 82 Macao).
    const PROVINCES: [u32; 34] = [
        11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51,
        52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82,
    ];
    if !PROVINCES.contains(&(body[0] * 10 + body[1])) {
        return Err("the region code does not start with a province code");
    }
    let year = body[6..10].iter().fold(0, |a, d| a * 10 + d);
    let month = body[10] * 10 + body[11];
    let day = body[12] * 10 + body[13];
    if !(1800..=2100).contains(&year) || !is_real_date(year, month, day) {
        return Err("the birth date is not a real date");
    }
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
    let expected = b"10X98765432"[(sum % 11) as usize];
    if check != expected {
        return Err("the check character does not match (ISO 7064 MOD 11-2)");
    }
    Ok(s.to_owned())
}

fn is_real_date(year: u32, month: u32, day: u32) -> bool {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// SSA rules: area 001-899 except 666, group 01-99, serial 0001-9999.
/// Written as 9 digits or AAA-GG-SSSS. Canonical: AAA-GG-SSSS.
fn us_ssn(trimmed: &str, compact: &str) -> Result<String, &'static str> {
    let dashed =
        trimmed.len() == 11 && trimmed.as_bytes()[3] == b'-' && trimmed.as_bytes()[6] == b'-';
    if !(dashed || trimmed.len() == 9) || compact.len() != 9 {
        return Err("must be 9 digits, as AAA-GG-SSSS or without dashes");
    }
    let d = digits(compact).ok_or("must be 9 digits")?;
    let area = d[0] * 100 + d[1] * 10 + d[2];
    if area == 0 || area == 666 || area >= 900 {
        return Err("the area number is never issued (000, 666 and 900-999)");
    }
    if d[3] == 0 && d[4] == 0 {
        return Err("the group number is never 00");
    }
    if d[5..].iter().all(|&x| x == 0) {
        return Err("the serial number is never 0000");
    }
    let mut out = WipedString::with_capacity(11);
    for part in [&compact[..3], "-", &compact[3..5], "-", &compact[5..]] {
        out.push_str(part);
    }
    Ok(out.into_string())
}

/// Receita Federal: 9 digits and two mod-11 check digits; numbers of one
/// repeated digit are invalid.
fn br_cpf(s: &str) -> Result<String, &'static str> {
    let d = digits(s)
        .filter(|d| d.len() == 11)
        .ok_or("must be 11 digits")?;
    if d.iter().all(|&x| x == d[0]) {
        return Err("a number of one repeated digit is not issued");
    }
    let check = |n: usize| {
        let sum: u32 = d[..n]
            .iter()
            .enumerate()
            .map(|(i, x)| x * (n as u32 + 1 - i as u32))
            .sum();
        let r = (sum * 10) % 11;
        if r == 10 {
            0
        } else {
            r
        }
    };
    if check(9) != d[9] || check(10) != d[10] {
        return Err("the check digits do not match (mod 11)");
    }
    Ok(s.to_owned())
}

const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];

/// True when the digits, check digit last, pass the Verhoeff check.
fn verhoeff_ok(d: &[u32]) -> bool {
    let c = d.iter().rev().enumerate().fold(0u8, |c, (i, &x)| {
        VERHOEFF_D[c as usize][VERHOEFF_P[i % 8][x as usize] as usize]
    });
    c == 0
}

/// UIDAI: 12 digits, not starting with 0 or 1, Verhoeff check digit last.
fn in_aadhaar(s: &str) -> Result<String, &'static str> {
    let d = digits(s)
        .filter(|d| d.len() == 12)
        .ok_or("must be 12 digits")?;
    if d[0] < 2 {
        return Err("the first digit is never 0 or 1");
    }
    if !verhoeff_ok(&d) {
        return Err("the check digit does not match (Verhoeff)");
    }
    Ok(s.to_owned())
}

/// HKID: one or two letters, six digits and a check character (0-9 or A),
/// usually written `A123456(3)`. Canonical: `A1234563`.
fn hk_hkid(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let letters = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    if !(letters == 1 || letters == 2) || b.len() != letters + 7 {
        return Err("must be 1 or 2 letters, 6 digits and a check character");
    }
    let d = digits(&s[letters..letters + 6])
        .ok_or("the 6 characters after the letters must be digits")?;
    let letter_value = |c: u8| u32::from(c - b'A') + 10;
    // A single letter is preceded by a space, valued 36.
    let (first, second) = if letters == 2 {
        (letter_value(b[0]), letter_value(b[1]))
    } else {
        (36, letter_value(b[0]))
    };
    let mut sum = 9 * first + 8 * second;
    for (i, x) in d.iter().enumerate() {
        sum += (7 - i as u32) * x;
    }
    let expected = match (11 - sum % 11) % 11 {
        10 => b'A',
        v => b'0' + v as u8,
    };
    if b[b.len() - 1] != expected {
        return Err("the check character does not match (mod 11)");
    }
    Ok(s.to_owned())
}

/// DNI: 8 digits and the letter TRWAGMYFPDXBNJZSQVHLCKE[number mod 23].
fn es_dni(s: &str) -> Result<String, &'static str> {
    if s.len() != 9 {
        return Err("must be 8 digits and a letter");
    }
    let d = digits(&s[..8]).ok_or("must be 8 digits and a letter")?;
    let n = d.iter().fold(0, |a, x| a * 10 + x);
    let expected = b"TRWAGMYFPDXBNJZSQVHLCKE"[(n % 23) as usize];
    if s.as_bytes()[8] != expected {
        return Err("the check letter does not match (mod 23)");
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(scheme: IdScheme, raw: &str) -> String {
        canonical(scheme, raw)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|e| panic!("{scheme} {raw}: {e}"))
    }

    fn reason(scheme: IdScheme, raw: &str) -> String {
        match canonical(scheme, raw) {
            Ok(v) => panic!("{scheme}: accepted {}", v.as_str()),
            Err(e) => e.reason,
        }
    }

    /// Published example numbers (specimens from issuers' documentation and
    /// widely cited examples), with their canonical forms.
    const VECTORS: [(IdScheme, &str, &str); 12] = [
        (IdScheme::CnRic, "11010519491231002X", "11010519491231002X"),
        (IdScheme::CnRic, "440524188001010014", "440524188001010014"),
        (IdScheme::CnRic, "11010519491231002x", "11010519491231002X"),
        (IdScheme::UsSsn, "078-05-1120", "078-05-1120"),
        (IdScheme::UsSsn, "219099999", "219-09-9999"),
        (IdScheme::BrCpf, "529.982.247-25", "52998224725"),
        (IdScheme::BrCpf, "111.444.777-35", "11144477735"),
        (IdScheme::InAadhaar, "2341 2341 2346", "234123412346"),
        (IdScheme::HkHkid, "A123456(3)", "A1234563"),
        (IdScheme::HkHkid, "G123456(A)", "G123456A"),
        (IdScheme::EsDni, "12345678-Z", "12345678Z"),
        (IdScheme::EsDni, "00000000T", "00000000T"),
    ];

    #[test]
    fn published_examples_are_accepted_in_canonical_form() {
        for (scheme, raw, canon) in VECTORS {
            assert_eq!(ok(scheme, raw), canon, "{scheme} {raw}");
        }
    }

    #[test]
    fn a_one_digit_change_is_rejected_by_check_digit_schemes() {
        for (scheme, _, canon) in VECTORS {
            if scheme == IdScheme::UsSsn {
                continue; // no check digit: see the structural test
            }
            for (i, c) in canon.char_indices() {
                let Some(d) = c.to_digit(10) else { continue };
                let changed = format!("{}{}{}", &canon[..i], (d + 1) % 10, &canon[i + 1..]);
                assert!(
                    canonical(scheme, &changed).is_err(),
                    "{scheme}: {changed} was accepted"
                );
            }
        }
    }

    #[test]
    fn cn_ric_rules_are_named() {
        assert!(reason(IdScheme::CnRic, "11010519491231002").contains("18 characters"));
        assert!(reason(IdScheme::CnRic, "99010519491231002X").contains("province"));
        assert!(reason(IdScheme::CnRic, "110105194902300027").contains("birth date"));
        assert!(reason(IdScheme::CnRic, "110105194912310021").contains("MOD 11-2"));
        assert!(reason(IdScheme::CnRic, "11010519491231002Y").contains("digit or X"));
        assert!(
            reason(IdScheme::CnRic, "11010519491231002Y").starts_with("not a valid cn_ric number")
        );
    }

    #[test]
    fn us_ssn_structural_rules_are_named() {
        assert!(reason(IdScheme::UsSsn, "000-05-1120").contains("area"));
        assert!(reason(IdScheme::UsSsn, "666-05-1120").contains("area"));
        assert!(reason(IdScheme::UsSsn, "900-05-1120").contains("area"));
        assert!(reason(IdScheme::UsSsn, "078-00-1120").contains("group"));
        assert!(reason(IdScheme::UsSsn, "078-05-0000").contains("serial"));
        assert!(reason(IdScheme::UsSsn, "078-05-112").contains("9 digits"));
        assert!(reason(IdScheme::UsSsn, "07-805-1120").contains("9 digits"));
        assert!(!reason(IdScheme::UsSsn, "666-05-1120").contains("1120"));
    }

    #[test]
    fn other_rules_are_named() {
        assert!(reason(IdScheme::BrCpf, "111.111.111-11").contains("repeated"));
        assert!(reason(IdScheme::InAadhaar, "1341 2341 2346").contains("0 or 1"));
        assert!(reason(IdScheme::HkHkid, "ABC123456(3)").contains("letters"));
        assert!(reason(IdScheme::EsDni, "12345678A").contains("mod 23"));
        assert!(reason(IdScheme::EsDni, "1234567_Z").contains("characters other than"));
    }

    #[test]
    fn verhoeff_matches_the_published_example() {
        // Wikipedia's worked example: 236 has check digit 3.
        assert!(verhoeff_ok(&[2, 3, 6, 3]));
        assert!(!verhoeff_ok(&[2, 3, 6, 4]));
    }

    #[test]
    fn scheme_names_round_trip() {
        for s in IdScheme::ALL {
            assert_eq!(s.as_str().parse::<IdScheme>(), Ok(s));
        }
        assert!("uk_nino".parse::<IdScheme>().is_err());
    }
}
