//! Accepting and holding connections, the same for every listener (data
//! plane, metrics, admin): a cap on open connections, a first-bytes timeout
//! before protocol detection, an idle timeout for a connection with no
//! request open, an accept loop that backs off when the process runs out of
//! file descriptors, and the file descriptor limit raised at start.
//!
//! Why each is needed (issue #15, finding 1): a socket that sends nothing sat
//! in hyper's protocol detection for ever, and an HTTP/2 connection that
//! answers PINGs but opens no stream was kept for ever too, so 10,000 silent
//! sockets locked every other client out; listeners without a cap let idle
//! sockets take every file descriptor of the process.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// How long a connection may stay without a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to the first byte: a socket that sends nothing is closed
    /// without reaching protocol detection.
    pub first_bytes: Duration,
    /// A connection with no request open (an HTTP/2 connection with no open
    /// stream, a keep-alive HTTP/1 connection, one stuck mid-preface) is
    /// closed after this long (GOAWAY for HTTP/2).
    pub idle: Duration,
    /// A connection whose socket has taken no byte of a pending write for
    /// this long (a client that does not read its responses) is closed.
    pub write: Duration,
}

/// Longest wait, after an idle connection was told to close (GOAWAY), for
/// the peer to let it go: nothing is in flight, so there is nothing to finish.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Longest back-off of an accept loop that keeps failing for lack of file
/// descriptors or memory.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

// === impl Activity ===

/// Requests open on one connection, and when the last one ended: what the
/// idle timeout reads. Updated with atomics, once at the start and once at
/// the end of every request.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    /// Requests begun so far: tells a timer that saw none open whether one
    /// came and went while it slept.
    begun: AtomicU64,
    /// When the connection last had nothing open, or last wrote a byte, in
    /// milliseconds after `born`.
    idle_since_ms: AtomicU64,
    born: Instant,
    became_idle: Notify,
    /// Since when a write to the socket has been waiting for room, in
    /// milliseconds after `born`; [`NOT_BLOCKED`] when none waits.
    write_blocked_since_ms: AtomicU64,
    write_blocked: Notify,
    /// Response bodies that handed the connection a frame and have not been
    /// asked for the next one yet: over HTTP/2, a stream whose client never
    /// opens its flow-control window is never asked again, while the socket
    /// itself stays writable (PINGs, other streams).
    bodies_owed: AtomicUsize,
    /// Times a body that owed a frame was asked for it (or dropped): tells
    /// the watcher whether any owing body moved between two of its looks.
    body_asks: AtomicU64,
    body_owes: Notify,
}

/// No write is waiting for room in the socket.
const NOT_BLOCKED: u64 = u64::MAX;

/// One request open on a connection; closes it in the [`Activity`] when dropped.
#[derive(Debug)]
#[must_use = "the request counts as open only while this lives"]
pub struct InUse(Arc<Activity>);

