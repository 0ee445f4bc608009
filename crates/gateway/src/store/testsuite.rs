//! The behaviour every [`Store`](super::Store) backend must have, as one suite of checks.
//!
//! Each check uses stream ids unique to one run, so the suite can run against a shared backend
//! (a NATS cluster) and several times against the same store. Failures panic with a message
//! naming the check.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{ErrorKind, Store, StoreError};
use crate::stream_id::StreamId;

mod concurrent;
mod retention;

pub use self::concurrent::{concurrent_appenders, many_streams, wait_wakes_and_times_out};
pub use self::retention::expires_after_max_age;

/// Runs every check, one after the other.
pub async fn run_all(store: &dyn Store) {
    create_at_zero(store).await;
    append_sequence(store).await;
    conflict_reports_committed(store).await;
    sealed_streams(store).await;
    unknown_streams(store).await;
    read_ranges(store).await;
    wait_wakes_and_times_out(store).await;
    list_prefix_and_limit(store).await;
    delete_then_recreate(store).await;
    concurrent_appenders(store).await;
    many_streams(store).await;
    offset_overflow(store).await;
}

/// An empty append at 0 creates an empty stream; repeating it changes nothing.
pub async fn create_at_zero(store: &dyn Store) {
    let id = unique("create");
    let appended = ok(store.append(&id, 0, Bytes::new(), false).await, "create");
    assert_eq!(
        (appended.offset, appended.sealed),
        (0, false),
        "create: empty append at 0"
    );
    let info = ok(store.head(&id).await, "create: head");
    assert_eq!(
        (info.id.as_str(), info.length, info.sealed),
        (id.as_str(), 0, false)
    );
    let again = ok(
        store.append(&id, 0, Bytes::new(), false).await,
        "create again",
    );
    assert_eq!(
        again.offset, 0,
        "create: a second empty append at 0 is a no-op"
    );
    let chunk = ok(store.read(&id, 0, 100).await, "create: read");
    assert!(
        chunk.data.is_empty() && chunk.length == 0,
        "create: empty stream reads empty"
    );
}

/// Appends at the committed length extend the stream; the bytes read back in order.
pub async fn append_sequence(store: &dyn Store) {
    let id = unique("sequence");
    let a = ok(
        store
            .append(&id, 0, Bytes::from_static(b"hello "), false)
            .await,
        "append 1",
    );
    assert_eq!(a.offset, 6, "sequence: first append");
    let b = ok(
        store
            .append(&id, 6, Bytes::from_static(b"world"), false)
            .await,
        "append 2",
    );
    assert_eq!((b.offset, b.sealed), (11, false), "sequence: second append");
    assert_eq!(
        ok(store.head(&id).await, "head").length,
        11,
        "sequence: head"
    );
    let chunk = ok(store.read(&id, 0, 1 << 20).await, "read");
    assert_eq!(&chunk.data[..], b"hello world", "sequence: read back");
    assert_eq!((chunk.length, chunk.sealed), (11, false));
}

/// An append at any offset but the committed length fails and tells the committed length.
pub async fn conflict_reports_committed(store: &dyn Store) {
    let id = unique("conflict");
    ok(
        store
            .append(&id, 0, Bytes::from_static(b"0123456789"), false)
            .await,
        "conflict: setup",
    );
    for offset in [0, 3, 9, 11, 1000] {
        let err = fails(
            store
                .append(&id, offset, Bytes::from_static(b"x"), false)
                .await,
            "conflict",
        );
        assert_eq!(
            err.kind(),
            ErrorKind::Conflict,
            "conflict at {offset}: {err}"
        );
        assert_eq!(
            err.committed(),
            Some(10),
            "conflict at {offset}: committed offset"
        );
    }
    let missing = unique("conflict-missing");
    let err = fails(
        store
            .append(&missing, 5, Bytes::from_static(b"x"), false)
            .await,
        "missing",
    );
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "append at 5 to a missing stream: {err}"
    );
    assert_eq!(
        ok(store.head(&id).await, "head").length,
        10,
        "conflict: nothing was added"
    );
}

