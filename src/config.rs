//! Server settings: a TOML file, then environment overrides. Every path is
//! explicit outside dev mode; errors name the offending setting.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data_dir = "/var/lib/fieldvault"        # sled store lives in DATA_DIR/store
//! policy_file = "/etc/fieldvault/policy.toml"
//! audit_log = "/var/log/fieldvault/audit.log"
//! max_batch_items = 1000                  # optional, default 1000
//! cache_capacity_mib = 8                  # optional, sled page cache bound
//! default_phone_region = "US"             # optional: reads national-format numbers
//! reflection = true                       # optional: gRPC server reflection
//! explicit_kind_denials = false           # optional: true tells a caller which kind
//!                                         # it may not see (default: "no record")
//!
//! [token_modes]                           # optional, per kind: "random" (default)
//! phone = "deterministic"                 # or "deterministic"
//!
//! [tls]
//! cert = "/etc/fieldvault/tls/server.pem"
//! key = "/etc/fieldvault/tls/server.key"
//! client_ca = "/etc/fieldvault/tls/client-ca.pem"
//! min_version = "1.3"                     # optional: "1.3" (default) or "1.2"
//! identity_from_cn = true                 # optional: subject CN when no SPIFFE ID
//!
//! [limits]                                # optional, every key: see [`Limits`]
//! max_connections = 1000
//!
//! [keys]                                  # optional: the key lifecycle
//! rotate_data_key_every = "90d"           # rotate, then rewrap, on a schedule
//! rewrap_rate = 5000                      # records/s when a rewrap names none
//! retire_after_rewrap = false             # destroy old data keys once unused
//!
//! [retention]                             # optional: tokens' time to live
//! sweep_interval = "1m"                   # how often expired tokens are deleted
//! sweep_batch = 500                       # records per durable delete batch
//! sweep_rate = 5000                       # records deleted per second, at most
//! [retention.phone]                       # optional, per kind (phone, address,
//! default_ttl = "365d"                    # national_id, email): a token without
//! max_ttl = "3650d"                       # a ttl lives this long (default: forever);
//!                                         # the longest ttl a call may ask (100 years)
//!
//! [audit]                                 # optional: the audit trail at audit_log
//! max_file_bytes = 67108864               # rotate the file at this size (64 MiB)
//! start_new_chain = false                 # true: a trail that does not verify at
//!                                         # start is moved aside, a new chain begins
//!
//! [metrics]                             # optional: Prometheus text at /metrics
//! listen = "127.0.0.1:9464"               # plain HTTP, no authentication (absent:
//!                                         # no listener)
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
/// page table on top, so the bound is small: with 1M tokens, 64 MiB bought
/// no measurable speed over 16 MiB and cost about 150 MiB of RSS, and 8 MiB
/// against 16 MiB saved 35–50 MiB under load at the same speed (README,
/// Performance).
pub const DEFAULT_CACHE_CAPACITY_MIB: u64 = 8;

/// Every environment variable that overrides a setting of the config
/// file, with the setting: the one place they are listed (README,
/// "Running in production", and `fieldvault config check` name them). The
/// master key's `master_key.env` names a variable of the operator's
/// choosing instead, which holds the key itself.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("FIELDVAULT_LISTEN", "listen"),
    ("FIELDVAULT_DATA_DIR", "data_dir"),
];

/// The environment variable that overrides `setting`.
fn env_override(setting: &str) -> &'static str {
    ENV_OVERRIDES
        .iter()
        .find(|(_, s)| *s == setting)
        .map_or("", |(var, _)| var)
}

/// A config holds no secret: the master key appears only as where it is
/// read from (a path or a variable's name), so its `Debug` is what the
/// server logs at start as its effective config.
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
    /// Detokenize answers a token of a kind the caller may not see with
    /// PERMISSION_DENIED naming the kind (true) or exactly as an unknown
    /// token (false, the default: no existence or kind oracle).
    pub explicit_kind_denials: bool,
    pub tls: TlsPaths,
    pub master_key: MasterKeySource,
    /// `[tls]` settings besides the paths.
    pub tls_options: TlsOptions,
    /// Whether gRPC server reflection is offered (`reflection`, default true).
    pub reflection: bool,
    /// `[keys]`: rotation schedule, rewrap rate, automatic retirement.
    pub keys: crate::vault::KeySettings,
    /// `[limits]`: connections, streams, message sizes, timeouts.
    pub limits: Limits,
    /// `[audit]`: rotation size, and what to do with a broken trail.
    pub audit: AuditSettings,
    /// Tokens' time to live and the sweeper.
    pub retention: crate::domain::Retention,
    /// `[grants]`: the ceilings of approved-workflow grants.
    pub grants: crate::vault::GrantSettings,
    /// `[metrics]`: the Prometheus scrape listener.
    pub metrics: MetricsSettings,
    /// `[log]`: the server's log format and level.
    pub log: LogSettings,
    /// `[shutdown]`: how long a SIGTERM waits for calls in flight.
    pub shutdown: ShutdownSettings,
}

