//! `fieldvault grants …`: approved workflows against a running server (the
//! Grants service, README "Approved workflows"), with the client commands'
//! connection flags. `request` prints the new grant's id alone (so
//! `G=$(fieldvault grants request …)` works); every other command prints
//! its answer on stdout, and `--json` prints one JSON object.

use super::conn::{CallStatus, Conn};
use super::output::{call_failed, emit, kind_name, Failure, EXIT_OK};
use clap::{Args, Subcommand};
use fieldvault::domain::grant::{GrantId, GrantState, MAX_GRANT_KINDS, MAX_GRANT_TOKENS};
use fieldvault::domain::FieldKind;
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::grants_client::GrantsClient;
use serde_json::{json, Value};
use std::process::ExitCode;
use tonic::transport::Channel;

const EXIT_CODES_HELP: &str = "Exit codes: 0 done; 2 the call failed (connection, TLS, refused \
    by the server, bad arguments; with --json, the error is a JSON object on stdout); a refusal \
    changes nothing. Approving a grant that is not pending, approving it twice, or revoking \
    an ended grant fails with FAILED_PRECONDITION naming its state; an unknown grant id is \
    NOT_FOUND; a caller that may not act on the grant gets PERMISSION_DENIED. Every call is \
    audited.";

/// The most grants one `list` asks for (the server's own bound).
const MAX_LIST_LIMIT: u32 = 1000;