impl Activity {
    /// A new connection's activity: nothing open yet.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
            became_idle: Notify::new(),
            write_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            write_blocked: Notify::new(),
            bodies_owed: AtomicUsize::new(0),
            body_asks: AtomicU64::new(0),
            body_owes: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Records how a write to the socket went: waiting for room starts the
    /// write stall clock (once), a byte taken stops it.
    fn wrote(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Pending => {
                let blocked = self.write_blocked_since_ms.compare_exchange(
                    NOT_BLOCKED,
                    self.now_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if blocked.is_ok() {
                    self.write_blocked.notify_one();
                }
            }
            // Bytes of a response still going out (hyper may hold a whole
            // response after its body is done) are activity too: a slow but
            // steady reader is not idle.
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.write_blocked_since_ms.store(NOT_BLOCKED, Ordering::Release);
                self.idle_since_ms.fetch_max(self.now_ms(), Ordering::AcqRel);
            }
            Poll::Ready(_) => {}
        }
    }

    /// Resolves once the peer has not read for `limit`: a write waited that
    /// long for room in the socket without a byte going out, or a response
    /// body that gave the connection a frame was not asked for the next one
    /// for that long (an HTTP/2 stream window the client never opens).
    pub async fn write_stalled(&self, limit: Duration) {
        tokio::select! {
            () = self.socket_stalled(limit) => {}
            () = self.body_stalled(limit) => {}
        }
    }

    async fn socket_stalled(&self, limit: Duration) {
        loop {
            let since = self.write_blocked_since_ms.load(Ordering::Acquire);
            if since == NOT_BLOCKED {
                self.write_blocked.notified().await;
                continue;
            }
            tokio::time::sleep_until(self.born + Duration::from_millis(since) + limit).await;
            if self.write_blocked_since_ms.load(Ordering::Acquire) == since {
                return;
            }
        }
    }

    /// A body of this connection handed out a frame and waits to be asked
    /// for the next one. No clock read: the watcher keeps the time.
    fn body_owes(&self) {
        if self.bodies_owed.fetch_add(1, Ordering::AcqRel) == 0 {
            // Wakes a watcher that saw nothing owed; otherwise only stores a permit.
            self.body_owes.notify_one();
        }
    }

    /// A body that owed a frame was asked for the next one (or dropped).
    fn body_asked(&self) {
        self.body_asks.fetch_add(1, Ordering::AcqRel);
        self.bodies_owed.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves once some body has owed a frame for `limit` without being
    /// asked for it. Looks every quarter of `limit` while a body owes one
    /// (so it resolves between `limit` and 1.25 `limit` after the stall
    /// began) and sleeps until one does: if a body owed at one look and no
    /// body was asked since, that body still owes.
    async fn body_stalled(&self, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(1));
        let mut stalled_for = Duration::ZERO;
        // The asks counted at the last look, if a body owed then.
        let mut owed_at_last_look: Option<u64> = None;
        loop {
            let owed = self.bodies_owed.load(Ordering::Acquire) > 0;
            let asks = self.body_asks.load(Ordering::Acquire);
            if owed && owed_at_last_look == Some(asks) {
                stalled_for += every;
                if stalled_for >= limit {
                    return;
                }
            } else {
                stalled_for = Duration::ZERO;
            }
            if owed {
                owed_at_last_look = Some(asks);
                tokio::time::sleep(every).await;
            } else {
                owed_at_last_look = None;
                self.body_owes.notified().await;
            }
        }
    }

    /// Marks a request open until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InUse {
        self.begun.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        InUse(self.clone())
    }

    /// Requests open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once the connection has had no request open for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if self.open() > 0 {
                // `notify_one` keeps a permit when nobody waits, so an end
                // between the check and this wait is not lost.
                self.became_idle.notified().await;
                continue;
            }
            let seen = self.begun.load(Ordering::Acquire);
            let since_ms = self.idle_since_ms.load(Ordering::Acquire);
            tokio::time::sleep_until(self.born + Duration::from_millis(since_ms) + limit).await;
            // A request that came and went, or bytes of a response that went
            // out meanwhile, restart the clock.
            if self.open() == 0
                && self.begun.load(Ordering::Acquire) == seen
                && self.idle_since_ms.load(Ordering::Acquire) == since_ms
            {
                return;
            }
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.born.elapsed().as_millis() as u64;
        activity.idle_since_ms.store(now, Ordering::Release);
        if activity.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.became_idle.notify_one();
        }
    }
}

// === impl Tracked ===

