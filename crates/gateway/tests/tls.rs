//! `push` and `cat` over `https://`: the real binary against the real gateway behind a
//! TLS-terminating forwarder (as an ingress would be), with a certificate made by `openssl`.

#![allow(clippy::unwrap_used)] // tests may panic on what they set up

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::{BIN, Gateway, pattern, sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// Runs `openssl` with the words of `flags`, then `args` as they are (paths, subjects).
fn openssl(flags: &str, args: &[&str]) {
    let out = Command::new("openssl")
        .args(flags.split_whitespace())
        .args(args)
        .output()
        .expect("openssl must be installed for the TLS tests (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {flags} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate it signed for 127.0.0.1 (and no name):
/// `(ca.pem, cert.pem, key.pem)`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("key.pem"),
        path("leaf.csr"),
        path("cert.pem"),
        path("leaf.ext"),
    );
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        &format!("req -x509 -days 1 {new_key}"),
        &[
            "-subj",
            "/CN=engine-gateway test CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
    );
    openssl(
        &format!("req {new_key}"),
        &[
            "-subj",
            "/CN=engine-gateway test server",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        "x509 -req -days 1 -CAcreateserial",
        &[
            "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-extfile", &ext, "-out", &cert,
        ],
    );
    (ca.into(), cert.into(), key.into())
}

/// Accepts TLS on a loopback port and forwards the plaintext to `backend`, on a thread of
/// its own (the test drives the client binaries synchronously).
fn tls_forwarder(cert: &Path, key: &Path, backend: SocketAddr) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    addr
}

fn client(args: &[&str], token: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("ENGINE_GATEWAY_TOKEN", token)
        .env_remove("ENGINE_GATEWAY_CA_CERT")
        .output()
        .unwrap()
}

#[test]
fn push_and_cat_over_https_with_the_servers_ca() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let (ca, cert, key) = certificates(gw.dir.path());
    let tls = tls_forwarder(&cert, &key, gw.addr);
    let url = format!("https://{tls}");
    let ca = ca.to_str().unwrap();

    let data = pattern(7, 3 << 20);
    let file = gw.dir.path().join("input.bin");
    std::fs::write(&file, &data).unwrap();
    let stream = "acme/prod/over-tls";
    let push = client(
        &[
            "push",
            "--url",
            &url,
            "--ca-cert",
            ca,
            "--stream",
            stream,
            "--seal",
            "--request-bytes",
            "1048576",
            file.to_str().unwrap(),
        ],
        &token,
    );
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    assert_eq!(sha256(&gw.read_all(&token, stream)), sha256(&data));

    let cat = client(
        &["cat", "--url", &url, "--ca-cert", ca, "--stream", stream],
        &token,
    );
    assert!(
        cat.status.success(),
        "cat: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(sha256(&cat.stdout), sha256(&data));
}

#[test]
fn an_untrusted_certificate_fails_at_once_with_a_clear_message() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let (ca, cert, key) = certificates(gw.dir.path());
    let tls = tls_forwarder(&cert, &key, gw.addr);
    let push_args = |url: &str, ca: Option<&str>| {
        let mut args = vec!["push", "--url", url, "--stream", "acme/prod/x"];
        args.extend(ca.map(|ca| ["--ca-cert", ca]).into_iter().flatten());
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let started = std::time::Instant::now();
        let out = Command::new(BIN)
            .args(&args)
            .env("ENGINE_GATEWAY_TOKEN", &token)
            .env_remove("ENGINE_GATEWAY_CA_CERT")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out, started.elapsed())
    };

    // The system's CAs do not vouch for the test CA: no retries, exit 2.
    let (out, took) = push_args(&format!("https://{tls}"), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-cert"),
        "{stderr}"
    );
    assert!(took.as_secs() < 10, "fatal, not retried: took {took:?}");

    // The right CA, the wrong name: the certificate is for 127.0.0.1 only.
    let (out, _) = push_args(
        &format!("https://localhost:{}", tls.port()),
        Some(ca.to_str().unwrap()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    // A CA file that is not PEM.
    let (out, _) = push_args(&format!("https://{tls}"), Some(BIN));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ca-cert"), "{stderr}");

    assert_eq!(gw.offset(&token, "acme/prod/x").0, 404, "nothing was sent");
}
