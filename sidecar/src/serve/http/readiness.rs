//! Where the handler threads wait for work: one epoll set, waited in by
//! every idle handler thread at once. The kernel wakes one waiter per
//! event (`epoll_wait` waits exclusively), so a connection whose bytes
//! arrive wakes the handler thread that will read them, with no thread in
//! between (invariant 8). A thread woken takes the events that are ready,
//! up to [`EVENTS`], and serves their connections in turn: under load,
//! fewer threads go to sleep and are woken again. Before it may block on
//! one of them, it hands the others over (`conn.rs`).
//!
//! The set holds each parked connection's registration (one-shot: it is
//! disarmed when it fires, and whoever parks the connection arms it
//! again), and one more file: the hand-over eventfd. Through it
//! `http-poll`, which keeps the deadlines, hands a handler thread a
//! connection it took out itself: one whose answer is late or unsent, or
//! one that owes an answer at the stop. The eventfd is one-shot too; the
//! handler thread it wakes takes one connection and arms it again, so that
//! while connections are left (or once the queue is closed) the next
//! waiter wakes in turn.
//!
//! Only so many handler threads wait in the set at once (its seats, one
//! per core by default): a thread that is about to block (a body still on
//! its way, a commit to wait for) gives its seat up, and one of the
//! threads standing by takes it. Under load a thread that finds events
//! ready goes on without sleeping; with a waiter per thread, every event
//! woke a sleeping one, and each wake-up is a context switch.
//!
//! Linux only: `polling`, which was used before, lets one thread wait at a
//! time, which put a thread (and two context switches) between every
//! readable connection and its handler.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{EventfdFlags, epoll, eventfd};
use rustix::io::Errno;

use super::poll::Conn;

/// The hand-over eventfd's key (connection ids count up from 0).
const HANDOVER: u64 = u64::MAX;

/// The most events one handler thread takes at a wait: it serves their
/// connections one after the other, while the others sleep on.
const EVENTS: usize = 4;

/// The epoll set and the hand-over queue.
pub(super) struct Readiness {
    epoll: OwnedFd,
    /// Readable exactly while the queue holds a connection or is closed
    /// (kept so under the queue's lock).
    handover: OwnedFd,
    queue: Mutex<Handover>,
    seats: Mutex<Seats>,
    /// A seat was given up, or the seats were done away with.
    seat_freed: Condvar,
}

/// Places among the handler threads that wait in the epoll set.
struct Seats {
    free: usize,
    /// Threads waiting for a seat.
    standing_by: usize,
    /// The hand-over queue is closed: every thread waits, until it is
    /// empty (the stop's last connections are served by whoever is left).
    all: bool,
}

#[derive(Default)]
struct Handover {
    conns: VecDeque<Conn>,
    /// No more will come: the handler threads end.
    closed: bool,
}

/// What woke a handler thread.
pub(super) enum Woken {
    /// The connection of this id has bytes (or hung up, or can take the
    /// bytes a deferred answer left): take it out of the parking, if it is
    /// still there.
    Ready(u64),
    /// A connection handed over by `http-poll`.
    Handed(Conn),
    /// The hand-over queue is closed and empty: end.
    Closed,
    /// Nothing (a signal, an error already logged): wait again.
    Nothing,
}

