//! Event time: how it is read from records and how durations are written in
//! specs. Everything here is pure.

pub mod watermark;

/// Milliseconds since the Unix epoch (UTC). Negative values are valid.
pub type EventTime = i64;

/// How an event-time field is encoded in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// A JSON number of milliseconds since the epoch. Fractional values are
    /// truncated towards negative infinity.
    EpochMillis,
    /// A JSON number of seconds since the epoch; fractions keep millisecond
    /// precision (truncated towards negative infinity).
    EpochSeconds,
    /// An RFC 3339 string such as `2024-05-01T12:00:00.250+02:00`.
    /// Sub-millisecond digits are truncated.
    Rfc3339,
}

/// Parses a duration written like `5s`, `250ms`, `1m 30s` (humantime
/// syntax) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too large"))
}

/// Parses an RFC 3339 timestamp into epoch milliseconds without allocating.
///
/// Accepts `T` or `t` or a space between date and time, `Z`/`z` or a numeric
/// offset, and any number of fractional digits (truncated to milliseconds).
pub fn parse_rfc3339_ms(s: &str) -> Option<EventTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let second = num(17..19)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 60 + m;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil` algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:00:00.123456Z"),
            Some(1_709_208_000_123)
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(parse_rfc3339_ms("2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-01-01"), None);
        assert_eq!(parse_rfc3339_ms("2024-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339_ms("2024-01-01T00:00:00+0100"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("five").is_err());
    }
}
