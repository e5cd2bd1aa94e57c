//! Durations written the way people write them in config files: `250ms`, `30s`, `5m`, `1h`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration in a config file or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

const EXPECTED: &str = "a duration like \"250ms\", \"30s\", \"5m\" or \"1h\"";

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // (As admin SET reads them, but a bare number must be 0: "30" could mean
        // seconds or milliseconds.)
        match pgopt_proxy::config::parse_duration(text) {
            Some((d, unit)) if unit || d.is_zero() => Ok(HumanDuration(d)),
            _ => Err(format!("expected {EXPECTED}, found {text:?}")),
        }
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "expected {EXPECTED} (a number needs a unit), found {v}"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let p = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(p("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(p("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(p("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(p("0"), Ok(Duration::ZERO));
        assert!(p("30").is_err(), "a bare number needs a unit");
        assert!(p("fast").is_err());
        assert!(p("10 parsecs").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in ["0s", "250ms", "30s", "5m", "1h"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
    }
}

/// A TCP keepalive timing: whole seconds from 1 to 32767 (what Linux takes), or 0 for
/// the system's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveSeconds(pub Duration);

impl Serialize for KeepaliveSeconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HumanDuration(self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeepaliveSeconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let HumanDuration(d) = HumanDuration::deserialize(d)?;
        if d.subsec_nanos() != 0 || d.as_secs() > 32767 {
            return Err(de::Error::custom(format!(
                "expected whole seconds from \"1s\" to \"32767s\", or \"0s\" for the system's own; found {}",
                HumanDuration(d)
            )));
        }
        Ok(KeepaliveSeconds(d))
    }
}
