//! Reading a profile: which functions hold memory (`top`), which grew between two profiles
//! (`diff`), and the stacks as names (for flame graphs).

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Location, Profile, Sample};

/// One function in [`top`]: memory allocated directly by it (flat) and by it or its callees
/// (cumulative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopRow {
    /// Function name, or `file+0xoffset` when not symbolized.
    pub function: String,
    /// `file:line` of its biggest allocation site, when DWARF was used.
    pub source: Option<String>,
    /// Estimated live bytes allocated in this function itself.
    pub flat_bytes: i64,
    /// Estimated live objects allocated in this function itself.
    pub flat_objects: i64,
    /// Estimated live bytes allocated in this function or anything it called.
    pub cum_bytes: i64,
}

/// One function in [`diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRow {
    /// As in [`TopRow::function`].
    pub function: String,
    /// Flat bytes in the base profile.
    pub base_bytes: i64,
    /// Flat bytes in the new profile.
    pub new_bytes: i64,
}

impl DiffRow {
    /// Growth from base to new (negative: shrank).
    pub fn delta(&self) -> i64 {
        self.new_bytes - self.base_bytes
    }
}

/// Functions by flat live bytes, largest first (then by cumulative bytes).
pub fn top(profile: &Profile) -> Vec<TopRow> {
    let mut rows: HashMap<String, TopRow> = HashMap::new();
    let mut biggest_site: HashMap<String, i64> = HashMap::new();
    for sample in &profile.samples {
        let names = stack_names(profile, sample);
        let mut seen = HashSet::new();
        for (depth, (name, source)) in names.into_iter().enumerate() {
            let first = seen.insert(name.clone());
            let row = rows.entry(name.clone()).or_insert_with(|| TopRow {
                function: name.clone(),
                source: None,
                flat_bytes: 0,
                flat_objects: 0,
                cum_bytes: 0,
            });
            if first {
                row.cum_bytes += sample.bytes;
            }
            if depth == 0 {
                row.flat_bytes += sample.bytes;
                row.flat_objects += sample.objects;
                let best = biggest_site.entry(name).or_insert(i64::MIN);
                if sample.bytes > *best {
                    *best = sample.bytes;
                    row.source = source;
                }
            }
        }
    }
    let mut rows: Vec<TopRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (b.flat_bytes, b.cum_bytes, &a.function).cmp(&(a.flat_bytes, a.cum_bytes, &b.function))
    });
    rows
}

/// Functions by growth of flat live bytes from `base` to `new`, largest growth first; the
/// ones that shrank come last.
pub fn diff(base: &Profile, new: &Profile) -> Vec<DiffRow> {
    let mut rows: HashMap<String, DiffRow> = HashMap::new();
    for (profile, is_new) in [(base, false), (new, true)] {
        for row in top(profile) {
            let entry = rows.entry(row.function.clone()).or_insert(DiffRow {
                function: row.function,
                base_bytes: 0,
                new_bytes: 0,
            });
            if is_new {
                entry.new_bytes += row.flat_bytes;
            } else {
                entry.base_bytes += row.flat_bytes;
            }
        }
    }
    let mut rows: Vec<DiffRow> = rows
        .into_values()
        .filter(|r| r.base_bytes != 0 || r.new_bytes != 0)
        .collect();
    rows.sort_by(|a, b| (b.delta(), &a.function).cmp(&(a.delta(), &b.function)));
    rows
}

/// A sample's frames, leaf first (inlined frames expanded), each with `file:line` if known.
pub(crate) fn stack_names(profile: &Profile, sample: &Sample) -> Vec<(String, Option<String>)> {
    let mut names = Vec::with_capacity(sample.locations.len());
    for &i in &sample.locations {
        let Some(location) = profile.locations.get(i) else {
            continue;
        };
        if location.frames.is_empty() {
            names.push((unsymbolized(profile, location), None));
        }
        for frame in &location.frames {
            let source = frame
                .file
                .as_ref()
                .map(|file| format!("{file}:{}", frame.line));
            names.push((frame.function.clone(), source));
        }
    }
    names
}

/// `file+0xoffset` (the file offset, stable across ASLR), or the bare address.
fn unsymbolized(profile: &Profile, location: &Location) -> String {
    match location.mapping.and_then(|m| profile.mappings.get(m)) {
        Some(m) => {
            let file = m.path.rsplit('/').next().unwrap_or(&m.path);
            let offset = location.address - m.start + m.file_offset;
            format!("{file}+{offset:#x}")
        }
        None => format!("{:#x}", location.address),
    }
}

