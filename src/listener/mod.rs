//! What both listeners (ingest and ops) share: each accepted connection is served by
//! hyper's HTTP/1.1 server (with upgrades) driving the listener's axum router, under
//! what neither axum nor hyper offers against slow, idle and too many clients: a cap
//! on open connections, a deadline for each request's headers, and one for
//! keep-alive connections between requests.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits
//! for its next request, so idle connections would be cut at the header timeout, and
//! hyper has no idle timeout; both deadlines are kept here instead, by a watchdog per
//! connection that knows which phase the connection is in (which eviction needs
//! too). Request bodies have their own deadline where they are read
//! (`intake::read_body`).
//!
//! At the cap, a new connection takes the slot of the one that has waited longest
//! without a request in progress (idle, or still sending headers after a second):
//! a flood of idle connections then cannot keep real senders out. Only when every
//! connection is busy with a request is the new one refused (503).

pub mod throttle;

use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use throttle::Throttle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tracing::{debug, error, warn};

use crate::metrics::Metrics;
use crate::metrics::listener::ListenerLabel;

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's first byte (or its opening) to the end of a request's headers.
    pub header_timeout: Duration,
    /// How long a connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it new ones get a 503 and are closed.
    pub max_connections: usize,
}

/// File descriptors kept free of client connections: the outbox, provider and fluxd
/// connections, the runtime's own.
const RESERVED_FDS: u64 = 128;

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux), `None` elsewhere or if
/// unlimited.
pub fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Lowers the two caps so that together they stay well under the fd limit: running
/// out of descriptors stops every listener at once, probes included. Returns the caps
/// and whether they were lowered.
pub fn fit_caps(ingest: usize, ops: usize, fd_limit: Option<u64>) -> (usize, usize, bool) {
    let Some(limit) = fd_limit else {
        return (ingest, ops, false);
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if ingest.saturating_add(ops) <= room {
        return (ingest, ops, false);
    }
    let ops_fit = ops.min((room / 8).max(2));
    let ingest_fit = ingest.min(room.saturating_sub(ops_fit).max(2));
    (ingest_fit, ops_fit, true)
}

const PHASE_HEAD: u64 = 0;
const PHASE_REQUEST: u64 = 1;
const PHASE_IDLE: u64 = 2;
/// Its HTTP task is over: closed, or handed to a websocket session.
const PHASE_DONE: u64 = 3;

/// A connection younger than this in its phase is never evicted: a sender that has
/// just connected gets to send its headers.
const MIN_EVICTABLE_AGE: Duration = Duration::from_secs(1);

/// One connection: which phase it is in and since when (`(millis since opened) << 2
/// | phase`, written by the connection's own task only), and its slot under the cap.
struct Activity {
    opened: Instant,
    state: AtomicU64,
    /// Released when the connection is gone, or taken by a newer one that evicts it.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    evicted: Notify,
}

impl Activity {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        Activity {
            opened: Instant::now(),
            state: AtomicU64::new(PHASE_HEAD),
            slot: Mutex::new(Some(slot)),
            evicted: Notify::new(),
        }
    }

    /// Since when it has waited without a request in progress; `None` if it has not.
    fn waiting_since(&self) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        matches!(state & 3, PHASE_HEAD | PHASE_IDLE).then(|| self.opened + Duration::from_millis(state >> 2))
    }

    fn set(&self, phase: u64) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX >> 2);
        self.state.store((ms << 2) | phase, Ordering::Relaxed);
    }

    /// Bytes arrived: an idle connection starts its next request's header deadline.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Relaxed) & 3 == PHASE_IDLE {
            self.set(PHASE_HEAD);
        }
    }

    /// `Err(reason)` once the phase's deadline has passed; else when to look again.
    fn check(&self, limits: &Limits, now: Instant) -> Result<Instant, &'static str> {
        let state = self.state.load(Ordering::Relaxed);
        let since = self.opened + Duration::from_millis(state >> 2);
        let (deadline, reason) = match state & 3 {
            PHASE_HEAD => (since + limits.header_timeout, "header_timeout"),
            PHASE_IDLE => (since + limits.idle_timeout, "idle_timeout"),
            // A request in progress is bounded by its handler (body deadline, drain).
            _ => return Ok(now + limits.header_timeout.min(limits.idle_timeout)),
        };
        if now >= deadline {
            Err(reason)
        } else {
            Ok(deadline)
        }
    }
}