/// How the server writes its log lines (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl LogFormat {
    /// `text` or `json`, as the config and `--log-format` spell them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The log filter when neither `RUST_LOG` nor `log.level` says otherwise.
/// The HTTP/2 and TLS libraries log a WARN line per misbehaving peer (a
/// rapid-reset client made `h2` write 200 lines in 15 s), which the
/// server's own rate-limited refusal lines already cover: only their errors
/// are shown.
pub const DEFAULT_LOG_LEVEL: &str = "info,h2=error,hyper=error,rustls=error,tower=error";

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `warn,fieldvault=debug`); `RUST_LOG`, when
    /// set, wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// How long a SIGTERM (or SIGINT) waits for calls in flight before it
    /// cuts them off and closes the store.
    pub drain_timeout: std::time::Duration,
}

/// 30 s: Kubernetes' default grace period is 30 s too, so set
/// `terminationGracePeriodSeconds` above this (deploy/kubernetes).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
/// A drain longer than an hour is a hang, not a drain.
pub const MAX_DRAIN_TIMEOUT_SECS: i64 = 3600;

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: std::time::Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where the Prometheus text endpoint (`/metrics`) listens: plain HTTP
    /// without authentication, so a loopback or otherwise private address.
    /// `None` (no `listen`): no listener, and no metrics are kept.
    pub listen: Option<SocketAddr>,
}

/// `[audit]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// The active file is rotated once it reaches this size.
    pub max_file_bytes: u64,
    /// Whether a trail that does not verify at start is moved aside and a
    /// new chain begun (recorded as its first event) instead of refusing
    /// to start.
    pub start_new_chain: bool,
}

/// 64 MiB: verified in well under a second at start.
pub const DEFAULT_AUDIT_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Smaller files would rotate every few events.
pub const MIN_AUDIT_FILE_BYTES: u64 = 64 * 1024;

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_AUDIT_FILE_BYTES,
            start_new_chain: false,
        }
    }
}

/// The lowest TLS version the server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMinVersion {
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
    /// TLS 1.2 and 1.3.
    Tls12,
}

/// `[tls]` settings besides the paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub min_version: TlsMinVersion,
    /// Whether a certificate without a SPIFFE URI SAN names its caller by its
    /// subject CN (`tls.identity_from_cn`, default true). When false, such a
    /// certificate is refused right after the handshake.
    pub identity_from_cn: bool,
    /// `tls.crls`: certificate revocation lists (PEM or DER files) checked
    /// against client certificates (see [`crate::tls_reload`]).
    pub crls: Vec<PathBuf>,
    /// Whether a CRL file that does not exist counts as one revoking
    /// nothing instead of an error: dev mode's `DATA_DIR/dev/crl.pem`,
    /// which exists once something is revoked. Never set from a file.
    pub crls_may_be_missing: bool,
    /// `tls.reload_interval_secs`: how often the TLS files are read again
    /// and, if their content changed, put in force for new handshakes.
    pub reload_interval: std::time::Duration,
}

/// `tls.reload_interval_secs` when not set.
pub const DEFAULT_TLS_RELOAD_INTERVAL_SECS: u64 = 5;

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            min_version: TlsMinVersion::Tls13,
            identity_from_cn: true,
            crls: Vec::new(),
            crls_may_be_missing: false,
            reload_interval: std::time::Duration::from_secs(DEFAULT_TLS_RELOAD_INTERVAL_SECS),
        }
    }
}

