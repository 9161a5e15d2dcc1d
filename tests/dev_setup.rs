//! The server's setup has no dead ends, tested with the real binary: the
//! dev reset, `--config` with dev-only flags, `--dev-identity` names, the
//! data directory hint, a second server on the same store, and logs
//! without colour codes in a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conn::{cli_in, closed_port, stderr, stdout};
use common::process::{start_dev, BIN, START_DEADLINE};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(30);

fn tokenize_as_orders(
    cwd: &Path,
    addr: &str,
    data_dir: &Path,
    value: &str,
) -> std::process::Output {
    cli_in(
        cwd,
        &[
            "tokenize",
            "--addr",
            addr,
            "--dev-identity",
            "orders",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--kind",
            "phone",
            value,
        ],
        &[],
        RUN,
    )
}

/// `serve --dev`, then `flags`, then `--data-dir data`.
fn dev_args<'a>(data: &'a Path, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--dev"];
    args.extend(flags);
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args
}

/// Runs `serve --dev` with `flags` on `data` in `cwd` to its end (bounded
/// by [`RUN`]): for the runs that are refused or stop by themselves.
fn serve_dev_in(cwd: &Path, data: &Path, flags: &[&str]) -> std::process::Output {
    cli_in(cwd, &dev_args(data, flags), &[], RUN)
}

#[test]
fn serve_dev_reset_starts_over_and_the_new_setup_works() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let server = start_dev(&data, &log).unwrap();
    // The data dir dev mode made is private from the start: nothing to
    // warn about on a first start (tests run under the usual umask 022).
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !first_log.contains("open to group or others"),
        "{first_log}"
    );
    let out = tokenize_as_orders(tmp.path(), &server.addr, &data, "+1 202-555-0150");
    assert!(out.status.success(), "{}", stderr(&out));
    let old_ca = std::fs::read(data.join("dev/ca.pem")).unwrap();
    assert!(server.terminate(STOP).success());

    // The old way out (delete DATA_DIR/dev) leaves the store under the old
    // master key: the server refuses to start, makes no new setup beside
    // it, and names the reset.
    std::fs::remove_dir_all(data.join("dev")).unwrap();
    let refused = start_dev(&data, &log)
        .err()
        .expect("started on a store under another key");
    assert!(
        refused.contains("whose dev/ setup was deleted")
            && refused.contains("fieldvault serve --dev --reset"),
        "{refused}"
    );
    assert!(!data.join("dev").exists());

    let reset = common::process::start(
        &dev_args(&data, &["--reset", "--listen", "127.0.0.1:0"]),
        "info",
        &log,
    )
    .unwrap();
    for removed in ["store", "audit.log"] {
        let line = format!("reset: deleted {}", data.join(removed).display());
        assert!(
            reset.stdout.contains(&line),
            "{line:?} not in {}",
            reset.stdout
        );
    }
    assert_ne!(std::fs::read(data.join("dev/ca.pem")).unwrap(), old_ca);
    let out = tokenize_as_orders(tmp.path(), &reset.addr, &data, "+1 202-555-0151");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fv1_"), "{}", stdout(&out));

    // While it runs, a reset is refused: the store is in use.
    let again = serve_dev_in(tmp.path(), &data, &["--reset", "--listen", "127.0.0.1:0"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is in use by another process"),
        "{}",
        stderr(&again)
    );
    assert!(data.join("dev/ca.pem").exists());
    assert!(reset.terminate(STOP).success());
}

#[test]
fn a_reset_deletes_only_what_dev_mode_made() {
    let tmp = tempfile::tempdir().unwrap();
    // A port already taken: the server stops right after the reset.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let reset = |data: &Path| serve_dev_in(tmp.path(), data, &["--reset", "--listen", &taken]);
    // A folder of someone else's that happens to hold dev/ and audit.log:
    // not a dev data dir, nothing is deleted.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("dev")).unwrap();
    std::fs::write(project.join("dev/deploy.sh"), "echo fake\n").unwrap();
    std::fs::write(project.join("audit.log"), "notes\n").unwrap();
    let out = reset(&project);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not look like a dev data directory"),
        "{}",
        stderr(&out)
    );
    assert!(project.join("dev/deploy.sh").exists());
    assert!(project.join("audit.log").exists());

    // A dev data dir with a file of the user's in dev/: the setup's files
    // go, that file stays.
    let data = tmp.path().join("data");
    fieldvault::dev::prepare(&data, "127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(data.join(fieldvault::dev::DEV_MARKER).exists());
    std::fs::write(data.join("dev/notes.txt"), "mine\n").unwrap();
    let out = reset(&data);
    // The reset is done before the server fails to listen on the taken port.
    assert!(stdout(&out).contains("reset: deleted"), "{}", stdout(&out));
    assert!(data.join("dev/notes.txt").exists());
    assert!(data.join("dev/ca.pem").exists(), "a new setup is made");
}

