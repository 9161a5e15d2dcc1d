//! The data lifecycle from the command line, as a user runs it (README,
//! "Data lifecycle"): the real `fieldvault` binary against a real
//! `serve --dev` server over mTLS (certificates made at start), as the dev
//! identities orders (tokenize --ttl, delete, info) and admin (erase,
//! export for "dsar"); argument mistakes; and a dev setup whose policy
//! predates the lifecycle rules. Every run of the CLI has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::*;
use common::process::{start_dev, ServerProcess};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// One phone number in two formats (the second read in region US).
const PHONE: &str = "+1 202-555-0161";
const PHONE_NATIONAL: &str = "(202) 555-0161";
const PHONE_CANONICAL: &str = "+12025550161";
const EMAIL: &str = "cli.lifecycle@example.com";

/// The files under `dir` that hold any of `needles`.
fn files_containing(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path) {
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(format!("{} holds {needle:?}", path.display()));
                }
            }
        }
    }
    hits
}

const NEEDLES: [&str; 6] = [
    PHONE,
    PHONE_NATIONAL,
    PHONE_CANONICAL,
    "2025550161",
    "555-0161",
    EMAIL,
];

#[test]
fn tokenize_with_a_ttl_then_info_export_erase_and_delete_from_the_command_line_as_the_dev_identities(
) {
    let dev = Dev::start();
    // orders: two tokens of one number (dev mode: random tokens), one
    // with a time to live, read from standard input.
    let out = dev.run(
        0,
        "orders",
        &["tokenize", "--kind", "phone", "--ttl", "90d", "--stdin"],
        &format!("{PHONE}\n"),
    );
    let expiring = stdout(&out).trim().to_owned();
    let out = dev.run(
        0,
        "orders",
        &[
            "tokenize", "--kind", "phone", "--region", "US", "--stdin", "--json",
        ],
        &format!("{PHONE_NATIONAL}\n"),
    );
    let kept = json_lines(&out)[0]["token"].as_str().unwrap().to_owned();

    // info: one line per token, tab-separated, never a value.
    let out = dev.run(0, "orders", &["info", &expiring, &kept], "");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{}", show(&out));
    let columns: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(columns[0], expiring);
    assert_eq!(columns[1], "phone");
    assert!(columns[2].starts_with("created 20"), "{}", lines[0]);
    assert!(columns[3].starts_with("expires 20"), "{}", lines[0]);
    assert_eq!(&columns[4..], ["key v1", "random"], "{}", lines[0]);
    assert!(lines[1].contains("\texpires never\t"), "{}", lines[1]);
    let out = dev.run(0, "orders", &["info", "--json", &expiring], "");
    let info = &json_lines(&out)[0];
    assert_eq!(info["index"], 0);
    assert_eq!(info["token"], expiring.as_str());
    let lived =
        info["expires_unix_ms"].as_u64().unwrap() - info["created_unix_ms"].as_u64().unwrap();
    assert!(
        (90 * 86_400_000..=90 * 86_400_000 + 500).contains(&lived),
        "{info}"
    );
    // An unknown token: its own line, exit 1.
    let out = dev.run(
        1,
        "orders",
        &["info", &kept, "fv1_AAAAAAAAAAAAAAAAAAAAAA"],
        "",
    );
    assert!(
        stdout(&out).contains("fv1_AAAAAAAAAAAAAAAAAAAAAA\terror NOT_FOUND: tokens[1]"),
        "{}",
        show(&out)
    );

    // export (admin, dsar): both tokens, found by either format.
    let out = dev.run(
        0,
        "admin",
        &["export", "--kind", "phone", "--purpose", "dsar", "--stdin"],
        &format!("{PHONE}\n"),
    );
    let mut listed: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut both = vec![expiring.clone(), kept.clone()];
    both.sort();
    assert_eq!(listed, both, "{}", show(&out));
    assert!(
        stderr(&out).contains("2 phone tokens held for this value"),
        "{}",
        show(&out)
    );
    let out = dev.run(
        0,
        "admin",
        &[
            "export",
            "--kind",
            "phone",
            "--region",
            "US",
            "--purpose",
            "dsar",
            "--json",
            PHONE_NATIONAL,
        ],
        "",
    );
    let answer = &json_lines(&out)[0];
    assert_eq!(answer["count"], 2, "{answer}");
    assert_eq!(answer["purpose"], "dsar");
    // orders may not export; admin not for another purpose: exit 2.
    let out = dev.run(
        2,
        "orders",
        &["export", "--kind", "phone", "--purpose", "dsar", "--stdin"],
        &format!("{PHONE}\n"),
    );
    assert!(stderr(&out).contains("PERMISSION_DENIED"), "{}", show(&out));
    let out = dev.run(
        2,
        "admin",
        &[
            "export",
            "--kind",
            "phone",
            "--purpose",
            "marketing",
            "--json",
            "--stdin",
        ],
        &format!("{PHONE}\n"),
    );
    assert_eq!(json_lines(&out)[0]["error"]["code"], "PERMISSION_DENIED");

    // erase (admin): every token of the number; they never detokenize
    // again.
    let out = dev.run(
        2,
        "orders",
        &["erase", "--kind", "phone", "--stdin"],
        &format!("{PHONE}\n"),
    );
    assert!(stderr(&out).contains("PERMISSION_DENIED"), "{}", show(&out));
    let out = dev.run(
        0,
        "admin",
        &["erase", "--kind", "phone", "--stdin"],
        &format!("{PHONE}\n"),
    );
    let mut erased: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.strip_suffix("\terased").unwrap().to_owned())
        .collect();
    erased.sort();
    assert_eq!(erased, both, "{}", show(&out));
    assert!(
        stderr(&out).contains("erased 2 phone tokens of this value"),
        "{}",
        show(&out)
    );
    let out = dev.run(
        1,
        "support",
        &["detokenize", "--purpose", "callback", &expiring, &kept],
        "",
    );
    assert_eq!(
        stdout(&out).matches("error NOT_FOUND").count(),
        2,
        "{}",
        show(&out)
    );
    let out = dev.run(
        0,
        "admin",
        &["erase", "--kind", "phone", "--json", "--stdin"],
        &format!("{PHONE}\n"),
    );
    assert_eq!(
        json_lines(&out)[0]["count"],
        0,
        "nothing left: {}",
        show(&out)
    );

    // delete (orders): per token; an absent one is NOT_FOUND, exit 1.
    let out = dev.run(
        0,
        "orders",
        &["tokenize", "--kind", "email", "--stdin"],
        &format!("{EMAIL}\n{EMAIL}\n"),
    );
    let emails: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let out = dev.run(0, "orders", &["delete", &emails[0]], "");
    assert_eq!(stdout(&out), format!("{}\tdeleted\temail\n", emails[0]));
    let out = dev.run(
        1,
        "orders",
        &["delete", "--json", "--stdin"],
        &format!("{}\n{}\n", emails[0], emails[1]),
    );
    let lines = json_lines(&out);
    assert_eq!(lines[0]["error"]["code"], "NOT_FOUND", "{}", show(&out));
    assert_eq!(lines[1]["deleted"], true, "{}", show(&out));
    assert_eq!(lines[1]["kind"], "email");
    let out = dev.run(1, "orders", &["delete", "not a token"], "");
    assert!(
        stdout(&out).contains("\terror INVALID_ARGUMENT: tokens[0]"),
        "{}",
        show(&out)
    );
    // support may not delete: nothing is deleted.
    let out = dev.run(0, "orders", &["tokenize", "--kind", "phone", PHONE], "");
    let last = stdout(&out).trim().to_owned();
    let refused = run(
        &[
            "delete",
            &last,
            "--addr",
            &dev.server.addr,
            "--dev-identity",
            "support",
            "--data-dir",
            dev.data.to_str().unwrap(),
        ],
        "",
    );
    assert_ne!(refused.status.code(), Some(0), "{}", show(&refused));
    dev.run(
        0,
        "support",
        &["detokenize", "--purpose", "callback", &last],
        "",
    );

    // Every call above is in the audit trail, which still verifies; no
    // value in it, in the store or in the server's trace log.
    let data = dev.data.to_str().unwrap();
    let out = run_to_exit(0, &["audit", "verify", "--data-dir", data], "");
    assert!(stdout(&out).starts_with("intact: "), "{}", show(&out));
    let out = run_to_exit(0, &["audit", "search", "--json", "--data-dir", data], "");
    let events = stdout(&out);
    for action in ["\"delete\"", "\"inspect\"", "\"erase\"", "\"export\""] {
        assert!(events.contains(action), "no {action} event: {events}");
    }
    let log = dev.log();
    assert!(log.len() > 1000, "trace logs were captured");
    drop(dev.server);
    let hits = files_containing(dev.tmp.path(), &NEEDLES);
    assert!(hits.is_empty(), "plaintext in data dir or logs: {hits:?}");
    for needle in NEEDLES {
        assert!(!events.contains(needle), "a value in the audit search");
    }
}

