//! The client commands as a user runs them: the real `fieldvault` binary
//! against a real `serve --dev` server over mTLS (certificates made by
//! rcgen at start), input on stdin, output on stdout, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conn::closed_port;
use common::process::{start_dev, ServerProcess, BIN, CLI_DEADLINE};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// A dev server in a fresh data dir, and the connection arguments of each
/// dev identity.
struct Dev {
    _tmp: tempfile::TempDir,
    data: String,
    server: ServerProcess,
}

impl Dev {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let server = start_dev(&data, &tmp.path().join("server.log")).unwrap();
        Self {
            data: data.to_str().unwrap().to_owned(),
            _tmp: tmp,
            server,
        }
    }

    /// A dev server whose policy also lets support see addresses in full
    /// for purpose `label` (the setup made by a first start, then edited).
    fn start_allowing_full_addresses() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let log = tmp.path().join("server.log");
        drop(start_dev(&data, &log).unwrap());
        allow_full_addresses(&data);
        Self {
            server: start_dev(&data, &log).unwrap(),
            data: data.to_str().unwrap().to_owned(),
            _tmp: tmp,
        }
    }

    /// `args` then the connection flags for dev identity `who`.
    fn args(&self, who: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(
            [
                "--addr",
                &self.server.addr,
                "--dev-identity",
                who,
                "--data-dir",
                &self.data,
            ]
            .map(str::to_owned),
        );
        all
    }

    /// Runs the CLI as `who` with `args` and `stdin`; asserts that it
    /// exits with `code`.
    #[track_caller]
    fn run_to_exit(&self, code: i32, who: &str, args: &[&str], stdin: &str) -> Output {
        run_to_exit(code, &self.args(who, args), stdin)
    }
}

/// Runs the CLI with `args`, writing `stdin` to its standard input;
/// panics (after killing it) past [`CLI_DEADLINE`].
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &str) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    common::process::output_with_stdin(command, stdin, CLI_DEADLINE)
}

