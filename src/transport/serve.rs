//! The accept loops of the listeners: one per listener on every worker arbiter (actix's threads,
//! so that handlers can start refresh actors). Each accepted socket gets its admission ticket
//! before anything else is spent on it, and the loops wait while shed connections have not closed
//! yet (their descriptors are still taken); accept errors (out of descriptors, typically) back
//! off and are logged once a minute, not once per attempt.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::admission::{Admission, Admitted, Front};

/// How long an accept loop pauses after an accept error: the descriptors it lacks come back
/// as connections close, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per listener in this time about failing accepts.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Serves one admitted connection; made once per worker thread.
pub type ConnectionHandler =
    Rc<dyn Fn(Admitted<TcpStream>, SocketAddr) -> LocalBoxFuture<'static, ()>>;

/// The worker arbiters and the accept loops running on them.
pub struct Workers {
    arbiters: Arc<[actix_rt::Arbiter]>,
    admission: Arc<Admission>,
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

/// Stops the [`Workers`] from elsewhere, and waits for that.
#[derive(Clone)]
pub struct WorkersHandle {
    arbiters: Arc<[actix_rt::Arbiter]>,
    admission: Arc<Admission>,
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
}

impl Workers {
    pub fn start(count: usize, admission: Arc<Admission>) -> Self {
        let arbiters: Vec<_> = (0..count.max(1))
            .map(|_| actix_rt::Arbiter::new())
            .collect();
        Self {
            arbiters: arbiters.into(),
            admission,
            stop: watch::channel(false).0,
            stopped: watch::channel(false).0,
        }
    }

    /// Serves `listener` on every worker: `make_handler` runs once per worker, on its thread,
    /// and gives the function each admitted connection is passed to.
    pub fn serve<M, Fut>(
        &self,
        listener: StdTcpListener,
        front: Front,
        make_handler: M,
    ) -> std::io::Result<()>
    where
        M: Fn() -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ConnectionHandler> + 'static,
    {
        listener.set_nonblocking(true)?;
        let errors = Arc::new(Mutex::new(AcceptErrors::default()));
        for arbiter in self.arbiters.iter() {
            let listener = listener.try_clone()?;
            let make_handler = make_handler.clone();
            let admission = self.admission.clone();
            let stop = self.stop.subscribe();
            let errors = errors.clone();
            arbiter.spawn_fn(move || {
                actix_rt::spawn(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(listener = front.label(), %error, "cannot start an accept loop");
                            return;
                        }
                    };
                    let handler = make_handler().await;
                    accept_loop(listener, front, admission, handler, stop, errors).await;
                });
            });
        }
        Ok(())
    }

    pub fn handle(&self) -> WorkersHandle {
        WorkersHandle {
            arbiters: self.arbiters.clone(),
            admission: self.admission.clone(),
            stop: self.stop.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl WorkersHandle {
    /// Closes the listeners and sheds the connections that have not finished a handshake;
    /// with `grace`, the others get that long to finish, then every connection is closed and
    /// the workers stop.
    pub async fn stop(&self, grace: Option<Duration>) {
        self.stop.send_replace(true);
        self.admission.close();
        if let Some(grace) = grace {
            self.admission.drain(grace).await;
        }
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
        self.stopped.send_replace(true);
    }

    /// Resolves when [`WorkersHandle::stop`] has finished.
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    front: Front,
    admission: Arc<Admission>,
    handler: ConnectionHandler,
    mut stop: watch::Receiver<bool>,
    errors: Arc<Mutex<AcceptErrors>>,
) {
    loop {
        // The metrics listener serves health checks until the workers stop.
        let stopping = async {
            match front {
                Front::Metrics => std::future::pending().await,
                _ => stop.wait_for(|stop| *stop).await.map(|_| ()),
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = stopping => return,
            accepted = async {
                admission.room().await;
                listener.accept().await
            } => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(front, &error);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(ticket) = admission.admit(front, peer.ip()) else {
            // Refused (counted by admission): the socket closes here.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        actix_rt::spawn(async move { handler(Admitted::new(stream, ticket), peer).await });
    }
}

/// Failed accepts of one listener, logged at most once per [`ACCEPT_ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct AcceptErrors {
    logged: Option<Instant>,
    since_logged: u64,
}

impl AcceptErrors {
    fn record(&mut self, front: Front, error: &std::io::Error) {
        self.since_logged += 1;
        if self
            .logged
            .is_some_and(|logged| logged.elapsed() < ACCEPT_ERROR_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            listener = front.label(),
            %error,
            failed_accepts = self.since_logged,
            "accepting connections fails (out of file descriptors?); retrying every 100 ms, next report in a minute"
        );
        self.logged = Some(Instant::now());
        self.since_logged = 0;
    }
}
