//! `fieldvault callers …` and `fieldvault canary …`: abuse administration
//! against a running server (the Admin service), with the client commands'
//! connection flags. Every command prints its answer on stdout (one JSON
//! object with `--json`).

use super::conn::{CallStatus, Conn};
use super::output::{call_failed, emit, kind_name, Failure, EXIT_OK};
use clap::{Args, Subcommand};
use fieldvault::grpc::pb;
use fieldvault::vault::MAX_CANARIES_PER_CALL;
use serde_json::{json, Value};
use std::process::ExitCode;

const EXIT_CODES_HELP: &str = "Exit codes: 0 done; 2 the call failed (connection, TLS, refused \
    by the server, bad arguments; with --json, the error is a JSON object on stdout). \
    Unfreezing a caller that is not frozen, or freezing one that is, fails with \
    FAILED_PRECONDITION and changes nothing. The caller needs a policy rule with action \
    \"admin\" (the dev identity admin has one); every call is audited.";

#[derive(Subcommand)]
pub(crate) enum CallersCommand {
    /// Every caller the policy names, or that is frozen or has a quota
    /// count: frozen (since when, by whom, why), deny-listed, and its use
    /// of each quota in the current window (used/limit, when it resets).
    List(ListArgs),
    /// Freeze a caller now: every call from it is refused with
    /// FAILED_PRECONDITION until it is unfrozen, whatever its policy says.
    Freeze(FreezeArgs),
    /// Lift a caller's freeze (and restart its freeze counters; its quota
    /// counts stay).
    Unfreeze(UnfreezeArgs),
}

#[derive(Subcommand)]
pub(crate) enum CanaryCommand {
    /// Create canary tokens for a field kind: they look exactly like real
    /// tokens and have no value behind them. Plant them in other systems'
    /// tables: detokenizing one freezes the caller, whatever its policy
    /// says, and raises the alert. Prints the tokens, one a line, and
    /// nothing else.
    Create(CreateArgs),
    /// Every canary token: token, kind, creation time, creator
    /// (tab-separated).
    List(ListArgs),
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct FreezeArgs {
    /// The caller: its SPIFFE ID (spiffe://fieldvault.dev/support) or its
    /// certificate's common name.
    #[arg(value_name = "ID")]
    caller: String,
    /// Why (required, at most 200 characters): kept in the audit trail and
    /// told to the frozen caller with every refusal.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct UnfreezeArgs {
    /// The caller: its SPIFFE ID or its certificate's common name.
    #[arg(value_name = "ID")]
    caller: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct CreateArgs {
    /// The field kind the tokens pass for: phone, email, address or
    /// national_id.
    #[arg(long)]
    kind: fieldvault::domain::FieldKind,
    /// How many tokens (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = count)]
    count: u32,
    #[command(flatten)]
    conn: Conn,
}

/// `--count`. The refusal does not quote the value (a value in the wrong
/// place may be a phone number).
fn count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_CANARIES_PER_CALL).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number of tokens from 1 to {MAX_CANARIES_PER_CALL}"
        )),
    }
}

pub(crate) async fn callers(command: CallersCommand) -> ExitCode {
    match command {
        CallersCommand::List(args) => list_callers(args).await,
        CallersCommand::Freeze(args) => freeze(args).await,
        CallersCommand::Unfreeze(args) => unfreeze(args).await,
    }
}

pub(crate) async fn canary(command: CanaryCommand) -> ExitCode {
    match command {
        CanaryCommand::Create(args) => create_canaries(args).await,
        CanaryCommand::List(args) => list_canaries(args).await,
    }
}

/// A connected Admin client and how to map its failed calls.
struct Session {
    client: fieldvault::client::Admin,
    status: CallStatus,
    json: bool,
}

