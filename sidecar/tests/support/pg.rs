//! A real PostgreSQL for the tests, never mocked: a cluster made with
//! `initdb` in a temporary directory, its server listening on a unix
//! socket there and on a free `127.0.0.1` port, trust authentication for
//! the `postgres` role, the server's own defaults for durability (`fsync`
//! and `synchronous_commit` on). Each test takes a fresh database of its
//! own with [`Cluster::database`] and talks to it with the real client,
//! `psql`.
//!
//! Which cluster: [`pg_cluster`] is the one shared by all the tests of a
//! test binary, started on first use. A test that stops or kills its
//! server (a database restarted under load) makes its own with
//! [`Cluster::new`] so as not to disturb the others; it is stopped and
//! removed when dropped.
//!
//! No server binaries (`pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`): with `CI` set the test panics (CI must
//! run these tests); otherwise a loud `SKIPPED:` line goes to stderr and
//! both return `None`, so the test returns early.
//!
//! Users: the server refuses to run as root, so when the tests run as
//! root, `initdb` and the server run as the `postgres` OS user (setuid in
//! the child with `CommandExt::uid`/`gid`) and the cluster's directory is
//! owned by it; otherwise they run as the current user. `psql` runs as
//! the test's user and logs in as role `postgres`.
//!
//! Invariants:
//! 1. The server never outlives the test process. Rust does not drop
//!    statics, so the server (`postgres`) is started by a small `sh`
//!    wrapper ([`WRAPPER`]) that waits on its stdin, a pipe whose only
//!    writer is the test process (std's pipes are close-on-exec, so no
//!    other child inherits it). When the test process exits — normally,
//!    on a panic or an abort, or SIGKILLed — the kernel closes the pipe,
//!    the wrapper reads end-of-file, sends the server SIGINT (fast
//!    shutdown: open sessions are ended, nothing acknowledged is lost),
//!    waits for it and removes the cluster's directory. The wrapper runs
//!    in a process group of its own, so a ^C to the tests reaches it only
//!    through that pipe, after it has been set up.
//! 2. [`Cluster::stop`] writes `stop` to that pipe instead: the wrapper
//!    stops the server the same way and exits, keeping the directory, so
//!    [`Cluster::start`] can start the same cluster on the same port.
//! 3. The server's state (`server`) is only changed under its lock, so a
//!    `stop` and a `start` of one cluster never interleave.
//!
//! The one gap: a test process killed while `initdb` runs (before the
//! wrapper exists) leaves that directory behind (no process).
//!
//! Self-contained (std and rustix only).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::temp::TempDir;

/// How long a server may take to accept connections after its start, and
/// to exit after a stop.
pub const PG_START_LIMIT: Duration = Duration::from_secs(60);

/// The wrapper of inv. 1 and 2: `sh -c WRAPPER sh <postgres> <data>
/// <socket dir> <port> <log> <root>`. It prints the server's pid, then
/// waits on stdin: a line (`stop`) stops the server and keeps the
/// directory; end-of-file stops it and removes the directory. What the
/// wrapper and the server write goes to the server's log. SIGPIPE is
/// ignored: a test process gone before it read the pid must not kill the
/// wrapper and orphan the server.
const WRAPPER: &str = r#"
exec 2>>"$5"
trap '' PIPE
"$1" -D "$2" -k "$3" -p "$4" -c listen_addresses=127.0.0.1 -c max_connections=200 \
    </dev/null >>"$5" 2>&1 &
pid=$!
echo "$pid"
if read -r line; then keep=1; else keep=0; fi
kill -INT "$pid" 2>/dev/null
wait "$pid"
if [ "$keep" = 0 ]; then rm -rf "$6"; fi
"#;

/// The OS user the server runs as: `None` for the test's own user.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running (or stopped) wrapper with its server.
struct Server {
    wrapper: Child,
    /// Inv. 1: the write end of the wrapper's stdin, held only here.
    stdin: ChildStdin,
    /// The postmaster's pid.
    pid: u32,
}

