//! The call to the external analysis service: one `POST` of the report, as
//! JSON, answered by JSON, over `http://` or `https://`.
//!
//! It is a small HTTP/1.1 client of our own (`httparse` parses the
//! response) rather than a crate like `ureq` for one reason: the call must
//! end when the job's [`Context`] is done — at the job's deadline, or at a
//! shutdown — not when some socket timeout of the client's runs out. The
//! socket is registered with [`Context::on_cancel`], which shuts it down,
//! so a service that never answers costs at most the job's deadline and
//! never a thread. Under TLS the same shutdown ends the call, in the
//! handshake as in the answer: rustls reads and writes that socket.
//!
//! # What it owns
//!
//! [`Analyzer`]: the service's address, and for `https://` the TLS client
//! configuration (rustls with ring; trust from webpki-roots, or from the
//! CA certificates of `--analyzer-ca`), built once at start and shared by
//! every call; and the bearer token of `--analyzer-token-file`
//! ([`BearerToken`]), sent on every call.
//!
//! # Which thread touches what
//!
//! - The main thread builds the [`Analyzer`] before anything starts: a
//!   URL, CA file or token file that cannot be used stops the start.
//! - The pipeline's workers make the calls, each on its own connection.
//! - `signals-other` re-reads the token file on SIGHUP
//!   ([`BearerToken::reload`]).
//!
//! # Invariants
//!
//! 1. An error of a call is a reason written here: a status, a kind of
//!    I/O or TLS failure. Never the peer's bytes, and never what its
//!    certificate says (its names, its subject): errors end up in
//!    `last_error`, which API callers read.
//! 2. The token is never logged, counted or put in an error; a call sends
//!    one whole token, the old or the new (it is swapped whole, an `Arc`).
//! 3. A token file that cannot be used never replaces the token in use.
//! 4. A token is sent in clear (`http://`) only to a loopback host, unless
//!    `--allow-insecure` (checked at start, in `serve::run`).
//!
//! Lock rule: the token's lock is held only to clone or replace the `Arc`.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use quiesce::Context;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject as _;

/// Largest response read.
const MAX_RESPONSE: usize = 1 << 20;
/// The bound on a call when the context has no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `--analyzer-ca` file read (hundreds of certificates).
const MAX_CA_FILE: u64 = 4 << 20;
/// Largest `--analyzer-token-file` read.
const MAX_TOKEN_FILE: u64 = 16 << 10;

/// How the service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where the analysis service is, and how a call reaches it.
#[derive(Clone, Debug)]
pub struct Analyzer {
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
    /// Set for `https://` (see [`Analyzer::with_tls`]).
    tls: Option<Tls>,
    token: Option<Arc<BearerToken>>,
}

/// The TLS side of an `https://` analyzer: built once, shared by the calls.
#[derive(Clone, Debug)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    /// The URL's host, as the certificate must name it (a DNS name, or an
    /// IP address as an IP SAN).
    name: ServerName<'static>,
}

