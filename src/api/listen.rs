//! The accept loop: each client connection served by hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge) with what `axum::serve` leaves out:
//! - **A header-read timeout** (`header_read_timeout_ms`, 60 s by default): a connection must
//!   deliver a request's whole header within it of opening, or of its previous answer ending.
//!   A connection that sends nothing is closed here; once its first bytes say which protocol
//!   it speaks, hyper's own timer takes over, armed whenever the connection waits for a
//!   request head. So one setting closes the silent connection, the one trickling its
//!   header, and the idle keep-alive one, and a request being answered (a long generation
//!   with no traffic on the socket) is never cut by it. An HTTP/2 connection (which hyper
//!   does not time out) is closed with a GOAWAY once no request has been in flight on it for
//!   the same time ([`Idle`]).
//! - **A bound on open connections** (`max_connections`): beyond it a new connection gets a
//!   503 with an OpenAI error body and `Connection: close` at once, instead of the process
//!   running out of descriptors and `accept` stalling for everyone.
//! - **Accept errors back off**: out of descriptors (`EMFILE`) or memory, the loop waits a
//!   moment instead of spinning, and says so in the log at most once a second.
//! - **hyper's own error answers get bodies** ([`super::framing`]): a request it cannot parse
//!   is answered in OpenAI's error shape, with an `x-request-id`, like every other error.
//! - **Graceful shutdown**: on the signal it stops accepting; each connection finishes the
//!   requests it is answering and closes (streams are cut by the gateway's hard stop when the
//!   grace period ends, see `serve`).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::framing::Framed;
use crate::protocol::error::ApiError;

/// Refused connections kept open at once for [`REFUSE_LINGER`]; beyond these a refused
/// connection is closed right after its 503 is written.
const REFUSING: usize = 256;
/// How long a refused connection's request is read (and dropped) after its 503, so that
/// closing does not reset the connection before the client has read the answer.
const REFUSE_LINGER: Duration = Duration::from_millis(250);
/// The pause after an accept error that concerns the process (no descriptors, no memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The configured limits; without a `max_connections`, half the open-file limit (each
    /// client connection may need an upstream connection too), at least 64.
    pub fn of(s: &crate::config::ServerConfig) -> Limits {
        let max = s.max_connections.unwrap_or_else(|| (super::conn::open_file_limit() / 2).max(64) as usize);
        Limits { header_read_timeout: s.header_read_timeout, max_connections: max }
    }
}

/// The three ways a connection is served, by what its first bytes say.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    /// The first bytes begin HTTP/2's preface but do not finish it yet: hyper reads on.
    either: auto::Builder<TokioExecutor>,
}

/// HTTP/2's connection preface (prior knowledge).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections to end.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let connections = TaskTracker::new();
    let mut either = auto::Builder::new(TokioExecutor::new());
    either.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    either.http2().timer(TokioTimer::new());
    let builders =
        Arc::new(Builders { http1: either.clone().http1_only(), http2: either.clone().http2_only(), either });
    let mut warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                backoff(&e, &mut warned).await;
                continue;
            }
        };
        // Nagle's algorithm would hold small SSE events and responses back ~40 ms.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refuse(tcp, limits.max_connections, &refusing);
            continue;
        };
        let (builders, app, shutdown) = (builders.clone(), app.clone(), shutdown.clone());
        let first_bytes = limits.header_read_timeout;
        connections.spawn(async move {
            // hyper's timer starts once it reads a request head: a connection that sends
            // nothing at all is bounded here.
            let mut head = [0u8; 24];
            let (builder, idle) = match tokio::time::timeout(first_bytes, tcp.peek(&mut head)).await {
                Ok(Ok(n)) if n > 0 => match (head[..n] == PREFACE[..n], n == PREFACE.len()) {
                    (false, _) => (&builders.http1, None),
                    (true, true) => (&builders.http2, Some(Idle::new())),
                    (true, false) => (&builders.either, Some(Idle::new())),
                },
                _ => return,
            };
            let io = TokioIo::new(Framed::new(tcp));
            let app = match &idle {
                Some(idle) => app.layer(axum::middleware::from_fn_with_state(idle.clone(), in_flight)),
                None => app,
            };
            let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app)).into_owned();
            tokio::pin!(conn);
            // The gateway stopping, or an HTTP/2 connection idle for the bound: the
            // connection finishes what it is answering and closes.
            let close = async {
                match &idle {
                    Some(idle) => tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = idle.idle_for(first_bytes) => {}
                    },
                    None => shutdown.cancelled().await,
                }
            };
            // A client that goes away mid-request is an ordinary end of a connection.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The requests in flight on one HTTP/2 connection, and a wake-up when that changes.
#[derive(Clone)]
struct Idle(Arc<InFlight>);

struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

impl Idle {
    fn new() -> Idle {
        Idle(Arc::new(InFlight { count: AtomicUsize::new(0), changed: Notify::new() }))
    }

    /// Ready once no request has been in flight for `bound`.
    async fn idle_for(&self, bound: Duration) {
        let InFlight { count, changed } = &*self.0;
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if count.load(Ordering::Acquire) > 0 {
                notified.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(bound) => return,
                _ = notified => {}
            }
        }
    }
}

/// Counts a request in flight on its connection until its answer's body is done.
async fn in_flight(
    axum::extract::State(idle): axum::extract::State<Idle>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    struct Held(Idle);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0 .0.count.fetch_sub(1, Ordering::AcqRel);
            self.0 .0.changed.notify_waiters();
        }
    }
    idle.0.count.fetch_add(1, Ordering::AcqRel);
    idle.0.changed.notify_waiters();
    let held = Held(idle);
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::map_frame(body, move |f| {
        let _ = &held;
        f
    });
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

/// An accept error: the process's own trouble (descriptors, memory) waits a moment; a
/// connection's own (reset before it was accepted) concerns only that connection.
async fn backoff(e: &io::Error, warned: &mut Option<Instant>) {
    let process = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
    if !process {
        return;
    }
    if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(1)) {
        tracing::warn!("cannot accept connections: {e}");
        *warned = Some(Instant::now());
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// The answer to a connection beyond the bound: a 503 in OpenAI's error shape, written at
/// once (a fresh connection's send buffer takes it whole) before anything is read. Then,
/// when few refusals are in flight, what the client sent is read and dropped for a moment,
/// so that closing does not reset the connection under the answer.
fn refuse(tcp: TcpStream, max: usize, refusing: &Arc<Semaphore>) {
    let rid = format!("req_{}", uuid::Uuid::new_v4().simple());
    let body = ApiError::unavailable(format!(
        "The gateway has {max} connections open, its limit; retry in a moment, or reuse a connection."
    ))
    .with_code("too_many_connections")
    .to_json()
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nretry-after: 1\r\nx-request-id: {rid}\r\n\r\n{body}",
        body.len()
    );
    if tcp.try_write(answer.as_bytes()).is_err() {
        return;
    }
    let Ok(lingering) = refusing.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let mut tcp = tcp;
        let mut sink = [0u8; 4096];
        let drain = async {
            let _ = tcp.shutdown().await;
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(REFUSE_LINGER, drain).await;
        drop(lingering);
    });
}
