//! Sizes and durations as operators write them: `64MiB`, `16 KiB`, `1.5GB`, `262144`; `30s`,
//! `100ms`, `5m`, `1h`. The same parser serves flags, environment variables and the TOML file
//! (where a bare integer keeps meaning bytes, or the unit its setting's name says).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A number of bytes, parsed with an optional unit: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000),
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), and the one-letter `K`/`M`/`G`/`T` (1024, as in
/// Kubernetes' `Ki` and most command-line tools), case-insensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text)?;
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            "tb" => 1000 * 1000 * 1000 * 1000,
            "k" | "ki" | "kib" => 1 << 10,
            "m" | "mi" | "mib" => 1 << 20,
            "g" | "gi" | "gib" => 1 << 30,
            "t" | "ti" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{text:?} is not a size: use bytes or a unit (KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses a duration: a number with `ms`, `s`, `m`, `h` or `d`; a bare number is in
/// `bare_unit` (seconds for `*_secs` settings, milliseconds for `*_ms` ones).
pub fn parse_duration(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" => bare_unit,
        "ms" => Duration::from_millis(1),
        "s" | "sec" | "secs" => Duration::from_secs(1),
        "m" | "min" | "mins" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(format!("{text:?} is not a duration: use ms, s, m, h or d")),
    };
    let seconds = number * unit.as_secs_f64();
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a valid duration"))
}

fn split_number(text: &str) -> Result<(f64, &str), String> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let number: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    Ok((number, unit.trim()))
}

/// Serde: a size as an integer (bytes) or a string with a unit.
pub fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer
        .deserialize_any(SizeVisitor)
        .map(ByteSize::bytes)
}

/// Serde: an optional size.
pub fn deserialize_opt_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    deserialize_size(deserializer).map(Some)
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size: a number of bytes or a string such as \"64MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom("a size cannot be negative"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("262144", 262_144),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("16KiB", 16 << 10),
            ("16k", 16 << 10),
            ("1.5GiB", 3 << 29),
            ("2GB", 2_000_000_000),
            ("512Mi", 512 << 20),
            ("1_000", 1000),
            ("0", 0),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "MiB", "64 MeB", "-1", "0.5B", "1e3"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations() {
        let s = Duration::from_secs(1);
        assert_eq!(parse_duration("30", s), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("100ms", s), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5m", s), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5s", s), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2d", s), Ok(Duration::from_secs(172_800)));
        assert_eq!(
            parse_duration("250", Duration::from_millis(1)),
            Ok(Duration::from_millis(250))
        );
        assert!(parse_duration("5 parsecs", s).is_err());
    }
}
