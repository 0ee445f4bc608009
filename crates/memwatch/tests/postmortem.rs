//! The start-up post-mortem on fixture trees: cgroup v2 and v1 OOM-kill counts plus the
//! captures a previous run left (complete and cut short).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use memwatch::{cgroup_memory_at, postmortem_with};

fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

const META: &str = "memwatch_capture=1\ntrigger=share-90\ntrigger_bytes=241591910\n\
time_unix_ms=1700000000000\ndetection_latency_ns=31000\nallocated_bytes=253755392\n\
cgroup_usage_bytes=262144000\ncgroup_limit_bytes=268435456\nlimit_bytes=268435456\n\
limit_source=cgroup\npid=4242\nbinary=/usr/local/bin/engine-gateway\nbuild_id=d1a959f5\n\
heap_profile=heap.prof\ntimeline=timeline.bin\ntimeline_samples=0\n\
timeline_resolution_ns=1000000\ncapture_ns=2000000\ncomplete=1\n";

/// A capture directory as a killed run leaves it: an older and a newer complete capture, and
/// one cut short (its directory never got its final name).
fn captures(root: &Path) -> std::path::PathBuf {
    let dir = root.join("captures");
    let older = META
        .replace("share-90", "share-60")
        .replace("1700000000000", "1699999999000");
    tree(
        &dir,
        &[
            ("capture-1699999999000-0001/meta.txt", &older),
            ("capture-1699999999000-0001/heap.prof", "heap_v2/524288\n"),
            ("capture-1700000000000-0002/meta.txt", META),
            ("capture-1700000000000-0002/heap.prof", "heap_v2/524288\n"),
            (
                ".tmp-capture-1700000000100-0003/meta.txt",
                "memwatch_capture=1\ntrigger=grow",
            ),
            ("unrelated.txt", "not a capture"),
        ],
    );
    dir
}

#[test]
fn v2_oom_kills_and_the_newest_capture_make_the_summary() {
    let root = tempfile::tempdir().unwrap();
    tree(
        root.path(),
        &[
            ("proc/self/cgroup", "0::/kubepods/pod1/ctr\n"),
            (
                "proc/self/mountinfo",
                "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            ),
            (
                "sys/fs/cgroup/kubepods/pod1/ctr/memory.current",
                "52428800\n",
            ),
            ("sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "268435456\n"),
            (
                "sys/fs/cgroup/kubepods/pod1/ctr/memory.events",
                "low 0\nhigh 0\nmax 40\noom 2\noom_kill 2\n",
            ),
        ],
    );
    let cgroup = cgroup_memory_at(root.path()).unwrap();
    let dir = captures(root.path());

    let list = memwatch::captures(&dir).unwrap();
    let names: Vec<(&str, bool)> = list.iter().map(|c| (c.name.as_str(), c.complete)).collect();
    assert_eq!(
        names,
        [
            ("capture-1699999999000-0001", true),
            ("capture-1700000000000-0002", true),
            (".tmp-capture-1700000000100-0003", false),
        ]
    );

    let pm = postmortem_with(&dir, Some(&cgroup));
    assert!(pm.has_incident());
    assert_eq!(pm.oom_kills, Some(2));
    assert_eq!((pm.captures, pm.incomplete), (2, 1));
    let latest = pm.latest.as_ref().unwrap();
    assert_eq!(latest.trigger.as_deref(), Some("share-90"));
    assert_eq!(
        latest.heap_profile,
        Some(dir.join("capture-1700000000000-0002/heap.prof"))
    );
    assert_eq!(latest.timeline, None, "no timeline file in the fixture");
    let summary = pm.to_string();
    for part in [
        "has recorded 2 oom kills",
        "the newest of 2 captures is",
        "on trigger share-90 with 242.0 MiB allocated",
        "cgroup usage 250.0 MiB of a 256.0 MiB limit",
        "pid 4242, binary /usr/local/bin/engine-gateway, build id d1a959f5",
        "capture-1700000000000-0002/heap.prof needs symbolizing",
        "1 later capture(s) were cut short",
    ] {
        assert!(summary.contains(part), "{part:?} in {summary}");
    }
    assert!(!summary.contains('\n'), "one paragraph");

    let mut out = String::new();
    pm.write_prometheus(&mut out);
    assert!(out.contains("memwatch_postmortem_oom_kills 2\n"), "{out}");
    assert!(
        out.contains("memwatch_postmortem_last_capture_timestamp_seconds 1700000000\n"),
        "{out}"
    );
}

#[test]
fn v1_oom_control_count_and_no_capture() {
    let root = tempfile::tempdir().unwrap();
    let cg = "sys/fs/cgroup/memory/docker/abc";
    tree(
        root.path(),
        &[
            ("proc/self/cgroup", "4:memory:/docker/abc\n0::/\n"),
            (
                "proc/self/mountinfo",
                "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            ),
            (&format!("{cg}/memory.usage_in_bytes"), "1000\n"),
            (&format!("{cg}/memory.limit_in_bytes"), "268435456\n"),
            (
                &format!("{cg}/memory.oom_control"),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            ),
        ],
    );
    let cgroup = cgroup_memory_at(root.path()).unwrap();
    let pm = postmortem_with(&root.path().join("none"), Some(&cgroup));
    assert_eq!(pm.oom_kills, Some(1));
    assert!(pm.has_incident());
    let summary = pm.to_string();
    assert!(
        summary.contains("has recorded 1 oom kill; no capture in"),
        "{summary}"
    );

    let quiet = postmortem_with(&root.path().join("none"), None);
    assert!(!quiet.has_incident());
}
