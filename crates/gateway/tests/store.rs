//! The embedded store against real files and real crashes: the shared suite, reopening, torn
//! tails, checkpoint replay, the directory lock, and `kill -9` of a child process mid-write.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine_gateway::store::embedded::{EmbeddedConfig, EmbeddedStore, WriteTrials};
use engine_gateway::store::testsuite::{read_to_end, run_all};
use engine_gateway::store::{ErrorKind, Store};
use engine_gateway::stream_id::StreamId;

/// Env var that turns `crash_child` into a child process writing to the named directory.
const CHILD_DIR: &str = "ENGINE_GATEWAY_STORE_CHILD_DIR";
/// Env var choosing the child's work: `crash` (append until killed) or `replay` (append, then
/// announce DONE and wait to be killed).
const CHILD_MODE: &str = "ENGINE_GATEWAY_STORE_CHILD_MODE";

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 256 << 10,
        ..EmbeddedConfig::new(dir)
    }
}

async fn open(config: EmbeddedConfig) -> Result<EmbeddedStore, engine_gateway::store::StoreError> {
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
}

fn sid(name: &str) -> StreamId {
    StreamId::new("org", "cluster", name).unwrap()
}

/// The deterministic byte at offset `o` of stream number `s` in the crash tests.
fn content(s: usize, o: u64) -> u8 {
    (s as u64 * 131 + o * 7 + o / 253) as u8
}

/// Stream `s`'s `len` bytes at `offset`, in a buffer starting on a page if `aligned`.
fn content_bytes(s: usize, offset: u64, len: usize, aligned: bool) -> Bytes {
    let mut vec = vec![0u8; len + 4096];
    let from = if aligned {
        vec.as_ptr().align_offset(4096)
    } else {
        0
    };
    for (i, b) in vec[from..from + len].iter_mut().enumerate() {
        *b = content(s, offset + i as u64);
    }
    Bytes::from(vec).slice(from..from + len)
}

