//! TLS for the HTTPS listener: certificates from PEM files or from ACME
//! (rustls-acme, TLS-ALPN-01 answered on the HTTPS port itself).

use std::{io, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use rustls::{ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider};
use rustls_acme::{AcmeConfig, caches::DirCache, is_tls_alpn_challenge};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use super::config::{AcmeSettings, read_certs, read_key};

/// ALPN protocols we serve, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Bound on a TLS handshake, so idle sockets cannot pin a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider for everything TLS here. Explicit (rather than the
/// process default) so that other crates enabling aws-lc-rs cannot make rustls
/// ambiguous and panic.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_alpn(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Builds the server configuration from `--tls-cert`/`--tls-key`.
pub(crate) fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = read_certs(cert, "--tls-cert")?;
    let key_der = read_key(key, "--tls-key")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "--tls-cert {} and --tls-key {} do not form a usable certificate",
                cert.display(),
                key.display()
            )
        })?;
    Ok(with_alpn(config))
}

/// How the HTTPS listener completes handshakes.
pub(crate) enum TlsMode {
    /// One fixed certificate.
    Static(Arc<ServerConfig>),
    /// ACME: regular clients get the issued certificate, TLS-ALPN-01
    /// validation connections (ALPN `acme-tls/1`) the challenge certificate.
    Acme {
        regular: Arc<ServerConfig>,
        challenge: Arc<ServerConfig>,
    },
}

/// Starts ACME certificate management: returns the TLS mode and the task that
/// drives ordering and renewal (abort it on shutdown).
pub(crate) fn start_acme(settings: &AcmeSettings) -> anyhow::Result<(TlsMode, JoinHandle<()>)> {
    let provider = provider();
    let mut config = AcmeConfig::new_with_provider(&settings.domains, provider.clone());
    if !settings.directory_roots.is_empty() {
        let mut roots = RootCertStore::empty();
        for cert in &settings.directory_roots {
            roots
                .add(cert.clone())
                .context("--acme-ca-cert: unusable CA certificate")?;
        }
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config = config.client_tls_config(Arc::new(client));
    }
    let mut state = config
        .directory(&settings.directory)
        .contact(&settings.contacts)
        .cache_option(settings.cache.clone().map(DirCache::new))
        .state();
    let regular = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(state.resolver());
    let challenge = state.challenge_rustls_config_with_provider(provider);
    let domains = settings.domains.join(", ");
    // rustls-acme does its work (order, validation, renewal, retries with
    // back-off) while its state stream is polled; nothing else drives it.
    let driver = tokio::spawn(async move {
        while let Some(event) = state.next().await {
            match event {
                Ok(ok) => tracing::info!(domains = %domains, "acme: {ok:?}"),
                Err(err) => tracing::warn!(domains = %domains, "acme: {err:?}"),
            }
        }
    });
    Ok((
        TlsMode::Acme {
            regular: with_alpn(regular),
            challenge,
        },
        driver,
    ))
}

/// Completes the TLS handshake on `stream`. `Ok(None)`: it was an ACME
/// validation connection, already answered and closed.
pub(crate) async fn accept(
    mode: &TlsMode,
    stream: TcpStream,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        match mode {
            TlsMode::Static(config) => start.into_stream(config.clone()).await.map(Some),
            TlsMode::Acme { regular, challenge } => {
                if is_tls_alpn_challenge(&start.client_hello()) {
                    tracing::info!("acme: answering a TLS-ALPN-01 validation");
                    let mut tls = start.into_stream(challenge.clone()).await?;
                    // The validator only looks at the certificate.
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    Ok(None)
                } else {
                    start.into_stream(regular.clone()).await.map(Some)
                }
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })
}
