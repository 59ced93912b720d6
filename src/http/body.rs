//! Request bodies: the size limit, the idle timeout, the byte budget and content encodings.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::budget::{Held, InflightBytes};
use crate::error::Error;
use crate::gateway::Limits;

/// Longest time spent reading and discarding the rest of an oversized body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads a request body of at most `limits.max_request_bytes` bytes after
/// decompression (`Content-Encoding: gzip` or `deflate`, as tritonclient
/// sends them). A body that stalls for `limits.body_idle_timeout`, or is not
/// whole after `limits.body_timeout`, is refused with 408: a slow client
/// cannot hold a connection and its buffer for ever.
///
/// The body is held against the server-wide `budget` until the returned
/// [`Held`] is dropped: its declared length before a byte is read (so a slow
/// upload cannot hide what it will take), then whatever its buffer grows to
/// as frames arrive (a chunked or HTTP/2 body declares nothing), then, for a
/// compressed body, its inflated buffer as it grows. A request the budget
/// cannot take is refused with 429 at the moment it would go over.
///
/// Compressed bodies are inflated on the blocking pool, at most
/// `decompressions`' permits at once; the others wait for a turn (their
/// compressed bytes held meanwhile) until the body deadline, then get 429.
///
/// A refused body (413 or 429) is refused only after the rest of it has been
/// read and thrown away (at most `limit` more bytes, for at most
/// [`DRAIN_TIME`]). HTTP/1.1 clients such as tritonclient write the whole
/// body before they read the reply; had the server closed the connection
/// after answering early, they would see a broken pipe instead of the error.
pub async fn read<B>(
    body: B,
    headers: &HeaderMap,
    limits: &Limits,
    budget: &Arc<InflightBytes>,
    decompressions: &Arc<Semaphore>,
) -> Result<(Bytes, Held), Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = limits.max_request_bytes;
    let deadline = Instant::now() + limits.body_timeout;
    let mut body = std::pin::pin!(body);
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit as u64
    {
        // Past twice the limit the drain would stop short anyway: close at once.
        if length <= 2 * limit as u64 {
            drain(body.as_mut(), length as usize).await;
        }
        return Err(Error::PayloadTooLarge(format!("request body exceeds the limit of {limit} bytes")));
    }
    // Within the limit, so it fits a usize.
    let declared = declared.map(|length| length as usize);
    let encoding = headers.get(CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") | Some("") => None,
        Some("gzip" | "x-gzip") => Some(true),
        Some("deflate") => Some(false),
        Some(other) => {
            return Err(Error::invalid(format!(
                "unsupported Content-Encoding '{}' (use gzip or deflate)",
                other.escape_debug()
            )));
        }
    };
    let mut held = match budget.reserve(declared.unwrap_or(0)) {
        Ok(held) => held,
        Err(overloaded) => {
            drain(body.as_mut(), declared.unwrap_or(0)).await;
            return Err(overloaded);
        }
    };
    let reading = Reading { declared, limit, idle: limits.body_idle_timeout, whole: limits.body_timeout, deadline };
    let bytes = collect(body.as_mut(), reading, &mut held).await?;
    let Some(gzip) = gzip else {
        return Ok((bytes, held));
    };
    let turn = tokio::time::timeout_at(deadline, decompressions.clone().acquire_owned())
        .await
        .map_err(|_| {
            crate::metrics::overloaded();
            Error::Overloaded("too many compressed request bodies are being inflated: retry later".into())
        })?
        .map_err(|_| Error::Internal("the decompression semaphore is closed".into()))?;
    // A small body can expand to the whole limit: never inflate on a runtime
    // worker. The budget and the turn travel with the work, so a client that
    // leaves mid-inflation gives neither back before the work stops.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        inflate(bytes, gzip, limit, held)
    })
    .await
    .map_err(|e| Error::Internal(format!("decompression task failed: {e}")))?
}

/// How a body is to be read.
#[derive(Clone, Copy)]
struct Reading {
    declared: Option<usize>,
    limit: usize,
    idle: Duration,
    whole: Duration,
    deadline: Instant,
}