impl Analyzer {
    /// Parses `http://host[:port][/path]` or `https://host[:port][/path]`
    /// (ports 80 and 443 by default; an IPv6 address in brackets). An
    /// `https://` analyzer needs [`with_tls`](Self::with_tls) before a call.
    ///
    /// # Errors
    ///
    /// For any other form, with the reason.
    pub fn parse(url: &str) -> Result<Analyzer, String> {
        let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest, 80)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest, 443)
        } else {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs are supported"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let parse_port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: invalid port {p:?}"))
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "{url:?}: {host:?} in brackets is not an IPv6 address"
                ));
            }
            match after.strip_prefix(':') {
                Some(port) => (host, parse_port(port)?),
                None if after.is_empty() => (host, default_port),
                None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!(
                        "{url:?}: an IPv6 address goes in brackets, e.g. https://[::1]:9000/"
                    ));
                }
                Some((host, port)) => (host, parse_port(port)?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        if host.contains('@') {
            return Err(format!(
                "{url:?}: user information in the URL is not supported"
            ));
        }
        Ok(Analyzer {
            scheme,
            host: host.to_string(),
            port,
            path: path.to_string(),
            tls: None,
            token: None,
        })
    }

    /// The scheme of the URL.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether the host is a loopback address (or `localhost`): the only
    /// hosts a token may be sent to in clear (invariant 4).
    pub fn host_is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The URL, for the log (there is no secret in it).
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// `host:port`, an IPv6 address in brackets (the `Host` header's form).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Speaks TLS with `config` (see [`client_config`]) to this `https://`
    /// analyzer, checking that its certificate names the URL's host.
    ///
    /// # Errors
    ///
    /// When the host cannot be a TLS server name.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Result<Analyzer, String> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| format!("{:?} cannot be a TLS server name", self.host))?;
        self.tls = Some(Tls { config, name });
        Ok(self)
    }

    /// The token sent on every call, if any (reloaded on SIGHUP).
    pub fn token(&self) -> Option<Arc<BearerToken>> {
        self.token.clone()
    }

    /// Sends `Authorization: Bearer <token>` on every call.
    pub fn with_token(mut self, token: Arc<BearerToken>) -> Analyzer {
        self.token = Some(token);
        self
    }

    /// Posts `body` and returns the service's JSON answer; gives up when
    /// `ctx` is done.
    ///
    /// # Errors
    ///
    /// A message saying what went wrong (invariant 1): unreachable, timed
    /// out, cancelled, a TLS handshake refused, a non-2xx status, a
    /// malformed answer.
    pub fn analyze(&self, ctx: &Context, body: &[u8]) -> Result<serde_json::Value, String> {
        let deadline = ctx
            .deadline()
            .unwrap_or_else(|| Instant::now() + DEFAULT_TIMEOUT);
        let result = self.post(ctx, deadline, body);
        // The socket's own timeouts are set to the time left, so one may
        // fire a moment before the timer marks the context: that is the
        // deadline too.
        let at_deadline = Instant::now() + Duration::from_millis(20) >= deadline;
        match (result, ctx.err()) {
            (Ok(value), _) => Ok(value),
            (Err(_), Some(quiesce::ContextError::DeadlineExceeded)) => {
                Err("analyzer did not answer before the job deadline".to_string())
            }
            (Err(_), None) if at_deadline => {
                Err("analyzer did not answer before the job deadline".to_string())
            }
            (Err(_), Some(quiesce::ContextError::Canceled)) => {
                Err("analyzer call cancelled".to_string())
            }
            (Err(err), None) => Err(err),
        }
    }

    fn post(
        &self,
        ctx: &Context,
        deadline: Instant,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve analyzer host {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("analyzer host {} has no address", self.host))?;
        ctx.check().map_err(|e| e.to_string())?;
        let stream = TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1)))
            .map_err(|e| format!("cannot connect to the analyzer at {addr}: {e}"))?;
        // Another handle on the same socket: its timeouts are the socket's,
        // whoever reads it (rustls, under TLS).
        let control = stream
            .try_clone()
            .map_err(|e| format!("analyzer socket: {e}"))?;
        // The context ends the call: at its deadline, or at a shutdown.
        // Shut down, the socket ends rustls's reads and writes as well.
        let _hook = match stream.try_clone() {
            Ok(clone) => ctx.on_cancel(move || {
                let _ = clone.shutdown(Shutdown::Both);
            }),
            Err(e) => return Err(format!("analyzer socket: {e}")),
        };
        let timeouts = || {
            let timeout = Some(left().max(Duration::from_millis(1)));
            control
                .set_write_timeout(timeout)
                .and_then(|()| control.set_read_timeout(timeout))
                .map_err(|e| format!("analyzer socket: {e}"))
        };
        match &self.tls {
            None if self.scheme == Scheme::Http => self.exchange(stream, timeouts, body),
            None => Err("no TLS configuration for an https:// analyzer".to_string()),
            Some(tls) => {
                let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                    .map_err(|e| format!("TLS handshake failed: {}", tls_reason(&e)))?;
                let mut stream = rustls::StreamOwned::new(conn, stream);
                while stream.conn.is_handshaking() {
                    timeouts()?;
                    match stream.conn.complete_io(&mut stream.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("TLS handshake failed: {}", io_reason(&e))),
                    }
                }
                self.exchange(stream, timeouts, body)
            }
        }
    }

    /// Writes the request on `stream` and reads the answer; `timeouts`
    /// sets the socket's timeouts to the time left before each wait.
    fn exchange(
        &self,
        mut stream: impl Read + Write,
        timeouts: impl Fn() -> Result<(), String>,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        let io = |what: &str, e: std::io::Error| format!("analyzer {what}: {}", io_reason(&e));
        // Invariant 2: the whole token in use as the call starts.
        let authorization = match &self.token {
            Some(token) => format!("Authorization: Bearer {}\r\n", token.current()),
            None => String::new(),
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
             {authorization}Content-Length: {}\r\nConnection: close\r\nUser-Agent: quiesce\r\n\r\n",
            self.path,
            self.authority(),
            body.len()
        );
        timeouts()?;
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.flush())
            .map_err(|e| io("write", e))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        let (status, body) = loop {
            timeouts()?;
            match stream.read(&mut chunk) {
                Ok(0) => match read_answer(&response, true)? {
                    Some(answer) => break answer,
                    None => return Err("analyzer closed the connection mid-answer".to_string()),
                },
                Ok(n) => {
                    response.extend_from_slice(&chunk[..n]);
                    if response.len() > MAX_RESPONSE {
                        return Err("analyzer answer larger than 1 MiB".to_string());
                    }
                    if let Some(answer) = read_answer(&response, false)? {
                        break answer;
                    }
                }
                // A stop signal (SIGSTOP, then SIGCONT) interrupts a read
                // with a timeout even under SA_RESTART: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // TLS: the connection closed without close_notify, so an
                // answer framed by the end of the connection may be cut
                // short. One framed by its length is complete by then.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(
                        "analyzer closed the connection mid-answer (no TLS close_notify)"
                            .to_string(),
                    );
                }
                Err(e) => return Err(io("read", e)),
            }
        };
        judge(status, &body)
    }
}

