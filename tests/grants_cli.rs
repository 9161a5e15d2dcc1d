//! Approved workflows from the command line, as a user runs them (README,
//! "Approved workflows"): the real `fieldvault` binary against a real
//! `serve --dev` server over mTLS (certificates made at start), as the dev
//! identities orders (tokenizes addresses), fulfilment (the workflow whose
//! rule requires a grant approved by two), approver1, approver2 and admin;
//! the `--json` shapes; and argument mistakes refused before any call.
//! Every run of the CLI has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::*;
use serde_json::Value;
use std::process::Output;

/// Obviously fake addresses.
const ADDRESSES: [&str; 3] = [
    "1 Example Street, Testville 99999",
    "2 Example Street, Testville 99999",
    "3 Example Street, Testville 99999",
];
const FULFILMENT: &str = "spiffe://fieldvault.dev/fulfilment";
const APPROVER1: &str = "spiffe://fieldvault.dev/approver1";
const APPROVER2: &str = "spiffe://fieldvault.dev/approver2";
const ADMIN: &str = "spiffe://fieldvault.dev/admin";

/// Asserts that a refused call said `code` and `words` on stderr and
/// revealed no address on stdout.
#[track_caller]
fn refused(out: &Output, code: &str, words: &[&str]) {
    let err = stderr(out);
    assert!(
        err.contains(code) && words.iter().all(|w| err.contains(w)),
        "expected {code} with {words:?}: {}",
        show(out)
    );
    assert!(!stdout(out).contains("Example Street"), "{}", show(out));
}

impl Dev {
    /// [`Dev::run`] with nothing on standard input.
    #[track_caller]
    fn call(&self, code: i32, who: &str, args: &[&str]) -> Output {
        self.run(code, who, args, "")
    }

    /// Tokenizes the fake addresses as orders.
    fn address_tokens(&self) -> Vec<String> {
        let mut args = vec!["tokenize", "--kind", "address"];
        args.extend(ADDRESSES);
        let out = self.call(0, "orders", &args);
        let tokens: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        assert_eq!(tokens.len(), ADDRESSES.len(), "{}", show(&out));
        tokens
    }

    /// `grants show ID --json` as `who`.
    fn grant(&self, who: &str, id: &str) -> Value {
        json(&self.call(0, who, &["grants", "show", id, "--json"]))
    }
}

