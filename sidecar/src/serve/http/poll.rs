//! Where connections wait, costing no thread, for their next bytes: a new
//! connection for its first, a keep-alive one for its next request, one
//! whose head is not yet complete for the rest of it. The handler threads
//! wait in the epoll set themselves (`readiness.rs`), and the one woken
//! takes the connection out of [`Parking`] as soon as bytes arrive
//! (invariant 8). `http-poll` keeps the deadlines.
//!
//! A connection is registered once, when it is first parked, and deleted
//! when it is dropped; its registration is one-shot, so it is disarmed
//! when it fires. Whoever parks a connection (the accept thread, a handler
//! thread) puts it in [`Parking`], then re-arms it itself: one
//! `epoll_ctl` per wait, and `http-poll` is not woken to take it in (it
//! is woken only when the connection's deadline comes before its next look
//! at the deadlines).

use std::collections::{BTreeSet, HashMap};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::deferred::{Outbox, Owed};
use super::server::{OpenConn, ServerState};
use super::wire::encode;
use super::{Handler, Response};

/// An open connection, owned by one thread at a time (invariant 1): the
/// accept thread, then the parking while it waits, a handler thread while
/// bytes are there to read, and so on. Dropping it forgets it in `open`.
pub(super) struct Conn {
    pub(super) id: u64,
    /// The socket, shared (not duplicated: one file descriptor per
    /// connection) with the outbox and with `open`.
    pub(super) stream: Arc<TcpStream>,
    /// Bytes read and not yet consumed (a head not yet complete, or
    /// pipelined requests: the latter never wait in the parking).
    pub(super) buf: Vec<u8>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) peer: Option<SocketAddr>,
    /// The first byte of the request head under way (or of the TLS
    /// handshake), when one is: the header deadline runs from it, in the
    /// parking too.
    pub(super) head_started: Option<Instant>,
    /// The TLS peer closed its session: nothing more will be read.
    pub(super) peer_closed: bool,
    /// The subject of the client's certificate, once looked up (TLS).
    pub(super) client: Option<Option<Arc<str>>>,
    /// Added to the epoll set (by its first [`park`]): deleted when dropped.
    registered: bool,
    shared: Arc<ServerState>,
}

impl Conn {
    /// Registers a connection just accepted in `open` (with its TLS
    /// session, on a TLS server); gives the socket back when its session
    /// cannot be made.
    pub(super) fn open(
        id: u64,
        stream: TcpStream,
        shared: &Arc<ServerState>,
    ) -> Result<Conn, TcpStream> {
        let _ = stream.set_nodelay(true);
        let session = match shared.tls.as_ref().map(|tls| tls.session()).transpose() {
            Ok(session) => session,
            Err(err) => {
                log::error!("cannot start a TLS session: {err}");
                return Err(stream);
            }
        };
        let stream = Arc::new(stream);
        let count = {
            let mut open = shared.open.lock().unwrap_or_else(|e| e.into_inner());
            open.insert(
                id,
                OpenConn {
                    stream: stream.clone(),
                },
            );
            open.len()
        };
        (shared.counted)(count);
        Ok(Conn {
            id,
            peer: stream.peer_addr().ok(),
            buf: Vec::new(),
            outbox: Arc::new(Outbox::new(stream.clone(), session).with_on_unsent({
                // Re-arms the connection's registration for writing too.
                // When a handler thread has the connection (and writes what
                // is unsent itself), the event finds it not parked and is
                // ignored; it is re-armed when parked again.
                let (shared, stream) = (shared.clone(), stream.clone());
                Box::new(move || {
                    let _ = shared.readiness.arm(&*stream, id, true);
                })
            })),
            stream,
            head_started: None,
            peer_closed: false,
            client: None,
            registered: false,
            shared: shared.clone(),
        })
    }

    /// Closes it now (both directions), whoever holds a clone.
    pub(super) fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.registered {
            // Deleted before the socket can close: an event for it would
            // otherwise still wake a handler thread for nothing.
            self.shared.readiness.delete(&*self.stream);
        }
        let count = {
            let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&self.id);
            open.len()
        };
        (self.shared.counted)(count);
    }
}

