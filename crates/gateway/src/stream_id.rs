//! Stream identifiers: `{org}/{cluster}/{name}`, each segment `[A-Za-z0-9._-]{1,128}`.

use std::fmt;
use std::str::FromStr;

/// Longest allowed segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// A validated stream id. Construction is the only place the grammar is checked, so every
/// `StreamId` in the program is well formed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The whole id, `org/cluster/name`.
    full: String,
    /// Byte index of the first and second `/` in `full`.
    slashes: (usize, usize),
}

/// Why a string is not a stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("a stream id has three segments, org/cluster/name")]
    Segments,
    #[error("segment {0:?} is empty or longer than 128 bytes")]
    Length(String),
    #[error("segment {0:?} has a character outside [A-Za-z0-9._-]")]
    Character(String),
}

/// Checks one segment of a stream id (also used for org and cluster names in tokens).
pub fn validate_segment(segment: &str) -> Result<(), StreamIdError> {
    if segment.is_empty() || segment.len() > MAX_SEGMENT_LEN {
        return Err(StreamIdError::Length(truncated(segment)));
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(StreamIdError::Character(truncated(segment)));
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}

impl StreamId {
    /// Builds an id from its three segments.
    pub fn new(org: &str, cluster: &str, name: &str) -> Result<Self, StreamIdError> {
        format!("{org}/{cluster}/{name}").parse()
    }

    pub fn org(&self) -> &str {
        &self.full[..self.slashes.0]
    }

    pub fn cluster(&self) -> &str {
        &self.full[self.slashes.0 + 1..self.slashes.1]
    }

    pub fn name(&self) -> &str {
        &self.full[self.slashes.1 + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        let (Some(org), Some(cluster), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StreamIdError::Segments);
        };
        for segment in [org, cluster, name] {
            validate_segment(segment)?;
        }
        let first = org.len();
        Ok(StreamId {
            full: s.to_owned(),
            slashes: (first, first + 1 + cluster.len()),
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(&str, &str, &str), ()>) {
        let got = input.parse::<StreamId>();
        match (got, expect) {
            (Ok(id), Ok((o, c, n))) => {
                assert_eq!((id.org(), id.cluster(), id.name()), (o, c, n), "{input}");
                assert_eq!(id.to_string(), input);
            }
            (Err(_), Err(())) => {}
            (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn grammar() {
        check(
            "acme/prod-eu/deploy.log",
            Ok(("acme", "prod-eu", "deploy.log")),
        );
        check("a/b/c", Ok(("a", "b", "c")));
        check("A_1/b.2/c-3", Ok(("A_1", "b.2", "c-3")));
        check(
            &format!("a/b/{}", "x".repeat(128)),
            Ok(("a", "b", &"x".repeat(128))),
        );
        check(&format!("a/b/{}", "x".repeat(129)), Err(()));
        check("a/b", Err(()));
        check("a/b/c/d", Err(()));
        check("a//c", Err(()));
        check("a/b/", Err(()));
        check("a/b/c d", Err(()));
        check("a/b/ü", Err(()));
        check("a/b/%2F", Err(()));
        check("", Err(()));
    }
}
