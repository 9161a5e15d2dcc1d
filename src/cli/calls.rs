//! The client commands: `tokenize` and `detokenize`.

use super::conn::Conn;
use clap::Args;
use fieldvault::grpc::pb;
use std::io::BufRead;
use std::process::ExitCode;

#[derive(Args)]
pub(crate) struct TokenizeArgs {
    /// Field kind of every value: phone, email, address or national_id.
    #[arg(long)]
    kind: fieldvault::domain::FieldKind,
    /// Phone only: ISO 3166 alpha-2 region to read national-format numbers
    /// in (e.g. CN for "138 1234 5678").
    #[arg(long)]
    region: Option<String>,
    /// National ID only (required): cn_ric, us_ssn, br_cpf, in_aadhaar,
    /// hk_hkid or es_dni.
    #[arg(long)]
    scheme: Option<fieldvault::domain::value::IdScheme>,
    /// Purpose, when the caller's policy requires one for tokenize.
    #[arg(long)]
    purpose: Option<String>,
    /// Read values from standard input, one per line, instead of arguments
    /// (keeps them out of the process list and shell history).
    #[arg(long, conflicts_with = "values")]
    stdin: bool,
    /// The values.
    #[arg(required_unless_present = "stdin")]
    values: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub(crate) struct DetokenizeArgs {
    /// Why the values are needed; must be a purpose the policy lists.
    #[arg(long)]
    purpose: String,
    /// Free text for the audit log (e.g. a ticket number).
    #[arg(long, default_value = "")]
    justification: String,
    /// The tokens.
    #[arg(required = true)]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn status_line(e: &tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

fn item_error(s: &tonic_types::Status) -> (String, String) {
    (
        format!("{:?}", tonic::Code::from_i32(s.code)),
        s.message.clone(),
    )
}

pub(crate) async fn tokenize(args: TokenizeArgs) -> Result<ExitCode, String> {
    let values = if args.stdin {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading standard input: {e}"))?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    } else {
        args.values
    };
    let kind = fieldvault::grpc::kind_to_pb(args.kind);
    let scheme = args.scheme.map_or(
        pb::NationalIdScheme::Unspecified,
        fieldvault::grpc::scheme_to_pb,
    );
    let mut client = args.conn.connect().await.map_err(|e| e.to_string())?;
    let request = pb::TokenizeRequest {
        fields: values
            .into_iter()
            .map(|value| pb::Field {
                kind: kind as i32,
                value,
                region: args.region.clone().unwrap_or_default(),
                scheme: scheme as i32,
                address: None,
            })
            .collect(),
        purpose: args.purpose,
    };
    let response = client
        .tokenize(request)
        .await
        .map_err(|e| status_line(&args.conn.call_status(e)))?
        .into_inner();
    let mut failed = false;
    for (i, result) in response.results.iter().enumerate() {
        match &result.outcome {
            Some(pb::tokenize_result::Outcome::Token(token)) => {
                if args.conn.json {
                    println!("{}", serde_json::json!({"index": i, "token": token}));
                } else {
                    println!("{token}");
                }
            }
            Some(pb::tokenize_result::Outcome::Error(e)) => {
                failed = true;
                let (code, message) = item_error(e);
                if args.conn.json {
                    println!(
                        "{}",
                        serde_json::json!({"index": i, "error": {"code": code, "message": message}})
                    );
                } else {
                    println!("error {code}: {message}");
                }
            }
            None => {
                failed = true;
                println!("error: empty result for item {i}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn detokenize(args: DetokenizeArgs) -> Result<ExitCode, String> {
    let mut client = args.conn.connect().await.map_err(|e| e.to_string())?;
    let response = client
        .detokenize(pb::DetokenizeRequest {
            tokens: args.tokens,
            purpose: args.purpose,
            justification: args.justification,
        })
        .await
        .map_err(|e| status_line(&args.conn.call_status(e)))?
        .into_inner();
    let mut failed = false;
    for result in &response.results {
        match &result.outcome {
            Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                let kind = pb::FieldKind::try_from(v.kind).map_or("unknown", |k| k.as_str_name());
                let reveal = pb::Reveal::try_from(v.reveal).map_or("unknown", |r| r.as_str_name());
                if args.conn.json {
                    let mut obj = serde_json::json!({"token": result.token, "kind": kind, "reveal": reveal, "value": v.value});
                    if let Ok(scheme) = pb::NationalIdScheme::try_from(v.scheme) {
                        if scheme != pb::NationalIdScheme::Unspecified {
                            obj["scheme"] = scheme.as_str_name().into();
                        }
                    }
                    if let Some(a) = &v.address {
                        obj["address"] = serde_json::json!({
                            "country": a.country, "region": a.region, "city": a.city,
                            "district": a.district, "street_lines": a.street_lines,
                            "postal_code": a.postal_code, "recipient": a.recipient,
                        });
                    }
                    println!("{obj}");
                } else {
                    println!("{}\t{}\t{}\t{}", result.token, kind, reveal, v.value);
                }
            }
            Some(pb::detokenize_result::Outcome::Error(e)) => {
                failed = true;
                let (code, message) = item_error(e);
                if args.conn.json {
                    println!(
                        "{}",
                        serde_json::json!({"token": result.token, "error": {"code": code, "message": message}})
                    );
                } else {
                    println!("{}\terror {code}: {message}", result.token);
                }
            }
            None => {
                failed = true;
                println!("{}\terror: empty result", result.token);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