/// Sealing with data, sealing empty, and appending after a seal.
pub async fn sealed_streams(store: &dyn Store) {
    let id = unique("sealed-data");
    ok(
        store
            .append(&id, 0, Bytes::from_static(b"abc"), false)
            .await,
        "seal setup",
    );
    let sealed = ok(
        store.append(&id, 3, Bytes::from_static(b"def"), true).await,
        "seal with data",
    );
    assert_eq!(
        (sealed.offset, sealed.sealed),
        (6, true),
        "sealed: append with seal"
    );
    for (offset, data) in [(6, &b"x"[..]), (6, &b""[..]), (0, &b"y"[..])] {
        let err = fails(
            store.append(&id, offset, Bytes::from(data), false).await,
            "after seal",
        );
        assert_eq!(
            err.kind(),
            ErrorKind::Sealed,
            "sealed: append at {offset}: {err}"
        );
        assert_eq!(err.committed(), Some(6), "sealed: committed offset");
    }
    let info = ok(store.head(&id).await, "sealed head");
    assert_eq!((info.length, info.sealed), (6, true), "sealed: head");
    let chunk = ok(store.read(&id, 2, 100).await, "sealed read");
    assert_eq!(
        (&chunk.data[..], chunk.sealed),
        (&b"cdef"[..], true),
        "sealed: read"
    );

    let empty = unique("sealed-empty");
    ok(
        store
            .append(&empty, 0, Bytes::from_static(b"12"), false)
            .await,
        "empty seal setup",
    );
    let sealed = ok(
        store.append(&empty, 2, Bytes::new(), true).await,
        "empty seal",
    );
    assert_eq!(
        (sealed.offset, sealed.sealed),
        (2, true),
        "sealed: empty seal"
    );
    let fresh = unique("sealed-fresh");
    let sealed = ok(
        store.append(&fresh, 0, Bytes::new(), true).await,
        "create sealed",
    );
    assert_eq!(
        (sealed.offset, sealed.sealed),
        (0, true),
        "sealed: create and seal at once"
    );
}

/// Unknown streams are `NotFound` for every operation.
pub async fn unknown_streams(store: &dyn Store) {
    let id = unique("unknown");
    let err = fails(store.head(&id).await, "head unknown");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "head of an unknown stream: {err}"
    );
    let err = fails(store.read(&id, 0, 10).await, "read unknown");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "read of an unknown stream: {err}"
    );
    let err = fails(store.delete(&id).await, "delete unknown");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "delete of an unknown stream: {err}"
    );
}

/// Reads of any range, spanning chunks; at the end empty; past it `InvalidOffset`.
pub async fn read_ranges(store: &dyn Store) {
    let id = unique("ranges");
    let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut offset = 0;
    for size in [1, 99, 100, 300, 500] {
        let data = Bytes::copy_from_slice(&content[offset..offset + size]);
        offset = ok(
            store.append(&id, offset as u64, data, false).await,
            "ranges: append",
        )
        .offset as usize;
    }
    assert_eq!(offset, 1000);
    for (from, max) in [
        (0, 1000),
        (0, 5000),
        (0, 1),
        (1, 99),
        (50, 100),
        (99, 402),
        (150, 700),
        (999, 10),
    ] {
        let chunk = ok(store.read(&id, from as u64, max).await, "ranges: read");
        let expect = &content[from..(from + max).min(1000)];
        // a backend may return fewer bytes than asked, never others
        assert!(
            !chunk.data.is_empty(),
            "ranges: read at {from} returned nothing"
        );
        assert_eq!(
            &chunk.data[..],
            &expect[..chunk.data.len()],
            "ranges: read at {from}, max {max}"
        );
        assert_eq!(chunk.length, 1000);
    }
    let mut at = 0;
    while at < 1000 {
        let chunk = ok(
            store.read(&id, at as u64, 1 << 20).await,
            "ranges: read all",
        );
        assert_eq!(
            &chunk.data[..],
            &content[at..at + chunk.data.len()],
            "ranges: read from {at}"
        );
        at += chunk.data.len();
    }
    let end = ok(store.read(&id, 1000, 10).await, "ranges: read at end");
    assert!(end.data.is_empty(), "ranges: read at the end is empty");
    let err = fails(store.read(&id, 1001, 10).await, "ranges: read past end");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidOffset,
        "read past the end: {err}"
    );
}

