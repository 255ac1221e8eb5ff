//! The TLS server config: serving cert/key, optional client certs from the client CA.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

fn reader(path: &Path) -> Result<BufReader<File>> {
    Ok(BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut reader(path)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading PEM certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate found in {}", path.display());
    }
    Ok(certs)
}

/// A PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut reader(path)?)
        .with_context(|| format!("reading PEM private key from {}", path.display()))?
        .with_context(|| format!("no PEM private key found in {}", path.display()))
}

/// Checks client certificates against the client CA *after* the handshake.
///
/// At the TLS layer it accepts any client certificate (the handshake
/// signature is still verified, so the client holds the key); the chain is
/// checked by [`LateClientVerifier::trusted`] per connection. That way a
/// certificate from the wrong CA gets kube-apiserver's answer, a 401, rather
/// than a failed handshake. The real check is rustls' `WebPkiClientVerifier`.
#[derive(Debug)]
pub struct LateClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl LateClientVerifier {
    /// True when `chain` (end entity first) chains to the client CA.
    pub fn trusted(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.inner.verify_client_cert(end_entity, intermediates, UnixTime::now()).is_ok()
    }
}

impl ClientCertVerifier for LateClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves `cert`/`key` over TLS 1.2/1.3 with ALPN h2 and http/1.1. Client
/// certificates are optional (bearer-token clients connect without one);
/// the returned verifier says whether a presented one chains to `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<(Arc<ServerConfig>, Arc<LateClientVerifier>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).with_context(|| format!("adding client CA from {}", client_ca.display()))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let verifier = Arc::new(LateClientVerifier { inner });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| format!("using serving cert {} with key {}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// Like k3s with a custom CA: a serving certificate for `names`, issued at
/// each start by `<data>/server/tls/server-ca.{crt,key}`, with clients
/// trusted by `<data>/server/tls/client-ca.crt`. Returns (cert, key, client CA).
pub fn k3s_style(
    data: &Path,
    names: &[String],
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let tls = data.join("server/tls");
    let read = |name: &str| {
        std::fs::read_to_string(tls.join(name))
            .with_context(|| format!("reading {} (the custom CA k3s expects)", tls.join(name).display()))
    };
    let ca_key = rcgen::KeyPair::from_pem(&read("server-ca.key")?).context("server-ca.key")?;
    let ca_params = rcgen::CertificateParams::from_ca_cert_pem(&read("server-ca.crt")?).context("server-ca.crt")?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    let mut p = rcgen::CertificateParams::new(names)?;
    p.distinguished_name.push(rcgen::DnType::CommonName, "k3s");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    let (cert_path, key_path) = (tls.join("serving-kube-apiserver.crt"), tls.join("serving-kube-apiserver.key"));
    std::fs::write(&key_path, key.serialize_pem()).with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert_path, key_path, tls.join("client-ca.crt")))
}
