//! Who may call the API: bearer tokens from `--tokens-file` (issue 13).
//!
//! The file holds one token a line, `name:secret` or `name:secret:scope`
//! (`write`: `POST` only; `read`: `GET` only; `all`, the default: both),
//! with `#` comments and blank lines. Requests to `/v1/*` carry
//! `Authorization: Bearer <secret>`; the name is the caller's, for logs and
//! the audit trail. `/livez`, `/healthz` and `/readyz` are open; `/metrics`
//! is open unless `--metrics-token-required` (then any valid token). Several
//! tokens are valid at once, so that a client's token can be rotated
//! without downtime: add the new one, SIGHUP, move the client, remove the
//! old one, SIGHUP.
//!
//! # What it owns
//!
//! [`Auth`]: the tokens file's path, the set of tokens loaded from it, and
//! the counter of refused requests by reason (its own Prometheus registry,
//! appended to `/metrics` by the intake).
//!
//! # Which thread touches what
//!
//! - The main thread loads the first set ([`Auth::new`]) before anything
//!   is created: a file that cannot be used stops the start.
//! - The handler threads of both listeners read the current set
//!   ([`Auth::check`]).
//! - `signals-other` loads a new set on SIGHUP ([`Auth::reload`]) and
//!   swaps it in.
//!
//! # Invariants
//!
//! 1. A request is checked against one whole set, the old or the new,
//!    never a mix: the set is read from the file and built outside the
//!    lock, then swapped whole (an `Arc`). A token in both files is
//!    therefore never refused during a reload.
//! 2. The set in use is never empty while a tokens file is given, and a
//!    file that fails to load (readable by others, a bad line, no token)
//!    never replaces it: the reload logs why and keeps the old set.
//! 3. Secrets are held only as HMAC-SHA-256 tags. A presented secret's tag
//!    is compared with every token's in constant time
//!    (`Mac::verify_slice`), all of them, without stopping at a match:
//!    the time taken tells neither the secret nor which token matched.
//! 4. No secret, loaded or presented, is logged, counted or answered.
//!    Errors about the file name its line numbers, never a line's text
//!    (a line without a `:` may be a secret); logs and metrics name
//!    tokens by their name only.
//!
//! Lock rule: the set's lock is held only to clone or replace the `Arc`.

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::RwLock;
use prometheus::{Encoder as _, IntCounterVec, Opts, Registry, TextEncoder};
use sha2::Sha256;

use super::http::{Request, Response};

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 16;

/// The largest tokens file read (a few thousand tokens).
const MAX_FILE: u64 = 1 << 20;

/// The key of the tags the secrets are held as. Not a secret itself: the
/// tag only makes every comparison the same length (invariant 3).
const TAG_KEY: &[u8] = b"quiesce bearer token tag";

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `POST` to `/v1/*` only (a site's app posting reports).
    Write,
    /// `GET` (and any method but `POST`) of `/v1/*` only (a reader).
    Read,
    /// Both.
    All,
}

impl Scope {
    fn parse(text: &str) -> Option<Scope> {
        match text {
            "write" => Some(Scope::Write),
            "read" => Some(Scope::Read),
            "all" => Some(Scope::All),
            _ => None,
        }
    }

    fn allows(self, need: Need) -> bool {
        match need {
            Need::Open | Need::AnyToken => true,
            Need::Write => matches!(self, Scope::Write | Scope::All),
            Need::Read => matches!(self, Scope::Read | Scope::All),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::All => "all",
        })
    }
}

/// What a request asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: probes, and paths that serve nothing (404).
    Open,
    /// A valid token of any scope (`/metrics` with
    /// `--metrics-token-required`).
    AnyToken,
    /// A token that may write: `POST /v1/*`.
    Write,
    /// A token that may read: any other method on `/v1/*`.
    Read,
}

/// Who made a request, as far as the handler knows once it is
/// authenticated: for the logs, and for the audit trail.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The token's name; without one (no tokens file, an open route), the
    /// subject of the client's certificate under mutual TLS; else `None`.
    pub name: Option<String>,
    /// The peer's address (the TCP peer: a proxy's, behind one).
    pub peer: Option<SocketAddr>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}")?,
            None => f.write_str("anonymous")?,
        }
        match self.peer {
            Some(peer) => write!(f, " from {peer}"),
            None => Ok(()),
        }
    }
}

