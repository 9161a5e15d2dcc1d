use super::error::{call_status, item_status};
use super::pb;
use crate::domain::policy::RevealLevel;
use crate::domain::value::{Address, FieldInput, IdScheme};
use crate::domain::{FieldKind, Plaintext, TokenMode};
use crate::tls::Peer;
use crate::vault::{new_request_id, Call, ItemError, TokenInfo, Vault};
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

/// A request as the vault sees it: its request id (made by
/// [`crate::request::RequestLayer`]; a new one if the server has none) and
/// the caller proven by the connection's client certificate (read once per
/// connection by the TLS accept loop), or why it proved none. A call
/// without an identity is still handed to the vault, which audits and
/// refuses it.
pub(super) fn call_of<T>(req: &Request<T>) -> Call {
    let caller = match req.extensions().get::<Peer>() {
        None => Err("a client certificate is required".to_owned()),
        Some(peer) => peer.caller().map_err(|e| e.to_string()),
    };
    let id = match req.extensions().get::<crate::request::RequestId>() {
        Some(id) => id.0.clone(),
        None => new_request_id(),
    };
    Call::new(id, caller)
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
        ttl: f.ttl.map(ttl_from_pb).transpose()?,
        // The String moves into the zeroizing wrapper without a copy.
        value: Plaintext::new(f.value),
        region: Some(f.region).filter(|r| !r.is_empty()),
        scheme: scheme_from_pb(f.scheme)?,
        address: f.address.map(address_from_pb),
    })
}

/// A time to live as sent: more than zero, or the item's
/// `InvalidArgument` naming `ttl`. Its maximum is the vault's to check
/// (per kind, from the config). A duration is no secret: the reason
/// quotes it.
pub(crate) fn ttl_from_pb(d: prost_types::Duration) -> Result<std::time::Duration, ItemError> {
    let invalid = |reason: String| ItemError::InvalidArgument {
        field: Some("ttl"),
        reason,
    };
    let (seconds, nanos) = (d.seconds, d.nanos);
    if !(-999_999_999..=999_999_999).contains(&nanos)
        || (seconds > 0 && nanos < 0)
        || (seconds < 0 && nanos > 0)
    {
        return Err(invalid(format!(
            "is not a valid google.protobuf.Duration (seconds {seconds}, nanos {nanos}: nanos \
             must be from -999999999 to 999999999, with the sign of seconds)"
        )));
    }
    if seconds < 0 || nanos < 0 || (seconds == 0 && nanos == 0) {
        let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
        let shown = match nanos {
            0 => format!("{sign}{}s", seconds.unsigned_abs()),
            _ => format!(
                "{sign}{}.{:09}s",
                seconds.unsigned_abs(),
                nanos.unsigned_abs()
            ),
        };
        return Err(invalid(format!(
            "is {shown}; a time to live must be more than zero (leave it out for the kind's \
             default)"
        )));
    }
    // Both are non-negative here, and nanos under a second.
    Ok(std::time::Duration::new(
        seconds.unsigned_abs(),
        nanos.unsigned_abs(),
    ))
}

/// The field of an EraseValue or ExportValue request, or INVALID_ARGUMENT
/// naming its part (`field.kind`, `field.ttl`). The value itself is
/// validated by the vault, as Tokenize's is.
/// The one field of an erase or export, or why it is refused (the vault
/// audits the refusal and names `field.<part>`).
fn value_field_from_pb(f: Option<pb::Field>) -> Result<FieldInput, ItemError> {
    let Some(f) = f else {
        return Err(ItemError::InvalidArgument {
            field: None,
            reason: "is required: the kind and value whose tokens are meant".into(),
        });
    };
    if f.ttl.is_some() {
        return Err(ItemError::InvalidArgument {
            field: Some("ttl"),
            reason: "only Tokenize takes a time to live; leave it out here".into(),
        });
    }
    field_from_pb(f)
}

/// One result per token of a per-token call, in order: each item's error
/// as its `google.rpc.Status`, naming it `tokens[i]`.
fn per_token<T, R>(
    tokens: Vec<String>,
    results: Vec<Result<T, ItemError>>,
    result: impl Fn(String, Result<T, tonic_types::Status>) -> R,
) -> Vec<R> {
    tokens
        .into_iter()
        .zip(results)
        .enumerate()
        .map(|(i, (token, r))| {
            result(
                token,
                r.map_err(|e| item_status(&format!("tokens[{i}]"), &e)),
            )
        })
        .collect()
}