/// Marks the connection's HTTP task over when dropped (after its request, if any).
struct Done(Arc<Activity>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.set(PHASE_DONE);
    }
}

/// The connections of one listener, for eviction at the cap.
#[derive(Default)]
struct Registry {
    entries: Mutex<Vec<Weak<Activity>>>,
}

impl Registry {
    fn add(&self, activity: &Arc<Activity>, cap: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= cap.saturating_mul(2).saturating_add(16) {
            entries.retain(|w| w.strong_count() > 0);
        }
        entries.push(Arc::downgrade(activity));
    }

    /// Takes the slot of the connection that has waited longest without a request in
    /// progress, and tells it to close.
    fn evict(&self, now: Instant) -> Option<OwnedSemaphorePermit> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|w| w.strong_count() > 0);
        let victim = entries
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|a| a.waiting_since().map(|since| (since, a)))
            .filter(|(since, _)| now.saturating_duration_since(*since) >= MIN_EVICTABLE_AGE)
            .min_by_key(|(since, _)| *since)
            .map(|(_, a)| a)?;
        let slot = victim.slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        victim.state.store(PHASE_DONE, Ordering::Relaxed);
        victim.evicted.notify_one();
        Some(slot)
    }
}

/// Marks a request in progress until dropped (answered, or the connection gone).
struct InRequest(Arc<Activity>);

impl InRequest {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.set(PHASE_REQUEST);
        InRequest(activity.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.set(PHASE_IDLE);
    }
}

