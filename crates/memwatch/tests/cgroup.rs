//! cgroup discovery and parsing: v2 and v1 on fixture trees, and the real cgroup of this host.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use memwatch::{CgroupVersion, cgroup_memory_at};

const GIB: u64 = 1 << 30;

/// Writes `files` (path relative to `root`, content) into a fixture tree.
fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

const V2_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn v2_reads_usage_limit_peak_oom_kills_and_working_set() {
    let dir = tempfile::tempdir().unwrap();
    let cg = "sys/fs/cgroup/kubepods/pod1/ctr";
    tree(
        dir.path(),
        &[
            ("proc/self/cgroup", "0::/kubepods/pod1/ctr\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            (&format!("{cg}/memory.current"), "52428800\n"),
            (&format!("{cg}/memory.max"), "268435456\n"),
            (&format!("{cg}/memory.peak"), "104857600\n"),
            (
                &format!("{cg}/memory.events"),
                "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n",
            ),
            (
                &format!("{cg}/memory.stat"),
                "anon 40000000\nfile 12000000\ninactive_file 10000000\n",
            ),
        ],
    );
    let m = cgroup_memory_at(dir.path()).unwrap();
    assert_eq!(m.version, CgroupVersion::V2);
    assert_eq!(m.path, dir.path().join(cg));
    assert_eq!(m.usage_bytes, Some(52_428_800));
    assert_eq!(m.limit_bytes, Some(268_435_456));
    assert_eq!(m.peak_bytes, Some(104_857_600));
    assert_eq!(m.oom_kills, Some(1));
    assert_eq!(m.working_set_bytes(), Some(42_428_800));
}

#[test]
fn v2_max_is_unlimited_but_an_ancestor_limit_applies() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &[
            ("proc/self/cgroup", "0::/app/worker\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            ("sys/fs/cgroup/app/worker/memory.current", "1000\n"),
            ("sys/fs/cgroup/app/worker/memory.max", "max\n"),
        ],
    );
    let m = cgroup_memory_at(dir.path()).unwrap();
    assert_eq!(m.limit_bytes, None);
    assert_eq!(
        m.peak_bytes, None,
        "memory.peak is absent before kernel 5.19"
    );
    assert_eq!(m.oom_kills, None);

    fs::write(
        dir.path().join("sys/fs/cgroup/app/memory.max"),
        "1073741824\n",
    )
    .unwrap();
    assert_eq!(cgroup_memory_at(dir.path()).unwrap().limit_bytes, Some(GIB));
}

#[test]
fn v2_namespaced_container_falls_back_to_the_mount_point() {
    // With a cgroup namespace /proc/self/cgroup says "/" and the container's own cgroup is
    // mounted at /sys/fs/cgroup.
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNTINFO),
            ("sys/fs/cgroup/memory.current", "4096\n"),
            ("sys/fs/cgroup/memory.max", "536870912\n"),
        ],
    );
    let m = cgroup_memory_at(dir.path()).unwrap();
    assert_eq!(m.usage_bytes, Some(4096));
    assert_eq!(m.limit_bytes, Some(GIB / 2));
}

