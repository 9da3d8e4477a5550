//! The readiness poller (`http-poll`): where connections wait, costing no
//! thread, for their next bytes: a new connection for its first, a
//! keep-alive one for its next request, one whose head is not yet
//! complete for the rest of it. Each is handed to a handler thread as soon
//! as bytes arrive (invariant 8).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use polling::{Event, Events};

use super::deferred::{Outbox, Owed};
use super::server::{OpenConn, ServerState};
use super::wire::encode;
use super::{Handler, Response};

/// An open connection, owned by one thread at a time (invariant 1): the
/// accept thread, then the poller while it waits, a handler thread while
/// bytes are there to read, and so on. Dropping it forgets it in `open`.
pub(super) struct Conn {
    pub(super) id: u64,
    /// The socket, shared (not duplicated: one file descriptor per
    /// connection) with the outbox and with `open`.
    pub(super) stream: Arc<TcpStream>,
    /// Bytes read and not yet consumed (a head not yet complete, or
    /// pipelined requests: the latter never wait in the poller).
    pub(super) buf: Vec<u8>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) peer: Option<SocketAddr>,
    /// The first byte of the request head under way (or of the TLS
    /// handshake), when one is: the header deadline runs from it, in the
    /// poller too.
    pub(super) head_started: Option<Instant>,
    /// The TLS peer closed its session: nothing more will be read.
    pub(super) peer_closed: bool,
    /// The subject of the client's certificate, once looked up (TLS).
    pub(super) client: Option<Option<Arc<str>>>,
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
                // Re-arms the connection's registration for writing too: it
                // fails harmlessly when the connection is not in the poller
                // (a handler thread has it, and writes what is unsent).
                let (shared, stream) = (shared.clone(), stream.clone());
                Box::new(move || {
                    let _ = shared.poller.modify(&*stream, Event::all(id as usize));
                })
            })),
            stream,
            head_started: None,
            peer_closed: false,
            client: None,
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
        let count = {
            let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&self.id);
            open.len()
        };
        (self.shared.counted)(count);
    }
}

/// Hands a connection to the poller to wait for its next bytes; closes it
/// when the poller has ended (after the stop's grace).
pub(super) fn park(shared: &ServerState, conn: Conn) {
    match shared.park.send(conn) {
        Ok(()) => {
            let _ = shared.poller.notify();
        }
        Err(err) => err.into_inner().close(),
    }
}

/// The connections with bytes to read, from the poller to the handler
/// threads: a queue under a mutex, with a condition variable. Not a
/// channel: an idle receiver of a crossbeam channel spins and yields
/// before it sleeps, and with dozens of handler threads taking turns that
/// was several `sched_yield` calls per request on a busy machine; here an
/// idle handler thread sleeps in the kernel at once.
#[derive(Default)]
pub(super) struct Ready {
    /// The queue, and whether the poller has ended (no more will come).
    state: Mutex<(VecDeque<Conn>, bool)>,
    changed: Condvar,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Conn>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a connection for a handler thread; closes it once the queue
    /// is closed.
    pub(super) fn send(&self, conn: Conn) {
        let mut state = self.lock();
        if state.1 {
            drop(state);
            conn.close();
            return;
        }
        state.0.push_back(conn);
        drop(state);
        self.changed.notify_one();
    }

