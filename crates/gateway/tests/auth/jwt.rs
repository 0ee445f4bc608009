//! JWTs: EdDSA and RS256 tokens signed here with fixed test keys, verified through the public
//! API; every refusal reason has a case.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use engine_gateway::auth::{
    Authenticator, FileTokenStore, JwtError, JwtKeyError, JwtVerifier, Role, ScopeError,
};
use rsa::pkcs8::DecodePrivateKey as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const AUD: &str = "engine-gateway";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ed_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn ed_verifier(issuer: Option<&str>) -> JwtVerifier {
    let pem = ed_key()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    JwtVerifier::from_pem(&pem, AUD.into(), issuer.map(Into::into)).unwrap()
}

fn rsa_verifier(file: &str) -> JwtVerifier {
    JwtVerifier::from_pem_file(&fixture(file), AUD.into(), None).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn signing_input(alg: &str, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(&json!({"alg": alg, "typ": "JWT"})),
        b64(claims)
    )
}

fn sign_ed(claims: &Value) -> String {
    let input = signing_input("EdDSA", claims);
    let sig = ed_key().sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn sign_rs(claims: &Value) -> String {
    let pem = std::fs::read_to_string(fixture("jwt_rs256_test.key")).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
    let input = signing_input("RS256", claims);
    let digest = Sha256::digest(input.as_bytes());
    let sig = key
        .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// HMAC-SHA256 (RFC 2104), to forge an HS256 token keyed with the public key.
fn sign_hs(claims: &Value, secret: &[u8]) -> String {
    let input = signing_input("HS256", claims);
    let mut key = [0u8; 64];
    if secret.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        key[..secret.len()].copy_from_slice(secret);
    }
    let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<_>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(input.as_bytes())
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(outer))
}

fn claims() -> Value {
    json!({"role": "deployer", "org": "acme", "cluster": "prod", "aud": AUD,
           "exp": now() + 300, "sub": "ci-bot"})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        base.as_object_mut().unwrap().remove(key);
    } else {
        base[key] = value;
    }
    base
}

#[test]
fn eddsa_and_rs256_tokens_map_to_principals() {
    let p = ed_verifier(None).verify(&sign_ed(&claims())).unwrap();
    assert_eq!((p.subject.as_str(), p.role), ("ci-bot", Role::Deployer));
    assert_eq!(
        (p.org.as_deref(), p.cluster.as_deref()),
        (Some("acme"), Some("prod"))
    );

    let reader = json!({"role": "reader", "org": "acme", "aud": ["other", AUD], "exp": now() + 60,
                        "nbf": now() - 5, "iss": "idp"});
    for file in ["jwt_rs256_test.pub", "jwt_rs256_test.pkcs1.pub"] {
        let verifier = rsa_verifier(file);
        assert_eq!(verifier.algorithm(), "RS256");
        let p = verifier.verify(&sign_rs(&reader)).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.role, p.org.as_deref()),
            ("jwt", Role::Reader, Some("acme"))
        );
        assert_eq!(p.cluster, None);
    }
    let admin = json!({"role": "admin", "aud": AUD, "exp": now() + 60, "iss": "idp"});
    let p = ed_verifier(Some("idp")).verify(&sign_ed(&admin)).unwrap();
    assert_eq!((p.role, p.org), (Role::Admin, None));
}

