//! The server's base URL: `http[s]://host[:port][/base]`.

use std::fmt;
use std::str::FromStr;

use super::error::ClientError;
use crate::stream_id::StreamId;

/// The server's address: `http[s]://host[:port][/base]`. Parsed with [`FromStr`] so a CLI can
/// validate it up front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    /// `https`: the connection is TLS, the server's certificate checked for `host`.
    pub(crate) tls: bool,
    /// Host as given to the resolver (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host:port` as sent in the `Host` header (IPv6 with brackets).
    pub(crate) authority: String,
    /// Path prefix without a trailing slash ("" or "/gw").
    base: String,
}

impl BaseUrl {
    /// The request path of a stream: `{base}/v1/streams/{org}/{cluster}/{name}`.
    pub fn stream_path(&self, stream: &StreamId) -> String {
        // stream ids contain only [A-Za-z0-9._-/]: nothing to percent-encode
        format!("{}/v1/streams/{}", self.base, stream)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.base)
    }
}

impl FromStr for BaseUrl {
    type Err = ClientError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ClientError::Url {
            url: url.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let lower = url.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (true, &url["https://".len()..])
        } else if lower.starts_with("http://") {
            (false, &url["http://".len()..])
        } else {
            return Err(bad("expected http[s]://host[:port][/base]"));
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(bad(
                "query, fragment, user info and spaces are not allowed; expected http[s]://host[:port][/base]",
            ));
        }
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            if host.is_empty() || !host.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(bad("invalid IPv6 address"));
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad("missing or invalid host"));
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("invalid port")),
            },
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(BaseUrl {
            tls,
            host: host.to_owned(),
            port,
            authority,
            base: base.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on what they set up
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(&str, &str), &str>) {
        match (input.parse::<BaseUrl>(), expect) {
            (Ok(url), Ok((display, path))) => {
                assert_eq!(url.to_string(), display, "{input}");
                let id: StreamId = "a/b/c".parse().unwrap();
                assert_eq!(url.stream_path(&id), path, "{input}");
            }
            (Err(err), Err(fragment)) => {
                assert!(err.to_string().contains(fragment), "{input}: {err}");
                assert_eq!(err.exit_code(), 2);
            }
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn urls() {
        check(
            "http://localhost:8080",
            Ok(("http://localhost:8080", "/v1/streams/a/b/c")),
        );
        check(
            "http://gw.example",
            Ok(("http://gw.example:80", "/v1/streams/a/b/c")),
        );
        check(
            "HTTP://h:1/base/",
            Ok(("http://h:1/base", "/base/v1/streams/a/b/c")),
        );
        check(
            "http://[::1]:9000/x",
            Ok(("http://[::1]:9000/x", "/x/v1/streams/a/b/c")),
        );
        check(
            "https://gw.example/base",
            Ok(("https://gw.example:443/base", "/base/v1/streams/a/b/c")),
        );
        check(
            "HTTPS://10.0.0.1:8443",
            Ok(("https://10.0.0.1:8443", "/v1/streams/a/b/c")),
        );
        check("ftp://h", Err("expected http[s]://"));
        check("localhost:8080", Err("expected http[s]://"));
        check("http://", Err("invalid host"));
        check("http://h:99999", Err("invalid port"));
        check("http://h:0", Err("invalid port"));
        check("http://u:p@h:1", Err("user info"));
        check("http://h:1/?q=1", Err("query"));
        check("http://[::1:80", Err("unclosed"));
    }
}
