//! The server's lifecycle: starting the threads, the accept loop, refusing
//! connections past the cap and draining the backlog at the stop.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quiesce::{Context, Threads};

use super::conn::handler_loop;
use super::poll::{Conn, Parking, park, poll_loop};
use super::readiness::{CloseOnDrop, Readiness};
use super::tls::Tls;
use super::wire::write_response;
use super::{Handler, Limits, Response};

/// What the accept thread and the handlers share.
pub(super) struct ServerState {
    pub(super) limits: Limits,
    /// TLS, on a TLS server: each connection's session is made from it.
    pub(super) tls: Option<Arc<Tls>>,
    /// Set once, when the stop begins: answer `Connection: close` from now
    /// on (invariant 6).
    pub(super) stopping: AtomicBool,
    /// The stop's deadline, set once just before `stopping`: a body under
    /// way is read until a moment before it, a head not yet complete is
    /// closed at once (invariant 7).
    pub(super) stop_deadline: OnceLock<Instant>,
    /// Open connections by id: the cap (invariant 5) and the stop's
    /// deadline (invariant 7). Nothing else is locked under it.
    pub(super) open: Mutex<HashMap<u64, OpenConn>>,
    next_id: AtomicU64,
    /// Where the handler threads wait for connections with bytes
    /// (invariant 8): each connection registered once, re-armed by
    /// whoever parks it; and the hand-over queue from `http-poll`.
    pub(super) readiness: Readiness,
    /// The connections parked, with their deadlines (`poll.rs`); its
    /// `wake` wakes `http-poll` for the stop.
    pub(super) parking: Parking,
    /// Tells the handler how many connections are open, after each change.
    pub(super) counted: Box<dyn Fn(usize) + Send + Sync>,
    /// Tells the handler how many handler threads stand by, after each
    /// change.
    pub(super) standing: Box<dyn Fn(usize) + Send + Sync>,
}

/// Puts the calling thread under `SCHED_BATCH`: woken (a request came
/// in), it takes a core when the thread running there blocks or its slice
/// ends, instead of preempting it at once. Handler threads wake for
/// nearly every request; without this, a wake-up would preempt `store` in
/// the middle of a commit or `store-sync` in the middle of sending a
/// commit's answers, and every thread paid for the extra switches
/// (BENCHMARKS.md, step 11). A woken handler thread that waits a little
/// also finds more requests ready when it runs. Its share of the CPU is
/// unchanged (same nice value). When the kernel refuses (a seccomp filter,
/// say), the thread keeps the policy it had.
fn wake_without_preempting() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, which lives across
    // the call; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    if rc != 0 {
        log::debug!(
            "handler thread stays under its scheduling policy: {}",
            io::Error::last_os_error()
        );
    }
}

/// An open connection as the stop sees it.
pub(super) struct OpenConn {
    /// The connection's socket, shared, only ever shut down here
    /// (invariant 1).
    pub(super) stream: Arc<TcpStream>,
}

/// A running server; [`Server::stop`] stops it gracefully.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<ServerState>,
    threads: Threads<()>,
}

