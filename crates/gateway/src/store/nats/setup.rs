//! Connecting to NATS and making sure the JetStream stream and bucket exist with settings the
//! gateway can rely on.

use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{ConnectOptions, Event, ServerAddr};

use super::codec::Subjects;
use super::{Credentials, MAX_MESSAGE_PAYLOAD, NatsConfig};
use crate::store::StoreError;

/// Messages a core subscription (a `wait`) may buffer before NATS drops them for it; a waiter
/// only needs the first one.
const SUBSCRIPTION_CAPACITY: usize = 256;
/// JetStream de-duplication window: retries of one publish within it are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Largest message the stream accepts: the payload plus room for headers.
const MAX_MESSAGE_SIZE: i32 = (MAX_MESSAGE_PAYLOAD + 64 * 1024) as i32;

/// Connects and ensures the stream and bucket; returns the client, context and stream handle.
pub(super) async fn connect(
    config: &NatsConfig,
) -> Result<(async_nats::Client, jetstream::Context, stream::Stream), StoreError> {
    if config.replicas != 1 && config.replicas != 3 {
        return Err(StoreError::internal(format!(
            "nats replicas must be 1 or 3, not {}",
            config.replicas
        )));
    }
    let addrs = addrs(config)?;
    let client = dial(config, addrs, "engine-gateway").await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .build(client.clone());
    ensure_stream(&js, config).await?;
    ensure_bucket(&js, config).await?;
    // The data path works in short attempts (retried until request_timeout, see retry.rs);
    // setup above keeps the long timeout, as creating an R3 stream may take seconds.
    let data = data_context(config, &client);
    let stream = data
        .get_stream(&config.stream)
        .await
        .map_err(|err| StoreError::unavailable(format!("nats: stream info: {err}")))?;
    Ok((client, data, stream))
}

/// A connection that only publishes (`publishers.rs`): the stream and bucket exist already.
pub(super) async fn connect_publisher(
    config: &NatsConfig,
) -> Result<(async_nats::Client, jetstream::Context), StoreError> {
    let addrs = addrs(config)?;
    let client = dial(config, addrs, "engine-gateway-publisher").await?;
    let js = data_context(config, &client);
    Ok((client, js))
}

fn addrs(config: &NatsConfig) -> Result<Vec<ServerAddr>, StoreError> {
    config
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|err| StoreError::internal(format!("nats url {u:?}: {err}")))
        })
        .collect()
}

/// The data path's context: short attempts, retried until `request_timeout` (retry.rs).
fn data_context(config: &NatsConfig, client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.attempt_timeout.min(config.request_timeout))
        .build(client.clone())
}

/// Connects within `connect_timeout`, the connection named `name` (it shows in the server's
/// connection list and in the client's log lines).
async fn dial(
    config: &NatsConfig,
    addrs: Vec<ServerAddr>,
    name: &'static str,
) -> Result<async_nats::Client, StoreError> {
    let options = options(config, name).await?;
    tokio::time::timeout(config.connect_timeout, options.connect(addrs))
        .await
        .map_err(|_| {
            StoreError::unavailable(format!(
                "nats: no server of {} answered within {:?}",
                config.urls.join(","),
                config.connect_timeout
            ))
        })?
        .map_err(|err| StoreError::unavailable(format!("nats: connect: {err}")))
}

async fn options(config: &NatsConfig, name: &'static str) -> Result<ConnectOptions, StoreError> {
    let mut options =
        match &config.credentials {
            Credentials::None => ConnectOptions::new(),
            Credentials::Token(token) => ConnectOptions::with_token(token.clone()),
            Credentials::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Credentials::NkeySeed(seed) => ConnectOptions::with_nkey(seed.clone()),
            Credentials::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|err| {
                    StoreError::internal(format!("nats credentials file {}: {err}", path.display()))
                })?,
        };
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options
        .require_tls(config.tls.require)
        .name(name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        // Reconnect forever, with the client's own capped backoff.
        .max_reconnects(None)
        .event_callback(move |event| async move {
            match event {
                Event::Connected => tracing::info!(connection = name, "nats connected"),
                Event::Disconnected => {
                    tracing::warn!(connection = name, "nats disconnected, reconnecting");
                }
                // Lame duck mode, slow consumers, server and client errors.
                other => tracing::warn!(connection = name, event = %other, "nats event"),
            }
        }))
}