/// `[limits]`: what one peer, one identity and everyone together may hold.
/// Every key is optional; the defaults protect a 2-core box (README,
/// "Limits"). Sizes derived from other settings are computed in
/// [`crate::limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, TLS handshakes included (`limits.max_connections`).
    /// `None`: 1000, or the file-descriptor limit less 64 if that is lower.
    pub max_connections: Option<usize>,
    /// Open connections per caller identity
    /// (`limits.max_connections_per_identity`).
    pub max_connections_per_identity: usize,
    /// HTTP/2 streams a connection may have open at once
    /// (`limits.max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// HTTP/2 initial window per stream (`limits.stream_window_bytes`).
    pub stream_window_bytes: u32,
    /// HTTP/2 initial window per connection (`limits.connection_window_bytes`).
    pub connection_window_bytes: u32,
    /// Request message bytes one identity may have announced and not yet
    /// finished, over all its streams (`limits.max_request_bytes_per_identity`).
    /// `None`: 32 MiB, or the largest legal message if that is larger.
    pub max_request_bytes_per_identity: Option<u64>,
    /// The same, for all identities together (`limits.max_request_bytes`).
    /// `None`: 128 MiB, or the per-identity bound if that is larger.
    pub max_request_bytes: Option<u64>,
    /// A call (request body included) must finish within this many seconds
    /// (`limits.request_timeout_secs`).
    pub request_timeout_secs: u64,
    /// A connection with no open stream for this long is closed
    /// (`limits.idle_timeout_secs`).
    pub idle_timeout_secs: u64,
    /// HTTP/2 PING after this much silence; 0 turns keepalive off
    /// (`limits.keepalive_interval_secs`).
    pub keepalive_interval_secs: u64,
    /// Close the connection when a PING is not answered within this long
    /// (`limits.keepalive_timeout_secs`).
    pub keepalive_timeout_secs: u64,
    /// How long a client has to complete the TLS handshake
    /// (`limits.handshake_timeout_secs`).
    pub handshake_timeout_secs: u64,
    /// Refused connections logged per minute at most; the rest are counted
    /// and reported in one line (`limits.refusal_log_lines_per_minute`).
    pub refusal_log_lines_per_minute: u32,
    /// Writes waiting for the commit thread; further writers wait their
    /// turn (`limits.max_queued_writes`).
    pub max_queued_writes: usize,
    /// TLS handshakes in progress from one source IP address
    /// (`limits.max_handshakes_per_ip`); more are closed at once.
    pub max_handshakes_per_ip: usize,
    /// TLS handshakes in progress from everyone
    /// (`limits.max_pending_handshakes`); more are closed at once. `None`:
    /// 256, or a quarter of `max_connections` if that is lower, so
    /// connections that finished their handshake keep most slots.
    pub max_pending_handshakes: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_identity: 32,
            max_concurrent_streams: 32,
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 1024 * 1024,
            max_request_bytes_per_identity: None,
            max_request_bytes: None,
            request_timeout_secs: 30,
            idle_timeout_secs: 300,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            handshake_timeout_secs: 10,
            refusal_log_lines_per_minute: 10,
            max_queued_writes: crate::store::DEFAULT_MAX_QUEUED_WRITES,
            max_handshakes_per_ip: 32,
            max_pending_handshakes: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    #[serde(default)]
    explicit_kind_denials: bool,
    tls: Option<RawTls>,
    master_key: Option<RawMasterKey>,
    reflection: Option<bool>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

impl RawLog {
    fn parse(self) -> Result<LogSettings, ConfigError> {
        let format = match self.format.as_deref() {
            None => LogFormat::Text,
            Some(text) => LogFormat::parse(text).ok_or_else(|| ConfigError::Field {
                field: "log.format",
                reason: format!("'{text}' is not a log format: use \"text\" or \"json\""),
            })?,
        };
        let level = match self.level {
            None => DEFAULT_LOG_LEVEL.to_owned(),
            Some(level) => {
                tracing_subscriber::EnvFilter::builder()
                    .parse(&level)
                    .map_err(|e| ConfigError::Field {
                        field: "log.level",
                        reason: format!("'{level}' is not a log filter ({e}): e.g. \"info\" or \"warn,fieldvault=debug\""),
                    })?;
                level
            }
        };
        Ok(LogSettings { format, level })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain_timeout_secs: Option<i64>,
}

impl RawShutdown {
    fn parse(self) -> Result<ShutdownSettings, ConfigError> {
        let secs = limit(
            "shutdown.drain_timeout_secs",
            self.drain_timeout_secs,
            0..=MAX_DRAIN_TIMEOUT_SECS,
            DEFAULT_DRAIN_TIMEOUT_SECS as i64,
        )?;
        Ok(ShutdownSettings {
            drain_timeout: std::time::Duration::from_secs(secs as u64),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

impl RawMetrics {
    fn parse(self) -> Result<MetricsSettings, ConfigError> {
        let listen = self
            .listen
            .map(|text| {
                text.parse().map_err(|e| ConfigError::Field {
                    field: "metrics.listen",
                    reason: format!("'{text}' is not an address:port ({e})"),
                })
            })
            .transpose()?;
        Ok(MetricsSettings { listen })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    max_reveals: Option<i64>,
    max_valid_for: Option<String>,
    max_pending: Option<i64>,
    max_requests_per_day: Option<i64>,
}

impl RawGrants {
    fn parse(self) -> Result<crate::vault::GrantSettings, ConfigError> {
        use crate::domain::grant::{MAX_MAX_REVEALS, MAX_MAX_VALID_FOR_MS};
        let mut g = crate::vault::GrantSettings::default();
        match self.max_reveals {
            None => {}
            Some(n) if (1..=i64::from(MAX_MAX_REVEALS)).contains(&n) => g.max_reveals = n as u32,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "grants.max_reveals",
                    reason: format!("{n}: must be between 1 and {MAX_MAX_REVEALS}"),
                })
            }
        }
        if let Some(text) = &self.max_valid_for {
            let d = duration_setting(
                "grants.max_valid_for",
                text,
                std::time::Duration::from_millis(MAX_MAX_VALID_FOR_MS),
            )?;
            g.max_valid_for_ms = u64::try_from(d.as_millis()).unwrap_or(MAX_MAX_VALID_FOR_MS);
        }
        match self.max_pending {
            None => {}
            Some(n) if (1..=10_000).contains(&n) => g.max_pending = n as usize,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "grants.max_pending",
                    reason: format!("{n}: must be between 1 and 10000"),
                })
            }
        }
        match self.max_requests_per_day {
            None => {}
            Some(n) if (1..=100_000).contains(&n) => g.max_requests_per_day = n as u64,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "grants.max_requests_per_day",
                    reason: format!("{n}: must be between 1 and 100000"),
                })
            }
        }
        Ok(g)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    sweep_interval: Option<String>,
    sweep_batch: Option<i64>,
    sweep_rate: Option<i64>,
    phone: Option<RawKindRetention>,
    address: Option<RawKindRetention>,
    national_id: Option<RawKindRetention>,
    email: Option<RawKindRetention>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKindRetention {
    default_ttl: Option<String>,
    max_ttl: Option<String>,
}

