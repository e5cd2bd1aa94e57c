//! TLS (rustls) to clients, with the certificate and key from the config (to servers:
//! `server_tls.rs`; the stream either side uses: `net.rs`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::ProxyError;

/// A PEM certificate chain (at least one) and its private key.
pub(crate) fn certificate_and_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ProxyError> {
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
    Ok((certs, key))
}

/// How clients' TLS is accepted: the acceptor, and the channel binding data of the
/// certificate it presents (`tls-server-end-point`, see [`end_point`]), with which
/// SCRAM-SHA-256-PLUS is offered.
#[derive(Clone)]
pub struct Acceptor {
    pub tls: TlsAcceptor,
    /// `None` when the certificate's signature names no hash to use (Ed25519,
    /// RSA-PSS): then clients are offered SCRAM-SHA-256 only.
    pub end_point: Option<Arc<[u8]>>,
}

/// Loads a PEM certificate chain and private key into a TLS acceptor; with `ca_file`,
/// clients are asked for a certificate, which must verify against those CAs when one
/// is given (none is allowed).
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    ca_file: Option<&Path>,
) -> Result<Acceptor, ProxyError> {
    let tls = |what: String| ProxyError::Tls(what);
    let (certs, key) = certificate_and_key(cert_file, key_file)?;
    let end_point = end_point(&certs[0]).map(Arc::from);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?;
    let builder = match ca_file {
        Some(ca_file) => {
            let roots = Arc::new(crate::server_tls::load_roots(ca_file)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| {
                    tls(format!(
                        "client CA certificates in {}: {e}",
                        ca_file.display()
                    ))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        tls(format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })?;
    // No session resumption, as in PostgreSQL: a resumed session would carry a client
    // certificate checked once, however long ago (expired since, or its CA dropped).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Acceptor {
        tls: TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

/// The `tls-server-end-point` channel binding data of a certificate (RFC 5929): its
/// hash by the hash of its signature algorithm, SHA-256 for MD5 and SHA-1, as
/// PostgreSQL and libpq compute it (RSA-PSS by the hash its parameters name, as
/// OpenSSL's `X509_get_signature_info` gives it). `None` for a signature with no hash
/// of its own (Ed25519) or bytes that are not a certificate: libpq could not compute
/// it either, so SCRAM-SHA-256-PLUS must not be offered.
pub fn end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate: the to-be-signed part, then the signature algorithm.
    let (cert, _) = expect(der, 0x30)?;
    let (_, rest) = expect(cert, 0x30)?;
    let (algorithm, _) = expect(rest, 0x30)?;
    let (oid, params) = expect(algorithm, 0x06)?;
    let (&last, prefix) = oid.split_last()?;
    // 1.2.840.113549.1.1.n (RSA) and 1.2.840.10045.4.1 / 4.3.n (ECDSA).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let bits = match (prefix, last) {
        (RSA, 10) => pss_hash_bits(params)?,
        // md5WithRSAEncryption, sha1WithRSAEncryption, ecdsa-with-SHA1.
        (RSA, 4 | 5) | (ECDSA, 1) => 256,
        (RSA, 11) | (ECDSA_SHA2, 2) => 256,
        (RSA, 12) | (ECDSA_SHA2, 3) => 384,
        (RSA, 13) | (ECDSA_SHA2, 4) => 512,
        (RSA, 14) | (ECDSA_SHA2, 1) => 224,
        _ => return None,
    };
    Some(match bits {
        224 => sha2::Sha224::digest(der).to_vec(),
        256 => sha2::Sha256::digest(der).to_vec(),
        384 => sha2::Sha384::digest(der).to_vec(),
        _ => sha2::Sha512::digest(der).to_vec(),
    })
}

/// The common name of a certificate's subject (its first, as PostgreSQL reads it);
/// `None` when it has none or the bytes are not a certificate. A few lines of DER,
/// not an X.509 library: only the path to the subject is walked, every length checked.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, 0x30)?;
    let (mut tbs, _) = expect(cert, 0x30)?;
    let mut field = || {
        let (tag, content, rest) = tlv(tbs)?;
        tbs = rest;
        Some((tag, content))
    };
    // [0] the version (when not 1), the serial number, the signature algorithm, the
    // issuer and the validity, then the subject.
    if field()?.0 == 0xa0 {
        field()?;
    }
    for _ in 0..3 {
        field()?;
    }
    let (tag, mut subject) = field()?;
    if tag != 0x30 {
        return None;
    }
    while let Some((tag, mut rdn, rest)) = tlv(subject) {
        subject = rest;
        if tag != 0x31 {
            return None;
        }
        while let Some((tag, attribute, rest)) = tlv(rdn) {
            rdn = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid, value) = expect(attribute, 0x06)?;
            if oid != [0x55, 0x04, 0x03] {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            // UTF8String, PrintableString, IA5String (as PostgreSQL, which takes the
            // bytes as they are, no name with a NUL in it).
            return match tag {
                0x0c | 0x13 | 0x16 if !text.contains(&0) => String::from_utf8(text.to_vec()).ok(),
                _ => None,
            };
        }
    }
    None
}

/// The hash an RSASSA-PSS signature's parameters name (RFC 4055: `[0]` hashAlgorithm,
/// SHA-1 when absent), in bits of the hash to bind with: SHA-1 binds with SHA-256.
fn pss_hash_bits(params: &[u8]) -> Option<u32> {
    // 2.16.840.1.101.3.4.2.n: sha256, sha384, sha512, sha224.
    const SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
    const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    let (params, _) = expect(params, 0x30)?;
    let Some((hash, _)) = expect(params, 0xa0) else {
        return Some(256);
    };
    let (algorithm, _) = expect(hash, 0x30)?;
    let (oid, _) = expect(algorithm, 0x06)?;
    let (&last, prefix) = oid.split_last()?;
    match (prefix, last) {
        (SHA2, 1) => Some(256),
        (SHA2, 2) => Some(384),
        (SHA2, 3) => Some(512),
        (SHA2, 4) => Some(224),
        _ if oid == SHA1 => Some(256),
        _ => None,
    }
}

/// One DER element of `tag` at the start of `input`: its content and what follows.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = tlv(input)?;
    (found == tag).then_some((content, rest))
}