#[test]
fn a_token_with_a_two_second_ttl_from_the_command_line_is_not_found_once_it_expires() {
    let dev = Dev::start();
    let out = dev.run(
        0,
        "orders",
        &["tokenize", "--kind", "phone", "--ttl", "2s", "--stdin"],
        &format!("{PHONE}\n"),
    );
    let token = stdout(&out).trim().to_owned();
    let out = dev.run(0, "orders", &["info", "--json", &token], "");
    let expires = json_lines(&out)[0]["expires_unix_ms"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            &[
                "detokenize",
                "--purpose",
                "callback",
                &token,
                "--addr",
                &dev.server.addr,
                "--dev-identity",
                "support",
                "--data-dir",
                dev.data.to_str().unwrap(),
            ],
            "",
        );
        match out.status.code() {
            Some(0) => {
                assert!(Instant::now() < deadline, "never expired: {}", show(&out));
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(1) => {
                assert!(stdout(&out).contains("error NOT_FOUND"), "{}", show(&out));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                assert!(now >= expires, "NOT_FOUND before its expiry");
                break;
            }
            _ => panic!("{}", show(&out)),
        }
    }
}

#[test]
fn argument_mistakes_are_refused_naming_the_flag_before_anything_is_sent() {
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
    let with_conn = |args: &[&'static str]| {
        let mut all = args.to_vec();
        all.extend(conn);
        all
    };
    for (ttl, says) in [
        ("0s", "is 0s; a time to live must be more than zero"),
        ("-5s", "is negative"),
        ("soon", "is not a duration"),
        ("5", "needs a unit, e.g. 5s or 90d"),
        ("+1 202-555-0161", "--ttl"),
    ] {
        let out = run_to_exit(
            2,
            &with_conn(&["tokenize", "--kind", "phone", "--ttl", ttl, PHONE]),
            "",
        );
        let err = stderr(&out);
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains("--ttl") && err.contains(says),
            "{}",
            show(&out)
        );
        assert!(!err.contains("555") && !err.contains("soon"), "{err}");
        let out = run_to_exit(
            2,
            &with_conn(&["tokenize", "--kind", "phone", "--json", "--ttl", ttl, PHONE]),
            "",
        );
        let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{v}");
    }
    // erase and export take one value: a second line, or a value and
    // --stdin both, are refused.
    let out = run_to_exit(
        2,
        &with_conn(&["erase", "--kind", "phone", "--stdin"]),
        &format!("{PHONE}\n{PHONE_NATIONAL}\n"),
    );
    assert!(
        stderr(&out).contains("--stdin: holds more than one line"),
        "{}",
        show(&out)
    );
    assert!(!stderr(&out).contains("555"), "{}", show(&out));
    let out = run_to_exit(
        2,
        &with_conn(&["erase", "--kind", "phone", "--stdin", PHONE]),
        "",
    );
    assert!(!stderr(&out).contains("555"), "{}", show(&out));
    for args in [
        vec!["erase", "--kind", "phone", PHONE, PHONE_NATIONAL],
        vec![
            "export",
            "--kind",
            "phone",
            "--purpose",
            "dsar",
            PHONE,
            PHONE_NATIONAL,
        ],
    ] {
        let out = run_to_exit(2, &with_conn(&args), "");
        let err = stderr(&out);
        assert!(
            err.contains("INVALID_ARGUMENT")
                && err.contains("erase and export take one value per command"),
            "{}",
            show(&out)
        );
        assert!(!err.contains("555"), "{}", show(&out));
    }
    let out = run_to_exit(
        2,
        &with_conn(&["export", "--kind", "phone", "--stdin", "--json"]),
        &format!("{PHONE}\n"),
    );
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v["error"]["code"], "INVALID_ARGUMENT",
        "--purpose is required: {v}"
    );
    let out = run_to_exit(
        2,
        &with_conn(&["erase", "--kind", "phone", "--address-json", "--stdin"]),
        "{}\n",
    );
    assert!(
        stderr(&out).contains("--address-json: only with --kind address"),
        "{}",
        show(&out)
    );
    let out = run_to_exit(2, &with_conn(&["delete"]), "");
    assert!(stderr(&out).contains("TOKENS"), "{}", show(&out));
}

