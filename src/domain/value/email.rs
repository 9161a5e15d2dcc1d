//! Email addresses. Canonical form: trimmed; the domain lower-cased and
//! IDNA-normalised to its ASCII (punycode) form by the `idna` crate. The
//! local part is kept as written: RFC 5321 leaves its case to the receiving
//! server, so folding it could merge two people.
//!
//! The domain must be a host name under UTS 46 with the STD3 rules (letters,
//! digits and `-` in each label, no label starting or ending with `-`, no
//! empty label, labels of at most 63 bytes). The local part may not hold
//! bidirectional overrides or isolates.

use super::{format_character_reason, is_format_character, ValueError, WipedString};
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use zeroize::Zeroizing;

pub(super) fn canonical(raw: &str) -> Result<String, ValueError> {
    let fail = |reason: &str| ValueError::new("value", format!("not an email address: {reason}"));
    let s = raw.trim();
    let (local, domain) = s.rsplit_once('@').ok_or_else(|| fail("no '@'"))?;
    if local.is_empty() {
        return Err(fail("the part before '@' is empty"));
    }
    if local.len() > 64 {
        return Err(fail("the part before '@' is longer than 64 bytes"));
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail(
            "the part before '@' holds spaces or control characters",
        ));
    }
    if local.chars().any(|c| is_format_character(c, true)) {
        return Err(ValueError::new(
            "value",
            format!(
                "not an email address: the part before '@' {}",
                format_character_reason(true)
            ),
        ));
    }
    if local.contains('@') && !(local.starts_with('"') && local.ends_with('"')) {
        return Err(fail("more than one '@'"));
    }
    if domain.is_empty() {
        return Err(fail("the domain is empty"));
    }
    // First the lenient mapping, to name the broken rule precisely below;
    // then the crate's strict UTS 46 processing (STD3 rules, hyphens at
    // label ends, DNS lengths) has the last word.
    let ascii = Zeroizing::new(
        idna::domain_to_ascii(domain)
            .map_err(|_| fail("the domain is not a valid (internationalised) domain name"))?,
    );
    if !ascii.contains('.') {
        return Err(fail(
            "the domain needs at least two labels, like example.com",
        ));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(fail(
                "the domain has an empty label (a leading, trailing or doubled '.')",
            ));
        }
        if label.len() > 63 {
            return Err(fail("a label of the domain is longer than 63 bytes"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(fail(
                "the domain holds characters a host name cannot (letters, digits and '-' only)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(fail("a label of the domain starts or ends with '-'"));
        }
        // "ab--cd": '--' in the third and fourth places is reserved for
        // encoded labels (RFC 5891 4.2.3.1); only a valid "xn--" label,
        // checked below, may have it.
        if label.get(2..4) == Some("--") && !label.starts_with("xn--") {
            return Err(fail(
                "a label of the domain has '--' in its third and fourth places (reserved for xn-- labels)",
            ));
        }
    }
    let strict = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| fail("the domain breaks the UTS 46 rules for host names (STD3)"))?;
    // Both mappings agree on a valid name; if not, the strict one is right.
    let strict = Zeroizing::new(strict.into_owned());
    if strict.as_str() != ascii.as_str() {
        return Err(fail(
            "the domain breaks the UTS 46 rules for host names (STD3)",
        ));
    }
    let len = local.len() + 1 + ascii.len();
    if len > 254 {
        return Err(fail("longer than 254 bytes"));
    }
    let mut out = WipedString::with_capacity(len);
    out.push_str(local);
    out.push('@');
    out.push_str(&ascii);
    Ok(out.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_is_lower_cased_and_idna_normalised() {
        assert_eq!(
            canonical("  Alice.Test@EXAMPLE.com ").as_deref().ok(),
            Some("Alice.Test@example.com")
        );
        assert_eq!(
            canonical("user@Bücher.example").as_deref().ok(),
            Some("user@xn--bcher-kva.example")
        );
        assert_eq!(
            canonical("user@xn--bcher-kva.example").as_deref().ok(),
            Some("user@xn--bcher-kva.example")
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "no-at-sign",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
            "a@.example.com",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} accepted");
        }
        let err = canonical("secret.person@localhost")
            .err()
            .map(|e| e.reason)
            .unwrap_or_default();
        assert!(!err.contains("secret"), "{err}");
    }
}
