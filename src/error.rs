//! The errors a client can see, each mapped once to an HTTP status and a gRPC
//! code (Triton's mapping, with 504 / DEADLINE_EXCEEDED for expired requests
//! and 413 / RESOURCE_EXHAUSTED for oversized ones).

use http::StatusCode;
use modelgate_backend::BackendError;

/// An error answered to a client. The message names the field, the bound and
/// the value given; it never carries host paths or internal names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the model (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown model, version or route (404 / NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot serve now: loading, unloaded, queue full (503 / UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed before it ran (504 / DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The deadline the client itself set (its `timeout` parameter,
    /// `grpc-timeout`, the timeout header) passed before the request ran
    /// (504 / DEADLINE_EXCEEDED). The client's choice: it never counts
    /// against a version, so a 1 µs timeout cannot roll a canary back.
    #[error("{0}")]
    ClientDeadline(String),
    /// The client stopped sending its body (408 / DEADLINE_EXCEEDED).
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is over the configured limit (413 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many requests in flight at the door (429 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// The path exists but not for this method (405 / UNIMPLEMENTED).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The feature exists in the protocol but not in this gateway (501 / UNIMPLEMENTED).
    #[error("{0}")]
    Unsupported(String),
    /// An operation was refused in the current state, e.g. repository control
    /// disabled (400 / FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Missing or wrong credentials (401 / UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// What the request names was there but has expired, e.g. a prediction
    /// past its feedback ttl (410 / NOT_FOUND).
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with what is there, e.g. a second truth for
    /// one prediction (409 / ALREADY_EXISTS).
    #[error("{0}")]
    Conflict(String),
    /// The gateway or the model failed (500 / INTERNAL).
    #[error("{0}")]
    Internal(String),
}

/// Who caused a failure: client mistakes never count against a model version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong.
    Client,
    /// The gateway, the model or the load on it failed the request.
    Server,
}

impl Error {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Gone(_) => StatusCode::GONE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::DeadlineExceeded(_) | Error::ClientDeadline(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) | Error::Gone(_) => tonic::Code::NotFound,
            Error::Conflict(_) => tonic::Code::AlreadyExists,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::DeadlineExceeded(_) | Error::ClientDeadline(_) | Error::RequestTimeout(_) => {
                tonic::Code::DeadlineExceeded
            }
            Error::PayloadTooLarge(_) | Error::Overloaded(_) => tonic::Code::ResourceExhausted,
            Error::Unsupported(_) | Error::MethodNotAllowed(_) => tonic::Code::Unimplemented,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// Who is to blame.
    pub fn fault(&self) -> Fault {
        match self {
            Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::Gone(_)
            | Error::Conflict(_)
            | Error::MethodNotAllowed(_)
            | Error::PayloadTooLarge(_)
            | Error::RequestTimeout(_)
            | Error::ClientDeadline(_)
            | Error::Unsupported(_)
            | Error::FailedPrecondition(_)
            | Error::Unauthenticated(_) => Fault::Client,
            Error::Unavailable(_) | Error::DeadlineExceeded(_) | Error::Overloaded(_) | Error::Internal(_) => {
                Fault::Server
            }
        }
    }

    /// The `outcome` label of request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::Gone(_) => "gone",
            Error::Conflict(_) => "conflict",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::ClientDeadline(_) => "client_deadline_exceeded",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::RequestTimeout(_) => "request_timeout",
            Error::Overloaded(_) => "overloaded",
            Error::Unsupported(_) => "unsupported",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Internal(_) => "internal",
        }
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::Gone(m)
            | Error::Conflict(m)
            | Error::MethodNotAllowed(m)
            | Error::Unavailable(m)
            | Error::DeadlineExceeded(m)
            | Error::ClientDeadline(m)
            | Error::PayloadTooLarge(m)
            | Error::RequestTimeout(m)
            | Error::Overloaded(m)
            | Error::Unsupported(m)
            | Error::FailedPrecondition(m)
            | Error::Unauthenticated(m)
            | Error::Internal(m) => m,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        match e {
            BackendError::InvalidInput(m) => Error::InvalidArgument(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(e.grpc_code(), e.message().to_owned())
    }
}

/// Longest piece of a client's own text (a path, a method, a name, a
/// version) that an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 200;
/// Most dimensions of a client's shape that an error message lists.
pub const MAX_QUOTED_DIMS: usize = 16;

/// A client's text as an error message quotes it: escaped, and cut at
/// [`MAX_QUOTED_CHARS`] characters (a 60 KB path is not repeated in full).
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(pub &'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(MAX_QUOTED_CHARS) {
            Some((cut, _)) => write!(f, "{}... ({} bytes)", self.0[..cut].escape_debug(), self.0.len()),
            None => write!(f, "{}", self.0.escape_debug()),
        }
    }
}

/// A client's shape as an error message lists it: the first
/// [`MAX_QUOTED_DIMS`] dimensions, then how many there are (33 million
/// dimensions do not make a 99 MB message).
#[derive(Clone, Copy, Debug)]
pub struct Dims<'a>(pub &'a [i64]);

impl std::fmt::Display for Dims<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= MAX_QUOTED_DIMS {
            return write!(f, "{:?}", self.0);
        }
        let shown: Vec<String> = self.0[..MAX_QUOTED_DIMS].iter().map(i64::to_string).collect();
        write!(f, "[{}, ... ({} dimensions)]", shown.join(", "), self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_tritons_status_and_code() {
        let cases = [
            (Error::invalid("x"), 400, tonic::Code::InvalidArgument),
            (Error::NotFound("x".into()), 404, tonic::Code::NotFound),
            (Error::Unavailable("x".into()), 503, tonic::Code::Unavailable),
            (Error::DeadlineExceeded("x".into()), 504, tonic::Code::DeadlineExceeded),
            (Error::PayloadTooLarge("x".into()), 413, tonic::Code::ResourceExhausted),
            (Error::RequestTimeout("x".into()), 408, tonic::Code::DeadlineExceeded),
            (Error::Internal("x".into()), 500, tonic::Code::Internal),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.http_status().as_u16(), status, "{error:?}");
            assert_eq!(error.grpc_code(), code, "{error:?}");
        }
    }

    #[test]
    fn client_mistakes_are_not_the_models_fault() {
        assert_eq!(Error::invalid("bad shape").fault(), Fault::Client);
        assert_eq!(Error::Internal("boom".into()).fault(), Fault::Server);
        assert_eq!(Error::DeadlineExceeded("late".into()).fault(), Fault::Server);
        let own = Error::ClientDeadline("the client's own 1 µs".into());
        assert_eq!(
            (own.fault(), own.http_status().as_u16(), own.grpc_code()),
            (Fault::Client, 504, tonic::Code::DeadlineExceeded)
        );
        assert_eq!(Error::RequestTimeout("slow body".into()).fault(), Fault::Client);
    }

    #[test]
    fn quoted_client_text_is_bounded() {
        assert_eq!(Quoted("a\nb").to_string(), "a\\nb");
        let long = "x".repeat(70_000);
        let quoted = Quoted(&long).to_string();
        assert!(quoted.len() < MAX_QUOTED_CHARS + 30, "{}", quoted.len());
        assert!(quoted.ends_with("... (70000 bytes)"), "{quoted}");
        assert_eq!(Dims(&[1, 2, 3]).to_string(), "[1, 2, 3]");
        let many = vec![1i64; 33_000_000];
        assert_eq!(Dims(&many).to_string().len(), "[1, ... (33000000 dimensions)]".len() + 15 * 3);
    }
}