/// A PostgreSQL cluster in a temporary directory, with its own server.
pub struct Cluster {
    bindir: PathBuf,
    run_as: Option<RunAs>,
    root: TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    /// Inv. 3.
    server: Mutex<Option<Server>>,
    next_database: AtomicU64,
}

/// A database of its own for one test, in a [`Cluster`].
pub struct Database {
    name: String,
    port: u16,
    socket_dir: PathBuf,
}

/// The cluster shared by the tests of this test binary, started on first
/// use; `None` (after a loud `SKIPPED:` line) when there are no server
/// binaries and `CI` is not set.
#[track_caller]
pub fn pg_cluster() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    let mut first = false;
    let cluster = SHARED
        .get_or_init(|| {
            first = true;
            Cluster::new()
        })
        .as_ref();
    if cluster.is_none() && !first {
        // Again for every test that asked, so that none passes silently.
        let _ = server_bindir();
    }
    cluster
}

/// The directory of the server binaries, or `None` after the `SKIPPED:`
/// line (a panic with `CI` set).
fn server_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|dir| has_server(dir));
    let newest_installed = || {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let dir = entry.path().join("bin");
                has_server(&dir).then_some((version, dir))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, dir)| dir)
    };
    if let Some(dir) = from_pg_config.or_else(newest_installed) {
        return Some(dir);
    }
    let why = "neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin has `postgres` and \
               `initdb`; install postgresql-15";
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set, so the PostgreSQL tests must run, but there are no server binaries: {why}"
        );
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of a passing test, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: no PostgreSQL server binaries ({why}); {} did not run",
        thread::current().name().unwrap_or("this test")
    );
    None
}

/// `uid` and `gid` of an OS user, with `id(1)`.
fn user_ids(user: &str) -> RunAs {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .unwrap_or_else(|e| panic!("cannot run id(1): {e}"));
        assert!(
            out.status.success(),
            "running as root, the PostgreSQL server needs the OS user `{user}`: `id {flag} {user}` \
             failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("id {flag} {user}: {e}"))
    };
    RunAs {
        uid: id("-u"),
        gid: id("-g"),
    }
}

/// A port nobody listens on now (the server binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
        .port()
}

