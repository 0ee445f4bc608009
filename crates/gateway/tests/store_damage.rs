//! The embedded store against damaged bytes: a flipped byte in the newest or an older segment
//! (refuse to open, then `repair` keeps every intact record), a flipped data byte behind the
//! checkpoint (reads refuse to serve it), a lost index over a damaged log (the rebuild refuses),
//! and the torn last write (cut to quarantine, nothing acknowledged lost).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine_gateway::store::embedded::{self, EmbeddedConfig, EmbeddedStore};
use engine_gateway::store::testsuite::read_to_end;
use engine_gateway::store::{ErrorKind, Store, StoreError};
use engine_gateway::stream_id::StreamId;

const CHILD_DIR: &str = "ENGINE_GATEWAY_DAMAGE_CHILD_DIR";
const STREAMS: usize = 4;
const ROUNDS: u64 = 24;

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 128 << 10,
        reserve_bytes: 0,
        ..EmbeddedConfig::new(dir)
    }
}

async fn open(config: EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
}

fn sid(s: usize) -> StreamId {
    StreamId::new("org", "cluster", &format!("s{s}")).unwrap()
}

fn content(s: usize, o: u64) -> u8 {
    (s as u64 * 131 + o * 7 + o / 253) as u8
}

/// Writes every stream's rounds, one append per batch, interleaved; returns the lengths.
async fn fill(store: &dyn Store) -> BTreeMap<usize, u64> {
    let mut lengths = BTreeMap::new();
    for round in 0..ROUNDS {
        for s in 0..STREAMS {
            let at = *lengths.get(&s).unwrap_or(&0);
            let len = 1000 + (round * 7919 + s as u64 * 104_729) % 15_000;
            let data: Vec<u8> = (at..at + len).map(|o| content(s, o)).collect();
            let done = store
                .append(&sid(s), at, Bytes::from(data), false)
                .await
                .unwrap();
            lengths.insert(s, done.offset);
        }
    }
    lengths
}

/// Child process: fills a store that never checkpoints after opening, announces DONE, waits
/// to be killed. Its whole log is replayed at the next open.
#[test]
fn damage_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = EmbeddedConfig {
            checkpoint_batches: u64::MAX,
            checkpoint_interval: Duration::from_secs(3600),
            ..config(Path::new(&dir))
        };
        let store = Arc::new(open(config).await.unwrap());
        fill(&*store).await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "DONE").unwrap();
        out.flush().unwrap();
        drop(out);
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// Runs the child to DONE and kills it with SIGKILL.
fn fill_and_kill(dir: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "damage_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let done = BufReader::new(stdout)
        .lines()
        .any(|l| l.is_ok_and(|l| l.ends_with("DONE")));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done, "the child never finished writing");
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    s.sort();
    s
}

/// Flips one byte in the middle of `segment` (inside a record's data: records are mostly data).
fn flip(segment: &Path) -> String {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .unwrap();
    let at = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    segment.file_name().unwrap().to_string_lossy().into_owned()
}

/// After a repair: every stream's bytes are the ones written; all but the damaged streams are
/// complete, the damaged ones end where their damage starts. Returns the damaged ones.
async fn verify_repaired(store: &EmbeddedStore, written: &BTreeMap<usize, u64>) -> Vec<usize> {
    let mut short = Vec::new();
    for (&s, &len) in written {
        let data = read_to_end(store, &sid(s), "after repair").await;
        let bad = (0..data.len()).find(|&o| data[o] != content(s, o as u64));
        assert_eq!(
            bad, None,
            "stream {s}: a byte differs from what was written"
        );
        if (data.len() as u64) < len {
            short.push(s);
        }
    }
    short
}