#[test]
fn a_dev_setup_whose_policy_predates_the_lifecycle_rules_keeps_it_and_says_what_it_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    assert!(start_dev(&data, &log).unwrap().terminate_ok());
    // The dev policy as it was before: without the lifecycle and backup
    // rules, nor those of approved workflows.
    let policy = data.join("dev/policy.toml");
    let old: String = fieldvault::dev::DEV_POLICY
        .split("[[rules]]")
        .filter(|rule| {
            ![
                "\"delete\"",
                "\"inspect\"",
                "\"erase\"",
                "\"export\"",
                "\"backup\"",
                "\"grants\"",
            ]
            .iter()
            .any(|a| rule.contains(&format!("action = {a}")))
                && !rule.contains("requires_grant")
        })
        .collect::<Vec<_>>()
        .join("[[rules]]");
    assert!(!old.contains("action = \"erase\""));
    std::fs::write(&policy, &old).unwrap();
    let server = start_dev(&data, &log).unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("predates rules of this version's dev policy"))
        .collect();
    assert_eq!(lines.len(), 1, "{logged}");
    assert!(
        lines[0].contains(
            "orders: delete, orders: inspect, admin: erase, admin: export, admin: backup, \
             fulfilment: detokenize under a grant, admin: grants"
        ) && lines[0].contains("deploy/dev/policy.toml")
            && lines[0].contains("serve --dev --reset"),
        "{}",
        lines[0]
    );
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), old);
    // The calls those rules allow are refused until the rules are added.
    let data_s = data.to_str().unwrap();
    let out = run(
        &[
            "erase",
            "--kind",
            "phone",
            "--stdin",
            "--addr",
            &server.addr,
            "--dev-identity",
            "admin",
            "--data-dir",
            data_s,
        ],
        &format!("{PHONE}\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("PERMISSION_DENIED"), "{}", show(&out));
    // A current dev policy says nothing.
    assert!(server.terminate_ok());
    std::fs::write(&policy, fieldvault::dev::DEV_POLICY).unwrap();
    let before = std::fs::read_to_string(&log).unwrap().len();
    let server = start_dev(&data, &log).unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged[before..].contains("predates the data-lifecycle rules"),
        "{logged}"
    );
    drop(server);
}

trait Stop {
    fn terminate_ok(self) -> bool;
}

impl Stop for ServerProcess {
    fn terminate_ok(self) -> bool {
        self.terminate(Duration::from_secs(30)).success()
    }
}
