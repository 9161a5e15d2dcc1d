//! The client commands that take a batch: `tokenize`, `detokenize`,
//! `delete` and `info`.
//!
//! Every input item (argument or `--stdin` line, blank ones too) gets
//! exactly one output line, in input order. Input is sent in chunks of at
//! most `--batch-size` items, so any amount of it works and memory stays
//! bounded. When a chunk fails as a whole, the command stops: the items
//! answered so far are printed, then the whole-call error (naming the first
//! unanswered item), and it exits with [`output::EXIT_CALL_FAILED`].

use super::conn::{answer_limit, CallStatus, Conn};
use super::input::{self, Line};
use super::output::{self, address_json, call_failed, emit, Failure, EXIT_ITEM_FAILED, EXIT_OK};
use clap::Args;
use fieldvault::domain::value::{MAX_STREET_LINES, MAX_VALUE_BYTES};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::vault_client::VaultClient;
use std::process::ExitCode;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

/// The server's default `max_batch_items`.
const DEFAULT_BATCH_SIZE: usize = 1000;

const EXIT_CODES_HELP: &str = "Exit codes: 0 every item succeeded; 1 every item was answered and \
    some failed (see their lines); 2 the call failed as a whole or the arguments are wrong: \
    the output is incomplete (with --json, the error is a JSON object on stdout).";

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
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
    /// How long every token of this call lives (2s, 15m, 12h, 90d,
    /// "1h 30m"): it detokenizes as NOT_FOUND from then on and its record
    /// is deleted. Default: the kind's configured default (which may be
    /// forever); over the kind's maximum, each value fails alone
    /// (INVALID_ARGUMENT naming fields[i].ttl).
    #[arg(long, value_name = "DURATION", value_parser = ttl_arg, allow_hyphen_values = true)]
    ttl: Option<std::time::Duration>,
    /// Address only: each value is a structured address, a JSON object with
    /// the fields of PostalAddress (country, region, city, district,
    /// street_lines, postal_code, recipient), e.g.
    /// '{"country":"US","city":"Testville","street_lines":["17 Fakestreet Lane"]}'.
    #[arg(long)]
    address_json: bool,
    /// Read values from standard input, one per line, instead of arguments
    /// (keeps them out of the process list and shell history). Every line
    /// gets one output line; a blank line is an error for that item.
    #[arg(long, conflicts_with = "values")]
    stdin: bool,
    /// Items per call: larger input is sent in chunks of this size. The
    /// server's limit is its max_batch_items (1000 by default); a smaller
    /// limit the server announces is followed on its own.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = batch_size)]
    batch_size: usize,
    /// The values.
    #[arg(required_unless_present = "stdin")]
    values: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct DetokenizeArgs {
    /// Why the values are needed; must be a purpose the policy lists.
    #[arg(long)]
    purpose: String,
    /// Free text for the audit log (e.g. a ticket number).
    #[arg(long, default_value = "")]
    justification: String,
    /// Reveal under this approved grant (its id, as `grants request`
    /// printed it): needed when the caller's rule requires a grant. Each
    /// value revealed under the grant consumes one of its reveals; a grant
    /// that is pending, rejected, revoked, expired or exhausted, or has
    /// fewer reveals left than the call needs, refuses the call
    /// (FAILED_PRECONDITION) and nothing is revealed.
    #[arg(long, value_name = "ID", value_parser = fieldvault::domain::grant::GrantId::parse)]
    grant: Option<fieldvault::domain::grant::GrantId>,
    /// Read tokens from standard input, one per line, instead of arguments.
    /// Every line gets one output line; a blank line is an error for that
    /// item.
    #[arg(long, conflicts_with = "tokens")]
    stdin: bool,
    /// Items per call (see tokenize --batch-size).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = batch_size)]
    batch_size: usize,
    /// The tokens.
    #[arg(required_unless_present = "stdin")]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

const DELETE_EXIT_CODES_HELP: &str = "Exit codes: 0 every token was deleted; 1 every token \
    was answered and some were not deleted (see their lines): a token that is unknown, deleted \
    already, expired or of a kind this caller may not delete is NOT_FOUND, all four alike, so \
    a NOT_FOUND line does not prove the token is gone; 2 the call failed as a whole or the \
    arguments are wrong: the output is incomplete (with --json, the error is a JSON object on \
    stdout). The caller needs a policy rule with action \"delete\" for the tokens' kinds; \
    every call is audited.";

const INFO_EXIT_CODES_HELP: &str = "Exit codes: 0 every token was described; 1 every token was \
    answered and some failed (NOT_FOUND: unknown, deleted, expired or of a kind this caller \
    may not inspect); 2 the call failed as a whole or the arguments are wrong: the output is \
    incomplete (with --json, the error is a JSON object on stdout). The caller needs a policy \
    rule with action \"inspect\"; every call is audited. Nothing here reveals a value.";

#[derive(Args)]
#[command(after_help = DELETE_EXIT_CODES_HELP)]
pub(crate) struct DeleteArgs {
    /// Read tokens from standard input, one per line, instead of arguments.
    /// Every line gets one output line; a blank line is an error for that
    /// item.
    #[arg(long, conflicts_with = "tokens")]
    stdin: bool,
    /// Items per call (see tokenize --batch-size).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = batch_size)]
    batch_size: usize,
    /// The tokens.
    #[arg(required_unless_present = "stdin")]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = INFO_EXIT_CODES_HELP)]
pub(crate) struct InfoArgs {
    /// Read tokens from standard input, one per line, instead of arguments.
    #[arg(long, conflicts_with = "tokens")]
    stdin: bool,
    /// Items per call (see tokenize --batch-size).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = batch_size)]
    batch_size: usize,
    /// The tokens.
    #[arg(required_unless_present = "stdin")]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

/// The largest `--batch-size`: ten times the server's default
/// max_batch_items (a server refuses more than its own limit anyway), and
/// what one chunk may hold in memory.
const MAX_BATCH_SIZE: usize = 10_000;

/// `--ttl`: a humantime duration of more than zero. The reason quotes
/// only what was understood (a duration is no secret), never the text: a
/// value in the wrong place may be personal data.
pub(crate) fn ttl_arg(s: &str) -> Result<std::time::Duration, String> {
    const FORM: &str = "give a duration such as 2s, 15m, 12h or 90d";
    let t = s.trim();
    // Negative durations reach here (the flag takes values that start
    // with '-'), and so does a flag given where the duration goes.
    if t.starts_with("--") {
        return Err(format!("needs a duration after it ({FORM})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "is negative; a time to live must be more than zero ({FORM})"
        ));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Err(format!(
            "is 0s; a time to live must be more than zero (leave --ttl out for the kind's \
             default; {FORM})"
        )),
        Ok(d) if d.as_secs() > i64::MAX as u64 => {
            Err(format!("is longer than any time to live ({FORM})"))
        }
        Ok(d) => Ok(d),
        Err(humantime::DurationError::NumberOverflow) => {
            Err(format!("is longer than any time to live ({FORM})"))
        }
        // A number alone ("5"): humantime reports an empty unit.
        Err(humantime::DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
            Err("needs a unit, e.g. 5s or 90d (units: ms, s, m, h, d, w, M, y)".to_owned())
        }
        Err(humantime::DurationError::UnknownUnit { .. }) => Err(format!(
            "has an unknown unit (use ms, s, m, h, d, w, M or y: {FORM})"
        )),
        Err(_) => Err(format!("is not a duration ({FORM})")),
    }
}

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_BATCH_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {MAX_BATCH_SIZE}")),
    }
}

/// The longest a line read from standard input waits for more lines to
/// share its call: the lines read within this time of a chunk's first line
/// are sent together (a line filter, a coprocess, `tail -f` get their
/// answers while input stays open), and a fast stream still fills chunks.
const INPUT_PAUSE: std::time::Duration = std::time::Duration::from_millis(150);

/// Where the items come from: the arguments, or standard input.
enum Source {
    Args(std::vec::IntoIter<String>),
    Stdin(mpsc::Receiver<Result<Line, String>>),
}

impl Source {
    fn new(stdin: bool, args: Vec<String>, max_line_bytes: usize) -> Self {
        if stdin {
            Self::Stdin(input::stdin_lines(max_line_bytes))
        } else {
            Self::Args(args.into_iter())
        }
    }

    async fn next(&mut self) -> Option<Result<Line, String>> {
        match self {
            Self::Args(args) => args.next().map(|a| Ok(Line::Text(a))),
            Self::Stdin(rx) => rx.recv().await,
        }
    }

    /// The next line; [`Next::Paused`] if none comes by `flush_at` (the
    /// deadline of the chunk being gathered, if it has begun). Receiving
    /// is cancel-safe: nothing is lost.
    async fn next_by(&mut self, flush_at: Option<tokio::time::Instant>) -> Next {
        let Some(flush_at) = flush_at else {
            return Next::Line(self.next().await);
        };
        match tokio::time::timeout_at(flush_at, self.next()).await {
            Ok(next) => Next::Line(next),
            Err(_) => Next::Paused,
        }
    }
}

enum Next {
    Line(Option<Result<Line, String>>),
    Paused,
}

/// One kind of call, sent in chunks.
trait Call {
    type Item: Clone;
    type Answer;
    /// The request's list field, as the server names items (`fields[3]`).
    const LIST: &'static str;
    fn item_bytes(item: &Self::Item) -> usize;
    async fn send(
        &mut self,
        items: Vec<Self::Item>,
    ) -> Result<Vec<Result<Self::Answer, Failure>>, Failure>;
    fn print(&self, index: usize, item: Option<&Self::Item>, answer: Result<Self::Answer, Failure>);
}

/// The item limit a server announced when it refused a chunk for it.
fn allowed_per_call(f: &Failure) -> Option<usize> {
    if f.code != Code::InvalidArgument {
        return None;
    }
    fieldvault::domain::batch::allowed_per_call(&f.message)
}

/// tonic's words when a message is over the receiver's size limit: from
/// the server, the request was refused before a byte of it was read.
const DECODE_LIMIT: &str = "Error, decoded message length too large";

/// The server refused the request for its size (OUT_OF_RANGE, tonic's
/// decode limit): nothing was read, so a smaller chunk is safe to send.
fn server_refused_size(f: &Failure) -> bool {
    f.code == Code::OutOfRange && f.message.starts_with(DECODE_LIMIT)
}

/// A whole-call failure from `status`. An answer over this client's own
/// limit (`answer_limit`) reads like the server's refusal of a request,
/// but the server handled every item (and audited a reveal): it is said
/// as such and never retried.
fn call_failure(status: &tonic::Status, answer_limit: usize) -> Failure {
    let ours = format!("the limit is: {answer_limit} bytes");
    if status.code() == Code::OutOfRange
        && status.message().starts_with(DECODE_LIMIT)
        && status.message().ends_with(&ours)
    {
        return Failure::new(
            Code::OutOfRange,
            format!(
                "the server's answer is larger than this client accepts ({answer_limit} bytes); \
                 the server handled the chunk, so it was not sent again (lower --batch-size)"
            ),
        );
    }
    Failure::from_status(status)
}

/// Sends `items` (whose input indices are `globals`) in calls of at most
/// `*batch` items. Returns the answers of the items answered, in order, and
/// the whole-call failure that stopped it, if any. A server limit below
/// `*batch` lowers it and the call is retried (nothing was stored), and a
/// request the server refused for its size (OUT_OF_RANGE before reading
/// it) is split in halves; nothing else is ever sent twice.
async fn send_all<C: Call>(
    call: &mut C,
    items: &[C::Item],
    globals: &[usize],
    batch: &mut usize,
) -> (Vec<Result<C::Answer, Failure>>, Option<Failure>) {
    let mut answers = Vec::with_capacity(items.len());
    let mut start = 0;
    while start < items.len() {
        let end = (start + *batch).min(items.len());
        let map = |k: usize| globals.get(start + k).copied();
        match call.send(items[start..end].to_vec()).await {
            Ok(got) if got.len() == end - start => {
                answers.extend(
                    got.into_iter()
                        .map(|a| a.map_err(|f| f.reindex(C::LIST, map))),
                );
                start = end;
            }
            Ok(got) => {
                let f = Failure::new(
                    Code::Internal,
                    format!("the server answered {} items of {}", got.len(), end - start),
                );
                return (answers, Some(f));
            }
            Err(f) => match allowed_per_call(&f) {
                Some(n) if n >= 1 && n < end - start => *batch = n,
                // The request is over the server's size limit (its
                // max_batch_items is below ours): it read nothing, halve.
                // Any other OUT_OF_RANGE (an answer too large to send or
                // to accept) comes after the items were handled: never
                // sent again.
                _ if server_refused_size(&f) && end - start > 1 => *batch = (end - start) / 2,
                _ => return (answers, Some(f.reindex(C::LIST, map))),
            },
        }
    }
    (answers, None)
}

/// Reads items from `source`, turns each line into an item with `build`
/// (or a failure of that item alone), sends them in chunks and prints one
/// line per item.
async fn run<C: Call>(
    call: &mut C,
    mut source: Source,
    build: impl Fn(usize, Line) -> Result<C::Item, Failure>,
    mut batch: usize,
    json: bool,
) -> ExitCode {
    let max_bytes = fieldvault::limits::max_message_bytes(batch);
    let mut next_index = 0;
    let mut any_failed = false;
    let mut carry: Option<(usize, Result<C::Item, Failure>)> = None;
    let mut read_error = None;
    loop {
        // Gather a chunk: at most `batch` items, at most `max_bytes` sent.
        let mut chunk: Vec<(usize, Result<C::Item, Failure>)> = Vec::new();
        let mut bytes = 0;
        // Set by the chunk's first line: the chunk is sent then at the
        // latest, however steadily lines keep coming.
        let mut flush_at = None;
        while chunk.len() < batch {
            let next = match carry.take() {
                Some(next) => next,
                None => match source.next_by(flush_at).await {
                    // The chunk's first line has waited long enough:
                    // answer what came so far.
                    Next::Paused => break,
                    Next::Line(None) => break,
                    Next::Line(Some(Err(e))) => {
                        read_error = Some(e);
                        break;
                    }
                    Next::Line(Some(Ok(line))) => {
                        let index = next_index;
                        next_index += 1;
                        (index, build(index, line))
                    }
                },
            };
            if let Ok(item) = &next.1 {
                let b = C::item_bytes(item);
                if bytes > 0 && bytes + b > max_bytes {
                    carry = Some(next);
                    break;
                }
                bytes += b;
            }
            chunk.push(next);
            flush_at.get_or_insert_with(|| tokio::time::Instant::now() + INPUT_PAUSE);
        }
        if chunk.is_empty() {
            break;
        }
        // The items move out of the chunk (not copied): the chunk keeps
        // each line's index and its local failure, if any.
        let mut globals = Vec::with_capacity(chunk.len());
        let mut items = Vec::with_capacity(chunk.len());
        let slots: Vec<(usize, Option<Failure>)> = chunk
            .into_iter()
            .map(|(i, item)| match item {
                Ok(item) => {
                    globals.push(i);
                    items.push(item);
                    (i, None)
                }
                Err(local) => (i, Some(local)),
            })
            .collect();
        let (answers, failure) = if items.is_empty() {
            (Vec::new(), None)
        } else {
            send_all(call, &items, &globals, &mut batch).await
        };
        let mut answers = answers.into_iter();
        let mut sent = items.iter();
        for (index, local) in slots {
            let (item, answer) = match local {
                Some(local) => (None, Err(local)),
                None => match answers.next() {
                    Some(answer) => (sent.next(), answer),
                    None => {
                        // Unanswered: the call failed from here on.
                        let f = failure.unwrap_or_else(|| {
                            Failure::new(Code::Internal, "the server sent too few answers")
                        });
                        return call_failed(json, &f, index);
                    }
                },
            };
            any_failed |= answer.is_err();
            call.print(index, item, answer);
        }
        if let Some(f) = failure {
            // Every item of the chunk was answered, yet a failure: only
            // possible when the failing call covered no item.
            return call_failed(json, &f, next_index);
        }
        if let Some(e) = read_error.take() {
            return call_failed(json, &Failure::new(Code::InvalidArgument, e), next_index);
        }
    }
    if let Some(e) = read_error {
        return call_failed(json, &Failure::new(Code::InvalidArgument, e), next_index);
    }
    ExitCode::from(if any_failed {
        EXIT_ITEM_FAILED
    } else {
        EXIT_OK
    })
}

/// A line that cannot become an item, as the failure of that item.
fn bad_line(field: &str, line: &Line, max: usize) -> Option<Failure> {
    match line {
        Line::Text(_) => None,
        Line::TooLong => Some(Failure::invalid(
            field,
            &format!("is longer than {max} bytes"),
        )),
        Line::NotUtf8 => Some(Failure::invalid(field, "is not valid UTF-8")),
    }
}

struct Tokenize {
    status: CallStatus,
    answer_limit: usize,
    client: VaultClient<Channel>,
    purpose: Option<String>,
    json: bool,
}

impl Call for Tokenize {
    type Item = pb::Field;
    type Answer = String;
    const LIST: &'static str = "fields";

    fn item_bytes(item: &pb::Field) -> usize {
        prost::Message::encoded_len(item) + 6
    }

    async fn send(
        &mut self,
        fields: Vec<pb::Field>,
    ) -> Result<Vec<Result<String, Failure>>, Failure> {
        let request = pb::TokenizeRequest {
            fields,
            purpose: self.purpose.clone(),
        };
        let response = self
            .status
            .bound(self.client.tokenize(request))
            .await
            .map_err(|s| call_failure(&s, self.answer_limit))?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(pb::tokenize_result::Outcome::Token(t)) => Ok(t),
                Some(pb::tokenize_result::Outcome::Error(e)) => Err(Failure::from_item(&e)),
                None => Err(Failure::new(
                    Code::Internal,
                    "the server sent an empty result",
                )),
            })
            .collect())
    }

    fn print(&self, index: usize, _item: Option<&pb::Field>, answer: Result<String, Failure>) {
        match (self.json, answer) {
            (true, Ok(token)) => {
                emit!("{}", serde_json::json!({"index": index, "token": token}))
            }
            (true, Err(f)) => {
                emit!("{}", serde_json::json!({"index": index, "error": f.json()}))
            }
            (false, Ok(token)) => emit!("{token}"),
            (false, Err(f)) => emit!("error {}", f.text()),
        }
    }
}

