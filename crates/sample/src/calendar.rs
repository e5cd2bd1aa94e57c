//! The sample's fixed clock: the data spans the 12 months before 2026-11-01 (UTC),
//! never `now()`, so the same seed gives the same rows on any day.

/// Seconds in a day.
pub(crate) const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01.
pub(crate) const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// Start of the activity data (tasks, comments, messages, files, audit log):
/// 2025-11-01 00:00:00 UTC, in Unix seconds.
pub const DATA_START_UNIX: i64 = days_from_civil(2025, 11, 1) * DAY;

/// End (exclusive) of the activity data and the sample's "now":
/// 2026-11-01 00:00:00 UTC, in Unix seconds.
pub const DATA_END_UNIX: i64 = days_from_civil(2026, 11, 1) * DAY;

/// Length of the activity range in seconds (365 days).
pub(crate) const SPAN: i64 = DATA_END_UNIX - DATA_START_UNIX;

/// Organizations were founded from this day on (2022-01-01 UTC).
pub(crate) const HISTORY_START_UNIX: i64 = days_from_civil(2022, 1, 1) * DAY;

/// The months `(year, month)` covered by the activity range, oldest first; the
/// audit log has one partition per month.
pub(crate) fn data_months() -> Vec<(i64, i64)> {
    let (mut year, mut month, _) = civil_from_days(DATA_START_UNIX / DAY);
    let mut months = Vec::new();
    while days_from_civil(year, month, 1) * DAY < DATA_END_UNIX {
        months.push((year, month));
        month += 1;
        if month > 12 {
            month = 1;
            year += 1;
        }
    }
    months
}

/// The time of row `i` (1-based) of `n` rows spread evenly over the activity range,
/// `r` in `0..SPAN` placing it inside its slot: non-decreasing in `i`, like a serial id
/// and its `created_at` in a real table.
pub(crate) fn slot_time(i: u64, n: u64, r: u64) -> i64 {
    let span = SPAN as u128;
    let n = u128::from(n.max(1));
    let offset = (u128::from(i.saturating_sub(1)) * span + u128::from(r) % span) / n;
    DATA_START_UNIX + offset as i64
}

fn push_2(buf: &mut Vec<u8>, v: i64) {
    buf.push(b'0' + (v / 10 % 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

fn push_4(buf: &mut Vec<u8>, v: i64) {
    push_2(buf, v / 100);
    push_2(buf, v % 100);
}

/// Appends `YYYY-MM-DD`.
pub(crate) fn write_date(buf: &mut Vec<u8>, unix_day: i64) {
    let (y, m, d) = civil_from_days(unix_day);
    push_4(buf, y);
    buf.push(b'-');
    push_2(buf, m);
    buf.push(b'-');
    push_2(buf, d);
}

/// Appends `YYYY-MM-DD HH:MM:SS+00`, a `timestamptz` literal in UTC.
pub(crate) fn write_timestamp(buf: &mut Vec<u8>, unix_secs: i64) {
    let day = unix_secs.div_euclid(DAY);
    let secs = unix_secs.rem_euclid(DAY);
    write_date(buf, day);
    buf.push(b' ');
    push_2(buf, secs / 3600);
    buf.push(b':');
    push_2(buf, secs / 60 % 60);
    buf.push(b':');
    push_2(buf, secs % 60);
    buf.extend_from_slice(b"+00");
}

/// `write_timestamp` into a new string.
pub(crate) fn timestamp_string(unix_secs: i64) -> String {
    let mut buf = Vec::with_capacity(22);
    write_timestamp(&mut buf, unix_secs);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        for day in (-1000..40_000).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn the_range_is_twelve_months() {
        assert_eq!(SPAN, 365 * DAY);
        let months = data_months();
        assert_eq!(months.len(), 12);
        assert_eq!(months[0], (2025, 11));
        assert_eq!(months[11], (2026, 10));
    }

    #[test]
    fn timestamps_format_in_utc() {
        assert_eq!(timestamp_string(DATA_START_UNIX), "2025-11-01 00:00:00+00");
        assert_eq!(
            timestamp_string(DATA_END_UNIX - 1),
            "2026-10-31 23:59:59+00"
        );
    }

    #[test]
    fn slots_are_monotone_and_inside_the_range() {
        let n = 1000;
        let mut last = i64::MIN;
        for i in 1..=n {
            let lo = slot_time(i, n, 0);
            let hi = slot_time(i, n, (SPAN - 1) as u64);
            assert!(lo >= last && hi >= lo);
            assert!(lo >= DATA_START_UNIX && hi < DATA_END_UNIX);
            last = hi;
        }
    }
}
