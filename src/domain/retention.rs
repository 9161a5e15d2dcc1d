//! How long tokens live: a default and a maximum time to live per field
//! kind, and how the sweeper deletes expired ones.

use super::FieldKind;
use std::time::Duration;

/// The longest time to live any token may have: 100 years as durations
/// are written (`100y`, a year being 365.25 days), 36,525 days. An expiry
/// stays a plain millisecond count far from overflow.
pub const MAX_TTL: Duration = Duration::from_secs(36_525 * 86_400);

/// The sweeper's defaults: look for expired tokens every minute, delete at
/// most this many per durable batch.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_SWEEP_BATCH: usize = 500;
pub const MAX_SWEEP_BATCH: usize = 10_000;
/// The sweeper's default pace, records per second: a backlog of expired
/// tokens is deleted steadily instead of all at once beside live traffic.
pub const DEFAULT_SWEEP_RATE: u32 = 5_000;
pub const MAX_SWEEP_RATE: u32 = 1_000_000;

/// One kind's time-to-live rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindRetention {
    /// The time to live of a token tokenized without one (`None`: it
    /// never expires).
    pub default_ttl: Option<Duration>,
    /// The longest time to live a call may ask for.
    pub max_ttl: Duration,
}

impl Default for KindRetention {
    fn default() -> Self {
        Self {
            default_ttl: None,
            max_ttl: MAX_TTL,
        }
    }
}

/// The retention rules of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub phone: KindRetention,
    pub address: KindRetention,
    pub national_id: KindRetention,
    pub email: KindRetention,
    /// How often the sweeper looks for expired tokens.
    pub sweep_interval: Duration,
    /// The most records one sweep batch deletes (one durable write).
    pub sweep_batch: usize,
    /// The most records the sweeper deletes per second (it pauses between
    /// batches to keep to it).
    pub sweep_rate: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            phone: KindRetention::default(),
            address: KindRetention::default(),
            national_id: KindRetention::default(),
            email: KindRetention::default(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            sweep_batch: DEFAULT_SWEEP_BATCH,
            sweep_rate: DEFAULT_SWEEP_RATE,
        }
    }
}

pub use super::time::format_duration;

/// Why a requested time to live is refused (no value in it: a duration is
/// not sensitive).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("must be more than zero")]
    Zero,
    #[error(
        "{} is more than the {} this vault keeps {kind} tokens (retention.{kind}.max_ttl)",
        format_duration(*asked),
        format_duration(*max)
    )]
    OverMax {
        kind: FieldKind,
        asked: Duration,
        max: Duration,
    },
}

impl Retention {
    pub fn for_kind(&self, kind: FieldKind) -> KindRetention {
        match kind {
            FieldKind::Phone => self.phone,
            FieldKind::Address => self.address,
            FieldKind::NationalId => self.national_id,
            FieldKind::Email => self.email,
        }
    }

    pub fn for_kind_mut(&mut self, kind: FieldKind) -> &mut KindRetention {
        match kind {
            FieldKind::Phone => &mut self.phone,
            FieldKind::Address => &mut self.address,
            FieldKind::NationalId => &mut self.national_id,
            FieldKind::Email => &mut self.email,
        }
    }

    /// When a token of `kind` tokenized at `now_unix_ms` with the time to
    /// live `asked` (`None`: the kind's default) expires; `None`: never.
    pub fn expiry(
        &self,
        kind: FieldKind,
        asked: Option<Duration>,
        now_unix_ms: u64,
    ) -> Result<Option<u64>, TtlError> {
        let rules = self.for_kind(kind);
        let ttl = match asked {
            Some(t) if t.is_zero() => return Err(TtlError::Zero),
            Some(t) if t > rules.max_ttl => {
                return Err(TtlError::OverMax {
                    kind,
                    asked: t,
                    max: rules.max_ttl,
                })
            }
            Some(t) => t,
            None => match rules.default_ttl {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        // Sub-millisecond times to live round up: a token never outlives
        // what was asked by less than asked.
        let ms = u64::try_from(ttl.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        Ok(Some(now_unix_ms.saturating_add(ms.max(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_to_live_is_checked_against_the_kinds_maximum_and_defaults_to_the_kinds_default() {
        let mut r = Retention::default();
        *r.for_kind_mut(FieldKind::Phone) = KindRetention {
            default_ttl: Some(Duration::from_secs(60)),
            max_ttl: Duration::from_secs(3600),
        };
        let now = 1_000_000;
        assert_eq!(
            r.expiry(FieldKind::Phone, None, now),
            Ok(Some(now + 60_000))
        );
        assert_eq!(
            r.expiry(FieldKind::Phone, Some(Duration::from_secs(2)), now),
            Ok(Some(now + 2_000))
        );
        assert_eq!(
            r.expiry(FieldKind::Phone, Some(Duration::from_micros(1)), now),
            Ok(Some(now + 1))
        );
        assert_eq!(
            r.expiry(FieldKind::Phone, Some(Duration::ZERO), now),
            Err(TtlError::Zero)
        );
        let over = r
            .expiry(FieldKind::Phone, Some(Duration::from_secs(7200)), now)
            .map_err(|e| e.to_string());
        assert_eq!(
            over,
            Err("2h is more than the 1h this vault keeps phone tokens \
                 (retention.phone.max_ttl)"
                .to_owned())
        );
        // Other kinds: no default (never expire), the global maximum.
        assert_eq!(r.expiry(FieldKind::Email, None, now), Ok(None));
        // `100y` as the CLI and the config read it is the ceiling itself.
        assert_eq!(humantime::parse_duration("100y").ok(), Some(MAX_TTL));
        assert!(r.expiry(FieldKind::Email, Some(MAX_TTL), now).is_ok());
        assert!(r
            .expiry(
                FieldKind::Email,
                Some(MAX_TTL + Duration::from_secs(1)),
                now
            )
            .is_err());
    }
}
