//! A call to an analysis service that never answers, and the thread it
//! leaks: Go's goroutine leak, caught the way goleak catches it.
//!
//! # The Go pattern
//!
//! A goroutine reads a reply with no deadline. The service accepted the
//! connection but never answers, so the goroutine blocks forever; nothing
//! reports it until `goleak.VerifyNone(t)` lists it at the end of a test:
//!
//! ```go
//! go func() {
//!     conn, _ := net.Dial("tcp", analysisAddr)
//!     fmt.Fprintln(conn, "ANALYZE ePRO-2024-0042")
//!     reply, _ := bufio.NewReader(conn).ReadString('\n') // blocks forever
//!     results <- reply
//! }()
//! ```
//!
//! The fix: the call takes a `context.Context` with a deadline, and the
//! connection is closed when the context is done:
//!
//! ```go
//! ctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
//! defer cancel()
//! conn, _ := (&net.Dialer{}).DialContext(ctx, "tcp", analysisAddr)
//! stop := context.AfterFunc(ctx, func() { conn.Close() })
//! defer stop()
//! // ... the read now fails at the deadline; return ctx.Err()
//! ```
//!
//! # The Rust way
//!
//! Threads started through [`quiesce::Threads`] are named and recorded in
//! the library's thread registry. A [`quiesce::leak::Tracker`] (from
//! [`quiesce::leak::track`]) follows the threads started while it is
//! active, and [`Tracker::check`] names those still running after a grace
//! period: goleak, for these threads.
//!
//! - The wrong way: a thread does a blocking read with no timeout. The
//!   check names it as leaked; cancelling its context changes nothing (the
//!   read does not look at it). Here we unblock it from outside, by shutting
//!   the socket down, so the program can still join it and exit cleanly; a
//!   real program would not know it had to.
//! - The right way: the call runs under a context with a deadline
//!   ([`Context::with_timeout`]), registers
//!   `ctx.on_cancel(move || stream.shutdown(Shutdown::Both))` (Go's
//!   `context.AfterFunc`) for as long as it reads, and sets a read timeout
//!   derived from [`Context::remaining`] as a backstop. At the deadline the
//!   read returns, the call reports `context deadline exceeded`, its thread
//!   ends, and the leak check passes.
//!
//! All traffic stays on 127.0.0.1; the example takes about 1.5 seconds.
//!
//! # Running it
//!
//! ```text
//! cargo run --example leak
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use quiesce::leak::Tracker;
use quiesce::{Context, Threads, threads::Running};

/// How long a leak check waits before it calls a thread leaked.
const LEAK_GRACE: Duration = Duration::from_millis(500);

/// The deadline the right way puts on the call.
const CALL_DEADLINE: Duration = Duration::from_millis(800);

/// After the deadline, how long the read timeout waits before it ends a
/// read that the cancel hook somehow did not.
const BACKSTOP: Duration = Duration::from_millis(250);

/// A generous bound for joins and checks that are expected to succeed at
/// once.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The request the clinical system sends.
const REQUEST: &[u8] = b"ANALYZE ePRO-2024-0042\n";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("leak: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> io::Result<bool> {
    // The downstream service. It is started before any tracker, so the leak
    // checks below see only the calls.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut service = Threads::<io::Result<usize>>::new(&Context::background());
    service.spawn("analysis-service", move |ctx| {
        silent_service(&listener, ctx)
    })?;
    println!("analysis service listening on {addr}: it accepts and never answers");

    let wrong = wrong_way(addr);
    println!();
    let right = right_way(addr);
    println!();

    // Stop the service: cancel its context and join it.
    let report = service.shutdown_timeout(JOIN_TIMEOUT);
    let service_ok = match (report.running.first(), report.finished.first()) {
        (Some(stuck), _) => give_up(stuck),
        (None, Some(finished)) => match &finished.result {
            Ok(Ok(held)) => {
                println!("analysis service stopped; it held {held} connections and answered none");
                true
            }
            Ok(Err(err)) => {
                eprintln!("leak: analysis service failed: {err}");
                false
            }
            Err(panic) => {
                eprintln!("leak: analysis service {panic}");
                false
            }
        },
        (None, None) => false,
    };

    // goleak at the end of main: no quiesce thread left at all (this also
    // stops the shared `quiesce-timer` thread that fired the deadline).
    let all_stopped = match quiesce::leak::check_all(JOIN_TIMEOUT) {
        Ok(()) => {
            println!("final check: no quiesce thread left running");
            true
        }
        Err(leaked) => {
            println!("final check: {leaked}");
            false
        }
    };
    Ok(wrong? && right? && service_ok && all_stopped)
}