/// A source path as a person reads it: std's `/rustc/<hash>/library/…` as `library/…`,
/// a registry crate's as `<crate>-<version>/…`, a file under `base` relative to it.
pub fn short_source(path: &str, base: Option<&std::path::Path>) -> String {
    if let Some(rest) = path.strip_prefix("/rustc/")
        && let Some((_, rest)) = rest.split_once('/')
    {
        return rest.replace("std/src/../../", "");
    }
    if let Some(rest) = path.strip_prefix("/rust/deps/") {
        return rest.to_owned();
    }
    if let Some((_, rest)) = path.split_once("/registry/src/")
        && let Some((_, rest)) = rest.split_once('/')
    {
        return rest.to_owned();
    }
    if let Some(base) = base.and_then(|b| b.to_str())
        && let Some(rest) = path.strip_prefix(base)
        && let Some(rest) = rest.strip_prefix('/')
    {
        return rest.to_owned();
    }
    path.to_owned()
}

/// Bytes for people: `64.0 MiB`, `512 B`, `-1.5 KiB` (`{:+}` adds `+` to growth).
pub fn human_bytes(bytes: i64) -> impl fmt::Display {
    struct Human(i64);
    impl fmt::Display for Human {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if f.sign_plus() && self.0 >= 0 {
                f.write_str("+")?;
            }
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut v = self.0 as f64;
            let mut unit = 0;
            while v.abs() >= 1024.0 && unit + 1 < units.len() {
                v /= 1024.0;
                unit += 1;
            }
            if unit == 0 {
                write!(f, "{} B", self.0)
            } else {
                write!(f, "{v:.1} {}", units[unit])
            }
        }
    }
    Human(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, Location, Profile, Sample};
    use super::*;

    fn profile(samples: &[(&[&str], i64)]) -> Profile {
        let mut p = Profile::default();
        let mut index = HashMap::new();
        for (stack, bytes) in samples {
            let locations = stack
                .iter()
                .map(|&name| {
                    *index.entry(name).or_insert_with(|| {
                        p.locations.push(Location {
                            address: 0,
                            mapping: None,
                            frames: vec![Frame {
                                function: name.to_string(),
                                file: Some("src/lib.rs".into()),
                                line: 7,
                            }],
                        });
                        p.locations.len() - 1
                    })
                })
                .collect();
            p.samples.push(Sample {
                locations,
                objects: 1,
                bytes: *bytes,
            });
        }
        p
    }

    #[test]
    fn top_orders_by_flat_and_counts_cumulative_once() {
        let p = profile(&[
            (&["a", "b", "main"], 100),
            (&["b", "main"], 10),
            (&["c"], 50),
        ]);
        let rows = top(&p);
        let got: Vec<(&str, i64, i64)> = rows
            .iter()
            .map(|r| (r.function.as_str(), r.flat_bytes, r.cum_bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 100, 100),
                ("c", 50, 50),
                ("b", 10, 110),
                ("main", 0, 110)
            ]
        );
        assert_eq!(rows[0].source.as_deref(), Some("src/lib.rs:7"));
    }

    #[test]
    fn diff_orders_by_growth() {
        let base = profile(&[(&["a"], 100), (&["b"], 100)]);
        let new = profile(&[(&["a"], 50), (&["b"], 300), (&["c"], 10)]);
        let got: Vec<(String, i64)> = diff(&base, &new)
            .into_iter()
            .map(|r| (r.function.clone(), r.delta()))
            .collect();
        assert_eq!(
            got,
            [("b".into(), 200), ("c".into(), 10), ("a".into(), -50)]
        );
        assert_eq!(human_bytes(64 << 20).to_string(), "64.0 MiB");
        assert_eq!(human_bytes(512).to_string(), "512 B");
        assert_eq!(format!("{:+}", human_bytes(1536)), "+1.5 KiB");
        let base = std::path::Path::new("/src/svc");
        for (path, short) in [
            (
                "/rustc/5980/library/core/src/fmt/mod.rs:10",
                "library/core/src/fmt/mod.rs:10",
            ),
            (
                "/rust/deps/gimli-0.32.3/src/read/line.rs:1",
                "gimli-0.32.3/src/read/line.rs:1",
            ),
            (
                "/root/.cargo/registry/src/index-1/tokio-1.4.0/src/a.rs:2",
                "tokio-1.4.0/src/a.rs:2",
            ),
            ("/src/svc/crates/a/src/lib.rs:3", "crates/a/src/lib.rs:3"),
            ("/elsewhere/lib.rs:4", "/elsewhere/lib.rs:4"),
        ] {
            assert_eq!(short_source(path, Some(base)), short, "{path}");
        }
    }
}
