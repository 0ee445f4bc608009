//! Every name the recorder gives to something on disk, in one place: capture directories and
//! the files inside them. Each file name exists as `&str` (paths, `meta.txt` fields) and as
//! `&CStr` (the allocation-free `*at` syscalls of a capture).

use std::ffi::CStr;

/// Prefix of a finished capture directory: `capture-<unix ms, 13 digits>-<seq, 4 digits>`.
pub(crate) const CAPTURE_PREFIX: &str = "capture-";
/// Prefix of a capture directory still being written (or cut short by a death).
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// A file name in both forms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileName {
    pub(crate) c: &'static CStr,
    pub(crate) name: &'static str,
}

/// The capture's metadata (`key=value` lines, see `meta`).
pub(crate) const META: FileName = FileName {
    c: c"meta.txt",
    name: "meta.txt",
};
/// jemalloc's raw heap profile (`prof.dump`).
pub(crate) const HEAP: FileName = FileName {
    c: c"heap.prof",
    name: "heap.prof",
};
/// The timeline (see `timeline` for the format).
pub(crate) const TIMELINE: FileName = FileName {
    c: c"timeline.bin",
    name: "timeline.bin",
};

/// The black box of the running process (see `blackbox`).
pub(crate) const BLACKBOX: &str = "blackbox.bin";
/// The previous run's black box, moved aside when a recorder starts.
pub(crate) const BLACKBOX_PREVIOUS: &str = "blackbox.prev.bin";

/// Whether a directory entry is a capture (finished or not), and its sort key (the name
/// without the temporary prefix: time, then sequence).
pub(crate) fn capture_key(name: &str) -> Option<&str> {
    name.strip_prefix(TMP_PREFIX)
        .unwrap_or(name)
        .starts_with(CAPTURE_PREFIX)
        .then(|| name.strip_prefix(TMP_PREFIX).unwrap_or(name))
}

/// Whether a capture directory name is one still being written.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_in_both_forms_and_keys_sort_by_time() {
        for f in [META, HEAP, TIMELINE] {
            assert_eq!(f.c.to_str().ok(), Some(f.name));
        }
        assert_eq!(
            capture_key(".tmp-capture-0000000000001-0001"),
            Some("capture-0000000000001-0001")
        );
        assert_eq!(capture_key("capture-1"), Some("capture-1"));
        assert_eq!(capture_key("lost+found"), None);
        assert!(is_temporary(".tmp-capture-1"));
    }
}