struct Token {
    name: String,
    /// HMAC-SHA-256 of the secret under [`TAG_KEY`] (invariant 3).
    tag: Vec<u8>,
    scope: Scope,
}

/// The tokens of one tokens file.
pub struct TokenSet {
    tokens: Vec<Token>,
}

fn keyed() -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(TAG_KEY).expect("HMAC takes keys of any length")
}

/// Whether `c` may be in a bearer token (RFC 6750 §2.1's `b64token`).
pub(super) fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

impl TokenSet {
    /// Parses a tokens file's text.
    ///
    /// # Errors
    ///
    /// The first bad line, by number (invariant 4), or an empty set.
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let mut tokens: Vec<(usize, Token)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let name = parts.next().unwrap_or_default().trim();
            let Some(secret) = parts.next().map(str::trim) else {
                return Err(format!(
                    "line {n}: expected name:secret or name:secret:scope"
                ));
            };
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._@".contains(c))
            {
                return Err(format!(
                    "line {n}: a token's name is 1 to 64 of A-Z a-z 0-9 - . _ @"
                ));
            }
            let scope = match parts.next() {
                None => Scope::All,
                // Not echoed: a secret with a ':' would show (invariant 4).
                Some(scope) => Scope::parse(scope.trim()).ok_or_else(|| {
                    format!(
                        "line {n} ({name}): the part after the second ':' must be a scope: \
                         write, read or all (a secret cannot contain ':')"
                    )
                })?,
            };
            if secret.len() < MIN_SECRET || !secret.chars().all(token_char) {
                return Err(format!(
                    "line {n} ({name}): the secret must be at least {MIN_SECRET} characters of \
                     A-Z a-z 0-9 - . _ ~ + / = (e.g. from `openssl rand -hex 32`)"
                ));
            }
            let mut mac = keyed();
            mac.update(secret.as_bytes());
            let tag = mac.finalize().into_bytes().to_vec();
            if let Some((m, other)) = tokens.iter().find(|(_, t)| t.name == name) {
                return Err(format!(
                    "line {n}: the name {name} is taken by line {m} ({})",
                    other.name
                ));
            }
            if let Some((m, other)) = tokens.iter().find(|(_, t)| t.tag == tag) {
                return Err(format!(
                    "line {n} ({name}): the same secret as line {m} ({}); each token needs its own",
                    other.name
                ));
            }
            tokens.push((
                n,
                Token {
                    name: name.to_string(),
                    tag,
                    scope,
                },
            ));
        }
        if tokens.is_empty() {
            return Err("no token in it (one name:secret or name:secret:scope a line)".into());
        }
        Ok(TokenSet {
            tokens: tokens.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// Reads and parses the tokens file at `path`, which must be private.
    ///
    /// # Errors
    ///
    /// When it cannot be read, is readable by others (with the `chmod`
    /// that fixes it) or does not parse.
    pub fn load(path: &Path) -> Result<TokenSet, String> {
        let text = read_private("tokens file", path, MAX_FILE)?;
        TokenSet::parse(&text).map_err(|e| format!("the tokens file {}: {e}", path.display()))
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The token whose secret is `secret`, compared with every token in
    /// constant time (invariant 3).
    fn find(&self, secret: &str) -> Option<&Token> {
        let mut mac = keyed();
        mac.update(secret.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if mac.clone().verify_slice(&token.tag).is_ok() {
                found = found.or(Some(token));
            }
        }
        found
    }

    fn names(&self) -> String {
        let names: Vec<String> = self
            .tokens
            .iter()
            .map(|t| format!("{} ({})", t.name, t.scope))
            .collect();
        names.join(", ")
    }
}

/// Reads the file at `path`, which holds secrets (`what` names it in the
/// errors: "tokens file"), as text: a regular file, private (see
/// [`check_private`]), at most `max` bytes.
///
/// # Errors
///
/// When it cannot be read, is not a regular file, is readable by others
/// (with the `chmod` that fixes it) or is larger than `max`; never with
/// its contents.
pub(super) fn read_private(what: &str, path: &Path, max: u64) -> Result<String, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("cannot open the {what} {shown}: {e}"))?;
    // The mode of the file opened, not of whatever the path names later.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the {what} {shown} is not a regular file"));
    }
    check_private(what, path, &meta)?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!("the {what} {shown} is larger than {max} bytes"));
    }
    Ok(text)
}

