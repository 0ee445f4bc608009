//! Flight recorder benchmarks, printed as Markdown tables: detection latency (crossing
//! allocation → recorder acting) and time to a complete capture, allocator overhead of
//! counting (ns per alloc+free pair), and the spike-catch matrix (recorder vs 10 s and 500 ms
//! pollers). Run through `bench/memwatch_recorder.sh` (release build).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memwatch::{Recorder, RecorderConfig};

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
memwatch::malloc_conf!();

const MIB: u64 = 1024 * 1024;

/// A poller's samples: when, and the allocated bytes it saw.
type PollLog = Arc<Mutex<Vec<(Instant, u64)>>>;
const LIMIT: u64 = 1 << 30;

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("memwatch-bench-{}", std::process::id()));
    spike(100 * MIB, Duration::ZERO); // fault the pages in once
    println!("## memwatch flight recorder ({trials} trials per row)\n");
    latency(&dir, trials.max(50));
    overhead(&dir);
    matrix(&dir, trials);
    let _ = std::fs::remove_dir_all(&dir);
}

fn config(dir: &std::path::Path, rung: f64) -> RecorderConfig {
    let mut config = RecorderConfig::new(dir);
    config.limit_bytes = Some(LIMIT);
    config.ladder = vec![rung];
    config.growth = None;
    config.soft_limit = None;
    config.cooldown = Duration::ZERO;
    config.max_captures = 3;
    config
}

/// Allocates `bytes` in 4 MiB blocks (below jemalloc's oversize threshold, so freed pages stay
/// resident and are reused), holds them, frees them.
fn spike(bytes: u64, hold: Duration) {
    let blocks: Vec<Vec<u8>> = (0..bytes / (4 * MIB))
        .map(|_| black_box(vec![0x5au8; 4 * MIB as usize]))
        .collect();
    std::thread::sleep(hold);
    drop(black_box(blocks));
}

