//! Classifiers: the first of a policy's three questions, as a pluggable part.

use crate::{Attempt, Decision};
use std::error::Error as StdError;

/// Classifies a finished attempt into a [`Decision`].
///
/// Any closure `FnMut(&Attempt, &Result<Res, E>) -> Decision` is a classifier.
pub trait Classify<Res, E> {
    /// The decision for `result`, the outcome of `attempt`.
    fn classify(&mut self, attempt: &Attempt, result: &Result<Res, E>) -> Decision;
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: FnMut(&Attempt, &Result<Res, E>) -> Decision,
{
    fn classify(&mut self, attempt: &Attempt, result: &Result<Res, E>) -> Decision {
        self(attempt, result)
    }
}

/// Pins a closure's signature down as a classifier, so that the compiler
/// can infer its argument types.
///
/// ```
/// use tower_ollama_retry::{Class, Decision, Failure, RetryPolicy, classify_fn, BoxError};
///
/// let policy = RetryPolicy::new(classify_fn(|_, r: &Result<u32, BoxError>| match r {
///     Ok(_) => Decision::Success,
///     Err(_) => Decision::Retry(Failure::new(Class::Transient)),
/// }));
/// # let _ = policy;
/// ```
pub fn classify_fn<F, Res, E>(f: F) -> F
where
    F: FnMut(&Attempt, &Result<Res, E>) -> Decision,
{
    f
}

/// A view of an error as a `std::error::Error`, so that classifiers can walk
/// its [`source`](StdError::source) chain.
///
/// `tower::BoxError` does not implement `std::error::Error` itself (the
/// standard library cannot allow it), so classifiers that must accept both
/// boxed and concrete errors take `E: AsStdError`. It is implemented for
/// `BoxError`, `Infallible`, and the error types of tower, tokio, hyper,
/// hyper-util, tonic and this crate. For an error type of your own:
///
/// ```
/// use std::error::Error;
/// use tower_ollama_retry::AsStdError;
///
/// #[derive(Debug)]
/// struct MyError;
/// impl std::fmt::Display for MyError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("mine") }
/// }
/// impl Error for MyError {}
/// impl AsStdError for MyError {
///     fn as_std_error(&self) -> Option<&(dyn Error + 'static)> { Some(self) }
/// }
/// ```
pub trait AsStdError {
    /// This error as a `dyn Error`, or `None` for an uninhabited type.
    fn as_std_error(&self) -> Option<&(dyn StdError + 'static)>;
}

impl AsStdError for crate::BoxError {
    fn as_std_error(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&**self)
    }
}

impl AsStdError for Box<dyn StdError + Send + 'static> {
    fn as_std_error(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&**self)
    }
}

impl AsStdError for std::convert::Infallible {
    fn as_std_error(&self) -> Option<&(dyn StdError + 'static)> {
        match *self {}
    }
}

macro_rules! as_std_error {
    ($($(#[$m:meta])* $t:ty),* $(,)?) => {$(
        $(#[$m])*
        impl AsStdError for $t {
            fn as_std_error(&self) -> Option<&(dyn StdError + 'static)> {
                Some(self)
            }
        }
    )*};
}

as_std_error!(
    std::io::Error,
    tower::timeout::error::Elapsed,
    tokio::time::error::Elapsed,
    crate::RetryError,
    crate::OllamaError,
    #[cfg(feature = "http")]
    hyper::Error,
    #[cfg(feature = "http")]
    hyper_util::client::legacy::Error,
    #[cfg(feature = "tonic")]
    tonic::Status,
    #[cfg(feature = "tonic")]
    tonic::transport::Error,
);

/// Iterates an error and its `source()` chain.
pub(crate) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}
