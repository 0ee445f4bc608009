//! TLS for `https://` URLs: rustls (the ring provider the NATS client already brings), the
//! system's CA certificates or the ones given with `--ca-cert`, HTTP/1.1 over it.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::error::{ClientError, Failure, Transient};
use super::url::BaseUrl;

/// How connections to one server are made: plain TCP, or TLS checked for the URL's host.
/// Built once per `push`/`cat`: loading the system's CA certificates reads files.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// Plain TCP for `http://`; for `https://`, TLS trusting the certificates in `ca_file`
    /// (PEM) if given, else the system's.
    pub(crate) fn new(url: &BaseUrl, ca_file: Option<&Path>) -> Result<Connector, ClientError> {
        if !url.tls {
            return Ok(Connector { tls: None });
        }
        let roots = match ca_file {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| ClientError::Tls(format!("{}: {e}", url.host)))?;
        Ok(Connector {
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }

    /// `tcp` itself, or the TLS handshake on it. A certificate the roots do not vouch for is
    /// fatal (retrying cannot help); anything else is worth another try.
    pub(crate) async fn wrap(&self, tcp: TcpStream, what: &str) -> Result<Stream, Failure> {
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        match connector.connect(name.clone(), tcp).await {
            Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
            Err(err) => match err
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                Some(cause @ rustls::Error::InvalidCertificate(_)) => Err(ClientError::Tls(
                    format!("{what}: {cause}; give the server's CA with --ca-cert"),
                )
                .into()),
                _ => Err(Transient::caused(&format!("{what}: TLS handshake"), &err).into()),
            },
        }
    }
}

/// A connection to the server.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ClientError> {
    let bad = |reason: String| ClientError::Tls(format!("--ca-cert {}: {reason}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none installed".to_owned(), ToString::to_string);
        return Err(ClientError::Tls(format!(
            "no system CA certificates ({why}); install ca-certificates or give --ca-cert"
        )));
    }
    Ok(roots)
}
