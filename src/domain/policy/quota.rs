//! Quotas on reveals, and the thresholds that freeze a caller.
//!
//! Windows are fixed and aligned to the Unix epoch in UTC: a minute window
//! runs from :00 to :59 of a minute, an hour window from the full hour, a
//! day window from UTC midnight. A count resets when its window ends, which
//! makes "when it resets" an exact time a refusal can name. (A caller can
//! reveal up to twice a limit across the boundary of two windows; a day
//! limit beside a minute limit bounds that.)

use std::fmt;
use std::str::FromStr;

/// The length of a quota's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Second, Period::Minute, Period::Hour, Period::Day];

    pub fn millis(self) -> u64 {
        match self {
            Period::Second => 1_000,
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }
}

/// At most `limit` values revealed per `per`, per caller and rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub limit: u64,
    pub per: Period,
}

/// The largest limit a quota may set (a larger one is a typo, not a
/// limit).
pub const MAX_QUOTA: u64 = 1_000_000_000;

impl Quota {
    /// The start of the window `now_ms` falls in.
    pub fn window_start(&self, now_ms: u64) -> u64 {
        window_start(now_ms, self.per.millis())
    }

    /// When the window `now_ms` falls in ends (the count resets).
    pub fn resets_at(&self, now_ms: u64) -> u64 {
        self.window_start(now_ms).saturating_add(self.per.millis())
    }
}

/// The start of the fixed window of `len_ms` that `now_ms` falls in.
pub fn window_start(now_ms: u64, len_ms: u64) -> u64 {
    now_ms - now_ms % len_ms.max(1)
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.per.as_str())
    }
}

impl FromStr for Quota {
    type Err = String;

    /// `N/unit`: `100/minute`, `2000/day` (unit: second, minute, hour, day).
    fn from_str(s: &str) -> Result<Self, String> {
        let shape = "write a quota as N/unit, e.g. \"100/minute\" or \"2000/day\" \
                     (unit: second, minute, hour or day)";
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a quota: {shape}"))?;
        let limit: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': '{}' is not a whole number; {shape}", n.trim()))?;
        if limit == 0 || limit > MAX_QUOTA {
            return Err(format!(
                "'{s}': the limit must be between 1 and {MAX_QUOTA} (a rule that allows \
                 nothing is no rule)"
            ));
        }
        let per = Period::ALL
            .into_iter()
            .find(|p| p.as_str() == unit.trim())
            .ok_or_else(|| format!("'{s}': unknown unit '{}'; {shape}", unit.trim()))?;
        Ok(Quota { limit, per })
    }
}

/// A freeze threshold: more than `count` events within one window of
/// `window_ms` freezes the caller (`count` = 0 never does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub count: u64,
    pub window_ms: u64,
}

impl Trigger {
    pub fn is_off(&self) -> bool {
        self.count == 0
    }

    pub fn window_start(&self, now_ms: u64) -> u64 {
        window_start(now_ms, self.window_ms)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let window = humantime::format_duration(std::time::Duration::from_millis(self.window_ms));
        write!(f, "{} within {window}", self.count)
    }
}

/// When abuse freezes a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeRules {
    /// Quota refusals: the `count`-th refusal in a window freezes.
    pub quota_hits: Trigger,
    /// Tokens that name no stored value (not found, not issued by this
    /// vault, or not a token at all): more than `count` in a window
    /// freezes (a scan).
    pub unknown_tokens: Trigger,
}

impl Default for FreezeRules {
    fn default() -> Self {
        Self {
            quota_hits: Trigger {
                count: 3,
                window_ms: 3_600_000,
            },
            unknown_tokens: Trigger {
                count: 100,
                window_ms: 3_600_000,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_from_n_per_unit_and_print_the_same() {
        for text in ["100/minute", "2000/day", "1/second", "5/hour"] {
            let q: Quota = text.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(q.to_string(), text);
        }
        let q: Quota = " 60 / minute ".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            q,
            Quota {
                limit: 60,
                per: Period::Minute
            }
        );
    }

    #[test]
    fn bad_quotas_say_what_is_wrong() {
        let cases = [
            ("100", "is not a quota"),
            ("ten/minute", "not a whole number"),
            ("-1/minute", "not a whole number"),
            ("0/minute", "between 1 and"),
            ("2000000000/day", "between 1 and"),
            ("100/week", "unknown unit 'week'"),
            ("100/min", "unknown unit 'min'"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<Quota>().err().unwrap_or_default();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn windows_are_aligned_to_the_utc_clock() {
        let q = Quota {
            limit: 1,
            per: Period::Minute,
        };
        // 2026-11-27T14:40:26.500Z
        let now = 1_795_790_426_500;
        assert_eq!(q.window_start(now), 1_795_790_400_000);
        assert_eq!(q.resets_at(now), 1_795_790_460_000);
        let day = Quota {
            limit: 1,
            per: Period::Day,
        };
        assert_eq!(day.window_start(now) % 86_400_000, 0);
        assert!(day.window_start(now) <= now && now < day.resets_at(now));
    }
}
