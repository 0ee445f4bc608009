//! [`TokenStore`] on a JetStream key-value bucket, so a token created through any gateway
//! replica works on all of them at once.
//!
//! One key per token (its 16-hex id), the value the JSON [`TokenRecord`] (hash only, never the
//! secret). Creation is `create` (fails if the key exists); revocation is a compare-and-set on
//! the key's revision, so two replicas revoking at once keep the first revocation time. `get`
//! reads the bucket every time (no cache), which is what the trait's contract asks.

use std::path::PathBuf;

use async_nats::jetstream::kv;
use async_nats::jetstream::kv::UpdateErrorKind;
use futures_util::TryStreamExt as _;

use super::NatsStore;
use crate::auth::{NewToken, Secret, TokenError, TokenRecord, TokenStore};
use crate::store::unix_now;

/// Compare-and-set attempts of a revocation racing with other writers.
const MAX_CAS_ATTEMPTS: usize = 8;

/// Tokens in the bucket named by [`NatsConfig::bucket`](super::NatsConfig::bucket).
#[derive(Clone)]
pub struct NatsTokenStore {
    kv: kv::Store,
    /// Bucket name, for error messages.
    bucket: String,
}

impl NatsTokenStore {
    /// Opens the bucket `NatsStore::connect` created or checked.
    pub async fn open(store: &NatsStore, bucket: &str) -> Result<Self, TokenError> {
        let kv = store
            .jetstream()
            .get_key_value(bucket)
            .await
            .map_err(|err| backend(bucket, "open bucket", err))?;
        Ok(NatsTokenStore {
            kv,
            bucket: bucket.to_owned(),
        })
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
        match self.kv.get(id).await {
            Ok(Some(value)) => self.parse(id, &value).map(Some),
            Ok(None) => Ok(None),
            Err(err) => Err(backend(&self.bucket, "get", err)),
        }
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
            let entry = self
                .kv
                .entry(id)
                .await
                .map_err(|err| backend(&self.bucket, "get", err))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Err(TokenError::NotFound(id.to_owned()));
            };
            let mut record = self.parse(id, &entry.value)?;
            if record.revoked.is_some() {
                return Ok(record);
            }
            record.revoked = Some(unix_now());
            let value = self.encode(&record)?;
            match self.kv.update(id, value, entry.revision).await {
                Ok(_) => return Ok(record),
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