/// A response body that keeps its request open in the connection's
/// [`Activity`] until it has been written whole (or dropped): a streaming
/// response is a request in progress, not an idle connection.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    in_use: Option<InUse>,
    /// Gave out a frame and was not asked for the next one yet (counted in
    /// the connection's [`Activity`]).
    owes: bool,
    /// What must live as long as the body: a response's bytes held against
    /// the budget (`budget::HeldUntilWritten`), kept opaque here so the
    /// connection layer depends on nothing above it.
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<B> Tracked<B> {
    /// `inner`, keeping `in_use` until the body is dropped.
    pub fn new(inner: B, in_use: Option<InUse>) -> Tracked<B> {
        Tracked { inner, in_use, owes: false, _keep: None }
    }

    /// Ends an owed frame: the body was asked for the next one, or dropped.
    fn settle(&mut self) {
        if std::mem::take(&mut self.owes)
            && let Some(InUse(activity)) = &self.in_use
        {
            activity.body_asked();
        }
    }

    /// The same body, keeping `keep` (e.g. its bytes held against the
    /// budget) until it is dropped.
    pub fn keeping(mut self, keep: Option<Box<dyn std::any::Any + Send + Sync>>) -> Tracked<B> {
        self._keep = keep;
        self
    }
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.settle();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // One frame handed out and more to come: owed until asked again. A
        // body whose last frame this was owes nothing (a one-frame reply pays
        // no clock read).
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && !this.inner.is_end_stream()
            && let Some(InUse(activity)) = &this.in_use
        {
            activity.body_owes();
            this.owes = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.settle();
    }
}

// === impl Watched ===

/// A connection's socket, its writes watched for stalls (see
/// [`Activity::write_stalled`]): one atomic store per write, a
/// compare-and-swap when the socket is full.
#[derive(Debug)]
pub struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// === accepting ===

/// Accepts connections on `listener` until `stop` turns true, and hands
/// each to `serve` with its slot, once a slot is free.
///
/// Past the cap (`slots`), the loop stops accepting until a connection
/// closes: new clients wait in the kernel's backlog instead of the process
/// running out of memory or file descriptors. Waiting after the accept rather
/// than before keeps an unused listener from holding a slot (the data plane's
/// HTTP and gRPC ports share theirs).
///
/// An accept that fails for lack of file descriptors, memory or buffers
/// (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off, doubling up to a second,
/// and tries again: the listener recovers once descriptors are given back.
/// Any other failure concerns one connection only and is skipped.
pub async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    mut serve: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(e) if is_resource_exhaustion(&e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed: out of resources; backing off");
                crate::metrics::accept_backoff();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|&stop| stop) => return,
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
                continue;
            }
        };
        // At the cap, wait for a slot before serving (and before accepting
        // more: the rest wait in the listen backlog).
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => return,
            },
            _ = stop.wait_for(|&stop| stop) => return,
        };
        serve(stream, peer, slot);
    }
}

/// Out of file descriptors, memory or socket buffers: waiting helps.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOMEM 12, ENOBUFS 105 on Linux; std names only some of them.
    matches!(error.kind(), std::io::ErrorKind::OutOfMemory) || matches!(error.raw_os_error(), Some(23 | 24 | 12 | 105))
}

/// Why a connection was told to close.
enum Closing {
    Idle,
    Drain,
}

/// Serves one accepted connection: waits (at most `timeouts.first_bytes`)
/// for its first byte, then runs the connection `connect` builds until it
/// ends, it stays idle for `timeouts.idle` (then closes it gracefully),
/// `stop` turns true (then closes it gracefully and lets its requests
/// finish; the caller bounds the drain), or a write waits `timeouts.write`
/// for a peer that does not read (then drops it: nothing more can be said).
pub async fn serve_connection<C>(
    stream: TcpStream,
    timeouts: Timeouts,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    connect: impl FnOnce(Watched) -> C,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    // Peeking consumes nothing: hyper's detection still reads every byte.
    let mut first = [0u8; 1];
    let arrived = tokio::select! {
        peeked = tokio::time::timeout(timeouts.first_bytes, stream.peek(&mut first)) => peeked,
        _ = stop.wait_for(|&stop| stop) => return,
    };
    match arrived {
        Ok(Ok(1..)) => {}
        // Closed by the peer, or broken: nothing to serve.
        Ok(Ok(0) | Err(_)) => return,
        Err(_elapsed) => {
            crate::metrics::connection_timed_out("first_bytes");
            return;
        }
    }
    // Without it, a reply split over two writes waits for the peer's delayed ACK.
    let _ = stream.set_nodelay(true);
    let connection = connect(Watched { stream, activity: activity.clone() });
    let mut connection = std::pin::pin!(connection);
    let stalled = activity.write_stalled(timeouts.write);
    let mut stalled = std::pin::pin!(stalled);
    let closing = tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = activity.idle_for(timeouts.idle) => Closing::Idle,
        () = stalled.as_mut() => {
            crate::metrics::connection_timed_out("write");
            return;
        }
        _ = stop.wait_for(|&stop| stop) => Closing::Drain,
    };
    connection.as_mut().graceful_shutdown();
    match closing {
        // Nothing is in flight: a peer that does not let go is cut off.
        Closing::Idle => {
            crate::metrics::connection_timed_out("idle");
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await;
        }
        // In-flight requests finish; the server bounds the whole drain,
        // and a peer that does not read is not waited for.
        Closing::Drain => {
            tokio::select! {
                _ = connection => {}
                () = stalled => crate::metrics::connection_timed_out("write"),
            }
        }
    }
}