#[test]
fn a_workflow_reveals_addresses_only_under_a_grant_two_approvers_approved_until_it_is_revoked() {
    let dev = Dev::start();
    let tokens = dev.address_tokens();
    let detokenize = |code: i32, grant: Option<&str>, tokens: &[&str]| {
        let mut args = vec!["detokenize", "--purpose", "shipping"];
        if let Some(g) = grant {
            args.extend(["--grant", g]);
        }
        args.extend(tokens);
        dev.call(code, "fulfilment", &args)
    };

    // Without a grant, fulfilment's rule allows nothing.
    let out = detokenize(2, None, &[&tokens[0]]);
    refused(&out, "PERMISSION_DENIED", &["grant"]);

    // fulfilment asks for a grant of 2 reveals: stdout is the id alone.
    let out = dev.call(
        0,
        "fulfilment",
        &[
            "grants",
            "request",
            "--kind",
            "address",
            "--purpose",
            "shipping",
            "--max-reveals",
            "2",
            "--valid-for",
            "2h",
            "--reason",
            "labels for batch 7",
        ],
    );
    let id = stdout(&out);
    let id = id
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(
        id.len() == 36 && !id.contains(char::is_whitespace),
        "{}",
        show(&out)
    );
    let g = dev.grant("fulfilment", id);
    assert_eq!(g["state"], "pending", "{g}");
    assert_eq!(g["caller"], FULFILMENT, "{g}");
    assert_eq!(g["requested_by"], FULFILMENT, "{g}");
    assert_eq!(g["approvals_required"], 2, "{g}");

    // Pending: refused, naming the state.
    let out = detokenize(2, Some(id), &[&tokens[0]]);
    refused(&out, "FAILED_PRECONDITION", &["pending"]);

    // approver1 approves: still pending, one of two.
    let out = dev.call(0, "approver1", &["grants", "approve", id]);
    assert_eq!(
        stdout(&out),
        format!("{id}: pending: 1 of 2 approvals ({APPROVER1})\n"),
        "{}",
        show(&out)
    );
    // The workflow cannot approve its own grant, nor approver1 twice.
    let out = dev.call(2, "fulfilment", &["grants", "approve", id]);
    refused(&out, "PERMISSION_DENIED", &[]);
    let out = dev.call(2, "approver1", &["grants", "approve", id]);
    refused(&out, "FAILED_PRECONDITION", &[]);
    let out = detokenize(2, Some(id), &[&tokens[0]]);
    refused(&out, "FAILED_PRECONDITION", &["pending"]);

    // approver2 approves: active.
    let out = dev.call(0, "approver2", &["grants", "approve", id]);
    assert!(
        stdout(&out).starts_with(&format!(
            "{id}: active: 2 of 2 approvals ({APPROVER1}, {APPROVER2}); 0 of 2 reveals used, \
             until "
        )),
        "{}",
        show(&out)
    );

    // fulfilment reveals one address in full.
    let out = detokenize(0, Some(id), &[&tokens[0]]);
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!("{}\taddress\tfull\t", tokens[0])) && line.contains("1 Example"),
        "{}",
        show(&out)
    );
    // Two more would take it over its 2: refused whole, nothing revealed.
    let out = detokenize(2, Some(id), &[&tokens[1], &tokens[2]]);
    refused(&out, "FAILED_PRECONDITION", &[]);

    // show: used/remaining, both approvers and when.
    let out = dev.call(0, "approver2", &["grants", "show", id]);
    let text = stdout(&out);
    for want in [
        format!("grant {id}\n"),
        "  state: active\n".to_owned(),
        format!("  caller: {FULFILMENT}\n"),
        format!("  requested by: {FULFILMENT}\n"),
        "  kinds: address\n".to_owned(),
        "  purpose: shipping\n".to_owned(),
        "  reveals: 1 used, 1 remaining of 2\n".to_owned(),
        "  reason: labels for batch 7\n".to_owned(),
        "  tokens: any token of its kinds\n".to_owned(),
        "  approvals: 2 of 2 required\n".to_owned(),
        format!("    approved by {APPROVER1} at 20"),
        format!("    approved by {APPROVER2} at 20"),
        format!("  approvers: {APPROVER1}, {APPROVER2}\n"),
    ] {
        assert!(text.contains(&want), "{want:?} missing: {}", show(&out));
    }
    assert!(!text.contains("ended:"), "{text}");
    let g = dev.grant("fulfilment", id);
    assert_eq!(
        (g["used"].as_u64(), g["remaining"].as_u64()),
        (Some(1), Some(1))
    );

    // list: one line per grant, filtered by state and workflow.
    let out = dev.call(
        0,
        "fulfilment",
        &[
            "grants", "list", "--state", "active", "--caller", FULFILMENT,
        ],
    );
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(
        lines[0].starts_with(&format!(
            "{id}\tactive\t{FULFILMENT}\taddress\tshipping\t1/2\texpires 20"
        )),
        "{}",
        show(&out)
    );
    let out = dev.call(0, "fulfilment", &["grants", "list", "--state", "pending"]);
    assert_eq!(stdout(&out), "", "{}", show(&out));

    // approver1 revokes it: the next reveal is refused, naming the state.
    let out = dev.call(
        0,
        "approver1",
        &["grants", "revoke", id, "--reason", "batch shipped"],
    );
    assert!(
        stdout(&out).starts_with(&format!("{id}: revoked by {APPROVER1} at 20"))
            && stdout(&out).ends_with(" (reason: batch shipped)\n"),
        "{}",
        show(&out)
    );
    let out = detokenize(2, Some(id), &[&tokens[1]]);
    refused(&out, "FAILED_PRECONDITION", &["revoked"]);
    let out = dev.call(0, "fulfilment", &["grants", "show", id]);
    assert!(
        stdout(&out).contains(&format!("  ended: by {APPROVER1} at 20"))
            && stdout(&out).contains(", reason: batch shipped\n"),
        "{}",
        show(&out)
    );
    // Revoking it again changes nothing.
    let out = dev.call(2, "approver1", &["grants", "revoke", id]);
    refused(&out, "FAILED_PRECONDITION", &[]);
}

