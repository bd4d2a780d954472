//! Connection admission, shared by the three listeners. Every accepted connection holds a
//! [`Ticket`] until it closes, and the ticket says how far the peer has proved itself:
//!
//! `Idle` (accepted, no byte yet) → `Handshake` (bytes arrived: waiting for a handshake slot or
//! in its TLS handshake) → `Identified` (a verified client certificate) or `Unidentified` (TLS
//! without a certificate, or the plain-HTTP metrics listener).
//!
//! Connections that are not identified can be shed to make room. When the descriptor budget is
//! spent, the oldest idle one goes first, then the oldest unidentified one, then the oldest still
//! in its handshake — so a client that holds sockets open without credentials can never keep a
//! new caller out, while a real client, which sends its ClientHello at once, is past the cheapest
//! class within a round trip. When a listener holds its maximum of connections that have sent
//! bytes without proving who they are (those in their handshake and those without a certificate:
//! the ones that cost TLS state and buffers), the next one sheds the oldest of them, unidentified
//! first. Idle sockets are bounded by the budget alone: a cap below it would leave an attacker's
//! surplus in the kernel's accept queue, where it crowds out real clients' connections before
//! admission ever sees them. Identified connections are never shed. A shed connection's I/O fails
//! at its next poll (its task is woken), which closes it; until then it keeps its descriptor, so
//! the accept loops pause while [`SHED_BACKLOG`] shed connections have not closed yet.
//!
//! Handshakes are CPU work, and a flood of ClientHellos without certificates can queue more of
//! them than the CPUs finish: a real client would wait behind the whole queue. Addresses that
//! presented a verified certificate within [`KNOWN_ADDRESS_TTL`] have handshake slots of their
//! own besides the shared ones, so the hosts a service already serves (its agents, pilots and
//! portal) are not held up by strangers; a host's first connection queues with everyone.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The service's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Front {
    /// DIRAC's HTTPS protocol and the JSON API.
    Https,
    /// DISET.
    Dips,
    /// Plain-HTTP metrics and health checks.
    Metrics,
}

impl Front {
    pub const ALL: [Self; 3] = [Self::Https, Self::Dips, Self::Metrics];

    /// The `listener` label of the connection metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Dips => "dips",
            Self::Metrics => "metrics",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How far a connection has got; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Handshake,
    Unidentified,
    Identified,
}

impl State {
    pub const ALL: [Self; 4] = [
        Self::Idle,
        Self::Handshake,
        Self::Unidentified,
        Self::Identified,
    ];
    /// Who goes first when descriptors must be made room for: the cheapest to lose and the most
    /// suspect.
    const SHED_ORDER: [Self; 3] = [Self::Idle, Self::Unidentified, Self::Handshake];
    /// Who goes first when a listener holds its maximum of unidentified connections.
    const UNIDENTIFIED_SHED_ORDER: [Self; 2] = [Self::Unidentified, Self::Handshake];

    /// The `state` label of `tokenmanager_connections`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Handshake => "handshake",
            Self::Unidentified => "unidentified",
            Self::Identified => "identified",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(index: u8) -> Self {
        Self::ALL[usize::from(index)]
    }

    /// The states counted against a listener's maximum of unidentified connections.
    fn counts_per_listener(self) -> bool {
        matches!(self, Self::Handshake | Self::Unidentified)
    }

    /// The state counted against the per-address cap: connections that finished TLS without
    /// proving who they are, the costly kind (their TLS state and buffers). Idle sockets are
    /// not counted: a burst of real clients behind one address is idle for a moment, until the
    /// server reads their ClientHello; silent ones go at `FirstByteTimeout` or by shedding.
    fn counts_per_address(self) -> bool {
        self == Self::Unidentified
    }
}

/// Why a connection was closed or refused by admission: the `reason` label of
/// `tokenmanager_connections_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The descriptor budget was spent and a newer connection needed the place.
    Descriptors,
    /// The listener held its maximum of unidentified connections.
    UnidentifiedLimit,
    /// The peer's address held its maximum of unidentified connections.
    AddressLimit,
    /// No byte within `FirstByteTimeout`.
    IdleTimeout,
    /// The TLS handshake was not finished within `HandshakeTimeout`.
    HandshakeTimeout,
    /// A DISET call found no free `MaxThreads` slot within `QueueTimeout`.
    QueueTimeout,
    /// The service is stopping.
    Shutdown,
}