/// Refuses a file of secrets (`what`: "tokens file") others may read or
/// change: like PostgreSQL's rule for its key file, 0600 or less when it
/// is the process user's, and 0640 or less when it is root's (a Kubernetes
/// Secret volume with an `fsGroup` is root's and group-readable).
fn check_private(what: &str, path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display();
    let mode = meta.mode() & 0o777;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() == me {
        if mode & 0o077 != 0 {
            return Err(format!(
                "the {what} {shown} is readable or writable by others (mode {mode:04o}); \
                 it holds secrets: chmod 600 {shown}"
            ));
        }
    } else if meta.uid() == 0 {
        if mode & 0o037 != 0 {
            return Err(format!(
                "the {what} {shown} (owned by root) is accessible to others \
                 (mode {mode:04o}); it holds secrets: chmod 640 {shown} (or 600)"
            ));
        }
    } else {
        return Err(format!(
            "the {what} {shown} belongs to uid {}; it must belong to this process's \
             user (uid {me}) or to root",
            meta.uid()
        ));
    }
    Ok(())
}

/// Why a request was refused, as counted.
#[derive(Clone, Copy)]
enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is no token's.
    Invalid,
    /// A valid token without the scope.
    Forbidden,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::Missing, Refusal::Invalid, Refusal::Forbidden];

    fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// The API's gatekeeper: the tokens in use (none: open, loopback only),
/// checked on each request, reloaded on SIGHUP.
pub struct Auth {
    /// `None`: no tokens file, every request is let through.
    path: Option<PathBuf>,
    /// The set in use (invariants 1, 2).
    set: RwLock<Arc<TokenSet>>,
    metrics_need_token: bool,
    registry: Registry,
    failures: IntCounterVec,
}

