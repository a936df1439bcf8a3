//! `--send tls`: a complete TLS handshake, so that a TLS server keeps the
//! connection open while it is traced.
//!
//! The server's certificate is deliberately not verified: nothing is sent
//! over the session (no request, no secret), it only exists to look like a
//! client that is about to talk. Signatures in the handshake are still
//! checked, so the handshake is a real one.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Accepts any certificate; verifies handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs a TLS handshake on `stream` with SNI `host` (none for an address).
pub async fn handshake(
    stream: TcpStream,
    host: &str,
    timeout: Duration,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("{host:?} is not usable as a TLS server name: {e}"))?;
    let connector = TlsConnector::from(Arc::new(config));
    tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| {
            anyhow!(
                "no TLS handshake within {:.1} s (--send tls; is this a TLS port?)",
                timeout.as_secs_f64()
            )
        })?
        .context("TLS handshake failed (--send tls; is this a TLS port?)")
}