/// A duration setting such as "90d": more than zero, at most `max`.
fn duration_setting(
    field: &'static str,
    text: &str,
    max: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let d = humantime::parse_duration(text).map_err(|e| ConfigError::Field {
        field,
        reason: format!("'{text}' is not a duration such as \"90d\" or \"12h\" ({e})"),
    })?;
    if d.is_zero() || d > max {
        return Err(ConfigError::Field {
            field,
            reason: format!(
                "'{text}': must be more than zero and at most {}",
                crate::domain::retention::format_duration(max)
            ),
        });
    }
    Ok(d)
}

impl RawRetention {
    fn parse(self) -> Result<crate::domain::Retention, ConfigError> {
        use crate::domain::retention::{MAX_SWEEP_BATCH, MAX_SWEEP_RATE, MAX_TTL};
        use crate::domain::{FieldKind, Retention};
        let mut r = Retention::default();
        if let Some(text) = &self.sweep_interval {
            r.sweep_interval = duration_setting(
                "retention.sweep_interval",
                text,
                std::time::Duration::from_secs(24 * 3600),
            )?;
        }
        match self.sweep_batch {
            None => {}
            Some(n) if (1..=MAX_SWEEP_BATCH as i64).contains(&n) => r.sweep_batch = n as usize,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "retention.sweep_batch",
                    reason: format!("{n}: must be between 1 and {MAX_SWEEP_BATCH}"),
                })
            }
        }
        match self.sweep_rate {
            None => {}
            Some(n) if (1..=i64::from(MAX_SWEEP_RATE)).contains(&n) => r.sweep_rate = n as u32,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "retention.sweep_rate",
                    reason: format!(
                        "{n} records per second: must be between 1 and {MAX_SWEEP_RATE}"
                    ),
                })
            }
        }
        for (kind, raw, default_field, max_field) in [
            (
                FieldKind::Phone,
                self.phone,
                "retention.phone.default_ttl",
                "retention.phone.max_ttl",
            ),
            (
                FieldKind::Address,
                self.address,
                "retention.address.default_ttl",
                "retention.address.max_ttl",
            ),
            (
                FieldKind::NationalId,
                self.national_id,
                "retention.national_id.default_ttl",
                "retention.national_id.max_ttl",
            ),
            (
                FieldKind::Email,
                self.email,
                "retention.email.default_ttl",
                "retention.email.max_ttl",
            ),
        ] {
            let Some(raw) = raw else { continue };
            let rules = r.for_kind_mut(kind);
            if let Some(text) = &raw.max_ttl {
                rules.max_ttl = duration_setting(max_field, text, MAX_TTL)?;
            }
            if let Some(text) = &raw.default_ttl {
                let d = duration_setting(default_field, text, MAX_TTL)?;
                if d > rules.max_ttl {
                    return Err(ConfigError::Field {
                        field: default_field,
                        reason: format!(
                            "'{text}' is more than {max_field} ({})",
                            crate::domain::retention::format_duration(rules.max_ttl)
                        ),
                    });
                }
                rules.default_ttl = Some(d);
            }
        }
        Ok(r)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    max_file_bytes: Option<i64>,
    start_new_chain: Option<bool>,
}

