//! Peer certificate -> caller identity. The TLS layer has already verified
//! the chain to the client CA; this only reads who the certificate names.
//! It runs once per connection, right after the handshake (see
//! [`crate::tls::Peer`]), not once per request.

use crate::domain::{CallerId, CallerIdError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("a client certificate is required")]
    NoCertificate,
    #[error("client certificate could not be parsed")]
    Unparseable,
    #[error("client certificate has more than one SPIFFE ID")]
    SeveralSpiffeIds,
    #[error("client certificate names no identity (no SPIFFE URI SAN, no subject CN)")]
    NoIdentity,
    #[error("client certificate has no SPIFFE ID, and identity from the subject CN is turned off (tls.identity_from_cn = false)")]
    CommonNameRefused,
    #[error("client certificate identity rejected: {0}")]
    Invalid(#[from] CallerIdError),
}

/// The SPIFFE ID from a URI SAN when there is one, else the subject CN.
pub fn caller_from_cert_der(der: &[u8]) -> Result<CallerId, IdentityError> {
    caller_from_cert_der_with(der, true)
}

/// Like [`caller_from_cert_der`]; with `identity_from_cn` false, a
/// certificate without a SPIFFE ID names no caller.
pub fn caller_from_cert_der_with(
    der: &[u8],
    identity_from_cn: bool,
) -> Result<CallerId, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?;
    let spiffe: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) if uri.to_ascii_lowercase().starts_with("spiffe:") => {
                        Some(*uri)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match spiffe.as_slice() {
        [one] => return Ok(CallerId::spiffe(one)?),
        [] => {}
        _ => return Err(IdentityError::SeveralSpiffeIds),
    }
    if !identity_from_cn {
        return Err(IdentityError::CommonNameRefused);
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(IdentityError::NoIdentity)?;
    Ok(CallerId::common_name(cn)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap_or_else(|e| panic!("{e}"))))
            .collect();
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn a_spiffe_uri_san_wins_over_the_common_name() {
        let id = caller_from_cert_der(&cert(Some("orders"), &["spiffe://t.example/orders"]));
        assert_eq!(id, Ok(CallerId::Spiffe("spiffe://t.example/orders".into())));
    }

    #[test]
    fn without_a_spiffe_id_the_common_name_is_the_identity() {
        let id = caller_from_cert_der(&cert(Some("billing"), &["https://t.example/x"]));
        assert_eq!(id, Ok(CallerId::CommonName("billing".into())));
    }

    #[test]
    fn without_the_cn_fallback_only_a_spiffe_id_names_a_caller() {
        assert_eq!(
            caller_from_cert_der_with(&cert(Some("billing"), &[]), false),
            Err(IdentityError::CommonNameRefused)
        );
        assert_eq!(
            caller_from_cert_der_with(&cert(Some("orders"), &["spiffe://t.example/orders"]), false),
            Ok(CallerId::Spiffe("spiffe://t.example/orders".into()))
        );
    }

    #[test]
    fn ambiguous_or_empty_certificates_have_no_identity() {
        assert_eq!(
            caller_from_cert_der(&cert(
                Some("x"),
                &["spiffe://t.example/a", "spiffe://t.example/b"]
            )),
            Err(IdentityError::SeveralSpiffeIds)
        );
        assert_eq!(
            caller_from_cert_der(&cert(None, &[])),
            Err(IdentityError::NoIdentity)
        );
        assert!(matches!(
            caller_from_cert_der(&cert(Some("spiffe://t.example/admin"), &[])),
            Err(IdentityError::Invalid(_))
        ));
        assert_eq!(
            caller_from_cert_der(b"not a certificate"),
            Err(IdentityError::Unparseable)
        );
    }
}