#[derive(Subcommand)]
pub(crate) enum GrantsCommand {
    /// Ask for a grant: a workflow may reveal at most --max-reveals values
    /// of --kind for --purpose until --valid-for from now, once the rule's
    /// approvers have approved it. Prints the new grant's id alone (state
    /// pending). Asked by the workflow itself, or by a caller with a policy
    /// rule `action = "grants"` on its behalf (--caller).
    Request(RequestArgs),
    /// Approve a pending grant (an approver its rule names; never its
    /// requester or its workflow). Prints the grant's state after it:
    /// active once it has its rule's number of distinct approvals.
    Approve(IdArgs),
    /// Reject a pending grant. Prints its state (rejected).
    Reject(EndArgs),
    /// Revoke a pending or active grant: a reveal that names it afterwards
    /// is refused. Prints its state (revoked).
    Revoke(EndArgs),
    /// The grants this caller may see, newest first, one a line
    /// (tab-separated): id, state, workflow, kinds, purpose, used/max,
    /// expires, requested by.
    List(ListArgs),
    /// One grant: its state, workflow, requester, kinds, purpose, reveals
    /// used and remaining, times, reason, tokens, rule, approvals (who,
    /// when), who may approve, and who ended it, when and why.
    Show(IdArgs),
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct RequestArgs {
    /// The workflow identity that will use the grant: its SPIFFE ID
    /// (spiffe://fieldvault.dev/fulfilment) or its certificate's common
    /// name. Default: the caller itself.
    #[arg(long, value_name = "ID")]
    caller: Option<String>,
    /// A field kind it may reveal (repeat for several): phone, email,
    /// address or national_id.
    #[arg(long, required = true)]
    kind: Vec<FieldKind>,
    /// The one purpose its reveals declare (the dev policy: shipping).
    #[arg(long)]
    purpose: String,
    /// How many values it may reveal in all (at least 1; the server's
    /// ceiling is its `[grants] max_reveals`, 10000 by default).
    #[arg(long, value_name = "N", value_parser = max_reveals)]
    max_reveals: u32,
    /// How long it lasts from now, approvals included (2h, 7d, "1d 12h");
    /// at most the server's `[grants] max_valid_for`, 30d by default.
    #[arg(long, value_name = "DURATION", value_parser = valid_for, allow_hyphen_values = true)]
    valid_for: std::time::Duration,
    /// Why (a ticket, a batch name; at most 512 bytes): shown to the
    /// approvers and kept in the audit trail. No personal data here.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Restrict the grant to this token (repeat for several, at most
    /// 1000): it then reveals only these. Default: any token of its kinds.
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct IdArgs {
    /// The grant's id (a UUID, as `grants request` printed it).
    #[arg(value_name = "ID", value_parser = grant_id)]
    id: GrantId,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct EndArgs {
    /// The grant's id (a UUID, as `grants request` printed it).
    #[arg(value_name = "ID", value_parser = grant_id)]
    id: GrantId,
    /// Why (optional, at most 512 bytes): kept with the grant and in the
    /// audit trail.
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct ListArgs {
    /// Only grants in this state: pending, active, rejected, revoked,
    /// expired or exhausted.
    #[arg(long, value_parser = state)]
    state: Option<GrantState>,
    /// Only grants for this workflow identity (its SPIFFE ID or common
    /// name).
    #[arg(long, value_name = "ID")]
    caller: Option<String>,
    /// At most this many, newest first (1 to 1000; default 100).
    #[arg(long, value_name = "N", value_parser = limit)]
    limit: Option<u32>,
    #[command(flatten)]
    conn: Conn,
}

/// `--max-reveals`. Refusals never quote the value (a value in the wrong
/// place may be personal data).
fn max_reveals(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("is 0; a grant allows at least one reveal".to_owned()),
        Ok(n) => u32::try_from(n).map_err(|_| {
            "is larger than any grant (the server's ceiling is its [grants] max_reveals)".to_owned()
        }),
        Err(_) => Err("must be a whole number of values, at least 1".to_owned()),
    }
}

/// `--valid-for`: a humantime duration of more than zero. The reason
/// quotes only what was understood, never the text.
fn valid_for(s: &str) -> Result<std::time::Duration, String> {
    const FORM: &str = "give a duration such as 2h, 7d or \"1d 12h\"";
    let t = s.trim();
    if t.starts_with("--") {
        return Err(format!("needs a duration after it ({FORM})"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "is negative; a grant must last more than zero ({FORM})"
        ));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Err(format!("is 0s; a grant must last more than zero ({FORM})")),
        Ok(d) if d.as_secs() > i64::MAX as u64 => Err(format!("is longer than any grant ({FORM})")),
        Ok(d) => Ok(d),
        Err(humantime::DurationError::NumberOverflow) => {
            Err(format!("is longer than any grant ({FORM})"))
        }
        Err(humantime::DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
            Err("needs a unit, e.g. 2h or 7d (units: ms, s, m, h, d, w, M, y)".to_owned())
        }
        Err(humantime::DurationError::UnknownUnit { .. }) => Err(format!(
            "has an unknown unit (use ms, s, m, h, d, w, M or y: {FORM})"
        )),
        Err(_) => Err(format!("is not a duration ({FORM})")),
    }
}

/// `--state`. The refusal names the choices, not the value.
fn state(s: &str) -> Result<GrantState, String> {
    GrantState::ALL
        .into_iter()
        .find(|g| g.as_str() == s.trim())
        .ok_or_else(|| {
            format!(
                "expected one of: {}",
                GrantState::ALL.map(GrantState::as_str).join(", ")
            )
        })
}

/// `--limit`.
fn limit(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number of grants from 1 to {MAX_LIST_LIMIT}"
        )),
    }
}

/// A grant id argument, checked as the server checks it (the reason never
/// quotes the text).
fn grant_id(s: &str) -> Result<GrantId, String> {
    GrantId::parse(s)
}

fn state_to_pb(state: GrantState) -> pb::GrantState {
    match state {
        GrantState::Pending => pb::GrantState::Pending,
        GrantState::Active => pb::GrantState::Active,
        GrantState::Rejected => pb::GrantState::Rejected,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::Expired => pb::GrantState::Expired,
        GrantState::Exhausted => pb::GrantState::Exhausted,
    }
}

/// A grant's state as `--state` spells it (`active`), `unknown(N)` for a
/// number this client does not know.
pub(crate) fn state_name(state: i32) -> String {
    let known = GrantState::ALL
        .into_iter()
        .find(|s| state_to_pb(*s) as i32 == state);
    known.map_or_else(|| format!("unknown({state})"), |s| s.as_str().to_owned())
}