impl RawAudit {
    fn parse(self) -> Result<AuditSettings, ConfigError> {
        let max_file_bytes = match self.max_file_bytes {
            None => DEFAULT_AUDIT_FILE_BYTES,
            Some(n) if n >= MIN_AUDIT_FILE_BYTES as i64 => n as u64,
            Some(n) => {
                return Err(ConfigError::Field {
                    field: "audit.max_file_bytes",
                    reason: format!("{n}: must be at least {MIN_AUDIT_FILE_BYTES} bytes"),
                })
            }
        };
        Ok(AuditSettings {
            max_file_bytes,
            start_new_chain: self.start_new_chain.unwrap_or(false),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    rotate_data_key_every: Option<String>,
    rewrap_rate: Option<i64>,
    retire_after_rewrap: Option<bool>,
}

impl RawKeys {
    fn parse(self) -> Result<crate::vault::KeySettings, ConfigError> {
        use crate::vault::{KeySettings, DEFAULT_REWRAP_RATE, MAX_REWRAP_RATE};
        let rotate_every = self
            .rotate_data_key_every
            .map(|text| {
                let every = humantime::parse_duration(&text).map_err(|e| ConfigError::Field {
                    field: "keys.rotate_data_key_every",
                    reason: format!("'{text}' is not a duration such as \"90d\" or \"12h\" ({e})"),
                })?;
                if every < std::time::Duration::from_secs(1) {
                    return Err(ConfigError::Field {
                        field: "keys.rotate_data_key_every",
                        reason: "must be at least 1s".into(),
                    });
                }
                Ok(every)
            })
            .transpose()?;
        let rewrap_rate = match self.rewrap_rate {
            None => DEFAULT_REWRAP_RATE,
            Some(r) if (1..=i64::from(MAX_REWRAP_RATE)).contains(&r) => r as u32,
            Some(r) => {
                return Err(ConfigError::Field {
                    field: "keys.rewrap_rate",
                    reason: format!(
                        "{r} records per second: must be between 1 and {MAX_REWRAP_RATE}"
                    ),
                })
            }
        };
        Ok(KeySettings {
            rewrap_rate,
            retire_after_rewrap: self.retire_after_rewrap.unwrap_or(false),
            rotate_every,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    min_version: Option<String>,
    identity_from_cn: Option<bool>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    reload_interval_secs: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<i64>,
    max_connections_per_identity: Option<i64>,
    max_concurrent_streams: Option<i64>,
    stream_window_bytes: Option<i64>,
    connection_window_bytes: Option<i64>,
    max_request_bytes_per_identity: Option<i64>,
    max_request_bytes: Option<i64>,
    request_timeout_secs: Option<i64>,
    idle_timeout_secs: Option<i64>,
    keepalive_interval_secs: Option<i64>,
    keepalive_timeout_secs: Option<i64>,
    handshake_timeout_secs: Option<i64>,
    refusal_log_lines_per_minute: Option<i64>,
    max_queued_writes: Option<i64>,
    max_handshakes_per_ip: Option<i64>,
    max_pending_handshakes: Option<i64>,
}

/// A `[limits]` integer within `range`, or the default.
fn limit(
    field: &'static str,
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> Result<i64, ConfigError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Field {
            field,
            reason: format!(
                "{v} is out of range: must be between {} and {}",
                range.start(),
                range.end()
            ),
        })
    }
}

impl RawLimits {
    fn parse(self) -> Result<Limits, ConfigError> {
        const MIB: i64 = 1024 * 1024;
        // HTTP/2 caps a window at 2^31 - 1.
        const MAX_WINDOW: i64 = (1 << 31) - 1;
        let d = Limits::default();
        let max_connections = self
            .max_connections
            .map(|v| limit("limits.max_connections", Some(v), 1..=1_000_000, 0))
            .transpose()?
            .map(|v| v as usize);
        let per_identity = limit(
            "limits.max_connections_per_identity",
            self.max_connections_per_identity,
            1..=1_000_000,
            d.max_connections_per_identity as i64,
        )? as usize;
        if let Some(total) = max_connections {
            if per_identity > total {
                return Err(ConfigError::Field {
                    field: "limits.max_connections_per_identity",
                    reason: format!("{per_identity} is above limits.max_connections ({total})"),
                });
            }
        }
        let max_pending_handshakes = self
            .max_pending_handshakes
            .map(|v| limit("limits.max_pending_handshakes", Some(v), 1..=1_000_000, 0))
            .transpose()?
            .map(|v| v as usize);
        if let (Some(pending), Some(total)) = (max_pending_handshakes, max_connections) {
            if pending >= total {
                return Err(ConfigError::Field {
                    field: "limits.max_pending_handshakes",
                    reason: format!(
                        "{pending} must be below limits.max_connections ({total}), so \
                         connections that finished their handshake keep slots"
                    ),
                });
            }
        }
        let bytes = |field, v: Option<i64>| {
            v.map(|v| limit(field, Some(v), 1..=64 * 1024 * MIB, 0))
                .transpose()
                .map(|v| v.map(|v| v as u64))
        };
        let secs = |field, v: Option<i64>, min: i64, default: u64| {
            limit(field, v, min..=86_400, default as i64).map(|v| v as u64)
        };
        Ok(Limits {
            max_connections,
            max_connections_per_identity: per_identity,
            max_concurrent_streams: limit(
                "limits.max_concurrent_streams",
                self.max_concurrent_streams,
                1..=10_000,
                i64::from(d.max_concurrent_streams),
            )? as u32,
            stream_window_bytes: limit(
                "limits.stream_window_bytes",
                self.stream_window_bytes,
                65_535..=MAX_WINDOW,
                i64::from(d.stream_window_bytes),
            )? as u32,
            connection_window_bytes: limit(
                "limits.connection_window_bytes",
                self.connection_window_bytes,
                65_535..=MAX_WINDOW,
                i64::from(d.connection_window_bytes),
            )? as u32,
            max_request_bytes_per_identity: bytes(
                "limits.max_request_bytes_per_identity",
                self.max_request_bytes_per_identity,
            )?,
            max_request_bytes: bytes("limits.max_request_bytes", self.max_request_bytes)?,
            request_timeout_secs: secs(
                "limits.request_timeout_secs",
                self.request_timeout_secs,
                1,
                d.request_timeout_secs,
            )?,
            idle_timeout_secs: secs(
                "limits.idle_timeout_secs",
                self.idle_timeout_secs,
                1,
                d.idle_timeout_secs,
            )?,
            keepalive_interval_secs: secs(
                "limits.keepalive_interval_secs",
                self.keepalive_interval_secs,
                0,
                d.keepalive_interval_secs,
            )?,
            keepalive_timeout_secs: secs(
                "limits.keepalive_timeout_secs",
                self.keepalive_timeout_secs,
                1,
                d.keepalive_timeout_secs,
            )?,
            handshake_timeout_secs: secs(
                "limits.handshake_timeout_secs",
                self.handshake_timeout_secs,
                1,
                d.handshake_timeout_secs,
            )?,
            refusal_log_lines_per_minute: limit(
                "limits.refusal_log_lines_per_minute",
                self.refusal_log_lines_per_minute,
                0..=10_000,
                i64::from(d.refusal_log_lines_per_minute),
            )? as u32,
            max_queued_writes: limit(
                "limits.max_queued_writes",
                self.max_queued_writes,
                1..=1_000_000,
                d.max_queued_writes as i64,
            )? as usize,
            max_handshakes_per_ip: limit(
                "limits.max_handshakes_per_ip",
                self.max_handshakes_per_ip,
                1..=1_000_000,
                d.max_handshakes_per_ip as i64,
            )? as usize,
            max_pending_handshakes,
        })
    }
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
        // serde_path_to_error names the setting by its path
        // (`retention.sweep_batchh`), toml's message adds the line.
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            ConfigError::Syntax(if path.is_empty() || path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            })
        })?;
        let listen = env(env_override("listen"))
            .or(raw.listen)
            .ok_or_else(|| missing("listen"))?;
        let listen = listen.parse().map_err(|e| ConfigError::Field {
            field: "listen",
            reason: format!("'{listen}' is not an address:port ({e})"),
        })?;
        let data_dir = env(env_override("data_dir"))
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
        let raw_tls = raw.tls.ok_or_else(|| missing("tls"))?;
        let min_version = match raw_tls.min_version.as_deref() {
            None | Some("1.3") => TlsMinVersion::Tls13,
            Some("1.2") => TlsMinVersion::Tls12,
            Some(other) => {
                return Err(ConfigError::Field {
                    field: "tls.min_version",
                    reason: format!("'{other}' is not a TLS version: use \"1.3\" or \"1.2\""),
                })
            }
        };
        let tls_options = TlsOptions {
            min_version,
            identity_from_cn: raw_tls.identity_from_cn.unwrap_or(true),
            crls: raw_tls.crls,
            crls_may_be_missing: false,
            reload_interval: std::time::Duration::from_secs(limit(
                "tls.reload_interval_secs",
                raw_tls.reload_interval_secs,
                1..=86_400,
                DEFAULT_TLS_RELOAD_INTERVAL_SECS as i64,
            )? as u64),
        };
        let limits = raw.limits.parse()?;
        let keys = raw.keys.parse()?;
        let audit = raw.audit.parse()?;
        let retention = raw.retention.parse()?;
        let grants = raw.grants.parse()?;
        let log = raw.log.parse()?;
        let shutdown = raw.shutdown.parse()?;
        let metrics = raw.metrics.parse()?;
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
            explicit_kind_denials: raw.explicit_kind_denials,
            policy_file: raw.policy_file.ok_or_else(|| missing("policy_file"))?,
            audit_log: raw.audit_log.ok_or_else(|| missing("audit_log"))?,
            max_batch_items,
            cache_capacity_mib,
            tls: TlsPaths {
                cert: raw_tls.cert,
                key: raw_tls.key,
                client_ca: raw_tls.client_ca,
            },
            master_key,
            tls_options,
            reflection: raw.reflection.unwrap_or(true),
            limits,
            keys,
            audit,
            retention,
            grants,
            log,
            shutdown,
            metrics,
        })
    }

    /// Where the sled store lives.
    pub fn store_dir(&self) -> PathBuf {
        Self::store_dir_in(&self.data_dir)
    }

    /// Where the store of a server whose `data_dir` is `data_dir` lives.
    pub fn store_dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join("store")
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
        assert_eq!(c.cache_capacity_mib, 8);
        assert_eq!(
            c.master_key,
            MasterKeySource::Env("FIELDVAULT_MASTER_KEY".into())
        );
        assert_eq!(c.store_dir(), PathBuf::from("/var/lib/fieldvault/store"));
        assert_eq!(c.token_modes, TokenModes::default());
        assert_eq!(c.default_phone_region, None);
        assert!(!c.explicit_kind_denials);
        let text = format!("explicit_kind_denials = true\n{FULL}");
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.explicit_kind_denials);
    }

    #[test]
    fn log_and_shutdown_settings_default_are_read_and_bad_ones_are_named() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.log, LogSettings::default());
        assert_eq!(c.shutdown.drain_timeout, std::time::Duration::from_secs(30));
        let text = format!(
            "{FULL}\n[log]\nformat = \"json\"\nlevel = \"warn,fieldvault=debug\"\n[shutdown]\ndrain_timeout_secs = 5\n"
        );
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "warn,fieldvault=debug");
        assert_eq!(c.shutdown.drain_timeout, std::time::Duration::from_secs(5));
        for (table, field) in [
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[log]\nlevel = \"info,=[\"", "log.level"),
            (
                "[shutdown]\ndrain_timeout_secs = -1",
                "shutdown.drain_timeout_secs",
            ),
            (
                "[shutdown]\ndrain_timeout_secs = 3601",
                "shutdown.drain_timeout_secs",
            ),
            ("[shutdown]\ndrain_secs = 3", "shutdown.drain_secs"),
        ] {
            let err = Config::from_toml(&format!("{FULL}\n{table}\n"), &no_env)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(field), "{table}: {err}");
        }
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
    fn top_level_settings_placed_before_the_tables_are_read() {
        let text = format!("max_batch_items = 7\ncache_capacity_mib = 3\n{FULL}");
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.max_batch_items, 7);
        assert_eq!(c.cache_capacity_mib, 3);
    }

    #[test]
    fn a_top_level_setting_appended_after_a_table_is_refused_as_unknown_there() {
        let err = Config::from_toml(&format!("{FULL}\nmax_batch_items = 7"), &no_env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `max_batch_items`"), "{err}");
    }

    #[test]
    fn limits_and_tls_options_have_protective_defaults_and_are_read() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.tls_options.min_version, TlsMinVersion::Tls13);
        assert!(c.tls_options.identity_from_cn);
        assert!(c.reflection);
        let text = format!(
            "reflection = false\n{}\n[limits]\nmax_connections = 200\nidle_timeout_secs = 5\nkeepalive_interval_secs = 0\nmax_queued_writes = 8\n",
            FULL.replace(
                "[tls]",
                "[tls]\nmin_version = \"1.2\"\nidentity_from_cn = false"
            )
        );
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.reflection);
        assert_eq!(c.tls_options.min_version, TlsMinVersion::Tls12);
        assert!(!c.tls_options.identity_from_cn);
        assert_eq!(c.limits.max_connections, Some(200));
        assert_eq!(c.limits.idle_timeout_secs, 5);
        assert_eq!(c.limits.keepalive_interval_secs, 0);
        assert_eq!(c.limits.max_concurrent_streams, 32);
        assert_eq!(c.limits.max_queued_writes, 8);
    }

    #[test]
    fn crls_and_the_tls_reload_interval_are_read_and_checked() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.tls_options.crls.is_empty());
        assert_eq!(
            c.tls_options.reload_interval,
            std::time::Duration::from_secs(5)
        );
        let text = FULL.replace(
            "[tls]",
            "[tls]\ncrls = [\"a.crl\", \"b.pem\"]\nreload_interval_secs = 1",
        );
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.tls_options.crls,
            vec![PathBuf::from("a.crl"), PathBuf::from("b.pem")]
        );
        assert!(!c.tls_options.crls_may_be_missing);
        assert_eq!(
            c.tls_options.reload_interval,
            std::time::Duration::from_secs(1)
        );
        let text = FULL.replace("[tls]", "[tls]\nreload_interval_secs = 0");
        let err = Config::from_toml(&text, &no_env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("tls.reload_interval_secs"), "{err}");
        let text = FULL.replace("[tls]", "[tls]\ncrls = \"one.crl\"");
        let err = Config::from_toml(&text, &no_env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("crls"), "{err}");
    }

    #[test]
    fn retention_defaults_to_forever_and_bad_settings_name_their_key() {
        use crate::domain::FieldKind;
        use std::time::Duration;
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.retention, crate::domain::Retention::default());
        let with = |t: &str| Config::from_toml(&format!("{FULL}\n{t}\n"), &no_env);
        let c = with(
            "[retention]\nsweep_interval = \"200ms\"\nsweep_batch = 50\nsweep_rate = 100\n\
             [retention.phone]\ndefault_ttl = \"30d\"\nmax_ttl = \"365d\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.retention.sweep_interval, Duration::from_millis(200));
        assert_eq!(c.retention.sweep_batch, 50);
        assert_eq!(c.retention.sweep_rate, 100);
        let phone = c.retention.for_kind(FieldKind::Phone);
        assert_eq!(phone.default_ttl, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(phone.max_ttl, Duration::from_secs(365 * 86_400));
        assert_eq!(c.retention.for_kind(FieldKind::Email).default_ttl, None);
        for (t, field) in [
            (
                "[retention]\nsweep_interval = \"soon\"",
                "retention.sweep_interval",
            ),
            ("[retention]\nsweep_batch = 0", "retention.sweep_batch"),
            ("[retention]\nsweep_rate = 0", "retention.sweep_rate"),
            (
                "[retention.email]\nmax_ttl = \"0s\"",
                "retention.email.max_ttl",
            ),
            (
                "[retention.address]\ndefault_ttl = \"2d\"\nmax_ttl = \"1d\"",
                "retention.address.default_ttl",
            ),
            (
                "[retention.national_id]\nmax_ttl = \"200years\"",
                "retention.national_id.max_ttl",
            ),
        ] {
            let e = with(t).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with(&format!("config: {field}: ")), "{t}: {e}");
        }
        let e = with("[retention.fax]\nmax_ttl = \"1d\"")
            .err()
            .map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("fax")), "{e:?}");
    }

    #[test]
    fn the_key_lifecycle_settings_default_to_no_schedule_and_bad_ones_name_their_key() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.keys, crate::vault::KeySettings::default());
        assert_eq!(c.keys.rotate_every, None);
        let with = |keys: &str| Config::from_toml(&format!("{FULL}\n[keys]\n{keys}\n"), &no_env);
        let c =
            with("rotate_data_key_every = \"90d\"\nrewrap_rate = 200\nretire_after_rewrap = true")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.keys.rotate_every,
            Some(std::time::Duration::from_secs(90 * 86_400))
        );
        assert_eq!(c.keys.rewrap_rate, 200);
        assert!(c.keys.retire_after_rewrap);
        for (keys, field) in [
            (
                "rotate_data_key_every = \"often\"",
                "keys.rotate_data_key_every",
            ),
            (
                "rotate_data_key_every = \"0s\"",
                "keys.rotate_data_key_every",
            ),
            ("rewrap_rate = 0", "keys.rewrap_rate"),
            ("rewrap_rate = 1000001", "keys.rewrap_rate"),
        ] {
            let e = with(keys).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with(&format!("config: {field}: ")), "{keys}: {e}");
        }
        let e = with("rotate_every = \"1d\"").err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("rotate_every")),
            "{e:?}"
        );
    }

    #[test]
    fn metrics_listen_is_off_unless_set_and_a_bad_address_names_its_key() {
        let c = Config::from_toml(FULL, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.metrics.listen, None);
        let text = format!("{FULL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let c = Config::from_toml(&text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        for (text, expected) in [
            (
                format!("{FULL}\n[metrics]\nlisten = \"localhost\"\n"),
                "config: metrics.listen: 'localhost' is not an address:port",
            ),
            (
                format!("{FULL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\npath = \"/m\"\n"),
                "config: metrics.path: TOML parse error",
            ),
        ] {
            let err = Config::from_toml(&text, &no_env)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{expected}: {err}");
        }
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
            // Top-level keys go before FULL: appended after it they would land
            // in its last table, [master_key], and fail as an unknown field.
            (
                format!("max_batch_items = 0\n{FULL}"),
                "config: max_batch_items: must be between 1 and 100000",
            ),
            (
                format!("cache_capacity_mib = 0\n{FULL}"),
                "config: cache_capacity_mib: must be between 1 and 65536",
            ),
            (FULL.replace("client_ca", "ca"), "unknown field"),
            (
                format!("{FULL}\n[limits]\nmax_connections = 0"),
                "config: limits.max_connections: 0 is out of range",
            ),
            (
                format!("{FULL}\n[limits]\nmax_connections = 4\nmax_connections_per_identity = 5"),
                "config: limits.max_connections_per_identity: 5 is above limits.max_connections",
            ),
            (
                format!("{FULL}\n[limits]\nstream_window_bytes = 10"),
                "config: limits.stream_window_bytes",
            ),
            (
                format!("{FULL}\n[limits]\nidle_timeout_secs = -1"),
                "config: limits.idle_timeout_secs",
            ),
            (
                format!("{FULL}\n[limits]\nmax_streams = 3"),
                "unknown field `max_streams`",
            ),
            (
                FULL.replace("[tls]", "[tls]\nmin_version = \"1.1\""),
                "config: tls.min_version: '1.1' is not a TLS version",
            ),
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
