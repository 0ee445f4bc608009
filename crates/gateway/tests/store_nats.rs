//! The JetStream store against a real nats-server: semantics, de-duplication, racing replicas,
//! recovery by a fresh instance, server restarts, and refusal of incompatible settings.
#![allow(clippy::unwrap_used)]

mod common_nats;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use common_nats::NatsServer;
use engine_gateway::store::nats::NatsStore;
use engine_gateway::store::{ErrorKind, Store};
use engine_gateway::stream_id::StreamId;

fn id(s: &str) -> StreamId {
    s.parse().unwrap()
}

async fn store(server: &NatsServer) -> NatsStore {
    NatsStore::connect(server.config()).await.unwrap()
}

async fn read_all(store: &dyn Store, id: &StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = store.read(id, out.len() as u64, 1 << 20).await.unwrap();
        if chunk.data.is_empty() {
            assert_eq!(chunk.length, out.len() as u64);
            return out;
        }
        out.extend_from_slice(&chunk.data);
    }
}

#[tokio::test]
async fn shared_suite() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    engine_gateway::store::testsuite::run_all(&s).await;
    // Twice on the same JetStream stream, as a second gateway replica would see it.
    let other = store(&server).await;
    engine_gateway::store::testsuite::run_all(&other).await;
}

/// Retention maps onto JetStream's `max_age`: a stream of its own with a 1 s limit.
#[tokio::test]
async fn shared_suite_retention() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut config = server.config();
    config.stream = "EGW_RETENTION".into();
    config.subject_prefix = "egwr".into();
    config.bucket = "egwr_tokens".into();
    config.max_age = Some(std::time::Duration::from_secs(1));
    let s = NatsStore::connect(config).await.unwrap();
    engine_gateway::store::testsuite::expires_after_max_age(&s, std::time::Duration::from_secs(1))
        .await;
}