/// The stream configuration the gateway creates.
pub(super) fn stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        description: Some("engine-gateway streams, one subject each".into()),
        subjects: vec![Subjects::new(&config.subject_prefix).wildcard()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: config.replicas,
        max_age: config.max_age.unwrap_or_default(),
        max_bytes: config
            .max_bytes
            .and_then(|b| i64::try_from(b).ok())
            .unwrap_or(-1),
        // Refuse new data when full rather than dropping acknowledged data.
        discard: DiscardPolicy::New,
        max_message_size: MAX_MESSAGE_SIZE,
        // JetStream refuses a de-duplication window longer than the messages' max age
        duplicate_window: match config.max_age {
            Some(age) if !age.is_zero() => DUPLICATE_WINDOW.min(age),
            _ => DUPLICATE_WINDOW,
        },
        allow_direct: true,
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<stream::Stream, StoreError> {
    let wanted = stream_config(config);
    match js.get_stream(&config.stream).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|err| StoreError::unavailable(format!("nats: stream info: {err}")))?;
            check_stream(&info.config, &wanted)?;
            Ok(existing)
        }
        Err(err) => match err.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(js_err)
                if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                tracing::info!(stream = %config.stream, replicas = config.replicas, "creating jetstream stream");
                js.create_stream(wanted).await.map_err(|err| {
                    StoreError::unavailable(format!("nats: create stream {}: {err}", config.stream))
                })
            }
            _ => Err(StoreError::unavailable(format!(
                "nats: look up stream {}: {err}",
                config.stream
            ))),
        },
    }
}

/// Refuses an existing stream whose settings would break the gateway's guarantees.
pub(super) fn check_stream(have: &stream::Config, want: &stream::Config) -> Result<(), StoreError> {
    let mut problems = Vec::new();
    if !have.subjects.iter().any(|s| want.subjects.contains(s)) {
        problems.push(format!(
            "subjects {:?}, the gateway needs {:?}",
            have.subjects, want.subjects
        ));
    }
    if have.retention != RetentionPolicy::Limits {
        problems.push("retention is not limits (work-queue or interest streams lose data)".into());
    }
    if have.storage != StorageType::File {
        problems.push("storage is memory, not file".into());
    }
    if have.num_replicas != want.num_replicas {
        problems.push(format!(
            "{} replicas, configured {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.discard != DiscardPolicy::New {
        problems.push("discard policy is old: JetStream would drop acknowledged data".into());
    }
    if have.max_message_size >= 0 && have.max_message_size < want.max_message_size {
        problems.push(format!(
            "max message size {} is below {}",
            have.max_message_size, want.max_message_size
        ));
    }
    if have.duplicate_window.is_zero() {
        problems.push("the de-duplication window is zero".into());
    }
    if have.max_messages_per_subject > 0 {
        problems.push("messages per subject are limited: old chunks would vanish".into());
    }
    if have.deny_purge {
        problems.push("purge is denied: streams cannot be deleted".into());
    }
    if !problems.is_empty() {
        return Err(StoreError::internal(format!(
            "jetstream stream {} exists with incompatible settings: {}; fix or remove it \
             (nats stream edit/rm), or configure another stream name",
            want.name,
            problems.join("; ")
        )));
    }
    if have.max_age != want.max_age || have.max_bytes != want.max_bytes {
        tracing::warn!(
            stream = %want.name,
            max_age_secs = have.max_age.as_secs(),
            max_bytes = have.max_bytes,
            "jetstream stream limits differ from the configuration; keeping the stream's"
        );
    }
    Ok(())
}

async fn ensure_bucket(js: &jetstream::Context, config: &NatsConfig) -> Result<(), StoreError> {
    let backing = format!("KV_{}", config.bucket);
    match js.get_stream(&backing).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|err| StoreError::unavailable(format!("nats: bucket info: {err}")))?;
            if info.config.num_replicas != config.replicas
                || info.config.storage != StorageType::File
            {
                return Err(StoreError::internal(format!(
                    "jetstream bucket {} exists with {} replicas on {:?} storage, configured {} \
                     on file storage; fix or remove it",
                    config.bucket, info.config.num_replicas, info.config.storage, config.replicas
                )));
            }
            Ok(())
        }
        Err(err) => match err.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(js_err)
                if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                tracing::info!(bucket = %config.bucket, "creating jetstream key-value bucket");
                // The backing stream of a key-value bucket, as the KV convention lays it
                // out (created directly: works with JetStream servers from 2.9 on).
                js.create_stream(stream::Config {
                    name: backing.clone(),
                    description: Some("engine-gateway tokens".into()),
                    subjects: vec![format!("$KV.{}.>", config.bucket)],
                    max_messages_per_subject: 1,
                    discard: DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    storage: StorageType::File,
                    num_replicas: config.replicas,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|err| {
                    StoreError::unavailable(format!("nats: create bucket {}: {err}", config.bucket))
                })
            }
            _ => Err(StoreError::unavailable(format!(
                "nats: look up bucket {}: {err}",
                config.bucket
            ))),
        },
    }
}
