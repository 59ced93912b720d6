//! Response bodies and JSON answers shared by the data-plane doors and the
//! admin API.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use serde_json::Value;
use smallvec::SmallVec;

use crate::budget::Held;
use crate::error::Error;

/// A response body made of parts written in order: the JSON header and then
/// each binary output, without joining them into one buffer.
///
/// A large body may hold its bytes against the server's memory budget
/// ([`Chunks::held`]) until the body is dropped, which is when the connection
/// has taken its last slice: parts go out in slices of at most
/// [`SLICE_BYTES`], so what the connection still buffers after that is at
/// most one slice (a 300 MB part handed over whole would be buffered by the
/// connection long after the body, and its budget, were gone).
#[derive(Debug, Default)]
pub struct Chunks {
    /// The parts still to send, the next one last: most bodies have one or
    /// two parts, which stay off the heap (issue #16).
    remaining: SmallVec<[Bytes; 2]>,
    held: Option<Held>,
}

/// The largest frame a [`Chunks`] body hands the connection at once.
pub const SLICE_BYTES: usize = 1 << 20;

impl Chunks {
    /// No body.
    pub fn empty() -> Chunks {
        Chunks::default()
    }

    /// One part.
    pub fn one(bytes: Bytes) -> Chunks {
        Chunks { remaining: smallvec::smallvec![bytes], held: None }
    }

    /// Several parts, sent in the order given.
    pub fn many(parts: impl IntoIterator<Item = Bytes, IntoIter: DoubleEndedIterator>) -> Chunks {
        Chunks { remaining: parts.into_iter().rev().collect(), held: None }
    }

    /// The parts not yet sent, in order.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> impl Iterator<Item = &Bytes> {
        self.remaining.iter().rev()
    }

    /// The same body, holding `held` (its bytes against the budget) until
    /// its last slice is taken.
    pub fn held(mut self, held: Held) -> Chunks {
        self.held = Some(held);
        self
    }

    /// Bytes of the body.
    pub fn len(&self) -> usize {
        self.remaining.iter().map(Bytes::len).sum()
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.remaining.iter().all(Bytes::is_empty)
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(mut part) = self.remaining.pop() else {
            self.held = None;
            return Poll::Ready(None);
        };
        if part.len() > SLICE_BYTES {
            let rest = part.split_off(SLICE_BYTES);
            self.remaining.push(rest);
        }
        if self.remaining.is_empty() {
            // The last slice: what it shares its allocation with is gone.
            self.held = None;
        }
        Poll::Ready(Some(Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining.iter().map(|b| b.len() as u64).sum())
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Chunks> {
    let body = serde_json::to_vec(value).expect("a Value always serializes");
    let mut response = Response::new(Chunks::one(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The `{"error": "..."}` body Triton sends, with the mapped status.
pub fn error_response(error: &Error) -> Response<Chunks> {
    json_response(error.http_status(), &serde_json::json!({ "error": error.message() }))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::budget::InflightBytes;

    #[tokio::test]
    async fn a_held_body_goes_out_in_slices_and_gives_its_bytes_back_with_the_last() {
        let budget = InflightBytes::new(10 << 20);
        let part = Bytes::from(vec![7u8; SLICE_BYTES * 2 + 10]);
        let mut body = Chunks::many([Bytes::from_static(b"{}"), part]).held(budget.reserve(3 << 20).unwrap());
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            assert_eq!(
                budget.held(),
                if http_body::Body::is_end_stream(&body) { 0 } else { 3 << 20 },
                "after {sizes:?}"
            );
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [2, SLICE_BYTES, SLICE_BYTES, 10]);
    }
}