fn check_content(s: usize, data: &[u8]) {
    let bad = (0..data.len()).find(|&o| data[o] != content(s, o as u64));
    assert_eq!(
        bad, None,
        "stream {s}: first byte that differs from what was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_passes_on_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await.unwrap();
    store.ready().await.unwrap();
    run_all(&store).await;
    run_all(&store).await;
    let mut metrics = String::new();
    store.write_metrics(&mut metrics);
    assert!(
        metrics.contains("# TYPE engine_gateway_store_fsync_seconds histogram"),
        "{metrics}"
    );
    store.close().await.unwrap();
    store.close().await.unwrap();
    let err = store
        .append(&sid("late"), 0, Bytes::new(), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "append after close: {err}"
    );
    assert!(store.ready().await.is_err(), "not ready after close");
    let segments = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert!(
        segments > 1,
        "the suite writes more than one 256 KiB segment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await.unwrap();
    let big: Vec<u8> = (0..300_000u64).map(|o| content(1, o)).collect();
    for piece in big.chunks(70_000) {
        let at = store.head(&sid("big")).await.map_or(0, |i| i.length);
        store
            .append(&sid("big"), at, Bytes::copy_from_slice(piece), false)
            .await
            .unwrap();
    }
    store
        .append(&sid("sealed"), 0, Bytes::from_static(b"done"), true)
        .await
        .unwrap();
    store
        .append(&sid("gone"), 0, Bytes::from_static(b"x"), false)
        .await
        .unwrap();
    store.delete(&sid("gone")).await.unwrap();
    store
        .append(&sid("again"), 0, Bytes::from_static(b"old"), false)
        .await
        .unwrap();
    store.delete(&sid("again")).await.unwrap();
    store
        .append(&sid("again"), 0, Bytes::from_static(b"new!"), false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(config(dir.path())).await.unwrap();
    assert_eq!(store.recovery().truncated_bytes, 0);
    assert_eq!(read_to_end(&store, &sid("big"), "big").await, big);
    let sealed = store.head(&sid("sealed")).await.unwrap();
    assert_eq!((sealed.length, sealed.sealed), (4, true));
    assert_eq!(
        store.head(&sid("gone")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(read_to_end(&store, &sid("again"), "again").await, b"new!");
    // a stream created after reopening gets a fresh key and sees no old bytes
    store
        .append(&sid("fresh"), 0, Bytes::from_static(b"f"), false)
        .await
        .unwrap();
    assert_eq!(read_to_end(&store, &sid("fresh"), "fresh").await, b"f");
    let ids: Vec<String> = store
        .list("org/cluster/", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        ids,
        [
            "org/cluster/again",
            "org/cluster/big",
            "org/cluster/fresh",
            "org/cluster/sealed"
        ]
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_log_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await.unwrap();
    store
        .append(&sid("a"), 0, Bytes::from_static(b"intact"), false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let last = last_segment(dir.path());
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&[0xAB; 100]).unwrap();
    drop(file);

    let store = open(config(dir.path())).await.unwrap();
    assert_eq!(store.recovery().truncated_bytes, 100, "the garbage is cut");
    assert_eq!(read_to_end(&store, &sid("a"), "a").await, b"intact");
    store
        .append(&sid("a"), 6, Bytes::from_static(b"+more"), false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = open(config(dir.path())).await.unwrap();
    assert_eq!(store.recovery().truncated_bytes, 0);
    assert_eq!(read_to_end(&store, &sid("a"), "a").await, b"intact+more");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(config(dir.path())).await.unwrap();
    let err = open(config(dir.path())).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    first.close().await.unwrap();
    drop(first);
    let second = open(config(dir.path())).await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_kill_starts_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_child(dir.path(), "replay");
    let (acks, _child) = read_acks(child, |line| line == "DONE");
    let store = open(config(dir.path())).await.unwrap();
    let recovery = store.recovery();
    // the child checkpoints every 10 batches: only the batches since the last one are replayed
    assert!(
        (1..=30).contains(&recovery.records),
        "replayed {recovery:?}"
    );
    verify(&store, &acks).await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_record_after_kill_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_child(dir.path(), "replay");
    let (mut acks, _child) = read_acks(child, |line| line == "DONE");
    let last = last_segment(dir.path());
    // 7 bytes off the log's end: before the zeros a direct write pads its last block with
    let len = std::fs::metadata(&last).unwrap().len() - zero_tail(&last);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let store = open(config(dir.path())).await.unwrap();
    assert!(
        store.recovery().truncated_bytes > 0,
        "{:?}",
        store.recovery()
    );
    // the last append was cut in half: its stream ends where it began, the others are intact
    let (s, _) = acks.pop().unwrap();
    let info = store.head(&sid(&format!("s{s}"))).await.unwrap();
    let data = read_to_end(&store, &sid(&format!("s{s}")), "torn").await;
    check_content(s, &data);
    verify(&store, &acks).await;
    let next: Vec<u8> = (info.length..info.length + 10)
        .map(|o| content(s, o))
        .collect();
    store
        .append(
            &sid(&format!("s{s}")),
            info.length,
            Bytes::from(next),
            false,
        )
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// Runs the crash child of `mode` in `dir` once per entry of `kills`, killing it after that many
/// acknowledgement lines, and checks after each kill that the reopened store holds every byte
/// acknowledged so far.
async fn kill_and_verify(dir: &Path, mode: &str, kills: &[usize]) {
    let mut all_acks = Vec::new();
    for &kill_after in kills {
        let child = spawn_child(dir, mode);
        let mut seen = 0;
        let (acks, _child) = read_acks(child, |_| {
            seen += 1;
            seen >= kill_after
        });
        all_acks.extend(acks);
        let store = open(config(dir)).await.unwrap();
        verify(&store, &all_acks).await;
        store.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_bytes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_and_verify(dir.path(), "crash", &[3, 40, 150, 17]).await;
    // the log the kills tore and recovery reopened holds pad records (magic, type 5)
    let pads: usize = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|log| log.windows(8).filter(|w| w == b"EWGS\x05\0\0\0").count())
        .sum();
    assert!(
        pads > 0,
        "no pad record in the log: the aligned path went untested"
    );
}

/// Trials of the other way of writing the log every few batches: a way switched at most every
/// 128 KiB written, both ways kept at times (the test disk decides which is faster).
const SWITCHING: WriteTrials = WriteTrials {
    every: 192 << 10,
    trial: 128 << 10,
};

/// As `acknowledged_bytes_survive_kill_9`, with the writer switching between direct and
/// buffered writes every few batches: nothing acknowledged is lost across a switch, whichever
/// way the write a kill tore was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_bytes_survive_kill_9_while_the_write_way_switches() {
    let dir = tempfile::tempdir().unwrap();
    kill_and_verify(dir.path(), "crash-switching", &[5, 60, 200, 23]).await;
    let check = engine_gateway::store::embedded::check(&config(dir.path())).unwrap();
    assert!(check.damage.is_empty(), "{}", check.damage);
}

/// The writer measures both ways of writing the log and switches between them between
/// batches; many streams of small and page-aligned appends across segment rolls read back
/// intact after a reopen, and the log checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_read_back_across_switches_of_the_write_way() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || EmbeddedConfig {
        write_trials: Some(SWITCHING),
        ..config(dir.path())
    };
    let store = Arc::new(open(cfg()).await.unwrap());
    let mut tasks = Vec::new();
    for s in 0..4usize {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let id = sid(&format!("w{s}"));
            let mut offset = 0u64;
            for round in 0..60u64 {
                let aligned = round % 2 == 0;
                let len = 1 + (round * 7919 + s as u64 * 104_729) % 40_000;
                let len = if aligned { len + 65_535 } else { len };
                let data = content_bytes(s, offset, len as usize, aligned);
                offset = store.append(&id, offset, data, false).await.unwrap().offset;
            }
            offset
        }));
    }
    let mut lengths = Vec::new();
    for task in tasks {
        lengths.push(task.await.unwrap());
    }
    let trials = counter(&store, "engine_gateway_store_write_trials_total");
    assert!(trials >= 10, "only {trials} trials of the other way");
    store.close().await.unwrap();
    drop(store);
    let store = open(cfg()).await.unwrap();
    for (s, len) in lengths.into_iter().enumerate() {
        let data = read_to_end(&store, &sid(&format!("w{s}")), "w").await;
        assert_eq!(data.len() as u64, len, "stream w{s}");
        check_content(s, &data);
    }
    store.close().await.unwrap();
    drop(store);
    let check = engine_gateway::store::embedded::check(&cfg()).unwrap();
    assert!(check.damage.is_empty(), "{}", check.damage);
}

/// Not a test of its own: the body of the child process the crash tests run (it does nothing
/// unless started by them with [`CHILD_DIR`] set).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mode = std::env::var(CHILD_MODE).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(child_main(PathBuf::from(dir), mode));
}

async fn child_main(dir: PathBuf, mode: String) {
    let config = EmbeddedConfig {
        checkpoint_batches: 10,
        checkpoint_interval: Duration::from_secs(3600),
        // "crash-switching": the writer tries the other way of writing every few batches
        write_trials: (mode == "crash-switching").then_some(SWITCHING),
        ..config(&dir)
    };
    if mode == "prepared" {
        return prepared_child(dir).await;
    }
    let store = Arc::new(open(config).await.unwrap());
    let replay = mode == "replay";
    let streams = if replay { 3 } else { 4 };
    let mut tasks = Vec::new();
    for s in 0..streams {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = sid(&format!("s{s}"));
            let mut offset = store.head(&id).await.map_or(0, |i| i.length);
            let rounds = if replay { 31 } else { u64::MAX };
            for round in 0..rounds {
                // every other append 64 KiB or more in a page-aligned buffer, as the gateway
                // gathers chunks: a direct write takes those from where they are, placed on a
                // block by a pad record
                let aligned = round % 2 == 0;
                let len = 1 + (round * 7919 + s as u64 * 104_729) % 65_536;
                let len = if aligned { len + 65_535 } else { len };
                let data = content_bytes(s, offset, len as usize, aligned);
                offset = store.append(&id, offset, data, false).await.unwrap().offset;
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {s} {offset}").unwrap();
                    out.flush().unwrap();
                }
                if replay {
                    // one append per batch, in a known order, for the replay tests
                    tokio::task::yield_now().await;
                }
            }
        }));
        if replay {
            tasks.pop().unwrap().await.unwrap();
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
    drop(out);
    // wait to be killed, without closing the store
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// The child of `zeros_written_ahead_of_the_log_survive_kill_9`: one stream of small appends
/// into a segment large enough for the writer to write zeros ahead of the log's end; announces
/// DONE once it has (its metrics say so), and waits to be killed.
async fn prepared_child(dir: PathBuf) {
    let store = open(prepared_config(&dir)).await.unwrap();
    let id = sid("s0");
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut round = 0u64;
    loop {
        // small appends: below the rate above which the writer writes no zeros ahead
        let len = 1 + (round * 7919) % 2_048;
        let data: Vec<u8> = (offset..offset + len).map(|o| content(0, o)).collect();
        offset = store
            .append(&id, offset, Bytes::from(data), false)
            .await
            .unwrap()
            .offset;
        println!("ACK 0 {offset}");
        round += 1;
        let mut metrics = String::new();
        store.write_metrics(&mut metrics);
        let prepared = metrics
            .lines()
            .find_map(|l| l.strip_prefix("engine_gateway_store_prepared_bytes_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if round >= 50 && prepared >= 1 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no zeros written ahead: {metrics}"
        );
    }
    println!("DONE");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Bytes of zeros ending `path`.
fn zero_tail(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().rev().take_while(|&&b| b == 0).count() as u64
}

/// The store of `prepared_child`: a segment large enough for zeros ahead of the log's end.
fn prepared_config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 64 << 20,
        ..EmbeddedConfig::new(dir)
    }
}

/// Runs `prepared_child` in `dir` until it has written zeros ahead of the log, kills it (-9);
/// returns its acknowledgements, the last segment, and the zero bytes ending it.
fn killed_with_zeros_ahead(dir: &Path) -> (Vec<(usize, u64)>, PathBuf, u64) {
    let child = spawn_child(dir, "prepared");
    let (acks, _child) = read_acks(child, |line| line == "DONE");
    let last = last_segment(dir);
    let zeros = zero_tail(&last);
    assert!(zeros >= 256 << 10, "{zeros} zero bytes end the log");
    (acks, last, zeros)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_written_ahead_of_the_log_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (acks, last, zeros) = killed_with_zeros_ahead(dir.path());
    let config = || prepared_config(dir.path());
    // not damage, not a torn write: zeros ahead of the end
    let checked = engine_gateway::store::embedded::check(&config()).unwrap();
    assert!(checked.damage.is_empty(), "{}", checked.damage);
    assert_eq!(checked.torn_tail_bytes, 0);
    assert_eq!(checked.prepared_bytes, zeros);
    // a write torn over them: cut as one, the zeros after it ignored
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5A; 3000], len - zeros).unwrap();
    drop(file);
    let checked = engine_gateway::store::embedded::check(&config()).unwrap();
    assert!(checked.damage.is_empty(), "{}", checked.damage);
    assert_eq!(checked.torn_tail_bytes, 3000);
    let store = open(config()).await.unwrap();
    assert_eq!(store.recovery().truncated_bytes, 3000);
    verify(&store, &acks).await;
    let length = store.head(&sid("s0")).await.unwrap().length;
    let next: Vec<u8> = (length..length + 100).map(|o| content(0, o)).collect();
    store
        .append(&sid("s0"), length, Bytes::from(next), false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    // closed cleanly, the file ends with the log
    assert!(
        zero_tail(&last) < 64,
        "{} zero bytes left",
        zero_tail(&last)
    );
    let store = open(config()).await.unwrap();
    assert_eq!(store.recovery().truncated_bytes, 0);
    let data = read_to_end(&store, &sid("s0"), "after reopen").await;
    assert_eq!(data.len() as u64, length + 100);
    check_content(0, &data);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_of_a_segment_ending_in_zeros_ahead_quarantines_only_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (acks, last, zeros) = killed_with_zeros_ahead(dir.path());
    let len = std::fs::metadata(&last).unwrap().len();
    // a flipped byte in the middle of the log
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last)
        .unwrap();
    let at = (len - zeros) / 2;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0xFF], at).unwrap();
    drop(file);
    let config = prepared_config(dir.path());
    let repaired = engine_gateway::store::embedded::repair(&config).unwrap();
    assert!(!repaired.check.damage.is_empty());
    assert_eq!(repaired.check.prepared_bytes, zeros);
    // the damaged record and the stream's records after it, not the zeros
    assert!(
        repaired.quarantined_bytes < len - zeros,
        "quarantined {} bytes of a {}-byte log",
        repaired.quarantined_bytes,
        len - zeros
    );
    let manifest = std::fs::read_to_string(repaired.quarantine.unwrap().join("manifest.txt"));
    let unreadable = manifest
        .unwrap()
        .lines()
        .filter(|l| l.ends_with("unreadable bytes"))
        .count();
    assert_eq!(unreadable, 1, "one unreadable region");
    let store = open(config).await.unwrap();
    let data = read_to_end(&store, &sid("s0"), "after repair").await;
    check_content(0, &data);
    assert!((data.len() as u64) < acks.last().unwrap().1);
    store.close().await.unwrap();
}

