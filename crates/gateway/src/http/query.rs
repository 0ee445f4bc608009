//! Query strings and header values, parsed strictly into stable error codes.

use std::borrow::Cow;

use super::error::{ApiError, ErrorCode};

/// Longest query string accepted (the URI itself is bounded by hyper's header limit).
const MAX_PAIRS: usize = 16;

/// The decoded `key=value` pairs of a query string.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PAIRS {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    "too many query parameters",
                ));
            }
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let (Some(key), Some(value)) = (percent_decode(key), percent_decode(value)) else {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    "query is not valid percent-encoded UTF-8",
                ));
            };
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Query { pairs })
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn u64(&self, key: &'static str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                parse_u64(v).ok_or_else(|| {
                    let code = if key == "offset" {
                        ErrorCode::InvalidOffset
                    } else {
                        ErrorCode::InvalidQuery
                    };
                    ApiError::new(code, format!("{key} must be a decimal integer below 2^64"))
                })
            })
            .transpose()
    }

    pub fn bool(&self, key: &'static str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| {
                parse_bool(v).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("{key} must be true or false"),
                    )
                })
            })
            .transpose()
    }
}

/// A decimal integer: digits only (no sign, no spaces, no `0x`), at most 20 of them, < 2^64.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Decodes `%XX` escapes and `+` (as space). `None` for bad escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for (input, expect) in [
            ("0", Some(0)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-1", None),
            ("+1", None),
            (" 1", None),
            ("0x10", None),
            ("", None),
            ("1e3", None),
        ] {
            assert_eq!(parse_u64(input), expect, "{input:?}");
        }
    }

    #[test]
    fn query() {
        let q = Query::parse(Some(
            "prefix=acme%2Fprod%2F&offset=10&follow=true&offset=12",
        ))
        .unwrap();
        assert_eq!(q.get("prefix"), Some("acme/prod/"));
        assert_eq!(q.u64("offset").unwrap(), Some(12));
        assert_eq!(q.bool("follow").unwrap(), Some(true));
        assert_eq!(q.u64("limit").unwrap(), None);
        assert_eq!(
            Query::parse(Some("offset=x"))
                .unwrap()
                .u64("offset")
                .unwrap_err()
                .code,
            ErrorCode::InvalidOffset
        );
        assert_eq!(
            Query::parse(Some("a=%zz")).err().unwrap().code,
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            Query::parse(Some("a=%ff")).err().unwrap().code,
            ErrorCode::InvalidQuery
        );
        assert!(Query::parse(None).unwrap().get("x").is_none());
    }
}