pub(crate) async fn tokenize(args: TokenizeArgs) -> ExitCode {
    let json = args.conn.json;
    let address_json = args.address_json;
    if address_json && args.kind != fieldvault::domain::FieldKind::Address {
        let f = Failure::new(
            Code::InvalidArgument,
            "--address-json: only with --kind address",
        );
        return call_failed(json, &f, 0);
    }
    // A structured address may be longer than a value; either way one
    // line is at most one largest legal field, so a chunk of `batch_size`
    // items stays under the server's message limit.
    let max_line = if address_json {
        fieldvault::limits::max_field_bytes()
    } else {
        MAX_VALUE_BYTES
    };
    let kind = fieldvault::grpc::kind_to_pb(args.kind) as i32;
    let scheme = args.scheme.map_or(
        pb::NationalIdScheme::Unspecified,
        fieldvault::grpc::scheme_to_pb,
    ) as i32;
    let region = args.region.clone().unwrap_or_default();
    let ttl = args.ttl.map(fieldvault::client::ttl);
    let build = move |index: usize, line: Line| {
        let field = if address_json {
            format!("fields[{index}].address")
        } else {
            format!("fields[{index}].value")
        };
        if let Some(f) = bad_line(&field, &line, max_line) {
            return Err(f);
        }
        let Line::Text(text) = line else {
            return Err(Failure::new(Code::Internal, "unreachable"));
        };
        let (value, address) = if address_json {
            if text.trim().is_empty() {
                return Err(Failure::invalid(&field, "is empty"));
            }
            let address = input::parse_address(&text).map_err(|r| Failure::invalid(&field, &r))?;
            // More than the server decodes would fail the whole chunk:
            // refused here, for this item alone, as the server would.
            if address.street_lines.len() > MAX_STREET_LINES {
                return Err(Failure::invalid(
                    &format!("{field}.street_lines"),
                    &format!("holds more than {MAX_STREET_LINES} lines"),
                ));
            }
            (String::new(), Some(address))
        } else {
            (text, None)
        };
        Ok(pb::Field {
            kind,
            value,
            region: region.clone(),
            scheme,
            address,
            ttl,
        })
    };
    let source = Source::new(args.stdin, args.values, max_line);
    let client = match args.conn.connect(args.batch_size).await {
        Ok(client) => client,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    let mut call = Tokenize {
        status: args.conn.call_status().when_late(
            "the server may have stored the values of this call (and made their tokens) before \
             it passed",
        ),
        answer_limit: answer_limit(args.batch_size),
        client,
        purpose: args.purpose,
        json,
    };
    run(&mut call, source, build, args.batch_size, json).await
}

/// A token line longer than this is refused without sending it; a token
/// is 26 characters.
const MAX_TOKEN_LINE: usize = 1024;

struct Detokenize {
    status: CallStatus,
    answer_limit: usize,
    client: VaultClient<Channel>,
    purpose: String,
    justification: String,
    /// Empty: none.
    grant_id: String,
    json: bool,
}

impl Call for Detokenize {
    type Item = String;
    type Answer = pb::DetokenizeResult;
    const LIST: &'static str = "tokens";

    fn item_bytes(item: &String) -> usize {
        item.len() + 6
    }

    async fn send(
        &mut self,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<pb::DetokenizeResult, Failure>>, Failure> {
        let request = pb::DetokenizeRequest {
            tokens,
            purpose: self.purpose.clone(),
            justification: self.justification.clone(),
            grant_id: self.grant_id.clone(),
        };
        let response = self
            .status
            .bound(self.client.detokenize(request))
            .await
            .map_err(|s| call_failure(&s, self.answer_limit))?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| match &r.outcome {
                Some(pb::detokenize_result::Outcome::Revealed(_)) => Ok(r),
                Some(pb::detokenize_result::Outcome::Error(e)) => Err(Failure::from_item(e)),
                None => Err(Failure::new(
                    Code::Internal,
                    "the server sent an empty result",
                )),
            })
            .collect())
    }

    fn print(
        &self,
        index: usize,
        item: Option<&String>,
        answer: Result<pb::DetokenizeResult, Failure>,
    ) {
        let token = item.map_or("", String::as_str);
        let revealed = match answer {
            Ok(pb::DetokenizeResult {
                outcome: Some(pb::detokenize_result::Outcome::Revealed(v)),
                ..
            }) => Ok(v),
            Ok(_) => Err(Failure::new(
                Code::Internal,
                "the server sent an empty result",
            )),
            Err(f) => Err(f),
        };
        match revealed {
            Ok(v) => {
                let kind = output::kind_name(v.kind);
                let reveal = output::reveal_name(v.reveal);
                let scheme = output::scheme_name(v.scheme);
                if self.json {
                    let mut obj = serde_json::json!({
                        "index": index, "token": token, "kind": kind,
                        "reveal": reveal, "value": v.value,
                    });
                    if let Some(scheme) = scheme {
                        obj["scheme"] = scheme.into();
                    }
                    if let Some(a) = &v.address {
                        obj["address"] = address_json(a);
                    }
                    emit!("{obj}");
                } else {
                    let mut line = format!("{token}\t{kind}\t{reveal}\t{}", v.value);
                    if let Some(scheme) = scheme {
                        line.push('\t');
                        line.push_str(&scheme);
                    } else if let Some(a) = &v.address {
                        line.push('\t');
                        line.push_str(&address_json(a).to_string());
                    }
                    emit!("{line}");
                }
            }
            Err(f) => {
                if self.json {
                    emit!(
                        "{}",
                        serde_json::json!({"index": index, "token": token, "error": f.json()})
                    );
                } else {
                    emit!("{token}\terror {}", f.text());
                }
            }
        }
    }
}