async fn refuse_then_repair(dir: &Path, segment: &Path) {
    let name = flip(segment);
    let err = open(config(dir))
        .await
        .err()
        .expect("a damaged log must not open");
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    let message = err.to_string();
    assert!(message.contains(&name), "names the segment: {message}");
    assert!(message.contains("byte "), "names the position: {message}");
    assert!(
        message.contains("org/cluster/s"),
        "names a stream: {message}"
    );
    // refusing changed nothing: it refuses again
    assert_eq!(
        open(config(dir)).await.err().unwrap().kind(),
        ErrorKind::Corrupted
    );

    let checked = embedded::check(&config(dir)).unwrap();
    assert!(!checked.damage.is_empty(), "check sees the damage");
    let repaired = embedded::repair(&config(dir)).unwrap();
    let quarantine = repaired.quarantine.expect("something was quarantined");
    assert!(repaired.quarantined_bytes > 0);
    let manifest = std::fs::read_to_string(quarantine.join("manifest.txt")).unwrap();
    assert!(manifest.contains("unreadable bytes"), "{manifest}");

    let store = open(config(dir)).await.unwrap();
    let written = expected();
    let short = verify_repaired(&store, &written).await;
    assert_eq!(
        short.len(),
        1,
        "exactly the stream hit by the flip is cut short: {short:?}"
    );
    let named: Vec<&str> = checked.damage.streams().map(|(n, _)| n).collect();
    assert!(
        named.contains(&sid(short[0]).as_str()),
        "check named the stream cut short: {named:?}"
    );
    // the cut stream takes appends again from where it now ends
    let info = store.head(&sid(short[0])).await.unwrap();
    let more: Vec<u8> = (info.length..info.length + 10)
        .map(|o| content(short[0], o))
        .collect();
    store
        .append(&sid(short[0]), info.length, Bytes::from(more), false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(embedded::check(&config(dir)).unwrap().damage.is_empty());
}

/// What `fill` writes, computed without a store.
fn expected() -> BTreeMap<usize, u64> {
    let mut lengths = BTreeMap::new();
    for round in 0..ROUNDS {
        for s in 0..STREAMS {
            *lengths.entry(s).or_insert(0) += 1000 + (round * 7919 + s as u64 * 104_729) % 15_000;
        }
    }
    lengths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_newest_segment_refuses_then_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_kill(dir.path());
    let all = segments(dir.path());
    assert!(all.len() >= 3, "the fill spans segments: {all:?}");
    refuse_then_repair(dir.path(), all.last().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_an_older_segment_refuses_then_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_kill(dir.path());
    let all = segments(dir.path());
    refuse_then_repair(dir.path(), &all[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_over_damage_refuses_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await.unwrap();
    fill(&store).await;
    store.close().await.unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("index.redb")).unwrap();
    let all = segments(dir.path());
    refuse_then_repair(dir.path(), &all[all.len() / 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_data_byte_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await.unwrap();
    let written = fill(&store).await;
    store.close().await.unwrap();
    drop(store);
    // behind the checkpoint: the open replays nothing and does not see it; the read must
    let all = segments(dir.path());
    flip(&all[1]);
    let store = open(config(dir.path())).await.unwrap();
    let mut refused = 0;
    for (&s, &len) in &written {
        let mut at = 0;
        while at < len {
            match store.read(&sid(s), at, 1 << 20).await {
                Ok(chunk) => {
                    for (i, &b) in chunk.data.iter().enumerate() {
                        assert_eq!(b, content(s, at + i as u64), "stream {s} served a bad byte");
                    }
                    at += chunk.data.len() as u64;
                }
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
                    let broke = err.committed().unwrap();
                    assert!(
                        broke >= at && broke < len,
                        "offset {broke} of the damaged record"
                    );
                    assert!(err.to_string().contains("segment"), "{err}");
                    // the same record fails again: it is never served
                    refused += 1;
                    let next = store.read(&sid(s), broke, 1).await.unwrap_err();
                    assert_eq!(next.kind(), ErrorKind::Corrupted);
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 1, "exactly one stream holds the flipped byte");
    let mut metrics = String::new();
    store.write_metrics(&mut metrics);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("engine_gateway_store_corrupt_reads_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_write_is_cut_to_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    fill_and_kill(dir.path());
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    // half of the last record: what a kill during its write leaves
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 500)
        .unwrap();
    let store = open(config(dir.path())).await.unwrap();
    let cut = store.recovery().truncated_bytes;
    assert!(cut > 0 && cut < 20_000, "cut {cut} bytes");
    let torn: Vec<_> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(torn.len(), 1, "{torn:?}");
    assert_eq!(
        std::fs::metadata(&torn[0]).unwrap().len(),
        cut,
        "the cut bytes are kept"
    );
    // every stream but the one whose last append was torn is complete
    let short = verify_repaired(&store, &expected()).await;
    assert_eq!(
        short,
        [STREAMS - 1],
        "only the last append is lost, and it was never acknowledged"
    );
    store.close().await.unwrap();
}

/// Through the real binary: GET refuses the damaged record (500 `data_corrupted`, counted),
/// `store check` reports it (exit 1), `store repair` quarantines it, the gateway starts again.
#[test]
fn gateway_get_refuses_damage_and_the_cli_repairs_it() {
    let mut gw = common::Gateway::start();
    let admin = gw.admin_token();
    let a = common::pattern(1, 100_000);
    assert_eq!(gw.append(&admin, "o/c/a", 0, &a).status, 204);
    assert_eq!(gw.append(&admin, "o/c/b", 0, b"intact").status, 204);
    assert_eq!(gw.terminate(), Some(0));
    let store = gw.data_dir().join("store");
    let segment = segments(&store).pop().unwrap();
    // inside a's data: its record ends before b's create and append (~120 bytes)
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&[0x55], len - 5_000).unwrap();
    drop(file);

    gw.spawn();
    let got = gw.request("GET", "/v1/streams/o/c/a", Some(&admin), &[], b"");
    assert_eq!(got.status, 500, "{}", got.text());
    assert_eq!(got.code(), "data_corrupted");
    assert_eq!(got.header("stream-offset"), Some("0"));
    assert_eq!(gw.read_all(&admin, "o/c/b"), b"intact");
    let metrics = gw.request("GET", "/metrics", None, &[], b"").text();
    assert!(
        metrics.contains("engine_gateway_store_corrupt_reads_total 1"),
        "{metrics}"
    );
    assert!(gw.log().contains("fails its checksum"), "{}", gw.log());
    assert_eq!(gw.terminate(), Some(0));

    let cli = |command: &str| {
        Command::new(common::BIN)
            .args(["store", command, "--data-dir"])
            .arg(gw.data_dir())
            .output()
            .unwrap()
    };
    let check = cli("check");
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains("o/c/a"), "{said}");
    let repair = cli("repair");
    let said = String::from_utf8_lossy(&repair.stdout).into_owned();
    assert!(
        repair.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(said.contains("quarantine"), "{said}");
    assert!(String::from_utf8_lossy(&repair.stderr).contains("moved to quarantine"));
    assert_eq!(cli("check").status.code(), Some(0));

    gw.spawn();
    assert_eq!(
        gw.offset(&admin, "o/c/a"),
        (200, Some(0)),
        "a ends where its damage began"
    );
    assert_eq!(gw.read_all(&admin, "o/c/b"), b"intact");
    assert_eq!(
        gw.append(&admin, "o/c/a", 0, &a).status,
        204,
        "a's writer resumes"
    );
    assert_eq!(gw.read_all(&admin, "o/c/a"), a);
    gw.terminate();
}