pub(crate) async fn grants(command: GrantsCommand) -> ExitCode {
    match command {
        GrantsCommand::Request(args) => request(args).await,
        GrantsCommand::Approve(args) => approve(args).await,
        GrantsCommand::Reject(args) => end(args, End::Reject).await,
        GrantsCommand::Revoke(args) => end(args, End::Revoke).await,
        GrantsCommand::List(args) => list(args).await,
        GrantsCommand::Show(args) => show(args).await,
    }
}

/// A connected Grants client and how to map its failed calls.
struct Session {
    client: GrantsClient<Channel>,
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
            client: GrantsClient::new(channel),
            status: conn.call_status().when_late(late),
            json: conn.json,
        })
    }

    /// Runs one call within `--timeout`; a failure is printed and becomes
    /// the exit code. The grant of the answer, or INTERNAL when it holds
    /// none.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        grant: impl FnOnce(T) -> Option<pb::Grant>,
    ) -> Result<pb::Grant, ExitCode> {
        let answer = self
            .status
            .bound(call)
            .await
            .map_err(|s| call_failed(self.json, &Failure::from_status(&s), 0))?;
        grant(answer.into_inner()).ok_or_else(|| {
            call_failed(
                self.json,
                &Failure::new(tonic::Code::Internal, "the server's answer holds no grant"),
                0,
            )
        })
    }
}