impl ShedReason {
    pub const ALL: [Self; 7] = [
        Self::Descriptors,
        Self::UnidentifiedLimit,
        Self::AddressLimit,
        Self::IdleTimeout,
        Self::HandshakeTimeout,
        Self::QueueTimeout,
        Self::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Descriptors => "descriptors",
            Self::UnidentifiedLimit => "unidentified_limit",
            Self::AddressLimit => "address_limit",
            Self::IdleTimeout => "idle_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::QueueTimeout => "queue_timeout",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The bounds admission enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once, all listeners together: the descriptors left after the
    /// reserve the service keeps for its database, IdP and log connections.
    pub connections: usize,
    /// Connections of one listener that have sent bytes but are not identified: in their
    /// handshake, or finished without a certificate.
    pub unidentified_per_listener: usize,
    /// Unidentified connections from one address; 0 for no cap.
    pub unidentified_per_address: usize,
    /// TLS handshakes running at once on one listener; the others wait for a slot.
    pub handshakes_per_listener: usize,
}

/// Shed connections that may still hold their descriptors (their tasks have not run since)
/// before the accept loops pause: a churn of shed connections would otherwise eat the reserve
/// the budget leaves for the database and IdP connections.
const SHED_BACKLOG: usize = 32;
/// How long an address stays known after its last identified connection.
const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(3600);
/// Known addresses remembered at most (~50 bytes each); past it, new ones are not recorded
/// until the expired ones are pruned.
const KNOWN_ADDRESSES_MAX: usize = 65_536;

/// The shared state of every connection: see the module documentation.
pub struct Admission {
    limits: Limits,
    inner: Mutex<Inner>,
    handshakes: [Arc<Semaphore>; 3],
    /// Handshake slots only connections from known addresses take, per listener.
    known_handshakes: [Arc<Semaphore>; 3],
    gauges: [[IntGauge; 4]; 3],
    metrics: Arc<Metrics>,
    /// Woken when the last connection of the HTTPS and DISET listeners closes, and when shutdown
    /// starts.
    changed: Notify,
    /// Woken when the shed connections still open fall below [`SHED_BACKLOG`].
    shed_closed: Notify,
}

struct Inner {
    next_id: u64,
    /// Tickets alive, shed or not: the descriptors client connections hold.
    open: usize,
    /// Tickets shed and not yet dropped.
    shedding: usize,
    /// Tickets of the HTTPS and DISET listeners: what a graceful stop waits for.
    serving: usize,
    /// `[listener][state]`: id → (address, slot), ordered by age.
    connections: [[BTreeMap<u64, Member>; 4]; 3],
    per_address: HashMap<IpAddr, usize>,
    known: KnownAddresses,
    closing: bool,
}

/// Addresses that recently presented a verified client certificate.
#[derive(Default)]
struct KnownAddresses {
    last_identified: HashMap<IpAddr, Instant>,
    pruned: Option<Instant>,
}

impl KnownAddresses {
    fn record(&mut self, address: IpAddr, now: Instant) {
        let full = self.last_identified.len() >= KNOWN_ADDRESSES_MAX;
        if full && !self.last_identified.contains_key(&address) {
            // Pruning walks the whole map: at most once a minute.
            if self
                .pruned
                .is_some_and(|pruned| now.duration_since(pruned) < Duration::from_secs(60))
            {
                return;
            }
            self.pruned = Some(now);
            self.last_identified
                .retain(|_, seen| now.duration_since(*seen) < KNOWN_ADDRESS_TTL);
            if self.last_identified.len() >= KNOWN_ADDRESSES_MAX {
                return;
            }
        }
        self.last_identified.insert(address, now);
    }