#[test]
fn grants_print_one_json_object_with_the_grant_id_and_its_fields() {
    let dev = Dev::start();
    let tokens = dev.address_tokens();
    // admin requests a grant on fulfilment's behalf, for one token only.
    let out = dev.call(
        0,
        "admin",
        &[
            "grants",
            "request",
            "--caller",
            FULFILMENT,
            "--kind",
            "address",
            "--kind",
            "address",
            "--purpose",
            "shipping",
            "--max-reveals",
            "5",
            "--valid-for",
            "7d",
            "--reason",
            "one parcel",
            "--token",
            &tokens[0],
            "--json",
        ],
    );
    let g = json(&out);
    let id = g["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{g}");
    assert_eq!(g["state"], "pending", "{g}");
    assert_eq!(g["caller"], FULFILMENT, "{g}");
    assert_eq!(g["requested_by"], ADMIN, "{g}");
    assert_eq!(g["kinds"], serde_json::json!(["address"]), "{g}");
    assert_eq!(g["purpose"], "shipping", "{g}");
    assert_eq!(g["max_reveals"], 5, "{g}");
    assert_eq!(g["used"], 0, "{g}");
    assert_eq!(g["remaining"], 5, "{g}");
    assert_eq!(g["tokens"], serde_json::json!([tokens[0]]), "{g}");
    assert_eq!(g["approvals_required"], 2, "{g}");
    assert_eq!(
        g["approvers"],
        serde_json::json!([APPROVER1, APPROVER2]),
        "{g}"
    );
    assert_eq!(g["approvals"], serde_json::json!([]), "{g}");
    assert_eq!(g["activated"], Value::Null, "{g}");
    let created = g["created_unix_ms"].as_u64().unwrap();
    let expires = g["expires_unix_ms"].as_u64().unwrap();
    assert_eq!(expires - created, 7 * 86_400_000, "{g}");
    assert!(g["created"].as_str().unwrap().ends_with('Z'), "{g}");

    let g = json(&dev.call(0, "approver2", &["grants", "approve", &id, "--json"]));
    assert_eq!(g["state"], "pending", "{g}");
    assert_eq!(g["approvals"][0]["approver"], APPROVER2, "{g}");
    assert!(g["approvals"][0]["approved"].is_string(), "{g}");
    let g = json(&dev.call(0, "approver1", &["grants", "approve", &id, "--json"]));
    assert_eq!(g["state"], "active", "{g}");
    assert!(g["activated"].is_string(), "{g}");

    // Restricted to one token: the other is not revealed under it (that
    // item is NOT_FOUND, as any token the caller may not see).
    let out = dev.call(
        1,
        "fulfilment",
        &[
            "detokenize",
            "--purpose",
            "shipping",
            "--grant",
            &id,
            "--json",
            &tokens[1],
        ],
    );
    assert!(!stdout(&out).contains("Example Street"), "{}", show(&out));
    assert_eq!(json(&out)["error"]["code"], "NOT_FOUND", "{}", show(&out));
    let out = dev.call(
        0,
        "fulfilment",
        &[
            "detokenize",
            "--purpose",
            "shipping",
            "--grant",
            &id,
            "--json",
            &tokens[0],
        ],
    );
    let r = json(&out);
    assert_eq!(r["reveal"], "full", "{r}");
    assert!(
        r["value"].as_str().unwrap().contains("1 Example Street"),
        "{r}"
    );

    // A second grant, rejected.
    let out = dev.call(
        0,
        "fulfilment",
        &[
            "grants",
            "request",
            "--kind",
            "address",
            "--purpose",
            "shipping",
            "--max-reveals",
            "1",
            "--valid-for",
            "1h",
            "--reason",
            "not needed",
        ],
    );
    let other = stdout(&out).trim().to_owned();
    let g = json(&dev.call(
        0,
        "approver1",
        &[
            "grants",
            "reject",
            &other,
            "--reason",
            "duplicate",
            "--json",
        ],
    ));
    assert_eq!(g["state"], "rejected", "{g}");
    assert_eq!(g["ended_by"], APPROVER1, "{g}");
    assert_eq!(g["end_reason"], "duplicate", "{g}");
    assert!(g["ended"].is_string(), "{g}");

    // list --json: newest first, filtered, limited.
    let all = json(&dev.call(0, "admin", &["grants", "list", "--json"]));
    let ids: Vec<&str> = all["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["grant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other.as_str(), id.as_str()], "{all}");
    assert_eq!(all["count"], 2, "{all}");
    let one = json(&dev.call(0, "admin", &["grants", "list", "--limit", "1", "--json"]));
    assert_eq!(one["grants"][0]["grant_id"], other.as_str(), "{one}");
    assert_eq!(one["count"], 1, "{one}");
    let active = json(&dev.call(
        0,
        "admin",
        &["grants", "list", "--state", "active", "--json"],
    ));
    assert_eq!(active["count"], 1, "{active}");
    assert_eq!(active["grants"][0]["used"], 1, "{active}");
    assert_eq!(active["grants"][0]["remaining"], 4, "{active}");

    // A call refused by the server: one JSON error object.
    let out = dev.call(2, "approver1", &["grants", "approve", &other, "--json"]);
    let e = json(&out);
    assert_eq!(e["error"]["code"], "FAILED_PRECONDITION", "{e}");
    let unknown = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
    let e = json(&dev.call(2, "admin", &["grants", "show", unknown, "--json"]));
    assert_eq!(e["error"]["code"], "NOT_FOUND", "{e}");
}

