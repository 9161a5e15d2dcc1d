use super::error::{call_status, item_status};
use super::pb;
use crate::domain::policy::RevealLevel;
use crate::domain::value::{Address, FieldInput, IdScheme};
use crate::domain::{FieldKind, Plaintext};
use crate::tls::Peer;
use crate::vault::{new_request_id, Call, ItemError, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `fieldvault.v1.Vault` over a [`Vault`].
#[derive(Clone)]
pub struct VaultService {
    vault: Arc<Vault>,
}

impl VaultService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    pub fn into_server(self) -> pb::vault_server::VaultServer<Self> {
        pb::vault_server::VaultServer::new(self)
    }
}

/// A request as the vault sees it: a new request id and the caller proven
/// by the connection's client certificate (read once per connection by the
/// TLS accept loop), or why it proved none. A call without an identity is
/// still handed to the vault, which audits and refuses it.
pub(super) fn call_of<T>(req: &Request<T>) -> Call {
    let caller = match req.extensions().get::<Peer>() {
        None => Err("a client certificate is required".to_owned()),
        Some(peer) => peer.caller().map_err(|e| e.to_string()),
    };
    Call::new(new_request_id(), caller)
}

/// The answer to `call`, carrying its request id (`x-request-id`), which
/// names its audit event.
pub(super) fn answer<T>(call: &Call, result: Result<T, Status>) -> Result<Response<T>, Status> {
    let id = tonic::metadata::MetadataValue::try_from(call.request_id.as_str()).ok();
    match result {
        Ok(body) => {
            let mut response = Response::new(body);
            if let Some(id) = id {
                response.metadata_mut().insert("x-request-id", id);
            }
            Ok(response)
        }
        Err(mut status) => {
            if let Some(id) = id {
                status.metadata_mut().insert("x-request-id", id);
            }
            Err(status)
        }
    }
}

pub(crate) fn kind_from_pb(kind: i32) -> Result<FieldKind, ItemError> {
    match pb::FieldKind::try_from(kind) {
        Ok(pb::FieldKind::Phone) => Ok(FieldKind::Phone),
        Ok(pb::FieldKind::Address) => Ok(FieldKind::Address),
        Ok(pb::FieldKind::NationalId) => Ok(FieldKind::NationalId),
        Ok(pb::FieldKind::Email) => Ok(FieldKind::Email),
        Ok(pb::FieldKind::Unspecified) => Err(ItemError::InvalidArgument {
            field: Some("kind"),
            reason: "must be set (FIELD_KIND_UNSPECIFIED is not a kind)".into(),
        }),
        Err(_) => Err(ItemError::InvalidArgument {
            field: Some("kind"),
            reason: format!("unknown field kind {kind}"),
        }),
    }
}

/// The protobuf enum of a field kind.
pub fn kind_to_pb(kind: FieldKind) -> pb::FieldKind {
    match kind {
        FieldKind::Phone => pb::FieldKind::Phone,
        FieldKind::Address => pb::FieldKind::Address,
        FieldKind::NationalId => pb::FieldKind::NationalId,
        FieldKind::Email => pb::FieldKind::Email,
    }
}

/// `Ok(None)` for UNSPECIFIED (absent).
fn scheme_from_pb(scheme: i32) -> Result<Option<IdScheme>, ItemError> {
    use pb::NationalIdScheme as S;
    Ok(Some(match S::try_from(scheme) {
        Ok(S::Unspecified) => return Ok(None),
        Ok(S::CnRic) => IdScheme::CnRic,
        Ok(S::UsSsn) => IdScheme::UsSsn,
        Ok(S::BrCpf) => IdScheme::BrCpf,
        Ok(S::InAadhaar) => IdScheme::InAadhaar,
        Ok(S::HkHkid) => IdScheme::HkHkid,
        Ok(S::EsDni) => IdScheme::EsDni,
        Err(_) => {
            return Err(ItemError::InvalidArgument {
                field: Some("scheme"),
                reason: format!("unknown national ID scheme {scheme}"),
            })
        }
    }))
}