/// The connections waiting for bytes, with their deadlines; parked by
/// whoever owned them, taken out by the handler thread an event wakes, or
/// by `http-poll` (a deadline, the stop).
#[derive(Default)]
pub(super) struct Parking {
    state: Mutex<Waiting>,
    /// Wakes `http-poll` (with `Waiting::woken`).
    look: Condvar,
}

#[derive(Default)]
struct Waiting {
    parked: HashMap<u64, Parked>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// When `http-poll` looks at the deadlines next without being woken
    /// (`None` while it is awake): a connection parked with an earlier
    /// deadline wakes it.
    next_look: Option<Instant>,
    /// `http-poll` is asked to look now (an earlier deadline, the stop).
    woken: bool,
    /// `http-poll` has ended (after the stop's grace): a connection parked
    /// now is closed.
    ended: bool,
}

impl Parking {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes out a connection an event woke a handler thread for; `None`
    /// when it is not parked (an event of an earlier wait, or one
    /// `http-poll` took out first).
    pub(super) fn take(&self, id: u64) -> Option<Conn> {
        self.lock().take(id)
    }

    /// Asks `http-poll` to look at the deadlines and the stop now.
    pub(super) fn wake(&self) {
        self.lock().woken = true;
        self.look.notify_one();
    }
}

impl Waiting {
    /// Takes a connection out: it is the caller's (its registration is
    /// disarmed, or will fire for nobody).
    fn take(&mut self, id: u64) -> Option<Conn> {
        let p = self.parked.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        Some(p.conn)
    }
}

/// Parks a connection to wait for its next bytes (its registration armed
/// by this thread); closes it when `http-poll` has ended (after the stop's
/// grace).
pub(super) fn park(shared: &ServerState, mut conn: Conn) {
    let limits = &shared.limits;
    let now = Instant::now();
    let wait_end = match conn.head_started {
        Some(start) => start + limits.header_timeout,
        None => now + limits.idle_timeout,
    };
    // An answer awaited: no later than its deadline, when a handler
    // thread answers 503 in its place if it has not come.
    let deadline = conn
        .outbox
        .answer_due()
        .map_or(wait_end, |due| due.min(wait_end));
    let (id, stream, outbox) = (conn.id, conn.stream.clone(), conn.outbox.clone());
    if !conn.registered {
        // Added disarmed while this thread owns it: an event before it is
        // parked would find nobody, and the wake-up would be lost. Deleted
        // when the connection is dropped (`Drop for Conn`).
        match shared.readiness.add(&*stream, id) {
            Ok(()) => conn.registered = true,
            Err(err) => {
                log::warn!("cannot poll a connection: {err}");
                conn.close();
                return;
            }
        }
    }
    let mut waiting = shared.parking.lock();
    if waiting.ended {
        drop(waiting);
        conn.close();
        return;
    }
    let wake = waiting.next_look.is_some_and(|look| deadline < look);
    waiting.woken |= wake;
    waiting.deadlines.insert((deadline, id));
    waiting.parked.insert(
        id,
        Parked {
            conn,
            deadline,
            wait_end,
        },
    );
    drop(waiting);
    if wake {
        shared.parking.look.notify_one();
    }
    // Armed once parked (and outside the lock, which `http-poll`, the
    // handler threads and every parking thread take): an event that fires
    // at once finds it parked. If `http-poll` has taken it out meanwhile
    // (a deadline, the stop), the event finds nobody and is ignored.
    if let Err(err) = shared.readiness.arm(&*stream, id, false) {
        let taken = shared.parking.take(id);
        if let Some(conn) = taken {
            log::warn!("cannot poll a connection: {err}");
            conn.close();
        }
    }
    // Bytes a deferred answer left while the connection was on its way
    // here: wake when the socket can take them. After arming for reading,
    // so that `on_unsent` and this check cannot both miss; if the
    // connection has already left the parking, the extra event finds
    // nobody, or wakes it once for nothing.
    if outbox.owes() == Owed::Bytes {
        let _ = shared.readiness.arm(&*stream, id, true);
    }
}

struct Parked {
    conn: Conn,
    /// When its wait ends: `wait_end`, or sooner the deadline of an answer
    /// it awaits.
    deadline: Instant,
    /// The end of its idle or head wait.
    wait_end: Instant,
}

