//! How the simulator writes and reads Graph timestamps.
//!
//! Graph renders `expirationDateTime` with seven fractional digits and a `Z`
//! (graph-protocol.md §1.2, `2016-11-20T18:23:45.9356913Z`), while real OneDrive notifications
//! carry `subscriptionExpirationDateTime` with a non-UTC offset (§3.1, `2021-02-10T08:00:00-08:00`).
//! Both forms live here so every module renders time the same way.

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// Truncates to Graph's 100 ns precision, so a value we store is exactly the value we render.
pub fn to_ticks(at: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = at.timestamp_subsec_nanos();
    let trimmed = nanos - nanos % 100;
    at.with_nanosecond(trimmed).unwrap_or(at)
}

/// `2026-01-01T00:00:00.0000000Z`, the form of `expirationDateTime` in subscription JSON (§1.2).
pub fn graph_timestamp(at: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.timestamp_subsec_nanos() / 100
    )
}

/// The same instant written at UTC-08:00, as real OneDrive change notifications do (§3.1, §10 item 5).
pub fn offset_timestamp(at: DateTime<Utc>) -> String {
    // -8 h is always a valid offset; the fallback only keeps this function total.
    match FixedOffset::west_opt(8 * 3600) {
        Some(pacific) => {
            let local = at.with_timezone(&pacific);
            format!(
                "{}.{:07}{}",
                local.format("%Y-%m-%dT%H:%M:%S"),
                local.timestamp_subsec_nanos() / 100,
                local.format("%:z")
            )
        }
        None => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// `innerError.date`: Graph writes it without fraction or zone (§1.6 samples).
pub fn inner_error_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Reads a client-supplied timestamp: RFC 3339 with any offset, or a zone-less value taken as UTC
/// (Graph documents `expirationDateTime` as UTC and accepts both).
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        parse_timestamp(raw).expect("valid timestamp")
    }

    #[test]
    fn graph_timestamps_have_seven_fractional_digits_and_a_z() {
        assert_eq!(
            graph_timestamp(at("2026-01-01T00:00:00Z")),
            "2026-01-01T00:00:00.0000000Z"
        );
        assert_eq!(
            graph_timestamp(at("2016-11-20T18:23:45.9356913Z")),
            "2016-11-20T18:23:45.9356913Z"
        );
    }

    #[test]
    fn offset_timestamps_are_the_same_instant_at_minus_eight_hours() {
        let instant = at("2021-02-10T16:00:00.5Z");
        let rendered = offset_timestamp(instant);
        assert_eq!(rendered, "2021-02-10T08:00:00.5000000-08:00");
        assert_eq!(
            DateTime::parse_from_rfc3339(&rendered).expect("rfc 3339"),
            instant
        );
    }

    #[test]
    fn zone_less_timestamps_are_read_as_utc() {
        assert_eq!(at("2026-03-04T05:06:07"), at("2026-03-04T05:06:07Z"));
        assert_eq!(at("2026-03-04T06:06:07+01:00"), at("2026-03-04T05:06:07Z"));
        assert!(parse_timestamp("tomorrow").is_none());
    }

    #[test]
    fn ticks_drop_precision_below_100_nanoseconds() {
        let instant = at("2026-01-01T00:00:00.123456789Z");
        assert_eq!(graph_timestamp(to_ticks(instant)), "2026-01-01T00:00:00.1234567Z");
        assert_eq!(to_ticks(instant).timestamp_subsec_nanos(), 123_456_700);
    }
}