impl Auth {
    /// Loads the tokens file, if any.
    ///
    /// # Errors
    ///
    /// When the file cannot be used (see [`TokenSet::load`]).
    pub fn new(path: Option<PathBuf>, metrics_need_token: bool) -> Result<Auth, String> {
        let set = match &path {
            Some(path) => TokenSet::load(path)?,
            None => TokenSet { tokens: Vec::new() },
        };
        if let Some(path) = &path {
            log::info!("{} token(s) loaded from {}", set.len(), path.display());
            log::debug!("tokens: {}", set.names());
        }
        let registry = Registry::new();
        let failures = IntCounterVec::new(
            Opts::new(
                "quiesce_auth_failures_total",
                "Requests refused for their bearer token, by reason: missing, invalid (no \
                 token's), forbidden (a valid token without the scope).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in Refusal::ALL {
            failures.with_label_values(&[reason.label()]);
        }
        registry
            .register(Box::new(failures.clone()))
            .expect("unique metric names");
        Ok(Auth {
            path,
            set: RwLock::new(Arc::new(set)),
            metrics_need_token,
            registry,
            failures,
        })
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the tokens file (on SIGHUP): the new set replaces the old
    /// at once, or, when the file cannot be used, the old set stays
    /// (invariant 2). Logs either way.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        // Built outside the lock (invariant 1, the lock rule).
        match TokenSet::load(path) {
            Ok(set) => {
                let names = set.names();
                let now = set.len();
                let before = std::mem::replace(&mut *self.set.write(), Arc::new(set)).len();
                log::info!(
                    "tokens file reloaded: {now} token(s) loaded from {} (there were {before})",
                    path.display()
                );
                log::debug!("tokens: {names}");
                Ok(now)
            }
            Err(err) => {
                let kept = self.set.read().len();
                log::error!("{err}; not reloaded: the {kept} token(s) loaded before stay valid");
                Err(err.to_string())
            }
        }
    }

    /// What `request` asks of its caller: every route that reads or writes
    /// reports is under `/v1/`.
    fn need(&self, request: &Request) -> Need {
        match request.path.as_str() {
            "/metrics" if self.metrics_need_token => Need::AnyToken,
            // Every route that reads or writes patient data: the API's and
            // the FHIR ones.
            path if path == "/v1"
                || path.starts_with("/v1/")
                || path == "/fhir"
                || path.starts_with("/fhir/") =>
            {
                if request.method == "POST" {
                    Need::Write
                } else {
                    Need::Read
                }
            }
            _ => Need::Open,
        }
    }

    /// Checks `request`'s bearer token against what its route needs: the
    /// caller, or the `401`/`403` to answer (counted and logged here).
    ///
    /// # Errors
    ///
    /// The answer refusing the request.
    pub fn check(&self, request: &Request) -> Result<Caller, Response> {
        let mut caller = Caller {
            name: request.client.as_deref().map(String::from),
            peer: request.peer,
        };
        let need = self.need(request);
        if need == Need::Open || !self.enabled() {
            return Ok(caller);
        }
        let presented = request.header("authorization").and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim_start())
        });
        let set = self.set.read().clone();
        let token = match presented {
            None => return Err(self.refuse(request, Refusal::Missing)),
            Some(secret) => match set.find(secret) {
                None => return Err(self.refuse(request, Refusal::Invalid)),
                Some(token) => token,
            },
        };
        caller.name = Some(token.name.clone());
        if !token.scope.allows(need) {
            return Err(self.refuse_token(request, &caller, token.scope));
        }
        Ok(caller)
    }

    fn refuse(&self, request: &Request, why: Refusal) -> Response {
        self.failures.with_label_values(&[why.label()]).inc();
        let peer = peer_text(request.peer);
        let (message, challenge) = match why {
            Refusal::Missing => (
                "missing bearer token (Authorization: Bearer <token>)",
                "Bearer realm=\"quiesce\"",
            ),
            _ => (
                "invalid bearer token",
                "Bearer realm=\"quiesce\", error=\"invalid_token\"",
            ),
        };
        log::warn!(
            "401 {}: {} {} from {peer}",
            why.label(),
            request.method,
            route_label(&request.path)
        );
        Response::json(401, &serde_json::json!({ "error": message }))
            .with_header("WWW-Authenticate", challenge)
    }

    fn refuse_token(&self, request: &Request, caller: &Caller, scope: Scope) -> Response {
        self.failures
            .with_label_values(&[Refusal::Forbidden.label()])
            .inc();
        log::warn!(
            "403 forbidden: {} {} by {caller}: the token's scope is {scope}",
            request.method,
            route_label(&request.path),
        );
        Response::json(
            403,
            &serde_json::json!({
                "error": format!("this token's scope ({scope}) does not allow {}", request.method)
            }),
        )
        .with_header(
            "WWW-Authenticate",
            "Bearer realm=\"quiesce\", error=\"insufficient_scope\"",
        )
    }

    /// Appends the counter of refusals to a `/metrics` body.
    pub fn render_metrics(&self, out: &mut Vec<u8>) {
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), out) {
            log::error!("cannot encode the auth metrics: {err}");
        }
    }
}

fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string())
}