// === file descriptors ===

/// Raises the soft limit on open file descriptors to the hard limit, so
/// that the connection caps, not `RLIMIT_NOFILE`'s soft default (often
/// 1024), bound what the server holds. Returns the soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_once_its_last_request_has_ended() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let started = Instant::now();
        // Nothing open from the start: idle after the limit.
        activity.idle_for(limit).await;
        assert_eq!(started.elapsed(), limit);

        // Two requests; the second ends 5 s after the first.
        let first = activity.begin();
        let second = activity.begin();
        let watcher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                activity.idle_for(limit).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!watcher.is_finished(), "idle while a request was open");
        let last_end = Instant::now();
        drop(second);
        // A request that comes and goes while the timer sleeps restarts it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(activity.begin());
        let idle_at = watcher.await.unwrap();
        assert_eq!(idle_at - last_end, Duration::from_secs(14));
        assert_eq!(activity.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_asked_for_its_next_frame_stalls_the_connection_and_one_waiting_on_itself_does_not() {
        use http_body_util::BodyExt;
        type Frame = Result<http_body::Frame<Bytes>, std::convert::Infallible>;
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        let (frames, rx) = tokio::sync::mpsc::channel::<Frame>(4);
        let mut body = Tracked::new(
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Some(activity.begin()),
        );
        let watcher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                activity.write_stalled(limit).await;
                Instant::now()
            })
        };
        let frame = || Ok(http_body::Frame::data(Bytes::from_static(b"slice")));

        // A frame handed out, and asked for the next one 5 s later: the
        // body then waits on itself (its stream has nothing) for 60 s.
        frames.send(frame()).await.unwrap();
        assert!(body.frame().await.is_some());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(tokio::time::timeout(Duration::from_secs(60), body.frame()).await.is_err());
        assert!(!watcher.is_finished(), "a body waiting for its own data is not a client that does not read");

        // Another frame, and nobody asks for the next: stalled at the limit.
        frames.send(frame()).await.unwrap();
        assert!(body.frame().await.is_some());
        let owed_from = Instant::now();
        let stalled_at = tokio::time::timeout(Duration::from_secs(600), watcher)
            .await
            .expect("a body never asked for its next frame did not stall the connection")
            .unwrap();
        let after = stalled_at - owed_from;
        assert!(after >= limit && after <= limit + limit / 4, "stalled {after:?} after the body began to owe");
        drop(body);
        assert_eq!(activity.bodies_owed.load(Ordering::Acquire), 0, "a dropped body owes nothing");
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        if hard > 512 {
            rlimit::setrlimit(rlimit::Resource::NOFILE, 512.max(soft.min(hard) / 2).min(hard), hard).unwrap();
        }
        let raised = raise_fd_limit().unwrap();
        assert_eq!(raised, rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0);
        assert!(raised >= soft, "{raised} < {soft}");
        assert!(raised == hard || raised >= 1 << 20, "raised to {raised}, hard limit {hard}");
    }

    #[test]
    fn out_of_descriptors_is_told_apart_from_one_failed_connection() {
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(24)));
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(23)));
        assert!(!is_resource_exhaustion(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
    }
}