impl Readiness {
    /// A set in which `seats` handler threads wait at once (at least one).
    pub(super) fn new(seats: usize) -> std::io::Result<Readiness> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let handover = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &handover,
            epoll::EventData::new_u64(HANDOVER),
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        )?;
        Ok(Readiness {
            epoll,
            handover,
            queue: Mutex::default(),
            seats: Mutex::new(Seats {
                free: seats.max(1),
                standing_by: 0,
                all: false,
            }),
            seat_freed: Condvar::new(),
        })
    }

    fn seats(&self) -> MutexGuard<'_, Seats> {
        self.seats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a seat, waiting for one to be given up: `true` once taken,
    /// `false` (at once) after the queue is closed, when every thread may
    /// wait. `standing` is told how many threads wait for a seat, when
    /// this one starts and stops waiting (under the lock: in order).
    pub(super) fn take_seat(&self, standing: &dyn Fn(usize)) -> bool {
        let mut seats = self.seats();
        if seats.free == 0 && !seats.all {
            seats.standing_by += 1;
            standing(seats.standing_by);
            while seats.free == 0 && !seats.all {
                seats = self
                    .seat_freed
                    .wait(seats)
                    .unwrap_or_else(|e| e.into_inner());
            }
            seats.standing_by -= 1;
            standing(seats.standing_by);
        }
        if seats.all {
            return false;
        }
        seats.free -= 1;
        true
    }

    /// Gives a seat up (its thread is about to block): a thread standing
    /// by takes it.
    pub(super) fn give_seat(&self) {
        self.seats().free += 1;
        self.seat_freed.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Handover> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection's socket, disarmed (the kernel still reports an
    /// error or a hang-up once: whoever it wakes finds the connection not
    /// parked and ignores it).
    pub(super) fn add(&self, socket: impl AsFd, id: u64) -> std::io::Result<()> {
        epoll::add(
            &self.epoll,
            socket,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::ONESHOT,
        )?;
        Ok(())
    }

    /// Arms a connection's registration for one event: bytes to read (or
    /// a hang-up), and with `writable` room to write as well.
    pub(super) fn arm(&self, socket: impl AsFd, id: u64, writable: bool) -> std::io::Result<()> {
        // Not `PRI`: urgent (out-of-band) bytes are never read here, and
        // a client must not be able to wake a handler thread for them.
        let mut flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if writable {
            flags |= epoll::EventFlags::OUT;
        }
        epoll::modify(&self.epoll, socket, epoll::EventData::new_u64(id), flags)?;
        Ok(())
    }

    /// Removes a connection's socket (before it can close).
    pub(super) fn delete(&self, socket: impl AsFd) {
        let _ = epoll::delete(&self.epoll, socket);
    }

    /// Waits, without a deadline (the stop ends the wait by closing the
    /// hand-over queue), for events: their keys, up to [`EVENTS`] at once,
    /// into `keys` (emptied first; left empty after a signal or an error
    /// already logged). Each is for the caller to resolve ([`Self::woken`]).
    pub(super) fn wait(&self, keys: &mut Vec<u64>) {
        keys.clear();
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        match epoll::wait(&self.epoll, &mut events, None) {
            Ok((ready, _)) => keys.extend(ready.iter().map(|event| event.data.u64())),
            Err(Errno::INTR) => {}
            Err(err) => {
                log::warn!("http handler cannot wait for connections: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// What the event of `key` woke the caller for.
    pub(super) fn woken(&self, key: u64) -> Woken {
        if key != HANDOVER {
            return Woken::Ready(key);
        }
        let mut queue = self.lock();
        let woken = match queue.conns.pop_front() {
            Some(conn) => Woken::Handed(conn),
            None if queue.closed => Woken::Closed,
            None => Woken::Nothing,
        };
        if queue.conns.is_empty() && !queue.closed {
            // Nothing left for the next waiter: not readable any more.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&self.handover, &mut count);
        }
        drop(queue);
        // Armed again: if it is still readable, the next waiter wakes.
        if let Err(err) = epoll::modify(
            &self.epoll,
            &self.handover,
            epoll::EventData::new_u64(HANDOVER),
            epoll::EventFlags::IN | epoll::EventFlags::ONESHOT,
        ) {
            log::error!("http handler cannot re-arm the hand-over: {err}");
        }
        woken
    }

    /// Hands a connection to a handler thread; closes it once the queue is
    /// closed.
    pub(super) fn send(&self, conn: Conn) {
        let mut queue = self.lock();
        if queue.closed {
            drop(queue);
            conn.close();
            return;
        }
        queue.conns.push_back(conn);
        if queue.conns.len() == 1 {
            self.signal();
        }
    }

    /// No more connections will be handed over: the handler threads end
    /// once the queue is empty (each wakes the next on its way out).
    pub(super) fn close(&self) {
        let mut queue = self.lock();
        if !queue.closed {
            queue.closed = true;
            if queue.conns.is_empty() {
                self.signal();
            }
        }
        drop(queue);
        // The threads standing by wait in the set too, and end from there.
        self.seats().all = true;
        self.seat_freed.notify_all();
    }

    /// Makes the eventfd readable (under the queue's lock).
    fn signal(&self) {
        if let Err(err) = rustix::io::write(&self.handover, &1u64.to_ne_bytes()) {
            // Only a counter at its maximum fails; it is readable then.
            log::error!("http hand-over cannot signal: {err}");
        }
    }
}

/// Closes the hand-over queue when dropped: when the poller's thread
/// ends, however.
pub(super) struct CloseOnDrop<'a>(pub(super) &'a Readiness);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}