pub(crate) async fn detokenize(args: DetokenizeArgs) -> ExitCode {
    let json = args.conn.json;
    let build = |index: usize, line: Line| match line {
        Line::Text(token) => Ok(token),
        other => Err(
            bad_line(&format!("tokens[{index}]"), &other, MAX_TOKEN_LINE)
                .unwrap_or_else(|| Failure::new(Code::Internal, "unreachable")),
        ),
    };
    let source = Source::new(args.stdin, args.tokens, MAX_TOKEN_LINE);
    let client = match args.conn.connect(args.batch_size).await {
        Ok(client) => client,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    let mut call = Detokenize {
        status: args.conn.call_status().when_late(
            "the server may have revealed the tokens of this call (and audited the reveal) \
             before it passed",
        ),
        answer_limit: answer_limit(args.batch_size),
        client,
        purpose: args.purpose,
        justification: args.justification,
        grant_id: args.grant.map(|g| g.to_string()).unwrap_or_default(),
        json,
    };
    run(&mut call, source, build, args.batch_size, json).await
}

/// A token item from an argument or a line.
fn token_item(index: usize, line: Line) -> Result<String, Failure> {
    match line {
        Line::Text(token) => Ok(token),
        other => Err(
            bad_line(&format!("tokens[{index}]"), &other, MAX_TOKEN_LINE)
                .unwrap_or_else(|| Failure::new(Code::Internal, "unreachable")),
        ),
    }
}

struct Delete {
    status: CallStatus,
    answer_limit: usize,
    client: VaultClient<Channel>,
    json: bool,
}

impl Call for Delete {
    type Item = String;
    type Answer = i32;
    const LIST: &'static str = "tokens";

    fn item_bytes(item: &String) -> usize {
        item.len() + 6
    }

    async fn send(&mut self, tokens: Vec<String>) -> Result<Vec<Result<i32, Failure>>, Failure> {
        let request = pb::DeleteTokensRequest { tokens };
        let response = self
            .status
            .bound(self.client.delete_tokens(request))
            .await
            .map_err(|s| call_failure(&s, self.answer_limit))?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(pb::delete_tokens_result::Outcome::Deleted(kind)) => Ok(kind),
                Some(pb::delete_tokens_result::Outcome::Error(e)) => Err(Failure::from_item(&e)),
                None => Err(Failure::new(
                    Code::Internal,
                    "the server sent an empty result",
                )),
            })
            .collect())
    }

    fn print(&self, index: usize, item: Option<&String>, answer: Result<i32, Failure>) {
        let token = item.map_or("", String::as_str);
        match (self.json, answer) {
            (true, Ok(kind)) => emit!(
                "{}",
                serde_json::json!({
                    "index": index, "token": token, "deleted": true,
                    "kind": output::kind_name(kind),
                })
            ),
            (true, Err(f)) => emit!(
                "{}",
                serde_json::json!({"index": index, "token": token, "error": f.json()})
            ),
            (false, Ok(kind)) => emit!("{token}\tdeleted\t{}", output::kind_name(kind)),
            (false, Err(f)) => emit!("{token}\terror {}", f.text()),
        }
    }
}

