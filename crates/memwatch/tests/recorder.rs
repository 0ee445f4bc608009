//! The flight recorder in a real process with the counting allocator: short spikes, capture
//! files, the disk budget, the soft limit.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use memwatch::{Recorder, RecorderConfig, Trigger};

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();

memwatch::malloc_conf!();

const MIB: u64 = 1024 * 1024;

/// One recorder per process: tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A config with only the rungs a test asks for.
fn config(dir: &std::path::Path, limit: u64, ladder: &[f64]) -> RecorderConfig {
    let mut config = RecorderConfig::new(dir);
    config.limit_bytes = Some(limit);
    config.ladder = ladder.to_vec();
    config.growth = None;
    config.soft_limit = None;
    config.timeline = Duration::from_secs(10);
    config.fine_timeline = Duration::from_secs(10);
    config
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Allocates `bytes` in 4 MiB blocks, touching every page, holds them for `hold`, frees them.
/// Blocks below jemalloc's `oversize_threshold` (8 MiB) go back to its arenas, whose freed
/// pages stay resident for reuse (dirty decay 10 s); larger ones would be unmapped at once.
fn spike(bytes: u64, hold: Duration) {
    let blocks: Vec<Vec<u8>> = (0..bytes / (4 * MIB))
        .map(|_| black_box(vec![0x5au8; 4 * MIB as usize]))
        .collect();
    std::thread::sleep(hold);
    drop(black_box(blocks));
}

#[test]
fn a_20ms_spike_is_captured_while_a_500ms_poller_in_the_same_run_misses_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Page faults on these VMs cost several µs each: 100 MiB of fresh pages takes ~150 ms to
    // touch. Touch them once before recording; the spike below reuses resident pages.
    spike(100 * MIB, Duration::ZERO);
    // Rung at 60 % of 160 MiB = 96 MiB; the spike is 100 MiB on a baseline of a few MiB.
    let mut config = config(dir.path(), 160 * MIB, &[0.6]);
    config.cooldown = Duration::ZERO;
    let recorder = Recorder::start(config).unwrap();

    // The poller every dashboard has: a sample of the same counter every 500 ms.
    let polls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (polls, stop) = (polls.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let seen = memwatch::allocated_bytes().unwrap();
                polls.lock().unwrap().push((Instant::now(), seen));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let poll_count = || polls.lock().unwrap().len();
    // A spike lands between two polls unless the machine stalls it for ~500 ms (the heap dump
    // blocks frees of sampled objects while it runs): then that round does not count.
    let mut clean_round = None;
    for round in 1..=3u64 {
        let seen = poll_count();
        wait_for("a poll", Duration::from_secs(2), || poll_count() > seen);
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        spike(100 * MIB, Duration::from_millis(20));
        let ended = Instant::now();
        wait_for("the capture", Duration::from_secs(5), || {
            recorder.status().captures_total >= round
        });
        let polled_during = polls
            .lock()
            .unwrap()
            .iter()
            .any(|(at, _)| (started..=ended).contains(at));
        println!(
            "round {round}: spike lasted {:?}, polled during it: {polled_during}",
            ended - started
        );
        if !polled_during {
            clean_round = Some(round);
            break;
        }
    }
    // Let the poller take one more sample after the spike, then stop it.
    let seen = poll_count();
    wait_for("a last poll", Duration::from_secs(2), || {
        poll_count() > seen
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    let polls: Vec<u64> = polls.lock().unwrap().iter().map(|(_, b)| *b).collect();
    let poller_max = polls.iter().copied().max().unwrap();

    let status = recorder.status();
    let last = status.last_capture.clone().unwrap();
    recorder.stop();
    assert!(clean_round.is_some(), "every spike was stalled into a poll");
    assert!(
        matches!(last.trigger, Trigger::Share { threshold_bytes, .. } if threshold_bytes == 96 * MIB),
        "{}",
        last.trigger
    );
    let captures = memwatch::captures(dir.path()).unwrap();
    let capture = captures.last().unwrap();
    assert!(capture.complete);
    assert!(capture.allocated_bytes.unwrap() >= 96 * MIB);
    let timeline = memwatch::read_timeline(capture.timeline.as_ref().unwrap()).unwrap();
    println!(
        "spike of 100 MiB held 20 ms: recorder captured it ({}, detection latency {:?}, \
         complete capture in {:?}, timeline peak {} MiB); the 500 ms poller saw at most {} MiB \
         in {} polls {:?}",
        last.trigger,
        last.detection_latency,
        last.complete_duration,
        timeline.peak_allocated_bytes() / MIB,
        poller_max / MIB,
        polls.len(),
        polls.iter().map(|b| b / MIB).collect::<Vec<_>>(),
    );
    assert!(last.detection_latency.is_some(), "seen at the allocator");
    assert!(
        timeline.peak_allocated_bytes() >= 90 * MIB,
        "the timeline shows the spike"
    );
    if clean_round == Some(1) {
        assert!(
            poller_max < 96 * MIB,
            "the poller missed the spike: {polls:?}"
        );
    }
}

#[test]
fn captures_are_complete_listed_and_kept_within_the_disk_budget() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1 << 40, &[0.9]);
    config.max_captures = 2;
    // A leftover from a process that died mid-capture is removed at start.
    std::fs::create_dir_all(dir.path().join(".tmp-capture-0000000000001-0001")).unwrap();
    let recorder = Recorder::start(config.clone()).unwrap();
    assert!(
        matches!(
            Recorder::start(config),
            Err(memwatch::RecorderError::AlreadyRunning)
        ),
        "one recorder per process"
    );
    let keep = black_box(vec![7u8; 8 * MIB as usize]);
    for n in 1..=3 {
        recorder.request_capture();
        wait_for("a manual capture", Duration::from_secs(5), || {
            recorder.status().captures_total >= n
        });
    }
    drop(keep);
    let status = recorder.status();
    recorder.stop();
    assert_eq!(
        status.capture_failures_total, 0,
        "{:?}",
        status.last_failure
    );
    assert!(status.samples_total > 0);
    let mut out = String::new();
    status.write_prometheus(&mut out);
    assert!(
        out.contains("memwatch_recorder_captures_total 3\n"),
        "{out}"
    );

    let captures = memwatch::captures(dir.path()).unwrap();
    assert_eq!(
        captures.len(),
        2,
        "budget of 2, oldest removed: {captures:?}"
    );
    let newest = captures.last().unwrap();
    assert_eq!(
        Some(&newest.path),
        status.last_capture.as_ref().map(|c| &c.path)
    );
    for c in &captures {
        assert!(c.complete);
        assert_eq!(c.trigger.as_deref(), Some("manual"));
        assert_eq!(c.pid, Some(std::process::id()));
        assert_eq!(
            c.binary.as_deref(),
            Some(std::env::current_exe().unwrap().as_path())
        );
        let heap = std::fs::read_to_string(c.heap_profile.as_ref().unwrap()).unwrap();
        assert!(
            heap.starts_with("heap_v2/"),
            "{}",
            &heap[..heap.len().min(100)]
        );
        assert!(heap.contains("MAPPED_LIBRARIES"));
        let timeline = memwatch::read_timeline(c.timeline.as_ref().unwrap()).unwrap();
        assert!(!timeline.samples.is_empty());
        assert!(timeline.peak_allocated_bytes() >= 8 * MIB);
        assert_eq!(timeline.resolution, Duration::from_millis(1));
    }

    let postmortem = memwatch::postmortem(dir.path());
    let summary = postmortem.to_string();
    assert_eq!(postmortem.captures, 2);
    assert!(
        summary.contains(&newest.path.display().to_string()),
        "{summary}"
    );
    assert!(summary.contains("on trigger manual"), "{summary}");
    println!("{summary}");
}

#[test]
fn soft_limit_turns_on_above_the_high_mark_and_off_below_the_low_mark() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 200 * MIB, &[]);
    config.soft_limit = Some(memwatch::SoftLimitConfig {
        high: 0.5,
        low: 0.3,
    });
    let recorder = Recorder::start(config).unwrap();
    assert!(!recorder.over_soft_limit());
    let block = black_box(vec![1u8; 110 * MIB as usize]);
    wait_for("the soft limit", Duration::from_secs(2), || {
        recorder.over_soft_limit()
    });
    // 30 % < 70 MiB < 50 %: still over (hysteresis).
    let mut block = block;
    block.truncate(70 * MIB as usize);
    block.shrink_to_fit();
    std::thread::sleep(Duration::from_millis(20));
    assert!(recorder.over_soft_limit());
    drop(black_box(block));
    wait_for("leaving the soft limit", Duration::from_secs(2), || {
        !recorder.over_soft_limit()
    });
    let status = recorder.status();
    recorder.stop();
    assert_eq!(status.soft_limit_entries_total, 1);
    assert!(status.purges_total >= 1);
    assert_eq!(status.captures_total, 0, "no rungs configured");
}

