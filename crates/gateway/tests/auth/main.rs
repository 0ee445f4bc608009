//! Authentication through the public API on real files in temp dirs. This file: opaque tokens,
//! a file store shared by a "server" and a "CLI" instance, revocation and expiry seen at once,
//! bootstrap of the first admin token. JWTs are in `jwt.rs`.

#![allow(clippy::unwrap_used)]

mod jwt;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engine_gateway::auth::{
    ADMIN_TOKEN_FILE, AuthError, Authenticator, FileTokenStore, NewToken, Role, TokenError,
    TokenStore, bootstrap_admin,
};
use http::HeaderValue;

fn header(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

fn deployer(org: &str, cluster: Option<&str>) -> NewToken {
    NewToken {
        org: Some(org.into()),
        cluster: cluster.map(Into::into),
        role: Role::Deployer,
        ttl: None,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The server and the CLI each open their own store on the same directory.
async fn server_and_cli(dir: &Path) -> (Authenticator, FileTokenStore) {
    let server = FileTokenStore::open(dir).await.unwrap();
    let cli = FileTokenStore::open(dir).await.unwrap();
    (Authenticator::new(Arc::new(server), None), cli)
}

async fn code(auth: &Authenticator, value: &HeaderValue) -> &'static str {
    auth.authenticate(Some(value)).await.unwrap_err().code()
}

#[tokio::test]
async fn revocation_by_another_process_is_seen_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, cli) = server_and_cli(tmp.path()).await;
    let (record, secret) = cli.create(deployer("acme", Some("prod"))).await.unwrap();
    let value = header(secret.expose());
    for _ in 0..3 {
        // The first call reads the file, the next ones hit the cache.
        let p = auth.authenticate(Some(&value)).await.unwrap();
        assert_eq!(
            (p.subject.as_str(), p.role),
            (record.id.as_str(), Role::Deployer)
        );
        assert_eq!(
            (p.org.as_deref(), p.cluster.as_deref()),
            (Some("acme"), Some("prod"))
        );
    }
    let revoked = cli.revoke(&record.id).await.unwrap();
    assert!(revoked.revoked.is_some());
    assert_eq!(code(&auth, &value).await, "token_revoked");
    // Revoking again keeps the first time.
    assert_eq!(
        cli.revoke(&record.id).await.unwrap().revoked,
        revoked.revoked
    );
    let listed = auth.tokens().list().await.unwrap();
    assert_eq!(listed, vec![revoked]);
}

#[tokio::test]
async fn expiry_and_external_edits_are_seen_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, cli) = server_and_cli(tmp.path()).await;
    let mut new = deployer("acme", None);
    new.ttl = Some(Duration::from_secs(3600));
    let (record, secret) = cli.create(new).await.unwrap();
    assert_eq!(record.expires, Some(record.created + 3600));
    let value = header(secret.expose());
    auth.authenticate(Some(&value)).await.unwrap();

    // Another process rewrites the record with an expiry in the past (same length).
    let path = cli.dir().join(format!("{}.json", record.id));
    let edit = |from: u64, to: u64| {
        let text = std::fs::read_to_string(&path).unwrap();
        let tmp_path = path.with_extension("edit");
        std::fs::write(&tmp_path, text.replace(&from.to_string(), &to.to_string())).unwrap();
        std::fs::rename(&tmp_path, &path).unwrap();
    };
    let past = record.created - 3600;
    edit(record.created + 3600, past);
    assert_eq!(code(&auth, &value).await, "token_expired");
    edit(past, record.created + 7200);
    auth.authenticate(Some(&value)).await.unwrap();

    // Deleting the file makes the token unknown.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code(&auth, &value).await, "invalid_token");
}

