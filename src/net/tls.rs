//! Native TLS (`TLS_CERT`, `TLS_KEY`): a rustls acceptor on aws-lc-rs, HTTP/1.1 only (the
//! protocol WebSocket upgrades use).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Loads a PEM certificate chain and key. Errors name the file and what is wrong with it.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("Failed to read TLS_CERT {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("TLS_CERT {} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "TLS_CERT {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "Failed to read a PEM private key from TLS_KEY {}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS_CERT and TLS_KEY do not make a usable certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