fn spawn_child(dir: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads `ACK stream offset` lines until `stop` says so, then SIGKILLs the child. Returns the
/// acknowledgements in order.
fn read_acks(mut child: Child, mut stop: impl FnMut(&str) -> bool) -> (Vec<(usize, u64)>, Child) {
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acks = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (s, o) = rest.split_once(' ').unwrap();
            acks.push((s.parse().unwrap(), o.parse().unwrap()));
        } else if line != "DONE" {
            continue;
        }
        if stop(&line) {
            break;
        }
        assert!(Instant::now() < deadline, "child too slow");
    }
    assert!(!acks.is_empty(), "the child acknowledged nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    (acks, child)
}

/// Every acknowledged offset is within the recovered stream, whose bytes are the ones written.
async fn verify(store: &EmbeddedStore, acks: &[(usize, u64)]) {
    let mut max = std::collections::BTreeMap::new();
    for &(s, offset) in acks {
        let m = max.entry(s).or_insert(0);
        *m = offset.max(*m);
    }
    for (s, acked) in max {
        let data = read_to_end(store, &sid(&format!("s{s}")), "verify").await;
        assert!(
            data.len() as u64 >= acked,
            "stream {s}: acknowledged {acked}, recovered {}",
            data.len()
        );
        check_content(s, &data);
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

/// Throughput of 64 KiB appends from 1 and 64 tasks; runs only with
/// `ENGINE_GATEWAY_STORE_BENCH=1` (slow, and its figures mean something only on a quiet machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    if std::env::var_os("ENGINE_GATEWAY_STORE_BENCH").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(EmbeddedConfig::new(dir.path())).await.unwrap());
    let chunk = Bytes::from(vec![7u8; 64 << 10]);
    for tasks in [1usize, 64] {
        let fsyncs_before = fsyncs(&store);
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (store, chunk) = (store.clone(), chunk.clone());
            handles.push(tokio::spawn(async move {
                let id = sid(&format!("bench-{tasks}-{t}"));
                let mut offset = 0;
                while started.elapsed() < Duration::from_secs(3) {
                    offset = store
                        .append(&id, offset, chunk.clone(), false)
                        .await
                        .unwrap()
                        .offset;
                }
                offset
            }));
        }
        let mut bytes = 0;
        for handle in handles {
            bytes += handle.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let syncs = fsyncs(&store) - fsyncs_before;
        assert!(bytes > 0 && syncs > 0);
        println!(
            "{tasks} task(s): {:.1} MiB/s, {:.0} fsyncs/s, {:.1} appends per fsync",
            bytes as f64 / secs / (1 << 20) as f64,
            syncs as f64 / secs,
            (bytes / (64 << 10)) as f64 / syncs as f64
        );
    }
    store.close().await.unwrap();
}

fn fsyncs(store: &EmbeddedStore) -> u64 {
    counter(store, "engine_gateway_store_fsyncs_total")
}

fn counter(store: &EmbeddedStore, name: &str) -> u64 {
    let mut out = String::new();
    store.write_metrics(&mut out);
    let line = out
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no {name} in\n{out}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// One stream of appends, each followed by a wait (as a connection waits for its next
/// request), on a runtime of one thread like the gateway's connection threads: zeros are
/// written ahead of the log's end after an append is answered, by a task on that thread, and
/// the appends still commit inline (but for a few after a write slower than the inline limit).
/// Every byte reads back after a reopen.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_stream_gets_zeros_ahead_and_keeps_committing_inline() {
    // tmpfs where there is one: an append commits inline only while the log's last write took
    // ≤ 2 ms, which a disk shared with the rest of the suite misses often (CI: 84 of 128)
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let store = open(prepared_config(dir.path())).await.unwrap();
    let id = sid("lone");
    let (n, len) = (128u64, 64u64 << 10);
    let mut offset = 0;
    for _ in 0..n {
        let data: Vec<u8> = (offset..offset + len).map(|o| content(3, o)).collect();
        offset = store
            .append(&id, offset, Bytes::from(data), false)
            .await
            .unwrap()
            .offset;
        tokio::task::yield_now().await;
    }
    let prepared = counter(&store, "engine_gateway_store_prepared_bytes_total");
    let batches = counter(&store, "engine_gateway_store_batches_total");
    let inline = counter(&store, "engine_gateway_store_inline_batches_total");
    // 8 MiB of appends: zeros are written 512 KiB at a time while the zeros ahead run short
    assert!(
        prepared >= 4 << 20,
        "only {prepared} bytes of zeros written ahead"
    );
    assert!(
        inline * 4 >= batches * 3,
        "only {inline} of {batches} appends committed inline"
    );
    store.close().await.unwrap();
    drop(store);
    let store = open(prepared_config(dir.path())).await.unwrap();
    let expected: Vec<u8> = (0..n * len).map(|o| content(3, o)).collect();
    assert!(
        read_to_end(&store, &id, "lone").await == expected,
        "the stream reads back changed"
    );
}

/// With nothing queued an append commits on its own task (no trip through the writer thread);
/// under concurrency appends queue and share batches. Either way every byte is there after a
/// reopen, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_commit_inline_when_nothing_is_queued_and_in_batches_when_many_are() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(config(dir.path())).await.unwrap());
    let chunk = |s: usize, at: u64, len: u64| -> Bytes {
        (at..at + len)
            .map(|o| content(s, o))
            .collect::<Vec<u8>>()
            .into()
    };
    let mut offset = 0;
    for _ in 0..20 {
        let data = chunk(0, offset, 3000);
        offset = store
            .append(&sid("alone"), offset, data, false)
            .await
            .unwrap()
            .offset;
    }
    let inline = counter(&store, "engine_gateway_store_inline_batches_total");
    assert!(
        inline >= 10,
        "sequential appends went inline {inline} times of 20"
    );
    let before = counter(&store, "engine_gateway_store_batches_total");
    let mut tasks = Vec::new();
    for s in 1..=32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut offset = 0;
            for _ in 0..10 {
                let data = chunk(s, offset, 10_000);
                offset = store
                    .append(&sid(&format!("s{s}")), offset, data, false)
                    .await
                    .unwrap()
                    .offset;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let batches = counter(&store, "engine_gateway_store_batches_total") - before;
    assert!(
        (1..=320).contains(&batches),
        "{batches} batches for 320 appends"
    );
    store.close().await.unwrap();
    drop(store);
    let store = open(config(dir.path())).await.unwrap();
    check_content(0, &read_to_end(&store, &sid("alone"), "alone").await);
    for s in 1..=32 {
        let data = read_to_end(&store, &sid(&format!("s{s}")), "concurrent").await;
        assert_eq!(data.len(), 100_000, "stream s{s}");
        check_content(s, &data);
    }
    store.close().await.unwrap();
}

/// Pages of `path`'s first `len` bytes from `from` that are in the page cache (`mincore`).
fn resident_pages(path: &Path, from: u64, len: u64) -> (usize, usize) {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).unwrap();
    let page = 4096u64;
    let (from, len) = (from / page * page, len.div_ceil(page) * page);
    // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore writes one
    // byte per page into a vector of that many bytes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            from as libc::off_t,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap of {}", path.display());
        let mut vec = vec![0u8; (len / page) as usize];
        let rc = libc::mincore(addr, len as usize, vec.as_mut_ptr());
        libc::munmap(addr, len as usize);
        assert_eq!(rc, 0, "mincore");
        (vec.iter().filter(|&&b| b & 1 == 1).count(), vec.len())
    }
}

