//! Space comes back: deleted and expired streams' bytes leave the disk (compaction), and a
//! `kill -9` at any moment of a compaction loses nothing live.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine_gateway::store::embedded::{EmbeddedConfig, EmbeddedStore};
use engine_gateway::store::retention::{RetentionConfig, RetentionRule};
use engine_gateway::store::testsuite::read_to_end;
use engine_gateway::store::{ErrorKind, Store};
use engine_gateway::stream_id::StreamId;

const CHILD_DIR: &str = "ENGINE_GATEWAY_COMPACT_CHILD_DIR";

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 256 << 10,
        reserve_bytes: 0,
        // every batch durable: compaction may work right up to the writer's segment
        checkpoint_batches: 1,
        ..EmbeddedConfig::new(dir)
    }
}

async fn open(config: EmbeddedConfig) -> EmbeddedStore {
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
        .unwrap()
}

fn sid(org: &str, name: &str) -> StreamId {
    StreamId::new(org, "cluster", name).unwrap()
}

fn content(seed: u64, o: u64) -> u8 {
    (seed * 131 + o * 7 + o / 253) as u8
}

/// Bytes of every segment file.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Appends `rounds` chunks of `chunk` bytes to each stream, interleaved.
async fn write(store: &dyn Store, ids: &[StreamId], rounds: u64, chunk: u64) {
    for round in 0..rounds {
        for (s, id) in ids.iter().enumerate() {
            let at = round * chunk;
            let data: Vec<u8> = (at..at + chunk).map(|o| content(s as u64, o)).collect();
            store
                .append(id, at, Bytes::from(data), false)
                .await
                .unwrap();
        }
    }
}

