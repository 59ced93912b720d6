//! Response bodies and JSON answers shared by the data-plane doors and the
//! admin API.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use serde_json::Value;

use crate::error::Error;

/// A response body made of parts written in order: the JSON header and then
/// each binary output, without joining them into one buffer.
#[derive(Debug, Default)]
pub struct Chunks {
    pub(crate) parts: VecDeque<Bytes>,
}

impl Chunks {
    /// No body.
    pub fn empty() -> Chunks {
        Chunks::default()
    }

    /// One part.
    pub fn one(bytes: Bytes) -> Chunks {
        Chunks { parts: VecDeque::from([bytes]) }
    }

    /// Several parts.
    pub fn many(parts: VecDeque<Bytes>) -> Chunks {
        Chunks { parts }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.parts.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.parts.iter().map(|b| b.len() as u64).sum())
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
