//! jemalloc's raw heap profile (`prof.dump`, format `heap_v2`) parsed into a [`Profile`].
//!
//! The format (jemalloc 5, `prof_dump_*` in prof_data.c):
//!
//! ```text
//! heap_v2/524288                      <- 2^lg_prof_sample
//!   t*: 28: 3145728 [0: 0]            <- totals: live objects: bytes [accum objects: bytes]
//!   t1: 20: 2097152 [0: 0]            <- per thread (ignored)
//! @ 0x55d0c1a2b3c4 0x55d0c1a2b000 ... <- one stack, leaf first (return addresses)
//!   t*: 1: 67108864 [0: 0]            <- its sampled figures
//!   t3: 1: 67108864 [0: 0]
//!
//! MAPPED_LIBRARIES:
//! 55d0c1a00000-55d0c1b00000 r-xp 00012000 08:01 1234  /usr/bin/engine-gateway
//! ```
//!
//! Figures are of sampled allocations; they are unsampled here with jemalloc's (and jeprof's)
//! rule for heap_v2: with `r = (bytes / objects) / period`, both are multiplied by
//! `1 / (1 - e^-r)`, the inverse of the chance that an allocation of that mean size was sampled.

use std::collections::HashMap;

use super::{Location, Mapping, Profile, ProfileError, Sample};

/// jemalloc records at most 128 frames; anything longer is not a jemalloc profile.
const MAX_FRAMES: usize = 256;

impl Profile {
    /// Parses jemalloc's raw heap profile text: unsampled, not symbolized, no build ids.
    pub fn parse_raw(text: &[u8]) -> Result<Profile, ProfileError> {
        let mut lines = text.split(|&b| b == b'\n').enumerate().peekable();
        let bad = |line: usize, reason| ProfileError::Raw {
            line: line + 1,
            reason,
        };

        let (_, header) = lines.next().ok_or(bad(0, "empty file"))?;
        let period = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("heap_v2/"))
            .and_then(|p| p.trim().parse::<u64>().ok())
            .filter(|&p| p > 0)
            .ok_or(bad(0, "expected heap_v2/<sample period>"))?;

        let mut profile = Profile {
            sample_period: period,
            ..Profile::default()
        };
        let mut by_address: HashMap<u64, usize> = HashMap::new();
        let mut saw_maps = false;
        while let Some((n, line)) = lines.next() {
            let line = std::str::from_utf8(line).map_err(|_| bad(n, "not UTF-8 text"))?;
            if let Some(stack) = line.strip_prefix('@') {
                let mut locations = Vec::new();
                for word in stack.split_ascii_whitespace() {
                    let hex = word
                        .strip_prefix("0x")
                        .ok_or(bad(n, "stack address is not 0x-hex"))?;
                    let address =
                        u64::from_str_radix(hex, 16).map_err(|_| bad(n, "bad stack address"))?;
                    // A return address: step back into the call instruction.
                    let address = address.saturating_sub(1);
                    let next = profile.locations.len();
                    let index = *by_address.entry(address).or_insert(next);
                    if index == next {
                        profile.locations.push(Location {
                            address,
                            ..Location::default()
                        });
                    }
                    locations.push(index);
                }
                if locations.is_empty() || locations.len() > MAX_FRAMES {
                    return Err(bad(n, "stack with no or too many frames"));
                }
                let Some((m, counts)) = lines.next() else {
                    return Err(bad(n, "stack without counts (truncated file)"));
                };
                let (objects, bytes) =
                    parse_counts(counts).ok_or(bad(m, "expected '  t*: objects: bytes'"))?;
                if objects > 0 && bytes > 0 {
                    let (objects, bytes) = unsample(objects, bytes, period);
                    profile.samples.push(Sample {
                        locations,
                        objects,
                        bytes,
                    });
                }
            } else if line.starts_with("MAPPED_LIBRARIES:") {
                saw_maps = true;
                for (_, map_line) in lines.by_ref() {
                    if let Some(mapping) = parse_maps_line(map_line) {
                        profile.mappings.push(mapping);
                    }
                }
                break;
            } else if !(line.trim().is_empty() || line.starts_with("  t")) {
                return Err(bad(n, "unexpected line"));
            }
        }
        if !saw_maps {
            // jemalloc always ends the dump with it.
            let last = text.split(|&b| b == b'\n').count();
            return Err(bad(last, "no MAPPED_LIBRARIES section (truncated file)"));
        }
        profile.mappings.sort_by_key(|m| m.start);
        profile.assign_mappings();
        Ok(profile)
    }

    /// Sets each location's mapping from its address.
    pub(crate) fn assign_mappings(&mut self) {
        for location in &mut self.locations {
            let at = self
                .mappings
                .partition_point(|m| m.start <= location.address);
            location.mapping = at
                .checked_sub(1)
                .filter(|&i| location.address < self.mappings[i].limit);
        }
    }
}

