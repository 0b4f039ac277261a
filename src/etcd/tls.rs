//! TLS for https endpoints: one rustls `ClientConfig` (ring provider) and a
//! tower connector doing TCP connect + TLS handshake, for
//! `Endpoint::connect_with_connector`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::EtcdConfig;

/// Where Linux distributions keep the system CA bundle (the list Go's
/// crypto/x509 reads, which is what etcdctl trusts when given no --cacert).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The client TLS config for every https endpoint.
///
/// Server certificates are checked against the CA file when one is given,
/// otherwise against the system CA bundle (`$SSL_CERT_FILE` or the usual
/// distribution paths); with `insecure_skip_tls_verify` any server
/// certificate is accepted, though the handshake signatures are still checked.
pub(super) fn client_config(cfg: &EtcdConfig) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?;
    let builder = if cfg.insecure_skip_tls_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let roots = match &cfg.ca_file {
            Some(path) => ca_file_roots(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "client certificate file")?;
            let key_der = read_key(key, "client key file")?;
            builder.with_client_auth_cert(chain, key_der).with_context(|| {
                format!("client certificate {} and key {} cannot be used together", cert.display(), key.display())
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) => bail!("client certificate {} is given without a key file", cert.display()),
        (None, Some(key)) => bail!("client key {} is given without a certificate file", key.display()),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn ca_file_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(path, "CA file")?.into_iter().enumerate() {
        roots.add(cert).with_context(|| format!("CA file {}: certificate #{} is not usable", path.display(), i + 1))?;
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates = from_env.iter().map(|p| p.as_path()).chain(SYSTEM_CA_BUNDLES.iter().map(Path::new));
    for path in candidates {
        let Ok(bytes) = crate::userfile::read(path, crate::userfile::CA_BUNDLE) else {
            continue;
        };
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok).collect();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added > 0 {
            log::debug!("no CA file given: trusting {added} certificates from {}", path.display());
            return Ok(roots);
        }
    }
    bail!(
        "no CA file given to verify etcd's server certificate, and no system CA bundle found; \
         give the CA file (or skip TLS verification)"
    )
}

/// Every certificate in a PEM file. Errors name the file but never show its contents.
pub(crate) fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    // A CA file may be a whole bundle; a client certificate chain is smaller.
    let bytes = crate::userfile::read(path, crate::userfile::CA_BUNDLE)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} {} is not valid PEM: {}", path.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        bail!("{what} {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn read_key(path: &Path, what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = crate::userfile::read(path, crate::userfile::SMALL)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow::anyhow!("{what} {} holds no PEM private key", path.display()),
        e => anyhow::anyhow!("{what} {} is not valid PEM: {}", path.display(), pem_problem(&e)),
    })
}

/// A description of a PEM error without the file's bytes (some variants of
/// `pem::Error`'s Display quote the offending line, which may be key material).
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".into(),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "nothing found".into(),
        pem::Error::SectionTooLarge => "a section is too large".into(),
        _ => "malformed".into(),
    }
}

/// `--insecure-skip-tls-verify`: any server certificate, for any name, is
/// accepted; the handshake signatures are still verified, with the ring
/// provider's algorithms, so the peer must hold the certificate's key.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl AcceptAnyServerCert {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.signature_verification_algorithms
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// A tower service for `Endpoint::connect_with_connector`: TCP connect to
/// `host:port`, then the TLS handshake with `host` as server name (an IP
/// address is allowed). It ignores the URI tonic passes in: that one carries
/// an `http` scheme on purpose (see `Client::open_channel`).
pub(super) fn connector(
    config: Arc<ClientConfig>,
    host: String,
    port: u16,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send + 'static,
> + Send
+ Clone
+ 'static {
    let tls = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        let host = host.clone();
        async move {
            let server_name = ServerName::try_from(host.clone()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a valid TLS server name"),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}
