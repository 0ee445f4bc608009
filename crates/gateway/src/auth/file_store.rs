//! [`TokenStore`] on plain files: one JSON record per token in `DATA_DIR/tokens/<id>.json`, so
//! the server and the `token` CLI can share it while the server runs (redb locks its file).
//!
//! **Architecture invariant:** a revocation or expiry written by any process is seen on the next
//! request: the in-memory cache is only a parse cache, re-validated by one `stat` per lookup
//! against the file's (mtime, ctime, len, inode). Unknown ids are never cached. A lookup that
//! hits the cache (the `stat` matches) runs on the caller's thread; reads and parses run on
//! the lookup thread.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use super::Role;
use super::tokens::{NewToken, Secret, TokenError, TokenRecord, TokenStore, is_token_id, unix_now};

/// Most records kept parsed in memory; beyond this an arbitrary entry is evicted.
pub const CACHE_CAPACITY: usize = 10_000;
/// Largest record file accepted; real ones are ~250 bytes.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Name of the file `bootstrap_admin` writes the first admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Tokens as files under `DATA_DIR/tokens/` (mode 0700; files 0600, written atomically).
#[derive(Clone)]
pub struct FileTokenStore {
    inner: Arc<Inner>,
    /// Queue of the one thread that serves `get`: per-request lookups (a `stat`, sometimes a
    /// read) on a fixed thread rather than the blocking pool, whose threads (stacks, allocator
    /// caches) would come and go with load.
    lookups: SyncSender<(String, LookupReply)>,
}

/// Where the lookup thread sends one answer.
type LookupReply = tokio::sync::oneshot::Sender<Result<Option<TokenRecord>, TokenError>>;

/// Lookups queued for the lookup thread at most; beyond, they go to the blocking pool.
const LOOKUP_QUEUE: usize = 1024;

/// Starts the lookup thread; it ends when the last clone of the store (its sender) is dropped.
fn spawn_lookups(inner: Arc<Inner>) -> Result<SyncSender<(String, LookupReply)>, TokenError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, LookupReply)>(LOOKUP_QUEUE);
    std::thread::Builder::new()
        .name("egw-token-lookup".into())
        .spawn(move || {
            for (id, reply) in rx {
                let _ = reply.send(inner.get(&id));
            }
        })
        .map_err(|e| TokenError::Task(format!("starting the token lookup thread: {e}")))?;
    Ok(tx)
}

/// Creates the first admin token when the store holds none at all, and writes the full token
/// to `DATA_DIR/admin.token` (mode 0600, atomically). Returns that path, or `None` when the
/// store already had tokens.
///
/// If writing the file fails the token exists but is unknown to anyone; an operator with
/// access to the data dir can still create an admin token with the CLI.
pub async fn bootstrap_admin(
    store: &dyn TokenStore,
    data_dir: &Path,
) -> Result<Option<PathBuf>, TokenError> {
    if !store.is_empty().await? {
        return Ok(None);
    }
    let new = NewToken {
        org: None,
        cluster: None,
        role: Role::Admin,
        ttl: None,
    };
    let (_record, secret) = store.create(new).await?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let target = path.clone();
    run_blocking(move || {
        let mut text = secret.expose().as_bytes().to_vec();
        text.push(b'\n');
        write_atomic(&target, &text, 0o600)
    })
    .await?;
    Ok(Some(path))
}

impl FileTokenStore {
    /// Opens (creating if needed, mode 0700) `data_dir/tokens`.
    pub async fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let dir = data_dir.join("tokens");
        let inner = Inner {
            dir: dir.clone(),
            cache: Mutex::new(HashMap::new()),
        };
        run_blocking(move || {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create directory", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("set permissions of", &dir))
        })
        .await?;
        let inner = Arc::new(inner);
        let lookups = spawn_lookups(Arc::clone(&inner))?;
        Ok(FileTokenStore { inner, lookups })
    }

    /// The directory holding the record files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn with_inner<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, TokenError> + Send + 'static,
    ) -> Result<T, TokenError> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || f(&inner)).await
    }
}

