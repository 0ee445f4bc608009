//! A full disk is an answer, not a state: on a small tmpfs (the tests mount one; CI runs as
//! root), appends are refused with `InsufficientStorage` / 507 + `Retry-After` + the committed
//! offset, nothing acknowledged is missing, reads and deletes keep working, `/readyz` says why,
//! and writes succeed again without a restart once space is back.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use engine_gateway::store::embedded::{EmbeddedConfig, EmbeddedStore};
use engine_gateway::store::testsuite::read_to_end;
use engine_gateway::store::{ErrorKind, Store};
use engine_gateway::stream_id::StreamId;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) at `path`. Without the privilege to mount, the test
    /// cannot run: that fails when root or in CI (`CI` set), and is skipped with a message
    /// otherwise (a developer's unprivileged run).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(path.to_owned())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                // SAFETY: geteuid has no preconditions.
                let root = unsafe { libc::geteuid() } == 0;
                assert!(
                    !root && std::env::var_os("CI").is_none(),
                    "cannot mount a {size} tmpfs at {}: {why}; the full-disk tests need it",
                    path.display()
                );
                eprintln!("skipped: mounting a tmpfs needs root ({why})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn sid(name: &str) -> StreamId {
    StreamId::new("org", "cluster", name).unwrap()
}

fn bytes_of(seed: u64, at: u64, len: u64) -> Vec<u8> {
    (at..at + len)
        .map(|o| (seed * 31 + o * 7 + o / 251) as u8)
        .collect()
}

async fn open(config: EmbeddedConfig) -> EmbeddedStore {
    tokio::task::spawn_blocking(move || EmbeddedStore::open(config))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_appends_and_heals_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "8m") else {
        return;
    };
    let config = EmbeddedConfig {
        segment_bytes: 1 << 20,
        reserve_bytes: 1 << 20,
        ..EmbeddedConfig::new(mnt.0.join("store"))
    };
    let store = open(config.clone()).await;
    let filler = mnt.0.join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    store
        .append(&sid("other"), 0, Bytes::from(bytes_of(2, 0, 5000)), false)
        .await
        .unwrap();

    let (a, chunk) = (sid("a"), 256 << 10);
    let mut committed = 0u64;
    let err = loop {
        let data = Bytes::from(bytes_of(1, committed, chunk));
        match store.append(&a, committed, data, false).await {
            Ok(done) => committed = done.offset,
            Err(err) => break err,
        }
        assert!(committed < 8 << 20, "an 8 MiB disk never filled up");
    };
    assert_eq!(err.kind(), ErrorKind::InsufficientStorage, "{err}");
    assert_eq!(
        err.committed(),
        Some(committed),
        "the answer carries the committed offset"
    );
    assert!(committed > 0, "some appends fit before the disk filled");
    let ready = store.ready().await.unwrap_err();
    assert_eq!(ready.kind(), ErrorKind::InsufficientStorage, "{ready}");
    assert!(ready.to_string().contains("disk full"), "{ready}");

    // reads and deletes keep working; nothing acknowledged is missing
    assert_eq!(store.head(&a).await.unwrap().length, committed);
    assert_eq!(
        read_to_end(&store, &a, "full").await,
        bytes_of(1, 0, committed)
    );
    store.delete(&sid("other")).await.unwrap();
    // retrying while full keeps answering the same way
    let again = store
        .append(
            &a,
            committed,
            Bytes::from(bytes_of(1, committed, chunk)),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InsufficientStorage);
    let mut metrics = String::new();
    store.write_metrics(&mut metrics);
    assert!(
        metrics.contains("engine_gateway_store_no_space_total 2"),
        "{metrics}"
    );

    // space comes back: the same store takes the write
    std::fs::remove_file(&filler).unwrap();
    store.ready().await.unwrap();
    let done = store
        .append(
            &a,
            committed,
            Bytes::from(bytes_of(1, committed, chunk)),
            false,
        )
        .await
        .unwrap();
    assert_eq!(done.offset, committed + chunk);
    store.close().await.unwrap();
    drop(store);
    let store = open(config).await;
    assert_eq!(
        read_to_end(&store, &a, "reopened").await,
        bytes_of(1, 0, done.offset)
    );
    store.close().await.unwrap();
}

#[test]
fn gateway_answers_507_and_heals_without_restart() {
    let mut gw = common::Gateway::start();
    let admin = gw.admin_token();
    gw.terminate();
    // the store moves onto a 72 MiB tmpfs; the gateway keeps 64 MiB free (its default reserve)
    let Some(mnt) = Tmpfs::mount(&gw.data_dir().join("store"), "72m") else {
        return;
    };
    let filler = mnt.0.join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20]).unwrap();
    gw.spawn();
    let first = bytes_of(3, 0, 128 << 10);
    assert_eq!(gw.append(&admin, "o/c/full", 0, &first).status, 204);
    assert_eq!(gw.append(&admin, "o/c/spare", 0, b"spare").status, 204);
    std::fs::write(&filler, vec![1u8; 9 << 20]).unwrap();

    let second = bytes_of(3, first.len() as u64, 64 << 10);
    let refused = gw.append(&admin, "o/c/full", first.len() as u64, &second);
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert_eq!(refused.code(), "insufficient_storage");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        refused.header("stream-offset"),
        Some(first.len().to_string().as_str())
    );
    let ready = gw.request("GET", "/readyz", None, &[], b"");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.code(), "unavailable");
    assert!(ready.text().contains("disk full"), "{}", ready.text());
    assert_eq!(gw.read_all(&admin, "o/c/full"), first);
    let deleted = gw.request("DELETE", "/v1/streams/o/c/spare", Some(&admin), &[], b"");
    assert_eq!(deleted.status, 204, "{}", deleted.text());

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(gw.request("GET", "/readyz", None, &[], b"").status, 200);
    let healed = gw.append(&admin, "o/c/full", first.len() as u64, &second);
    assert_eq!(healed.status, 204, "{}", healed.text());
    let mut all = first;
    all.extend_from_slice(&second);
    assert_eq!(gw.read_all(&admin, "o/c/full"), all);
    gw.terminate();
    drop(mnt);
}