/// An I/O error as a reason of ours (invariant 1): a TLS error by its kind
/// (see [`tls_reason`]), any other by the system's words.
fn io_reason(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls_reason(tls),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the analyzer closed the connection".to_string()
        }
        None => err.to_string(),
    }
}

/// A TLS error as a reason of ours (invariant 1): its kind, never what the
/// peer's certificate says (rustls's own messages may quote its names).
fn tls_reason(err: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => {
            let why = match cert {
                Cert::UnknownIssuer => "is not signed by a trusted CA (unknown issuer)",
                Cert::Expired | Cert::ExpiredContext { .. } => "has expired",
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => "is not valid yet",
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    "does not name the host of --analyzer-url"
                }
                Cert::Revoked => "is revoked",
                Cert::BadEncoding => "is malformed",
                Cert::BadSignature | Cert::UnsupportedSignatureAlgorithmContext { .. } => {
                    "has a bad or unsupported signature"
                }
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
                    "is not for a TLS server"
                }
                _ => "is refused",
            };
            format!("the analyzer's certificate {why}")
        }
        E::AlertReceived(alert) => format!("the analyzer sent the TLS alert {alert:?}"),
        E::NoCertificatesPresented => "the analyzer presented no certificate".to_string(),
        E::PeerIncompatible(why) => format!("incompatible analyzer ({why:?})"),
        E::PeerMisbehaved(why) => format!("the analyzer broke the TLS protocol ({why:?})"),
        E::InvalidMessage(why) => format!("malformed TLS message ({why:?})"),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "unexpected TLS message".to_string()
        }
        E::DecryptError => "cannot decrypt the analyzer's data".to_string(),
        E::PeerSentOversizedRecord => "oversized TLS record".to_string(),
        _ => "a TLS error".to_string(),
    }
}