/// A gauge's value in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn two_scrapers_both_see_a_spike_between_their_scrapes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mw = memwatch::Memwatch::builder()
        .capture_dir(dir.path())
        .limit_bytes(1 << 40)
        .on_event(|_| {})
        .start()
        .unwrap();
    let cgroup_before = memwatch::cgroup_memory().ok().and_then(|c| c.usage_bytes);
    // Scraper A, then a spike, then scraper B, then A again: neither read resets anything.
    let first_a = mw.metrics_text();
    let allocated_before = gauge(&first_a, "memwatch_allocated_bytes").unwrap();
    // 16 MiB blocks are above jemalloc's oversize threshold: fresh pages, unmapped at free, so
    // the spike shows in the cgroup even if earlier tests left dirty pages for reuse.
    let blocks: Vec<Vec<u8>> = (0..4)
        .map(|_| black_box(vec![0x5au8; 16 * MIB as usize]))
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    drop(black_box(blocks));
    std::thread::sleep(Duration::from_millis(20));
    let b = mw.metrics_text();
    let second_a = mw.metrics_text();
    for (who, text) in [("B", &b), ("A", &second_a)] {
        let peak = gauge(text, "memwatch_allocated_peak_bytes").unwrap();
        assert!(
            peak >= allocated_before + 63 * MIB,
            "scraper {who}: allocated peak {peak} should hold the 64 MiB spike over {allocated_before}"
        );
        assert!(
            gauge(text, "memwatch_allocated_bytes").unwrap() < allocated_before + 16 * MIB,
            "the spike is gone from now"
        );
        if let Some(before) = cgroup_before {
            let peak = gauge(text, "memwatch_cgroup_usage_peak_bytes").unwrap();
            assert!(
                peak >= before + 48 * MIB,
                "scraper {who}: cgroup peak {peak} should hold the spike over {before}"
            );
        }
    }
}

