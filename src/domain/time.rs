//! Times as people read them.

use std::time::{Duration, UNIX_EPOCH};

/// A unix time in milliseconds as RFC 3339 UTC, to the second
/// (`2026-11-27T09:50:46Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// A duration as a person writes it: `500ms`, `10s`, `1m30s`, `2h`, `90d`
/// (whole milliseconds).
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms >= 86_400_000 && ms % 86_400_000 == 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms >= 3_600_000 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms >= 60_000 && ms % 60_000 != 0 {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_time_prints_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_600_246_999), "2026-11-25T09:50:46Z");
    }

    #[test]
    fn a_duration_prints_in_its_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