#[test]
fn bad_tokens_are_refused() {
    let ed = ed_verifier(Some("idp"));
    let base = with(claims(), "iss", json!("idp"));
    let check = |token: &str, expect: JwtError| {
        assert_eq!(ed.verify(token).unwrap_err(), expect, "{token}");
    };
    ed.verify(&sign_ed(&base)).unwrap();
    // Time: 30 s of leeway either way, no more.
    ed.verify(&sign_ed(&with(base.clone(), "exp", json!(now() - 10))))
        .unwrap();
    check(
        &sign_ed(&with(base.clone(), "exp", json!(now() - 31))),
        JwtError::Expired,
    );
    check(
        &sign_ed(&with(base.clone(), "exp", Value::Null)),
        JwtError::MissingClaim("exp"),
    );
    check(
        &sign_ed(&with(base.clone(), "exp", json!("soon"))),
        JwtError::Format,
    );
    check(
        &sign_ed(&with(base.clone(), "nbf", json!(now() + 120))),
        JwtError::NotYetValid,
    );
    // Audience and issuer.
    check(
        &sign_ed(&with(base.clone(), "aud", json!("other"))),
        JwtError::Audience,
    );
    check(
        &sign_ed(&with(base.clone(), "aud", json!(["a", "b"]))),
        JwtError::Audience,
    );
    check(
        &sign_ed(&with(base.clone(), "aud", Value::Null)),
        JwtError::MissingClaim("aud"),
    );
    check(
        &sign_ed(&with(base.clone(), "iss", json!("evil"))),
        JwtError::Issuer,
    );
    check(&sign_ed(&claims()), JwtError::Issuer);
    // Role and scope.
    check(
        &sign_ed(&with(base.clone(), "role", json!("root"))),
        JwtError::InvalidClaim("role"),
    );
    check(
        &sign_ed(&with(base.clone(), "role", Value::Null)),
        JwtError::MissingClaim("role"),
    );
    let no_org = sign_ed(&with(base.clone(), "org", Value::Null));
    check(
        &no_org,
        JwtError::Scope(ScopeError::OrgRequired(Role::Deployer)),
    );
    let reader_cluster = sign_ed(&with(base.clone(), "role", json!("reader")));
    check(&reader_cluster, JwtError::Scope(ScopeError::ReaderCluster));
    let bad_org = sign_ed(&with(base.clone(), "org", json!("../etc")));
    assert!(matches!(
        ed.verify(&bad_org),
        Err(JwtError::Scope(ScopeError::Name(_)))
    ));
    // Algorithms: none, HS256 keyed with the public key, RS256 against an Ed25519 key.
    let none = format!("{}.", signing_input("none", &base));
    check(&none, JwtError::Algorithm);
    let public_pem = ed_key()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    check(&sign_hs(&base, public_pem.as_bytes()), JwtError::Algorithm);
    check(&sign_rs(&base), JwtError::Algorithm);
    let rs = rsa_verifier("jwt_rs256_test.pub");
    assert_eq!(rs.verify(&sign_ed(&base)).unwrap_err(), JwtError::Algorithm);
    let rsa_pem = std::fs::read(fixture("jwt_rs256_test.pub")).unwrap();
    assert_eq!(
        rs.verify(&sign_hs(&base, &rsa_pem)).unwrap_err(),
        JwtError::Algorithm
    );
    // Signatures: a changed payload, a signature from another key, a truncated signature.
    let good = sign_ed(&base);
    let (input, sig) = good.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();
    let forged = with(base.clone(), "role", json!("admin"));
    check(
        &format!("{header}.{}.{sig}", b64(&forged)),
        JwtError::Signature,
    );
    let short = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let short = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&short[..63]));
    check(&short, JwtError::Signature);
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).sign(input.as_bytes());
    check(
        &format!("{input}.{}", URL_SAFE_NO_PAD.encode(other.to_bytes())),
        JwtError::Signature,
    );
    let rs_good = sign_rs(&with(base.clone(), "iss", Value::Null));
    let mut rs_bad = rs_good.into_bytes();
    let last = rs_bad.len() - 2;
    rs_bad[last] = if rs_bad[last] == b'A' { b'B' } else { b'A' };
    let rs_bad = String::from_utf8(rs_bad).unwrap();
    assert_eq!(rs.verify(&rs_bad).unwrap_err(), JwtError::Signature);
    // Shape.
    check("a.b.c", JwtError::Format);
    check(&format!("{good}.x"), JwtError::Format);
    check(&format!("{input}.{sig}="), JwtError::Format);
    check(&"a".repeat(9000), JwtError::TooLong);
    let crit = format!(
        "{}.{}",
        b64(&json!({"alg": "EdDSA", "crit": ["exp"]})),
        b64(&base)
    );
    check(&format!("{crit}.{sig}"), JwtError::Critical);
}

#[tokio::test]
async fn authenticator_routes_jwts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(FileTokenStore::open(tmp.path()).await.unwrap());
    let header = |t: &str| http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
    let token = sign_ed(&claims());
    let without = Authenticator::new(store.clone(), None);
    let err = without
        .authenticate(Some(&header(&token)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().contains(&token)),
        ("invalid_jwt", false)
    );
    let with_jwt = Authenticator::new(store, Some(ed_verifier(None)));
    let p = with_jwt.authenticate(Some(&header(&token))).await.unwrap();
    assert_eq!(p.subject, "ci-bot");
    let expired = sign_ed(&with(claims(), "exp", json!(now() - 100)));
    let err = with_jwt
        .authenticate(Some(&header(&expired)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "token_expired");
    let err = with_jwt
        .authenticate(Some(&header("a.b.c")))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.to_string()),
        ("invalid_jwt", "invalid JWT: not a well-formed JWT".into())
    );
}

#[test]
fn keys_are_checked() {
    let load = |file: &str| JwtVerifier::from_pem_file(&fixture(file), AUD.into(), None);
    assert!(matches!(
        load("rsa1024_test.pub"),
        Err(JwtKeyError::RsaTooSmall(1024))
    ));
    assert!(matches!(
        load("jwt_rs256_test.key"),
        Err(JwtKeyError::Unsupported)
    ));
    assert!(matches!(load("missing.pem"), Err(JwtKeyError::Io { .. })));
    let pem = std::fs::read_to_string(fixture("jwt_rs256_test.pub")).unwrap();
    let empty_aud = JwtVerifier::from_pem(&pem, String::new(), None);
    assert!(matches!(empty_aud, Err(JwtKeyError::EmptyAudience)));
    assert!(matches!(
        JwtVerifier::from_pem("garbage", AUD.into(), None),
        Err(JwtKeyError::Unsupported)
    ));
    assert_eq!(ed_verifier(None).algorithm(), "EdDSA");
}
