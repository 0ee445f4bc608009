//! [`TokenStore`] on a JetStream key-value bucket, so a token created through any gateway
//! replica works on all of them at once.
//!
//! One key per token (its 16-hex id), the value the JSON [`TokenRecord`] (hash only, never the
//! secret). Creation is `create` (fails if the key exists); revocation is a compare-and-set on
//! the key's revision, so two replicas revoking at once keep the first revocation time.
//!
//! **Lookups come from a watched copy of the bucket**, not one bucket read per request (a
//! round trip that cost nats-server as much CPU as the data's publish did, measured in
//! bench/nats.sh). A KV watch delivers every change to every replica as it is stored, so a
//! revocation anywhere reaches all replicas in about a message's latency. The copy is only
//! trusted while it is known complete: the connection is up and, at most [`FRESH`] ago, the
//! bucket's last sequence was found applied. Otherwise (starting, disconnected, a watch that
//! stalls or fell behind) every lookup reads the bucket, as before. Ids not in the copy are
//! read from the bucket too (never cached as unknown); a record this replica reads or writes
//! itself enters the copy at once, by revision, so its own revocations apply on the next call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::kv;
use async_nats::jetstream::kv::UpdateErrorKind;
use futures_util::{StreamExt as _, TryStreamExt as _};

use super::NatsStore;
use crate::auth::{NewToken, Secret, TokenError, TokenRecord, TokenStore};
use crate::store::unix_now;

/// Compare-and-set attempts of a revocation racing with other writers.
const MAX_CAS_ATTEMPTS: usize = 8;
/// How often the watch checks that it has applied the bucket's last sequence.
const VERIFY_INTERVAL: Duration = Duration::from_millis(500);
/// The copy serves lookups only this long after it was last found complete.
const FRESH: Duration = Duration::from_secs(2);
/// Pause before a failed watch is started again.
const REWATCH_PAUSE: Duration = Duration::from_secs(1);
/// Records the copy holds at most (~300 bytes each, as the file store's parse cache); lookups of
/// others read the bucket.
const MAX_CACHED: usize = crate::auth::CACHE_CAPACITY;

/// Tokens in the bucket named by [`NatsConfig::bucket`](super::NatsConfig::bucket).
#[derive(Clone)]
pub struct NatsTokenStore {
    kv: kv::Store,
    /// Bucket name, for error messages.
    bucket: String,
    /// The watched copy; its watch task ends when the last clone of the store is dropped.
    mirror: Arc<Mirror>,
}

/// The bucket as the watch has delivered it.
struct Mirror {
    client: async_nats::Client,
    /// Latest known revision of each key; `None` for a deleted key.
    records: Mutex<HashMap<String, (u64, Option<TokenRecord>)>>,
    /// Highest stream sequence the watch has applied.
    applied: AtomicU64,
    /// When the copy was last found complete.
    verified: Mutex<Option<Instant>>,
}

impl Mirror {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Option<TokenRecord>)>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the copy may answer lookups now.
    fn fresh(&self) -> bool {
        matches!(self.client.connection_state(), State::Connected)
            && self.verified().is_some_and(|at| at.elapsed() < FRESH)
    }

    /// The record of `id` when the copy is fresh and holds it: `Some(None)` for a deleted
    /// key, `None` when the bucket must be asked.
    fn lookup(&self, id: &str) -> Option<Option<TokenRecord>> {
        if !self.fresh() {
            return None;
        }
        self.records().get(id).map(|(_, record)| record.clone())
    }

    /// Keeps `record` as `id`'s value at `revision` unless a newer revision is known.
    fn learn(&self, id: &str, revision: u64, record: Option<TokenRecord>) {
        let mut records = self.records();
        let room = records.len() < MAX_CACHED;
        match records.get_mut(id) {
            Some(known) if known.0 >= revision => {}
            Some(known) => *known = (revision, record),
            None if room => {
                records.insert(id.to_owned(), (revision, record));
            }
            None => {}
        }
    }

    /// Forgets `id` (a value that did not parse: lookups read the bucket and report it).
    fn forget(&self, id: &str) {
        self.records().remove(id);
    }
}

