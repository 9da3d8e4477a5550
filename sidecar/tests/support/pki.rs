//! Certificates made in the tests with rcgen: a CA, the server
//! certificates it signs, and the rustls configuration of a server that
//! presents one.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::temp::TempDir;

/// A certificate authority made for one test (in memory; `tls.rs`'s
/// `Pki` writes one and its certificates to files).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    /// Its certificate, DER.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("the CA's certificate");
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            der: cert.der().clone(),
        }
    }

    /// A certificate signed by this CA for `names` (DNS names, or IP
    /// addresses as IP SANs), its subject `CN=<common_name>`, for `usage`,
    /// and its new key.
    pub fn issue(
        &self,
        names: &[&str],
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        (cert, key)
    }

    /// Writes its certificate (PEM) to `name` in `dir`.
    pub fn write_pem(&self, dir: &TempDir, name: &str) -> PathBuf {
        dir.write(name, self.pem.as_bytes())
    }

    /// A server certificate signed by this CA for `names` (DNS names, or
    /// IP addresses as IP SANs: "127.0.0.1").
    pub fn server(&self, names: &[&str]) -> ServerCert {
        let (cert, key) = self.issue(names, "test analyzer", ExtendedKeyUsagePurpose::ServerAuth);
        ServerCert {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

/// A server's certificate and key.
pub struct ServerCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerCert {
    /// A rustls server configuration presenting it (ring's primitives).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
        .expect("a certificate and its key");
        Arc::new(config)
    }
}
