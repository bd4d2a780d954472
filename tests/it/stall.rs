//! A TCP proxy in front of a database server that can stall: while frozen it accepts
//! connections and reads what either side sends, but forwards nothing, as a stopped server or a
//! stalled network does; thawed, it forwards what it held back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

pub struct StallingProxy {
    pub port: u16,
    frozen: Arc<(Mutex<bool>, Condvar)>,
}

impl StallingProxy {
    /// Forwards 127.0.0.1:`port` (a free port) to 127.0.0.1:`upstream`, until the test process
    /// ends.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let gate = gate.clone();
                        std::thread::spawn(move || forward(from, to, &gate));
                    }
                }
            }
        });
        Self { port, frozen }
    }

    pub fn freeze(&self) {
        *self.frozen.0.lock().unwrap() = true;
    }

    pub fn thaw(&self) {
        *self.frozen.0.lock().unwrap() = false;
        self.frozen.1.notify_all();
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, gate: &(Mutex<bool>, Condvar)) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let frozen = gate.0.lock().unwrap();
        drop(gate.1.wait_while(frozen, |frozen| *frozen).unwrap());
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
