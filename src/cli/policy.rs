//! `fieldvault policy check|explain`: a policy file, offline (no server).
//! `check` validates a file as the server would read it; `explain` says
//! which rule decides a call, or why none does.

use super::output::{call_failed, emit, Failure};
use clap::{Args, Subcommand};
use fieldvault::config::Config;
use fieldvault::domain::policy::{Action, Denial, DeniedOn, Policy, PolicyError, Rule, Ruling};
use fieldvault::domain::{CallerId, FieldKind, Justification, Purpose};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `check`: the file is a valid policy. `explain`: the call is allowed.
const EXIT_OK: u8 = 0;
/// `check`: the file was read and is not a valid policy (the error names
/// the line). `explain`: the call is denied.
const EXIT_NO: u8 = 1;
/// Nothing was checked or decided: bad arguments, a file that cannot be
/// read (or that the server would refuse to read), and for `explain` a
/// policy file that is not valid.
const EXIT_FAILED: u8 = 2;

const CHECK_HELP: &str = "Reads FILE as the server does (a regular file, not writable by group \
    or others, in a directory only its owner can write) and checks every rule, quota, \
    justification pattern, the deny list and the [freeze] table.\n\nExit codes: 0 the file is \
    a valid policy (a one-line summary is printed); 1 it is not (the error names the line); 2 \
    it could not be checked (it cannot be read, or the server would refuse to read it: the \
    error says why).";

const EXPLAIN_HELP: &str = "Decides as the server does: the deny list first, then the rules \
    for the caller, the action, the purpose and the justification, then the field kind; when \
    several rules allow a reveal, the most revealing wins (among equals, the first in the \
    file). Prints the rule that decided (its name, line, reveal, quotas and justification \
    pattern) or the dimension that no rule matched and why. The policy file is --policy FILE, \
    else the policy_file of --config FILE, else DATA_DIR/dev/policy.toml of a `serve --dev` \
    setup (--data-dir, FIELDVAULT_DATA_DIR or ./fieldvault-data); the first line printed names \
    it. What the policy file cannot tell is left out: a frozen caller is refused whatever its \
    rules say, and a quota may be used up (see `fieldvault callers list`). A rule with \
    requires_grant = true allows nothing by itself: without --under-grant such a call is \
    DENIED on grant; with it, the answer is as if the call named an active grant that covers \
    the item (whether one exists is the server's to say: `fieldvault grants list`).\n\nExit \
    codes: 0 \
    allowed; 1 denied; 2 no decision (bad arguments, no policy file, a file that cannot be \
    read or is not a valid policy).";

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy file, offline: exit 0 when it is valid.
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Which rule decides a call, or why none does, offline.
    #[command(after_help = EXPLAIN_HELP)]
    Explain(ExplainArgs),
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The policy file to check.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// The caller: a SPIFFE ID (spiffe://fieldvault.dev/support) or a
    /// certificate common name.
    #[arg(long, value_name = "ID")]
    caller: String,
    /// The action: tokenize, detokenize, keys, admin, delete, inspect,
    /// erase, export, backup or grants.
    #[arg(long, value_name = "ACTION", value_parser = action)]
    action: Action,
    /// The field kind (tokenize and detokenize; required for them): phone,
    /// email, address or national_id.
    #[arg(long)]
    kind: Option<FieldKind>,
    /// The declared purpose (tokenize and detokenize; detokenize needs
    /// one).
    #[arg(long, value_name = "PURPOSE")]
    purpose: Option<String>,
    /// The justification given with a detokenize (checked against a rule's
    /// pattern; never printed).
    #[arg(long, value_name = "TEXT")]
    justification: Option<String>,
    /// Detokenize only: decide as if the call named an active grant that
    /// covers the item (rules with requires_grant = true count too).
    #[arg(long)]
    under_grant: bool,
    /// The policy file to read.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "data_dir"])]
    policy: Option<PathBuf>,
    /// The server's config file: its policy_file is read.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory of a `serve --dev` setup: DATA_DIR/dev/policy.toml
    /// is read (default ./fieldvault-data, or FIELDVAULT_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print the decision as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// `--action`. The refusal names the choices, not the value.