#[tokio::test]
async fn synced_log_pages_behind_the_cached_tail_are_given_back_to_the_kernel() {
    log_pages_cached(false).await;
}

#[tokio::test]
async fn direct_writes_leave_no_log_pages_cached_and_read_back_intact() {
    log_pages_cached(true).await;
}

/// Writes 32 MiB to one stream and looks at which of the segment's pages are cached: with
/// buffered writes the last `cached_tail_bytes` only, with direct writes none.
async fn log_pages_cached(direct: bool) {
    // Not on a tmpfs (there the page cache is the file itself): where cargo keeps test files.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = EmbeddedConfig {
        cached_tail_bytes: 8 << 20,
        direct_writes: direct,
        ..EmbeddedConfig::new(dir.path())
    };
    let store = open(config).await.unwrap();
    let id = sid("pages");
    let piece = Bytes::from(vec![7u8; 1 << 20]);
    for i in 0..32u64 {
        store
            .append(&id, i << 20, piece.clone(), false)
            .await
            .unwrap();
    }
    let segment = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    assert!(len > 32 << 20, "{len}");
    let (old, old_pages) = resident_pages(&segment, 0, 16 << 20);
    let (tail, tail_pages) = resident_pages(&segment, len - (4 << 20), 4 << 20);
    eprintln!(
        "direct {direct}: resident: first 16 MiB {old}/{old_pages} pages, last 4 MiB {tail}/{tail_pages}"
    );
    assert!(
        old * 10 < old_pages,
        "{old} of {old_pages} pages of synced log far behind the tail are still cached"
    );
    if direct {
        assert!(
            tail * 10 < tail_pages,
            "{tail} of the {tail_pages} tail pages are cached after direct writes"
        );
    } else {
        assert!(
            tail * 2 > tail_pages,
            "only {tail} of the {tail_pages} tail pages are cached (followers read them)"
        );
    }
    // what is not cached reads back from the disk, intact
    let data = read_to_end(&store, &id, "read back").await;
    assert_eq!(data.len(), 32 << 20);
    assert!(data.iter().all(|&b| b == 7), "read back other bytes");
    store.close().await.unwrap();
}

