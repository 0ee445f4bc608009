//! Store benchmarks, run by `bench/store.sh` (release build; only with
//! `ENGINE_GATEWAY_STORE_BENCH=1`): ingest at 64 streams; the read path (what a GET calls) with
//! and without checksum verification, alternating (ABBA) in one run; compaction throughput and
//! the ingest rate while a compaction runs beside it, against the rate without.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine_gateway::store::embedded::{EmbeddedConfig, EmbeddedStore};
use engine_gateway::store::{Store, StoreError};
use engine_gateway::stream_id::StreamId;

const TASKS: usize = 64;
const CHUNK: usize = 64 << 10;
/// Bytes one GET reads per store call (the gateway's default chunk).
const READ: usize = 256 << 10;

fn secs(var: &str, default: f64) -> Duration {
    let v = std::env::var(var).ok().and_then(|v| v.parse().ok());
    Duration::from_secs_f64(v.unwrap_or(default))
}

async fn open(dir: &Path, verify: bool) -> Result<EmbeddedStore, StoreError> {
    open_with(dir, verify, EmbeddedConfig::new(dir).compact_bytes_per_sec).await
}

async fn open_with(dir: &Path, verify: bool, rate: u64) -> Result<EmbeddedStore, StoreError> {
    let config = EmbeddedConfig {
        verify_reads: verify,
        compact_bytes_per_sec: rate,
        // small enough that a phase fills several, so compaction has closed segments to work on
        segment_bytes: std::env::var("BENCH_SEGMENT_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(64)
            << 20,
        ..EmbeddedConfig::new(dir)
    };
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
}

fn sid(name: &str) -> StreamId {
    StreamId::new("bench", "c", name).unwrap()
}

/// 64 tasks appending 64 KiB chunks to their own streams for `d`; returns MiB/s and the ids.
async fn ingest(store: &Arc<EmbeddedStore>, tag: &str, d: Duration) -> (f64, Vec<StreamId>) {
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (store, chunk, id) = (store.clone(), chunk.clone(), sid(&format!("{tag}-{t}")));
        handles.push(tokio::spawn(async move {
            let mut offset = 0;
            while started.elapsed() < d {
                offset = store
                    .append(&id, offset, chunk.clone(), false)
                    .await
                    .unwrap()
                    .offset;
            }
            (id, offset)
        }));
    }
    let (mut bytes, mut ids) = (0, Vec::new());
    for h in handles {
        let (id, n) = h.await.unwrap();
        bytes += n;
        ids.push(id);
    }
    (mib(bytes, started.elapsed()), ids)
}

/// 4 readers each reading whole streams of `ids` in 256 KiB calls for `d`; MiB/s.
async fn read(store: &Arc<EmbeddedStore>, ids: &[StreamId], d: Duration) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for r in 0..4 {
        let (store, ids) = (store.clone(), ids.to_vec());
        handles.push(tokio::spawn(async move {
            let (mut bytes, mut i) = (0u64, r);
            while started.elapsed() < d {
                let id = &ids[i % ids.len()];
                i += 1;
                let mut at = 0;
                loop {
                    let chunk = store.read(id, at, READ).await.unwrap();
                    if chunk.data.is_empty() {
                        break;
                    }
                    at += chunk.data.len() as u64;
                    bytes += chunk.data.len() as u64;
                }
            }
            bytes
        }));
    }
    let mut bytes = 0;
    for h in handles {
        bytes += h.await.unwrap();
    }
    mib(bytes, started.elapsed())
}

fn mib(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("BENCH_DATA_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).unwrap();
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_benchmarks() {
    if std::env::var_os("ENGINE_GATEWAY_STORE_BENCH").is_none() {
        return;
    }
    let phase = secs("BENCH_PHASE_SECS", 4.0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let tmp = tempfile::tempdir_in(bench_dir()).unwrap();
    let dir = tmp.path().join("store");
    let mut out = String::new();

    // ingest at 64 streams; its data is what the reads read (warm in the page cache)
    let store = Arc::new(open(&dir, true).await.unwrap());
    let (ingest_mibps, ids) = ingest(&store, "read", phase).await;
    store.close().await.unwrap();
    drop(store);
    out.push_str(&format!(
        "| ingest, 64 streams, 64 KiB appends | {ingest_mibps:.0} MiB/s |\n"
    ));

    // reads, verified or not, in ABBA order: each round reopens the store
    let (mut on, mut off, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut pair = [0.0; 2];
        for verify in order {
            let store = Arc::new(open(&dir, verify).await.unwrap());
            let r = read(&store, &ids, phase).await;
            store.close().await.unwrap();
            drop(store);
            pair[usize::from(verify)] = r;
        }
        off.push(pair[0]);
        on.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
    }
    out.push_str(&format!(
        "| read path (GET), 4 readers, 256 KiB calls, unverified | {:.0} MiB/s (median of {rounds}) |\n\
         | read path (GET), checksums verified | {:.0} MiB/s (median of {rounds}) |\n\
         | verified / unverified | **{:.3}×** (median of per-round ratios; rounds {}) |\n",
        median(off.clone()),
        median(on.clone()),
        median(ratios.clone()),
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ")
    ));

    if std::env::var_os("BENCH_SKIP_COMPACTION").is_some() {
        println!("| benchmark | result |\n|---|---|\n{out}");
        return;
    }
    // compaction: delete half of each round's streams, then ingest beside a compaction;
    // rounds alternate unthrottled and the default rate limit
    let store = Arc::new(open(&dir, true).await.unwrap());
    for id in &ids {
        store.delete(id).await.unwrap();
    }
    store.maintain().await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let default_rate = EmbeddedConfig::new(&dir).compact_bytes_per_sec;
    let mut results: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..rounds {
        let kind = round % 2;
        let rate = if kind == 0 { 0 } else { default_rate };
        let store = Arc::new(open_with(&dir, true, rate).await.unwrap());
        let (alone, written) = ingest(&store, &format!("a{round}"), phase).await;
        for id in written.iter().step_by(2) {
            store.delete(id).await.unwrap();
        }
        // let the writer's durable checkpoint pass the segments just written
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let compactor = {
            let store = store.clone();
            tokio::spawn(async move { store.maintain().await.unwrap().1 })
        };
        let (with, _) = ingest(&store, &format!("b{round}"), phase).await;
        let report = compactor.await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let (base, beside, speed) = &mut results[kind];
        base.push(alone);
        beside.push(with);
        if report.millis > 0 {
            speed.push(
                report.bytes_before as f64 / (1 << 20) as f64 / (report.millis as f64 / 1000.0),
            );
        }
        eprintln!(
            "round {round} (compaction limit {} MiB/s): alone {alone:.0} MiB/s, beside compaction {with:.0} MiB/s, {report:?}",
            rate >> 20
        );
    }
    for (kind, (base, beside, speed)) in results.into_iter().enumerate() {
        let limit = if kind == 0 {
            "unthrottled".to_owned()
        } else {
            format!("limit {} MiB/s written", default_rate >> 20)
        };
        out.push_str(&format!(
            "| compaction, {limit} (segments half deleted) | {:.0} MiB/s of segments (median of {}) |\n\
             | ingest, 64 streams: alone / beside a compaction ({limit}) | {:.0} / {:.0} MiB/s (**{:.2}×**) |\n",
            median(speed.clone()),
            speed.len(),
            median(base.clone()),
            median(beside.clone()),
            median(beside.clone()) / median(base.clone()).max(f64::MIN_POSITIVE)
        ));
    }
    println!("| benchmark | result |\n|---|---|\n{out}");
}