/// The TLS client configuration of an `https://` analyzer, built once at
/// start: ring's primitives (named here, never a process-wide default that
/// may be missing), TLS 1.2 and 1.3, trust in the CA certificates of the
/// PEM file `ca` (which replace the defaults) or else in webpki-roots
/// (Mozilla's), no client certificate.
///
/// # Errors
///
/// A CA file that cannot be read, holds no certificate, or one rustls
/// cannot use as a trust anchor.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let shown = path.display();
            let mut pem = Vec::new();
            std::fs::File::open(path)
                .and_then(|file| {
                    if !file.metadata()?.is_file() {
                        return Err(std::io::Error::other("not a regular file"));
                    }
                    file.take(MAX_CA_FILE + 1).read_to_end(&mut pem)
                })
                .map_err(|e| format!("cannot read {shown}: {e}"))?;
            if pem.len() as u64 > MAX_CA_FILE {
                return Err(format!("{shown} is larger than {MAX_CA_FILE} bytes"));
            }
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{shown} is not a PEM file of certificates: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "{shown} holds no certificate (PEM, -----BEGIN CERTIFICATE-----)"
                ));
            }
            for (i, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    format!(
                        "{shown}: certificate {} cannot be a trust anchor: {e}",
                        i + 1
                    )
                })?;
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The analyzer's bearer token, from `--analyzer-token-file`: one token,
/// trimmed, re-read on SIGHUP (invariants 2, 3).
pub struct BearerToken {
    path: PathBuf,
    token: RwLock<Arc<str>>,
}

impl fmt::Debug for BearerToken {
    /// The file, never the token (invariant 2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl BearerToken {
    /// Reads the token file at `path`, which must be private, like the
    /// tokens file (`auth::read_private`).
    ///
    /// # Errors
    ///
    /// When it cannot be read, is readable by others (with the `chmod`
    /// that fixes it), or does not hold one token; never with the token.
    pub fn load(path: &Path) -> Result<BearerToken, String> {
        Ok(BearerToken {
            path: path.to_path_buf(),
            token: RwLock::new(read_token(path)?),
        })
    }

    /// Re-reads the file (on SIGHUP): its token replaces the one in use,
    /// or, when the file cannot be used, the old one stays (invariant 3).
    /// Logs either way.
    ///
    /// # Errors
    ///
    /// Why the file could not be used (logged already).
    pub fn reload(&self) -> Result<(), String> {
        match read_token(&self.path) {
            Ok(token) => {
                let changed = *self.token.read() != token;
                *self.token.write() = token;
                log::info!(
                    "analyzer token file {} reloaded ({})",
                    self.path.display(),
                    if changed {
                        "a new token"
                    } else {
                        "the same token"
                    }
                );
                Ok(())
            }
            Err(err) => {
                log::error!("{err}; not reloaded: the analyzer token loaded before stays in use");
                Err(err)
            }
        }
    }

    /// The token in use.
    fn current(&self) -> Arc<str> {
        self.token.read().clone()
    }
}

/// The one token in the file at `path`.
fn read_token(path: &Path) -> Result<Arc<str>, String> {
    let text = super::auth::read_private("analyzer token file", path, MAX_TOKEN_FILE)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "the analyzer token file {} is empty",
            path.display()
        ));
    }
    // Not echoed, even in part (invariant 2); a line break would end the
    // header and start another.
    if !token.chars().all(super::auth::token_char) {
        return Err(format!(
            "the analyzer token file {} must hold one token, of A-Z a-z 0-9 - . _ ~ + / = \
             only (no spaces, no second line)",
            path.display()
        ));
    }
    Ok(Arc::from(token))
}

/// The final answer in `buf` — its status and its body, de-chunked — once
/// it is all there: interim `1xx` answers (`100 Continue`, `103 Early
/// Hints`) before it are skipped, and the body is framed by
/// `Transfer-Encoding: chunked`, by `Content-Length`, or by the end of the
/// connection (`eof`: nothing more will come). `None`: not all there yet.
///
/// # Errors
///
/// A malformed answer, or (at `eof`) one cut short.
fn read_answer(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let cut_short = || {
        if eof {
            Err("analyzer closed the connection mid-answer".to_string())
        } else {
            Ok(None)
        }
    };
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return cut_short(),
            Err(e) => return Err(format!("analyzer sent a malformed answer: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            // Not an interim answer: the connection would leave HTTP.
            return Err("analyzer answered 101 (switching protocols)".to_string());
        }
        if (100..200).contains(&status) {
            at += head; // an interim answer has no body; the real one follows
            continue;
        }
        let rest = &buf[at + head..];
        if chunked(resp.headers) {
            return match dechunk(rest)? {
                Some(body) => Ok(Some((status, body))),
                None => cut_short(),
            };
        }
        return match content_length(resp.headers)? {
            Some(len) if rest.len() >= len => Ok(Some((status, rest[..len].to_vec()))),
            Some(_) => cut_short(),
            // Neither: the body is what comes until the connection closes
            // (we asked for `Connection: close`).
            None if eof => Ok(Some((status, rest.to_vec()))),
            None => Ok(None),
        };
    }
}

