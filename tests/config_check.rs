//! `fieldvault config check FILE`, the real binary: a config the server
//! would start with passes; a bad key (named by its path), a file it names
//! that is missing and a master key others can read are each refused,
//! naming the setting, exit 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::*;
use common::{write_config_file, Pki};
use fieldvault::dev::DEV_POLICY;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A complete config (TLS files, policy, master key) under `dir`, with
/// `tables` appended; its path.
fn config(dir: &Path, tables: &str) -> PathBuf {
    let pki = Pki::new(&dir.join("pki"));
    let data = dir.join("data");
    write_config_file(
        dir,
        &pki,
        DEV_POLICY,
        (&data, &data.join("audit.log")),
        "",
        tables,
    )
}

fn check(path: &Path) -> std::process::Output {
    run(&["config", "check", path.to_str().unwrap()], "")
}

#[test]
fn a_config_the_server_would_start_with_passes_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), "[grants]\nmax_pending = 10\n");
    let out = run_to_exit(0, &["config", "check", path.to_str().unwrap()], "");
    assert!(stdout(&out).contains("a valid config"), "{}", show(&out));
    let out = run_to_exit(
        0,
        &["config", "check", path.to_str().unwrap(), "--json"],
        "",
    );
    let j = json(&out);
    assert_eq!(j["valid"], true);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn a_bad_key_is_named_by_its_path_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), "[retention]\nsweep_batchh = 5\n");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("retention.sweep_batchh")
            && err.contains("unknown field")
            && err.contains("line"),
        "{err}"
    );
    // A value of the wrong type, and one out of range, by their paths too.
    let path = config(tmp.path(), "[grants]\nmax_reveals = \"many\"\n");
    let err = stderr(&check(&path));
    assert!(err.contains("grants.max_reveals"), "{err}");
    let path = config(tmp.path(), "[grants]\nmax_pending = 0\n");
    let err = stderr(&check(&path));
    assert!(
        err.contains("grants.max_pending: 0: must be between"),
        "{err}"
    );
}

#[test]
fn a_missing_file_and_a_master_key_others_can_read_are_each_named_by_their_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("server.pem", "no-such-cert.pem")).unwrap();
    let master = tmp.path().join("master.key");
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tls.cert")
            && err.contains("no-such-cert.pem")
            && err.contains("No such file"),
        "{err}"
    );
    assert!(
        err.contains("master_key.file") && err.contains("readable by"),
        "{err}"
    );
    // The key itself is never printed.
    let key = std::fs::read_to_string(&master).unwrap();
    assert!(!err.contains(key.trim()) && !stdout(&out).contains(key.trim()));
    let j = json(&run(
        &["config", "check", path.to_str().unwrap(), "--json"],
        "",
    ));
    assert_eq!(j["valid"], false);
    assert_eq!(j["problems"].as_array().unwrap().len(), 2, "{j}");
    // A policy that does not parse is named too.
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, text).unwrap();
    common::write(&tmp.path().join("policy.toml"), b"version = 2\n");
    let err = stderr(&check(&path));
    assert!(
        err.contains("policy_file") && err.contains("version 2"),
        "{err}"
    );
}

#[test]
fn an_environment_override_is_named_and_the_server_logs_its_effective_config_without_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), "");
    let out = common::conn::cli_in(
        tmp.path(),
        &["config", "check", path.to_str().unwrap()],
        &[("FIELDVAULT_LISTEN", "127.0.0.1:0")],
        common::process::CLI_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        stdout(&out).contains("listen: overridden by the environment (FIELDVAULT_LISTEN)"),
        "{}",
        show(&out)
    );
    // The server logs every setting in force once at start, and never the
    // master key (only where it is read from).
    let log = tmp.path().join("server.log");
    let server = common::process::start_with_config(&path, &log).unwrap();
    server.terminate(std::time::Duration::from_secs(30));
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("effective config"))
        .unwrap_or_else(|| panic!("no effective config line in {logged}"));
    assert!(
        line.contains("master.key") && line.contains("max_batch_items"),
        "{line}"
    );
    let key = std::fs::read_to_string(tmp.path().join("master.key")).unwrap();
    assert!(!logged.contains(key.trim()), "the master key is in the log");
}

#[test]
fn key_files_only_their_owner_and_the_servers_own_group_can_read_pass_and_a_group_that_may_write_does_not(
) {
    // A Kubernetes Secret mounted with fsGroup: mode 0440, its group one the
    // server runs in (here: this process's, which a new file takes).
    let tmp = tempfile::tempdir().unwrap();
    let path = config(tmp.path(), "");
    let master = tmp.path().join("master.key");
    let tls_key = tmp.path().join("pki/server.key");
    for file in [&master, &tls_key] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    let out = run_to_exit(0, &["config", "check", path.to_str().unwrap()], "");
    assert!(stdout(&out).contains("a valid config"), "{}", show(&out));
    // Group-writable: refused, naming the setting and the fixes.
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o460)).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("master_key.file")
            && err.contains("mode 0460 is readable and writable by group")
            && err.contains("chmod 600")
            && err.contains("440"),
        "{err}"
    );
}

#[test]
fn a_missing_unparseable_or_foreign_crl_is_named_by_tls_crls() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let path = write_config_file(
        tmp.path(),
        &pki,
        DEV_POLICY,
        (&data, &data.join("audit.log")),
        "",
        "",
    );
    let crl = pki.dir.join("crl.pem");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[tls]\n",
        &format!("[tls]\ncrls = [\"{}\"]\n", crl.display()),
    );
    common::write(&path, text.as_bytes());
    let problem = || {
        let out = check(&path);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("tls.crls") && err.contains(crl.to_str().unwrap()),
            "{err}"
        );
        err
    };
    assert!(problem().contains("No such file"));
    common::write(&crl, b"not a CRL");
    assert!(problem().contains("not a CRL"));
    let other = fieldvault::devpki::DevCa::new("some other CA").unwrap();
    let foreign = other
        .revocation_list(&[], 1, std::time::Duration::from_secs(3600))
        .unwrap();
    common::write(&crl, foreign.as_bytes());
    assert!(problem().contains("not a CA in tls.client_ca"));
    // The CA's own CRL: a valid config.
    pki.write_crl("crl.pem", &["orders"]);
    run_to_exit(0, &["config", "check", path.to_str().unwrap()], "");
}