/// The route of a path, for a log line: never the report id in it (no
/// identifiers in logs, issue 13).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/reports" => "/v1/reports",
        "/v1/enrollment" => "/v1/enrollment",
        "/metrics" => "/metrics",
        path if path.starts_with("/v1/reports/") => "/v1/reports/{id}",
        _ => "/v1/…",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef";
    const B: &str = "fedcba9876543210";

    fn request(method: &str, path: &str, auth: Option<&str>) -> Request {
        let mut headers = Vec::new();
        if let Some(auth) = auth {
            headers.push(("authorization".to_string(), auth.to_string()));
        }
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers,
            body: Vec::new(),
            peer: None,
            client: None,
            received: std::time::Instant::now(),
            id: std::sync::OnceLock::new(),
        }
    }

    fn auth(text: &str) -> Auth {
        let mut auth = Auth::new(None, false).expect("no file");
        auth.path = Some(PathBuf::from("tokens"));
        *auth.set.write() = Arc::new(TokenSet::parse(text).expect("parses"));
        auth
    }

    #[test]
    fn lines_parse_with_comments_scopes_and_the_default() {
        let set = TokenSet::parse(&format!(
            "# who may call\n\n  site12:{A}:write \nreader:{B}:read\r\nops:{A}x\n"
        ))
        .expect("parses");
        let scopes: Vec<(&str, Scope)> = set
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.scope))
            .collect();
        assert_eq!(
            scopes,
            [
                ("site12", Scope::Write),
                ("reader", Scope::Read),
                ("ops", Scope::All)
            ]
        );
        assert_eq!(set.find(B).map(|t| t.name.as_str()), Some("reader"));
        assert!(set.find("0123456789abcdeg").is_none());
        assert!(set.find("").is_none());
    }

    #[test]
    fn bad_lines_are_named_by_number_and_never_show_the_secret() {
        let cases = [
            (format!("a:{A}\nshort:0123456789\n"), "line 2 (short)"),
            (format!("# c\n{A}\n"), "line 2:"),
            (format!("a:{A}:admin\n"), "line 1 (a)"),
            (format!("a:{A}:x:{B}\n"), "line 1 (a)"),
            (
                format!("a:{A}\na:{B}\n"),
                "line 2: the name a is taken by line 1",
            ),
            (
                format!("a:{A}\nb:{A}\n"),
                "line 2 (b): the same secret as line 1",
            ),
            (format!("bad name:{A}\n"), "line 1:"),
            (format!("a:{A} {B}\n"), "line 1 (a)"),
            ("# nothing\n\n".to_string(), "no token"),
        ];
        for (text, expected) in cases {
            let err = TokenSet::parse(&text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(err.contains(expected), "{text:?}: {err}");
            for secret in [A, B, "0123456789"] {
                assert!(!err.contains(secret), "{text:?}: the secret shows in {err}");
            }
        }
    }

    #[test]
    fn scopes_decide_what_a_valid_token_may_do() {
        let auth = auth(&format!("w:{A}:write\nr:{B}:read\n"));
        let bearer_a = format!("Bearer {A}");
        let bearer_b = format!("bearer  {B}");
        let ok = |method: &str, path: &str, header: Option<&str>| {
            auth.check(&request(method, path, header))
                .map(|c| c.name)
                .map_err(|r| r.status)
        };
        assert_eq!(
            ok("POST", "/v1/reports", Some(&bearer_a)),
            Ok(Some("w".into()))
        );
        assert_eq!(ok("GET", "/v1/reports/x", Some(&bearer_a)), Err(403));
        assert_eq!(
            ok("GET", "/v1/enrollment", Some(&bearer_b)),
            Ok(Some("r".into()))
        );
        assert_eq!(ok("POST", "/v1/reports", Some(&bearer_b)), Err(403));
        assert_eq!(ok("POST", "/v1/reports", None), Err(401));
        assert_eq!(ok("POST", "/v1/reports", Some(A)), Err(401));
        assert_eq!(
            ok("POST", "/v1/reports", Some(&format!("Basic {A}"))),
            Err(401)
        );
        assert_eq!(ok("GET", "/v1/reports/x", Some("Bearer nope")), Err(401));
        for open in ["/livez", "/healthz", "/readyz", "/metrics", "/other"] {
            assert_eq!(ok("GET", open, None), Ok(None), "{open}");
        }
        let refused = auth.check(&request("GET", "/v1/x", Some("Bearer nope")));
        let challenge = refused.err().and_then(|r| {
            r.headers
                .iter()
                .find(|(n, _)| *n == "WWW-Authenticate")
                .map(|(_, v)| v.clone())
        });
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"quiesce\", error=\"invalid_token\"")
        );
    }

    #[test]
    fn without_a_tokens_file_everything_is_let_through() {
        let auth = Auth::new(None, false).expect("no file");
        let caller = auth
            .check(&request("POST", "/v1/reports", None))
            .map(|c| c.name);
        assert_eq!(caller.ok(), Some(None));
    }
}
