use std::fmt;

/// Who is calling, as proven by the mTLS client certificate.
///
/// A SPIFFE ID (URI SAN `spiffe://trust-domain/path`) wins when present;
/// otherwise the subject common name. Policy rules name callers by the
/// string form ([`CallerId::as_str`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum CallerId {
    Spiffe(String),
    CommonName(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerIdError {
    #[error("SPIFFE ID must look like spiffe://trust-domain/path")]
    BadSpiffeId,
    #[error(
        "common name must be 1 to 256 printable ASCII characters, beginning with a letter or \
         a digit, without trailing spaces (an identity must not be confusable with another: no \
         control, invisible, bidirectional or look-alike characters)"
    )]
    BadCommonName,
    #[error("common name looks like a SPIFFE ID; SPIFFE IDs are taken only from a URI SAN")]
    CommonNameLooksLikeSpiffe,
}

impl CallerId {
    pub fn spiffe(uri: &str) -> Result<Self, CallerIdError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or(CallerIdError::BadSpiffeId)?;
        let (domain, path) = rest.split_once('/').ok_or(CallerIdError::BadSpiffeId)?;
        let domain_ok = !domain.is_empty()
            && domain.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
        let path_ok = !path.is_empty()
            && !path.ends_with('/')
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
        if domain_ok && path_ok && uri.len() <= 2048 {
            Ok(Self::Spiffe(uri.to_owned()))
        } else {
            Err(CallerIdError::BadSpiffeId)
        }
    }

    /// A common name becomes an identity only if it cannot be confused with
    /// a SPIFFE ID or another identity: otherwise a certificate with
    /// `CN=spiffe://…` and no URI SAN would impersonate a workload, and one
    /// with a zero-width or right-to-left mark, a leading space or a
    /// Cyrillic `ѕ` would read as another caller in the audit trail and its
    /// reports. So: printable ASCII only, beginning with a letter or a
    /// digit (`-` is how reports show "no caller"), no space at the end,
    /// and no `spiffe` anywhere in it.
    pub fn common_name(cn: &str) -> Result<Self, CallerIdError> {
        if cn.to_ascii_lowercase().contains("spiffe") {
            return Err(CallerIdError::CommonNameLooksLikeSpiffe);
        }
        let printable = cn.bytes().all(|b| (b' '..=b'~').contains(&b));
        let starts_well = cn.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if !starts_well || cn.len() > 256 || !printable || cn.trim() != cn {
            return Err(CallerIdError::BadCommonName);
        }
        Ok(Self::CommonName(cn.to_owned()))
    }

    /// An identity as a policy or an operator writes it: a SPIFFE ID when
    /// it starts with `spiffe://`, else a common name.
    pub fn parse(text: &str) -> Result<Self, CallerIdError> {
        if text.starts_with("spiffe://") {
            Self::spiffe(text)
        } else {
            Self::common_name(text)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            CallerId::Spiffe(s) | CallerId::CommonName(s) => s,
        }
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerId::Spiffe(s) => write!(f, "Spiffe({s})"),
            CallerId::CommonName(s) => write!(f, "CommonName({s})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked() {
        assert!(CallerId::spiffe("spiffe://fieldvault.dev/orders").is_ok());
        assert!(CallerId::spiffe("spiffe://fieldvault.dev/").is_err());
        assert!(CallerId::spiffe("spiffe:///orders").is_err());
        assert!(CallerId::spiffe("https://fieldvault.dev/orders").is_err());
    }

    #[test]
    fn a_common_name_cannot_pose_as_a_spiffe_id() {
        assert_eq!(
            CallerId::common_name("spiffe://fieldvault.dev/support"),
            Err(CallerIdError::CommonNameLooksLikeSpiffe)
        );
        assert_eq!(
            CallerId::common_name("orders").map(|c| c.to_string()),
            Ok("orders".to_owned())
        );
        assert!(CallerId::common_name(" ").is_err());
    }

    #[test]
    fn a_common_name_that_would_read_as_another_caller_is_refused() {
        for cn in [
            " spiffe://fieldvault.dev/support",
            "support spiffe://fieldvault.dev/support",
            "\u{200B}spiffe://fieldvault.dev/support",
            "\u{202E}troppus/ved.tluavdleif//:effips",
            "support\u{2028}orders",
            "\u{0455}upport",
            "spiffe//fieldvault.dev/support",
            "spiffe;//fieldvault.dev/support",
            "-",
            "\u{FF53}upport",
            " support",
            "support ",
            "supp\u{00AD}ort",
        ] {
            assert!(CallerId::common_name(cn).is_err(), "{cn:?}");
        }
        assert_eq!(
            CallerId::common_name("billing batch-7").map(|c| c.to_string()),
            Ok("billing batch-7".to_owned())
        );
    }
}
