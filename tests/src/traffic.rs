//! Traffic helpers: a TCP server that answers every connection with the source address it saw,
//! and its client. Reachability is "the client got an answer"; SNAT is "the answer is not the
//! client's own address".

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Netns;

/// How long a client waits to connect or read before calling the path broken.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A "who am I" TCP server listening inside a namespace; stops on drop.
#[derive(Debug)]
pub struct WhoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WhoServer {
    /// Listens on `addr` inside `ns` and answers each connection with the peer's IP and `\n`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> WhoServer {
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        // Non-blocking so the thread notices `stop` between connections.
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(format!("{}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        WhoServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WhoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to a [`WhoServer`] at `addr`; returns the source address the
/// server saw, or the I/O error (unreachable, refused, timed out).
pub fn who_am_i(ns: &Netns, addr: SocketAddr) -> std::io::Result<IpAddr> {
    ns.run(|| {
        let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        answer
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })
}
