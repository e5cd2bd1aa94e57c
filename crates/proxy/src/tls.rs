//! TLS (rustls) to clients, with the certificate and key from the config (to servers:
//! `server_tls.rs`; the stream either side uses: `net.rs`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::ProxyError;

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, ProxyError> {
    let tls = |what: String| ProxyError::Tls(what);
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls(format!(
                "reading certificates from {}: {e}",
                cert_file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls(format!("no certificate in {}", cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        tls(format!(
            "reading the private key from {}: {e}",
            key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls(format!(
                "{} and {} do not make a usable certificate and key: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