/// `list` returns the streams under a prefix, in id order, at most `limit`.
pub async fn list_prefix_and_limit(store: &dyn Store) {
    let base = unique("list");
    let cluster = format!("{}-{}", base.cluster(), base.name());
    let sibling = format!("{cluster}x");
    for (c, name, len) in [
        (&cluster, "c", 3),
        (&cluster, "a", 1),
        (&cluster, "b", 2),
        (&sibling, "a", 9),
    ] {
        let id = StreamId::new(base.org(), c, name).unwrap_or_else(|e| panic!("list: bad id: {e}"));
        let data = Bytes::from(vec![b'x'; len]);
        ok(store.append(&id, 0, data, false).await, "list: setup");
    }
    let prefix = format!("{}/{cluster}/", base.org());
    let all = ok(store.list(&prefix, 100).await, "list");
    let got: Vec<(String, u64)> = all.iter().map(|i| (i.id.clone(), i.length)).collect();
    let expect: Vec<(String, u64)> = [("a", 1), ("b", 2), ("c", 3)]
        .iter()
        .map(|(n, l)| (format!("{prefix}{n}"), *l))
        .collect();
    assert_eq!(got, expect, "list: every stream under the prefix, in order");
    let two = ok(store.list(&prefix, 2).await, "list limit");
    assert_eq!(two.len(), 2, "list: limit");
    assert_eq!(
        two[1].id,
        format!("{prefix}b"),
        "list: limit keeps the first ids"
    );
    let none = ok(store.list(&format!("{prefix}zz"), 10).await, "list none");
    assert!(none.is_empty(), "list: no match");
}

/// A deleted stream is gone everywhere, and its name can be used again from 0.
pub async fn delete_then_recreate(store: &dyn Store) {
    let id = unique("delete");
    ok(
        store
            .append(&id, 0, Bytes::from_static(b"old bytes"), true)
            .await,
        "delete: setup",
    );
    ok(store.delete(&id).await, "delete");
    let err = fails(store.head(&id).await, "delete: head");
    assert_eq!(err.kind(), ErrorKind::NotFound, "head after delete: {err}");
    let err = fails(store.read(&id, 0, 10).await, "delete: read");
    assert_eq!(err.kind(), ErrorKind::NotFound, "read after delete: {err}");
    let listed = ok(store.list(id.as_str(), 10).await, "delete: list");
    assert!(listed.is_empty(), "delete: a deleted stream is not listed");
    let again = ok(
        store
            .append(&id, 0, Bytes::from_static(b"new"), false)
            .await,
        "recreate",
    );
    assert_eq!(
        (again.offset, again.sealed),
        (3, false),
        "delete: recreated from 0, unsealed"
    );
    let chunk = ok(store.read(&id, 0, 100).await, "delete: read recreated");
    assert_eq!(
        &chunk.data[..],
        b"new",
        "delete: no bytes of the old stream remain"
    );
}

/// An append whose end would overflow u64 is `InvalidOffset`.
pub async fn offset_overflow(store: &dyn Store) {
    let id = unique("overflow");
    ok(
        store
            .append(&id, 0, Bytes::from_static(b"abc"), false)
            .await,
        "overflow: setup",
    );
    let err = fails(
        store
            .append(&id, u64::MAX, Bytes::from_static(b"xy"), false)
            .await,
        "overflow",
    );
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidOffset,
        "overflowing append: {err}"
    );
    let err = fails(store.read(&id, u64::MAX, 10).await, "overflow read");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidOffset,
        "read far past the end: {err}"
    );
}

/// Reads a whole stream, in as many reads as the backend needs.
pub async fn read_to_end(store: &dyn Store, id: &StreamId, check: &str) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let chunk = ok(store.read(id, data.len() as u64, 1 << 20).await, check);
        if chunk.data.is_empty() {
            assert_eq!(
                data.len() as u64,
                chunk.length,
                "{check}: read ended before the length"
            );
            return data;
        }
        data.extend_from_slice(&chunk.data);
    }
}

/// A stream id no other check or run uses.
fn unique(check: &str) -> StreamId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let run = format!("run{:x}-{}-{n}", nanos, std::process::id());
    StreamId::new("suite", &run, check).unwrap_or_else(|e| panic!("bad test id: {e}"))
}

fn ok<T>(result: Result<T, StoreError>, check: &str) -> T {
    result.unwrap_or_else(|err| panic!("{check}: unexpected error ({:?}): {err}", err.kind()))
}

fn fails<T>(result: Result<T, StoreError>, check: &str) -> StoreError {
    match result {
        Ok(_) => panic!("{check}: expected an error, got success"),
        Err(err) => err,
    }
}
