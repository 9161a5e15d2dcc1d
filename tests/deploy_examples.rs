//! The example files in deploy/ stay valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fieldvault::config::{Config, MasterKeySource};
use fieldvault::domain::policy::Policy;
use std::path::Path;

#[test]
fn the_example_config_parses() {
    let config = Config::load(Path::new("deploy/fieldvault.toml"), &|_| None).unwrap();
    assert_eq!(
        config.master_key,
        MasterKeySource::File("/etc/fieldvault/master.key".into())
    );
    assert_eq!(config.max_batch_items, 1000);
    let phone = config
        .retention
        .for_kind(fieldvault::domain::FieldKind::Phone);
    assert_eq!(phone.max_ttl, std::time::Duration::from_secs(3650 * 86_400));
    assert_eq!(phone.default_ttl, None);
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn the_example_and_dev_policies_parse() {
    for path in ["deploy/policy.toml", "deploy/dev/policy.toml"] {
        let text = std::fs::read_to_string(path).unwrap();
        let policy = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!policy.rules().is_empty());
    }
}

#[test]
fn the_example_config_sets_token_modes_and_region() {
    use fieldvault::domain::TokenMode;
    let config = Config::load(Path::new("deploy/fieldvault.toml"), &|_| None).unwrap();
    assert_eq!(config.token_modes.phone, TokenMode::Deterministic);
    assert_eq!(config.token_modes.address, TokenMode::Random);
    assert_eq!(
        config.default_phone_region.map(|r| r.as_str().to_owned()),
        Some("US".to_owned())
    );
}

/// The COPY instructions of the Dockerfile's build stage (the stage named
/// `build`), as (sources relative to the build context, destination
/// relative to that stage's WORKDIR), and the WORKDIR.
fn build_stage_copies(dockerfile: &str) -> (String, Vec<(Vec<String>, String)>) {
    let mut in_build = false;
    let mut workdir = "/".to_owned();
    let mut copies = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("FROM") => {
                in_build = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("as"))
                    .and_then(|i| words.get(i + 1))
                    == Some(&"build");
            }
            Some("WORKDIR") if in_build => workdir = words[1].to_owned(),
            Some("COPY") | Some("ADD") if in_build => {
                assert!(
                    !line.contains('['),
                    "JSON-form COPY is not parsed here: {line}"
                );
                let args: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                assert!(
                    !words.iter().any(|w| w.starts_with("--from")),
                    "COPY --from in the build stage: {line}"
                );
                let (dest, sources) = args.split_last().unwrap();
                copies.push((
                    sources.iter().map(|s| (*s).to_owned()).collect(),
                    (*dest).to_owned(),
                ));
            }
            _ => {}
        }
    }
    assert!(!copies.is_empty(), "no build stage with COPY lines found");
    (workdir, copies)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Lays out, under `root`, the files the build stage of `dockerfile` copies
/// from the build context `context` (Docker's rules: a directory's contents
/// go into the destination; a file goes into a destination ending in `/`,
/// or given several sources, else becomes it). Returns the WORKDIR in `root`.
fn lay_out_build_stage(dockerfile: &str, context: &Path, root: &Path) -> std::path::PathBuf {
    let (workdir, copies) = build_stage_copies(dockerfile);
    let workdir = root.join(workdir.trim_start_matches('/'));
    std::fs::create_dir_all(&workdir).unwrap();
    for (sources, dest) in copies {
        let dest_path = if dest.starts_with('/') {
            root.join(dest.trim_start_matches('/'))
        } else {
            workdir.join(&dest)
        };
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        for source in sources {
            let from = context.join(&source);
            assert!(from.exists(), "COPY {source}: not in the build context");
            if from.is_dir() {
                copy_dir(&from, &dest_path);
            } else if into_dir {
                std::fs::create_dir_all(&dest_path).unwrap();
                std::fs::copy(&from, dest_path.join(from.file_name().unwrap())).unwrap();
            } else {
                std::fs::create_dir_all(dest_path.parent().unwrap()).unwrap();
                std::fs::copy(&from, &dest_path).unwrap();
            }
        }
    }
    workdir
}

/// Cargo reads the whole manifest (every declared target's file must exist)
/// and checks Cargo.lock, without downloading or compiling anything.
fn cargo_accepts_the_manifest_in(dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["fetch", "--locked", "--offline", "--target", "host-tuple"])
        .current_dir(dir)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_dockerfile_build_stage_copies_every_file_the_manifest_declares() {
    let dockerfile = std::fs::read_to_string("deploy/Dockerfile").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let workdir = lay_out_build_stage(&dockerfile, Path::new("."), tmp.path());
    if let Err(e) = cargo_accepts_the_manifest_in(&workdir) {
        panic!("cargo fails on the image's file set (deploy/Dockerfile COPY lines): {e}");
    }
}

#[test]
fn a_build_stage_without_the_declared_test_and_bench_is_caught() {
    // The Dockerfile as it was: no tests/, no benches/ ("can't find `crash` test").
    let dockerfile = std::fs::read_to_string("deploy/Dockerfile")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("./tests") && !l.contains("./benches"))
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::tempdir().unwrap();
    let workdir = lay_out_build_stage(&dockerfile, Path::new("."), tmp.path());
    let err = cargo_accepts_the_manifest_in(&workdir).unwrap_err();
    assert!(err.contains("can't find `crash` test"), "{err}");
}