/// `http-poll`'s loop, until the stop's grace has passed: it closes
/// connections whose wait has ended, hands a handler thread those whose
/// answer is late, and carries out the stop among the parked connections.
pub(super) fn poll_loop<S>(shared: &ServerState, handler: &impl Handler<S>) {
    let limits = &shared.limits;
    let mut grace_end: Option<Instant> = None;
    // Connections taken out under the lock, handled after it (closing one
    // takes `open`'s lock, and answering a late head writes).
    let mut to_close: Vec<Conn> = Vec::new();
    let mut to_serve: Vec<Conn> = Vec::new();
    let mut to_expire: Vec<Conn> = Vec::new();
    loop {
        let now = Instant::now();
        let mut waiting = shared.parking.lock();
        waiting.next_look = None;
        waiting.woken = false;
        // Read under the lock: the stop sets it before it wakes this
        // thread (under the same lock), so a wake-up cleared just above
        // is one whose stop is seen here.
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if stopping {
            // Invariant 7: a head not yet complete is closed at once, an
            // idle connection after the grace; one that owes an answer goes
            // to a handler thread, which waits for it and closes.
            let end = *grace_end.get_or_insert(now + limits.close_grace);
            let partial: Vec<u64> = waiting
                .parked
                .iter()
                .filter(|(_, p)| {
                    p.conn.head_started.is_some()
                        || now >= end
                        || p.conn.outbox.owes() != Owed::Nothing
                })
                .map(|(id, _)| *id)
                .collect();
            for id in partial {
                if let Some(conn) = waiting.take(id) {
                    if conn.outbox.owes() == Owed::Nothing {
                        to_close.push(conn);
                    } else {
                        to_serve.push(conn);
                    }
                }
            }
            if now >= end {
                // Given back after the grace: closed (invariant 7).
                waiting.ended = true;
                drop(waiting);
                to_close.into_iter().for_each(Conn::close);
                to_serve
                    .into_iter()
                    .for_each(|conn| shared.readiness.send(conn));
                return;
            }
        }
        while let Some(&(due, id)) = waiting.deadlines.first() {
            if due > now {
                break;
            }
            // An answer's deadline, the answer given in time: the
            // connection waits on until its own wait ends.
            if let Some(p) = waiting.parked.get_mut(&id)
                && p.wait_end > due
                && p.conn.outbox.owes() == Owed::Nothing
            {
                let wait_end = p.wait_end;
                p.deadline = wait_end;
                waiting.deadlines.remove(&(due, id));
                waiting.deadlines.insert((wait_end, id));
                continue;
            }
            if let Some(conn) = waiting.take(id) {
                if conn.outbox.owes() == Owed::Nothing {
                    to_expire.push(conn);
                } else {
                    // Its answer is late or unsent: a handler thread waits
                    // for it (up to its deadline) and writes it.
                    to_serve.push(conn);
                }
            }
        }
        let mut wait = waiting
            .deadlines
            .first()
            .map_or(Duration::from_secs(1), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_secs(1));
        if let Some(end) = grace_end {
            wait = wait.min(end.saturating_duration_since(now));
        }
        let look = now + wait;
        waiting.next_look = Some(look);
        drop(waiting);
        to_close.drain(..).for_each(Conn::close);
        to_serve
            .drain(..)
            .for_each(|conn| shared.readiness.send(conn));
        to_expire.drain(..).for_each(|conn| expire(conn, handler));
        // Asleep until the next look, unless woken (a connection parked
        // with an earlier deadline, the stop): `woken` is set under the
        // lock, so a wake-up while the above ran is not missed.
        let mut waiting = shared.parking.lock();
        while !waiting.woken {
            let left = look.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            waiting = shared
                .parking
                .look
                .wait_timeout(waiting, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A connection whose wait has ended: an idle one is closed; one with a
/// head not complete in time is answered `408`, without blocking (a
/// fresh answer on a socket whose client sends nothing: its send buffer
/// takes it; none for a TLS handshake not complete), then closed.
fn expire<S>(conn: Conn, handler: &impl Handler<S>) {
    if conn.head_started.is_some() {
        const WHY: &str = "request head not received in time";
        handler.refused(408, WHY, None);
        conn.outbox.send_final(encode(
            &Response::json(408, &serde_json::json!({ "error": WHY })),
            true,
        ));
    }
    conn.close();
}
