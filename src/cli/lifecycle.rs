//! `fieldvault erase` and `fieldvault export`: every token of one value,
//! erased or listed (README, "Data lifecycle"). One value per command: the
//! call is about one person's value, and its answer is a list of tokens,
//! not one line per input. `delete` and `info`, which take tokens in
//! batches, are in calls.rs.

use super::conn::{CallStatus, Conn};
use super::input::{self, Line};
use super::output::{self, call_failed, emit, Failure, EXIT_OK};
use clap::Args;
use fieldvault::domain::value::{MAX_STREET_LINES, MAX_VALUE_BYTES};
use fieldvault::grpc::pb;
use std::process::ExitCode;
use tonic::Code;

const ERASE_EXIT_CODES_HELP: &str = "Exit codes: 0 done (every token of the value is erased; \
    none held is done too: the output is then empty); 2 the call failed (connection, TLS, \
    refused by the server, a malformed value, bad arguments; with --json, the error is a JSON \
    object on stdout) and nothing was erased. The caller needs a policy rule with action \
    \"erase\" for the kind; every call is audited, with the tokens erased and never the value.";

const EXPORT_EXIT_CODES_HELP: &str = "Exit codes: 0 done (none held is done too: the output is \
    then empty); 2 the call failed (connection, TLS, refused by the server, a malformed value, \
    bad arguments; with --json, the error is a JSON object on stdout). The caller needs a \
    policy rule with action \"export\" for the kind and the purpose; every call is audited, \
    with the tokens listed and never the value.";

/// The value a command is about, given as tokenize takes one.
#[derive(Args)]
pub(crate) struct ValueArgs {
    /// Field kind of the value: phone, email, address or national_id.
    #[arg(long)]
    kind: fieldvault::domain::FieldKind,
    /// Phone only: ISO 3166 alpha-2 region to read a national-format
    /// number in (e.g. US for "(202) 555-0143").
    #[arg(long)]
    region: Option<String>,
    /// National ID only (required): cn_ric, us_ssn, br_cpf, in_aadhaar,
    /// hk_hkid or es_dni.
    #[arg(long)]
    scheme: Option<fieldvault::domain::value::IdScheme>,
    /// Address only: the value is a structured address, a JSON object
    /// with the fields of PostalAddress (see tokenize --address-json).
    #[arg(long)]
    address_json: bool,
    /// Read the value from standard input (one line) instead of the
    /// argument: keeps it out of the process list and shell history.
    #[arg(long, conflicts_with = "value")]
    stdin: bool,
    /// The value. On the command line it is visible to every user of this
    /// machine (ps) and lands in shell history: prefer --stdin.
    #[arg(required_unless_present = "stdin")]
    value: Option<String>,
    /// Values after the first: refused with a message that says why
    /// (one value per command), never quoted.
    #[arg(hide = true, conflicts_with = "stdin")]
    more: Vec<String>,
}

#[derive(Args)]
#[command(after_help = ERASE_EXIT_CODES_HELP)]
pub(crate) struct EraseArgs {
    #[command(flatten)]
    value: ValueArgs,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXPORT_EXIT_CODES_HELP)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    value: ValueArgs,
    /// Why: a purpose a policy rule with action "export" lists for this
    /// caller (the dev policy: dsar).
    #[arg(long)]
    purpose: String,
    #[command(flatten)]
    conn: Conn,
}

/// The one line of standard input, or why not. More than one line is
/// refused: one value per call, and a second line would be silently
/// ignored otherwise.
fn read_one_line(field: &str, max: usize) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let read_err = |e: std::io::Error| {
        Failure::new(
            Code::InvalidArgument,
            format!("reading standard input: {e}"),
        )
    };
    let first = input::read_line(&mut reader, max).map_err(read_err)?;
    let first = match first.map(input::without_bom) {
        None => return Err(Failure::invalid("--stdin", "standard input is empty")),
        Some(Line::TooLong) => {
            return Err(Failure::invalid(
                field,
                &format!("is longer than {max} bytes"),
            ))
        }
        Some(Line::NotUtf8) => return Err(Failure::invalid(field, "is not valid UTF-8")),
        Some(Line::Text(text)) => text,
    };
    if input::read_line(&mut reader, max)
        .map_err(read_err)?
        .is_some()
    {
        return Err(Failure::invalid(
            "--stdin",
            "holds more than one line; give one value per command (nothing was sent)",
        ));
    }
    Ok(first)
}

