//! A TCP proxy in front of a database server that can stall: while frozen it accepts
//! connections and reads what either side sends, but forwards nothing, as a stopped server or a
//! stalled network does; thawed, it forwards what it held back. It can also stall only the
//! sessions that have sent a given text (one kind of session, e.g. the change-log readers).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub struct StallingProxy {
    pub port: u16,
    frozen: Arc<(Mutex<Frozen>, Condvar)>,
}

#[derive(Clone, Default, PartialEq)]
enum Frozen {
    #[default]
    Nothing,
    Everything,
    /// Sessions whose client has sent this text.
    SessionsThatSent(Vec<u8>),
}

impl StallingProxy {
    /// Forwards 127.0.0.1:`port` (a free port) to 127.0.0.1:`upstream`, until the test process
    /// ends.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new((Mutex::new(Frozen::Nothing), Condvar::new()));
        let gate = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let session = Arc::new(Session::default());
                for (from, to, from_client) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let (gate, session) = (gate.clone(), session.clone());
                        std::thread::spawn(move || forward(from, to, &gate, &session, from_client));
                    }
                }
            }
        });
        Self { port, frozen }
    }

    pub fn freeze(&self) {
        *self.frozen.0.lock().unwrap() = Frozen::Everything;
    }

    /// Stalls the sessions whose client sends `text` from now on (one piece of what it sends:
    /// a query's text), from that piece on.
    pub fn freeze_sessions_that_sent(&self, text: &str) {
        *self.frozen.0.lock().unwrap() = Frozen::SessionsThatSent(text.as_bytes().to_vec());
    }

    pub fn thaw(&self) {
        *self.frozen.0.lock().unwrap() = Frozen::Nothing;
        self.frozen.1.notify_all();
    }
}

/// Whether a session is one [`Frozen::SessionsThatSent`] stalls.
#[derive(Default)]
struct Session {
    marked: AtomicBool,
}

impl Session {
    fn stalled_by(&self, frozen: &Frozen) -> bool {
        match frozen {
            Frozen::Nothing => false,
            Frozen::Everything => true,
            Frozen::SessionsThatSent(_) => self.marked.load(Ordering::Relaxed),
        }
    }
}

fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    gate: &(Mutex<Frozen>, Condvar),
    session: &Session,
    from_client: bool,
) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let frozen = gate.0.lock().unwrap();
        if let Frozen::SessionsThatSent(text) = &*frozen
            && from_client
            && buffer[..read]
                .windows(text.len())
                .any(|w| w == text.as_slice())
        {
            session.marked.store(true, Ordering::Relaxed);
        }
        drop(
            gate.1
                .wait_while(frozen, |frozen| session.stalled_by(frozen))
                .unwrap(),
        );
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
