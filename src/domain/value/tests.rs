use super::*;
use proptest::prelude::*;

fn canon(input: &FieldInput) -> Result<String, ValueError> {
    canonicalise(input, None).map(|p| p.expose().to_owned())
}

fn id(scheme: IdScheme, value: &str) -> FieldInput {
    FieldInput {
        scheme: Some(scheme),
        ..FieldInput::simple(FieldKind::NationalId, value)
    }
}

fn shown(kind: FieldKind, encoded: &str, level: RevealLevel) -> Rendered {
    render(kind, &Plaintext::new(encoded.to_owned()), level).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_kind_has_a_canonical_encoding() {
    let phone = FieldInput {
        region: Some("CN".into()),
        ..FieldInput::simple(FieldKind::Phone, "138 1234 5678")
    };
    assert_eq!(canon(&phone).as_deref(), Ok("+8613812345678"));
    assert_eq!(
        canon(&FieldInput::simple(FieldKind::Email, "A@Example.COM")).as_deref(),
        Ok("A@example.com")
    );
    assert_eq!(
        canon(&id(IdScheme::UsSsn, "078051120")).as_deref(),
        Ok("us_ssn:078-05-1120")
    );
    assert_eq!(
        canon(&FieldInput::simple(
            FieldKind::Address,
            " 1  Example Way ,  ZZ "
        ))
        .as_deref(),
        Ok("t:1 Example Way , ZZ")
    );
    let structured = FieldInput {
        address: Some(address_of(&[("country", "us"), ("city", "Springfield")])),
        ..FieldInput::simple(FieldKind::Address, "")
    };
    assert_eq!(
        canon(&structured).as_deref(),
        Ok(r#"s:{"country":"US","city":"Springfield"}"#)
    );
}

#[test]
fn fields_that_do_not_belong_to_the_kind_are_refused() {
    let field = |i: FieldInput| canon(&i).err().map(|e| e.field).unwrap_or_default();
    let mut phone_with_scheme = FieldInput::simple(FieldKind::Phone, "+12025550142");
    phone_with_scheme.scheme = Some(IdScheme::UsSsn);
    assert_eq!(field(phone_with_scheme), "scheme");
    let mut email_with_region = FieldInput::simple(FieldKind::Email, "a@example.com");
    email_with_region.region = Some("US".into());
    assert_eq!(field(email_with_region), "region");
    assert_eq!(
        field(FieldInput::simple(FieldKind::NationalId, "078-05-1120")),
        "scheme"
    );
    let mut both = FieldInput::simple(FieldKind::Address, "1 Example Way");
    both.address = Some(address_of(&[("country", "US"), ("city", "X")]));
    assert_eq!(field(both), "value");
    let mut bad_region = FieldInput::simple(FieldKind::Phone, "138 1234 5678");
    bad_region.region = Some("China".into());
    assert_eq!(field(bad_region), "region");
    assert_eq!(field(FieldInput::simple(FieldKind::Email, " ")), "value");
}

/// The bidirectional overrides and isolates and the invisible characters
/// refused everywhere, each hidden in otherwise valid text.
const BIDI: [char; 27] = [
    '\u{202A}',
    '\u{202B}',
    '\u{202C}',
    '\u{202D}',
    '\u{202E}',
    '\u{2066}',
    '\u{2067}',
    '\u{2068}',
    '\u{2069}',
    '\u{200B}',
    '\u{2060}',
    '\u{FEFF}',
    '\u{00AD}',
    '\u{034F}',
    '\u{2061}',
    '\u{2064}',
    '\u{206A}',
    '\u{3164}',
    '\u{FFF9}',
    '\u{FFFB}',
    '\u{E0041}',
    '\u{E0100}',
    '\u{E000}',
    '\u{FDD0}',
    '\u{FFFE}',
    '\u{0378}',
    '\u{13430}',
];

/// Refused in identifier-like text (an email local part) on top of
/// [`BIDI`]: the bidirectional marks and the zero-width (non-)joiners.
const MARKS_AND_JOINERS: [char; 8] = [
    '\u{061C}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{FE0F}', '\u{180E}', '\u{180B}',
];

#[test]
fn c1_controls_are_refused_in_addresses_even_when_unicode_calls_them_whitespace() {
    for c in ['\u{85}', '\u{80}', '\u{9F}'] {
        let err = canon(&FieldInput::simple(
            FieldKind::Address,
            &format!("1 Example Way{c}ZZ"),
        ))
        .err()
        .unwrap_or_else(|| panic!("U+{:04X} accepted", c as u32));
        assert!(err.reason.contains("control characters"), "{}", err.reason);
    }
    // Tabs and line breaks are whitespace, collapsed.
    assert!(canon(&FieldInput::simple(
        FieldKind::Address,
        "1 Example Way\t\r\nZZ"
    ))
    .is_ok());
}

#[test]
fn bidi_overrides_and_isolates_are_refused_in_every_address_part_without_echoing_it() {
    for c in BIDI {
        let text = format!("1 Example Way{c} ZZ");
        let err = canon(&FieldInput::simple(FieldKind::Address, &text))
            .err()
            .unwrap_or_else(|| panic!("U+{:04X} accepted in a free-form address", c as u32));
        assert_eq!(err.field, "value");
        assert!(err.reason.contains("bidirectional"), "{}", err.reason);
        assert!(!err.reason.contains("Example"), "{}", err.reason);
        for part in [
            "street",
            "city",
            "region",
            "district",
            "recipient",
            "postal_code",
        ] {
            let mut parts = vec![("country", "US"), ("city", "Springfield")];
            parts.retain(|(p, _)| *p != part);
            parts.push((part, text.as_str()));
            let input = FieldInput {
                address: Some(address_of(&parts)),
                ..FieldInput::simple(FieldKind::Address, "")
            };
            let err = canon(&input)
                .err()
                .unwrap_or_else(|| panic!("U+{:04X} accepted in {part}", c as u32));
            let expected = if part == "street" {
                "address.street_lines".to_owned()
            } else {
                format!("address.{part}")
            };
            assert_eq!(err.field, expected);
            assert!(err.reason.contains("U+202A-U+202E"), "{}", err.reason);
        }
    }
    // Right-to-left text itself is fine, with its marks (U+200F), and so
    // is what other scripts and phone keyboards need: every mark and joiner
    // an email local part refuses, e.g. an emoji with its presentation
    // selector or Mongolian with its vowel separator.
    assert!(canon(&FieldInput::simple(
        FieldKind::Address,
        "\u{05E8}\u{05D7}\u{05D5}\u{05D1} 1\u{200F}, ZZ"
    ))
    .is_ok());
    for c in MARKS_AND_JOINERS {
        let text = format!("1 Example Way \u{2764}{c} ZZ");
        assert!(
            canon(&FieldInput::simple(FieldKind::Address, &text)).is_ok(),
            "U+{:04X} refused in an address",
            c as u32
        );
    }
}

#[test]
fn bidi_controls_in_an_email_local_part_are_refused() {
    for c in BIDI.into_iter().chain(MARKS_AND_JOINERS) {
        let email = format!("test{c}moc.elpmaxe@example.com");
        let err = canon(&FieldInput::simple(FieldKind::Email, &email))
            .err()
            .unwrap_or_else(|| panic!("U+{:04X} accepted", c as u32));
        assert_eq!(err.field, "value");
        assert!(
            err.reason.contains("before '@'") && err.reason.contains("bidirectional"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("test"), "{}", err.reason);
    }
}

#[test]
fn email_domains_that_break_host_name_rules_are_refused_with_the_rule() {
    let reason = |email: &str| {
        canon(&FieldInput::simple(FieldKind::Email, email))
            .err()
            .map(|e| e.reason)
            .unwrap_or_else(|| panic!("{email} accepted"))
    };
    for (email, rule) in [
        ("a@-x-.com", "starts or ends with '-'"),
        ("a@x-.com", "starts or ends with '-'"),
        ("a@zzqx.-com", "starts or ends with '-'"),
        ("a@zz_qx.com", "letters, digits and '-' only"),
        ("a@zz$qx.com", "letters, digits and '-' only"),
        ("a@zzqx..com", "empty label"),
        ("a@zzqx.com.", "empty label"),
        ("a@.zzqx.com", "empty label"),
        ("a@zzqx", "at least two labels"),
        ("a@zz--qx.com", "third and fourth places"),
    ] {
        let got = reason(email);
        assert!(got.contains(rule), "{email}: {got}");
        // The rule, never the value.
        assert!(!got.contains("zz") && !got.contains("x-"), "{got}");
    }
    let long_label = format!("a@{}.com", "x".repeat(64));
    assert!(reason(&long_label).contains("longer than 63"));
    // Characters UTS 46 maps to something STD3 forbids: ⑴ becomes "(1)".
    assert!(reason("a@\u{2474}.example").contains("host name"));
    // Hyphens inside a label, digits and IDNs are fine.
    for good in [
        "a@my-host.example.com",
        "a@1-2.example",
        "a@b\u{00FC}cher.example",
        "a@xn--bcher-kva.example",
    ] {
        assert!(
            canon(&FieldInput::simple(FieldKind::Email, good)).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn the_default_region_reads_national_numbers() {
    let input = FieldInput::simple(FieldKind::Phone, "13812345678");
    assert!(canonicalise(&input, None).is_err());
    let got = canonicalise(&input, PhoneRegion::parse("CN").ok()).map(|p| p.expose().to_owned());
    assert_eq!(got.as_deref(), Ok("+8613812345678"));
}

#[test]
fn masks_show_exactly_what_is_stated() {
    let m = RevealLevel::Masked;
    assert_eq!(
        shown(FieldKind::Phone, "+8613812345678", m).value.expose(),
        "+86 ***5678"
    );
    assert_eq!(
        shown(FieldKind::Phone, "+12025550142", m).value.expose(),
        "+1 ***0142"
    );
    assert_eq!(
        shown(FieldKind::Email, "alice@example.com", m)
            .value
            .expose(),
        "a***@example.com"
    );
    let id = shown(FieldKind::NationalId, "cn_ric:11010519491231002X", m);
    assert_eq!(id.value.expose(), "***002X");
    assert_eq!(id.scheme, Some(IdScheme::CnRic));
    assert_eq!(
        shown(FieldKind::Address, "t:1 Example Way, ZZ 00000", m)
            .value
            .expose(),
        "***"
    );
    let a = shown(
        FieldKind::Address,
        r#"s:{"country":"US","region":"ZZ","city":"Springfield","street_lines":["1 Example Way"],"postal_code":"00000","recipient":"Test Person"}"#,
        m,
    );
    assert_eq!(a.value.expose(), "Springfield, ZZ, US");
    let parts = a.address.unwrap_or_default();
    assert!(
        parts.street_lines.is_empty() && parts.postal_code.is_empty() && parts.recipient.is_empty()
    );
}

#[test]
fn full_and_none_reveal_everything_and_nothing() {
    let full = shown(
        FieldKind::NationalId,
        "us_ssn:078-05-1120",
        RevealLevel::Full,
    );
    assert_eq!(full.value.expose(), "078-05-1120");
    for (kind, enc) in [
        (FieldKind::Phone, "+12025550142"),
        (FieldKind::Email, "alice@example.com"),
        (FieldKind::NationalId, "us_ssn:078-05-1120"),
        (FieldKind::Address, "t:1 Example Way"),
        (
            FieldKind::Address,
            r#"s:{"country":"US","city":"Springfield"}"#,
        ),
    ] {
        let none = shown(kind, enc, RevealLevel::None);
        assert!(none.value.is_empty() && none.address.is_none(), "{kind}");
    }
    assert_eq!(
        shown(
            FieldKind::NationalId,
            "us_ssn:078-05-1120",
            RevealLevel::None
        )
        .scheme,
        Some(IdScheme::UsSsn)
    );
}

#[test]
fn masked_values_never_hold_more_than_the_stated_digits() {
    // A phone mask shows the calling code and 4 digits, whatever the length.
    for e164 in ["+8613812345678", "+12025550142", "+442079460018"] {
        let masked = shown(FieldKind::Phone, e164, RevealLevel::Masked);
        let digits = masked
            .value
            .expose()
            .chars()
            .filter(char::is_ascii_digit)
            .count();
        let cc = phone::calling_code(e164)
            .map(|c| c.to_string().len())
            .unwrap_or(0);
        assert_eq!(digits, cc + 4, "{}", masked.value.expose());
    }
}

/// Format variants of one CN mobile number.
fn phone_variants() -> impl Strategy<Value = String> {
    let seps = prop::sample::select(vec!["", " ", "-", "."]);
    (
        seps.clone(),
        seps,
        prop::sample::select(vec!["+86 ", "0086", "+86", ""]),
    )
        .prop_map(|(a, b, prefix)| format!("{prefix}138{a}1234{b}5678"))
}

proptest! {
    #[test]
    fn phone_format_variants_are_one_canonical_value(v in phone_variants()) {
        let input = FieldInput { region: Some("CN".into()), ..FieldInput::simple(FieldKind::Phone, &v) };
        prop_assert_eq!(canon(&input), Ok("+8613812345678".to_owned()));
    }

    #[test]
    fn canonicalisation_is_idempotent(raw in "[ a-zA-Z0-9,.\u{3000}\u{ff10}-\u{ff19}-]{1,60}", kind_i in 0usize..4) {
        let kind = FieldKind::ALL[kind_i];
        let mut input = FieldInput::simple(kind, &raw);
        if kind == FieldKind::NationalId { input.scheme = Some(IdScheme::HkHkid); }
        if let Ok(once) = canonicalise(&input, PhoneRegion::parse("US").ok()) {
            // Decode back to the value a caller would send, then canonicalise again.
            let full = render(kind, &once, RevealLevel::Full).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut again = FieldInput::simple(kind, full.value.expose());
            again.scheme = input.scheme;
            let twice = canonicalise(&again, PhoneRegion::parse("US").ok());
            prop_assert_eq!(twice.map(|p| p.expose().to_owned()), Ok(once.expose().to_owned()));
        }
    }

    #[test]
    fn no_canonicaliser_panics_on_arbitrary_unicode(raw in any::<String>(), kind_i in 0usize..4, scheme_i in 0usize..6, region in "[A-Za-z]{0,3}") {
        let kind = FieldKind::ALL[kind_i];
        let mut input = FieldInput::simple(kind, &raw);
        if kind == FieldKind::NationalId { input.scheme = Some(IdScheme::ALL[scheme_i]); }
        if kind == FieldKind::Phone { input.region = Some(region); }
        if kind == FieldKind::Address && raw.len() % 2 == 0 {
            input.value = Plaintext::new(String::new());
            input.address = Some(address_of(&[("country", &raw), ("city", &raw), ("postal_code", &raw), ("street", &raw)]));
        }
        let _ = canonicalise(&input, None);
    }

    #[test]
    fn mutated_ids_are_rejected_unless_the_check_digit_matches(pos in 0usize..12, digit in 0u32..10, which in 0usize..4) {
        let (scheme, valid) = [
            (IdScheme::CnRic, "11010519491231002X"),
            (IdScheme::BrCpf, "52998224725"),
            (IdScheme::InAadhaar, "234123412346"),
            (IdScheme::EsDni, "12345678Z"),
        ][which];
        let mut chars: Vec<char> = valid.chars().collect();
        let pos = pos % (chars.len() - 1);
        let Some(old) = chars[pos].to_digit(10) else { return Ok(()) };
        chars[pos] = char::from_digit(digit, 10).unwrap_or('0');
        let mutated: String = chars.into_iter().collect();
        let result = canonicalise(&id(scheme, &mutated), None);
        if digit == old {
            prop_assert!(result.is_ok());
        } else {
            // One changed digit always breaks these check digits.
            prop_assert!(result.is_err(), "{} {} accepted", scheme, mutated);
        }
    }
}