#[tokio::test]
async fn semantics_and_layout() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    s.ready().await.unwrap();
    let log = id("acme/prod.eu/deploy.log");

    // create, conflict, missing
    assert_eq!(
        s.append(&log, 0, Bytes::new(), false).await.unwrap().offset,
        0
    );
    assert_eq!(
        s.append(&log, 0, Bytes::new(), false).await.unwrap().offset,
        0
    );
    assert_eq!(
        s.append(&log, 0, Bytes::from_static(b"hello "), false)
            .await
            .unwrap()
            .offset,
        6
    );
    let err = s
        .append(&log, 3, Bytes::from_static(b"x"), false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.committed()),
        (ErrorKind::Conflict, Some(6))
    );
    let err = s
        .append(&id("acme/prod/none"), 4, Bytes::new(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // a large append is split into several messages; reads at any offset find the right one
    let big: Vec<u8> = (0..1_300_000u32).map(|i| (i % 251) as u8).collect();
    let end = s
        .append(&log, 6, Bytes::from(big.clone()), false)
        .await
        .unwrap()
        .offset;
    assert_eq!(end, 6 + big.len() as u64);
    for at in [
        0u64,
        5,
        6,
        7,
        524_288 + 6,
        524_288 + 5,
        1_048_576 + 6,
        end - 1,
    ] {
        let chunk = s.read(&log, at, 10).await.unwrap();
        let mut whole = b"hello ".to_vec();
        whole.extend_from_slice(&big);
        // One read returns bytes of one message at most: fewer than asked, never others.
        let at = at as usize;
        assert!(!chunk.data.is_empty() && chunk.data.len() <= 10, "at {at}");
        assert_eq!(
            &chunk.data[..],
            &whole[at..at + chunk.data.len()],
            "at {at}"
        );
    }
    assert_eq!(read_all(&s, &log).await.len() as u64, end);
    assert_eq!(
        s.read(&log, end + 1, 1).await.unwrap_err().kind(),
        ErrorKind::InvalidOffset
    );

    // seal; sealed refuses everything with the committed offset
    let sealed = s
        .append(&log, end, Bytes::from_static(b"!"), true)
        .await
        .unwrap();
    assert!(sealed.sealed);
    let err = s
        .append(&log, 0, Bytes::from_static(b"y"), false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.committed()),
        (ErrorKind::Sealed, Some(end + 1))
    );

    // the documented subject layout, readable by any JetStream consumer
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("ENGINE_GATEWAY").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject("egw.data.acme.prod=eu.deploy=log")
        .await
        .unwrap();
    assert_eq!(
        last.headers.get("Egw-Seal").map(|v| v.as_str()),
        Some("true")
    );
    assert_eq!(
        last.headers
            .get("Egw-Offset")
            .map(|v| v.as_str().to_owned()),
        Some(end.to_string())
    );

    // list, delete, recreate
    s.append(&id("acme/prod.eu/a"), 0, Bytes::from_static(b"a"), false)
        .await
        .unwrap();
    s.append(&id("acme/prod.eux/b"), 0, Bytes::from_static(b"b"), false)
        .await
        .unwrap();
    let listed: Vec<String> = s
        .list("acme/prod.eu/", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, ["acme/prod.eu/a", "acme/prod.eu/deploy.log"]);
    s.delete(&log).await.unwrap();
    assert_eq!(s.head(&log).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        s.delete(&log).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.list("acme/prod.eu/", 10).await.unwrap().len(), 1);
    assert_eq!(
        s.append(&log, 0, Bytes::from_static(b"new"), false)
            .await
            .unwrap()
            .offset,
        3
    );
    assert_eq!(read_all(&s, &log).await, b"new");

    // wait: wakes on an append from another task, times out otherwise
    let started = Instant::now();
    s.wait(&log, 3, Duration::from_millis(200)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    let waiter = {
        let s = s.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            s.wait(&log, 3, Duration::from_secs(10)).await.unwrap();
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.append(&log, 3, Bytes::from_static(b"!"), false)
        .await
        .unwrap();
    assert!(waiter.await.unwrap() < Duration::from_secs(5));

    let mut metrics = String::new();
    s.write_metrics(&mut metrics);
    assert!(
        metrics.contains("engine_gateway_store_nats_conflicts_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retried_publish_is_stored_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    let log = id("acme/prod/dedup");
    s.append(&log, 0, Bytes::from_static(b"abc"), false)
        .await
        .unwrap();
    // Replay exactly the message the gateway published (same Msg-Id), as a client retry would.
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("ENGINE_GATEWAY").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject("egw.data.acme.prod.dedup")
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    for name in ["Egw-Offset", "Egw-Created", "Nats-Msg-Id"] {
        headers.insert(name, last.headers.get(name).unwrap().as_str());
    }
    let ack = js
        .publish_with_headers("egw.data.acme.prod.dedup", headers, last.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        ack.duplicate,
        "same Msg-Id inside the window is a duplicate"
    );
    assert_eq!(ack.sequence, last.sequence);
    assert_eq!(s.head(&log).await.unwrap().length, 3);
    assert_eq!(read_all(&s, &log).await, b"abc");
}

#[tokio::test]
async fn two_replicas_never_interleave() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, b) = (store(&server).await, store(&server).await);
    let log = id("acme/prod/race");

    // Exact answers: each replica's hint is stale in turn.
    assert_eq!(
        a.append(&log, 0, Bytes::from_static(b"aaaaa"), false)
            .await
            .unwrap()
            .offset,
        5
    );
    let err = b
        .append(&log, 0, Bytes::from_static(b"bbb"), false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.committed()),
        (ErrorKind::Conflict, Some(5))
    );
    assert_eq!(
        b.append(&log, 5, Bytes::from_static(b"bbb"), false)
            .await
            .unwrap()
            .offset,
        8
    );
    let err = a
        .append(&log, 5, Bytes::from_static(b"AA"), false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.committed()),
        (ErrorKind::Conflict, Some(8))
    );
    // Same offset, same hint, different bytes: the Msg-Id collides, the loser must not win.
    assert_eq!(
        a.append(&log, 8, Bytes::from_static(b"x"), false)
            .await
            .unwrap()
            .offset,
        9
    );
    let err = b
        .append(&log, 8, Bytes::from_static(b"y"), false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.committed()),
        (ErrorKind::Conflict, Some(9))
    );

    // A real race: 2 replicas × 4 writers, 16-byte records; every won offset once, no tearing.
    let race = id("acme/prod/race2");
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            let (mut offset, mut won) = (0u64, 0u8);
            while won < 10 {
                let mut record = vec![w; 16];
                record[15] = won;
                match s.append(&race, offset, Bytes::from(record), false).await {
                    Ok(done) => {
                        assert_eq!(done.offset, offset + 16);
                        offset = done.offset;
                        won += 1;
                    }
                    Err(err) if err.kind() == ErrorKind::Conflict => {
                        let committed = err.committed().unwrap();
                        assert!(committed % 16 == 0 && committed != offset, "{err}");
                        offset = committed;
                    }
                    Err(err) => panic!("writer {w}: {err}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let data = read_all(&a, &race).await;
    assert_eq!(data.len(), 8 * 10 * 16);
    let mut next = [0u8; 8];
    for record in data.chunks(16) {
        let w = record[0];
        assert!(
            record[..15].iter().all(|&x| x == w),
            "torn record {record:?}"
        );
        assert_eq!(record[15], next[usize::from(w)]);
        next[usize::from(w)] += 1;
    }
}

#[tokio::test]
async fn a_fresh_instance_recovers_everything_from_jetstream() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let log = id("acme/prod/recover");
    {
        let s = store(&server).await;
        s.append(&log, 0, Bytes::from_static(b"one "), false)
            .await
            .unwrap();
        s.append(&log, 4, Bytes::from_static(b"two"), true)
            .await
            .unwrap();
        s.close().await.unwrap();
        assert_eq!(
            s.head(&log).await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
    }
    let s = store(&server).await;
    let info = s.head(&log).await.unwrap();
    assert_eq!((info.length, info.sealed), (7, true));
    assert!(info.created > 0 && info.updated >= info.created);
    assert_eq!(read_all(&s, &log).await, b"one two");
    let err = s
        .append(&log, 7, Bytes::from_static(b"x"), false)
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.committed()), (ErrorKind::Sealed, Some(7)));
}