/// Whether the answer's last transfer coding is `chunked`.
fn chunked(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The body of a chunked answer, once its last chunk and trailers are in
/// `data`; `None` before.
///
/// # Errors
///
/// A malformed chunk size or chunk.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("analyzer sent a malformed chunk size".to_string()),
        };
        data = &data[used..];
        if size == 0 {
            // Trailer fields, if any, end with an empty line.
            let ended = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(ended.then_some(body));
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|&n| n <= MAX_RESPONSE)
            .ok_or_else(|| "analyzer answer larger than 1 MiB".to_string())?;
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("analyzer sent a malformed chunk".to_string());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The answer's `Content-Length`, if it has one.
///
/// # Errors
///
/// One that is not a plain number.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, String> {
    let Some(header) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    else {
        return Ok(None);
    };
    std::str::from_utf8(header.value)
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| "analyzer sent a malformed Content-Length".to_string())
}

/// The analysis in a final answer: its JSON body when the status is 2xx.
/// Another status is an error that names the status only: what the peer
/// sent is not repeated (it may echo the report, and errors are shown to
/// API callers).
fn judge(status: u16, body: &[u8]) -> Result<serde_json::Value, String> {
    if !(200..300).contains(&status) {
        return Err(format!("analyzer answered {status}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("analyzer answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        let a = Analyzer::parse("http://127.0.0.1:9000/v1/analyze").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("127.0.0.1", 9000, "/v1/analyze")
        );
        let a = Analyzer::parse("http://analyzer").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("analyzer", 80, "/")
        );
        let a = Analyzer::parse("http://[::1]:81/x").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 81));
        assert_eq!(a.authority(), "[::1]:81", "the Host header's form");
        assert!(
            Analyzer::parse("ftp://a")
                .unwrap_err()
                .contains("only http:// and https://")
        );
        assert!(
            Analyzer::parse("https://::1/x")
                .unwrap_err()
                .contains("brackets")
        );
        assert!(Analyzer::parse("https://[nope]/").is_err());
        assert!(Analyzer::parse("https://user:pw@host/").is_err());
        assert!(
            Analyzer::parse("http://a:port/")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(Analyzer::parse("http:///x").is_err());
    }

    #[test]
    fn https_urls_parse_with_port_443_by_default() {
        let a = Analyzer::parse("https://analyzer.example/v1/analyze").unwrap();
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port, a.path.as_str()),
            (Scheme::Https, "analyzer.example", 443, "/v1/analyze")
        );
        assert_eq!(a.url(), "https://analyzer.example:443/v1/analyze");
        let a = Analyzer::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("127.0.0.1", 8443, "/")
        );
        let a = Analyzer::parse("https://[::1]/x").unwrap();
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Https, "::1", 443)
        );
        assert_eq!(a.authority(), "[::1]:443");
        let a = Analyzer::parse("https://[fe80::1]:9443/a/b").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("fe80::1", 9443, "/a/b")
        );
        assert!(
            Analyzer::parse("https://a:99999/")
                .unwrap_err()
                .contains("invalid port")
        );
        // An IP address is a server name too (its certificate's IP SAN).
        let config = client_config(None).unwrap();
        for url in ["https://[::1]/", "https://127.0.0.1/", "https://localhost/"] {
            let a = Analyzer::parse(url)
                .unwrap()
                .with_tls(config.clone())
                .unwrap();
            assert!(a.tls.is_some(), "{url}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for (url, loopback) in [
            ("http://127.0.0.1:9000/", true),
            ("http://127.3.2.1/", true),
            ("http://[::1]/", true),
            ("http://LocalHost/", true),
            ("http://10.0.0.5/", false),
            ("http://analyzer/", false),
            ("http://localhost.example/", false),
        ] {
            assert_eq!(
                Analyzer::parse(url).unwrap().host_is_loopback(),
                loopback,
                "{url}"
            );
        }
    }

    #[test]
    fn tls_errors_are_named_by_kind_never_by_the_certificate_s_words() {
        let err =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("analyzer").unwrap(),
                presented: vec!["DNS name \"P-1234.example\"".into()],
            });
        let reason = tls_reason(&err);
        assert_eq!(
            reason,
            "the analyzer's certificate does not name the host of --analyzer-url"
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(io_reason(&io), reason);
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(tls_reason(&unknown).contains("not signed by a trusted CA"));
        assert!(tls_reason(&rustls::Error::General("P-1234".into())) == "a TLS error");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("quiesce-analyzer-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(
            client_config(Some(&empty))
                .unwrap_err()
                .contains("holds no certificate")
        );
        let missing = dir.join("missing.pem");
        assert!(
            client_config(Some(&missing))
                .unwrap_err()
                .contains("cannot read")
        );
        assert!(
            client_config(Some(&dir))
                .unwrap_err()
                .contains("not a regular file")
        );
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        assert!(client_config(Some(&broken)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_file_holds_one_token_and_is_never_echoed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("quiesce-analyzer-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("  s3cret-Token_1\n", 0o600);
        let token = BearerToken::load(&file).unwrap();
        assert_eq!(&*token.current(), "s3cret-Token_1");
        assert!(!format!("{token:?}").contains("s3cret"));
        for bad in ["s3cret one\n", "s3cret\nanother\n", "\n \n"] {
            write(bad, 0o600);
            let err = token.reload().unwrap_err();
            assert!(!err.contains("s3cret") && !err.contains("another"), "{err}");
            assert_eq!(&*token.current(), "s3cret-Token_1", "kept after {bad:?}");
        }
        write("n3w-token\n", 0o644);
        assert!(token.reload().unwrap_err().contains("chmod 600"));
        write("n3w-token\n", 0o600);
        token.reload().unwrap();
        assert_eq!(&*token.current(), "n3w-token");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads `raw` as it would arrive in pieces of `step` bytes, then the
    /// end of the connection.
    fn read_in_steps(raw: &[u8], step: usize) -> Result<serde_json::Value, String> {
        let mut buf = Vec::new();
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            if let Some((status, body)) = read_answer(&buf, false)? {
                return judge(status, &body);
            }
        }
        match read_answer(&buf, true)? {
            Some((status, body)) => judge(status, &body),
            None => Err("closed mid-answer".to_string()),
        }
    }

    #[test]
    fn responses_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"risk\":0.2}";
        assert_eq!(read_in_steps(ok, 5), Ok(serde_json::json!({"risk": 0.2})));
        let err = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        // The status, never the peer's words.
        assert_eq!(
            read_in_steps(err, 64),
            Err("analyzer answered 503".to_string())
        );
        assert!(read_in_steps(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", 64).is_err());
        // Cut short: not complete until the end, then an error.
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}";
        assert_eq!(read_answer(short, false), Ok(None));
        assert!(read_answer(short, true).is_err());
        let bad_length = b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}";
        assert!(read_answer(bad_length, false).is_err());
    }

    #[test]
    fn chunked_answers_are_read_whole_in_any_pieces() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\n{\"ris\r\n7;ext=1\r\nk\":0.5}\r\n0\r\nX-Trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(
                read_in_steps(raw, step),
                Ok(serde_json::json!({"risk": 0.5})),
                "step {step}"
            );
        }
        let bad_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(read_answer(bad_size, false).is_err());
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n";
        assert!(read_answer(bad_chunk, false).is_err());
        let unfinished = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n";
        assert_eq!(read_answer(unfinished, false), Ok(None));
        assert!(read_answer(unfinished, true).is_err());
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        for step in [1, 10, 200] {
            assert_eq!(
                read_in_steps(raw, step),
                Ok(serde_json::json!({})),
                "step {step}"
            );
        }
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
        assert!(read_answer(switching, false).is_err());
        // Neither length nor chunks: the body runs to the end of the connection.
        let until_close = b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}";
        assert_eq!(read_answer(until_close, false), Ok(None));
        assert_eq!(
            read_in_steps(until_close, 4),
            Ok(serde_json::json!({"a": 1}))
        );
    }
}