    fn contains(&self, address: IpAddr, now: Instant) -> bool {
        self.last_identified
            .get(&address)
            .is_some_and(|seen| now.duration_since(*seen) < KNOWN_ADDRESS_TTL)
    }
}

struct Member {
    address: IpAddr,
    slot: Arc<Slot>,
}

/// What the connection's task and admission share: the shed flag, why, and who to wake.
#[derive(Default)]
struct Slot {
    shed: AtomicBool,
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl Slot {
    fn shed(&self, reason: ShedReason) {
        self.reason.store(reason as u8, Ordering::Relaxed);
        self.shed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    fn reason(&self) -> ShedReason {
        ShedReason::ALL[usize::from(self.reason.load(Ordering::Relaxed))]
    }
}

impl Admission {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let gauges = Front::ALL.map(|front| {
            State::ALL.map(|state| {
                metrics
                    .connections
                    .with_label_values(&[front.label(), state.label()])
            })
        });
        for front in Front::ALL {
            for reason in ShedReason::ALL {
                metrics
                    .connections_shed
                    .with_label_values(&[front.label(), reason.label()]);
            }
        }
        metrics.connection_budget.set(limits.connections as i64);
        let handshake_slots = limits.handshakes_per_listener.max(1);
        Arc::new(Self {
            limits,
            inner: Mutex::new(Inner {
                next_id: 0,
                open: 0,
                shedding: 0,
                serving: 0,
                connections: Default::default(),
                per_address: HashMap::new(),
                known: KnownAddresses::default(),
                closing: false,
            }),
            handshakes: [(); 3].map(|_| Arc::new(Semaphore::new(handshake_slots))),
            known_handshakes: [(); 3].map(|_| Arc::new(Semaphore::new(handshake_slots))),
            gauges,
            metrics,
            changed: Notify::new(),
            shed_closed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere with the lock held leaves consistent maps: every update is one
        // insert or remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for a connection just accepted from `address`, making room by shedding if need
    /// be; the reason when it cannot be admitted (close it at once).
    pub fn admit(self: &Arc<Self>, front: Front, address: IpAddr) -> Result<Ticket, ShedReason> {
        let mut inner = self.lock();
        let refused = |reason| {
            self.count_shed(front, reason);
            Err(reason)
        };
        // The metrics listener answers health checks (`/readyz`: 503) until the end.
        if inner.closing && front != Front::Metrics {
            return refused(ShedReason::Shutdown);
        }
        let per_address_cap = self.limits.unidentified_per_address;
        if per_address_cap > 0
            && inner.per_address.get(&address).copied().unwrap_or(0) >= per_address_cap
        {
            return refused(ShedReason::AddressLimit);
        }
        if inner.open >= self.limits.connections
            && !self.shed_oldest(
                &mut inner,
                &Front::ALL,
                &State::SHED_ORDER,
                ShedReason::Descriptors,
            )
        {
            return refused(ShedReason::Descriptors);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open += 1;
        if front != Front::Metrics {
            inner.serving += 1;
        }
        let slot = Arc::new(Slot::default());
        self.enter(&mut inner, front, State::Idle, id, address, slot.clone());
        Ok(Ticket {
            admission: self.clone(),
            id,
            front,
            address,
            state: AtomicU8::new(State::Idle as u8),
            slot,
        })
    }

    /// Waits while [`SHED_BACKLOG`] shed connections have not closed yet.
    pub async fn room(&self) {
        loop {
            let closed = self.shed_closed.notified();
            if self.lock().shedding < SHED_BACKLOG {
                return;
            }
            closed.await;
        }
    }

    /// Sheds the oldest connection among `fronts` in the first of `states` that has one; false
    /// if none has.
    fn shed_oldest(
        &self,
        inner: &mut Inner,
        fronts: &[Front],
        states: &[State],
        reason: ShedReason,
    ) -> bool {
        for &state in states {
            let oldest = fronts
                .iter()
                .filter_map(|front| {
                    let members = &inner.connections[front.index()][state.index()];
                    members.keys().next().map(|id| (*id, *front))
                })
                .min();
            if let Some((id, front)) = oldest {
                self.shed_member(inner, front, state, id, reason);
                return true;
            }
        }
        false
    }

    fn shed_member(
        &self,
        inner: &mut Inner,
        front: Front,
        state: State,
        id: u64,
        reason: ShedReason,
    ) {
        if let Some(member) = self.leave(inner, front, state, id) {
            inner.shedding += 1;
            member.slot.shed(reason);
            self.count_shed(front, reason);
        }
    }

    fn count_shed(&self, front: Front, reason: ShedReason) {
        self.metrics
            .connections_shed
            .with_label_values(&[front.label(), reason.label()])
            .inc();
    }

    fn enter(
        &self,
        inner: &mut Inner,
        front: Front,
        state: State,
        id: u64,
        address: IpAddr,
        slot: Arc<Slot>,
    ) {
        if state.counts_per_address() {
            *inner.per_address.entry(address).or_default() += 1;
        }
        inner.connections[front.index()][state.index()].insert(id, Member { address, slot });
        self.gauges[front.index()][state.index()].inc();
    }

    fn leave(&self, inner: &mut Inner, front: Front, state: State, id: u64) -> Option<Member> {
        let member = inner.connections[front.index()][state.index()].remove(&id)?;
        if state.counts_per_address()
            && let std::collections::hash_map::Entry::Occupied(mut count) =
                inner.per_address.entry(member.address)
        {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
        self.gauges[front.index()][state.index()].dec();
        Some(member)
    }

    /// Waits for a handshake slot of `front`; None if the connection is shed meanwhile.
    async fn handshake_slot(&self, ticket: &Ticket) -> Option<OwnedSemaphorePermit> {
        let shared = self.handshakes[ticket.front.index()].clone();
        let known = self.lock().known.contains(ticket.address, Instant::now());
        let own = known.then(|| self.known_handshakes[ticket.front.index()].clone());
        let own_slot = async {
            match own {
                Some(own) => own.acquire_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            permit = shared.acquire_owned() => permit.ok(),
            permit = own_slot => permit.ok(),
            () = ticket.shed_signal() => None,
        }
    }

    /// Stops admitting to the HTTPS and DISET listeners: new connections are refused, and those
    /// that have not finished a handshake are shed. The metrics listener keeps admitting.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closing = true;
        // Not the metrics listener's: a health check that connected just before the stop
        // began is answered (`/readyz`: 503), not reset.
        self.shed_all(
            &mut inner,
            &[Front::Https, Front::Dips],
            &[State::Idle, State::Handshake],
        );
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Waits until every connection of the HTTPS and DISET listeners has closed, at most
    /// `grace`; then sheds those left.
    pub async fn drain(&self, grace: Duration) {
        let all_closed = async {
            loop {
                let notified = self.changed.notified();
                if self.lock().serving == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            self.shed_all(&mut self.lock(), &Front::ALL, &State::ALL);
        }
    }

    /// Sheds every connection of `fronts` in one of `states`, for shutdown.
    fn shed_all(&self, inner: &mut Inner, fronts: &[Front], states: &[State]) {
        for &front in fronts {
            for &state in states {
                let ids: Vec<u64> = inner.connections[front.index()][state.index()]
                    .keys()
                    .copied()
                    .collect();
                for id in ids {
                    self.shed_member(inner, front, state, id, ShedReason::Shutdown);
                }
            }
        }
    }

    /// Client connections open now, all listeners together.
    pub fn open(&self) -> usize {
        self.lock().open
    }
}

/// One connection's place in [`Admission`]; dropping it (with the connection) gives it back.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    front: Front,
    address: IpAddr,
    state: AtomicU8,
    slot: Arc<Slot>,
}

impl Ticket {
    fn state(&self) -> State {
        State::from_index(self.state.load(Ordering::Acquire))
    }

    /// Moves the connection to `to`; nothing if it was shed meanwhile (its I/O fails anyway).
    pub fn advance(&self, to: State) {
        let admission = &self.admission;
        let mut inner = admission.lock();
        if self.slot.is_shed() {
            return;
        }
        let from = self.state();
        if from == to {
            return;
        }
        if to.counts_per_listener() && !from.counts_per_listener() {
            let unidentified: usize = State::UNIDENTIFIED_SHED_ORDER
                .iter()
                .map(|state| inner.connections[self.front.index()][state.index()].len())
                .sum();
            if unidentified >= admission.limits.unidentified_per_listener {
                admission.shed_oldest(
                    &mut inner,
                    &[self.front],
                    &State::UNIDENTIFIED_SHED_ORDER,
                    ShedReason::UnidentifiedLimit,
                );
            }
        }
        if to == State::Identified {
            inner.known.record(self.address, Instant::now());
        }
        if admission
            .leave(&mut inner, self.front, from, self.id)
            .is_some()
        {
            admission.enter(
                &mut inner,
                self.front,
                to,
                self.id,
                self.address,
                self.slot.clone(),
            );
        }
        self.state.store(to as u8, Ordering::Release);
    }

    pub fn is_shed(&self) -> bool {
        self.slot.is_shed()
    }

    /// Sheds this connection itself (a timeout, say), counted under `reason`.
    pub fn shed(&self, reason: ShedReason) {
        let admission = &self.admission;
        let mut inner = admission.lock();
        if !self.slot.is_shed() {
            admission.shed_member(&mut inner, self.front, self.state(), self.id, reason);
        }
    }

    /// Counts this connection under `reason` without shedding it: it is answered, then closed
    /// by its handler.
    pub fn count_refusal(&self, reason: ShedReason) {
        self.admission.count_shed(self.front, reason);
    }

    /// Resolves when the connection is shed.
    async fn shed_signal(&self) {
        std::future::poll_fn(|cx| self.poll_shed(cx)).await
    }

    fn poll_shed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.slot.waker.register(cx.waker());
        if self.slot.is_shed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let admission = &self.admission;
        let mut inner = admission.lock();
        if self.slot.is_shed() {
            inner.shedding -= 1;
            if inner.shedding == SHED_BACKLOG - 1 {
                admission.shed_closed.notify_waiters();
            }
        } else {
            admission.leave(&mut inner, self.front, self.state(), self.id);
        }
        inner.open -= 1;
        let mut last = false;
        if self.front != Front::Metrics {
            inner.serving -= 1;
            last = inner.serving == 0;
        }
        drop(inner);
        if last {
            admission.changed.notify_waiters();
        }
    }
}

/// A connection's I/O with its ticket: reads and writes fail once the connection is shed, and a
/// connection parked in a read or write is woken for it.
pub struct Admitted<S> {
    io: S,
    ticket: Ticket,
}

fn shed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection shed")
}

impl Admitted<TcpStream> {
    pub fn new(io: TcpStream, ticket: Ticket) -> Self {
        Self { io, ticket }
    }

    /// Waits for the peer's first byte (or its close), at most `deadline`: a socket that sends
    /// nothing is shed as idle.
    pub async fn first_byte(&self, deadline: Duration) -> Result<(), ShedReason> {
        let mut byte = [0u8; 1];
        let readable = std::future::poll_fn(|cx| {
            if self.ticket.poll_shed(cx).is_ready() {
                return Poll::Ready(Err(self.ticket.slot.reason()));
            }
            // A peek, not read readiness, which may be reported before any byte is there.
            let mut buffer = ReadBuf::new(&mut byte);
            self.io.poll_peek(cx, &mut buffer).map(|_| Ok(()))
        });
        match tokio::time::timeout(deadline, readable).await {
            Ok(Ok(())) => {
                self.ticket.advance(State::Handshake);
                Ok(())
            }
            Ok(Err(shed)) => Err(shed),
            Err(_) => {
                self.ticket.shed(ShedReason::IdleTimeout);
                Err(ShedReason::IdleTimeout)
            }
        }
    }

    /// A handshake slot of this connection's listener, waited for until `deadline`.
    pub async fn handshake_slot(
        &self,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, ShedReason> {
        let admission = &self.ticket.admission;
        match tokio::time::timeout_at(deadline, admission.handshake_slot(&self.ticket)).await {
            Ok(Some(permit)) => Ok(permit),
            Ok(None) => Err(self.ticket.slot.reason()),
            Err(_) => {
                self.ticket.shed(ShedReason::HandshakeTimeout);
                Err(ShedReason::HandshakeTimeout)
            }
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }
}

impl<S> Admitted<S> {
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ticket.poll_shed(cx).is_ready() {
            return Poll::Ready(Err(shed_error()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ticket.poll_shed(cx).is_ready() {
            return Poll::Ready(Err(shed_error()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ticket.poll_shed(cx).is_ready() {
            return Poll::Ready(Err(shed_error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