/// Waits for `child` to exit; panics (after killing it) past
/// [`CLI_DEADLINE`].
fn wait_within(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > CLI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the CLI still ran after {CLI_DEADLINE:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the CLI with `args` as a coprocess: its stdin to write to, and
/// its stdout lines as they come.
fn spawn_coprocess(args: &[String]) -> (Child, ChildStdin, Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, input, rx)
}

/// [`run`], asserting that the CLI exits with `code`.
#[track_caller]
fn run_to_exit<S: AsRef<std::ffi::OsStr>>(code: i32, args: &[S], stdin: &str) -> Output {
    let out = run(args, stdin);
    assert_eq!(out.status.code(), Some(code), "{}", show(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A fake number, `+1 202-555-01xx`, and its E.164 form.
fn phone(i: usize) -> (String, String) {
    let n = i % 100;
    (format!("+1 202-555-01{n:02}"), format!("+120255501{n:02}"))
}

#[test]
fn stdin_gives_every_line_one_output_line_in_order_and_a_blank_line_is_an_error_at_its_place() {
    let dev = Dev::start();
    let input = "+1 202-555-0101\n\n+1 202-555-01\n+1 202-555-0103\n";
    let out = dev.run_to_exit(
        1,
        "orders",
        &["tokenize", "--kind", "phone", "--stdin"],
        input,
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{}", show(&out));
    assert!(lines[0].starts_with("fv1_"), "{text}");
    assert_eq!(
        lines[1],
        "error INVALID_ARGUMENT: fields[1].value: is empty"
    );
    // +1 is a calling code shared by 25 regions, not a region.
    assert_eq!(
        lines[2],
        "error INVALID_ARGUMENT: fields[2].value: not a valid number for country calling \
         code +1: 8 digits follow the calling code, fixed-line and mobile numbers there have 10"
    );
    assert!(lines[3].starts_with("fv1_"), "{text}");

    // The same in JSON: one object per line, the index of its input line,
    // the canonical code and the BadRequest field violation.
    let out = dev.run_to_exit(
        1,
        "orders",
        &["tokenize", "--kind", "phone", "--stdin", "--json"],
        input,
    );
    let items = json_lines(&out);
    assert_eq!(items.len(), 4, "{}", show(&out));
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"], i, "{item}");
    }
    assert!(items[0]["token"].as_str().unwrap().starts_with("fv1_"));
    assert_eq!(
        items[1]["error"],
        serde_json::json!({
            "code": "INVALID_ARGUMENT",
            "message": "fields[1].value: is empty",
            "field_violations": [{"field": "fields[1].value", "description": "is empty"}],
        })
    );

    // detokenize --stdin: a blank line and a malformed token keep their
    // places, and say why.
    let t0 = lines[0];
    let t3 = lines[3];
    let short = &t0[..25];
    let tokens = format!("{t0}\n\n{short}\n{t3}\n");
    let out = dev.run_to_exit(
        1,
        "support",
        &["detokenize", "--purpose", "callback", "--stdin", "--json"],
        &tokens,
    );
    let items = json_lines(&out);
    assert_eq!(items.len(), 4, "{}", show(&out));
    assert_eq!(items[0]["token"], t0);
    assert_eq!(items[0]["kind"], "phone");
    assert_eq!(items[0]["reveal"], "full");
    assert_eq!(items[0]["value"], "+12025550101");
    assert_eq!(items[1]["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(items[1]["error"]["message"], "tokens[1]: token is empty");
    assert_eq!(
        items[2]["error"]["message"],
        "tokens[2]: token is 25 characters long; a token is 26 ('fv1_' and 22 more)"
    );
    assert_eq!(items[3]["value"], "+12025550103");

    // Text: the kind and reveal as the command line and policy spell them.
    let out = dev.run_to_exit(
        0,
        "support",
        &["detokenize", "--purpose", "callback", t3],
        "",
    );
    assert_eq!(stdout(&out), format!("{t3}\tphone\tfull\t+12025550103\n"));
}

#[test]
fn stdin_beyond_the_batch_limit_is_sent_in_chunks_and_detokenizes_back_in_order() {
    const N: usize = 2500;
    let dev = Dev::start();
    // More than the dev quota allows in a minute: without it (the server
    // reads the changed policy at the next call).
    std::fs::write(
        Path::new(&dev.data).join("dev/policy.toml"),
        common::dev_policy_without_quotas(),
    )
    .unwrap();
    let input: String = (0..N).map(|i| phone(i).0 + "\n").collect();
    let out = dev.run_to_exit(
        0,
        "orders",
        &["tokenize", "--kind", "phone", "--stdin"],
        &input,
    );
    let tokens = stdout(&out);
    assert_eq!(tokens.lines().count(), N);
    assert!(tokens.lines().all(|t| t.starts_with("fv1_")));
    let out = dev.run_to_exit(
        0,
        "support",
        &["detokenize", "--purpose", "callback", "--stdin"],
        &tokens,
    );
    let revealed = stdout(&out);
    let lines: Vec<&str> = revealed.lines().collect();
    assert_eq!(lines.len(), N);
    for (i, (line, token)) in lines.iter().zip(tokens.lines()).enumerate() {
        assert_eq!(
            *line,
            format!("{token}\tphone\tfull\t{}", phone(i).1),
            "line {i}"
        );
    }

    // A server limit below --batch-size: the chunks shrink to it.
    let out = dev.run_to_exit(
        0,
        "orders",
        &[
            "tokenize",
            "--kind",
            "phone",
            "--stdin",
            "--batch-size",
            "2000",
        ],
        &input,
    );
    assert_eq!(stdout(&out).lines().count(), N);
}

#[test]
fn json_whole_call_errors_are_one_json_object_on_stdout_with_the_canonical_code() {
    let dev = Dev::start();
    let out = dev.run_to_exit(
        0,
        "orders",
        &["tokenize", "--kind", "phone", phone(7).0.as_str()],
        "",
    );
    let token = stdout(&out).trim().to_owned();

    // A purpose the policy does not list: the call is refused as a whole.
    let out = dev.run_to_exit(
        2,
        "support",
        &["detokenize", "--purpose", "marketing", "--json", &token],
        "",
    );
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1, "{}", show(&out));
    assert_eq!(objects[0]["error"]["code"], "PERMISSION_DENIED");
    assert!(
        objects[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purpose 'marketing' is not allowed"),
        "{}",
        objects[0]
    );
    assert_eq!(objects[0]["unanswered_from"], 0);
    // Text mode: nothing on stdout, the reason on stderr, same code name.
    let out = dev.run_to_exit(
        2,
        "support",
        &["detokenize", "--purpose", "marketing", &token],
        "",
    );
    assert!(out.stdout.is_empty(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("fieldvault: PERMISSION_DENIED: "),
        "{}",
        show(&out)
    );

    // Nothing listens: the connection fails, still one JSON object.
    let args = [
        "tokenize",
        "--kind",
        "phone",
        "--json",
        "--addr",
        &closed_port(),
        "--dev-identity",
        "orders",
        "--data-dir",
        &dev.data,
        "+1 202-555-0108",
    ];
    let out = run_to_exit(2, &args, "");
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1, "{}", show(&out));
    assert_eq!(objects[0]["error"]["code"], "UNAVAILABLE", "{}", objects[0]);
}

/// Adds a rule to the dev policy so that support sees addresses in full
/// for purpose `label`.
fn allow_full_addresses(data: &Path) {
    let policy = data.join("dev/policy.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        "\n[[rules]]\ncallers = [\"spiffe://fieldvault.dev/support\"]\naction = \"detokenize\"\n\
         kinds = [\"address\"]\npurposes = [\"label\"]\nreveal = \"full\"\n",
    );
    std::fs::write(&policy, text).unwrap();
}

#[test]
fn a_structured_address_goes_in_as_json_and_comes_back_structured() {
    let dev = Dev::start_allowing_full_addresses();
    let address = r#"{"recipient":"Test Person","street_lines":["17 Fakestreet Lane"],"city":"Testville","region":"ZZ","postal_code":"99999","country":"United States of America"}"#;
    let input = format!("{address}\n{{\"zip\":\"99999\"}}\n");
    let out = dev.run_to_exit(
        1,
        "orders",
        &[
            "tokenize",
            "--kind",
            "address",
            "--address-json",
            "--stdin",
            "--json",
        ],
        &input,
    );
    let items = json_lines(&out);
    assert_eq!(items.len(), 2, "{}", show(&out));
    let token = items[0]["token"].as_str().unwrap().to_owned();
    assert_eq!(items[1]["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(
        items[1]["error"]["field_violations"][0]["field"],
        "fields[1].address"
    );
    assert!(!items[1].to_string().contains("99999"), "{}", items[1]);

    let out = dev.run_to_exit(
        0,
        "support",
        &["detokenize", "--purpose", "label", "--json", &token],
        "",
    );
    let items = json_lines(&out);
    assert_eq!(items[0]["kind"], "address");
    assert_eq!(items[0]["reveal"], "full");
    assert_eq!(
        items[0]["address"],
        serde_json::json!({
            "recipient": "Test Person",
            "street_lines": ["17 Fakestreet Lane"],
            "district": "",
            "city": "Testville",
            "region": "ZZ",
            "postal_code": "99999",
            "country": "US",
        })
    );
    // Text: the one-line form, then the structured parts as JSON.
    let out = dev.run_to_exit(
        0,
        "support",
        &["detokenize", "--purpose", "label", &token],
        "",
    );
    let text = stdout(&out);
    let columns: Vec<&str> = text.trim_end().split('\t').collect();
    assert_eq!(columns[..3], [token.as_str(), "address", "full"]);
    let parts: Value = serde_json::from_str(columns[4]).unwrap();
    assert_eq!(parts, items[0]["address"]);

    // --address-json is for addresses only.
    dev.run_to_exit(
        2,
        "orders",
        &["tokenize", "--kind", "phone", "--address-json", "{}"],
        "",
    );
}

#[test]
fn health_exits_0_when_serving_and_non_zero_when_unreachable() {
    let dev = Dev::start();
    let out = dev.run_to_exit(0, "intruder", &["health"], "");
    assert_eq!(stdout(&out), "SERVING\n");
    let out = dev.run_to_exit(
        0,
        "intruder",
        &["health", "--json", "--service", "fieldvault.v1.Vault"],
        "",
    );
    assert_eq!(
        json_lines(&out),
        [serde_json::json!({"service": "fieldvault.v1.Vault", "status": "SERVING"})]
    );

    let args = [
        "health",
        "--json",
        "--addr",
        &closed_port(),
        "--dev-identity",
        "intruder",
        "--data-dir",
        &dev.data,
    ];
    let out = run_to_exit(2, &args, "");
    assert_eq!(json_lines(&out)[0]["error"]["code"], "UNAVAILABLE");
    let text: Vec<&str> = args.into_iter().filter(|a| *a != "--json").collect();
    let out = run(&text, "");
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("fieldvault: UNAVAILABLE: "),
        "{}",
        show(&out)
    );
}

#[test]
fn a_call_failing_mid_input_keeps_the_answered_lines_names_the_first_unanswered_and_exits_2() {
    let dev = Dev::start();
    let args = dev.args(
        "orders",
        &[
            "tokenize",
            "--kind",
            "phone",
            "--stdin",
            "--json",
            "--batch-size",
            "1",
        ],
    );
    let (mut child, mut input, rx) = spawn_coprocess(&args);
    // The first line is answered (a chunk of one)...
    input.write_all(b"+1 202-555-0111\n").unwrap();
    input.flush().unwrap();
    let first = rx.recv_timeout(CLI_DEADLINE).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["index"], 0, "{first}");
    assert!(first["token"].as_str().unwrap().starts_with("fv1_"));
    // ...then the server goes away before the second.
    dev.server.kill9();
    input.write_all(b"+1 202-555-0112\n").unwrap();
    drop(input);
    let last = rx.recv_timeout(CLI_DEADLINE).unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["unanswered_from"], 1, "{last}");
    assert_eq!(last["error"]["code"], "UNAVAILABLE", "{last}");
    assert!(last.get("index").is_none(), "{last}");
    let status = wait_within(&mut child);
    assert_eq!(status.code(), Some(2));
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_err(),
        "nothing more"
    );
}

#[test]
fn a_batch_of_the_largest_addresses_is_revealed_in_one_call_and_audited_once() {
    const N: usize = 1000;
    let dev = Dev::start_allowing_full_addresses();
    // Every part at its longest (256 bytes): the answer for 1000 of them
    // is over tonic's default 4 MiB.
    let part = |tag: &str| tag.repeat(256 / tag.len());
    let address = serde_json::json!({
        "country": "US",
        "postal_code": "99999",
        "region": part("Zregion "),
        "city": part("Testvill"),
        "district": part("Distric "),
        "recipient": part("Test Per"),
        "street_lines": vec![part("Fakestr "); 8],
    })
    .to_string();
    let input: String = (0..N).map(|_| address.clone() + "\n").collect();
    let out = dev.run_to_exit(
        0,
        "orders",
        &["tokenize", "--kind", "address", "--address-json", "--stdin"],
        &input,
    );
    let tokens = stdout(&out);
    assert_eq!(tokens.lines().count(), N);
    let audit = Path::new(&dev.data).join("audit.log");
    let detokenize_calls = || {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"action\":\"detokenize\""))
            .count()
    };
    assert_eq!(detokenize_calls(), 0);

    let out = dev.run_to_exit(
        0,
        "support",
        &["detokenize", "--purpose", "label", "--stdin"],
        &tokens,
    );
    let revealed = stdout(&out);
    assert_eq!(revealed.lines().count(), N);
    assert!(revealed.lines().all(|l| l.contains("\taddress\tfull\t")));
    assert!(revealed.len() > 4 * 1024 * 1024, "{}", revealed.len());
    // One call revealed (and audited) them all, once.
    assert_eq!(detokenize_calls(), 1);
}

#[test]
fn stdin_lines_are_answered_when_input_pauses_and_a_byte_order_mark_is_dropped() {
    let dev = Dev::start();
    // A BOM before the first line (as Windows editors write): not part of
    // the value.
    let out = dev.run_to_exit(
        0,
        "orders",
        &["tokenize", "--kind", "phone", "--stdin"],
        "\u{feff}+1 202-555-0121\n+1 202-555-0122\n",
    );
    assert_eq!(stdout(&out).lines().count(), 2);

    // A coprocess: one line in, its answer out while stdin stays open.
    let args = dev.args("orders", &["tokenize", "--kind", "phone", "--stdin"]);
    let (mut child, mut input, rx) = spawn_coprocess(&args);
    for n in ["+1 202-555-0123\n", "+1 202-555-0124\n"] {
        input.write_all(n.as_bytes()).unwrap();
        input.flush().unwrap();
        // Without an answer per pause, nothing comes before EOF.
        let token = rx.recv_timeout(Duration::from_secs(20));
        assert!(
            token.as_deref().is_ok_and(|t| t.starts_with("fv1_")),
            "no answer while stdin is open: {token:?}"
        );
    }
    drop(input);
    let status = wait_within(&mut child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_steady_stdin_stream_is_answered_while_it_flows_not_at_eof() {
    let dev = Dev::start();
    // One line every 100 ms (as `tail -f` gives): no pause of 150 ms ever
    // comes, yet each line is answered within about 150 ms of arriving.
    let args = dev.args(
        "orders",
        &["tokenize", "--kind", "phone", "--stdin", "--json"],
    );
    let (mut child, mut input, rx) = spawn_coprocess(&args);
    const LINES: usize = 20;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            for i in 0..LINES {
                // Line 7 is blank: an error at its place.
                let line = if i == 7 {
                    "\n".to_owned()
                } else {
                    format!("{}\n", phone(i).0)
                };
                if input.write_all(line.as_bytes()).is_err() {
                    return;
                }
                let _ = input.flush();
                written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
            // The pipe stays open until the test has seen what it needs
            // (bounded).
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
            drop(input);
        })
    };
    let first = rx.recv_timeout(Duration::from_secs(20));
    let written_at_first = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(first.is_ok(), "no answer while stdin is open: {first:?}");
    assert!(
        written_at_first < LINES,
        "the first answer came only after all {LINES} lines were written"
    );
    let mut lines = vec![first.unwrap()];
    while lines.len() < LINES {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("{e}: after {} lines: {lines:?}", lines.len()),
        }
    }
    let _ = done_tx.send(());
    writer.join().unwrap();
    let status = wait_within(&mut child);
    assert_eq!(status.code(), Some(1), "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        let item: Value = serde_json::from_str(line).unwrap();
        assert_eq!(item["index"], i, "{line}");
        if i == 7 {
            assert_eq!(item["error"]["code"], "INVALID_ARGUMENT", "{line}");
        } else {
            assert!(
                item["token"].as_str().unwrap().starts_with("fv1_"),
                "{line}"
            );
        }
    }
}

#[test]
fn health_of_an_unknown_service_names_it() {
    let dev = Dev::start();
    let out = dev.run_to_exit(
        2,
        "intruder",
        &["health", "--json", "--service", "nope.Svc"],
        "",
    );
    let json = &json_lines(&out)[0];
    assert_eq!(json["error"]["code"], "NOT_FOUND", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("--service \"nope.Svc\" is not registered on this server"),
        "{json}"
    );
}

#[test]
fn a_second_server_names_the_port_or_the_store_in_use_without_raw_errors() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    let log = tmp.path().join("second.log");
    // Why a second `serve --dev` on `listen` and `data` did not start.
    let refusal = |listen: &str, data: &str| {
        common::process::start(
            &["serve", "--dev", "--listen", listen, "--data-dir", data],
            "info",
            &log,
        )
        .err()
    };
    let err = refusal(&dev.server.addr, other.to_str().unwrap())
        .expect("a second server on the same port started");
    assert!(
        err.contains("the address is in use (another fieldvault server, or another program, listens there?); choose another with --listen ADDR"),
        "{err}"
    );
    let err = refusal("127.0.0.1:0", &dev.data).expect("a second server on the same store started");
    assert!(
        err.contains("the store is in use by another process"),
        "{err}"
    );
    assert!(!err.contains("os error 11"), "{err}");
}