/// The protobuf enum of a national ID scheme.
pub fn scheme_to_pb(scheme: IdScheme) -> pb::NationalIdScheme {
    use pb::NationalIdScheme as S;
    match scheme {
        IdScheme::CnRic => S::CnRic,
        IdScheme::UsSsn => S::UsSsn,
        IdScheme::BrCpf => S::BrCpf,
        IdScheme::InAadhaar => S::InAadhaar,
        IdScheme::HkHkid => S::HkHkid,
        IdScheme::EsDni => S::EsDni,
    }
}

/// Moves the strings into the zeroizing domain type without copying.
fn address_from_pb(a: pb::PostalAddress) -> Address {
    let mut out = Address::default();
    out.country = a.country;
    out.region = a.region;
    out.city = a.city;
    out.district = a.district;
    out.street_lines = a.street_lines;
    out.postal_code = a.postal_code;
    out.recipient = a.recipient;
    out
}

fn address_to_pb(a: &Address) -> pb::PostalAddress {
    pb::PostalAddress {
        country: a.country.clone(),
        region: a.region.clone(),
        city: a.city.clone(),
        district: a.district.clone(),
        street_lines: a.street_lines.clone(),
        postal_code: a.postal_code.clone(),
        recipient: a.recipient.clone(),
    }
}

fn field_from_pb(f: pb::Field) -> Result<FieldInput, ItemError> {
    Ok(FieldInput {
        kind: kind_from_pb(f.kind)?,
        // The String moves into the zeroizing wrapper without a copy.
        value: Plaintext::new(f.value),
        region: Some(f.region).filter(|r| !r.is_empty()),
        scheme: scheme_from_pb(f.scheme)?,
        address: f.address.map(address_from_pb),
        ttl: None,
    })
}

fn reveal_to_pb(level: RevealLevel) -> pb::Reveal {
    match level {
        RevealLevel::Full => pb::Reveal::Full,
        RevealLevel::Masked => pb::Reveal::Masked,
        RevealLevel::None => pb::Reveal::None,
    }
}

#[tonic::async_trait]
impl pb::vault_server::Vault for VaultService {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let call = call_of(&request);
        let req = request.into_inner();
        let items = req.fields.into_iter().map(field_from_pb).collect();
        let results = match self
            .vault
            .tokenize(call.clone(), req.purpose.as_deref(), items)
            .await
        {
            Ok(results) => results,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| pb::TokenizeResult {
                outcome: Some(match r {
                    Ok(token) => pb::tokenize_result::Outcome::Token(token.to_string()),
                    Err(e) => pb::tokenize_result::Outcome::Error(item_status(
                        &format!("fields[{i}]"),
                        &e,
                    )),
                }),
            })
            .collect();
        answer(&call, Ok(pb::TokenizeResponse { results }))
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let call = call_of(&request);
        let req = request.into_inner();
        let results = match self
            .vault
            .detokenize(
                call.clone(),
                &req.purpose,
                &req.justification,
                req.tokens.clone(),
            )
            .await
        {
            Ok(results) => results,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        let results = req
            .tokens
            .into_iter()
            .zip(results)
            .enumerate()
            .map(|(i, (token, r))| pb::DetokenizeResult {
                token,
                outcome: Some(match r {
                    Ok(revealed) => pb::detokenize_result::Outcome::Revealed(pb::RevealedValue {
                        kind: kind_to_pb(revealed.kind) as i32,
                        reveal: reveal_to_pb(revealed.reveal) as i32,
                        value: revealed.value.expose().to_owned(),
                        scheme: revealed
                            .scheme
                            .map_or(pb::NationalIdScheme::Unspecified, scheme_to_pb)
                            as i32,
                        address: revealed.address.as_ref().map(address_to_pb),
                    }),
                    Err(e) => pb::detokenize_result::Outcome::Error(item_status(
                        &format!("tokens[{i}]"),
                        &e,
                    )),
                }),
            })
            .collect();
        answer(&call, Ok(pb::DetokenizeResponse { results }))
    }
}