fn mode_to_pb(mode: Option<TokenMode>) -> pb::TokenMode {
    match mode {
        Some(TokenMode::Random) => pb::TokenMode::Random,
        Some(TokenMode::Deterministic) => pb::TokenMode::Deterministic,
        None => pb::TokenMode::Unspecified,
    }
}

/// Token metadata on the wire: 0 for a creation time not recorded and an
/// expiry that never comes.
fn info_to_pb(info: TokenInfo) -> pb::TokenInfo {
    pb::TokenInfo {
        token: info.token.to_string(),
        kind: kind_to_pb(info.kind) as i32,
        created_unix_ms: info.created_unix_ms.unwrap_or(0),
        expires_unix_ms: info.expires_unix_ms.unwrap_or(0),
        key_version: info.key_version,
        mode: mode_to_pb(info.mode) as i32,
    }
}

pub(crate) fn reveal_to_pb(level: RevealLevel) -> pb::Reveal {
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
            .detokenize_under_grant(
                call.clone(),
                &req.purpose,
                &req.justification,
                &req.grant_id,
                req.tokens.clone(),
            )
            .await
        {
            Ok(results) => results,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        use pb::detokenize_result::Outcome;
        let results = per_token(req.tokens, results, |token, r| pb::DetokenizeResult {
            token,
            outcome: Some(match r {
                Ok(revealed) => Outcome::Revealed(pb::RevealedValue {
                    kind: kind_to_pb(revealed.kind) as i32,
                    reveal: reveal_to_pb(revealed.reveal) as i32,
                    value: revealed.value.expose().to_owned(),
                    scheme: revealed
                        .scheme
                        .map_or(pb::NationalIdScheme::Unspecified, scheme_to_pb)
                        as i32,
                    address: revealed.address.as_ref().map(address_to_pb),
                }),
                Err(e) => Outcome::Error(e),
            }),
        });
        answer(&call, Ok(pb::DetokenizeResponse { results }))
    }

    async fn delete_tokens(
        &self,
        request: Request<pb::DeleteTokensRequest>,
    ) -> Result<Response<pb::DeleteTokensResponse>, Status> {
        let call = call_of(&request);
        let tokens = request.into_inner().tokens;
        let results = match self.vault.delete_tokens(call.clone(), tokens.clone()).await {
            Ok(results) => results,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        use pb::delete_tokens_result::Outcome;
        let results = per_token(tokens, results, |token, r| pb::DeleteTokensResult {
            token,
            outcome: Some(match r {
                Ok(kind) => Outcome::Deleted(kind_to_pb(kind) as i32),
                Err(e) => Outcome::Error(e),
            }),
        });
        answer(&call, Ok(pb::DeleteTokensResponse { results }))
    }

    async fn get_token_info(
        &self,
        request: Request<pb::GetTokenInfoRequest>,
    ) -> Result<Response<pb::GetTokenInfoResponse>, Status> {
        let call = call_of(&request);
        let tokens = request.into_inner().tokens;
        let results = match self.vault.token_info(call.clone(), tokens.clone()).await {
            Ok(results) => results,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        use pb::get_token_info_result::Outcome;
        let results = per_token(tokens, results, |token, r| pb::GetTokenInfoResult {
            token,
            outcome: Some(match r {
                Ok(info) => Outcome::Info(info_to_pb(info)),
                Err(e) => Outcome::Error(e),
            }),
        });
        answer(&call, Ok(pb::GetTokenInfoResponse { results }))
    }

    async fn erase_value(
        &self,
        request: Request<pb::EraseValueRequest>,
    ) -> Result<Response<pb::EraseValueResponse>, Status> {
        let call = call_of(&request);
        let field = value_field_from_pb(request.into_inner().field);
        let result = self
            .vault
            .erase_value(call.clone(), field)
            .await
            .map(|erased| pb::EraseValueResponse {
                erased_tokens: erased.iter().map(ToString::to_string).collect(),
            })
            .map_err(call_status);
        answer(&call, result)
    }

    async fn export_value(
        &self,
        request: Request<pb::ExportValueRequest>,
    ) -> Result<Response<pb::ExportValueResponse>, Status> {
        let call = call_of(&request);
        let req = request.into_inner();
        let field = value_field_from_pb(req.field);
        let result = self
            .vault
            .export_value(call.clone(), &req.purpose, field)
            .await
            .map(|tokens| pb::ExportValueResponse {
                tokens: tokens.into_iter().map(info_to_pb).collect(),
            })
            .map_err(call_status);
        answer(&call, result)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ttl(seconds: i64, nanos: i32) -> Result<std::time::Duration, String> {
        ttl_from_pb(prost_types::Duration { seconds, nanos }).map_err(|e| match e {
            ItemError::InvalidArgument {
                field: Some("ttl"),
                reason,
            } => reason,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn a_time_to_live_must_be_more_than_zero_and_a_valid_duration() {
        assert_eq!(ttl(2, 0), Ok(std::time::Duration::from_secs(2)));
        assert_eq!(ttl(0, 1_000_000), Ok(std::time::Duration::from_millis(1)));
        assert_eq!(
            ttl(90 * 86_400, 0),
            Ok(std::time::Duration::from_secs(90 * 86_400))
        );
        assert!(ttl(0, 0)
            .unwrap_err()
            .starts_with("is 0s; a time to live must be more than zero"));
        assert!(ttl(-5, 0).unwrap_err().starts_with("is -5s;"));
        assert!(ttl(0, -500_000_000)
            .unwrap_err()
            .starts_with("is -0.500000000s;"));
        assert!(ttl(-1, -1).unwrap_err().starts_with("is -1.000000001s;"));
        for (s, n) in [(1, -1), (-1, 1), (0, 1_000_000_000), (0, i32::MIN)] {
            assert!(
                ttl(s, n)
                    .unwrap_err()
                    .starts_with("is not a valid google.protobuf.Duration"),
                "{s} {n}"
            );
        }
        assert_eq!(
            ttl(i64::MAX, 999_999_999),
            Ok(std::time::Duration::new(i64::MAX as u64, 999_999_999))
        );
    }

    #[test]
    fn an_erase_or_export_field_is_refused_at_the_edge_naming_its_part() {
        let phone = || pb::Field {
            kind: pb::FieldKind::Phone as i32,
            value: "+1 202-555-0143".into(),
            ..Default::default()
        };
        // The vault names the path `field.<part>` (or `field`).
        let named = |f: Option<pb::Field>| match value_field_from_pb(f) {
            Err(ItemError::InvalidArgument { field, reason }) => {
                assert!(!reason.contains("555"), "{reason}");
                field.map_or("field".to_owned(), |part| format!("field.{part}"))
            }
            other => panic!("{:?}", other.map(|_| "a field")),
        };
        assert_eq!(named(None), "field");
        let with_ttl = pb::Field {
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..phone()
        };
        assert_eq!(named(Some(with_ttl)), "field.ttl");
        assert_eq!(named(Some(pb::Field { kind: 0, ..phone() })), "field.kind");
        let scheme = pb::Field {
            scheme: 99,
            ..phone()
        };
        assert_eq!(named(Some(scheme)), "field.scheme");
        let ok = value_field_from_pb(Some(phone())).unwrap();
        assert_eq!(ok.kind, FieldKind::Phone);
        assert_eq!(ok.ttl, None);
    }

    #[test]
    fn token_metadata_goes_on_the_wire_with_zero_for_unknown_and_never() {
        let token: crate::domain::TokenId = "fv1_AAAAAAAAAAAAAAAAAAAAAA".parse().unwrap();
        let info = info_to_pb(TokenInfo {
            token,
            kind: FieldKind::Email,
            created_unix_ms: None,
            expires_unix_ms: None,
            key_version: 3,
            mode: None,
        });
        assert_eq!(info.token, "fv1_AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(info.kind, pb::FieldKind::Email as i32);
        assert_eq!((info.created_unix_ms, info.expires_unix_ms), (0, 0));
        assert_eq!(info.key_version, 3);
        assert_eq!(info.mode, pb::TokenMode::Unspecified as i32);
        let info = info_to_pb(TokenInfo {
            token,
            kind: FieldKind::Phone,
            created_unix_ms: Some(5),
            expires_unix_ms: Some(7),
            key_version: 1,
            mode: Some(TokenMode::Deterministic),
        });
        assert_eq!((info.created_unix_ms, info.expires_unix_ms), (5, 7));
        assert_eq!(info.mode, pb::TokenMode::Deterministic as i32);
    }
}