#[test]
fn grant_argument_mistakes_are_refused_naming_the_flag_before_anything_is_sent() {
    // No server: each mistake is found before connecting (an address
    // nothing listens on would otherwise fail with UNAVAILABLE).
    let conn = [
        "--addr",
        "127.0.0.1:9",
        "--ca",
        "/nonexistent/ca.pem",
        "--cert",
        "/nonexistent/c.pem",
        "--key",
        "/nonexistent/c.key",
    ];
    let with_conn = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(conn.iter().map(|a| (*a).to_owned()));
        all
    };
    let request = |max: &str, valid_for: &str| {
        with_conn(&[
            "grants",
            "request",
            "--kind",
            "address",
            "--purpose",
            "shipping",
            "--max-reveals",
            max,
            "--valid-for",
            valid_for,
            "--reason",
            "r",
        ])
    };
    let grant = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (request("5", "0s"), "--valid-for", "is 0s"),
        (request("5", "5"), "--valid-for", "needs a unit"),
        (request("5", "soon"), "--valid-for", "is not a duration"),
        (request("5", "5 fortnights"), "--valid-for", "unknown unit"),
        (request("5", "-2h"), "--valid-for", "is negative"),
        (request("0", "2h"), "--max-reveals", "is 0"),
        (request("many", "2h"), "--max-reveals", "whole number"),
        (
            with_conn(&["grants", "list", "--state", "approved"]),
            "--state",
            "expected one of: pending, active, rejected, revoked, expired, exhausted",
        ),
        (
            with_conn(&["grants", "list", "--limit", "0"]),
            "--limit",
            "from 1 to 1000",
        ),
        (
            with_conn(&["grants", "approve", "not-a-grant"]),
            "ID",
            "is not a grant id",
        ),
        (
            with_conn(&[
                "detokenize",
                "--purpose",
                "shipping",
                "--grant",
                "+1 202-555-0101",
                "fv1_AAAAAAAAAAAAAAAAAAAAAA",
            ]),
            "--grant",
            "is not a grant id",
        ),
        (
            with_conn(&["grants", "request", "--purpose", "shipping"]),
            "--kind",
            "required",
        ),
    ];
    for (args, flag, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_to_exit(2, &args, "");
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains(says),
            "{args:?}: {}",
            show(&out)
        );
        assert!(
            !err.contains("UNAVAILABLE") && !err.contains("/nonexistent"),
            "{args:?} was not refused before connecting: {}",
            show(&out)
        );
        for quoted in [
            "soon",
            "fortnight",
            "approved",
            "not-a-grant",
            "555",
            "many",
        ] {
            assert!(
                !err.contains(quoted),
                "{args:?} quotes {quoted}: {}",
                show(&out)
            );
        }
        // With --json: one JSON error object on stdout.
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = run_to_exit(2, &with_json, "");
        let e = json(&out);
        assert_eq!(e["error"]["code"], "INVALID_ARGUMENT", "{args:?}: {e}");
    }
    // A good grant id still parses, and the command then tries to connect.
    let args = with_conn(&["grants", "show", grant]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_to_exit(2, &args, "");
    assert!(
        !stderr(&out).contains("is not a grant id"),
        "{}",
        show(&out)
    );
}