impl Session {
    async fn connect(conn: &Conn) -> Result<Self, ExitCode> {
        let channel = conn
            .channel()
            .await
            .map_err(|e| call_failed(conn.json, &Failure::from_client(&e), 0))?;
        Ok(Self {
            client: fieldvault::client::Admin::new(channel),
            status: conn.call_status(),
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

async fn list_callers(args: ListArgs) -> ExitCode {
    let session = match Session::connect(&args.conn).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let callers = match session.call(client.list_callers()).await {
        Ok(callers) => callers,
        Err(code) => return code,
    };
    if session.json {
        let list: Vec<Value> = callers.iter().map(caller_json).collect();
        emit!("{}", json!({ "callers": list }));
    } else {
        emit!("{}", callers_text(&callers).trim_end());
    }
    ExitCode::from(EXIT_OK)
}

async fn freeze(args: FreezeArgs) -> ExitCode {
    let session = match Session::connect(&args.conn).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let freeze = match session
        .call(client.freeze_caller(&args.caller, &args.reason))
        .await
    {
        Ok(f) => f,
        Err(code) => return code,
    };
    if session.json {
        emit!(
            "{}",
            json!({ "caller": args.caller, "frozen": freeze_json(&freeze) })
        );
    } else {
        emit!(
            "{} is frozen since {} (by {}, reason: {}); every call from it is refused until \
             `fieldvault callers unfreeze {}`",
            args.caller,
            time(freeze.since_unix_ms),
            freeze.by,
            freeze.reason,
            args.caller
        );
    }
    ExitCode::from(EXIT_OK)
}

async fn unfreeze(args: UnfreezeArgs) -> ExitCode {
    let session = match Session::connect(&args.conn).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let lifted = match session.call(client.unfreeze_caller(&args.caller)).await {
        Ok(f) => f,
        Err(code) => return code,
    };
    if session.json {
        emit!(
            "{}",
            json!({ "caller": args.caller, "unfrozen": freeze_json(&lifted) })
        );
    } else {
        emit!(
            "{} is unfrozen (it was frozen since {} by {}, reason: {})",
            args.caller,
            time(lifted.since_unix_ms),
            lifted.by,
            lifted.reason
        );
    }
    ExitCode::from(EXIT_OK)
}

async fn create_canaries(args: CreateArgs) -> ExitCode {
    let session = match Session::connect(&args.conn).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let tokens = match session
        .call(client.create_canaries(args.kind, args.count))
        .await
    {
        Ok(tokens) => tokens,
        Err(code) => return code,
    };
    if session.json {
        emit!(
            "{}",
            json!({ "kind": args.kind.as_str(), "tokens": tokens })
        );
    } else {
        for token in &tokens {
            emit!("{token}");
        }
    }
    ExitCode::from(EXIT_OK)
}

async fn list_canaries(args: ListArgs) -> ExitCode {
    let session = match Session::connect(&args.conn).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = session.client.clone();
    let canaries = match session.call(client.list_canaries()).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if session.json {
        let list: Vec<Value> = canaries.iter().map(canary_json).collect();
        emit!("{}", json!({ "canaries": list }));
    } else {
        for c in &canaries {
            emit!(
                "{}\t{}\t{}\t{}",
                c.token,
                kind_name(c.kind),
                time(c.created_unix_ms),
                c.created_by
            );
        }
    }
    ExitCode::from(EXIT_OK)
}

/// A time the server sent (Unix ms) as RFC 3339 UTC; `unknown` for 0.
fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "unknown".to_owned();
    }
    fieldvault::domain::time::rfc3339(unix_ms)
}

fn freeze_json(f: &pb::CallerFreeze) -> Value {
    json!({
        "since_unix_ms": f.since_unix_ms,
        "since": time(f.since_unix_ms),
        "by": f.by,
        "reason": f.reason,
    })
}

fn caller_json(c: &pb::CallerStatus) -> Value {
    let quotas: Vec<Value> = c
        .quotas
        .iter()
        .map(|q| {
            json!({
                "rule": q.rule,
                "used": q.used,
                "limit": q.limit,
                "per": q.per,
                "resets_unix_ms": q.resets_unix_ms,
                "resets": time(q.resets_unix_ms),
            })
        })
        .collect();
    json!({
        "caller": c.caller,
        "frozen": c.frozen.as_ref().map(freeze_json),
        "denied": c.denied,
        "quotas": quotas,
    })
}

fn canary_json(c: &pb::Canary) -> Value {
    json!({
        "token": c.token,
        "kind": kind_name(c.kind),
        "created_unix_ms": c.created_unix_ms,
        "created": time(c.created_unix_ms),
        "created_by": c.created_by,
    })
}

/// One line per caller (its state), then one line per quota of the rules
/// naming it:
///
/// ```text
/// spiffe://fieldvault.dev/support: FROZEN since 2026-11-27T15:00:00Z by vault, reason: …
///   quota 12/100 per minute, resets 2026-11-27T15:01:00Z (rule 'support sees …')
/// ```
fn callers_text(callers: &[pb::CallerStatus]) -> String {
    if callers.is_empty() {
        return "no callers: the policy names none, and none is frozen or has a quota count\n"
            .to_owned();
    }
    let mut out = String::new();
    for c in callers {
        let mut states = Vec::new();
        if let Some(f) = &c.frozen {
            states.push(format!(
                "FROZEN since {} by {}, reason: {}",
                time(f.since_unix_ms),
                f.by,
                f.reason
            ));
        }
        if c.denied {
            states.push("DENY-LISTED (refused before any rule)".to_owned());
        }
        if states.is_empty() {
            states.push("active".to_owned());
        }
        out.push_str(&format!("{}: {}\n", c.caller, states.join("; ")));
        for q in &c.quotas {
            out.push_str(&format!(
                "  quota {}/{} per {}, resets {} (rule '{}')\n",
                q.used,
                q.limit,
                q.per,
                time(q.resets_unix_ms),
                q.rule
            ));
        }
    }
    let frozen = callers.iter().filter(|c| c.frozen.is_some()).count();
    let denied = callers.iter().filter(|c| c.denied).count();
    out.push_str(&format!(
        "{} caller(s): {frozen} frozen, {denied} deny-listed\n",
        callers.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_list_shows_freezes_deny_listing_and_quota_use() {
        let callers = vec![
            pb::CallerStatus {
                caller: "spiffe://fieldvault.dev/orders".into(),
                frozen: None,
                denied: false,
                quotas: vec![],
            },
            pb::CallerStatus {
                caller: "spiffe://fieldvault.dev/support".into(),
                frozen: Some(pb::CallerFreeze {
                    since_unix_ms: 1_764_236_700_000,
                    reason: "asked to detokenize a canary token".into(),
                    by: "vault".into(),
                }),
                denied: true,
                quotas: vec![pb::QuotaUse {
                    rule: "support sees phone numbers".into(),
                    limit: 100,
                    per: "minute".into(),
                    used: 12,
                    resets_unix_ms: 1_764_236_760_000,
                }],
            },
        ];
        let expected = "spiffe://fieldvault.dev/orders: active
spiffe://fieldvault.dev/support: FROZEN since 2025-11-27T09:45:00Z by vault, reason: asked to \
detokenize a canary token; DENY-LISTED (refused before any rule)
  quota 12/100 per minute, resets 2025-11-27T09:46:00Z (rule 'support sees phone numbers')
2 caller(s): 1 frozen, 1 deny-listed
";
        assert_eq!(callers_text(&callers), expected);
        let j = caller_json(&callers[1]);
        assert_eq!(j["frozen"]["since"], "2025-11-27T09:45:00Z");
        assert_eq!(j["frozen"]["by"], "vault");
        assert_eq!(j["denied"], true);
        assert_eq!(j["quotas"][0]["used"], 12);
        assert_eq!(j["quotas"][0]["limit"], 100);
        assert_eq!(j["quotas"][0]["resets"], "2025-11-27T09:46:00Z");
        assert_eq!(caller_json(&callers[0])["frozen"], Value::Null);
    }

    #[test]
    fn a_refused_count_is_not_quoted() {
        for bad in ["0", "1001", "+12025550123", "x"] {
            assert_eq!(
                count(bad),
                Err("must be a whole number of tokens from 1 to 1000".into())
            );
        }
        assert_eq!(count("1000"), Ok(1000));
    }
}