/// `  t*: 3: 1536 [0: 0]` → (3, 1536).
fn parse_counts(line: &[u8]) -> Option<(u64, u64)> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let rest = line.strip_prefix("t*:")?;
    let (live, _accumulated) = rest.split_once('[').unwrap_or((rest, ""));
    let (objects, bytes) = live.split_once(':')?;
    Some((objects.trim().parse().ok()?, bytes.trim().parse().ok()?))
}

/// jeprof's heap_v2 unsampling (see the module doc).
fn unsample(objects: u64, bytes: u64, period: u64) -> (i64, i64) {
    let ratio = (bytes as f64 / objects as f64) / period as f64;
    let scale = 1.0 / (1.0 - (-ratio).exp());
    let scaled = |v: u64| {
        let v = (v as f64 * scale).round();
        if v.is_finite() && v < i64::MAX as f64 {
            v as i64
        } else {
            i64::MAX
        }
    };
    (scaled(objects), scaled(bytes))
}

/// An executable, file-backed line of `/proc/PID/maps`; others give `None`.
fn parse_maps_line(line: &[u8]) -> Option<Mapping> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path: Vec<&str> = fields.collect();
    let path = path.join(" ");
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, limit) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        limit: u64::from_str_radix(limit, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path,
        build_id: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const RAW: &str = "heap_v2/524288\n  t*: 2: 67109000 [0: 0]\n  t1: 2: 67109000 [0: 0]\n\
        @ 0x1011 0x1021 0x2001\n  t*: 1: 67108864 [0: 0]\n  t1: 1: 67108864 [0: 0]\n\
        @ 0x1011 0x1031\n  t*: 1: 136 [0: 0]\n@ 0x1041\n  t*: 0: 0 [0: 0]\n\n\
        MAPPED_LIBRARIES:\n00001000-00002000 r-xp 00000000 08:01 42 /opt/app bin\n\
        00002000-00003000 rw-p 00001000 08:01 42 /opt/app bin\n\
        00003000-00004000 r-xp 00000000 00:00 0 [vdso]\n";

    #[test]
    fn parses_stacks_unsamples_and_maps() {
        let p = Profile::parse_raw(RAW.as_bytes()).unwrap();
        assert_eq!(p.sample_period, 524288);
        assert_eq!(p.samples.len(), 2, "zero-count stacks are dropped");
        assert_eq!(p.mappings.len(), 1);
        assert_eq!(p.mappings[0].path, "/opt/app bin");
        // 64 MiB >> period: the scale is ~1.
        assert_eq!(p.samples[0].bytes, 67108864);
        // 136 bytes: sampled with probability ~136/524288, scaled up accordingly.
        let small = p.samples[1].bytes;
        assert!((524_000..525_000).contains(&small), "{small}");
        let addresses: Vec<u64> = p.locations.iter().map(|l| l.address).collect();
        assert_eq!(addresses, [0x1010, 0x1020, 0x2000, 0x1030, 0x1040]);
        assert_eq!(p.locations[0].mapping, Some(0));
        assert_eq!(p.locations[2].mapping, None);
        assert_eq!(p.samples[1].locations, [0, 3]);
    }

    #[test]
    fn damaged_files_are_errors_with_a_line() {
        let cases: [(&str, usize); 4] = [
            ("", 1),
            ("heap_v2/x\n", 1),
            ("heap_v2/524288\n@ 0x10 zz\n  t*: 1: 1 [0: 0]\n", 2),
            ("heap_v2/524288\n  t*: 1: 1 [0: 0]\n@ 0x10 0x20\n", 4),
        ];
        for (text, at) in cases {
            match Profile::parse_raw(text.as_bytes()) {
                Err(ProfileError::Raw { line, .. }) => assert_eq!(line, at, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let truncated = &RAW[..RAW.find("\n\nMAPPED").unwrap() + 1];
        let err = Profile::parse_raw(truncated.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