pub(crate) async fn delete(args: DeleteArgs) -> ExitCode {
    let json = args.conn.json;
    let source = Source::new(args.stdin, args.tokens, MAX_TOKEN_LINE);
    let client = match args.conn.connect(args.batch_size).await {
        Ok(client) => client,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    let mut call = Delete {
        status: args.conn.call_status().when_late(
            "the server may have deleted the tokens of this call before it passed (deleting \
             again is harmless)",
        ),
        answer_limit: answer_limit(args.batch_size),
        client,
        json,
    };
    run(&mut call, source, token_item, args.batch_size, json).await
}

struct Info {
    status: CallStatus,
    answer_limit: usize,
    client: VaultClient<Channel>,
    json: bool,
}

impl Call for Info {
    type Item = String;
    type Answer = pb::TokenInfo;
    const LIST: &'static str = "tokens";

    fn item_bytes(item: &String) -> usize {
        item.len() + 6
    }

    async fn send(
        &mut self,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<pb::TokenInfo, Failure>>, Failure> {
        let request = pb::GetTokenInfoRequest { tokens };
        let response = self
            .status
            .bound(self.client.get_token_info(request))
            .await
            .map_err(|s| call_failure(&s, self.answer_limit))?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(pb::get_token_info_result::Outcome::Info(info)) => Ok(info),
                Some(pb::get_token_info_result::Outcome::Error(e)) => Err(Failure::from_item(&e)),
                None => Err(Failure::new(
                    Code::Internal,
                    "the server sent an empty result",
                )),
            })
            .collect())
    }

    fn print(&self, index: usize, item: Option<&String>, answer: Result<pb::TokenInfo, Failure>) {
        let token = item.map_or("", String::as_str);
        match (self.json, answer) {
            (true, Ok(info)) => {
                let mut obj = output::token_info_json(&info);
                obj["index"] = index.into();
                obj["token"] = token.into();
                emit!("{obj}")
            }
            (true, Err(f)) => emit!(
                "{}",
                serde_json::json!({"index": index, "token": token, "error": f.json()})
            ),
            (false, Ok(info)) => emit!("{}", output::token_info_text(token, &info)),
            (false, Err(f)) => emit!("{token}\terror {}", f.text()),
        }
    }
}