    /// The next connection, waiting for one; `None` once the queue is
    /// closed and empty.
    pub(super) fn recv(&self) -> Option<Conn> {
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.0.pop_front() {
                return Some(conn);
            }
            if state.1 {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more connections will come: the handler threads end once the
    /// queue is empty.
    pub(super) fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// Closes the queue when dropped: when the poller's thread ends, however.
pub(super) struct CloseOnDrop<'a>(pub(super) &'a Ready);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
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

/// The poller's loop: until the stop's grace has passed.
pub(super) fn poll_loop<S>(
    shared: &ServerState,
    inbox: &Receiver<Conn>,
    ready: &Ready,
    handler: &impl Handler<S>,
) {
    let limits = &shared.limits;
    let mut parked: HashMap<u64, Parked> = HashMap::new();
    let mut deadlines: BTreeSet<(Instant, u64)> = BTreeSet::new();
    let mut events = Events::new();
    let mut grace_end: Option<Instant> = None;
    let unpark = |parked: &mut HashMap<u64, Parked>,
                  deadlines: &mut BTreeSet<(Instant, u64)>,
                  id: u64|
     -> Option<Conn> {
        let p = parked.remove(&id)?;
        deadlines.remove(&(p.deadline, id));
        // Deleted before it leaves (the crate's safety rule for `add`).
        let _ = shared.poller.delete(&*p.conn.stream);
        Some(p.conn)
    };
    loop {
        let now = Instant::now();
        let stopping = shared.stopping.load(Ordering::SeqCst);
        while let Ok(conn) = inbox.try_recv() {
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
            // SAFETY: the socket is deleted from the poller before the
            // connection leaves `parked` (`unpark`), hence before it closes.
            let added = unsafe {
                shared
                    .poller
                    .add(&*conn.stream, Event::readable(conn.id as usize))
            };
            if let Err(err) = added {
                log::warn!("cannot poll a connection: {err}");
                conn.close();
                continue;
            }
            // Bytes a deferred answer left while the connection was on its
            // way here: wake when the socket can take them (after `add`,
            // so that `on_unsent` and this check cannot both miss).
            if conn.outbox.owes() == Owed::Bytes {
                let _ = shared
                    .poller
                    .modify(&*conn.stream, Event::all(conn.id as usize));
            }
            deadlines.insert((deadline, conn.id));
            parked.insert(
                conn.id,
                Parked {
                    conn,
                    deadline,
                    wait_end,
                },
            );
        }
        if stopping {
            // Invariant 7: a head not yet complete is closed at once, an
            // idle connection after the grace; one that owes an answer goes
            // to a handler thread, which waits for it and closes.
            let end = *grace_end.get_or_insert(now + limits.close_grace);
            let partial: Vec<u64> = parked
                .iter()
                .filter(|(_, p)| {
                    p.conn.head_started.is_some()
                        || now >= end
                        || p.conn.outbox.owes() != Owed::Nothing
                })
                .map(|(id, _)| *id)
                .collect();
            for id in partial {
                if let Some(conn) = unpark(&mut parked, &mut deadlines, id) {
                    close_or_serve(conn, ready);
                }
            }
            if now >= end {
                // Given back after the grace: closed (invariant 7).
                while let Ok(conn) = inbox.try_recv() {
                    conn.close();
                }
                return;
            }
        }
        while let Some(&(due, id)) = deadlines.first() {
            if due > now {
                break;
            }
            // An answer's deadline, the answer given in time: the
            // connection waits on until its own wait ends.
            if let Some(p) = parked.get_mut(&id)
                && p.wait_end > due
                && p.conn.outbox.owes() == Owed::Nothing
            {
                deadlines.remove(&(due, id));
                p.deadline = p.wait_end;
                deadlines.insert((p.wait_end, id));
                continue;
            }
            if let Some(conn) = unpark(&mut parked, &mut deadlines, id) {
                if conn.outbox.owes() == Owed::Nothing {
                    expire(conn, handler);
                } else {
                    // Its answer is late or unsent: a handler thread waits
                    // for it (up to its deadline) and writes it.
                    close_or_serve(conn, ready);
                }
            }
        }
        let mut wait = deadlines
            .first()
            .map_or(Duration::from_secs(1), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_secs(1));
        if let Some(end) = grace_end {
            wait = wait.min(end.saturating_duration_since(now));
        }
        events.clear();
        if let Err(err) = shared.poller.wait(&mut events, Some(wait))
            && err.kind() != std::io::ErrorKind::Interrupted
        {
            log::warn!("http poller: {err}");
            std::thread::sleep(Duration::from_millis(10));
        }
        for event in events.iter() {
            if let Some(conn) = unpark(&mut parked, &mut deadlines, event.key as u64) {
                ready.send(conn);
            }
        }
    }
}

/// Closes a connection that owes nothing; hands one that owes its client
/// an answer to a handler thread, which waits for it and writes it
/// (invariant 7: an answer is never cut).
fn close_or_serve(conn: Conn, ready: &Ready) {
    if conn.outbox.owes() == Owed::Nothing {
        conn.close();
    } else {
        ready.send(conn);
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
