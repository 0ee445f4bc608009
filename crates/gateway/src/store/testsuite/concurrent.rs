//! Checks of the shared suite where several things happen at once: followers, racing appenders,
//! many streams.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ok, read_to_end, unique};
use crate::store::{ErrorKind, Store};
use crate::stream_id::StreamId;

/// `wait` returns on an append, on a seal, at once when data is there, and after the timeout.
pub async fn wait_wakes_and_times_out(store: &dyn Store) {
    let id = unique("wait");
    ok(
        store.append(&id, 0, Bytes::from_static(b"ab"), false).await,
        "wait: setup",
    );
    let started = Instant::now();
    ok(
        store.wait(&id, 1, Duration::from_secs(10)).await,
        "wait: data present",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "wait: returns at once when data is there"
    );

    let started = Instant::now();
    ok(
        store.wait(&id, 2, Duration::from_millis(200)).await,
        "wait: timeout",
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "wait: returned after {waited:?}, before the timeout"
    );

    let (waited, appended) = tokio::join!(
        async {
            let started = Instant::now();
            ok(
                store.wait(&id, 2, Duration::from_secs(10)).await,
                "wait: append",
            );
            started.elapsed()
        },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.append(&id, 2, Bytes::from_static(b"c"), false).await
        }
    );
    ok(appended, "wait: append while waiting");
    assert!(
        waited < Duration::from_secs(5),
        "wait: an append wakes the waiter (took {waited:?})"
    );

    let (waited, sealed) = tokio::join!(
        async {
            let started = Instant::now();
            ok(
                store.wait(&id, 3, Duration::from_secs(10)).await,
                "wait: seal",
            );
            started.elapsed()
        },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.append(&id, 3, Bytes::new(), true).await
        }
    );
    ok(sealed, "wait: seal while waiting");
    assert!(
        waited < Duration::from_secs(5),
        "wait: a seal wakes the waiter (took {waited:?})"
    );
}

/// Several appenders race on one stream: each offset is won by exactly one, and the stream is
/// the concatenation of whole records.
pub async fn concurrent_appenders(store: &dyn Store) {
    const WRITERS: u8 = 8;
    const EACH: u8 = 10;
    const RECORD: usize = 16;
    let id = unique("race");
    let writers = (0..WRITERS).map(|w| {
        let id = &id;
        async move {
            let mut offset = 0;
            let mut won = 0u8;
            while won < EACH {
                let mut record = vec![w; RECORD];
                record[RECORD - 1] = won;
                match store.append(id, offset, Bytes::from(record), false).await {
                    Ok(a) => {
                        offset = a.offset;
                        won += 1;
                    }
                    Err(err) if err.kind() == ErrorKind::Conflict => {
                        offset = err
                            .committed()
                            .unwrap_or_else(|| panic!("race: conflict without offset"));
                    }
                    Err(err) => panic!("race: writer {w}: {err}"),
                }
            }
        }
    });
    join_all(writers.collect()).await;
    let total = usize::from(WRITERS) * usize::from(EACH) * RECORD;
    let data = read_to_end(store, &id, "race").await;
    assert_eq!(data.len(), total, "race: every won append is in the stream");
    let mut next = [0u8; WRITERS as usize];
    for record in data.chunks(RECORD) {
        let w = record[0];
        assert!(
            w < WRITERS && record[..RECORD - 1].iter().all(|&b| b == w),
            "race: torn record {record:?}"
        );
        assert_eq!(
            record[RECORD - 1],
            next[usize::from(w)],
            "race: writer {w}'s records out of order"
        );
        next[usize::from(w)] += 1;
    }
}

/// 64 streams written concurrently read back intact.
pub async fn many_streams(store: &dyn Store) {
    let base = unique("many");
    let ids: Vec<StreamId> = (0..64)
        .map(|i| {
            StreamId::new(base.org(), base.cluster(), &format!("{}-{i}", base.name()))
                .unwrap_or_else(|e| panic!("many: bad id: {e}"))
        })
        .collect();
    let content = |s: usize, o: usize| (s * 31 + o * 7 + o / 251) as u8;
    let writers = ids.iter().enumerate().map(|(s, id)| async move {
        let mut offset = 0;
        for size in [1000, 4096, 10, 3000] {
            let data: Vec<u8> = (offset..offset + size).map(|o| content(s, o)).collect();
            let a = ok(
                store
                    .append(id, offset as u64, Bytes::from(data), false)
                    .await,
                "many: append",
            );
            offset = a.offset as usize;
        }
    });
    join_all(writers.collect()).await;
    for (s, id) in ids.iter().enumerate() {
        let data = read_to_end(store, id, "many").await;
        assert_eq!(data.len(), 8106, "many: length of {id}");
        let bad = (0..data.len()).find(|&o| data[o] != content(s, o));
        assert_eq!(bad, None, "many: first wrong byte of {id}");
    }
}

/// Polls all futures concurrently in the current task (the suite borrows the store, so it
/// cannot spawn).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
