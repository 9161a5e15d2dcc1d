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