/// One DER element (single-byte tags): its tag, content and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| len << 8 | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs openssl with `args`; its standard output.
    fn openssl(args: &[&str]) -> String {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The common name of a certificate openssl made; no panic on any prefix of it or
    /// on bytes that are not a certificate.
    #[test]
    fn the_common_name_is_read_and_bad_bytes_are_none() {
        let dir = std::env::temp_dir().join(format!("pgopt-cn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, pem) = (dir.join("k.pem"), dir.join("c.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/O=pgopt/CN=alice smith/OU=x",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ]);
        let der = CertificateDer::pem_file_iter(&pem)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("alice smith"));
        for end in 0..der.len() {
            assert_eq!(common_name(&der[..end]), None, "prefix of {end} bytes");
        }
        for junk in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80],
        ] {
            assert_eq!(common_name(junk), None);
        }
        // Any byte changed to anything: an answer or None, never a panic (lengths
        // inside the certificate included, which cut-short prefixes never reach).
        for at in 0..der.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0xff] {
                let mut bytes = der.to_vec();
                bytes[at] = value;
                let _ = common_name(&bytes);
                let _ = end_point(&bytes);
            }
        }
    }

    /// The channel binding data is the certificate's fingerprint by the hash its
    /// signature names (openssl's own figure), SHA-256 for SHA-1; none for Ed25519.
    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        let dir = std::env::temp_dir().join(format!("pgopt-ep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, pem) = (dir.join("k.pem"), dir.join("c.pem"));
        for (new_key, sign_with, hash) in [
            ("ec:P-256", "-sha256", Some("-sha256")),
            ("ec:P-384", "-sha384", Some("-sha384")),
            ("ec:P-256", "-sha224", Some("-sha224")),
            ("rsa:2048", "-sha512", Some("-sha512")),
            ("rsa:2048", "-sha1", Some("-sha256")),
            ("rsa-pss:2048", "-sha384", Some("-sha384")),
            ("rsa-pss:2048", "-sha256", Some("-sha256")),
            ("ed25519", "", None),
        ] {
            let curve;
            let mut args = vec!["req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=x"];
            match new_key.split_once(':') {
                Some(("ec", name)) => {
                    curve = format!("ec_paramgen_curve:{name}");
                    args.extend(["-newkey", "ec", "-pkeyopt", &curve]);
                }
                // RSA-PSS signatures (`-sigopt`), the hash in their parameters.
                Some(("rsa-pss", bits)) => {
                    curve = format!("rsa:{bits}");
                    args.extend(["-newkey", &curve, "-sigopt", "rsa_padding_mode:pss"]);
                }
                _ => args.extend(["-newkey", new_key]),
            }
            if !sign_with.is_empty() {
                args.push(sign_with);
            }
            args.extend([
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                pem.to_str().unwrap(),
            ]);
            openssl(&args);
            let der = CertificateDer::pem_file_iter(&pem)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            let expected = hash.map(|hash| {
                let text = openssl(&[
                    "x509",
                    "-noout",
                    "-fingerprint",
                    hash,
                    "-in",
                    pem.to_str().unwrap(),
                ]);
                let hex = text.trim().rsplit_once('=').unwrap().1.replace(':', "");
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect::<Vec<u8>>()
            });
            assert_eq!(end_point(&der), expected, "{new_key} {sign_with}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