#[test]
fn a_reset_does_not_follow_a_linked_dev_dir_and_dev_mode_keeps_out_of_a_foreign_one() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let serve = |data: &Path, reset: bool| {
        let mut flags = vec!["--listen", taken.as_str()];
        if reset {
            flags.push("--reset");
        }
        serve_dev_in(tmp.path(), data, &flags)
    };
    // Another data dir's setup, reached through a link: its master key
    // must survive a reset of the linking dir, marker or not.
    let real = tmp.path().join("real");
    fieldvault::dev::prepare(&real, "127.0.0.1:0".parse().unwrap()).unwrap();
    let master = std::fs::read(real.join("dev/master.key")).unwrap();
    let linking = tmp.path().join("linking");
    std::fs::create_dir_all(&linking).unwrap();
    std::os::unix::fs::symlink(real.join("dev"), linking.join("dev")).unwrap();
    for marked in [false, true] {
        if marked {
            std::fs::write(linking.join(fieldvault::dev::DEV_MARKER), "x\n").unwrap();
        }
        let out = serve(&linking, true);
        assert!(!out.status.success());
        assert!(!stdout(&out).contains("reset: deleted"), "{}", stdout(&out));
        assert_eq!(
            std::fs::read(real.join("dev/master.key")).unwrap(),
            master,
            "{}",
            stderr(&out)
        );
    }

    // A marked data dir whose dev/ links to a folder holding files named
    // like a setup's (a production config directory): nothing there is
    // removed or written.
    let etc = tmp.path().join("etc-fieldvault");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("master.key"), "production\n").unwrap();
    let marked = tmp.path().join("marked");
    std::fs::create_dir_all(&marked).unwrap();
    std::fs::write(marked.join(fieldvault::dev::DEV_MARKER), "x\n").unwrap();
    std::os::unix::fs::symlink(&etc, marked.join("dev")).unwrap();
    let out = serve(&marked, false);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(etc.join("master.key")).unwrap(),
        "production\n"
    );
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);

    // A dev/ linking to an empty folder: no setup is written through it.
    let empty = tmp.path().join("empty-target");
    std::fs::create_dir_all(&empty).unwrap();
    let through = tmp.path().join("through");
    std::fs::create_dir_all(&through).unwrap();
    std::os::unix::fs::symlink(&empty, through.join("dev")).unwrap();
    let out = serve(&through, false);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "{}",
        stderr(&out)
    );

    // Someone's own dev/ folder in the data dir: dev mode writes nothing
    // among its files.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("dev")).unwrap();
    std::fs::write(home.join("dev/policy.toml"), "# mine\n").unwrap();
    let out = serve(&home, false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds files dev mode did not make"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = std::fs::read_dir(home.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["policy.toml"]);
    assert_eq!(
        std::fs::read_to_string(home.join("dev/policy.toml")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn a_reset_trusts_no_file_names_and_checks_everything_before_deleting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let reset = |data: &Path| serve_dev_in(tmp.path(), data, &["--reset", "--listen", &port]);
    let nothing_deleted = |data: &Path, out: &std::process::Output| {
        assert!(!out.status.success());
        assert!(!stdout(out).contains("reset: deleted"), "{}", stdout(out));
        for kept in ["dev/ca.pem", "dev/master.key", "store", "audit.log"] {
            assert!(
                std::fs::symlink_metadata(data.join(kept)).is_ok(),
                "{kept} was deleted: {}",
                stderr(out)
            );
        }
    };
    let fill = |data: &Path| {
        std::fs::create_dir_all(data.join("dev")).unwrap();
        std::fs::create_dir_all(data.join("store")).unwrap();
        std::fs::write(data.join("dev/master.key"), "production\n").unwrap();
        std::fs::write(data.join("audit.log"), "production\n").unwrap();
    };
    // A production data dir that keeps its own CA and master key in dev/,
    // no marker: the file names are dev mode's, the CA is not.
    let production = tmp.path().join("production");
    fill(&production);
    let own_ca = fieldvault::devpki::DevCa::new("Example Corp CA").unwrap();
    std::fs::write(production.join("dev/ca.pem"), own_ca.cert_pem()).unwrap();
    let out = reset(&production);
    nothing_deleted(&production, &out);
    assert!(
        stderr(&out).contains("does not look like a dev data directory"),
        "{}",
        stderr(&out)
    );
    // Plain `serve --dev` there does not claim that dev/ either.
    let out = serve_dev_in(tmp.path(), &production, &["--listen", &port]);
    assert!(
        stderr(&out).contains("already holds files dev mode did not make")
            || stderr(&out).contains("holds a store"),
        "{}",
        stderr(&out)
    );

    // A dev data dir (marked) where something is not what dev mode made:
    // a FIFO at store/db (whose open would block), audit.log a directory.
    // Nothing is deleted, and the FIFO does not hang the reset (RUN bounds
    // it, and the message is checked).
    for odd in ["fifo", "audit-dir"] {
        let data = tmp.path().join(odd);
        fill(&data);
        std::fs::write(data.join("dev/ca.pem"), own_ca.cert_pem()).unwrap();
        std::fs::write(data.join(fieldvault::dev::DEV_MARKER), "x\n").unwrap();
        if odd == "fifo" {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                data.join("store/db"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
                0,
            )
            .unwrap();
        } else {
            std::fs::remove_file(data.join("audit.log")).unwrap();
            std::fs::create_dir(data.join("audit.log")).unwrap();
        }
        let out = reset(&data);
        nothing_deleted(&data, &out);
        assert!(
            stderr(&out).contains("is not what dev mode made there"),
            "{odd}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_reset_leaves_a_data_dir_without_a_dev_setup_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("store")).unwrap();
    let out = serve_dev_in(tmp.path(), &data, &["--reset"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not look like a dev data directory"),
        "{}",
        stderr(&out)
    );
    assert!(data.join("store").exists());
}

#[test]
fn dev_mode_refuses_a_data_dir_holding_a_store_but_no_dev_setup_and_creates_nothing() {
    // A production data dir (or a dev one whose dev/ was deleted by hand):
    // a new dev setup there would hold a master key that cannot open the
    // store, and the reset it then suggests would delete the store.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("store")).unwrap();
    let out = serve_dev_in(tmp.path(), &data, &["--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds a store") && stderr(&out).contains("but no dev/ setup"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("dev").exists());
    assert!(data.join("store").exists());
}

#[test]
fn serve_with_a_config_file_refuses_the_dev_only_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("fieldvault.toml").display().to_string();
    for (flags, said) in [
        (
            vec!["--listen", "127.0.0.1:0"],
            format!("--listen applies to --dev only; with --config, set `listen` in {config}"),
        ),
        (
            vec!["--data-dir", "elsewhere"],
            format!("--data-dir applies to --dev only; with --config, set `data_dir` in {config}"),
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--data-dir", "elsewhere"],
            "--listen and --data-dir apply to --dev only".to_owned(),
        ),
        (
            vec!["--reset"],
            format!("--reset applies to --dev only: a store served with --config is never deleted by fieldvault (its data_dir is set in {config})"),
        ),
    ] {
        let mut args = vec!["serve", "--config", &config];
        args.extend(flags);
        let out = cli_in(tmp.path(), &args, &[], RUN);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&said),
            "{said:?} not in {}",
            stderr(&out)
        );
    }
}

#[test]
fn dev_identity_lists_the_identities_and_refuses_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fieldvault-data");
    fieldvault::dev::prepare(&data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let run = |name: &str| {
        cli_in(
            tmp.path(),
            &[
                "tokenize",
                "--dev-identity",
                name,
                "--kind",
                "phone",
                "+1 202-555-0152",
            ],
            &[],
            RUN,
        )
    };
    // What was typed is never quoted back: it may be a value typed into
    // the wrong place.
    for unknown in ["auditor", "12025550153"] {
        let out = run(unknown);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(
                "--dev-identity: no dev identity of that name in ./fieldvault-data/dev; the identities there: admin, approver1, approver2, fulfilment, intruder, orders, rotator, support"
            ),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains(unknown), "{}", stderr(&out));
    }
    for not_a_name in [
        "../dev/support",
        "/etc/passwd",
        "orders/../support",
        "+1 202-555-0153",
    ] {
        let out = run(not_a_name);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("--dev-identity: not an identity name")
                && !stderr(&out).contains(not_a_name),
            "{}",
            stderr(&out)
        );
    }
    for not_a_caller in ["server", "ca"] {
        let out = run(not_a_caller);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!(
                "--dev-identity {not_a_caller}: that is the {not_a_caller} certificate of the dev setup, not a caller"
            )),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_client_run_elsewhere_says_where_it_looked_and_how_to_point_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vault").join("fieldvault-data");
    fieldvault::dev::prepare(&data, "127.0.0.1:0".parse().unwrap()).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let args = [
        "tokenize",
        "--dev-identity",
        "orders",
        "--kind",
        "phone",
        "+1 202-555-0153",
    ];
    let out = cli_in(&elsewhere, &args, &[], RUN);
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "no dev setup in ./fieldvault-data/dev",
        &format!(
            "looked in {}",
            elsewhere.join("fieldvault-data/dev").display()
        ),
        "--data-dir (or FIELDVAULT_DATA_DIR)",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // FIELDVAULT_DATA_DIR points it there: the setup is found, and the
    // command gets as far as connecting (to a port nothing listens on).
    let closed = closed_port();
    let out = cli_in(
        &elsewhere,
        &args,
        &[
            ("FIELDVAULT_DATA_DIR", data.to_str().unwrap()),
            ("FIELDVAULT_ADDR", &closed),
        ],
        RUN,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_says_the_store_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = start_dev(&data, &tmp.path().join("first.log")).unwrap();
    let second = serve_dev_in(tmp.path(), &data, &["--listen", "127.0.0.1:0"]);
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("the store is in use by another process (another fieldvault server on the same data_dir?)"),
        "{err}"
    );
    assert!(!err.contains("WouldBlock"), "{err}");
    assert!(first.terminate(STOP).success());
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log_path = tmp.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args(dev_args(&data, &["--listen", "127.0.0.1:0"]))
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening on") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let listening = rx.recv_timeout(START_DEADLINE).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "not listening after {:?}", started.elapsed());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a file: {logs:?}");
}