#[test]
fn the_builder_reads_the_postmortem_starts_the_recorder_and_reports_each_capture() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&events);
    let start = |seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>| {
        memwatch::Memwatch::builder()
            .capture_dir(dir.path())
            .limit_bytes(1 << 40)
            .on_event(move |e| seen.lock().unwrap().push(e.to_string()))
            .start()
            .unwrap()
    };
    let mw = start(seen);
    assert!(mw.recorder().is_some(), "{mw:?}");
    assert!(!mw.over_soft_limit());
    assert!(mw.request_capture());
    wait_for("the capture event", Duration::from_secs(10), || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("memory capture written"))
    });
    let text = events.lock().unwrap().join("\n");
    assert!(text.contains("memory post-mortem"), "{text}");
    assert!(text.contains("flight recorder armed"), "{text}");
    assert!(
        text.contains("trigger manual") && text.contains("capture-"),
        "{text}"
    );
    let metrics = mw.metrics_text();
    for needle in [
        "memwatch_allocated_bytes",
        "memwatch_recorder_captures_total 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    drop(mw);

    // The next start sees the capture; a bad setting fails before anything starts.
    let mw = start(std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    assert_eq!(mw.postmortem().captures, 1);
    let previous = mw.postmortem().previous_run.clone().unwrap();
    assert!(
        previous.clean,
        "the first run stopped its recorder: {previous:?}"
    );
    assert_eq!(mw.postmortem().previous_run_captures, 1);
    assert!(!mw.postmortem().to_string().contains("killed"));
    drop(mw);
    let err = memwatch::Memwatch::builder()
        .configure(|c| c.ladder = vec![1.5])
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("ladder"), "{err}");
}