fn wait_captures(recorder: &Recorder, n: u64) -> bool {
    let started = Instant::now();
    while recorder.status().captures_total < n {
        if started.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

fn latency(dir: &std::path::Path, trials: usize) {
    let recorder = Recorder::start(config(dir, 0.08)).expect("recorder");
    let (mut detect, mut complete, mut heap) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=trials as u64 {
        let blocks: Vec<Vec<u8>> = (0..25)
            .map(|_| black_box(vec![1u8; 4 * MIB as usize]))
            .collect();
        let ok = wait_captures(&recorder, n);
        drop(blocks);
        if !ok {
            println!("trial {n}: no capture");
            continue;
        }
        if let Some(last) = recorder.status().last_capture {
            detect.extend(last.detection_latency);
            heap.push(last.capture_duration);
            complete.push(last.complete_duration);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    recorder.stop();
    println!(
        "### detection and capture ({} captures of a ~100 MiB heap, 1 ms timeline of 120 s)\n",
        complete.len()
    );
    println!("| measure | p50 | p99 | max |\n|---|---|---|---|");
    for (name, mut v) in [
        ("crossing allocation → recorder acting", detect),
        ("trigger → heap dump + timeline fsync'd", heap),
        (
            "trigger → complete capture (meta, rename, dir fsync)",
            complete,
        ),
    ] {
        v.sort();
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "| {name} | {:?} | {:?} | {:?} |",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    println!();
}

fn overhead(dir: &std::path::Path) {
    const PAIRS: u32 = 10_000_000;
    // Armed but never crossed, as in production.
    let recorder = Recorder::start(config(dir, 0.9)).expect("recorder");
    println!(
        "### allocator overhead (ns per alloc+free pair, {PAIRS} pairs, best of 5 interleaved runs)\n"
    );
    println!(
        "| size | jemalloc | memwatch::Allocator + armed recorder | overhead |\n|---|---|---|---|"
    );
    for size in [16usize, 256, 4096, 64 * 1024] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        let (mut plain, mut counting) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            plain = plain.min(per_pair(&tikv_jemallocator::Jemalloc, layout, PAIRS));
            counting = counting.min(per_pair(&GLOBAL, layout, PAIRS));
        }
        println!(
            "| {size} B | {plain:.2} | {counting:.2} | {:+.2} |",
            counting - plain
        );
    }
    println!();
    let cpu = |r: &Recorder| recorder_cpu_ticks().map(|t| (t, r.status().samples_total));
    let before = cpu(&recorder);
    std::thread::sleep(Duration::from_secs(5));
    if let (Some((t0, s0)), Some((t1, s1))) = (before, cpu(&recorder)) {
        // Clock ticks are 10 ms (USER_HZ 100).
        println!(
            "Recorder thread while idle: {:.1} % of one core over 5 s ({} samples/s).\n",
            (t1 - t0) as f64 * 10.0 / 5000.0 * 100.0,
            (s1 - s0) / 5
        );
    }
    recorder.stop();
}

/// utime + stime (clock ticks) of the `memwatch-recorder` thread, from /proc.
fn recorder_cpu_ticks() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        if comm.ends_with("memwatch-record") {
            let fields: Vec<&str> = rest.split(' ').collect();
            // After "pid (comm) ": state is field 0, utime 11, stime 12.
            return Some(
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
            );
        }
    }
    None
}

fn per_pair(allocator: &dyn GlobalAlloc, layout: Layout, pairs: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..pairs {
        // SAFETY: non-zero layout; the pointer is freed with the same layout.
        unsafe {
            let ptr = black_box(allocator.alloc(layout));
            if !ptr.is_null() {
                allocator.dealloc(ptr, layout);
            }
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(pairs)
}

/// Spikes of 100 MiB at random moments; a spike is caught by a poller if one of its polls
/// fell inside it and saw the threshold, by the recorder if a capture followed it.
fn matrix(dir: &std::path::Path, trials: usize) {
    let threshold = (LIMIT as f64 * 0.08) as u64;
    let recorder = Recorder::start(config(dir, 0.08)).expect("recorder");
    let polls: Vec<PollLog> = (0..2).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Instant::now().elapsed().as_nanos() as u64 | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let pollers: Vec<_> = [Duration::from_secs(10), Duration::from_millis(500)]
        .into_iter()
        .zip(polls.iter().cloned())
        .map(|(period, log)| {
            let stop = stop.clone();
            let phase = Duration::from_millis(next() % period.as_millis() as u64);
            std::thread::spawn(move || {
                std::thread::sleep(phase);
                while !stop.load(Ordering::Relaxed) {
                    let seen = memwatch::allocated_bytes().unwrap_or(0);
                    log.lock().map(|mut l| l.push((Instant::now(), seen))).ok();
                    let until = Instant::now() + period;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    let holds = [5u64, 50, 500];
    let mut order: Vec<u64> = holds
        .iter()
        .flat_map(|&h| std::iter::repeat_n(h, trials))
        .collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let mut caught = std::collections::HashMap::<u64, [usize; 3]>::new();
    let mut captures = 0;
    for hold in order {
        std::thread::sleep(Duration::from_millis(200 + next() % 1000));
        let start = Instant::now();
        spike(100 * MIB, Duration::from_millis(hold));
        let end = Instant::now();
        let by_recorder = wait_captures(&recorder, captures + 1);
        captures = recorder.status().captures_total;
        let row = caught.entry(hold).or_default();
        row[0] += usize::from(by_recorder);
        for (i, log) in polls.iter().enumerate() {
            let hit = log
                .lock()
                .map(|l| {
                    l.iter()
                        .any(|(at, b)| (start..=end).contains(at) && *b >= threshold)
                })
                .unwrap_or(false);
            row[i + 1] += usize::from(hit);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        let _ = p.join();
    }
    recorder.stop();
    println!(
        "### spike-catch matrix (100 MiB spikes, rung at {} MiB, {trials} trials each, random phase)\n",
        threshold / MIB
    );
    println!("| spike held | recorder | 10 s poller | 500 ms poller |\n|---|---|---|---|");
    for hold in holds {
        let row = caught.get(&hold).copied().unwrap_or_default();
        println!(
            "| {hold} ms | {}/{trials} | {}/{trials} | {}/{trials} |",
            row[0], row[1], row[2]
        );
    }
    println!();
}
