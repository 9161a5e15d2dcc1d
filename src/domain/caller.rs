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
    #[error("common name is empty or holds control characters")]
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
    /// a SPIFFE ID: otherwise a certificate with `CN=spiffe://…` and no URI
    /// SAN would impersonate a workload.
    pub fn common_name(cn: &str) -> Result<Self, CallerIdError> {
        if cn.to_ascii_lowercase().starts_with("spiffe:") {
            return Err(CallerIdError::CommonNameLooksLikeSpiffe);
        }
        if cn.trim().is_empty() || cn.len() > 256 || cn.chars().any(char::is_control) {
            return Err(CallerIdError::BadCommonName);
        }
        Ok(Self::CommonName(cn.to_owned()))
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
}
