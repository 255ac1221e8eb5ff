//! A test CA with a server certificate for 127.0.0.1 and localhost.

use std::sync::Arc;

/// A throw-away CA and a server certificate for 127.0.0.1 / localhost
/// signed by it, for HTTPS mirrors (`--ca-cert`).
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// A server config presenting the leaf certificate.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "kubestrap test mirror CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(leaf.der().to_vec())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                    leaf_key.serialize_der(),
                )),
            )
            .unwrap();
        TestCa { ca_pem: ca.pem(), server_config: Arc::new(config) }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
