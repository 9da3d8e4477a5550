//! The bare server: the ceiling the loopback, the kernel and the load
//! generator allow.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::http::read_message;

/// A minimal HTTP/1.1 keep-alive server answering every request `202`:
/// one thread per connection, all joined by `stop` (or on drop).
pub(crate) struct BareServer {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) acceptor: Option<thread::JoinHandle<()>>,
}

impl BareServer {
    pub(crate) fn start() -> BareServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the bare server");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acceptor = thread::Builder::new()
            .name("bare-accept".into())
            .spawn(move || {
                let mut conns: Vec<thread::JoinHandle<()>> = Vec::new();
                for (n, stream) in listener.incoming().enumerate() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else {
                        continue;
                    };
                    let (done, running): (Vec<_>, Vec<_>) =
                        conns.into_iter().partition(|h| h.is_finished());
                    for handle in done {
                        let _ = handle.join();
                    }
                    conns = running;
                    let flag = flag.clone();
                    match thread::Builder::new()
                        .name(format!("bare-{n}"))
                        .spawn(move || serve_bare(stream, &flag))
                    {
                        Ok(handle) => conns.push(handle),
                        Err(err) => eprintln!("bare server: cannot start a thread: {err}"),
                    }
                }
                for handle in conns {
                    let _ = handle.join();
                }
            })
            .expect("start the bare server");
        BareServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub(crate) fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn serve_bare(mut stream: TcpStream, stop: &AtomicBool) {
    const BODY: &str = r#"{"report_id":"bare","status":"accepted"}"#;
    let answer = format!(
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.set_nodelay(true);
    // Wake up now and then to notice the stop.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::with_capacity(4096);
    loop {
        match read_message(&mut stream, &mut buf) {
            Ok(Some(request)) => {
                if stream.write_all(answer.as_bytes()).is_err() || request.close {
                    return;
                }
            }
            Ok(None) => return,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
