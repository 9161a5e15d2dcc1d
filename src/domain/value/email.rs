//! Email addresses. Canonical form: trimmed; the domain lower-cased and
//! IDNA-normalised to its ASCII (punycode) form by the `idna` crate. The
//! local part is kept as written: RFC 5321 leaves its case to the receiving
//! server, so folding it could merge two people.

use super::ValueError;

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
    if local.contains('@') && !(local.starts_with('"') && local.ends_with('"')) {
        return Err(fail("more than one '@'"));
    }
    if domain.is_empty() {
        return Err(fail("the domain is empty"));
    }
    let ascii = idna::domain_to_ascii(domain)
        .map_err(|_| fail("the domain is not a valid (internationalised) domain name"))?;
    if !ascii.contains('.')
        || ascii.starts_with('.')
        || ascii.ends_with('.')
        || ascii.contains("..")
    {
        return Err(fail(
            "the domain needs at least two labels, like example.com",
        ));
    }
    if !ascii.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) {
        return Err(fail("the domain holds characters a host name cannot"));
    }
    let out = format!("{local}@{ascii}");
    if out.len() > 254 {
        return Err(fail("longer than 254 bytes"));
    }
    Ok(out)
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
