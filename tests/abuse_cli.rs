//! The abuse controls from the command line, as a user runs them: the real
//! `fieldvault` binary against a real `serve --dev` server over mTLS
//! (certificates made at start): `callers`, `canary`, `policy check` and
//! `policy explain`, the dev policy's quota, and a dev setup made by an
//! older version getting its `admin` identity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::*;
use common::process::{start_dev, ServerProcess};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const STOP: Duration = Duration::from_secs(30);
const SUPPORT: &str = "spiffe://fieldvault.dev/support";
const ORDERS: &str = "spiffe://fieldvault.dev/orders";
const ADMIN: &str = "spiffe://fieldvault.dev/admin";

impl Dev {
    /// Tokenizes `values` (one per line) as orders.
    fn tokens(&self, values: &[String]) -> Vec<String> {
        let input: String = values.iter().map(|v| format!("{v}\n")).collect();
        let out = self.run(
            0,
            "orders",
            &["tokenize", "--kind", "phone", "--stdin"],
            &input,
        );
        let tokens: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        assert_eq!(tokens.len(), values.len(), "{}", show(&out));
        tokens
    }

    /// `callers list --json` as admin: the entry of `caller`.
    fn caller_status(&self, caller: &str) -> Value {
        let out = self.run(0, "admin", &["callers", "list", "--json"], "");
        json(&out)["callers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["caller"] == caller)
            .cloned()
            .unwrap_or_else(|| panic!("{caller} not listed: {}", show(&out)))
    }
}

/// `n` distinct fake phone numbers (+1 NPA-555-01xx).
fn phones(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let area = [202, 303, 404][i / 100];
            format!("+1 {area}-555-01{:02}", i % 100)
        })
        .collect()
}

