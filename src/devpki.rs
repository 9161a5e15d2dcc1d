//! Certificates for development and tests, made with rcgen: a CA, a server
//! certificate and client certificates whose identity is a SPIFFE ID.
//! Never use these in production: the CA key sits next to the certificates.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SanType, SerialNumber,
};
use zeroize::Zeroizing;

/// A certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// A certificate authority that can issue server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// Why a CA's certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the CA certificate is not a PEM certificate: {0}")]
    Certificate(String),
    #[error(
        "the CA certificate's subject is not a single common name, as dev mode makes it: \
         not a dev CA"
    )]
    NotDevSubject,
    #[error("the CA key is not a PEM private key: {0}")]
    Key(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
}

impl DevCa {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let params = Self::ca_params(common_name)?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// The parameters of a dev CA named `common_name` (its subject is
    /// that one common name).
    fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A CA made by [`DevCa::new`] earlier, from its certificate and key
    /// (PEM), to issue more certificates: they chain to the same
    /// certificate. Its subject must be one common name (as `new` makes
    /// it; the issuer name of what it issues is built from it), and the
    /// key must be the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, LoadError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| LoadError::Certificate(e.to_string()))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| LoadError::Certificate(e.to_string()))?;
        let subject = cert.subject();
        let names: Vec<&str> = subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect();
        let [common_name] = names.as_slice() else {
            return Err(LoadError::NotDevSubject);
        };
        if subject.iter_attributes().count() != 1 {
            return Err(LoadError::NotDevSubject);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| LoadError::Key(e.to_string()))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(LoadError::KeyMismatch);
        }
        let params =
            Self::ca_params(common_name).map_err(|e| LoadError::Certificate(e.to_string()))?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// A server certificate for DNS names and IP addresses (`127.0.0.1`).
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().map_or("server", |s| s));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with subject CN `common_name` and, if given, a
    /// SPIFFE ID as URI SAN.
    pub fn issue_client(
        &self,
        common_name: &str,
        spiffe_id: Option<&str>,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(id) = spiffe_id {
            params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A certificate revocation list signed by this CA revoking the
    /// certificates with serial numbers `serials` (their DER bytes),
    /// numbered `number` (higher than the CRL it replaces), issued now and
    /// due for renewal in `valid_for`. PEM.
    pub fn revocation_list(
        &self,
        serials: &[Vec<u8>],
        number: u64,
        valid_for: std::time::Duration,
    ) -> Result<String, rcgen::Error> {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + valid_for,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn parsed(pem: &str) -> Vec<u8> {
        let (_, pem) = ok(x509_parser::pem::parse_x509_pem(pem.as_bytes()));
        pem.contents
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_the_same_certificate() {
        let ca = ok(DevCa::new("fieldvault dev CA 1a2b3c4d"));
        let loaded = ok(DevCa::load(ca.cert_pem(), &ca.key_pem()));
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let issued = ok(loaded.issue_client("admin", Some("spiffe://fieldvault.dev/admin")));
        let ca_der = parsed(ca.cert_pem());
        let issued_der = parsed(&issued.cert_pem);
        let (_, ca_cert) = ok(x509_parser::parse_x509_certificate(&ca_der));
        let (_, cert) = ok(x509_parser::parse_x509_certificate(&issued_der));
        // The issuer name, byte for byte (that the CA's key signed it, a
        // server checks: tests/abuse_cli.rs, the old dev setup).
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    }

    #[test]
    fn a_key_of_another_ca_or_no_pem_is_refused() {
        let ca = ok(DevCa::new("fieldvault dev CA 1a2b3c4d"));
        let other = ok(DevCa::new("fieldvault dev CA 5e6f7a8b"));
        assert!(matches!(
            DevCa::load(ca.cert_pem(), &other.key_pem()),
            Err(LoadError::KeyMismatch)
        ));
        assert!(matches!(
            DevCa::load("not a certificate", &ca.key_pem()),
            Err(LoadError::Certificate(_))
        ));
        assert!(matches!(
            DevCa::load(ca.cert_pem(), "not a key"),
            Err(LoadError::Key(_))
        ));
    }
}
