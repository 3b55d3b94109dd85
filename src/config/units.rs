//! The value types of the config file: sizes and durations, each accepting a bare number
//! or a string with a unit, and printing back in the form an admin would write.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes: an integer (bytes) or a string with a unit (`"512MiB"`, `"2GiB"`, `"2GB"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(mib: u64) -> Self {
        Self(mib * 1024 * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `"512MiB"`, `"2 GiB"`, `"1.5GiB"`, `"2GB"`, `"4096"`.
    ///
    /// The one-letter units (`"512M"`) are refused: tools disagree on whether they mean
    /// 1000- or 1024-based, and a memory limit off by 5% is a trap.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let unit: String = trimmed
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .to_string();
        if matches!(unit.as_str(), "k" | "K" | "m" | "M" | "g" | "G" | "t" | "T") {
            let number = &trimmed[..trimmed.len() - unit.len()];
            return Err(format!(
                "ambiguous unit in {text:?}: write {number}{unit}iB (1024-based) or {number}{unit}B (1000-based)"
            ));
        }
        if trimmed.starts_with('-') {
            return Err(format!("negative size {text:?}"));
        }
        trimmed
            .parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|_| format!("cannot read {text:?} as a size"))
    }
}

/// Sizes print in the largest binary unit that divides them exactly.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

const SIZE_EXPECTED: &str =
    "a size: bytes as an integer, or a string with a unit such as \"512MiB\", \"2GiB\" or \"2GB\"";

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value).map(ByteSize).map_err(|_| {
                    E::custom(format!("negative size {value}; expected {SIZE_EXPECTED}"))
                })
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                ByteSize::parse(value)
                    .map_err(|why| E::custom(format!("{why}; expected {SIZE_EXPECTED}")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A duration: whole seconds as an integer, or a string with a unit (`"90s"`, `"2m"`, `"500ms"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeSpan(pub Duration);

impl TimeSpan {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(format!("negative duration {text:?}"));
        }
        humantime::parse_duration(trimmed)
            .map(Self)
            .map_err(|why| format!("cannot read {text:?} as a duration ({why})"))
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

const TIME_EXPECTED: &str = "a duration: whole seconds as an integer, or a string with a unit such as \"90s\", \"2m\" or \"500ms\"";

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;
        impl Visitor<'_> for TimeVisitor {
            type Value = TimeSpan;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(TIME_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<TimeSpan, E> {
                u64::try_from(value).map(TimeSpan::secs).map_err(|_| {
                    E::custom(format!(
                        "negative duration {value}; expected {TIME_EXPECTED}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<TimeSpan, E> {
                Ok(TimeSpan::secs(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<TimeSpan, E> {
                TimeSpan::parse(value)
                    .map_err(|why| E::custom(format!("{why}; expected {TIME_EXPECTED}")))
            }
        }
        deserializer.deserialize_any(TimeVisitor)
    }
}

impl Serialize for TimeSpan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `limit_time_real_cron`: `-1` (the default) means "same as `limit_time_real`".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CronTimeLimit {
    #[default]
    SameAsHttp,
    Limit(TimeSpan),
}

impl fmt::Display for CronTimeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SameAsHttp => f.write_str("-1"),
            Self::Limit(span) => span.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for CronTimeLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CronVisitor;
        impl Visitor<'_> for CronVisitor {
            type Value = CronTimeLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "-1 (same as limit_time_real) or {TIME_EXPECTED}")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<CronTimeLimit, E> {
                match value {
                    -1 => Ok(CronTimeLimit::SameAsHttp),
                    _ => u64::try_from(value)
                        .map(|secs| CronTimeLimit::Limit(TimeSpan::secs(secs)))
                        .map_err(|_| E::custom(format!("{value} is not allowed; expected -1 (same as limit_time_real) or {TIME_EXPECTED}"))),
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<CronTimeLimit, E> {
                Ok(CronTimeLimit::Limit(TimeSpan::secs(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<CronTimeLimit, E> {
                if value.trim() == "-1" {
                    return Ok(CronTimeLimit::SameAsHttp);
                }
                TimeSpan::parse(value)
                    .map(CronTimeLimit::Limit)
                    .map_err(|why| {
                        E::custom(format!(
                            "{why}; expected -1 (same as limit_time_real) or {TIME_EXPECTED}"
                        ))
                    })
            }
        }
        deserializer.deserialize_any(CronVisitor)
    }
}

impl Serialize for CronTimeLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::SameAsHttp => serializer.serialize_i64(-1),
            Self::Limit(span) => span.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("2GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("2 GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("2GB"), Ok(ByteSize(2_000_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
    }

    #[test]
    fn sizes_refuse_ambiguous_negative_and_garbage() {
        assert!(ByteSize::parse("512M").unwrap_err().contains("512MiB"));
        assert!(ByteSize::parse("-5MiB").unwrap_err().contains("negative"));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(2 << 30).to_string(), "2GiB");
        assert_eq!(ByteSize(2560 << 20).to_string(), "2560MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[test]
    fn durations_parse_with_units_and_print_back() {
        assert_eq!(TimeSpan::parse("90s"), Ok(TimeSpan::secs(90)));
        assert_eq!(TimeSpan::parse("2m"), Ok(TimeSpan::secs(120)));
        assert_eq!(
            TimeSpan::parse("500ms"),
            Ok(TimeSpan(Duration::from_millis(500)))
        );
        assert!(TimeSpan::parse("-3s").is_err());
        assert!(TimeSpan::parse("soon").is_err());
        assert_eq!(TimeSpan::secs(120).to_string(), "2m");
        assert_eq!(TimeSpan::secs(0).to_string(), "0s");
    }
}