async fn request(args: RequestArgs) -> ExitCode {
    let json = args.conn.json;
    // The server checks these too; said here, nothing is sent.
    let mut kinds: Vec<FieldKind> = Vec::new();
    for k in &args.kind {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    if kinds.len() > MAX_GRANT_KINDS {
        return call_failed(
            json,
            &Failure::invalid(
                "--kind",
                &format!("names more than {MAX_GRANT_KINDS} kinds"),
            ),
            0,
        );
    }
    if args.tokens.len() > MAX_GRANT_TOKENS {
        return call_failed(
            json,
            &Failure::invalid(
                "--token",
                &format!("is given more than {MAX_GRANT_TOKENS} times"),
            ),
            0,
        );
    }
    let session = match Session::connect(
        &args.conn,
        "the server may have stored the grant before it passed (see `fieldvault grants list \
         --state pending`)",
    )
    .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let request = pb::RequestGrantRequest {
        caller: args.caller.clone().unwrap_or_default(),
        kinds: kinds
            .iter()
            .map(|k| fieldvault::grpc::kind_to_pb(*k) as i32)
            .collect(),
        purpose: args.purpose.clone(),
        max_reveals: args.max_reveals,
        valid_for: Some(fieldvault::client::ttl(args.valid_for)),
        reason: args.reason.clone(),
        tokens: args.tokens.clone(),
    };
    let mut client = session.client.clone();
    let grant = match session
        .call(client.request_grant(request), |r| r.grant)
        .await
    {
        Ok(g) => g,
        Err(code) => return code,
    };
    if json {
        emit!("{}", grant_json(&grant));
    } else {
        emit!("{}", grant.grant_id);
        eprintln!(
            "fieldvault: grant {} is {}: it needs {} approval{} (see `fieldvault grants show {}`)",
            grant.grant_id,
            state_name(grant.state),
            grant.approvals_required,
            if grant.approvals_required == 1 {
                ""
            } else {
                "s"
            },
            grant.grant_id
        );
    }
    ExitCode::from(EXIT_OK)
}

async fn approve(args: IdArgs) -> ExitCode {
    let session = match Session::connect(
        &args.conn,
        "the server may have recorded the approval before it passed (see `fieldvault grants \
         show`)",
    )
    .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let request = pb::ApproveGrantRequest {
        grant_id: args.id.to_string(),
    };
    let grant = match session
        .call(client.approve_grant(request), |r| r.grant)
        .await
    {
        Ok(g) => g,
        Err(code) => return code,
    };
    if session.json {
        emit!("{}", grant_json(&grant));
    } else {
        emit!("{}", state_line(&grant));
    }
    ExitCode::from(EXIT_OK)
}

#[derive(Clone, Copy)]
enum End {
    Reject,
    Revoke,
}

async fn end(args: EndArgs, how: End) -> ExitCode {
    let session = match Session::connect(
        &args.conn,
        "the server may have ended the grant before it passed (see `fieldvault grants show`)",
    )
    .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let grant_id = args.id.to_string();
    let reason = args.reason.clone();
    let answer = match how {
        End::Reject => {
            session
                .call(
                    client.reject_grant(pb::RejectGrantRequest { grant_id, reason }),
                    |r| r.grant,
                )
                .await
        }
        End::Revoke => {
            session
                .call(
                    client.revoke_grant(pb::RevokeGrantRequest { grant_id, reason }),
                    |r| r.grant,
                )
                .await
        }
    };
    let grant = match answer {
        Ok(g) => g,
        Err(code) => return code,
    };
    if session.json {
        emit!("{}", grant_json(&grant));
    } else {
        emit!("{}", state_line(&grant));
    }
    ExitCode::from(EXIT_OK)
}

async fn list(args: ListArgs) -> ExitCode {
    let session = match Session::connect(&args.conn, "").await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let request = pb::ListGrantsRequest {
        state: args.state.map_or(pb::GrantState::Unspecified, state_to_pb) as i32,
        caller: args.caller.clone().unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let grants = match session.status.bound(client.list_grants(request)).await {
        Ok(answer) => answer.into_inner().grants,
        Err(s) => return call_failed(session.json, &Failure::from_status(&s), 0),
    };
    if session.json {
        // A listing carries no token lists (`grants show` has them): the
        // key is left out rather than shown empty, which would read as
        // "any token".
        let list: Vec<Value> = grants
            .iter()
            .map(|g| {
                let mut j = grant_json(g);
                if let Some(o) = j.as_object_mut() {
                    o.remove("tokens");
                }
                j
            })
            .collect();
        emit!("{}", json!({ "grants": list, "count": grants.len() }));
    } else {
        for g in &grants {
            emit!("{}", list_line(g));
        }
        eprintln!(
            "fieldvault: {} grant{}",
            grants.len(),
            if grants.len() == 1 { "" } else { "s" }
        );
    }
    ExitCode::from(EXIT_OK)
}

async fn show(args: IdArgs) -> ExitCode {
    let session = match Session::connect(&args.conn, "").await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let request = pb::GetGrantRequest {
        grant_id: args.id.to_string(),
    };
    let grant = match session.call(client.get_grant(request), |r| r.grant).await {
        Ok(g) => g,
        Err(code) => return code,
    };
    if session.json {
        emit!("{}", grant_json(&grant));
    } else {
        emit!("{}", show_text(&grant).trim_end());
    }
    ExitCode::from(EXIT_OK)
}

/// A time the server sent (Unix ms) as RFC 3339 UTC; `none` for 0.
fn time(unix_ms: u64) -> String {
    time_or(unix_ms, "none")
}

fn time_or(unix_ms: u64, none: &str) -> String {
    if unix_ms == 0 {
        return none.to_owned();
    }
    fieldvault::domain::time::rfc3339(unix_ms)
}

fn kinds_of(g: &pb::Grant) -> Vec<String> {
    g.kinds.iter().map(|k| kind_name(*k)).collect()
}

/// A grant as JSON: the proto's field names, state and kinds as the
/// command line spells them, every time both as milliseconds and as
/// RFC 3339 (null when never).
pub(crate) fn grant_json(g: &pb::Grant) -> Value {
    let text = |v: u64| (v != 0).then(|| fieldvault::domain::time::rfc3339(v));
    let approvals: Vec<Value> = g
        .approvals
        .iter()
        .map(|a| {
            json!({
                "approver": a.approver,
                "approved_unix_ms": a.approved_unix_ms,
                "approved": text(a.approved_unix_ms),
            })
        })
        .collect();
    json!({
        "grant_id": g.grant_id,
        "state": state_name(g.state),
        "caller": g.caller,
        "requested_by": g.requested_by,
        "kinds": kinds_of(g),
        "purpose": g.purpose,
        "max_reveals": g.max_reveals,
        "used": g.used,
        "remaining": g.remaining,
        "created_unix_ms": g.created_unix_ms,
        "created": text(g.created_unix_ms),
        "expires_unix_ms": g.expires_unix_ms,
        "expires": text(g.expires_unix_ms),
        "reason": g.reason,
        "tokens": g.tokens,
        "rule": g.rule,
        "reveal": reveal_name(g.reveal),
        "approvals_required": g.approvals_required,
        "approvers": g.approvers,
        "approvals": approvals,
        "activated_unix_ms": (g.activated_unix_ms != 0).then_some(g.activated_unix_ms),
        "activated": text(g.activated_unix_ms),
        "ended_by": (!g.ended_by.is_empty()).then_some(g.ended_by.as_str()),
        "ended_unix_ms": (g.ended_unix_ms != 0).then_some(g.ended_unix_ms),
        "ended": text(g.ended_unix_ms),
        "end_reason": (!g.end_reason.is_empty()).then_some(g.end_reason.as_str()),
    })
}

/// What `approve`, `reject` and `revoke` print: the grant's state after
/// the call, and what it means.
///
/// ```text
/// 6f1c…: pending: 1 of 2 approvals (spiffe://fieldvault.dev/approver1)
/// 6f1c…: active: 2 of 2 approvals; 0 of 10 reveals used, until 2026-11-28T20:00:00Z
/// 6f1c…: revoked by spiffe://fieldvault.dev/admin at 2026-11-27T21:00:00Z (reason: done)
/// ```
fn state_line(g: &pb::Grant) -> String {
    let state = state_name(g.state);
    let approvers: Vec<&str> = g.approvals.iter().map(|a| a.approver.as_str()).collect();
    let approvals = format!(
        "{} of {} approval{}{}",
        g.approvals.len(),
        g.approvals_required,
        if g.approvals_required == 1 { "" } else { "s" },
        if approvers.is_empty() {
            String::new()
        } else {
            format!(" ({})", approvers.join(", "))
        }
    );
    match pb::GrantState::try_from(g.state) {
        Ok(pb::GrantState::Pending) => format!("{}: {state}: {approvals}", g.grant_id),
        Ok(pb::GrantState::Active) | Ok(pb::GrantState::Exhausted) => format!(
            "{}: {state}: {approvals}; {} of {} reveals used, until {}",
            g.grant_id,
            g.used,
            g.max_reveals,
            time(g.expires_unix_ms)
        ),
        Ok(pb::GrantState::Rejected) | Ok(pb::GrantState::Revoked) => format!(
            "{}: {state} by {} at {}{}",
            g.grant_id,
            g.ended_by,
            time(g.ended_unix_ms),
            if g.end_reason.is_empty() {
                String::new()
            } else {
                format!(" (reason: {})", g.end_reason)
            }
        ),
        Ok(pb::GrantState::Expired) => {
            format!("{}: {state} at {}", g.grant_id, time(g.expires_unix_ms))
        }
        Ok(pb::GrantState::Unspecified) | Err(_) => format!("{}: {state}", g.grant_id),
    }
}

/// One `list` line, tab-separated: id, state, workflow, kinds, purpose,
/// used/max, expires, requested by.
fn list_line(g: &pb::Grant) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}/{}\texpires {}\trequested by {}",
        g.grant_id,
        state_name(g.state),
        g.caller,
        kinds_of(g).join(","),
        g.purpose,
        g.used,
        g.max_reveals,
        time(g.expires_unix_ms),
        g.requested_by
    )
}