#[tokio::test]
async fn wrong_secrets_and_malformed_headers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, cli) = server_and_cli(tmp.path()).await;
    let (record, secret) = cli.create(deployer("acme", None)).await.unwrap();
    let token = secret.expose();
    let last = token.chars().last().unwrap();
    let tampered = format!(
        "{}{}",
        &token[..token.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    assert_eq!(code(&auth, &header(&tampered)).await, "invalid_token");
    let unknown = token.replace(&record.id, "0000000000000000");
    assert_eq!(code(&auth, &header(&unknown)).await, "invalid_token");
    let traversal = token.replace(&record.id, "../../etc/passw");
    assert_eq!(code(&auth, &header(&traversal)).await, "malformed_token");
    assert_eq!(
        auth.authenticate(None).await.unwrap_err().code(),
        "missing_token"
    );
    let bad: [&[u8]; 6] = [
        token.as_bytes(),
        b"Bearer",
        b"Bearer egw_",
        b"Token abc",
        "Bearer egw_ü".as_bytes(),
        &[b'a'; 100_000],
    ];
    for value in bad {
        let value = HeaderValue::from_bytes(value).unwrap();
        assert_eq!(code(&auth, &value).await, "malformed_token", "{value:?}");
    }
    // Error messages and Debug output never carry the token.
    let err = auth
        .authenticate(Some(&header(&tampered)))
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?} {record:?} {secret:?}");
    let secret_part = &token[token.len() - 43..];
    assert!(!shown.contains(secret_part), "{shown}");
    // Nor does the stored file.
    let path = cli.dir().join(format!("{}.json", record.id));
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains(secret_part)
    );
    assert_eq!((mode(&path), mode(cli.dir())), (0o600, 0o700));
}

#[tokio::test]
async fn scopes_and_ids_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileTokenStore::open(tmp.path()).await.unwrap();
    let admin_with_org = NewToken {
        role: Role::Admin,
        ..deployer("acme", None)
    };
    let reader_with_cluster = NewToken {
        role: Role::Reader,
        ..deployer("acme", Some("prod"))
    };
    let no_org = NewToken {
        org: None,
        ..deployer("x", None)
    };
    for new in [
        admin_with_org,
        reader_with_cluster,
        no_org,
        deployer("a/b", None),
    ] {
        let err = store.create(new.clone()).await.unwrap_err();
        assert!(matches!(err, TokenError::Scope(_)), "{new:?}: {err}");
    }
    let zero_ttl = NewToken {
        ttl: Some(Duration::ZERO),
        ..deployer("acme", None)
    };
    assert!(matches!(
        store.create(zero_ttl).await,
        Err(TokenError::Ttl(_))
    ));
    assert!(store.is_empty().await.unwrap());
    assert!(store.get("../../../etc/passwd").await.unwrap().is_none());
    assert!(matches!(
        store.revoke("../x").await,
        Err(TokenError::InvalidId(_))
    ));
    let unknown = store.revoke("0123456789abcdef").await;
    assert!(matches!(unknown, Err(TokenError::NotFound(_))));
}

#[tokio::test]
async fn corrupt_record_is_a_storage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, cli) = server_and_cli(tmp.path()).await;
    let (record, secret) = cli.create(deployer("acme", None)).await.unwrap();
    std::fs::write(cli.dir().join(format!("{}.json", record.id)), b"{not json").unwrap();
    let err = auth
        .authenticate(Some(&header(secret.expose())))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::Storage(_)) && err.is_unavailable(),
        "{err}"
    );
    assert_eq!(err.code(), "auth_unavailable");
    assert!(cli.list().await.is_err());
}

#[tokio::test]
async fn bootstrap_admin_creates_one_token_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(FileTokenStore::open(tmp.path()).await.unwrap());
    let path = bootstrap_admin(store.as_ref(), tmp.path())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, tmp.path().join(ADMIN_TOKEN_FILE));
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let auth = Authenticator::new(Arc::clone(&store), None);
    let admin = auth.authenticate(Some(&header(text.trim()))).await.unwrap();
    assert_eq!((admin.role, admin.org), (Role::Admin, None));

    assert_eq!(
        bootstrap_admin(store.as_ref(), tmp.path()).await.unwrap(),
        None
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(store.list().await.unwrap().len(), 1);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
