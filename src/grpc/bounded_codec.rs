//! The protobuf codec of the gRPC services: tonic's prost codec, with two
//! guards on decoding (#15, finding 6).
//!
//! - A `ModelInferRequest` is measured on the wire first
//!   ([`super::wire::decoded_bytes`]) and refused with RESOURCE_EXHAUSTED if
//!   what it decodes to would take more than twice the request limit
//!   (`server.max_request_bytes`): a message of millions of empty elements
//!   never gets built.
//! - A message of [`OFFLOAD_BYTES`] or more is measured and decoded with
//!   `block_in_place`: the runtime hands this worker's other tasks to
//!   another thread meanwhile, so four 60 MB decodes at once do not stall
//!   every other client. (tonic's `Decoder` is synchronous and runs inside
//!   its own body polling, which leaves no place for `spawn_blocking`.)
//!
//! The build script names this codec for every generated service and client
//! (`codec_path`); encoding is prost's, unchanged.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::proto::inference::ModelInferRequest;

/// Messages of this many bytes or more are decoded off the async workers.
pub const OFFLOAD_BYTES: usize = 1 << 20;

/// The most memory a decoded `ModelInferRequest` may take; 0 until a server
/// sets it (then twice the default request limit applies). One value for the
/// process: tonic builds codecs with `Default`, so it cannot be handed one.
/// With several gateways in one process (tests), the largest limit holds.
static DECODED_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Bounds decoded `ModelInferRequest`s at twice `max_request_bytes`.
pub fn set_request_limit(max_request_bytes: usize) {
    DECODED_LIMIT.fetch_max(max_request_bytes.saturating_mul(2), Ordering::Relaxed);
}

fn decoded_limit() -> usize {
    match DECODED_LIMIT.load(Ordering::Relaxed) {
        // Twice the default server.max_request_bytes (64 MiB).
        0 => 2 * (64 << 20),
        limit => limit,
    }
}

/// tonic's prost codec with the guards above on decoding.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder { inner: ProstDecoder::default() }
    }
}

/// Decodes with the guards of [`BoundedCodec`].
#[derive(Debug)]
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + 'static> BoundedDecoder<U> {
    fn measured_decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<ModelInferRequest>() {
            check_decoded_size(buf.chunk(), decoded_limit())?;
        }
        self.inner.decode(buf)
    }
}

/// Refuses a `ModelInferRequest` whose decoded form would pass `limit` bytes.
pub fn check_decoded_size(wire: &[u8], limit: usize) -> Result<(), Status> {
    let decoded = super::wire::decoded_bytes(wire);
    if decoded > limit {
        crate::metrics::overloaded();
        return Err(Status::resource_exhausted(format!(
            "a message of {} bytes would take {decoded} bytes of memory decoded (too many elements), over the limit of \
             {limit} (twice server.max_request_bytes)",
            wire.len()
        )));
    }
    Ok(())
}

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if buf.remaining() >= OFFLOAD_BYTES && on_worker {
            tokio::task::block_in_place(|| self.measured_decode(buf))
        } else {
            self.measured_decode(buf)
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
