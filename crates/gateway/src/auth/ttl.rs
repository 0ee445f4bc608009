//! Token lifetimes as operators type them: `30d`, `12h`, `15m`, `3600s`, `2w`.

use std::time::Duration;

/// Parses `<positive integer><unit>` with unit `s`, `m`, `h`, `d` or `w`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => {
            return Err(format!(
                "{s:?} lacks a unit: use s, m, h, d or w (e.g. 30d)"
            ));
        }
        _ => {
            return Err(format!(
                "{s:?} is not a lifetime: expected a number followed by s, m, h, d or w (e.g. 30d)"
            ));
        }
    };
    if digits.is_empty() {
        return Err(format!("{s:?} lacks a number (e.g. 30d)"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is too long a lifetime"))?;
    if n == 0 {
        return Err(format!("{s:?}: a lifetime must be positive"));
    }
    let secs = n
        .checked_mul(unit_secs)
        .filter(|&secs| secs <= MAX_TTL_SECS)
        .ok_or_else(|| format!("{s:?} is too long a lifetime (at most 1000 years)"))?;
    Ok(Duration::from_secs(secs))
}

/// Longest accepted lifetime; beyond this it is a typo, and unix time arithmetic stays far
/// from overflow.
const MAX_TTL_SECS: u64 = 1000 * 366 * 86_400;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<u64, &str>) {
        match (parse_ttl(input), expect) {
            (Ok(got), Ok(secs)) => assert_eq!(got, Duration::from_secs(secs), "{input}"),
            (Err(msg), Err(part)) => assert!(msg.contains(part), "{input}: {msg}"),
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn table() {
        check("30d", Ok(30 * 86_400));
        check("12h", Ok(12 * 3600));
        check("15m", Ok(900));
        check("3600s", Ok(3600));
        check("2w", Ok(14 * 86_400));
        check("1s", Ok(1));
        check("007h", Ok(7 * 3600));
        check("0d", Err("positive"));
        check("0s", Err("positive"));
        check("", Err("lacks a unit"));
        check("30", Err("lacks a unit"));
        check("d", Err("lacks a number"));
        check("-1d", Err("not a lifetime"));
        check("+1d", Err("not a lifetime"));
        check("1.5h", Err("not a lifetime"));
        check("30D", Err("not a lifetime"));
        check("30 d", Err("not a lifetime"));
        check(" 30d", Err("not a lifetime"));
        check("1y", Err("not a lifetime"));
        check("1hm", Err("not a lifetime"));
        check("30d ", Err("not a lifetime"));
        check("99999999999999999999999s", Err("too long"));
        check("18446744073709551615w", Err("too long"));
        check("52286w", Err("too long"));
        check("52000w", Ok(52_000 * 7 * 86_400));
    }
}