/// Applies the bucket's changes to the copy for as long as the store exists; restarts a watch
/// that fails, and marks the copy complete whenever it has applied the bucket's last sequence.
async fn watch(kv: kv::Store, bucket: String, mirror: Weak<Mirror>) {
    loop {
        let mut changes = match kv.watch_with_history(">").await {
            Ok(changes) => changes,
            Err(err) => {
                tracing::info!(bucket = %bucket, error = %err, "token watch could not start; lookups read the bucket");
                tokio::time::sleep(REWATCH_PAUSE).await;
                if mirror.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let mut verify = tokio::time::interval(VERIFY_INTERVAL);
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.next() => {
                    let Some(mirror) = mirror.upgrade() else { return };
                    match change {
                        Some(Ok(entry)) => apply(&mirror, &bucket, &entry),
                        Some(Err(err)) => {
                            tracing::info!(bucket = %bucket, error = %err, "token watch failed; restarting it");
                            break;
                        }
                        None => break,
                    }
                }
                _ = verify.tick() => {
                    if mirror.strong_count() == 0 {
                        return;
                    }
                    let status = kv.status().await;
                    let Some(mirror) = mirror.upgrade() else { return };
                    if let Ok(status) = status
                        && mirror.applied.load(Ordering::Acquire) >= status.info.state.last_sequence
                    {
                        *mirror.verified() = Some(Instant::now());
                    }
                }
            }
        }
        if let Some(mirror) = mirror.upgrade() {
            *mirror.verified() = None;
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// One delivered change.
fn apply(mirror: &Mirror, bucket: &str, entry: &kv::Entry) {
    if is_token_id(&entry.key) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<TokenRecord>(&entry.value) {
                Ok(record) => mirror.learn(&entry.key, entry.revision, Some(record)),
                Err(err) => {
                    tracing::warn!(bucket = %bucket, key = %entry.key, error = %err, "token record does not parse");
                    mirror.forget(&entry.key);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                mirror.learn(&entry.key, entry.revision, None);
            }
        }
    }
    mirror.applied.fetch_max(entry.revision, Ordering::AcqRel);
}

impl NatsTokenStore {
    /// Opens the bucket `NatsStore::connect` created or checked, and starts watching it.
    pub async fn open(store: &NatsStore, bucket: &str) -> Result<Self, TokenError> {
        let tokens = Self::open_unwatched(store, bucket).await?;
        tokio::spawn(watch(
            tokens.kv.clone(),
            bucket.to_owned(),
            Arc::downgrade(&tokens.mirror),
        ));
        Ok(tokens)
    }

    /// Opens the bucket without a watch, for a one-shot `token` command: its copy never
    /// becomes complete, so every lookup reads the bucket (no replay of the whole bucket).
    pub async fn open_unwatched(store: &NatsStore, bucket: &str) -> Result<Self, TokenError> {
        let kv = store
            .jetstream()
            .get_key_value(bucket)
            .await
            .map_err(|err| backend(bucket, "open bucket", err))?;
        let mirror = Arc::new(Mirror {
            client: store.client().clone(),
            records: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            verified: Mutex::new(None),
        });
        Ok(NatsTokenStore {
            kv,
            bucket: bucket.to_owned(),
            mirror,
        })
    }

    /// Reads `id` from the bucket (not the copy), and teaches the copy what it found.
    async fn read(&self, id: &str) -> Result<Option<(TokenRecord, u64)>, TokenError> {
        let entry = self
            .kv
            .entry(id)
            .await
            .map_err(|err| backend(&self.bucket, "get", err))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            self.mirror.learn(id, entry.revision, None);
            return Ok(None);
        }
        let record = self.parse(id, &entry.value)?;
        self.mirror.learn(id, entry.revision, Some(record.clone()));
        Ok(Some((record, entry.revision)))
    }

    fn parse(&self, id: &str, value: &[u8]) -> Result<TokenRecord, TokenError> {
        serde_json::from_slice(value).map_err(|err| TokenError::Corrupt {
            path: self.path(id),
            reason: err.to_string(),
        })
    }

    fn encode(&self, record: &TokenRecord) -> Result<bytes::Bytes, TokenError> {
        serde_json::to_vec(record)
            .map(bytes::Bytes::from)
            .map_err(|err| TokenError::Corrupt {
                path: self.path(&record.id),
                reason: err.to_string(),
            })
    }

    /// A path-like name of a record, for the `Corrupt` error.
    fn path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("nats-kv://{}/{id}", self.bucket))
    }
}

/// Whether `id` has the shape of a token id (16 lowercase hex), so it is a valid key.
fn is_token_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A bucket failure: NATS or the bucket cannot answer right now.
fn backend(bucket: &str, what: &str, err: impl std::fmt::Display) -> TokenError {
    TokenError::Unavailable(format!("nats bucket {bucket}: {what}: {err}"))
}

#[async_trait::async_trait]
impl TokenStore for NatsTokenStore {
    async fn create(&self, new: NewToken) -> Result<(TokenRecord, Secret), TokenError> {
        let (record, secret) = new.mint()?;
        let value = self.encode(&record)?;
        self.kv
            .create(&record.id, value)
            .await
            .map_err(|err| backend(&self.bucket, "create", err))?;
        Ok((record, secret))
    }

    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        if !is_token_id(id) {
            return Ok(None);
        }
        if let Some(known) = self.mirror.lookup(id) {
            return Ok(known);
        }
        Ok(self.read(id).await?.map(|(record, _)| record))
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|err| backend(&self.bucket, "list", err))?
            .try_collect()
            .await
            .map_err(|err| backend(&self.bucket, "list", err))?;
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(record) = self.get(&key).await? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(records)
    }

    async fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError> {
        if !is_token_id(id) {
            return Err(TokenError::InvalidId(id.to_owned()));
        }
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((mut record, revision)) = self.read(id).await? else {
                return Err(TokenError::NotFound(id.to_owned()));
            };
            if record.revoked.is_some() {
                return Ok(record);
            }
            record.revoked = Some(unix_now());
            let value = self.encode(&record)?;
            match self.kv.update(id, value, revision).await {
                Ok(new_revision) => {
                    // This replica sees its own revocation on the very next lookup.
                    self.mirror.learn(id, new_revision, Some(record.clone()));
                    return Ok(record);
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(err) => return Err(backend(&self.bucket, "revoke", err)),
            }
        }
        Err(backend(&self.bucket, "revoke", "the record kept changing"))
    }

    async fn is_empty(&self) -> Result<bool, TokenError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|err| backend(&self.bucket, "list", err))?;
        let first = keys
            .try_next()
            .await
            .map_err(|err| backend(&self.bucket, "list", err))?;
        Ok(first.is_none())
    }
}