/// A token as the vault makes them: `fv1_` and 22 base64url characters.
fn looks_like_a_token(t: &str) -> bool {
    t.strip_prefix("fv1_").is_some_and(|rest| {
        rest.len() == 22
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// A policy file written to a private directory, as the server wants it.
fn policy_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn policy_check_accepts_the_dev_policy_and_names_the_line_of_a_broken_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev_policy = fieldvault::dev::DEV_POLICY;
    let good = policy_file(tmp.path(), "good.toml", dev_policy);
    let out = run_to_exit(0, &["policy", "check", good.to_str().unwrap()], "");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "{}: a valid policy: 13 rules (1 tokenize, 4 detokenize, 1 keys, 1 admin, 1 \
             delete, 1 inspect, 1 erase, 1 export, 1 backup, 1 grants), 0 deny-listed \
             identities",
            good.display()
        )
    );
    let out = run_to_exit(
        0,
        &["policy", "check", "--json", good.to_str().unwrap()],
        "",
    );
    let j = json(&out);
    assert_eq!(j["valid"], true);
    assert_eq!(j["rules_by_action"]["admin"], 1);

    // A quota with an unknown unit, in the rule that starts on the line
    // found here: the error names that line, the rule and the field.
    let broken_text = dev_policy.replace("\"100/minute\"", "\"100/fortnight\"");
    let line = broken_text
        .lines()
        .position(|l| l.contains("100/fortnight"))
        .unwrap()
        + 1;
    let broken = policy_file(tmp.path(), "broken.toml", &broken_text);
    let out = run_to_exit(1, &["policy", "check", broken.to_str().unwrap()], "");
    let err = stderr(&out);
    // The line of the bad field itself.
    assert!(
        err.contains(&format!("line {line}: rules[1].quota:")) && err.contains("fortnight"),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", show(&out));
    let out = run_to_exit(
        1,
        &["policy", "check", "--json", broken.to_str().unwrap()],
        "",
    );
    let j = json(&out);
    assert_eq!(j["valid"], false);
    assert_eq!(j["error"]["line"], line);

    // TOML syntax: the line too.
    let syntax = policy_file(tmp.path(), "syntax.toml", "version = 1\ndeny = [\n");
    let out = run_to_exit(
        1,
        &["policy", "check", "--json", syntax.to_str().unwrap()],
        "",
    );
    assert_eq!(json(&out)["error"]["line"], 2, "{}", show(&out));

    // A file that cannot be read is not a verdict on its contents: exit 2.
    let missing = tmp.path().join("missing.toml");
    let out = run_to_exit(2, &["policy", "check", missing.to_str().unwrap()], "");
    assert!(stderr(&out).contains("missing.toml"), "{}", show(&out));
}

#[test]
fn policy_explain_names_the_deciding_rule_the_denied_dimension_and_the_deny_list() {
    let dev = Dev::start();
    let data = dev.data.to_str().unwrap();
    let dev_policy = dev.data.join("dev/policy.toml");
    let explain = |code: i32, args: &[&str]| {
        let mut all = vec!["policy", "explain"];
        all.extend(args);
        all.extend(["--data-dir", data]);
        run_to_exit(code, &all, "")
    };

    // Allowed: the rule, its line, its reveal and quota; the file read.
    let out = explain(
        0,
        &[
            "--caller",
            SUPPORT,
            "--action",
            "detokenize",
            "--kind",
            "phone",
            "--purpose",
            "callback",
        ],
    );
    let text = stdout(&out);
    let line = fieldvault::dev::DEV_POLICY
        .lines()
        .position(|l| l.contains("support sees phone numbers in full"))
        .unwrap();
    assert!(
        text.starts_with(&format!("policy {}\n", dev_policy.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ALLOWED by rule 'support sees phone numbers in full for callbacks' (line {line})"
        )),
        "{text}"
    );
    assert!(text.contains("reveal: full"), "{text}");
    assert!(text.contains("quota: 100/minute"), "{text}");
    assert!(text.contains("justification: none required"), "{text}");

    // A justification rule: refused without one, named with its pattern,
    // and the one given is never printed.
    let escalation = [
        "--caller",
        SUPPORT,
        "--action",
        "detokenize",
        "--kind",
        "address",
        "--purpose",
        "escalation",
    ];
    let out = explain(1, &escalation);
    assert!(
        stdout(&out).contains("DENIED on justification:") && stdout(&out).contains("'SUP-[0-9]+'"),
        "{}",
        show(&out)
    );
    let mut with_ticket = escalation.to_vec();
    with_ticket.extend(["--justification", "SUP-4711", "--json"]);
    let out = explain(0, &with_ticket);
    let j = json(&out);
    assert_eq!(j["decision"], "allowed");
    assert_eq!(j["rule"]["justification"], "SUP-[0-9]+");
    assert_eq!(j["rule"]["reveal"], "full");
    assert!(!stdout(&out).contains("4711"), "{}", show(&out));

    // Denied: the dimension no rule matched.
    let out = explain(
        1,
        &[
            "--caller",
            SUPPORT,
            "--action",
            "detokenize",
            "--kind",
            "phone",
            "--purpose",
            "marketing",
        ],
    );
    assert!(
        stdout(&out).contains("DENIED on purpose: purpose 'marketing' is not allowed"),
        "{}",
        show(&out)
    );
    let out = explain(
        1,
        &[
            "--caller",
            "spiffe://fieldvault.dev/intruder",
            "--action",
            "tokenize",
            "--kind",
            "phone",
            "--json",
        ],
    );
    assert_eq!(json(&out)["denied_on"], "caller", "{}", show(&out));
    let out = explain(0, &["--caller", ADMIN, "--action", "admin"]);
    assert!(
        stdout(&out).contains("ALLOWED by rule 'admin manages"),
        "{}",
        show(&out)
    );

    // Deny-listed (the policy given with --policy): refused before its
    // admin rule is consulted.
    let denied = dev.tmp.path().join("denied.toml");
    std::fs::write(
        &denied,
        fieldvault::dev::DEV_POLICY
            .replace("deny = []", "deny = [\"spiffe://fieldvault.dev/admin\"]"),
    )
    .unwrap();
    let out = run_to_exit(
        1,
        &[
            "policy",
            "explain",
            "--caller",
            ADMIN,
            "--action",
            "admin",
            "--policy",
            denied.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        stdout(&out).contains("DENIED on deny_list: caller 'spiffe://fieldvault.dev/admin' is on the policy's deny list"),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).starts_with(&format!("policy {}\n", denied.display())));

    // Bad arguments name the choices and quote nothing.
    let out = explain(2, &["--caller", SUPPORT, "--action", "obliterate"]);
    assert!(
        stderr(&out).contains(
            "expected one of: tokenize, detokenize, keys, admin, delete, inspect, erase, \
             export, backup"
        ) && !stderr(&out).contains("obliterate"),
        "{}",
        show(&out)
    );
    let out = explain(2, &["--caller", SUPPORT, "--action", "detokenize"]);
    assert!(
        stderr(&out).contains("--kind: is required for a detokenize call (expected one of: phone"),
        "{}",
        show(&out)
    );
    let out = explain(
        2,
        &["--caller", SUPPORT, "--action", "keys", "--kind", "phone"],
    );
    assert!(
        stderr(&out).contains("--kind: a keys call concerns no field kind"),
        "{}",
        show(&out)
    );
    // No dev setup there: says where it looked and what to give.
    let out = run_to_exit(
        2,
        &[
            "policy",
            "explain",
            "--caller",
            ADMIN,
            "--action",
            "admin",
            "--data-dir",
            dev.tmp.path().join("nowhere").to_str().unwrap(),
        ],
        "",
    );
    assert!(
        stderr(&out).contains("no dev policy at") && stderr(&out).contains("--policy FILE"),
        "{}",
        show(&out)
    );
    assert!(dev.server.terminate_ok());
}

trait Stop {
    fn terminate_ok(self) -> bool;
}

impl Stop for ServerProcess {
    fn terminate_ok(self) -> bool {
        self.terminate(STOP).success()
    }
}

#[test]
fn callers_freeze_list_and_unfreeze_round_trip_and_unfreezing_a_caller_not_frozen_fails_precisely()
{
    let dev = Dev::start();
    let tokenize = ["tokenize", "--kind", "phone", "+1 202-555-0170"];
    dev.run(0, "orders", &tokenize, "");

    let out = dev.run(
        0,
        "admin",
        &[
            "callers",
            "freeze",
            ORDERS,
            "--reason",
            "laptop reported lost",
        ],
        "",
    );
    assert!(
        stdout(&out).starts_with(&format!("{ORDERS} is frozen since ")),
        "{}",
        show(&out)
    );
    // Every call from it is refused, and says why.
    let out = dev.run(2, "orders", &tokenize, "");
    assert!(
        stderr(&out).contains("FAILED_PRECONDITION")
            && stderr(&out).contains("frozen")
            && stderr(&out).contains("laptop reported lost"),
        "{}",
        show(&out)
    );
    let status = dev.caller_status(ORDERS);
    assert_eq!(status["frozen"]["by"], ADMIN, "{status}");
    assert_eq!(status["frozen"]["reason"], "laptop reported lost");
    let out = dev.run(0, "admin", &["callers", "list"], "");
    assert!(
        stdout(&out).contains(&format!(
            "{ORDERS}: FROZEN since {} by {ADMIN}, reason: laptop reported lost",
            status["frozen"]["since"].as_str().unwrap()
        )),
        "{}",
        show(&out)
    );
    // Frozen already: refused, nothing changed.
    let out = dev.run(
        2,
        "admin",
        &["callers", "freeze", ORDERS, "--reason", "again"],
        "",
    );
    assert!(
        stderr(&out).contains("FAILED_PRECONDITION"),
        "{}",
        show(&out)
    );
    assert!(stderr(&out).contains("is frozen already"), "{}", show(&out));

    let out = dev.run(0, "admin", &["callers", "unfreeze", ORDERS, "--json"], "");
    let j = json(&out);
    assert_eq!(j["unfrozen"]["reason"], "laptop reported lost");
    dev.run(0, "orders", &tokenize, "");
    assert_eq!(dev.caller_status(ORDERS)["frozen"], Value::Null);

    // Not frozen: precisely that, exit 2.
    let out = dev.run(2, "admin", &["callers", "unfreeze", ORDERS], "");
    assert_eq!(
        stderr(&out).trim(),
        format!("fieldvault: FAILED_PRECONDITION: caller '{ORDERS}' is not frozen")
    );
    // A freeze needs a reason; a caller without an admin rule may do none
    // of this.
    let out = dev.run(2, "admin", &["callers", "freeze", ORDERS], "");
    assert!(stderr(&out).contains("--reason"), "{}", show(&out));
    let out = dev.run(2, "support", &["callers", "list"], "");
    assert!(
        stderr(&out).contains("PERMISSION_DENIED") && stderr(&out).contains("admin"),
        "{}",
        show(&out)
    );
    assert!(dev.server.terminate_ok());
}

#[test]
fn a_canary_token_looks_real_and_detokenizing_it_freezes_support_until_unfrozen() {
    let dev = Dev::start();
    let real = dev.tokens(&phones(1)).remove(0);

    let out = dev.run(
        0,
        "admin",
        &["canary", "create", "--kind", "phone", "--count", "3"],
        "",
    );
    let canaries: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(canaries.len(), 3, "{}", show(&out));
    for t in &canaries {
        assert!(looks_like_a_token(t), "{t}");
    }
    assert!(looks_like_a_token(&real), "{real}");
    let out = dev.run(0, "admin", &["canary", "list"], "");
    let listed = stdout(&out);
    for t in &canaries {
        assert!(
            listed.contains(&format!("{t}\tphone\t")) && listed.contains(ADMIN),
            "{listed}"
        );
    }

    // support may reveal phone numbers, and is frozen by a canary among
    // real tokens: nothing is revealed.
    let out = dev.run(
        2,
        "support",
        &["detokenize", "--purpose", "callback", "--stdin"],
        &format!("{real}\n{}\n", canaries[1]),
    );
    assert!(
        stderr(&out).contains("FAILED_PRECONDITION") && stderr(&out).contains("frozen"),
        "{}",
        show(&out)
    );
    assert!(!stdout(&out).contains("+1202555"), "{}", show(&out));
    // Every call after it too, whatever it asks.
    let out = dev.run(
        2,
        "support",
        &["detokenize", "--purpose", "callback", &real],
        "",
    );
    assert!(stderr(&out).contains("frozen"), "{}", show(&out));
    let out = dev.run(0, "admin", &["callers", "list"], "");
    assert!(
        stdout(&out).contains(&format!("{SUPPORT}: FROZEN since "))
            && stdout(&out).contains("by vault, reason: asked to detokenize a canary token"),
        "{}",
        show(&out)
    );
    assert!(
        dev.log().contains(&format!(
            "ALERT caller_frozen caller=\"{SUPPORT}\" trigger=canary"
        )),
        "no alert line in the server log"
    );

    dev.run(0, "admin", &["callers", "unfreeze", SUPPORT], "");
    let out = dev.run(
        0,
        "support",
        &["detokenize", "--purpose", "callback", &real],
        "",
    );
    assert!(stdout(&out).contains("+12025550100"), "{}", show(&out));

    // Bad arguments are named with their choices.
    let out = dev.run(2, "admin", &["canary", "create", "--kind", "ssn"], "");
    assert!(
        stderr(&out).contains("expected one of: phone, address, national_id, email"),
        "{}",
        show(&out)
    );
    let out = dev.run(
        2,
        "admin",
        &["canary", "create", "--kind", "phone", "--count", "1001"],
        "",
    );
    assert!(
        stderr(&out).contains("--count") && stderr(&out).contains("from 1 to 1000"),
        "{}",
        show(&out)
    );
    let out = dev.run(
        0,
        "admin",
        &["canary", "create", "--kind", "email", "--json"],
        "",
    );
    let j = json(&out);
    assert_eq!(j["kind"], "email");
    assert_eq!(j["tokens"].as_array().map(Vec::len), Some(1));
    assert!(dev.server.terminate_ok());
}

/// The quota window a Unix time (ms) falls in, for a minute quota.
fn minute_of(unix_ms: u128) -> u128 {
    unix_ms / 60_000
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn the_dev_policy_lets_support_reveal_100_phone_numbers_a_minute_and_callers_list_shows_the_use() {
    let dev = Dev::start();
    let tokens = dev.tokens(&phones(101));
    let all: String = tokens.iter().map(|t| format!("{t}\n")).collect();
    let hundred: String = tokens[..100].iter().map(|t| format!("{t}\n")).collect();
    let detokenize = ["detokenize", "--purpose", "callback", "--stdin"];

    // 101 in one call would cross the limit: refused whole, nothing
    // revealed, the limit and its reset named.
    let out = dev.run(2, "support", &detokenize, &all);
    assert!(
        stderr(&out).contains("RESOURCE_EXHAUSTED: quota exceeded")
            && stderr(&out).contains("100 values per minute")
            && stderr(&out).contains("this call asks 101")
            && stderr(&out).contains("nothing was revealed"),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", show(&out));

    // 100 pass, and the list shows them used, within one window (tried
    // again in the next window if a minute ended in between).
    let mut shown = None;
    for _ in 0..3 {
        let before = minute_of(now_ms());
        let out = dev.run(0, "support", &detokenize, &hundred);
        assert_eq!(stdout(&out).lines().count(), 100);
        let status = dev.caller_status(SUPPORT);
        let listed = dev.run(0, "admin", &["callers", "list"], "");
        if minute_of(now_ms()) == before {
            shown = Some((status, stdout(&listed)));
            break;
        }
    }
    let (status, text) = shown.expect("three minute boundaries in three tries");
    let quota = &status["quotas"][0];
    assert_eq!(
        quota["rule"],
        "support sees phone numbers in full for callbacks"
    );
    assert_eq!(
        (quota["used"].as_u64(), quota["limit"].as_u64()),
        (Some(100), Some(100))
    );
    assert_eq!(quota["per"], "minute");
    assert!(
        text.contains("  quota 100/100 per minute, resets "),
        "{text}"
    );
    // The freeze counter of quota refusals is below its threshold (3): the
    // 101 refused once did not freeze support.
    assert_eq!(status["frozen"], Value::Null);
    assert!(dev.server.terminate_ok());
}

/// The dev policy of the versions before the admin identity.
const OLD_DEV_POLICY: &str = r#"version = 1

[[rules]]
name = "orders may tokenize every kind"
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "address", "national_id", "email"]

[[rules]]
name = "support sees phone numbers in full for callbacks"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"
"#;

#[test]
fn an_old_dev_setup_gets_the_admin_identity_from_its_own_ca_and_keeps_its_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let dev = data.join("dev");
    assert!(start_dev(&data, &log).unwrap().terminate_ok());
    // As an older version left it: no admin identity, its own policy.
    std::fs::remove_file(dev.join("admin.pem")).unwrap();
    std::fs::remove_file(dev.join("admin.key")).unwrap();
    std::fs::write(dev.join("policy.toml"), OLD_DEV_POLICY).unwrap();
    let ca = std::fs::read(dev.join("ca.pem")).unwrap();
    let orders_cert = std::fs::read(dev.join("orders.pem")).unwrap();

    let server = start_dev(&data, &log).unwrap();
    assert!(server.stdout.contains("reusing"), "{}", server.stdout);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("issued the dev identities it lacked (admin)"),
        "{logged}"
    );
    let predates: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("predates the admin rule and quotas"))
        .collect();
    assert_eq!(predates.len(), 1, "{logged}");
    assert!(
        predates[0].contains("serve --dev --reset")
            && predates[0].contains("deploy/dev/policy.toml"),
        "{}",
        predates[0]
    );
    // Everything else as it was.
    assert_eq!(std::fs::read(dev.join("ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(dev.join("orders.pem")).unwrap(), orders_cert);
    assert_eq!(
        std::fs::read_to_string(dev.join("policy.toml")).unwrap(),
        OLD_DEV_POLICY
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dev.join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The server takes the new certificate (chained to the same CA): its
    // call gets as far as the policy, which does not name it.
    let dev_args = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--addr",
            &server.addr,
            "--dev-identity",
            "admin",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        all.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>()
    };
    let args = dev_args(&["callers", "list"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_to_exit(2, &args, "");
    assert!(
        stderr(&out).contains("PERMISSION_DENIED")
            && stderr(&out).contains("no policy rule names caller 'spiffe://fieldvault.dev/admin'"),
        "{}",
        show(&out)
    );
    // With the rule added (no restart: the dev server watches its policy),
    // admin works.
    let mut text = OLD_DEV_POLICY.to_owned();
    text.push_str(
        "\n[[rules]]\nname = \"admin\"\ncallers = [\"spiffe://fieldvault.dev/admin\"]\naction = \"admin\"\n",
    );
    std::fs::write(dev.join("policy.toml"), text).unwrap();
    let out = run_to_exit(0, &args, "");
    assert!(
        stdout(&out).contains(&format!("{ADMIN}: active")),
        "{}",
        show(&out)
    );
    assert!(server.terminate_ok());

    // A third start has nothing to issue and says nothing about it.
    let before = std::fs::read_to_string(&log).unwrap().len();
    let server = start_dev(&data, &log).unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged[before..].contains("issued the dev identities"),
        "{logged}"
    );
    assert!(server.terminate_ok());
}