impl Server {
    /// Starts serving `listener` (over TLS when `tls` is given) on threads
    /// named after `name`: `{name}-accept`, `{name}-poll`, `{name}-0`…
    ///
    /// # Errors
    ///
    /// When a thread cannot be started (those started are stopped).
    pub fn start<S, H, F>(
        name: &str,
        listener: TcpListener,
        tls: Option<Arc<Tls>>,
        limits: Limits,
        make_state: F,
        handler: H,
    ) -> io::Result<Server>
    where
        S: 'static,
        H: Handler<S>,
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let handler = Arc::new(handler);
        let counting = handler.clone();
        let standing = handler.clone();
        let shared = Arc::new(ServerState {
            limits: limits.clone(),
            tls,
            stopping: AtomicBool::new(false),
            stop_deadline: OnceLock::new(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            // At most one seat per thread (`Readiness::new` makes it at least one).
            readiness: Readiness::new(limits.active.min(limits.handlers))?,
            parking: Parking::default(),
            counted: Box::new(move |open| counting.connections(open)),
            standing: Box::new(move |threads| standing.standing_by(threads)),
        });
        let mut threads = Threads::new(&Context::background());
        let make_state = Arc::new(make_state);
        for i in 0..limits.handlers.max(1) {
            let (own, handler, make_state) = (shared.clone(), handler.clone(), make_state.clone());
            let spawned = threads.spawn(format!("{name}-{i}"), move |_ctx| {
                wake_without_preempting();
                handler_loop(&own, handler.as_ref(), make_state.as_ref());
            });
            if let Err(err) = spawned {
                // Those started end (and are joined) once it is closed.
                shared.readiness.close();
                return Err(err);
            }
        }
        let poll_shared = shared.clone();
        let poll_handler = handler.clone();
        let polling = threads.spawn(format!("{name}-poll"), move |_ctx| {
            // Ends after the stop's grace; closing the hand-over queue
            // then ends the handler threads once they are done.
            let _closes = CloseOnDrop(&poll_shared.readiness);
            poll_loop(&poll_shared, poll_handler.as_ref());
        });
        if let Err(err) = polling {
            shared.readiness.close();
            return Err(err);
        }
        let accept_shared = shared.clone();
        let accept_handler = handler.clone();
        let accepting = threads.spawn(format!("{name}-accept"), move |_ctx| {
            accept_loop(&listener, &accept_shared, accept_handler.as_ref());
        });
        if let Err(err) = accepting {
            // `http-poll` ends after the stop's grace, the handlers after it.
            shared.stopping.store(true, Ordering::SeqCst);
            shared.parking.wake();
            return Err(err);
        }
        Ok(Server {
            addr,
            shared,
            threads,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully within `deadline`: no new connections (those
    /// already waiting in the kernel get `503`), requests in progress
    /// finish, idle keep-alive connections are closed after the grace.
    /// Returns the names of threads still running at the deadline.
    pub fn stop(mut self, deadline: Instant) -> Vec<String> {
        // Invariant 6: set before anything else of the stop (the deadline
        // with it, for the connections still reading, invariant 7).
        let _ = self.shared.stop_deadline.set(deadline);
        self.shared.stopping.store(true, Ordering::SeqCst);
        // `http-poll` closes heads not yet complete, and idle connections
        // after the grace (invariant 7).
        self.shared.parking.wake();
        // Wake the accept thread, blocked in accept(), with a connection of
        // our own; it sees `stopping` and ends.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        loop {
            let slice_end = (Instant::now() + Duration::from_millis(20)).min(deadline);
            for finished in self.threads.join_deadline(slice_end).finished {
                if let Err(panic) = finished.result {
                    log::error!("http thread {} {panic}", finished.name);
                }
            }
            if self.threads.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        let stuck: Vec<String> = self.threads.running().into_iter().map(|r| r.name).collect();
        if !stuck.is_empty() {
            // Requests still running at the deadline: cut their sockets so
            // the threads return, then let the caller report them
            // (invariant 7).
            for conn in self
                .shared
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
        stuck
    }
}

/// The address to connect to for waking our own accept(): the listen
/// address, with an unspecified IP replaced by loopback.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut wake = addr;
    if addr.ip().is_unspecified() {
        wake.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    wake
}

fn accept_loop<S>(listener: &TcpListener, shared: &Arc<ServerState>, handler: &impl Handler<S>) {
    let mut refusals = Refusals::default();
    for stream in listener.incoming() {
        refusals.sweep();
        if shared.stopping.load(Ordering::SeqCst) {
            // Answer whatever completed its handshake before the stop (our
            // own wake-up connection among them), then close the listener.
            drop(stream);
            drain_backlog(listener, shared, handler, &mut refusals);
            refusals.finish();
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("accept failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Never waits for a handler (invariant 5): past the cap, refused;
        // under it, the connection waits in the poller for its first byte
        // (invariant 8).
        let full = shared.open.lock().unwrap_or_else(|e| e.into_inner()).len()
            >= shared.limits.max_connections;
        let refused = if full {
            Some(stream)
        } else {
            Conn::open(id, stream, shared)
                .map(|conn| park(shared, conn))
                .err()
        };
        if let Some(stream) = refused {
            handler.refused(503, "too many connections", None);
            refusals.add(
                stream,
                shared.tls.is_none(),
                "too many open connections; retry shortly",
            );
        }
    }
}

/// At the stop: answers `503` to the connections already waiting in the
/// kernel, for a bounded time (clients that keep connecting must not hold
/// the stop up), then lets the listener close.
fn drain_backlog<S>(
    listener: &TcpListener,
    shared: &ServerState,
    handler: &impl Handler<S>,
    refusals: &mut Refusals,
) {
    // Shrink the accept queue to its least first: from now on the kernel
    // drops most new handshakes (the client's own retry, a second later,
    // finds the port closed) rather than completing ones that closing the
    // listener would then reset after the client has sent its request. It
    // narrows the window, not closes it: the queue keeps one place, and a
    // handshake under way when the listener closes is still reset (in the
    // load bench, 0 to 3 resets among 32 clients reconnecting at once).
    if let Err(err) = socket2::SockRef::from(listener).listen(0) {
        log::debug!("cannot shrink the accept queue: {err}");
    }
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    // Bounded (invariant 5).
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        let Ok((stream, _)) = listener.accept() else {
            break;
        };
        handler.refused(503, "shutting down", None);
        refusals.add(
            stream,
            shared.tls.is_none(),
            "shutting down; retry on another instance",
        );
        refusals.sweep();
    }
}

/// Connections answered `503` before being read, kept open a moment while
/// what the client still sends is read and discarded (the lingering close
/// of `conn.rs`), without holding up the accept thread: each is
/// non-blocking and looked at again at the next accept (invariant 5).
#[derive(Default)]
struct Refusals {
    /// Each with the end of its linger.
    lingering: Vec<(TcpStream, Instant)>,
}

impl Refusals {
    /// Most connections lingering at once; past it the oldest is closed.
    const MAX: usize = 1024;
    const LINGER: Duration = Duration::from_millis(50);

    /// `answer`: say `503` (not on a TLS server, where nothing can be said
    /// before a handshake: the connection is only closed).
    fn add(&mut self, stream: TcpStream, answer: bool, message: &str) {
        // A small answer on a fresh socket: its send buffer takes it at once;
        // the timeout bounds the rest (invariant 5). Always closing
        // (invariant 6).
        if answer {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_response(&stream, &Response::unavailable(message), true);
        }
        let _ = stream.shutdown(Shutdown::Write);
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        if self.lingering.len() >= Self::MAX {
            self.lingering.remove(0);
        }
        self.lingering.push((stream, Instant::now() + Self::LINGER));
    }

    /// Closes those whose client has closed or whose time is up. What
    /// came meanwhile is read first, also when the time is up: on a busy
    /// machine this thread may look again long after a linger's end, and a
    /// socket closed with bytes unread sends a reset, which can reach the
    /// client before our answer.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.lingering
            .retain_mut(|(stream, until)| still_open(stream) && now < *until);
    }

    /// Gives the last ones their moment, then closes them all.
    fn finish(mut self) {
        while !self.lingering.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            self.sweep();
        }
    }
}

/// Reads and discards what is there without blocking (up to 64 KiB a
/// look); `false` once the client has closed (or the connection broke).
pub(super) fn still_open(mut stream: &TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    let mut reads = 0;
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return false,
            Ok(_) if reads == 16 => return true,
            Ok(_) => reads += 1,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