#[test]
fn policy_explain_shows_a_rule_that_requires_a_grant_and_answers_under_a_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, fieldvault::dev::DEV_POLICY).unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "--caller",
            FULFILMENT,
            "--action",
            "detokenize",
            "--kind",
            "address",
        ];
        args.extend(extra);
        args.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<String>>()
    };
    let run_explain = |code: i32, extra: &[&str]| {
        let args = explain(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_exit(code, &args, "")
    };
    // Without a grant: denied on grant, naming the rule.
    let out = run_explain(1, &["--purpose", "shipping"]);
    assert!(
        stdout(&out).contains("DENIED on grant: rule 'fulfilment reveals addresses in full")
            && stdout(&out).contains("only under an approved grant"),
        "{}",
        show(&out)
    );
    let j = json(&run_explain(1, &["--purpose", "shipping", "--json"]));
    assert_eq!(j["denied_on"], "grant", "{j}");
    // Under a grant: allowed in full, and the rule's approvals are shown.
    let out = run_explain(0, &["--purpose", "shipping", "--under-grant"]);
    let text = stdout(&out);
    assert!(
        text.contains("ALLOWED by rule 'fulfilment reveals addresses in full")
            && text.contains("  reveal: full\n")
            && text.contains(&format!(
                "  grant: required (only under an active grant; each value revealed consumes \
                 one of its reveals), 2 approvals by {APPROVER1}, {APPROVER2}\n"
            )),
        "{}",
        show(&out)
    );
    let j = json(&run_explain(
        0,
        &["--purpose", "shipping", "--under-grant", "--json"],
    ));
    assert_eq!(j["rule"]["requires_grant"], true, "{j}");
    assert_eq!(j["rule"]["grant"]["approvals"], 2, "{j}");
    // A grant covers its purpose only.
    let out = run_explain(1, &["--purpose", "marketing", "--under-grant"]);
    assert!(stdout(&out).contains("DENIED on purpose"), "{}", show(&out));
    // --under-grant is for a detokenize only.
    let out = run_to_exit(
        2,
        &[
            "policy",
            "explain",
            "--policy",
            policy.to_str().unwrap(),
            "--caller",
            ADMIN,
            "--action",
            "grants",
            "--under-grant",
        ],
        "",
    );
    assert!(
        stderr(&out).contains("--under-grant: only a detokenize reveals under a grant"),
        "{}",
        show(&out)
    );
}
