//! Durations as users write them in specs: Go/Kubernetes style (`500ms`, `10s`,
//! `1m30s`, `2h`), never negative.

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The apiserver enforces this pattern, so a negative or unit-less duration is
/// refused at `kubectl apply` time, before any controller sees it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A non-negative span of time, serialised exactly as the user wrote it so that
/// a GitOps diff never shows a reformatted value.
#[derive(Clone, PartialEq, Eq)]
pub struct DurationSpec {
    text: String,
    value: time::Duration,
}

impl DurationSpec {
    pub fn as_duration(&self) -> time::Duration {
        self.value
    }

    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.value.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn from_millis(ms: u64) -> Self {
        let text = if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        Self {
            text,
            value: time::Duration::from_millis(ms),
        }
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write e.g. 500ms, 10s, 1m30s, 2h)")]
pub struct DurationError {
    input: String,
    reason: String,
}

impl FromStr for DurationSpec {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DurationError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ms, s, m or h)")),
            };
            let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
            if whole.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
                return Err(err("malformed number"));
            }
            let whole: u128 = whole.parse().map_err(|_| err("number too large"))?;
            let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(|| err("too large"))?;
            if !frac.is_empty() {
                let digits = frac.len().min(18);
                let frac_val: u128 = frac[..digits].parse().map_err(|_| err("malformed number"))?;
                nanos += frac_val * unit_nanos / 10u128.pow(digits as u32);
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let value = time::Duration::new(secs, (total_nanos % 1_000_000_000) as u32);
        Ok(Self {
            text: s.to_owned(),
            value,
        })
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            // Bounds the cost of the CEL rules that read durations.
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let ms = |s: &str| s.parse::<DurationSpec>().map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for bad in ["", "-5s", "10", "s", "5 s", "5d", "1..5s", "5.s", "ms"] {
            assert!(bad.parse::<DurationSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trips_the_users_spelling() {
        let d: DurationSpec = serde_json::from_str("\"1m30s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m30s\"");
    }
}