fn action(s: &str) -> Result<Action, String> {
    Action::ALL
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| {
            format!(
                "expected one of: {}",
                Action::ALL.map(Action::as_str).join(", ")
            )
        })
}

pub(crate) fn policy(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Explain(args) => explain(args),
    }
}

/// Why nothing could be checked or decided: printed like any whole-call
/// failure (JSON on stdout with `--json`, else a line on stderr), exit 2.
fn failed(json: bool, failure: Failure) -> ExitCode {
    call_failed(json, &failure, 0);
    ExitCode::from(EXIT_FAILED)
}

/// What went wrong reading a policy file.
enum ReadError {
    /// The file cannot be read, or the server would not read it.
    Unreadable(String),
    /// It was read and is not a valid policy.
    Invalid(PolicyError),
}

/// Reads and parses `path` as the server does.
fn read_policy(path: &Path) -> Result<Policy, ReadError> {
    let text = fieldvault::policy_file::read_text(path)
        .map_err(|e| ReadError::Unreadable(e.to_string()))?
        .map_err(|why| ReadError::Invalid(PolicyError::Syntax(why)))?;
    Policy::from_toml(&text).map_err(ReadError::Invalid)
}

/// The line a policy error names, if any.
fn error_line(e: &PolicyError) -> Option<usize> {
    match e {
        PolicyError::Rule { line, .. } | PolicyError::Setting { line, .. } => Some(*line),
        // toml's own error: "line 3, column 10: …".
        PolicyError::Syntax(message) => {
            let rest = &message[message.find("line ")? + "line ".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        }
        PolicyError::Version(_) => None,
    }
}

/// `5 rules (1 tokenize, 2 detokenize, 1 keys, 1 admin), 1 deny-listed identity`
fn summary(policy: &Policy) -> String {
    let rules = policy.rules();
    let by_action: Vec<String> = Action::ALL
        .into_iter()
        .map(|a| (a, rules.iter().filter(|r| r.action == a).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(a, n)| format!("{n} {a}"))
        .collect();
    let deny = policy.deny_list().len();
    format!(
        "{} rule{}{}, {deny} deny-listed identit{}",
        rules.len(),
        if rules.len() == 1 { "" } else { "s" },
        if by_action.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_action.join(", "))
        },
        if deny == 1 { "y" } else { "ies" }
    )
}

fn check(args: CheckArgs) -> ExitCode {
    let file = args.file.display().to_string();
    match read_policy(&args.file) {
        Ok(policy) => {
            if args.json {
                let by_action: serde_json::Map<String, Value> = Action::ALL
                    .into_iter()
                    .map(|a| {
                        let n = policy.rules().iter().filter(|r| r.action == a).count();
                        (a.as_str().to_owned(), json!(n))
                    })
                    .collect();
                emit!(
                    "{}",
                    json!({
                        "file": file,
                        "valid": true,
                        "rules": policy.rules().len(),
                        "rules_by_action": by_action,
                        "deny": policy.deny_list(),
                    })
                );
            } else {
                emit!("{file}: a valid policy: {}", summary(&policy));
            }
            ExitCode::from(EXIT_OK)
        }
        Err(ReadError::Invalid(e)) => {
            if args.json {
                emit!(
                    "{}",
                    json!({
                        "file": file,
                        "valid": false,
                        "error": { "message": e.to_string(), "line": error_line(&e) },
                    })
                );
            } else {
                eprintln!("fieldvault: {file}: not a valid policy: {e}");
            }
            ExitCode::from(EXIT_NO)
        }
        Err(ReadError::Unreadable(e)) => failed(
            args.json,
            Failure::new(tonic::Code::InvalidArgument, format!("not checked: {e}")),
        ),
    }
}