/// A blocking read with no deadline, caught by the leak check, then
/// unblocked from outside. `Ok(true)` when it went as described.
fn wrong_way(addr: SocketAddr) -> io::Result<bool> {
    println!("== the wrong way: a blocking read with no deadline ==");
    let tracker = quiesce::leak::track();
    let stream = TcpStream::connect(addr)?;
    let unblock = stream.try_clone()?;
    let mut calls = Threads::<io::Result<usize>>::new(&Context::background());
    calls.spawn("analysis-call-no-deadline", move |_ctx| {
        call_without_deadline(stream)
    })?;
    // From here on, no early return until the thread is unblocked: dropping
    // `calls` would wait for it forever.

    let leaked = match tracker.check(LEAK_GRACE) {
        Err(leaked) => {
            println!("leak check: {leaked}");
            true
        }
        Ok(()) => {
            println!("leak check: passed (unexpected: the call should be stuck)");
            false
        }
    };
    let report = calls.shutdown_timeout(Duration::from_millis(200));
    for stuck in &report.running {
        println!("cancelling its context does not help: {stuck}");
    }

    println!("unblocking it from outside: shutting the socket down");
    let _ = unblock.shutdown(Shutdown::Both);
    let report = calls.join_timeout(JOIN_TIMEOUT);
    if let Some(stuck) = report.running.first() {
        give_up(stuck);
    }
    for finished in &report.finished {
        match &finished.result {
            Ok(Ok(n)) => println!("{}: read returned {n} bytes", finished.name),
            Ok(Err(err)) => println!("{}: read failed: {err}", finished.name),
            Err(panic) => println!("{}: {panic}", finished.name),
        }
    }
    Ok(leaked && check(&tracker))
}

/// The same call under a context with a deadline. `Ok(true)` when it gave
/// up at the deadline and left no thread behind.
fn right_way(addr: SocketAddr) -> io::Result<bool> {
    println!("== the right way: the call runs under a {CALL_DEADLINE:?} deadline ==");
    let tracker = quiesce::leak::track();
    let started = Instant::now();
    let ctx = Context::background().with_timeout(CALL_DEADLINE);
    let mut calls = Threads::<io::Result<String>>::new(&ctx);
    calls.spawn("analysis-call-with-deadline", move |ctx| {
        call_with_deadline(ctx, addr)
    })?;
    let report = calls.join_timeout(JOIN_TIMEOUT);
    drop(ctx);
    let mut gave_up = false;
    for finished in &report.finished {
        match &finished.result {
            Ok(Ok(reply)) => println!("{}: reply {reply:?}", finished.name),
            Ok(Err(err)) => {
                println!(
                    "{}: gave up after {:.2?}: {err}",
                    finished.name,
                    started.elapsed()
                );
                gave_up = err.kind() == io::ErrorKind::TimedOut;
            }
            Err(panic) => println!("{}: {panic}", finished.name),
        }
    }
    if let Some(stuck) = report.running.first() {
        give_up(stuck);
    }
    Ok(gave_up && check(&tracker))
}

/// A thread did not return within its join timeout. Returning would drop
/// its `Threads`, whose drop joins it forever: report it and leave at once.
fn give_up(stuck: &Running) -> ! {
    eprintln!("leak: thread still running after {JOIN_TIMEOUT:?}: {stuck}");
    std::process::exit(1);
}

/// Runs a leak check that is expected to pass and prints its outcome.
fn check(tracker: &Tracker) -> bool {
    match tracker.check(JOIN_TIMEOUT) {
        Ok(()) => {
            println!("leak check: passed, no call thread left running");
            true
        }
        Err(leaked) => {
            println!("leak check: {leaked}");
            false
        }
    }
}

/// The wrong way: send the request and wait for the reply, however long.
fn call_without_deadline(mut stream: TcpStream) -> io::Result<usize> {
    stream.write_all(REQUEST)?;
    let mut reply = [0u8; 256];
    stream.read(&mut reply) // no timeout: blocks until the socket is shut
}

/// The right way: every blocking step is bounded by `ctx`.
fn call_with_deadline(ctx: &Context, addr: SocketAddr) -> io::Result<String> {
    // An error that happened because the context was done is reported as
    // the context's error ("context deadline exceeded").
    let because_of_ctx = |err: io::Error| match ctx.err() {
        Some(ctx_err) => io::Error::new(io::ErrorKind::TimedOut, ctx_err),
        None => err,
    };
    let left = |extra: Duration| match ctx.remaining() {
        Some(left) => left + extra,
        None => Duration::from_secs(30),
    };

    let mut stream = TcpStream::connect_timeout(&addr, left(Duration::from_millis(1)))
        .map_err(because_of_ctx)?;
    // Go's context.AfterFunc(ctx, conn.Close): when the context is done, the
    // socket is shut down and the blocked read returns at once. The handle
    // is kept until the read is over; dropping it unregisters the hook.
    let closer = stream.try_clone()?;
    let _hook = ctx.on_cancel(move || {
        let _ = closer.shutdown(Shutdown::Both);
    });
    // Backstop: even if the hook could not run, the read ends shortly after
    // the deadline. (Never zero: a zero read timeout is an error.)
    stream.set_read_timeout(Some(left(BACKSTOP)))?;

    stream.write_all(REQUEST).map_err(because_of_ctx)?;
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).map_err(because_of_ctx)?;
    if let Some(ctx_err) = ctx.err() {
        // A read of 0 bytes after our own shutdown is not an answer.
        return Err(io::Error::new(io::ErrorKind::TimedOut, ctx_err));
    }
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

/// The analysis service: accepts connections and never answers; holds them
/// until its context is cancelled. Returns how many it accepted.
fn silent_service(listener: &TcpListener, ctx: &Context) -> io::Result<usize> {
    let mut held = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => held.push(stream),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                // Nothing to accept: look again soon, unless told to stop.
                if ctx.sleep(Duration::from_millis(10)).is_err() {
                    return Ok(held.len());
                }
            }
            Err(err) => return Err(err),
        }
    }
}
