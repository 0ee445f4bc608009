//! Retention, as both backends give it: a stream nobody appends to for longer than the
//! configured maximum age disappears by itself (embedded: the maintenance pass deletes it;
//! NATS: JetStream's `max_age` drops its messages).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ok, unique};
use crate::store::{ErrorKind, Store};

/// Run against a store configured with `max_age` (and, embedded, a short maintenance interval).
pub async fn expires_after_max_age(store: &dyn Store, max_age: Duration) {
    let id = unique("retention");
    ok(
        store
            .append(&id, 0, Bytes::from_static(b"short-lived"), false)
            .await,
        "retention: append",
    );
    ok(
        store.head(&id).await,
        "retention: there right after the append",
    );
    let deadline = Instant::now() + max_age + Duration::from_secs(20);
    loop {
        match store.head(&id).await {
            Err(err) if err.kind() == ErrorKind::NotFound => break,
            Err(err) => panic!("retention: head failed: {err}"),
            Ok(_) => assert!(
                Instant::now() < deadline,
                "retention: stream still there {} s after its max age",
                (max_age + Duration::from_secs(20)).as_secs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = ok(store.list(id.as_str(), 10).await, "retention: list");
    assert!(
        listed.is_empty(),
        "retention: an expired stream is not listed"
    );
    // the name is free again
    let again = ok(
        store
            .append(&id, 0, Bytes::from_static(b"new"), false)
            .await,
        "retention: recreate",
    );
    assert_eq!(again.offset, 3, "retention: recreated from 0");
}