/// A ClientHello that names `127.0.0.1` as SNI, as Node.js sends when it
/// connects to an IP address (rustls itself never sends an IP address as
/// SNI: its hello for `localhost` is made, then the name swapped for one of
/// the same length).
fn client_hello_with_ip_sni() -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let at = hello
        .windows(9)
        .position(|w| w == b"localhost")
        .expect("the SNI is in the hello");
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    hello
}

#[test]
fn an_ip_address_sent_as_sni_is_logged_at_debug_level_not_as_a_warning() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let args = dev_args(&data, &["--listen", "127.0.0.1:0"]);
    // RUST_LOG as an operator sets it (the default filter hides every
    // rustls warning anyway), with rustls's debug lines shown: the line
    // must be there, at debug level.
    let server = common::process::start(&args, "info,rustls=debug", &log).unwrap();
    let mut tcp = std::net::TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&client_hello_with_ip_sni()).unwrap();
    let mut reply = [0u8; 64];
    let _ = tcp.read(&mut reply);
    let started = Instant::now();
    let logs = loop {
        let logs = std::fs::read_to_string(&log).unwrap();
        if logs.contains("Illegal SNI") || started.elapsed() > Duration::from_secs(10) {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        logs.contains("DEBUG rustls::msgs::handshake: Illegal SNI extension: ignoring IP address"),
        "{logs}"
    );
    assert!(!logs.contains("WARN rustls"), "{logs}");
    assert!(server.terminate(STOP).success());
}