/// Checks streams written by [`write`] as its streams `first..`.
async fn check(store: &dyn Store, ids: &[StreamId], first: usize, len: u64) {
    for (s, id) in ids.iter().enumerate().map(|(i, id)| (i + first, id)) {
        let data = read_to_end(store, id, "live stream").await;
        assert_eq!(data.len() as u64, len, "{id}");
        assert!(
            data.iter()
                .enumerate()
                .all(|(o, &b)| b == content(s as u64, o as u64)),
            "{id}: bytes differ"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_expired_streams_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = RetentionConfig {
        max_bytes: Some((6 << 20) + 1024),
        ..RetentionConfig::default()
    };
    cfg.retention.orgs.insert(
        "old".into(),
        RetentionRule {
            max_age_secs: Some(1),
            max_bytes: None,
        },
    );
    let store = open(cfg.clone()).await;
    let ids: Vec<StreamId> = (0..8).map(|s| sid("acme", &format!("s{s}"))).collect();
    write(&store, &ids, 16, 64 << 10).await; // 8 streams of 1 MiB
    let full = disk_bytes(dir.path());
    assert!(full > 8 << 20, "{full}");

    // delete half: after compaction the disk holds about half
    for id in &ids[..4] {
        store.delete(id).await.unwrap();
    }
    // retention by bytes: 4 MiB left, under 6 MiB: nothing more goes
    let (expired, report) = store.maintain().await.unwrap();
    assert_eq!(expired, 0);
    assert!(report.segments > 0, "{report:?}");
    let after_delete = disk_bytes(dir.path());
    assert!(
        after_delete < full * 6 / 10,
        "disk went from {full} to {after_delete} bytes"
    );
    check(&store, &ids[4..], 4, 1 << 20).await;

    // a recreated stream of a deleted name starts empty and keeps its new bytes
    store
        .append(&ids[0], 0, Bytes::from_static(b"again"), false)
        .await
        .unwrap();
    // retention by age: a stream of org "old" (1 s) goes once it is 2 s old
    let old = sid("old", "log");
    store
        .append(&old, 0, Bytes::from(vec![9u8; 1 << 20]), false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        store.maintain().await.unwrap();
        match store.head(&old).await {
            Err(err) if err.kind() == ErrorKind::NotFound => break,
            _ => assert!(Instant::now() < deadline, "the old stream never expired"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // retention by bytes: 4 more MiB make 8 > 6: the oldest-written go first
    let more: Vec<StreamId> = (0..4).map(|s| sid("acme", &format!("m{s}"))).collect();
    write(&store, &more, 16, 64 << 10).await;
    let before = disk_bytes(dir.path());
    let (expired, _) = store.maintain().await.unwrap();
    // 8 MiB over a 6 MiB limit: the two least recently written 1 MiB streams go (and the
    // 5-byte one, if written in the same second: ties go by id)
    assert!((2..=3).contains(&expired), "{expired} expired");
    for id in &ids[4..6] {
        assert_eq!(
            store.head(id).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "{id}"
        );
    }
    let after = disk_bytes(dir.path());
    assert!(
        after < before,
        "expiry gave space back: {before} -> {after}"
    );
    let mut metrics = String::new();
    store.write_metrics(&mut metrics);
    assert!(
        metrics.contains(&format!(
            "engine_gateway_store_expired_streams_total {}",
            expired + 1
        )),
        "{metrics}"
    );
    store.close().await.unwrap();
    drop(store);

    // reopened, and with the index rebuilt from the compacted log: the same streams
    for rebuild in [false, true] {
        if rebuild {
            std::fs::remove_file(dir.path().join("index.redb")).unwrap();
        }
        let store = open(cfg.clone()).await;
        check(&store, &ids[6..], 6, 1 << 20).await;
        check(&store, &more, 0, 1 << 20).await;
        if store.head(&ids[0]).await.is_ok() {
            assert_eq!(read_to_end(&store, &ids[0], "recreated").await, b"again");
        }
        for id in [&ids[1], &ids[4], &ids[5], &old] {
            assert_eq!(
                store.head(id).await.unwrap_err().kind(),
                ErrorKind::NotFound,
                "{id}"
            );
        }
        store.close().await.unwrap();
    }
}

/// Child: live streams `s0..s3` acknowledged on stdout, junk streams written and deleted
/// beside them, and compaction in a loop, until killed.
#[test]
fn compact_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(open(config(Path::new(&dir))).await);
        let compactor = {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    store.maintain().await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut junk = 0u64;
        let mut offsets = [0u64; 4];
        for (s, offset) in offsets.iter_mut().enumerate() {
            let id = sid("o", &format!("s{s}"));
            *offset = store.head(&id).await.map_or(0, |i| i.length);
        }
        loop {
            for (s, offset) in offsets.iter_mut().enumerate() {
                let id = sid("o", &format!("s{s}"));
                let len = 1 + (*offset * 7919 + s as u64 * 104_729) % 20_000;
                let data: Vec<u8> = (*offset..*offset + len)
                    .map(|o| content(s as u64, o))
                    .collect();
                *offset = store
                    .append(&id, *offset, Bytes::from(data), false)
                    .await
                    .unwrap()
                    .offset;
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {s} {offset}").unwrap();
                out.flush().unwrap();
            }
            // unique per child: a killed child may leave its last junk stream behind
            let id = sid("o", &format!("junk{}-{junk}", std::process::id()));
            junk += 1;
            store
                .append(&id, 0, Bytes::from(vec![0xEE; 150_000]), false)
                .await
                .unwrap();
            store.delete(&id).await.unwrap();
            assert!(!compactor.is_finished());
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_compaction_loses_nothing_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = [0u64; 4];
    for kill_after in [7, 90, 250, 31, 160] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "compact_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Some(rest) = line.split("ACK ").nth(1) else {
                continue;
            };
            let (s, o) = rest.split_once(' ').unwrap();
            let (s, o): (usize, u64) = (s.parse().unwrap(), o.parse().unwrap());
            acked[s] = acked[s].max(o);
            seen += 1;
            if seen >= kill_after {
                break;
            }
            assert!(Instant::now() < deadline, "child too slow");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = open(config(dir.path())).await;
        verify(&store, &acked).await;
        store.close().await.unwrap();
    }
    let mut metrics = String::new();
    let store = open(config(dir.path())).await;
    store.maintain().await.unwrap();
    verify(&store, &acked).await;
    store.write_metrics(&mut metrics);
    store.close().await.unwrap();
    // the junk was written and deleted 5 times over: the disk holds little more than the live
    let live: u64 = acked.iter().sum();
    let disk = disk_bytes(dir.path());
    assert!(
        disk < live * 3 + (2 << 20),
        "disk {disk} bytes for {live} live bytes"
    );
}

async fn verify(store: &EmbeddedStore, acked: &[u64; 4]) {
    for (s, &acked) in acked.iter().enumerate() {
        let data = read_to_end(store, &sid("o", &format!("s{s}")), "verify").await;
        assert!(
            data.len() as u64 >= acked,
            "stream {s}: acknowledged {acked}, recovered {}",
            data.len()
        );
        let bad = (0..data.len()).find(|&o| data[o] != content(s as u64, o as u64));
        assert_eq!(bad, None, "stream {s}: first byte that differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_suite_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = RetentionConfig {
        max_age_secs: Some(1),
        interval_secs: Some(1),
        ..RetentionConfig::default()
    };
    let store = open(cfg).await;
    engine_gateway::store::testsuite::expires_after_max_age(&store, Duration::from_secs(1)).await;
    store.close().await.unwrap();
}