/// The socket, holding its connection slot (in its [`Activity`]) for as long as it
/// is open: after a websocket upgrade, too.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
    open: Gauge,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Still above any request head flux-status takes, and enough to read bodies fast.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// What a client over the cap is told before its connection is closed.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 5\r\nconnection: close\r\ncontent-length: 78\r\n\r\n\
{\"error\":\"too many connections open; retry later\",\"reason\":\"connection_limit\"}";

struct Shared {
    name: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
    over_cap_log: Throttle,
    timeout_log: Throttle,
    evict_log: Throttle,
}

/// Serves `service` (a router) over HTTP/1.1 until `stop`; then accepts no more
/// connections, lets each finish the request it is in, and returns once all are
/// closed.
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    service: S,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        name,
        limits,
        metrics,
        over_cap_log: Throttle::new(),
        timeout_log: Throttle::new(),
        evict_log: Throttle::new(),
    });
    let registry = Registry::default();
    let open = shared
        .metrics
        .listener
        .open
        .get_or_create(&ListenerLabel { listener: name })
        .clone();
    let accept_log = Throttle::new();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    if let Some(suppressed) = accept_log.allow() {
                        error!(listener = name, error = %e, suppressed, "could not accept a connection; retrying in 1 s");
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match registry.evict(Instant::now()) {
                Some(slot) => slot,
                None => {
                    refuse_over_cap(&shared, stream);
                    continue;
                }
            },
        };
        open.inc();
        let activity = Arc::new(Activity::new(slot));
        registry.add(&activity, limits.max_connections);
        let io = Tracked {
            io: stream,
            activity: activity.clone(),
            open: open.clone(),
        };
        connections.spawn(connection(
            shared.clone(),
            io,
            activity,
            service.clone(),
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

fn refuse_over_cap(shared: &Shared, stream: TcpStream) {
    // Best effort, never waiting: the point is to let go of the descriptor at once.
    let _ = stream.try_write(OVER_CAP);
    shared.metrics.listener.closed(shared.name, "connection_limit");
    if let Some(suppressed) = shared.over_cap_log.allow() {
        warn!(
            listener = shared.name,
            max_connections = shared.limits.max_connections,
            suppressed,
            "connection refused: every connection is busy with a request (--max-connections / --ops-max-connections)"
        );
    }
}

async fn connection<S>(
    shared: Arc<Shared>,
    io: Tracked,
    activity: Arc<Activity>,
    service: S,
    stop: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let _done = Done(activity.clone());
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = InRequest::enter(&in_service);
        let answer = service.clone().oneshot(req);
        async move {
            let resp = answer.await;
            drop(busy);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // A sender may shut down its side once its request is out and still read
        // the answer; without this hyper would drop the request as the client left.
        .half_close(true)
        .header_read_timeout(None)
        // A connection's read buffer is not body bytes, so not under the body budget;
        // hyper's default (~400 KiB) times every connection would dwarf it.
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let watchdog = tokio::time::sleep(shared.limits.header_timeout);
    let mut watchdog = std::pin::pin!(watchdog);
    let mut stopping = false;
    let mut evicted = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(listener = shared.name, error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.evicted.notified(), if !evicted => {
                evicted = true;
                shared.metrics.listener.closed(shared.name, "evicted");
                if let Some(suppressed) = shared.evict_log.allow() {
                    warn!(listener = shared.name, max_connections = shared.limits.max_connections, suppressed,
                        "connection cap reached: closed the connection waiting longest without a request");
                }
                // A request that began as it was chosen is finished first.
                if activity.state.load(Ordering::Relaxed) & 3 != PHASE_REQUEST {
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = watchdog.as_mut() => match activity.check(&shared.limits, Instant::now()) {
                Ok(next) => watchdog.as_mut().reset(next),
                Err(reason) => {
                    timed_out(&shared, reason);
                    return;
                }
            },
        }
    }
}

fn timed_out(shared: &Shared, reason: &'static str) {
    shared.metrics.listener.closed(shared.name, reason);
    if reason == "idle_timeout" {
        debug!(listener = shared.name, "closed an idle keep-alive connection");
    } else if let Some(suppressed) = shared.timeout_log.allow() {
        warn!(
            listener = shared.name,
            header_timeout = ?shared.limits.header_timeout,
            suppressed,
            "closed a connection that sent no complete request headers in time (--header-timeout)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_cap_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAP).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["reason"],
            "connection_limit"
        );
    }

    #[test]
    fn caps_fit_under_the_fd_limit() {
        assert_eq!(fit_caps(512, 64, None), (512, 64, false));
        assert_eq!(fit_caps(512, 64, Some(1024)), (512, 64, false));
        let (i, o, lowered) = fit_caps(512, 64, Some(256));
        assert!(lowered && i + o <= 256 - 128 && o >= 2 && i >= 2, "{i} {o}");
        let (i, o, _) = fit_caps(512, 64, Some(10));
        assert!(i >= 2 && o >= 2);
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
        };
        let a = Activity::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap());
        let t0 = a.opened;
        assert!(a.check(&limits, t0 + Duration::from_secs(9)).is_ok());
        assert_eq!(
            a.check(&limits, t0 + Duration::from_secs(10)),
            Err("header_timeout")
        );
        a.set(PHASE_REQUEST);
        assert!(a.check(&limits, t0 + Duration::from_secs(3600)).is_ok());
        a.set(PHASE_IDLE);
        assert!(a.check(&limits, t0 + Duration::from_secs(59)).is_ok());
        assert_eq!(
            a.check(&limits, t0 + Duration::from_secs(61)),
            Err("idle_timeout")
        );
        a.bytes_arrived();
        assert_eq!(a.state.load(Ordering::Relaxed) & 3, PHASE_HEAD);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_gives_up_its_slot() {
        let slots = Arc::new(Semaphore::new(3));
        let registry = Registry::default();
        let conns: Vec<Arc<Activity>> = (0..3)
            .map(|_| Arc::new(Activity::new(slots.clone().try_acquire_owned().unwrap())))
            .collect();
        for a in &conns {
            registry.add(a, 3);
        }
        let t0 = conns[0].opened;
        assert!(registry.evict(t0).is_none(), "nobody has waited long enough yet");
        conns[0].set(PHASE_REQUEST);
        let later = t0 + Duration::from_secs(5);
        let slot = registry.evict(later).expect("an idle one gives way");
        assert_eq!(conns[0].waiting_since(), None, "busy with a request: kept");
        assert!(
            conns[1].slot.lock().unwrap().is_none(),
            "the oldest waiting one is evicted"
        );
        assert!(conns[2].slot.lock().unwrap().is_some());
        drop(slot);
        assert_eq!(slots.available_permits(), 1);
        let _again = registry.evict(later).expect("the next one");
        assert!(registry.evict(later).is_none(), "only busy connections left");
    }
}
