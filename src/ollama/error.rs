//! [`OllamaError`]: the small error type that names CodeWorm's classes.

use crate::BoxError;
use std::fmt;

/// The class of an [`OllamaError`], CodeWorm's exception hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OllamaErrorKind {
    /// `OllamaModelError`: the model ran out of memory.
    Model,
    /// `OllamaTimeoutError`: connect, read, write or pool timeout.
    Timeout,
    /// `OllamaConnectionError`: no connection could be made.
    Connection,
    /// A non-success HTTP response; its status and body decide the class.
    Status(u16),
    /// Anything else: fatal.
    Other,
}

/// An error from an Ollama client, in CodeWorm's classes.
///
/// Use it as the error type of a transport-agnostic Ollama service (one that
/// is not an `http::Request` service), so that
/// [`OllamaPolicy::plain`](crate::OllamaPolicy::plain) can classify it. The
/// policy also finds it anywhere in an error's `source()` chain.
///
/// # Example
///
/// ```
/// use tower_ollama_retry::{OllamaError, OllamaErrorKind};
///
/// let e = OllamaError::status(503, r#"{"error":"server busy"}"#);
/// assert_eq!(e.kind(), OllamaErrorKind::Status(503));
/// assert_eq!(e.to_string(), r#"Generation failed: {"error":"server busy"}"#);
/// assert_eq!(OllamaError::oom_after_recovery().to_string(), "Model OOM after recovery attempt");
/// ```
#[derive(Debug)]
pub struct OllamaError {
    kind: OllamaErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl OllamaError {
    /// An error of `kind` with `message`.
    pub fn new(kind: OllamaErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A model (out-of-memory) error.
    pub fn model(message: impl Into<String>) -> Self {
        Self::new(OllamaErrorKind::Model, message)
    }

    /// A timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(OllamaErrorKind::Timeout, message)
    }

    /// A connection error.
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(OllamaErrorKind::Connection, message)
    }

    /// A non-success response with its body text, CodeWorm's
    /// "Generation failed: `<body>`".
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        let body = body.into();
        Self::new(OllamaErrorKind::Status(status), body)
    }

    /// Any other, fatal, error.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(OllamaErrorKind::Other, message)
    }

    /// CodeWorm's final error after OOM on every attempt.
    pub fn oom_after_recovery() -> Self {
        Self::model("Model OOM after recovery attempt")
    }

    /// CodeWorm's error for a failed recovery hook, `OOM recovery failed:
    /// <cause>`. The cause's text is in the message, so it is not repeated
    /// as a `source()` (error reporters print the chain).
    pub fn recovery_failed(cause: BoxError) -> Self {
        Self::new(
            OllamaErrorKind::Other,
            format!("OOM recovery failed: {cause}"),
        )
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The class.
    pub fn kind(&self) -> OllamaErrorKind {
        self.kind
    }

    /// The message (for a status error, the body text).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for OllamaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            OllamaErrorKind::Status(_) => write!(f, "Generation failed: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for OllamaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