/// `command` as `run_as` (when set), in `dir`, with no `PG*` variable of
/// the caller's environment.
fn prepare(command: &mut Command, run_as: Option<RunAs>, dir: &Path) {
    command.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    if let Some(RunAs { uid, gid }) = run_as {
        command.uid(uid).gid(gid);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `pid` is a live process (not gone, not a zombie), from
/// `/proc/<pid>/stat`.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

impl Cluster {
    /// A new cluster of its own, started (see the module doc for `None`);
    /// stopped and removed when dropped, or when the test process exits
    /// (inv. 1).
    #[track_caller]
    pub fn new() -> Option<Cluster> {
        let bindir = server_bindir()?;
        let run_as = rustix::process::getuid()
            .is_root()
            .then(|| user_ids("postgres"));
        let root = TempDir::new("pg");
        if let Some(RunAs { uid, gid }) = run_as {
            chown(root.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot chown {}: {e}", root.path().display()));
        }
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", root.path().display()));
        let socket_dir = root.join("socket");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(root.join("data"));
        prepare(&mut initdb, run_as, root.path());
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bindir.join("initdb").display()));
        assert!(out.status.success(), "initdb failed: {}", output_text(&out));
        // The socket directory is made by the server's user: `mkdir` as it.
        let mut mkdir = Command::new("mkdir");
        mkdir.args(["-m", "0700"]).arg(&socket_dir);
        prepare(&mut mkdir, run_as, root.path());
        let out = mkdir.output().expect("cannot run mkdir");
        assert!(out.status.success(), "mkdir failed: {}", output_text(&out));
        let cluster = Cluster {
            bindir,
            run_as,
            data: root.join("data"),
            log: root.join("server.log"),
            socket_dir,
            root,
            port: free_port(),
            server: Mutex::new(None),
            next_database: AtomicU64::new(0),
        };
        cluster.start();
        Some(cluster)
    }

    /// Starts the server (again, after [`Cluster::stop`] or
    /// [`Cluster::kill`]) on the same port, and waits until it accepts
    /// connections. Panics if it is running.
    #[track_caller]
    pub fn start(&self) {
        let mut server = lock(&self.server);
        assert!(server.is_none(), "the PostgreSQL server is already running");
        let deadline = Instant::now() + PG_START_LIMIT;
        loop {
            let mut started = self.spawn();
            match self.wait_ready(&started, deadline) {
                Ok(()) => {
                    *server = Some(started);
                    return;
                }
                Err(why) => {
                    // Inv. 2: stop the wrapper and keep the directory.
                    let _ = writeln!(started.stdin, "stop");
                    let _ = started.wrapper.wait();
                    let log = self.log();
                    // After a kill, the old server's processes may still
                    // hold its shared memory for a moment.
                    let retry = log.lines().last().is_some_and(|line| {
                        line.contains("is still in use") || line.contains("already running")
                    });
                    if !(retry && Instant::now() < deadline) {
                        panic!(
                            "the PostgreSQL server did not start ({why}); its log {}:\n{log}",
                            self.log.display()
                        );
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Spawns the wrapper (inv. 1) and reads the server's pid from it.
    fn spawn(&self) -> Server {
        let mut command = Command::new("sh");
        command
            .args(["-c", WRAPPER, "sh"])
            .arg(self.bindir.join("postgres"))
            .arg(&self.data)
            .arg(&self.socket_dir)
            .arg(self.port.to_string())
            .arg(&self.log)
            .arg(self.root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        prepare(&mut command, self.run_as, self.root.path());
        let mut wrapper = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sh for the PostgreSQL server: {e}"));
        let stdin = wrapper.stdin.take().expect("piped");
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().expect("piped"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("cannot read the server's pid: {e}"));
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the wrapper printed no server pid: {line:?}"));
        Server {
            wrapper,
            stdin,
            pid,
        }
    }

    /// Waits until the server accepts connections on both its socket and
    /// its port, or has died, or `deadline`.
    fn wait_ready(&self, server: &Server, deadline: Instant) -> Result<(), String> {
        let ready = |host: &Path| {
            let mut isready = Command::new(self.bindir.join("pg_isready"));
            isready.arg("-q").arg("-h").arg(host).args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ]);
            prepare(&mut isready, None, self.root.path());
            isready.status().is_ok_and(|status| status.success())
        };
        loop {
            if ready(&self.socket_dir) && ready(Path::new("127.0.0.1")) {
                return Ok(());
            }
            if !alive(server.pid) {
                return Err(format!("the server, pid {}, exited", server.pid));
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {PG_START_LIMIT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: SIGINT) and waits for it to exit;
    /// the cluster stays, for [`Cluster::start`]. Nothing if it is stopped.
    #[track_caller]
    pub fn stop(&self) {
        if let Some(server) = lock(&self.server).take() {
            self.end(server, "stop");
        }
    }

    /// Kills the server's postmaster with SIGKILL (a crash: its sessions
    /// end at once, recovery runs at the next [`Cluster::start`]).
    #[track_caller]
    pub fn kill(&self) {
        let server = lock(&self.server)
            .take()
            .expect("the PostgreSQL server is not running");
        super::process::send_signal(server.pid, "KILL");
        self.end(server, "kill");
    }

    /// Inv. 2: asks the wrapper to stop the server, waits for both.
    #[track_caller]
    fn end(&self, mut server: Server, what: &str) {
        let _ = writeln!(server.stdin, "stop");
        drop(server.stdin);
        let deadline = Instant::now() + PG_START_LIMIT;
        while server.wrapper.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = server.wrapper.kill();
                panic!(
                    "the PostgreSQL server did not exit after {what} within {PG_START_LIMIT:?}; its \
                     log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The postmaster's children end soon after it (they watch it).
        while alive(server.pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server is running (started and not stopped or killed).
    pub fn running(&self) -> bool {
        lock(&self.server).is_some()
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.server).as_ref().map(|server| server.pid)
    }

    /// The TCP port on `127.0.0.1` (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A fresh, empty database of its own (`t_<n>`).
    #[track_caller]
    pub fn database(&self) -> Database {
        self.database_with("")
    }

    /// A fresh, empty database of its own (`t_<n>`), made with `options`
    /// added to its `CREATE DATABASE` (a template, a locale: `TEMPLATE
    /// template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'`).
    #[track_caller]
    pub fn database_with(&self, options: &str) -> Database {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let admin = Database {
            name: "postgres".into(),
            port: self.port,
            socket_dir: self.socket_dir.clone(),
        };
        let name = format!("t_{n}");
        admin.query(&format!("CREATE DATABASE {name} {options}"));
        Database { name, ..admin }
    }
}

impl Drop for Cluster {
    /// Inv. 1 by hand: end-of-file on the wrapper's stdin stops the server
    /// and removes the directory (and the `TempDir` does too).
    fn drop(&mut self) {
        let server = self
            .server
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut server) = server {
            drop(server.stdin);
            let _ = server.wrapper.wait();
        }
    }
}

/// `s` with every byte outside `[A-Za-z0-9-._~/]` percent-encoded (for a
/// path in a URL's query).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `sql` with `psql` on the database at `url` (`ON_ERROR_STOP`, so
/// the first error fails it; panics with psql's stderr). Returns the rows
/// of the last statement's results, each a list of its columns as psql
/// prints them (NULL as an empty string). A single row of one empty value
/// cannot be told from no row.
#[track_caller]
pub fn psql(url: &str, sql: &str) -> Vec<Vec<String>> {
    let mut command = Command::new("psql");
    command
        .args([
            "-X",
            "-q",
            "-At",
            "-F",
            "\x1f",
            "-R",
            "\x1e",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-d", url, "-c", sql])
        .stdin(Stdio::null());
    prepare(&mut command, None, &std::env::temp_dir());
    // A server that does not answer fails the test rather than hang it.
    command.env("PGCONNECT_TIMEOUT", "15");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
    assert!(
        out.status.success(),
        "psql -d {url} -c {sql:?} failed: {}",
        output_text(&out)
    );
    let text = String::from_utf8(out.stdout).expect("psql printed UTF-8");
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\x1e')
        .map(|row| row.split('\x1f').map(str::to_owned).collect())
        .collect()
}

impl Database {
    /// Its name, `t_<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL over TCP, in libpq's form:
    /// `postgresql://postgres@127.0.0.1:<port>/t_<n>`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.port, self.name
        )
    }

    /// Its URL over the unix socket:
    /// `postgresql://postgres@/t_<n>?host=<socket dir>&port=<port>` (the
    /// port names the socket file, `.s.PGSQL.<port>`).
    pub fn socket_url(&self) -> String {
        format!(
            "postgresql://postgres@/{}?host={}&port={}",
            self.name,
            percent_encode(&self.socket_dir.to_string_lossy()),
            self.port,
        )
    }

    /// [`psql`] on [`Database::url`].
    #[track_caller]
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        psql(&self.url(), sql)
    }

    /// The single value `sql` returns (panics unless one row of one
    /// column).
    #[track_caller]
    pub fn scalar(&self, sql: &str) -> String {
        let rows = self.query(sql);
        match <[Vec<String>; 1]>::try_from(rows) {
            Ok([row]) if row.len() == 1 => row.into_iter().next().expect("one column"),
            Ok([row]) => panic!("{sql:?}: one value expected, got the row {row:?}"),
            Err(rows) => panic!("{sql:?}: one row expected, got {rows:?}"),
        }
    }
}
