//! TLS to servers, as libpq does it: an SSLRequest first; `prefer` falls back to plain
//! text when the server declines; `require` checks the certificate only when a CA file
//! is configured (like libpq with a root certificate present); `verify-ca` checks the
//! chain; `verify-full` also the host name.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ServerTls, ServerTlsMode};
use crate::net::PgStream;
use crate::ProxyError;

/// What a pool needs to open TLS connections; compared by settings and by what their
/// files held when read, so a RELOAD that changes either (a certificate renewed in
/// place too) replaces the pool.
#[derive(Clone)]
pub struct ServerTlsConnector {
    settings: ServerTls,
    /// A hash of the CA, certificate and key files' contents.
    material: u64,
    connector: TlsConnector,
}

impl PartialEq for ServerTlsConnector {
    fn eq(&self, other: &Self) -> bool {
        (&self.settings, self.material) == (&other.settings, other.material)
    }
}

impl Eq for ServerTlsConnector {}

impl fmt::Debug for ServerTlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerTlsConnector")
            .field(&self.settings)
            .finish()
    }
}

impl ServerTlsConnector {
    /// `None` when TLS to servers is off.
    pub fn new(settings: &ServerTls) -> Result<Option<ServerTlsConnector>, ProxyError> {
        let tls = |what: String| ProxyError::Tls(what);
        if settings.cert_file.is_some() != settings.key_file.is_some() {
            return Err(tls(
                "server_tls_cert_file and server_tls_key_file go together: give both or neither"
                    .into(),
            ));
        }
        if settings.mode == ServerTlsMode::Disable {
            if settings.channel_binding == crate::config::ChannelBinding::Require {
                return Err(tls(
                    "server_channel_binding \"require\" needs TLS to servers: server_tls_mode is disable"
                        .into(),
                ));
            }
            if settings.cert_file.is_some() {
                tracing::warn!("server_tls_cert_file is not used: server_tls_mode is disable");
            }
            return Ok(None);
        }
        let material = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for file in [&settings.ca_file, &settings.cert_file, &settings.key_file] {
                file.as_ref()
                    .map(std::fs::read)
                    .map(Result::ok)
                    .hash(&mut hasher);
            }
            hasher.finish()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &settings.ca_file {
            Some(file) => Some(Arc::new(load_roots(file)?)),
            None if settings.mode >= ServerTlsMode::VerifyCa => {
                return Err(tls(format!(
                    "server_tls_mode {:?} needs a CA file (proxy.server_tls_ca_file)",
                    settings.mode
                )))
            }
            None => None,
        };
        let chain = match roots {
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| tls(format!("server CA certificates: {e}")))?,
            ),
            None => None,
        };
        let verifier = Arc::new(Verifier {
            provider: provider.clone(),
            chain,
            check_name: settings.mode == ServerTlsMode::VerifyFull,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        // A certificate of pgopt's own for servers that ask for one (`cert`
        // authentication, `clientcert=verify-*` in their pg_hba.conf).
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let (chain, key) = crate::tls::certificate_and_key(cert, key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(format!("server_tls_cert_file {}: {e}", cert.display())))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(ServerTlsConnector {
            settings: settings.clone(),
            material,
            connector: TlsConnector::from(Arc::new(config)),
        }))
    }

    /// Whether SCRAM logins bind to the TLS channel (libpq's `channel_binding`).
    pub fn channel_binding(&self) -> crate::config::ChannelBinding {
        self.settings.channel_binding
    }

    /// Asks the server for TLS on a fresh connection and runs the handshake; a server
    /// that declines gets plain text under `prefer`, and is an error otherwise.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<PgStream, ProxyError> {
        const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let server = || host.to_string();
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(ProxyError::server_io)?;
        let answer = tcp.read_u8().await.map_err(ProxyError::server_io)?;
        match answer {
            b'S' => {}
            b'N' if self.settings.mode == ServerTlsMode::Prefer => {
                return Ok(PgStream::Plain(tcp));
            }
            b'N' => {
                return Err(ProxyError::Server {
                    server: server(),
                    message: format!(
                        "does not accept TLS, and server_tls_mode is {:?}",
                        self.settings.mode
                    ),
                })
            }
            other => {
                return Err(ProxyError::Server {
                    server: server(),
                    message: format!("answered the SSLRequest with {:?}", other as char),
                })
            }
        }
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            ProxyError::Tls(format!("{host:?} is not a host name TLS can check: {e}"))
        })?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| ProxyError::Server {
                server: server(),
                message: format!("TLS handshake: {e}"),
            })?;
        Ok(PgStream::Tls(Box::new(stream.into())))
    }
}

pub(crate) fn load_roots(file: &Path) -> Result<RootCertStore, ProxyError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ProxyError::Tls(format!(
                "reading CA certificates from {}: {e}",
                file.display()
            ))
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ProxyError::Tls(format!(
            "no usable CA certificate in {}",
            file.display()
        )));
    }
    Ok(roots)
}

/// What a mode checks of the server's certificate: nothing without a CA file
/// (`prefer`/`require`, as libpq); the chain to a configured CA (`verify-ca`, and
/// `require` with a CA file); and the host name too (`verify-full`). The handshake's
/// signatures are always verified.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl Verifier {
    /// Without a CA to check against (sslmode prefer or require), a certificate the
    /// verifier's parser refuses (an X.509 v1 certificate, which `openssl x509 -req`
    /// makes without extensions, and libpq takes) is taken as libpq takes it: its
    /// handshake signature proves nothing that an unchecked certificate would.
    fn unchecked(
        &self,
        verified: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(_) | CertificateError::BadEncoding,
            )) if self.chain.is_none() => Ok(HandshakeSignatureValid::assertion()),
            other => other,
        }
    }
}

/// Whether the certificate's subject common name is `name` (a DNS name, case aside,
/// `*.` standing for one label; or an IP address), as libpq reads it.
fn common_name_matches(cert: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    let Some(cn) = crate::tls::common_name(cert) else {
        return false;
    };
    match name {
        ServerName::DnsName(dns) => {
            let host = dns.as_ref();
            match cn.strip_prefix("*.") {
                Some(domain) => host
                    .split_once('.')
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(domain)),
                None => host.eq_ignore_ascii_case(&cn),
            }
        }
        ServerName::IpAddress(ip) => cn
            .parse::<std::net::IpAddr>()
            .is_ok_and(|parsed| std::net::IpAddr::from(*ip) == parsed),
        _ => false,
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // A certificate with no subjectAltName: its subject's common name is the
            // name checked, as libpq checks it.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            })) if presented.is_empty() && common_name_matches(end_entity, server_name) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.unchecked(verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.unchecked(verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
