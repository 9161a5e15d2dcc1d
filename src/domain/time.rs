//! Times as people read them.

use std::time::{Duration, UNIX_EPOCH};

/// A unix time in milliseconds as RFC 3339 UTC, to the second
/// (`2026-11-27T09:50:46Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_time_prints_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_600_246_999), "2026-11-25T09:50:46Z");
    }
}