impl ValueArgs {
    /// The field to send, or the failure to print (nothing sent).
    fn field(&self) -> Result<pb::Field, Failure> {
        use fieldvault::domain::FieldKind;
        if self.address_json && self.kind != FieldKind::Address {
            return Err(Failure::new(
                Code::InvalidArgument,
                "--address-json: only with --kind address",
            ));
        }
        let max = if self.address_json {
            fieldvault::limits::max_field_bytes()
        } else {
            MAX_VALUE_BYTES
        };
        let named = if self.address_json {
            "field.address"
        } else {
            "field.value"
        };
        if !self.more.is_empty() {
            return Err(Failure::invalid(
                "VALUE",
                &format!(
                    "{} values given; erase and export take one value per command (nothing \
                     was sent)",
                    self.more.len() + 1
                ),
            ));
        }
        let text = match (&self.value, self.stdin) {
            (_, true) => read_one_line(named, max)?,
            (Some(value), false) => value.clone(),
            (None, false) => return Err(Failure::invalid("VALUE", "is required (or --stdin)")),
        };
        let (value, address) = if self.address_json {
            if text.trim().is_empty() {
                return Err(Failure::invalid(named, "is empty"));
            }
            let address = input::parse_address(&text).map_err(|r| Failure::invalid(named, &r))?;
            if address.street_lines.len() > MAX_STREET_LINES {
                return Err(Failure::invalid(
                    "field.address.street_lines",
                    &format!("holds more than {MAX_STREET_LINES} lines"),
                ));
            }
            (String::new(), Some(address))
        } else {
            (text, None)
        };
        Ok(pb::Field {
            kind: fieldvault::grpc::kind_to_pb(self.kind) as i32,
            value,
            region: self.region.clone().unwrap_or_default(),
            scheme: self.scheme.map_or(
                pb::NationalIdScheme::Unspecified,
                fieldvault::grpc::scheme_to_pb,
            ) as i32,
            address,
            ttl: None,
        })
    }
}

/// A connected client and how to map its failed calls.
struct Session {
    client: fieldvault::client::Lifecycle,
    status: CallStatus,
    json: bool,
}

impl Session {
    async fn connect(conn: &Conn, late: &'static str) -> Result<Self, ExitCode> {
        let channel = conn
            .channel()
            .await
            .map_err(|e| call_failed(conn.json, &Failure::from_client(&e), 0))?;
        Ok(Self {
            client: fieldvault::client::Lifecycle::new(channel),
            status: conn.call_status().when_late(late),
            json: conn.json,
        })
    }

    /// Runs one call within `--timeout`; a failure is printed and becomes
    /// the exit code.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, ExitCode> {
        self.status
            .bound(call)
            .await
            .map_err(|s| call_failed(self.json, &Failure::from_status(&s), 0))
    }
}

pub(crate) async fn erase(args: EraseArgs) -> ExitCode {
    let json = args.conn.json;
    let field = match args.value.field() {
        Ok(field) => field,
        Err(f) => return call_failed(json, &f, 0),
    };
    let session = match Session::connect(
        &args.conn,
        "the server may have erased the value's tokens before it passed (erasing again is \
         harmless)",
    )
    .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let erased = match session.call(client.erase_value(field)).await {
        Ok(erased) => erased,
        Err(code) => return code,
    };
    let kind = args.value.kind.as_str();
    if json {
        emit!(
            "{}",
            serde_json::json!({ "kind": kind, "erased": erased, "count": erased.len() })
        );
    } else {
        for token in &erased {
            emit!("{token}\terased");
        }
        eprintln!(
            "fieldvault: erased {} {kind} token{} of this value",
            erased.len(),
            if erased.len() == 1 { "" } else { "s" }
        );
    }
    ExitCode::from(EXIT_OK)
}

pub(crate) async fn export(args: ExportArgs) -> ExitCode {
    let json = args.conn.json;
    let field = match args.value.field() {
        Ok(field) => field,
        Err(f) => return call_failed(json, &f, 0),
    };
    let session = match Session::connect(&args.conn, "").await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let tokens = match session
        .call(client.export_value(field, &args.purpose))
        .await
    {
        Ok(tokens) => tokens,
        Err(code) => return code,
    };
    let kind = args.value.kind.as_str();
    if json {
        let list: Vec<serde_json::Value> = tokens.iter().map(output::token_info_json).collect();
        emit!(
            "{}",
            serde_json::json!({
                "kind": kind, "purpose": args.purpose, "tokens": list, "count": tokens.len(),
            })
        );
    } else {
        for info in &tokens {
            emit!("{}", output::token_info_text(&info.token, info));
        }
        eprintln!(
            "fieldvault: {} {kind} token{} held for this value",
            tokens.len(),
            if tokens.len() == 1 { "" } else { "s" }
        );
    }
    ExitCode::from(EXIT_OK)
}
