//! TLS in the tests: a certificate authority made in the test (`pki.rs`'s,
//! rcgen), the server and client certificates it issues, written as PEM
//! files the way an operator would give them to `quiesce serve`, and a TLS
//! client (rustls, the same library as the server's, but a client of its
//! own configuration) that the HTTP client of `http.rs` talks over.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::http::{Conn, Socket, connect};
use super::pki::TestCa;

/// A TLS session over TCP, as the client sees it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Socket for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A certificate and its private key, as DER and as PEM files.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key_file: PathBuf,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// A certificate authority of the test's own, with its files.
pub struct Pki {
    ca_made: TestCa,
    /// Its certificate.
    pub ca: CertificateDer<'static>,
    /// Its certificate (PEM): what `--tls-client-ca` or a client trusts.
    pub ca_file: PathBuf,
    dir: PathBuf,
    name: String,
}

impl Pki {
    /// A new CA called `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_made = TestCa::new(&format!("{name} test CA"));
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, &ca_made.pem).expect("write the CA certificate");
        Pki {
            ca: ca_made.der.clone(),
            ca_made,
            ca_file,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, files named
    /// after `stem`.
    pub fn server(&self, stem: &str) -> Identity {
        self.issue(
            stem,
            "quiesce test server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject is `CN=<common_name>`.
    pub fn client(&self, common_name: &str) -> Identity {
        self.issue(
            common_name,
            common_name,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        stem: &str,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Identity {
        let (cert, key) = self.ca_made.issue(names, common_name, usage);
        let cert_file = self.dir.join(format!("{}-{stem}.crt", self.name));
        let key_file = self.dir.join(format!("{}-{stem}.key", self.name));
        std::fs::write(&cert_file, cert.pem()).expect("write a certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write a key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        Identity {
            cert: cert.der().clone(),
            key: key.serialize_der(),
            cert_file,
            key_file,
        }
    }
}

/// A client configuration trusting `ca`, presenting `client` if given.
pub fn client_config(ca: &CertificateDer<'static>, client: Option<&Identity>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the CA");
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert.clone()], id.key())
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects to `addr` over TLS (server name 127.0.0.1) and completes the
/// handshake: the error says why one failed.
pub fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<Conn<TlsStream>, String> {
    let tcp = connect(addr).map_err(|f| format!("{f:?}"))?;
    let name = ServerName::try_from("127.0.0.1").expect("a server name");
    let session = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(Conn::over(stream))
}