#[tokio::test]
async fn survives_a_server_restart_without_losing_acknowledged_bytes() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    let log = id("acme/prod/restart");
    let mut acked = Vec::new();
    for i in 0..20u8 {
        let chunk = vec![i; 100];
        s.append(&log, acked.len() as u64, Bytes::from(chunk.clone()), false)
            .await
            .unwrap();
        acked.extend_from_slice(&chunk);
    }
    server.kill();
    let err = s
        .append(
            &log,
            acked.len() as u64,
            Bytes::from_static(b"lost?"),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(s.ready().await.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(
        s.head(&log).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );

    server.restart();
    // The same store reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let info = loop {
        match s.head(&log).await {
            Ok(info) => break info,
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
                assert!(Instant::now() < deadline, "no reconnection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The refused append may or may not have reached the server before it died; either way
    // everything acknowledged is there, in order, and the stream goes on from HEAD.
    assert!(info.length == acked.len() as u64 || info.length == acked.len() as u64 + 5);
    let data = read_all(&s, &log).await;
    assert_eq!(&data[..acked.len()], &acked[..]);
    s.append(&log, info.length, Bytes::from_static(b"more"), false)
        .await
        .unwrap();
    s.ready().await.unwrap();
}

#[tokio::test]
async fn an_incompatible_stream_is_refused_at_connect() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "ENGINE_GATEWAY".into(),
        subjects: vec!["egw.data.>".into()],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = NatsStore::connect(server.config()).await.err().unwrap();
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Internal, "{message}");
    assert!(
        message.contains("incompatible") && message.contains("memory"),
        "{message}"
    );
    assert!(message.contains("discard policy"), "{message}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_at_connect() {
    let mut config = engine_gateway::store::nats::NatsConfig::from_url(&format!(
        "nats://127.0.0.1:{}",
        common_nats::free_port()
    ))
    .unwrap();
    config.connect_timeout = Duration::from_millis(500);
    let err = NatsStore::connect(config).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(engine_gateway::store::nats::NatsConfig::from_url("http://x:1").is_err());
    let two = engine_gateway::store::nats::NatsConfig::from_url("nats://a:1, nats://b:2").unwrap();
    assert_eq!(two.urls, ["nats://a:1", "nats://b:2"]);
}

/// Two replicas' token stores on one bucket (each on its own connection).
async fn two_token_stores(
    server: &NatsServer,
) -> (
    engine_gateway::store::nats::tokens::NatsTokenStore,
    engine_gateway::store::nats::tokens::NatsTokenStore,
) {
    use engine_gateway::store::nats::tokens::NatsTokenStore;
    let (a, b) = (store(server).await, store(server).await);
    let bucket = server.config().bucket;
    let ta = NatsTokenStore::open(&a, &bucket).await.unwrap();
    let tb = NatsTokenStore::open(&b, &bucket).await.unwrap();
    (ta, tb)
}

/// A token of org acme with `role`, no expiry.
fn acme(role: engine_gateway::auth::Role) -> engine_gateway::auth::NewToken {
    engine_gateway::auth::NewToken {
        org: Some("acme".into()),
        cluster: None,
        role,
        ttl: None,
    }
}

#[tokio::test]
async fn a_token_created_on_one_replica_works_on_another() {
    use engine_gateway::auth::{Role, TokenStore};
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (ta, tb) = two_token_stores(&server).await;
    assert!(tb.is_empty().await.unwrap());
    let (record, secret) = ta.create(acme(Role::Reader)).await.unwrap();
    let seen = tb.get(&record.id).await.unwrap().unwrap();
    // `egw_<16 hex id>_<secret>`; the secret itself may contain '_'.
    let secret_part = &secret.expose()[engine_gateway::auth::TOKEN_PREFIX.len() + 17..];
    assert!(seen.secret_matches(secret_part));
    assert_eq!(
        (seen.role, seen.org.as_deref()),
        (Role::Reader, Some("acme"))
    );
    assert!(!ta.is_empty().await.unwrap());
    let revoked = tb.revoke(&record.id).await.unwrap();
    let again = ta.revoke(&record.id).await.unwrap();
    assert_eq!(
        again.revoked, revoked.revoked,
        "the first revocation time is kept"
    );
    assert!(ta.get(&record.id).await.unwrap().unwrap().revoked.is_some());
    assert_eq!(ta.list().await.unwrap().len(), 1);
    assert!(ta.get("0123456789abcdef").await.unwrap().is_none());
    assert!(ta.get("not-an-id").await.unwrap().is_none());
}

#[tokio::test]
async fn token_lookups_follow_the_bucket_watch_and_never_answer_from_a_copy_while_disconnected() {
    use engine_gateway::auth::{Role, TokenStore};
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let (ta, tb) = two_token_stores(&server).await;
    let (record, _secret) = ta.create(acme(Role::Deployer)).await.unwrap();
    assert!(tb.get(&record.id).await.unwrap().unwrap().revoked.is_none());
    // Revoked through one replica: the other's watch delivers it, observed within a bound.
    ta.revoke(&record.id).await.unwrap();
    let revoked = Instant::now();
    while tb.get(&record.id).await.unwrap().unwrap().revoked.is_none() {
        assert!(
            revoked.elapsed() < Duration::from_secs(3),
            "the other replica still saw the token live"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "revocation reached the other replica in {:?}",
        revoked.elapsed()
    );
    // NATS gone: no lookup is answered from the copy (it could miss a revocation).
    server.kill();
    let down = Instant::now();
    loop {
        match tb.get(&record.id).await {
            Err(err) => {
                eprintln!(
                    "lookups refused {:?} after the server died: {err}",
                    down.elapsed()
                );
                break;
            }
            Ok(_) => assert!(
                down.elapsed() < Duration::from_secs(5),
                "lookups were still answered {:?} after the server died",
                down.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn thread_connections(store: &NatsStore) -> String {
    let mut out = String::new();
    store.write_metrics(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix("engine_gateway_store_nats_thread_connections "))
        .unwrap()
        .to_owned()
}

/// A single-threaded runtime (as each connection thread of the gateway is) gets a connection
/// of its own for its publishes: the first append goes over the shared one and starts it, the
/// next ones use it once it is up, and everything reads back in order.
#[tokio::test(flavor = "current_thread")]
async fn a_single_threaded_runtime_publishes_over_its_own_connection() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    let log = id("acme/prod/own-connection.log");
    assert_eq!(thread_connections(&s), "0");
    let mut want = Vec::new();
    let piece = |i: usize| Bytes::from(format!("line {i}\n"));
    s.append(&log, 0, piece(0), false).await.unwrap();
    want.extend_from_slice(&piece(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while thread_connections(&s) != "1" {
        assert!(
            Instant::now() < deadline,
            "no connection of the runtime's own came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..50 {
        let at = want.len() as u64;
        let appended = s.append(&log, at, piece(i), false).await.unwrap();
        want.extend_from_slice(&piece(i));
        assert_eq!(appended.offset, want.len() as u64);
    }
    assert_eq!(read_all(&s, &log).await, want);
    // a second instance (another replica) sees the same bytes
    assert_eq!(read_all(&store(&server).await, &log).await, want);
    assert_eq!(thread_connections(&s), "1");
}

/// Publishes from the multi-thread runtime go over the shared connection: no other is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_thread_runtime_publishes_over_the_shared_connection() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let s = store(&server).await;
    let log = id("acme/prod/shared-connection.log");
    for i in 0..20u64 {
        s.append(&log, i, Bytes::from_static(b"x"), false)
            .await
            .unwrap();
    }
    assert_eq!(read_all(&s, &log).await, vec![b'x'; 20]);
    assert_eq!(thread_connections(&s), "0");
}
