//! Server settings: a TOML file, then environment overrides. Every path is
//! explicit outside dev mode; errors name the offending setting.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data_dir = "/var/lib/fieldvault"        # sled store lives in DATA_DIR/store
//! policy_file = "/etc/fieldvault/policy.toml"
//! audit_log = "/var/log/fieldvault/audit.log"
//! max_batch_items = 1000                  # optional, default 1000
//! cache_capacity_mib = 16                 # optional, sled page cache bound
//! default_phone_region = "US"             # optional: reads national-format numbers
//!
//! [token_modes]                           # optional, per kind: "random" (default)
//! phone = "deterministic"                 # or "deterministic"
//!
//! [tls]
//! cert = "/etc/fieldvault/tls/server.pem"
//! key = "/etc/fieldvault/tls/server.key"
//! client_ca = "/etc/fieldvault/tls/client-ca.pem"
//!
//! [master_key]
//! file = "/etc/fieldvault/master.key"     # 64 hex chars, mode 0600
//! # or: env = "FIELDVAULT_MASTER_KEY"     # the variable holding the hex key
//! ```
//!
//! Environment overrides: `FIELDVAULT_LISTEN`, `FIELDVAULT_DATA_DIR`.

use crate::domain::value::PhoneRegion;
use crate::domain::{TokenMode, TokenModes};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_BATCH_ITEMS: usize = 1000;
/// sled counts its cache in serialized bytes and keeps decoded nodes and a
/// page table on top (about 90 MiB per million tokens), so the bound is small:
/// with 1M tokens, 64 MiB bought no measurable speed over 16 MiB and cost
/// about 150 MiB of RSS (README, Performance).
pub const DEFAULT_CACHE_CAPACITY_MIB: u64 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy_file: PathBuf,
    pub audit_log: PathBuf,
    pub max_batch_items: usize,
    pub cache_capacity_mib: u64,
    pub default_phone_region: Option<PhoneRegion>,
    pub token_modes: TokenModes,
    pub tls: TlsPaths,
    pub master_key: MasterKeySource,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Where the master key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterKeySource {
    /// A file holding 64 hex characters; refused unless mode is 0600 or stricter.
    File(PathBuf),
    /// The name of an environment variable holding 64 hex characters.
    Env(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config: {0}")]
    Syntax(String),
    #[error("config: {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    policy_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    max_batch_items: Option<usize>,
    cache_capacity_mib: Option<u64>,
    default_phone_region: Option<String>,
    #[serde(default)]
    token_modes: RawTokenModes,
    tls: Option<TlsPaths>,
    master_key: Option<RawMasterKey>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokenModes {
    #[serde(default)]
    phone: TokenMode,
    #[serde(default)]
    address: TokenMode,
    #[serde(default)]
    national_id: TokenMode,
    #[serde(default)]
    email: TokenMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasterKey {
    file: Option<PathBuf>,
    env: Option<String>,
}

fn missing(field: &'static str) -> ConfigError {
    ConfigError::Field {
        field,
        reason: "is required".into(),
    }
}

impl Config {
    /// Reads a config file; `env` looks up environment variables (pass
    /// `|k| std::env::var(k).ok()` in production, a map in tests).
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, env)
    }

    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let listen = env("FIELDVAULT_LISTEN")
            .or(raw.listen)
            .ok_or_else(|| missing("listen"))?;
        let listen = listen.parse().map_err(|e| ConfigError::Field {
            field: "listen",
            reason: format!("'{listen}' is not an address:port ({e})"),
        })?;
        let data_dir = env("FIELDVAULT_DATA_DIR")
            .map(PathBuf::from)
            .or(raw.data_dir)
            .ok_or_else(|| missing("data_dir"))?;
        let master_key = match raw.master_key.ok_or_else(|| missing("master_key"))? {
            RawMasterKey {
                file: Some(f),
                env: None,
            } => MasterKeySource::File(f),
            RawMasterKey {
                file: None,
                env: Some(v),
            } => MasterKeySource::Env(v),
            _ => {
                return Err(ConfigError::Field {
                    field: "master_key",
                    reason: "set exactly one of 'file' and 'env'".into(),
                })
            }
        };
        let max_batch_items = raw.max_batch_items.unwrap_or(DEFAULT_MAX_BATCH_ITEMS);
        if !(1..=100_000).contains(&max_batch_items) {
            return Err(ConfigError::Field {
                field: "max_batch_items",
                reason: "must be between 1 and 100000".into(),
            });
        }
        let cache_capacity_mib = raw.cache_capacity_mib.unwrap_or(DEFAULT_CACHE_CAPACITY_MIB);
        if !(1..=65_536).contains(&cache_capacity_mib) {
            return Err(ConfigError::Field {
                field: "cache_capacity_mib",
                reason: "must be between 1 and 65536".into(),
            });
        }
        let default_phone_region = raw
            .default_phone_region
            .map(|r| {
                PhoneRegion::parse(&r).map_err(|reason| ConfigError::Field {
                    field: "default_phone_region",
                    reason,
                })
            })
            .transpose()?;
        let m = raw.token_modes;
        Ok(Self {
            listen,
            data_dir,
            default_phone_region,
            token_modes: TokenModes {
                phone: m.phone,
                address: m.address,
                national_id: m.national_id,
                email: m.email,
            },
            policy_file: raw.policy_file.ok_or_else(|| missing("policy_file"))?,
            audit_log: raw.audit_log.ok_or_else(|| missing("audit_log"))?,
            max_batch_items,
            cache_capacity_mib,
            tls: raw.tls.ok_or_else(|| missing("tls"))?,
            master_key,
        })
    }

    /// Where the sled store lives.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen = "127.0.0.1:50051"
data_dir = "/var/lib/fieldvault"
policy_file = "/etc/fieldvault/policy.toml"
audit_log = "/var/log/fieldvault/audit.log"
[tls]
cert = "s.pem"
key = "s.key"
client_ca = "ca.pem"
[master_key]
env = "FIELDVAULT_MASTER_KEY"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_full_config_parses_with_defaults() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.max_batch_items, 1000);
        assert_eq!(c.cache_capacity_mib, 16);
        assert_eq!(
            c.master_key,
            MasterKeySource::Env("FIELDVAULT_MASTER_KEY".into())
        );
        assert_eq!(c.store_dir(), PathBuf::from("/var/lib/fieldvault/store"));
        assert_eq!(c.token_modes, TokenModes::default());
        assert_eq!(c.default_phone_region, None);
    }

    #[test]
    fn token_modes_and_default_region_are_read() {
        let text = format!(
            "default_phone_region = \"cn\"\n{FULL}\n[token_modes]\nphone = \"deterministic\"\n"
        );
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.token_modes.phone, TokenMode::Deterministic);
        assert_eq!(c.token_modes.email, TokenMode::Random);
        assert_eq!(
            c.default_phone_region.map(|r| r.as_str().to_owned()),
            Some("CN".to_owned())
        );
        let bad = format!("default_phone_region = \"Narnia\"\n{FULL}");
        let err = Config::from_toml(&bad, &no_env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("default_phone_region"), "{err}");
        let bad = format!("{FULL}\n[token_modes]\nphone = \"sometimes\"\n");
        assert!(Config::from_toml(&bad, &no_env).is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| (k == "FIELDVAULT_LISTEN").then(|| "0.0.0.0:6000".to_owned());
        let c = Config::from_toml(FULL, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), 6000);
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            (
                FULL.replace("policy_file", "# "),
                "policy_file: is required",
            ),
            (FULL.replace("127.0.0.1:50051", "nowhere"), "listen:"),
            (
                FULL.replace("env = ", "file = 'k'\nenv = "),
                "master_key: set exactly one",
            ),
            (format!("{FULL}\nmax_batch_items = 0"), "max_batch_items"),
            (FULL.replace("client_ca", "ca"), "unknown field"),
        ];
        for (text, expected) in cases {
            let err = Config::from_toml(&text, &no_env)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
