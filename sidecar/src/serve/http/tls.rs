//! TLS in the process: the server's certificate and key (and, for mutual
//! TLS, the CAs a client's certificate must chain to), loaded from PEM
//! files and swapped whole on SIGHUP.
//!
//! rustls does the protocol; it runs on the server's own threads, with no
//! runtime: each connection's [`rustls::ServerConnection`] sits in its
//! outbox (`deferred.rs`), so that whichever thread writes an answer (the
//! handler thread, or the store's for a deferred one) encrypts it under the
//! outbox's lock, in the order the bytes go out. The handshake is read like
//! a request head: by a handler thread while bytes are there, in the poller
//! while none are, under the head deadline counted from its first byte
//! (`conn.rs`), so a stalled handshake holds no thread and no slot for
//! longer than a stalled head would.
//!
//! A new configuration applies to connections accepted after it; those
//! open keep the one they started with.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// The largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM: u64 = 1 << 20;

/// Where the server's TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1); must be private to
    /// this user, like the tokens file.
    pub key: PathBuf,
    /// For mutual TLS: the CA certificates (PEM) a client's certificate
    /// must chain to; a client without one is refused at the handshake.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS configuration, reloadable.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the files.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, holds nothing usable, or (the key) is
    /// readable by others, with the reason and the fix.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let config = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again (on SIGHUP). The new configuration replaces
    /// the old one whole; on error the old one stays.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`].
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.files)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// A session for a connection just accepted.
    pub(super) fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let config = self.current.read().clone();
        ServerConnection::new(config)
    }
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert, "--tls-cert")?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "--tls-cert {} and --tls-key {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // HTTP/1.1 only, said so to clients that ask (ALPN).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a PEM file of at most [`MAX_PEM`] bytes, opened once (the checks
/// apply to the file read, not to whatever the path names later); a
/// `private` one (the key) as the tokens file is read: private to this
/// user or root's, never its contents in an error.
fn read_pem(path: &Path, flag: &str, private: bool) -> Result<Vec<u8>, String> {
    if private {
        return crate::serve::auth::read_private("TLS key", path, MAX_PEM)
            .map(String::into_bytes)
            .map_err(|e| format!("{flag}: {e}"));
    }
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("{flag} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{flag} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{flag} {shown} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{flag} {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!("{flag} {shown} is larger than {MAX_PEM} bytes"));
    }
    Ok(bytes)
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, flag, false)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path, "--tls-key", true)?;
    // The parser's own message is not shown: it may quote a line of the
    // file, and this one holds a secret.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "--tls-key {}: no private key in it (PEM: PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}
