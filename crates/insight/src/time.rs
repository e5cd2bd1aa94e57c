//! Wall-clock helpers: unix milliseconds and RFC 3339 formatting without a
//! date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; times before the epoch map to 0.
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2024-05-01T12:34:56.789Z` for a unix time in milliseconds (UTC).
pub fn format_rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T23:59:59.999Z (leap day)
        assert_eq!(
            format_rfc3339_millis(951_868_799_999),
            "2000-02-29T23:59:59.999Z"
        );
        // 2024-12-31T08:15:30.042Z
        assert_eq!(
            format_rfc3339_millis(1_735_632_930_042),
            "2024-12-31T08:15:30.042Z"
        );
    }

    #[test]
    fn unix_millis_of_epoch_offsets() {
        let t = UNIX_EPOCH + Duration::from_millis(1234);
        assert_eq!(unix_millis(t), 1234);
        assert_eq!(unix_millis(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
