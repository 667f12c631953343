//! What the HTTP policies do with the final response: attach the attempt
//! report, and recognise one that an inner retry layer already finished.

use crate::common::Common;
use crate::policy::ending_error;
use crate::{BoxError, Finished, Reason, Report, RetryError};

/// Whether an inner retry layer already gave up on this response (its
/// [`Report`] extension says it stopped on something other than success).
/// An outer retry layer must not retry it again.
pub fn already_retried<B>(res: &http::Response<B>) -> bool {
    res.extensions()
        .get::<Report>()
        .is_some_and(|r| r.reason() != Reason::Success)
}

/// Puts the report into the response's extensions when there is something to
/// tell (a retry happened, or the loop stopped on a failure), so that a
/// first-attempt success allocates nothing. A layer that sent one attempt
/// leaves an inner layer's report in place: it says more.
pub(crate) fn attach_report<B>(res: &mut http::Response<B>, report: Report) {
    if report.attempts() <= 1 && res.extensions().get::<Report>().is_some() {
        return;
    }
    if report.retried() || report.reason() != Reason::Success {
        res.extensions_mut().insert(report);
    }
}

/// How the HTTP policies end a loop: record it, hand a response back with
/// its report (after `on_response` has had its say), and turn anything else
/// into a [`RetryError`].
///
/// Inlined, with the rest out of line: a first-attempt success (the common
/// case) has nothing to attach, and its response is handed on without
/// being moved through the report handling.
#[inline]
pub(crate) fn finish_response<B, E: Into<BoxError>>(
    common: &Common,
    finished: Finished<http::Response<B>, E>,
    on_response: impl FnOnce(&mut http::Response<B>, &Report),
) -> Result<http::Response<B>, RetryError> {
    common.finish(finished.report());
    match finished.last {
        Some(Ok(mut res)) => {
            let report = finished.report;
            if report.retried() || report.reason() != Reason::Success {
                on_response(&mut res, &report);
                attach_report(&mut res, report);
            }
            Ok(res)
        }
        last => Err(ending_error(last, finished.recovery_error, finished.report)),
    }
}

/// [`finish_response`] for a first-attempt success: the response goes back
/// as it came, with nothing to attach.
#[inline(always)]
pub(crate) fn first_success_response<B, E: Into<BoxError>>(
    common: &Common,
    attempt: &crate::Attempt,
    result: Result<http::Response<B>, E>,
) -> Result<http::Response<B>, RetryError> {
    match result {
        Ok(res) => {
            common.first_success(attempt);
            Ok(res)
        }
        Err(e) => {
            let report = Report::first_success(attempt);
            common.finish(&report);
            Err(ending_error::<http::Response<B>, E>(
                Some(Err(e)),
                None,
                report,
            ))
        }
    }
}
