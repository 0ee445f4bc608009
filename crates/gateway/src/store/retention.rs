//! Retention: which streams to delete because they are too old or their org (or the whole
//! store) holds too many bytes. The embedded store applies it itself; the NATS backend maps the
//! global limits onto JetStream's `max_age` / `max_bytes`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::StreamInfo;

/// The `[retention]` section: global limits, and per-org ones under `[retention.orgs.NAME]`.
/// Nothing is deleted by default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// A stream not appended to for this long is deleted.
    pub max_age_secs: Option<u64>,
    /// Bytes of all streams together; the least recently written streams go first.
    #[serde(
        default,
        deserialize_with = "crate::config::units::deserialize_opt_size"
    )]
    pub max_bytes: Option<u64>,
    /// Seconds between two retention and compaction passes (default 60).
    pub interval_secs: Option<u64>,
    /// Limits of one org, overriding `max_age_secs` and adding a byte limit of its own.
    #[serde(default)]
    pub orgs: BTreeMap<String, RetentionRule>,
}

/// The limits of one org.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub max_age_secs: Option<u64>,
    #[serde(
        default,
        deserialize_with = "crate::config::units::deserialize_opt_size"
    )]
    pub max_bytes: Option<u64>,
}

/// Default pause between maintenance passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl RetentionConfig {
    /// Whether any limit is set.
    pub fn is_active(&self) -> bool {
        self.max_age_secs.is_some()
            || self.max_bytes.is_some()
            || self
                .orgs
                .values()
                .any(|r| r.max_age_secs.is_some() || r.max_bytes.is_some())
    }

    pub fn interval(&self) -> Duration {
        self.interval_secs
            .map_or(DEFAULT_INTERVAL, Duration::from_secs)
    }

    /// Checks the values an operator wrote.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == Some(0) {
            return Err("retention.interval_secs must be at least 1".into());
        }
        let zero = |v: Option<u64>| v == Some(0);
        if zero(self.max_age_secs) || zero(self.max_bytes) {
            return Err("retention.max_age_secs and max_bytes must be positive".into());
        }
        for (org, rule) in &self.orgs {
            if zero(rule.max_age_secs) || zero(rule.max_bytes) {
                return Err(format!(
                    "retention.orgs.{org}: max_age_secs and max_bytes must be positive"
                ));
            }
        }
        Ok(())
    }

    /// The streams to delete at `now` (seconds since the epoch), each with the reason.
    pub fn select(&self, streams: &[StreamInfo], now: u64) -> Vec<(String, &'static str)> {
        let org_of = |s: &StreamInfo| s.id.split('/').next().unwrap_or("").to_owned();
        let mut doomed = Vec::new();
        let mut kept: Vec<&StreamInfo> = Vec::new();
        for s in streams {
            let rule = self.orgs.get(&org_of(s));
            let max_age = rule.and_then(|r| r.max_age_secs).or(self.max_age_secs);
            match max_age {
                Some(age) if now.saturating_sub(s.updated) > age => {
                    doomed.push((s.id.clone(), "max_age"));
                }
                _ => kept.push(s),
            }
        }
        // oldest write first, then id, so the choice is stable
        kept.sort_by(|a, b| a.updated.cmp(&b.updated).then_with(|| a.id.cmp(&b.id)));
        let mut by_org: BTreeMap<String, u64> = BTreeMap::new();
        for s in &kept {
            *by_org.entry(org_of(s)).or_default() += s.length;
        }
        let mut survivors = Vec::new();
        for s in kept {
            let org = org_of(s);
            let limit = self.orgs.get(&org).and_then(|r| r.max_bytes);
            let total = by_org.entry(org).or_default();
            if limit.is_some_and(|max| *total > max) {
                *total -= s.length;
                doomed.push((s.id.clone(), "org max_bytes"));
            } else {
                survivors.push(s);
            }
        }
        if let Some(max) = self.max_bytes {
            let mut total: u64 = survivors.iter().map(|s| s.length).sum();
            for s in survivors {
                if total <= max {
                    break;
                }
                total -= s.length;
                doomed.push((s.id.clone(), "max_bytes"));
            }
        }
        doomed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str, length: u64, updated: u64) -> StreamInfo {
        StreamInfo {
            id: id.into(),
            length,
            sealed: false,
            created: updated,
            updated,
        }
    }

    #[test]
    fn age_org_bytes_and_global_bytes() {
        let streams = [
            stream("a/c/old", 10, 100),
            stream("a/c/new", 10, 990),
            stream("b/c/1", 50, 900),
            stream("b/c/2", 50, 950),
            stream("b/c/3", 50, 980),
            stream("z/c/keep", 5, 10),
        ];
        let mut config = RetentionConfig {
            max_age_secs: Some(500),
            ..RetentionConfig::default()
        };
        config.orgs.insert(
            "b".into(),
            RetentionRule {
                max_age_secs: None,
                max_bytes: Some(120),
            },
        );
        config.orgs.insert(
            "z".into(),
            RetentionRule {
                max_age_secs: Some(10_000),
                max_bytes: None,
            },
        );
        let doomed = config.select(&streams, 1000);
        assert_eq!(
            doomed,
            [
                ("a/c/old".to_owned(), "max_age"),
                ("b/c/1".to_owned(), "org max_bytes")
            ]
        );
        config.max_bytes = Some(100);
        let doomed: Vec<String> = config
            .select(&streams, 1000)
            .into_iter()
            .map(|d| d.0)
            .collect();
        // after age and the org limit: z/keep (5), b/2 (50), b/3 (50), a/new (10) = 115 > 100
        assert_eq!(doomed, ["a/c/old", "b/c/1", "z/c/keep", "b/c/2"]);
        assert!(RetentionConfig::default().select(&streams, 1000).is_empty());
        assert!(
            RetentionConfig {
                interval_secs: Some(0),
                ..config
            }
            .validate()
            .is_err()
        );
    }
}