/// A burst's direct-write buffer is not kept at rest: a 600 KB append (committed on its own
/// task) uses 600 KB of it; once no batch used it for half a second the writer gives its pages
/// back, and the next appends still write every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_s_write_buffer_is_given_back_when_the_store_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(EmbeddedConfig::new(dir.path())).await.unwrap();
    assert_eq!(counter(&store, "engine_gateway_store_direct_writes"), 1);
    let id = sid("burst");
    let burst: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    store
        .append(&id, 0, Bytes::from(burst.clone()), false)
        .await
        .unwrap();
    let staging = || counter(&store, "engine_gateway_store_staging_bytes");
    assert!(staging() >= 600_000, "{} bytes in use", staging());
    let deadline = Instant::now() + Duration::from_secs(10);
    while staging() > 0 {
        assert!(Instant::now() < deadline, "{} bytes still held", staging());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // what was given back reads as zeros again, and is written over in full
    store
        .append(&id, burst.len() as u64, Bytes::from(burst.clone()), false)
        .await
        .unwrap();
    let data = read_to_end(&store, &id, "burst").await;
    assert_eq!(data, burst.repeat(2));
    store.close().await.unwrap();
    drop(store);
    let store = open(EmbeddedConfig::new(dir.path())).await.unwrap();
    assert_eq!(read_to_end(&store, &id, "reopened").await, burst.repeat(2));
    store.close().await.unwrap();
}