pub(crate) async fn info(args: InfoArgs) -> ExitCode {
    let json = args.conn.json;
    let source = Source::new(args.stdin, args.tokens, MAX_TOKEN_LINE);
    let client = match args.conn.connect(args.batch_size).await {
        Ok(client) => client,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    let mut call = Info {
        status: args.conn.call_status(),
        answer_limit: answer_limit(args.batch_size),
        client,
        json,
    };
    run(&mut call, source, token_item, args.batch_size, json).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::cell::RefCell;

    /// A stand-in server for the chunking logic alone: answers each item
    /// with its text, or refuses the whole call when it holds `refuse`, or
    /// when it holds more than `limit` items (as the server words it).
    struct Echo {
        limit: usize,
        /// More item bytes than this in one call: OUT_OF_RANGE.
        max_bytes: usize,
        refuse: &'static str,
        /// Every answer is over the client's own limit (4000 bytes).
        answer_too_large: bool,
        calls: Vec<usize>,
        printed: RefCell<Vec<String>>,
    }

    impl Call for Echo {
        type Item = String;
        type Answer = String;
        const LIST: &'static str = "tokens";

        fn item_bytes(item: &String) -> usize {
            item.len()
        }

        async fn send(
            &mut self,
            items: Vec<String>,
        ) -> Result<Vec<Result<String, Failure>>, Failure> {
            self.calls.push(items.len());
            if items.iter().map(String::len).sum::<usize>() > self.max_bytes {
                return Err(Failure::new(
                    Code::OutOfRange,
                    format!("{DECODE_LIMIT}: found 9 bytes, the limit is: 2 bytes"),
                ));
            }
            if self.answer_too_large {
                let status = tonic::Status::out_of_range(format!(
                    "{DECODE_LIMIT}: found 9000 bytes, the limit is: 4000 bytes"
                ));
                return Err(call_failure(&status, 4000));
            }
            if items.len() > self.limit {
                return Err(Failure::invalid(
                    "tokens",
                    &format!(
                        "holds {} items; at most {} are allowed per call",
                        items.len(),
                        self.limit
                    ),
                ));
            }
            if items.iter().any(|i| i == self.refuse) {
                return Err(Failure::new(Code::PermissionDenied, "refused"));
            }
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(k, i)| {
                    if i.is_empty() {
                        Err(Failure::invalid(&format!("tokens[{k}]"), "token is empty"))
                    } else {
                        Ok(i)
                    }
                })
                .collect())
        }

        fn print(&self, index: usize, _item: Option<&String>, answer: Result<String, Failure>) {
            let line = match answer {
                Ok(a) => format!("{index} {a}"),
                Err(f) => format!("{index} {}", f.message),
            };
            self.printed.borrow_mut().push(line);
        }
    }

    fn echo(limit: usize, refuse: &'static str) -> Echo {
        Echo {
            limit,
            max_bytes: usize::MAX,
            refuse,
            answer_too_large: false,
            calls: Vec::new(),
            printed: RefCell::new(Vec::new()),
        }
    }

    fn lines(items: &[&str]) -> Source {
        Source::Args(
            items
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    fn build(index: usize, line: Line) -> Result<String, Failure> {
        match line {
            Line::Text(t) => Ok(t),
            _ => Err(Failure::invalid(&format!("tokens[{index}]"), "bad line")),
        }
    }

    /// Runs the lines "a" to "e" through `call` with a batch size of 4;
    /// asserts they all pass, in order, in calls of 4, 2, 2 and 1 items.
    async fn assert_five_lines_pass_in_calls_of_4_2_2_1(mut call: Echo) {
        let code = run(
            &mut call,
            lines(&["a", "b", "c", "d", "e"]),
            build,
            4,
            false,
        )
        .await;
        assert_eq!(code, ExitCode::from(EXIT_OK));
        assert_eq!(call.calls, [4, 2, 2, 1]);
        assert_eq!(
            call.printed.into_inner(),
            ["0 a", "1 b", "2 c", "3 d", "4 e"]
        );
    }

    #[tokio::test]
    async fn chunks_keep_input_order_and_item_paths_count_in_the_whole_input() {
        let mut call = echo(1000, "-");
        let code = run(&mut call, lines(&["a", "b", "", "d", "e"]), build, 2, false).await;
        assert_eq!(code, ExitCode::from(EXIT_ITEM_FAILED));
        assert_eq!(call.calls, [2, 2, 1]);
        assert_eq!(
            call.printed.into_inner(),
            ["0 a", "1 b", "2 tokens[2]: token is empty", "3 d", "4 e"]
        );
    }

    #[tokio::test]
    async fn a_lower_server_limit_shrinks_the_chunks_and_loses_nothing() {
        assert_five_lines_pass_in_calls_of_4_2_2_1(echo(2, "-")).await;
    }

    #[tokio::test]
    async fn a_message_over_the_server_size_limit_is_split_until_it_fits() {
        let mut call = echo(1000, "-");
        call.max_bytes = 2;
        assert_five_lines_pass_in_calls_of_4_2_2_1(call).await;
        // A single item too large fails the call: no endless halving.
        let mut call = echo(1000, "-");
        call.max_bytes = 0;
        let code = run(&mut call, lines(&["a", "b"]), build, 2, false).await;
        assert_eq!(code, ExitCode::from(output::EXIT_CALL_FAILED));
        assert_eq!(call.calls, [2, 1]);
    }

    #[tokio::test]
    async fn an_answer_over_the_client_limit_is_never_sent_again() {
        let mut call = echo(1000, "-");
        call.answer_too_large = true;
        let code = run(&mut call, lines(&["a", "b", "c", "d"]), build, 4, true).await;
        assert_eq!(code, ExitCode::from(output::EXIT_CALL_FAILED));
        // One call: the server handled (and audited) it; no halves.
        assert_eq!(call.calls, [4]);
        assert!(call.printed.into_inner().is_empty());
        // The server's own encode limit: handled too, not retried.
        let f = call_failure(
            &tonic::Status::out_of_range(
                "Error, encoded message length too large: found 9 bytes, the limit is: 2 bytes",
            ),
            4000,
        );
        assert!(!server_refused_size(&f));
        let f = call_failure(
            &tonic::Status::out_of_range(
                "Error, decoded message length too large: found 9000 bytes, the limit is: 4000 bytes",
            ),
            4000,
        );
        assert!(!server_refused_size(&f), "{f:?}");
        assert!(f.message.contains("not sent again"), "{f:?}");
    }

    #[tokio::test]
    async fn a_chunk_refused_as_a_whole_stops_after_the_answered_items_with_exit_2() {
        let mut call = echo(1000, "c");
        let code = run(&mut call, lines(&["a", "b", "c", "d", "e"]), build, 2, true).await;
        assert_eq!(code, ExitCode::from(output::EXIT_CALL_FAILED));
        // The first chunk was answered; the second was refused; the third
        // was never sent.
        assert_eq!(call.calls, [2, 2]);
        assert_eq!(call.printed.into_inner(), ["0 a", "1 b"]);
    }

    #[test]
    fn a_ttl_is_a_humantime_duration_of_more_than_zero_and_a_refusal_quotes_no_text() {
        use std::time::Duration;
        assert_eq!(ttl_arg("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(ttl_arg("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(ttl_arg("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(ttl_arg("500ms"), Ok(Duration::from_millis(500)));
        assert!(ttl_arg("0s").unwrap_err().starts_with("is 0s;"));
        assert!(ttl_arg("-5s").unwrap_err().starts_with("is negative;"));
        assert!(ttl_arg("--json")
            .unwrap_err()
            .starts_with("needs a duration"));
        for text in ["+1 202-555-0143", "2025550143", "soon", ""] {
            let e = ttl_arg(text).unwrap_err();
            assert!(
                e.starts_with("is not a duration")
                    || e.starts_with("has an unknown unit")
                    || e.starts_with("needs a unit"),
                "{e}"
            );
            assert!(!e.contains("555") && !e.contains("soon"), "{e}");
        }
        let e = ttl_arg("5").unwrap_err();
        assert!(e.starts_with("needs a unit, e.g. 5s or 90d"), "{e}");
        let e = ttl_arg("5 fortnights").unwrap_err();
        assert!(e.starts_with("has an unknown unit"), "{e}");
        assert!(!e.contains("fortnight"), "{e}");
        assert!(ttl_arg("99999999999999999999y")
            .unwrap_err()
            .starts_with("is longer than any"));
    }

    #[test]
    fn the_server_batch_limit_is_read_from_its_message() {
        let f = Failure::invalid("fields", "holds 1000 items; at most 7 are allowed per call");
        assert_eq!(allowed_per_call(&f), Some(7));
        let f = Failure::invalid(
            "fields[3].address.street_lines",
            "holds 40 items; at most 32 are allowed",
        );
        assert_eq!(allowed_per_call(&f), None);
    }
}