/// Which policy file `explain` reads.
fn policy_file_of(args: &ExplainArgs) -> Result<PathBuf, Failure> {
    if let Some(path) = &args.policy {
        return Ok(path.clone());
    }
    if let Some(path) = &args.config {
        let env = |k: &str| std::env::var(k).ok();
        return Config::load(path, &env)
            .map(|c| c.policy_file)
            .map_err(|e| Failure::invalid("--config", &e.to_string()));
    }
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| {
            std::env::var_os("FIELDVAULT_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DATA_DIR));
    let path = fieldvault::dev::dev_dir(&data_dir).join("policy.toml");
    if !path.exists() {
        return Err(Failure::new(
            tonic::Code::InvalidArgument,
            format!(
                "no policy file given and no dev policy at {}: give --policy FILE, --config FILE \
                 (the server's config) or --data-dir DIR (the data directory of `fieldvault \
                 serve --dev`)",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// The request `explain` decides, its arguments checked as the server
/// checks them.
struct Question {
    caller: CallerId,
    action: Action,
    kind: Option<FieldKind>,
    purpose: Option<Purpose>,
    justification: Option<String>,
    /// As if the call named an active grant that covers the item.
    under_grant: bool,
}

fn question(args: &ExplainArgs) -> Result<Question, Failure> {
    let caller = CallerId::parse(&args.caller).map_err(|e| {
        Failure::invalid(
            "--caller",
            &format!("neither a SPIFFE ID nor a certificate common name: {e}"),
        )
    })?;
    let action = args.action;
    let data = action.is_data();
    if !data {
        for (flag, given) in [
            ("--kind", args.kind.is_some()),
            ("--purpose", args.purpose.is_some()),
            ("--justification", args.justification.is_some()),
        ] {
            if given {
                return Err(Failure::invalid(
                    flag,
                    &format!(
                        "a{} {action} call concerns no field kind, purpose or justification: \
                         leave {flag} out",
                        if action == Action::Admin { "n" } else { "" }
                    ),
                ));
            }
        }
    }
    if data && args.kind.is_none() {
        return Err(Failure::invalid(
            "--kind",
            &format!(
                "is required for a {action} call (expected one of: phone, address, \
                 national_id, email)"
            ),
        ));
    }
    if args.under_grant && action != Action::Detokenize {
        return Err(Failure::invalid(
            "--under-grant",
            "only a detokenize reveals under a grant: leave it out",
        ));
    }
    if action == Action::Tokenize && args.justification.is_some() {
        return Err(Failure::invalid(
            "--justification",
            "only a detokenize takes a justification: leave it out",
        ));
    }
    if action == Action::Detokenize && args.purpose.is_none() {
        // The server refuses such a call before any rule (INVALID_ARGUMENT).
        return Err(Failure::invalid(
            "--purpose",
            "a detokenize needs a purpose (the server refuses one without: INVALID_ARGUMENT)",
        ));
    }
    let purpose = args
        .purpose
        .as_deref()
        .map(Purpose::parse)
        .transpose()
        .map_err(|e| Failure::invalid("--purpose", &e.to_string()))?;
    let justification = args
        .justification
        .as_deref()
        .map(Justification::parse)
        .transpose()
        .map_err(|e| Failure::invalid("--justification", &e.to_string()))?
        .map(|j| j.as_str().to_owned())
        // An empty justification is none, as the server takes it.
        .filter(|j| !j.is_empty());
    Ok(Question {
        caller,
        action,
        kind: args.kind,
        purpose,
        justification,
        under_grant: args.under_grant,
    })
}

/// The decision, as the server makes it.
fn decide(policy: &Policy, q: &Question) -> Result<Ruling, Denial> {
    policy.check_deny_list(&q.caller)?;
    let purpose = q.purpose.as_ref();
    let justification = q.justification.as_deref();
    // The rule a grant for this kind and purpose would be requested under
    // (the server's choice: the most revealing rule that requires a
    // grant); none: no grant could cover it.
    let grant_rule = match (q.under_grant, q.kind, purpose) {
        (true, Some(kind), Some(p)) => policy
            .grant_rule_for(&q.caller, &[kind], p)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if q.under_grant {
        policy.check_call_under_grant(&q.caller, q.action, purpose, justification, &grant_rule)?;
    } else {
        policy.check_call(&q.caller, q.action, purpose, justification)?;
    }
    match q.kind {
        Some(kind) if q.under_grant => policy.decide_under_grant(
            &q.caller,
            q.action,
            kind,
            purpose,
            justification,
            &grant_rule,
        ),
        Some(kind) => policy.decide(&q.caller, q.action, kind, purpose, justification),
        // keys and admin: check_call was the whole decision; the rule is
        // the first that names the caller for the action.
        None => {
            let rule = policy
                .rules()
                .iter()
                .find(|r| r.action == q.action && r.callers.iter().any(|c| c == q.caller.as_str()));
            Ok(Ruling {
                reveal: None,
                rule: rule.map(|r| r.name.clone()).unwrap_or_default(),
                line: rule.map_or(0, |r| r.line),
                quotas: Vec::new(),
                under_grant: false,
            })
        }
    }
}

fn dimension(on: DeniedOn) -> &'static str {
    match on {
        DeniedOn::DenyList => "deny_list",
        DeniedOn::Caller => "caller",
        DeniedOn::Action => "action",
        DeniedOn::Kind => "kind",
        DeniedOn::Purpose => "purpose",
        DeniedOn::Justification => "justification",
        DeniedOn::Grant => "grant",
    }
}

/// What a grant's rule says, in words, one item a line.
fn grant_text(grant: &Ruling, rule: Option<&Rule>, action: Action) -> String {
    let mut out = format!("ALLOWED by rule '{}' (line {})\n", grant.rule, grant.line);
    match action {
        Action::Keys => {
            out.push_str("  allows: key administration (the KeyAdmin service), no data\n")
        }
        Action::Admin => out.push_str(
            "  allows: abuse administration (the Admin service: callers, freezes, canaries), no \
             data\n",
        ),
        Action::Backup => out.push_str(
            "  allows: encrypted backups of the whole store (records stay sealed), no values\n",
        ),
        Action::Grants => out.push_str(
            "  allows: grant administration (requesting grants for workflows, seeing and \
             revoking every grant), no data\n",
        ),
        Action::Tokenize
        | Action::Detokenize
        | Action::Delete
        | Action::Inspect
        | Action::Erase
        | Action::Export => {}
    }
    if let Some(reveal) = grant.reveal {
        out.push_str(&format!("  reveal: {}\n", reveal.as_str()));
    }
    if action == Action::Detokenize {
        let quotas: Vec<String> = grant.quotas.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "  quota: {}\n",
            if quotas.is_empty() {
                "none".to_owned()
            } else {
                format!("{} (values revealed per caller)", quotas.join(", "))
            }
        ));
        out.push_str(&format!(
            "  justification: {}\n",
            match rule.and_then(|r| r.justification.as_ref()) {
                Some(p) => format!("required, the whole of it matching '{}'", p.as_str()),
                None => "none required".to_owned(),
            }
        ));
        if let Some(g) = rule.and_then(|r| r.grant.as_ref()) {
            out.push_str(&format!(
                "  grant: required (only under an active grant; each value revealed consumes \
                 one of its reveals), {} approval{} by {}\n",
                g.approvals,
                if g.approvals == 1 { "" } else { "s" },
                if g.approvers.is_empty() {
                    "callers with a grants rule".to_owned()
                } else {
                    g.approvers.join(", ")
                }
            ));
        }
    }
    out
}

fn grant_json(grant: &Ruling, rule: Option<&Rule>) -> Value {
    json!({
        "name": grant.rule,
        "line": grant.line,
        "reveal": grant.reveal.map(|r| r.as_str()),
        "quotas": grant.quotas.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "justification": rule.and_then(|r| r.justification.as_ref()).map(|p| p.as_str()),
        "requires_grant": grant.under_grant,
        "grant": rule.and_then(|r| r.grant.as_ref()).map(|g| json!({
            "approvals": g.approvals,
            "approvers": g.approvers,
        })),
    })
}

fn explain(args: ExplainArgs) -> ExitCode {
    let json = args.json;
    let q = match question(&args) {
        Ok(q) => q,
        Err(f) => return failed(json, f),
    };
    let path = match policy_file_of(&args) {
        Ok(path) => path,
        Err(f) => return failed(json, f),
    };
    let file = path.display().to_string();
    let policy = match read_policy(&path) {
        Ok(p) => p,
        Err(ReadError::Unreadable(e)) => {
            return failed(json, Failure::new(tonic::Code::InvalidArgument, e))
        }
        Err(ReadError::Invalid(e)) => {
            return failed(
                json,
                Failure::new(
                    tonic::Code::InvalidArgument,
                    format!("{file}: not a valid policy: {e}"),
                ),
            )
        }
    };
    match decide(&policy, &q) {
        Ok(grant) => {
            let rule = policy
                .rules()
                .iter()
                .find(|r| r.name == grant.rule && r.line == grant.line);
            if json {
                emit!(
                    "{}",
                    json!({
                        "policy_file": file,
                        "decision": "allowed",
                        "rule": grant_json(&grant, rule),
                    })
                );
            } else {
                emit!("policy {file}");
                emit!("{}", grant_text(&grant, rule, q.action).trim_end());
            }
            ExitCode::from(EXIT_OK)
        }
        Err(denial) => {
            if json {
                emit!(
                    "{}",
                    json!({
                        "policy_file": file,
                        "decision": "denied",
                        "denied_on": dimension(denial.on),
                        "message": denial.to_string(),
                    })
                );
            } else {
                emit!("policy {file}");
                emit!("DENIED on {}: {denial}", dimension(denial.on));
            }
            ExitCode::from(EXIT_NO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"version = 1
deny = ["spiffe://fieldvault.dev/leaver"]

[[rules]]
name = "support: phones for callbacks"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "masked"
quota = ["100/minute", "2000/day"]

[[rules]]
name = "support: phones in full with a ticket"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"
justification = "SUP-[0-9]+"

[[rules]]
name = "admin"
callers = ["spiffe://fieldvault.dev/admin", "spiffe://fieldvault.dev/leaver"]
action = "admin"
"#;

    fn ask(
        caller: &str,
        action: Action,
        kind: Option<FieldKind>,
        purpose: Option<&str>,
        justification: Option<&str>,
    ) -> Result<Ruling, Denial> {
        let policy = Policy::from_toml(POLICY).unwrap_or_else(|e| panic!("{e}"));
        let q = Question {
            caller: CallerId::spiffe(caller).unwrap_or_else(|e| panic!("{e}")),
            action,
            kind,
            purpose: purpose.map(|p| Purpose::parse(p).unwrap_or_else(|e| panic!("{e}"))),
            justification: justification.map(str::to_owned),
            under_grant: false,
        };
        decide(&policy, &q)
    }

    #[test]
    fn the_most_revealing_rule_whose_justification_matches_decides() {
        let support = "spiffe://fieldvault.dev/support";
        let g = ask(
            support,
            Action::Detokenize,
            Some(FieldKind::Phone),
            Some("callback"),
            None,
        )
        .unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(
            (g.rule.as_str(), g.line),
            ("support: phones for callbacks", 4)
        );
        let text = grant_text(&g, None, Action::Detokenize);
        assert!(text.contains("reveal: masked"), "{text}");
        assert!(text.contains("quota: 100/minute, 2000/day"), "{text}");
        let g = ask(
            support,
            Action::Detokenize,
            Some(FieldKind::Phone),
            Some("callback"),
            Some("SUP-42"),
        )
        .unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(g.line, 13);
        let policy = Policy::from_toml(POLICY).unwrap_or_else(|e| panic!("{e}"));
        let rule = policy.rules().iter().find(|r| r.line == 13);
        assert_eq!(grant_json(&g, rule)["justification"], "SUP-[0-9]+");
    }

    #[test]
    fn a_denial_names_its_dimension_and_the_deny_list_comes_before_any_rule() {
        let on = |caller: &str, action, kind, purpose| {
            ask(caller, action, kind, purpose, None)
                .map(|g| g.rule)
                .map_err(|d| dimension(d.on))
        };
        let support = "spiffe://fieldvault.dev/support";
        let phone = Some(FieldKind::Phone);
        assert_eq!(
            on(support, Action::Detokenize, phone, Some("marketing")),
            Err("purpose")
        );
        assert_eq!(
            on(
                support,
                Action::Detokenize,
                Some(FieldKind::Email),
                Some("callback")
            ),
            Err("kind")
        );
        assert_eq!(on(support, Action::Keys, None, None), Err("action"));
        assert_eq!(
            on(
                "spiffe://fieldvault.dev/intruder",
                Action::Admin,
                None,
                None
            ),
            Err("caller")
        );
        // An admin rule names the leaver, and the deny list wins.
        assert_eq!(
            on("spiffe://fieldvault.dev/leaver", Action::Admin, None, None),
            Err("deny_list")
        );
        assert_eq!(
            on("spiffe://fieldvault.dev/admin", Action::Admin, None, None),
            Ok("admin".to_owned())
        );
    }

    const GRANT_POLICY: &str = r#"version = 1

[[rules]]
name = "fulfilment: addresses under a grant"
callers = ["spiffe://fieldvault.dev/fulfilment"]
action = "detokenize"
kinds = ["address"]
purposes = ["shipping"]
reveal = "full"
requires_grant = true
approvals = 2
approvers = ["spiffe://fieldvault.dev/approver1", "spiffe://fieldvault.dev/approver2"]
"#;

    #[test]
    fn a_grant_only_rule_denies_on_grant_and_allows_under_a_grant() {
        let policy = Policy::from_toml(GRANT_POLICY).unwrap_or_else(|e| panic!("{e}"));
        let mut q = Question {
            caller: CallerId::spiffe("spiffe://fieldvault.dev/fulfilment")
                .unwrap_or_else(|e| panic!("{e}")),
            action: Action::Detokenize,
            kind: Some(FieldKind::Address),
            purpose: Some(Purpose::parse("shipping").unwrap_or_else(|e| panic!("{e}"))),
            justification: None,
            under_grant: false,
        };
        let denial = decide(&policy, &q).err();
        assert_eq!(denial.as_ref().map(|d| dimension(d.on)), Some("grant"));
        q.under_grant = true;
        let g = decide(&policy, &q).unwrap_or_else(|d| panic!("{d}"));
        assert!(g.under_grant);
        let rule = policy.rules().iter().find(|r| r.line == g.line);
        let text = grant_text(&g, rule, Action::Detokenize);
        assert!(
            text.contains(
                "grant: required (only under an active grant; each value revealed consumes one \
                 of its reveals), 2 approvals by spiffe://fieldvault.dev/approver1, \
                 spiffe://fieldvault.dev/approver2"
            ),
            "{text}"
        );
        let j = grant_json(&g, rule);
        assert_eq!(j["requires_grant"], true);
        assert_eq!(j["grant"]["approvals"], 2);
        // A grant covers its purpose only: another purpose is still denied.
        q.purpose = Some(Purpose::parse("marketing").unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            decide(&policy, &q).map_err(|d| dimension(d.on)).err(),
            Some("purpose")
        );
    }

    #[test]
    fn an_error_line_is_found_in_every_kind_of_policy_error() {
        let bad_rule = POLICY.replace("2000/day", "2000/fortnight");
        let e = Policy::from_toml(&bad_rule).err();
        // The line of the quota itself.
        let quota_line = bad_rule
            .lines()
            .position(|l| l.contains("2000/fortnight"))
            .map(|i| i + 1);
        assert_eq!(e.as_ref().and_then(error_line), quota_line, "{e:?}");
        let syntax = POLICY.replace("action = \"admin\"", "action = admin");
        let e = Policy::from_toml(&syntax).err();
        assert_eq!(e.as_ref().and_then(error_line), Some(25), "{e:?}");
        let policy = Policy::from_toml(POLICY).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary(&policy),
            "3 rules (2 detokenize, 1 admin), 1 deny-listed identity"
        );
    }
}