#[async_trait::async_trait]
impl TokenStore for FileTokenStore {
    async fn create(&self, new: NewToken) -> Result<(TokenRecord, Secret), TokenError> {
        self.with_inner(move |inner| {
            // 64 random bits make a collision unlikely; retry anyway rather than overwrite.
            for _ in 0..4 {
                let (record, secret) = new.clone().mint()?;
                let path = inner.path(&record.id);
                if !path.try_exists().map_err(io_err("check", &path))? {
                    inner.write(&record)?;
                    return Ok((record, secret));
                }
            }
            Err(TokenError::Task("could not find a free token id".into()))
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        if !is_token_id(id) {
            return Ok(None);
        }
        // The common case, a known token whose file did not change: one `stat` of an inode
        // the kernel has cached (about a microsecond), here rather than a round trip to the
        // lookup thread (two thread wake-ups per request, a third of the CPU of a small PATCH).
        if let Some(record) = self.inner.unchanged(id) {
            return Ok(Some(record));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.lookups.try_send((id.to_owned(), reply)) {
            Ok(()) => answer
                .await
                .map_err(|_| TokenError::Task("the token lookup thread stopped".into()))?,
            // A full queue (or no thread): the blocking pool takes the overflow.
            Err(TrySendError::Full((id, _)) | TrySendError::Disconnected((id, _))) => {
                self.with_inner(move |inner| inner.get(&id)).await
            }
        }
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        self.with_inner(|inner| {
            let mut records = Vec::new();
            for id in inner.ids()? {
                if let Some((record, _)) = inner.read(&id)? {
                    records.push(record);
                }
            }
            records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
            Ok(records)
        })
        .await
    }

    async fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError> {
        if !is_token_id(id) {
            return Err(TokenError::InvalidId(id.chars().take(40).collect()));
        }
        let id = id.to_owned();
        self.with_inner(move |inner| {
            let Some((mut record, _)) = inner.read(&id)? else {
                return Err(TokenError::NotFound(id));
            };
            if record.revoked.is_none() {
                record.revoked = Some(unix_now());
                inner.write(&record)?;
            }
            inner.lock().remove(&id);
            Ok(record)
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, TokenError> {
        self.with_inner(|inner| Ok(inner.ids()?.is_empty())).await
    }
}

/// Shared state of a [`FileTokenStore`], used from blocking threads.
struct Inner {
    /// `DATA_DIR/tokens`.
    dir: PathBuf,
    /// Parsed records of files seen before, with the file identity they were parsed from, so
    /// a lookup costs one `stat` instead of open + read + JSON parse.
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    /// The file identity the record was read from; any change means re-read.
    stamp: Stamp,
    record: TokenRecord,
}

/// What identifies one version of a record file. Every write is a new file renamed into
/// place, so the inode changes; mtime/ctime/len guard against inode reuse.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Inner {
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached record of `id` if its file is still the one it was parsed from; `None` when
    /// not cached, changed, gone or unreadable ([`Inner::get`] then finds out which).
    fn unchanged(&self, id: &str) -> Option<TokenRecord> {
        let (cached, record) = self.lock().get(id).map(|c| (c.stamp, c.record.clone()))?;
        let stamp = Stamp::of(&fs::metadata(self.path(id)).ok()?);
        (stamp == cached).then_some(record)
    }

    fn get(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        let path = self.path(id);
        let stamp = match fs::metadata(&path) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.lock().remove(id);
                return Ok(None);
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        if let Some(hit) = self.lock().get(id).filter(|c| c.stamp == stamp) {
            return Ok(Some(hit.record.clone()));
        }
        let Some((record, stamp)) = self.read(id)? else {
            self.lock().remove(id);
            return Ok(None);
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY
            && !cache.contains_key(id)
            && let Some(victim) = cache.keys().next().cloned()
        {
            cache.remove(&victim);
        }
        let cached = Cached {
            stamp,
            record: record.clone(),
        };
        cache.insert(id.to_owned(), cached);
        Ok(Some(record))
    }

    /// Reads and checks one record, with the identity of the file it was read from.
    fn read(&self, id: &str) -> Result<Option<(TokenRecord, Stamp)>, TokenError> {
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let meta = file.metadata().map_err(io_err("stat", &path))?;
        let corrupt = |reason: String| TokenError::Corrupt {
            path: path.clone(),
            reason,
        };
        if meta.len() > MAX_RECORD_BYTES {
            return Err(corrupt(format!("larger than {MAX_RECORD_BYTES} bytes")));
        }
        let mut text = Vec::new();
        file.take(MAX_RECORD_BYTES)
            .read_to_end(&mut text)
            .map_err(io_err("read", &path))?;
        let record: TokenRecord =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        record.validate().map_err(&corrupt)?;
        if record.id != id {
            return Err(corrupt("id does not match the file name".into()));
        }
        Ok(Some((record, Stamp::of(&meta))))
    }

    fn write(&self, record: &TokenRecord) -> Result<(), TokenError> {
        let path = self.path(&record.id);
        let mut text = serde_json::to_vec_pretty(record).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(&path, &text, 0o600)
    }

    /// Ids of all record files (temporary files and strays are skipped).
    fn ids(&self) -> Result<Vec<String>, TokenError> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(".json"));
            if let Some(id) = id.filter(|id| is_token_id(id)) {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

/// Writes `bytes` to `path` atomically and durably: a new temporary file with `mode` in the
/// same directory, fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TokenError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(TokenError::Random)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", u64::from_ne_bytes(nonce)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename to", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TokenError> + Send + 'static,
) -> Result<T, TokenError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TokenError::Task(e.to_string()))?
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