/// Gathers the body into one buffer of at most `limit` bytes, `held` growing
/// before the memory does. Past the limit or the budget, the rest is drained
/// before the 413 or 429 (see [`read`]). A body that arrives in one frame is
/// kept without a copy.
///
/// A body that declared its length is copied into one buffer of that size
/// as it arrives. One that declared nothing (chunked, HTTP/2) grows a buffer
/// by doubling up to [`MAX_SEGMENT`]; past that it is gathered in
/// [`Segments`] and joined once at its end, off the worker: a buffer grown
/// by doubling copied each byte about twice while it arrived, on the runtime
/// worker that read it (40 concurrent 32 MiB uploads kept the workers copying
/// and faulting in memory, and a bystander's p99 went past 50 ms).
async fn collect<B>(mut body: Pin<&mut B>, reading: Reading, held: &mut Held) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Reading { declared, limit, idle, whole, deadline } = reading;
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut segments: Option<Segments> = None;
    let mut so_far = 0;
    loop {
        // A frame that is already there wins before the timer is armed, so a
        // body that arrives in one piece costs no timer.
        let pause_ends = Instant::now() + idle;
        let frame = match tokio::time::timeout_at(pause_ends.min(deadline), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) if pause_ends <= deadline => {
                return Err(Error::RequestTimeout(format!(
                    "the request body stalled: nothing arrived for {} s",
                    idle.as_secs()
                )));
            }
            Err(_) => {
                return Err(Error::RequestTimeout(format!(
                    "the request body took too long: it must arrive whole within {} s (server.body_timeout_secs)",
                    whole.as_secs()
                )));
            }
        };
        let frame = frame.map_err(|e| Error::invalid(format!("failed to read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        let needed = so_far + data.len();
        if needed > limit {
            drain(body.as_mut(), limit).await;
            return Err(Error::PayloadTooLarge(format!("request body exceeds the limit of {limit} bytes")));
        }
        so_far = needed;
        // What the body will occupy once this frame is in: a first frame is
        // kept as it is; a declared body gets one buffer of its length; one
        // without grows a buffer by doubling up to `MAX_SEGMENT`, then
        // gathers segments.
        let grows_into_segments =
            |buf: &bytes::BytesMut| declared.is_none() && needed > buf.capacity() && needed > MAX_SEGMENT;
        let occupied = match (&first, &joined, &segments) {
            (None, None, None) => data.len(),
            (_, _, Some(gathered)) => gathered.occupied_with(&data),
            (Some(_), None, None) => declared.unwrap_or(0).clamp(needed, limit),
            (_, Some(buf), _) if needed <= buf.capacity() => buf.capacity(),
            (_, Some(buf), _) if grows_into_segments(buf) => Segments::grown(buf.capacity(), 0, &data),
            (_, Some(buf), _) => (buf.capacity() * 2).clamp(needed, limit),
        };
        if occupied > held.bytes()
            && let Err(overloaded) = held.resize(occupied)
        {
            drain(body.as_mut(), limit).await;
            return Err(overloaded);
        }
        if let Some(gathered) = &mut segments {
            gathered.push(data);
            continue;
        }
        match (first.take(), joined.take()) {
            (None, None) => first = Some(data),
            (Some(head), _) => {
                let mut buf = bytes::BytesMut::with_capacity(occupied);
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            (None, Some(buf)) if grows_into_segments(&buf) => {
                let mut gathered = Segments::from_buffer(buf);
                gathered.push(data);
                segments = Some(gathered);
            }
            (None, Some(mut buf)) => {
                if needed > buf.capacity() {
                    buf.reserve(occupied - buf.len());
                }
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    if let Some(gathered) = segments {
        // The joined copy lives beside the segments until they are dropped.
        held.resize(held.bytes() + so_far)?;
        let bytes = if so_far >= JOIN_OFF_THE_WORKER {
            tokio::task::spawn_blocking(move || gathered.join())
                .await
                .map_err(|e| Error::Internal(format!("joining the request body failed: {e}")))?
        } else {
            gathered.join()
        };
        held.resize(bytes.len())?;
        return Ok(bytes);
    }
    Ok(joined.map(bytes::BytesMut::freeze).or(first).unwrap_or_default())
}

/// A frame at least this large is kept as it arrived; smaller ones are
/// copied into the current segment (a body of a million one-byte chunks
/// costs its bytes, not a list entry per chunk).
const KEPT_FRAME: usize = 64 << 10;

/// A body without a declared length grows one buffer by doubling up to
/// this size, then gathers segments of this size.
const MAX_SEGMENT: usize = 1 << 20;

/// Bodies at least this large are joined on the blocking pool.
const JOIN_OFF_THE_WORKER: usize = 1 << 20;

/// A body without a declared length past `MAX_SEGMENT`, as it arrives:
/// large frames as they came, small ones copied into segments of
/// `MAX_SEGMENT`.
struct Segments {
    parts: Vec<Bytes>,
    /// The segment small frames are copied into now.
    tail: bytes::BytesMut,
    /// What `parts` and `tail` occupy (the capacity of copied segments).
    occupied: usize,
}

impl Segments {
    /// Segments that begin with the buffer a body grew so far.
    fn from_buffer(buf: bytes::BytesMut) -> Segments {
        Segments { occupied: buf.capacity(), parts: vec![buf.freeze()], tail: bytes::BytesMut::new() }
    }

    /// What the body occupies once `data` is in.
    fn occupied_with(&self, data: &Bytes) -> usize {
        Segments::grown(self.occupied, self.tail.capacity() - self.tail.len(), data)
    }

    /// What a body occupying `occupied`, with `tail_room` left in its
    /// current segment, occupies once `data` is in.
    fn grown(occupied: usize, tail_room: usize, data: &Bytes) -> usize {
        if data.len() >= KEPT_FRAME {
            occupied + data.len()
        } else if tail_room >= data.len() {
            occupied
        } else {
            occupied + MAX_SEGMENT
        }
    }

    fn push(&mut self, data: Bytes) {
        if data.len() >= KEPT_FRAME {
            self.seal_tail();
            self.occupied += data.len();
            self.parts.push(data);
            return;
        }
        if self.tail.capacity() - self.tail.len() < data.len() {
            self.seal_tail();
            self.occupied += MAX_SEGMENT;
            self.tail = bytes::BytesMut::with_capacity(MAX_SEGMENT);
        }
        self.tail.extend_from_slice(&data);
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.parts.push(std::mem::take(&mut self.tail).freeze());
        }
    }

    fn join(mut self) -> Bytes {
        self.seal_tail();
        if self.parts.len() == 1 {
            return self.parts.pop().unwrap_or_default();
        }
        let mut whole = bytes::BytesMut::with_capacity(self.parts.iter().map(Bytes::len).sum());
        for part in &self.parts {
            whole.extend_from_slice(part);
        }
        whole.freeze()
    }
}

/// Reads and discards up to `budget` more bytes of `body` (bounded by
/// [`DRAIN_TIME`]), so that a client still writing its body gets to read the
/// error reply. A body larger than that is cut off by closing the connection.
async fn drain<B>(mut body: Pin<&mut B>, budget: usize)
where
    B: http_body::Body<Data = Bytes>,
{
    let discard = async {
        let mut left = budget;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                left = match left.checked_sub(data.len()) {
                    Some(left) => left,
                    None => return,
                };
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// The first size of an inflated body's buffer; it doubles from there.
const INFLATE_FIRST_BUFFER: usize = 64 << 10;

/// Decompresses, refusing output beyond `limit` (a zip bomb stops there)
/// and beyond the budget: `held` counts the compressed body and the output
/// buffer before each growth of that buffer. Concatenated gzip members are
/// all read (RFC 1952), not only the first. Returns the body and its
/// holding, now only the output buffer.
fn inflate(compressed: Bytes, gzip: bool, limit: usize, mut held: Held) -> Result<(Bytes, Held), Error> {
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(&compressed[..]))
    } else {
        Box::new(flate2::read::ZlibDecoder::new(&compressed[..]))
    };
    let too_large = || Error::PayloadTooLarge(format!("decompressed request body exceeds the limit of {limit} bytes"));
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() == out.capacity() {
            // One byte past the limit tells a body of exactly `limit` from a larger one.
            let grown = (out.capacity() * 2).max(INFLATE_FIRST_BUFFER).min(limit + 1);
            if grown <= out.capacity() {
                return Err(too_large());
            }
            held.resize(compressed.len() + grown)?;
            out.reserve_exact(grown - out.len());
        }
        let room = (out.capacity() - out.len()) as u64;
        let read = reader
            .by_ref()
            .take(room)
            .read_to_end(&mut out)
            .map_err(|e| Error::invalid(format!("cannot decompress the request body: {e}")))?;
        if (read as u64) < room {
            break;
        }
    }
    if out.len() > limit {
        return Err(too_large());
    }
    drop(reader);
    drop(compressed);
    // A buffer a quarter empty is worth one copy to give the rest back.
    if out.capacity() - out.len() > out.len() / 4 {
        out.shrink_to_fit();
    }
    held.resize(out.capacity())?;
    Ok((Bytes::from(out), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use futures_util::StreamExt;
    use http::header::HeaderValue;
    use http_body::Frame;
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Limits of `bytes` and the default idle timeout.
    fn limit(bytes: usize) -> Limits {
        Limits {
            max_request_bytes: bytes,
            max_inflight_bytes: usize::MAX,
            max_connections: 1,
            body_idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(600),
            max_concurrent_decompressions: 2,
        }
    }

    fn turns() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(2))
    }

    /// [`super::read`] under a budget that never refuses: the body alone.
    async fn read<B>(body: B, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let budget = InflightBytes::new(usize::MAX);
        super::read(body, headers, limits, &budget, &turns()).await.map(|(bytes, _held)| bytes)
    }

    #[tokio::test]
    async fn a_body_is_held_against_the_budget_until_dropped_and_refused_past_it() {
        let budget = InflightBytes::new(100_000);
        let limits = limit(1_000_000);
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from(60_000));
        let (body, held) =
            super::read(Full::new(Bytes::from(vec![1u8; 60_000])), &declared, &limits, &budget, &turns())
                .await
                .unwrap();
        assert_eq!((body.len(), budget.held()), (60_000, 60_000));

        // 60 + 50 kB declared is over 100 kB: refused with 429, the body read and thrown away.
        let (rest, read_frames) = counted_body(5, 10_000);
        declared.insert(CONTENT_LENGTH, HeaderValue::from(50_000));
        let err = super::read(rest, &declared, &limits, &budget, &turns()).await.unwrap_err();
        assert!(matches!(err, Error::Overloaded(_)), "{err}");
        assert_eq!(read_frames.load(Ordering::Relaxed), 5);
        assert_eq!(budget.held(), 60_000);

        // A chunked body declares nothing: it is held as it arrives, and
        // refused once its buffer would go over.
        let err = super::read(counted_body(5, 10_000).0, &HeaderMap::new(), &limits, &budget, &turns()).await;
        assert!(matches!(err, Err(Error::Overloaded(_))), "{err:?}");
        assert_eq!(budget.held(), 60_000);
        drop(held);
        let (_, held) =
            super::read(counted_body(4, 10_000).0, &HeaderMap::new(), &limits, &budget, &turns()).await.unwrap();
        assert_eq!(budget.held(), 40_000);
        drop(held);

        // A compressed one at its decompressed size; a bomb stops at the budget.
        let mut gz = HeaderMap::new();
        gz.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let small = Full::new(Bytes::from(gzip(&[0u8; 50_000])));
        let (_, held) = super::read(small, &gz, &limits, &budget, &turns()).await.unwrap();
        assert_eq!(budget.held(), 50_000);
        drop(held);
        let big = Full::new(Bytes::from(gzip(&vec![0u8; 900_000])));
        assert!(matches!(super::read(big, &gz, &limits, &budget, &turns()).await, Err(Error::Overloaded(_))));
        assert_eq!(budget.held(), 0);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_before_and_after_decompression() {
        let headers = HeaderMap::new();
        let ok = read(Full::new(Bytes::from_static(b"12345")), &headers, &limit(5)).await.unwrap();
        assert_eq!(&ok[..], b"12345");
        let err = read(Full::new(Bytes::from_static(b"123456")), &headers, &limit(5)).await.unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge(_)));

        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        assert!(matches!(read(Full::new(Bytes::new()), &declared, &limit(5)).await, Err(Error::PayloadTooLarge(_))));

        let mut gz = HeaderMap::new();
        gz.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        let err = read(Full::new(Bytes::from(bomb)), &gz, &limit(4096)).await.unwrap_err();
        assert!(err.message().contains("decompressed"), "{err}");
        let fine = read(Full::new(Bytes::from(gzip(b"hello"))), &gz, &limit(4096)).await.unwrap();
        assert_eq!(&fine[..], b"hello");

        let mut br = HeaderMap::new();
        br.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(
            read(Full::new(Bytes::from_static(b"x")), &br, &limit(10))
                .await
                .unwrap_err()
                .message()
                .contains("unsupported")
        );
        let bad = read(Full::new(Bytes::from_static(b"not gzip")), &gz, &limit(100)).await.unwrap_err();
        assert!(bad.message().contains("cannot decompress"));
    }

    #[tokio::test]
    async fn a_body_of_many_tiny_frames_is_joined_and_still_bounded() {
        let frames = |n: usize| {
            let chunks = (0..n).map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![(i % 251) as u8]))));
            http_body_util::StreamBody::new(tokio_stream::iter(chunks))
        };
        let joined = read(frames(10_000), &HeaderMap::new(), &limit(10_000)).await.unwrap();
        assert_eq!(joined.len(), 10_000);
        assert_eq!(joined[300], (300 % 251) as u8);
        let refused = read(frames(10_001), &HeaderMap::new(), &limit(10_000)).await.unwrap_err();
        assert!(matches!(refused, Error::PayloadTooLarge(_)));
        // One frame is kept as it is.
        let one = Bytes::from(vec![7u8; 100]);
        let kept = read(Full::new(one.clone()), &HeaderMap::new(), &limit(100)).await.unwrap();
        assert_eq!(kept.as_ptr(), one.as_ptr());
    }

    /// A body of `chunks` frames of `size` bytes that counts the frames read.
    fn counted_body(
        chunks: usize,
        size: usize,
    ) -> (impl http_body::Body<Data = Bytes, Error = Infallible>, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let frames = futures_util::stream::iter(0..chunks).map(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; size])))
        });
        (http_body_util::StreamBody::new(frames), read)
    }

    #[tokio::test]
    async fn an_oversized_body_is_read_to_its_end_before_the_413() {
        // Chunked (no Content-Length): the limit trips at the 6th frame of 10;
        // the other 4 (4 KiB, under the limit again) are read and thrown away.
        let (body, read_frames) = counted_body(10, 1024);
        let err = read(body, &HeaderMap::new(), &limit(6000)).await.unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge(_)), "{err}");
        assert_eq!(read_frames.load(Ordering::Relaxed), 10);

        // Declared too large, but within twice the limit: drained too.
        let (body, read_frames) = counted_body(4, 1024);
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, HeaderValue::from(4096));
        assert!(matches!(read(body, &declared, &limit(2500)).await, Err(Error::PayloadTooLarge(_))));
        assert_eq!(read_frames.load(Ordering::Relaxed), 4);

        // Far over the limit: refused without reading it all.
        let (body, read_frames) = counted_body(100, 1024);
        assert!(matches!(read(body, &HeaderMap::new(), &limit(2500)).await, Err(Error::PayloadTooLarge(_))));
        assert!(read_frames.load(Ordering::Relaxed) < 10);
        let (body, read_frames) = counted_body(100, 1024);
        declared.insert(CONTENT_LENGTH, HeaderValue::from(100 * 1024));
        assert!(matches!(read(body, &declared, &limit(2500)).await, Err(Error::PayloadTooLarge(_))));
        assert_eq!(read_frames.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_body_in_many_frames_is_joined_in_order() {
        let frames = futures_util::stream::iter([b"ab".as_slice(), b"", b"cde"])
            .map(|b| Ok::<_, Infallible>(Frame::data(Bytes::from_static(b))));
        let body = read(http_body_util::StreamBody::new(frames), &HeaderMap::new(), &limit(5)).await.unwrap();
        assert_eq!(&body[..], b"abcde");
    }

    #[tokio::test]
    async fn a_large_body_without_a_length_is_gathered_in_segments_joined_in_order_and_held() {
        // 3 MiB and a bit: small frames (copied into segments) and large
        // ones (kept as they came), interleaved, every byte numbered.
        let sizes: Vec<usize> = (0..400).map(|i| if i % 50 == 7 { 200_000 } else { 5_000 + i }).collect();
        let total: usize = sizes.iter().sum();
        let expected: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut offset = 0;
        let frames: Vec<Bytes> = sizes
            .iter()
            .map(|&n| {
                offset += n;
                Bytes::copy_from_slice(&expected[offset - n..offset])
            })
            .collect();
        let stream = futures_util::stream::iter(frames).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let budget = InflightBytes::new(usize::MAX);
        let (body, held) =
            super::read(http_body_util::StreamBody::new(stream), &HeaderMap::new(), &limit(8 << 20), &budget, &turns())
                .await
                .unwrap();
        assert!(body == expected, "the joined body differs from what was sent");
        assert_eq!((held.bytes(), budget.held()), (total, total), "held: the joined body only");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_past_the_idle_timeout_is_refused_with_408() {
        let limits = Limits { body_idle_timeout: Duration::from_secs(5), ..limit(1 << 20) };
        // One byte every 4 s: slow but never idle for 5 s, so it is read whole.
        let slow = futures_util::stream::iter(0..3u8).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i])))
        });
        let body = read(http_body_util::StreamBody::new(slow), &HeaderMap::new(), &limits).await.unwrap();
        assert_eq!(&body[..], &[0, 1, 2]);

        // A first frame, then nothing: refused once the timeout passes, not before.
        let stalled = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{")))])
            .chain(futures_util::stream::pending());
        let started = tokio::time::Instant::now();
        let err = read(http_body_util::StreamBody::new(stalled), &HeaderMap::new(), &limits).await.unwrap_err();
        assert!(matches!(err, Error::RequestTimeout(_)), "{err}");
        assert_eq!(err.http_status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_in_past_the_whole_body_timeout_is_refused_with_408() {
        let limits = Limits {
            body_idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            ..limit(1 << 20)
        };
        // One byte every 4 s never pauses for 5 s, but is not whole after 10 s.
        let trickle = futures_util::stream::iter(0..100u8).then(|i| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i])))
        });
        let started = tokio::time::Instant::now();
        let err = read(http_body_util::StreamBody::new(trickle), &HeaderMap::new(), &limits).await.unwrap_err();
        assert!(matches!(err, Error::RequestTimeout(_)), "{err}");
        assert!(err.message().contains("within 10 s"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn compressed_bodies_wait_for_a_turn_to_inflate_and_give_up_at_the_deadline() {
        let limits = Limits { body_timeout: Duration::from_secs(30), ..limit(1 << 20) };
        let mut gz = HeaderMap::new();
        gz.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let budget = InflightBytes::new(usize::MAX);
        let turns = Arc::new(Semaphore::new(1));
        let taken = turns.clone().acquire_owned().await.unwrap();
        let body = || Full::new(Bytes::from(gzip(b"hello")));
        let started = tokio::time::Instant::now();
        let err = super::read(body(), &gz, &limits, &budget, &turns).await.unwrap_err();
        assert!(matches!(err, Error::Overloaded(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        // Once the turn is given back, the next one inflates.
        drop(taken);
        let (inflated, _held) = super::read(body(), &gz, &limits, &budget, &turns).await.unwrap();
        assert_eq!(&inflated[..], b"hello");
    }

    #[tokio::test]
    async fn concatenated_gzip_members_are_all_inflated() {
        let mut gz = HeaderMap::new();
        gz.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut two = gzip(b"hello ");
        two.extend_from_slice(&gzip(b"world"));
        let body = read(Full::new(Bytes::from(two)), &gz, &limit(100)).await.unwrap();
        assert_eq!(&body[..], b"hello world");
    }
}
