//! The registry's one error type. Each kind maps once to an HTTP status
//! ([`RegistryError::status`]) and to an MLflow error code
//! ([`RegistryError::mlflow_code`]). Messages are for clients: they name the
//! field, the bound and the value given, never internals (those are logged).

use http::StatusCode;

/// Everything the registry can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A model or alias name outside the accepted alphabet.
    #[error("invalid {what} name '{given}': use 1 to 128 characters of [A-Za-z0-9_.-]")]
    InvalidName {
        /// Model, alias, ...
        what: &'static str,
        /// The name given (printed escaped).
        given: String,
    },
    /// A digest not of the form `sha256:<64 lowercase hex>`.
    #[error("invalid digest '{0}': expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// A manifest that breaks a path rule or a limit.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// A malformed request (JSON, query, header).
    #[error("{0}")]
    InvalidArgument(String),
    /// A manifest naming a blob that was never uploaded (or whose size differs).
    #[error(
        "blob {digest} of '{path}' is missing or its size is not {size}: upload it first (PUT /cp/v1/blobs/{digest})"
    )]
    MissingBlob {
        /// The file's path.
        path: String,
        /// Its declared digest.
        digest: String,
        /// Its declared size.
        size: u64,
    },
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something to be created exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request conflicts with the current state (e.g. an alias to a version that is not READY).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named a generation that is no longer current.
    #[error("stale If-Match: the alias is at generation {current}, not {given}; read it again and retry")]
    PreconditionFailed {
        /// The generation the client sent.
        given: i64,
        /// The alias's generation now (0: no such alias).
        current: i64,
    },
    /// An upload whose bytes hash to another digest.
    #[error("digest mismatch: declared {declared}, the bytes received hash to {actual}")]
    DigestMismatch {
        /// What the client declared.
        declared: String,
        /// What arrived.
        actual: String,
    },
    /// An upload whose length differs from its declared size.
    #[error("size mismatch: declared {declared} bytes, received {received}")]
    SizeMismatch {
        /// `Content-Length`.
        declared: u64,
        /// Bytes received before the end (or before the excess was noticed).
        received: u64,
    },
    /// A resumed upload that does not start where the held part ends.
    #[error(
        "the upload resumes at byte {given}, but the control plane holds {held} bytes of this blob; resume at {held}"
    )]
    UploadOffset {
        /// Where the client's `Content-Range` starts.
        given: u64,
        /// Bytes the part holds.
        held: u64,
    },
    /// An upload without a declared size.
    #[error("an upload needs a Content-Length header (the declared size)")]
    LengthRequired,
    /// An upload or request over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The client went away or its body broke off mid-way.
    #[error("the upload broke off after {received} bytes: {reason}")]
    Incomplete {
        /// Bytes received.
        received: u64,
        /// What the body stream said.
        reason: String,
    },
    /// Something the registry does not do (e.g. `runs:/` sources).
    #[error("{0}")]
    Unsupported(String),
    /// The database cannot be reached or is shutting down; retry later.
    #[error("the registry database is unavailable; retry later")]
    Unavailable,
    /// A server-side fault (I/O, an unexpected database error). Logged in full; the client sees
    /// only this line.
    #[error("internal error in the registry: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The HTTP status of this error, the one place it is decided.
    pub fn status(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            InvalidName { .. } | InvalidDigest(_) | InvalidManifest(_) | InvalidArgument(_) | Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            DigestMismatch { .. } | SizeMismatch { .. } | Incomplete { .. } => StatusCode::BAD_REQUEST,
            MissingBlob { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            NotFound(_) => StatusCode::NOT_FOUND,
            AlreadyExists(_) | Conflict(_) | UploadOffset { .. } => StatusCode::CONFLICT,
            PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            LengthRequired => StatusCode::LENGTH_REQUIRED,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error_code` MLflow clients read (`mlflow.protos.databricks_pb2`).
    pub fn mlflow_code(&self) -> &'static str {
        use RegistryError::*;
        match self {
            NotFound(_) => "RESOURCE_DOES_NOT_EXIST",
            AlreadyExists(_) => "RESOURCE_ALREADY_EXISTS",
            Unavailable => "TEMPORARILY_UNAVAILABLE",
            Internal(_) => "INTERNAL_ERROR",
            PreconditionFailed { .. } | Conflict(_) => "INVALID_STATE",
            _ => "INVALID_PARAMETER_VALUE",
        }
    }

    /// A database error: connection faults become [`RegistryError::Unavailable`] (503, retry),
    /// the rest [`RegistryError::Internal`].
    pub fn from_db(error: sqlx::Error) -> RegistryError {
        if is_unavailable(&error) {
            tracing::warn!(%error, "registry database unavailable");
            RegistryError::Unavailable
        } else {
            tracing::error!(%error, "registry database error");
            RegistryError::Internal("database error".into())
        }
    }

    /// A file-system fault, logged with its context.
    pub fn io(context: &str, error: std::io::Error) -> RegistryError {
        tracing::error!(%error, context, "registry I/O error");
        RegistryError::Internal(format!("I/O error ({context})"))
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(error: sqlx::Error) -> RegistryError {
        RegistryError::from_db(error)
    }
}

/// Whether a database error means "cannot talk to the database now" rather than a bad query.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: 08 connection exception, 57P0x shutdown/crash/cannot connect now,
            // 53 insufficient resources. SQLite: 5 BUSY, 6 LOCKED (another writer for too long).
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "5" || code == "6"
        }
        _ => false,
    }
}

/// `error` and the errors under it, `: `-separated: reqwest's own text names only the URL,
/// not the refused connection or the untrusted certificate under it.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