/// What `show` prints, one item a line.
/// A grant's reveal level, as the policy writes it.
fn reveal_name(reveal: i32) -> String {
    match pb::Reveal::try_from(reveal) {
        Ok(pb::Reveal::Full) => "full".into(),
        Ok(pb::Reveal::Masked) => "masked".into(),
        Ok(pb::Reveal::None) => "none".into(),
        _ => format!("unknown ({reveal})"),
    }
}

fn show_text(g: &pb::Grant) -> String {
    let mut out = format!("grant {}\n", g.grant_id);
    let mut line = |label: &str, value: &str| out.push_str(&format!("  {label}: {value}\n"));
    line("state", &state_name(g.state));
    line("caller", &g.caller);
    line("requested by", &g.requested_by);
    line("kinds", &kinds_of(g).join(", "));
    line("purpose", &g.purpose);
    line(
        "reveals",
        &format!(
            "{} used, {} remaining of {}",
            g.used, g.remaining, g.max_reveals
        ),
    );
    line("created", &time(g.created_unix_ms));
    line("expires", &time(g.expires_unix_ms));
    line("activated", &time_or(g.activated_unix_ms, "never"));
    line("reason", &g.reason);
    line(
        "tokens",
        &if g.tokens.is_empty() {
            "any token of its kinds".to_owned()
        } else {
            format!("only these {}: {}", g.tokens.len(), g.tokens.join(", "))
        },
    );
    line("rule", &format!("'{}'", g.rule));
    line("reveals at most", &reveal_name(g.reveal));
    line(
        "approvals",
        &format!("{} of {} required", g.approvals.len(), g.approvals_required),
    );
    for a in &g.approvals {
        out.push_str(&format!(
            "    approved by {} at {}\n",
            a.approver,
            time(a.approved_unix_ms)
        ));
    }
    let mut line = |label: &str, value: &str| out.push_str(&format!("  {label}: {value}\n"));
    line(
        "approvers",
        &if g.approvers.is_empty() {
            "callers with a policy rule action = \"grants\"".to_owned()
        } else {
            g.approvers.join(", ")
        },
    );
    if !g.ended_by.is_empty() || g.ended_unix_ms != 0 {
        line(
            "ended",
            &format!(
                "by {} at {}{}",
                g.ended_by,
                time(g.ended_unix_ms),
                if g.end_reason.is_empty() {
                    String::new()
                } else {
                    format!(", reason: {}", g.end_reason)
                }
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant() -> pb::Grant {
        pb::Grant {
            grant_id: "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab".into(),
            state: pb::GrantState::Active as i32,
            caller: "spiffe://fieldvault.dev/fulfilment".into(),
            requested_by: "spiffe://fieldvault.dev/fulfilment".into(),
            kinds: vec![pb::FieldKind::Address as i32],
            purpose: "shipping".into(),
            max_reveals: 10,
            used: 1,
            remaining: 9,
            created_unix_ms: 1_764_236_700_000,
            expires_unix_ms: 1_764_244_000_000,
            reason: "batch 7".into(),
            tokens: vec![],
            rule: "fulfilment".into(),
            approvals_required: 2,
            approvers: vec![
                "spiffe://fieldvault.dev/approver1".into(),
                "spiffe://fieldvault.dev/approver2".into(),
            ],
            approvals: vec![
                pb::GrantApproval {
                    approver: "spiffe://fieldvault.dev/approver1".into(),
                    approved_unix_ms: 1_764_236_760_000,
                },
                pb::GrantApproval {
                    approver: "spiffe://fieldvault.dev/approver2".into(),
                    approved_unix_ms: 1_764_236_820_000,
                },
            ],
            activated_unix_ms: 1_764_236_820_000,
            ended_by: String::new(),
            ended_unix_ms: 0,
            end_reason: String::new(),
            reveal: pb::Reveal::Full as i32,
        }
    }

    #[test]
    fn show_prints_use_times_and_who_approved_when() {
        let expected = "grant 6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab
  state: active
  caller: spiffe://fieldvault.dev/fulfilment
  requested by: spiffe://fieldvault.dev/fulfilment
  kinds: address
  purpose: shipping
  reveals: 1 used, 9 remaining of 10
  created: 2025-11-27T09:45:00Z
  expires: 2025-11-27T11:46:40Z
  activated: 2025-11-27T09:47:00Z
  reason: batch 7
  tokens: any token of its kinds
  rule: 'fulfilment'
  reveals at most: full
  approvals: 2 of 2 required
    approved by spiffe://fieldvault.dev/approver1 at 2025-11-27T09:46:00Z
    approved by spiffe://fieldvault.dev/approver2 at 2025-11-27T09:47:00Z
  approvers: spiffe://fieldvault.dev/approver1, spiffe://fieldvault.dev/approver2
";
        assert_eq!(show_text(&grant()), expected);
        let mut revoked = grant();
        revoked.state = pb::GrantState::Revoked as i32;
        revoked.ended_by = "spiffe://fieldvault.dev/admin".into();
        revoked.ended_unix_ms = 1_764_237_000_000;
        revoked.end_reason = "batch done".into();
        let text = show_text(&revoked);
        assert!(
            text.ends_with(
                "  ended: by spiffe://fieldvault.dev/admin at 2025-11-27T09:50:00Z, reason: \
                 batch done\n"
            ),
            "{text}"
        );
        assert_eq!(
            state_line(&revoked),
            "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab: revoked by spiffe://fieldvault.dev/admin at \
             2025-11-27T09:50:00Z (reason: batch done)"
        );
    }

    #[test]
    fn the_state_line_says_how_many_approvals_and_reveals() {
        let mut g = grant();
        assert_eq!(
            state_line(&g),
            "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab: active: 2 of 2 approvals \
             (spiffe://fieldvault.dev/approver1, spiffe://fieldvault.dev/approver2); 1 of 10 \
             reveals used, until 2025-11-27T11:46:40Z"
        );
        g.state = pb::GrantState::Pending as i32;
        g.approvals.truncate(1);
        assert_eq!(
            state_line(&g),
            "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab: pending: 1 of 2 approvals \
             (spiffe://fieldvault.dev/approver1)"
        );
        assert_eq!(
            list_line(&g),
            "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab\tpending\tspiffe://fieldvault.dev/fulfilment\t\
             address\tshipping\t1/10\texpires 2025-11-27T11:46:40Z\trequested by \
             spiffe://fieldvault.dev/fulfilment"
        );
    }

    #[test]
    fn the_json_has_the_grant_id_and_every_field_with_times_in_both_forms() {
        let j = grant_json(&grant());
        assert_eq!(j["grant_id"], "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab");
        assert_eq!(j["state"], "active");
        assert_eq!(j["kinds"], json!(["address"]));
        assert_eq!(j["used"], 1);
        assert_eq!(j["remaining"], 9);
        assert_eq!(j["expires"], "2025-11-27T11:46:40Z");
        assert_eq!(j["expires_unix_ms"], 1_764_244_000_000_u64);
        assert_eq!(
            j["approvals"][1]["approver"],
            "spiffe://fieldvault.dev/approver2"
        );
        assert_eq!(j["approvals"][1]["approved"], "2025-11-27T09:47:00Z");
        assert_eq!(j["ended_by"], Value::Null);
        assert_eq!(j["end_reason"], Value::Null);
    }

    #[test]
    fn every_state_has_its_name_and_an_unknown_one_its_number() {
        for s in GrantState::ALL {
            assert_eq!(state_name(state_to_pb(s) as i32), s.as_str());
            assert_eq!(state(s.as_str()), Ok(s));
        }
        assert_eq!(state_name(42), "unknown(42)");
        assert_eq!(
            state("+1 202-555-0123"),
            Err(
                "expected one of: pending, active, rejected, revoked, expired, exhausted"
                    .to_owned()
            )
        );
    }

    #[test]
    fn bad_numbers_and_durations_are_refused_without_quoting_them() {
        for bad in ["0", "x", "+12025550123", "-1", "99999999999"] {
            let e = max_reveals(bad).unwrap_err();
            assert!(!e.contains("202") && !e.contains("999"), "{e}");
        }
        assert_eq!(max_reveals("10"), Ok(10));
        assert_eq!(valid_for("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert_eq!(
            valid_for("7d"),
            Ok(std::time::Duration::from_secs(7 * 86_400))
        );
        for (bad, says) in [
            ("0s", "is 0s"),
            ("-2h", "is negative"),
            ("5", "needs a unit"),
            ("5 fortnights", "unknown unit"),
            ("soon", "is not a duration"),
        ] {
            let e = valid_for(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("fortnight") && !e.contains("soon"), "{e}");
        }
        assert!(limit("0").is_err() && limit("1001").is_err());
        assert_eq!(limit("1000"), Ok(1000));
        assert!(grant_id("not-a-grant").is_err());
    }
}