#[test]
fn v1_reads_figures_and_treats_page_rounded_i64_max_as_unlimited() {
    let dir = tempfile::tempdir().unwrap();
    let cg = "sys/fs/cgroup/memory/docker/abc";
    let files = |limit: &'static str| {
        vec![
            (
                "proc/self/cgroup".to_string(),
                "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            ),
            (
                "proc/self/mountinfo".to_string(),
                "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
            ),
            (format!("{cg}/memory.usage_in_bytes"), "3432448\n"),
            (format!("{cg}/memory.limit_in_bytes"), limit),
            (format!("{cg}/memory.max_usage_in_bytes"), "4268032\n"),
            (
                format!("{cg}/memory.oom_control"),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            ),
            (
                format!("{cg}/memory.stat"),
                "cache 100\ntotal_inactive_file 32448\n",
            ),
        ]
    };
    let write = |limit| {
        let owned = files(limit);
        let refs: Vec<(&str, &str)> = owned.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        tree(dir.path(), &refs);
    };
    write("9223372036854771712\n");
    let m = cgroup_memory_at(dir.path()).unwrap();
    assert_eq!(m.version, CgroupVersion::V1);
    assert_eq!(m.usage_bytes, Some(3_432_448));
    assert_eq!(m.limit_bytes, None);
    assert_eq!(m.peak_bytes, Some(4_268_032));
    assert_eq!(m.oom_kills, Some(3));
    assert_eq!(m.working_set_bytes(), Some(3_400_000));

    write("268435456\n");
    assert_eq!(
        cgroup_memory_at(dir.path()).unwrap().limit_bytes,
        Some(256 << 20)
    );
}

#[test]
fn missing_files_and_garbage_give_errors_or_none_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    assert!(cgroup_memory_at(dir.path()).is_err(), "no /proc at all");

    tree(
        dir.path(),
        &[("proc/self/cgroup", "garbage\n::\n\u{0}\u{1}:x\n")],
    );
    assert!(cgroup_memory_at(dir.path()).is_err(), "no usable line");

    tree(
        dir.path(),
        &[
            ("proc/self/cgroup", "0::/x\n"),
            (
                "proc/self/mountinfo",
                "nonsense without separator\n1 2 3 - \n\\777 - cgroup2\n",
            ),
        ],
    );
    assert!(cgroup_memory_at(dir.path()).is_err(), "no cgroup2 mount");

    tree(
        dir.path(),
        &[
            ("proc/self/mountinfo", V2_MOUNTINFO),
            ("sys/fs/cgroup/x/memory.current", "12\n"),
            ("sys/fs/cgroup/x/memory.max", "-5 or so\n"),
            ("sys/fs/cgroup/x/memory.peak", "\u{ff}\u{fe}"),
            ("sys/fs/cgroup/x/memory.events", "oom_kill many\n"),
        ],
    );
    let m = cgroup_memory_at(dir.path()).unwrap();
    assert_eq!(m.usage_bytes, Some(12));
    assert_eq!(
        (m.limit_bytes, m.peak_bytes, m.oom_kills),
        (None, None, None)
    );
}

#[test]
fn mount_points_with_escaped_spaces_are_found() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &[
            ("proc/self/cgroup", "0::/a\n"),
            (
                "proc/self/mountinfo",
                "30 22 0:26 / /odd\\040place rw - cgroup2 cgroup2 rw\n",
            ),
            ("odd place/a/memory.current", "77\n"),
        ],
    );
    assert_eq!(cgroup_memory_at(dir.path()).unwrap().usage_bytes, Some(77));
}

#[test]
fn this_host_cgroup_is_read_for_real() {
    // This machine runs cgroup v1; elsewhere the test still checks what it can.
    let Ok(m) = memwatch::cgroup_memory() else {
        assert!(!Path::new("/sys/fs/cgroup/memory/memory.usage_in_bytes").exists());
        return;
    };
    let usage = m.usage_bytes.unwrap();
    assert!(usage > 0);
    if let Some(limit) = m.limit_bytes {
        assert!(limit < 1 << 62);
        assert_eq!(
            memwatch::memory_limit(Some(limit + 1)),
            Some(limit),
            "config capped"
        );
        assert_eq!(memwatch::memory_limit(None), Some(limit));
    } else {
        assert_eq!(memwatch::memory_limit(Some(GIB)), Some(GIB));
        assert_eq!(memwatch::memory_limit(None), None);
    }
    if m.version == CgroupVersion::V1 {
        assert!(m.peak_bytes.unwrap() >= usage / 2);
        assert!(m.oom_kills.is_some(), "kernels since 4.13 report oom_kill");
    }
}
