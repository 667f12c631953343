//! [`OllamaPolicy`] over HTTP: `http::Request` in, `http::Response<PeekBody>`
//! out, classified by status and the peeked `{"error":"..."}` body.

use super::policy::{Http, OllamaPolicy};
use super::rules::{Mode, classify_error, classify_status, error_message};
use crate::hint::retry_after_header;
use crate::http::response::{already_retried, attach_report};
use crate::http::{PeekBody, ReplayableBody, replay_request};
use crate::settings::settings_policy_methods;
use crate::{
    AsStdError, Attempt, BoxError, Class, Decision, Failure, Finished, Policy, Reason, Recover,
    RetryError,
};
use http::{Request, Response};
use std::time::Duration;

/// What went wrong with a response whose body broke while being peeked.
fn broken_body<B>(res: &Response<PeekBody<B>>) -> Option<String> {
    let err = res.body().peek_error()?;
    Some(format!("{}: the response body failed: {err}", res.status()))
}

/// How a peeked Ollama response is classified.
pub(crate) fn classify_response<B>(mode: Mode, res: &Response<PeekBody<B>>) -> Failure {
    let status = res.status();
    let body = res.body();
    if let Some(message) = broken_body(res) {
        // The body broke while being read: a transport failure, as if the
        // connection had closed mid-response.
        let class = match mode {
            Mode::CodeWorm => Class::Fatal,
            Mode::Default => Class::Transient,
        };
        return Failure::new(class).with_message(message);
    }
    let class = classify_status(mode, status.as_u16(), body.prefix());
    let mut failure = Failure::new(class).with_message(error_message(body.prefix()));
    if mode == Mode::Default {
        // CodeWorm never looked at Retry-After; Ollama does not send it, but
        // a proxy in front of it may.
        failure = failure.with_hint_opt(retry_after_header(res.headers()));
    }
    failure
}

impl<R, ReqB, ResB, E> Policy<Request<ReqB>, Response<PeekBody<ResB>>, E> for OllamaPolicy<Http, R>
where
    R: Recover<Request<ReqB>>,
    ReqB: ReplayableBody,
    E: Into<BoxError> + AsStdError,
{
    type Error = RetryError;
    type Recover = R::Future;

    settings_policy_methods!();

    fn replay(&mut self, req: &Request<ReqB>) -> Option<Request<ReqB>> {
        replay_request(req)
    }

    fn classify(
        &mut self,
        attempt: &Attempt,
        result: &Result<Response<PeekBody<ResB>>, E>,
    ) -> Decision {
        let failure = match result {
            Ok(res) if res.status().is_success() => return Decision::Success,
            Ok(res) if already_retried(res) => return Decision::Fatal(Failure::new(Class::Fatal)),
            Ok(res) => classify_response(self.rules.mode, res),
            Err(e) => {
                let Some(err) = e.as_std_error() else {
                    return Decision::Success;
                };
                Failure::new(classify_error(self.rules.mode, err))
            }
        };
        self.decide(attempt, failure)
    }

    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.delay(attempt, failure)
    }

    fn recover(
        &mut self,
        attempt: &Attempt,
        failure: &Failure,
        next: &mut Request<ReqB>,
    ) -> R::Future {
        self.recover.recover(attempt, failure, next)
    }

    #[inline]
    fn succeeded(
        &mut self,
        attempt: &Attempt,
        result: Result<Response<PeekBody<ResB>>, E>,
    ) -> Result<Response<PeekBody<ResB>>, RetryError> {
        match result {
            // A body broken while being peeked takes `finish`'s path.
            Ok(res) if res.body().peek_error().is_none() => {
                self.settings.common.first_success(attempt);
                Ok(res)
            }
            other => self.finish(Finished::first(attempt, other)),
        }
    }

    fn finish(
        &mut self,
        finished: Finished<Response<PeekBody<ResB>>, E>,
    ) -> Result<Response<PeekBody<ResB>>, RetryError> {
        let (last, recovery_error, report) = finished.into_parts();
        let last = match last {
            // A body that broke while being peeked cannot be handed on (a
            // proxy would send the head and then nothing): the loop ends with
            // that failure instead.
            Some(Ok(res)) if res.body().peek_error().is_some() => {
                Some(Err(BoxError::from(broken_body(&res).unwrap_or_default())))
            }
            // Any other response, even a failed one, goes back as it came:
            // status, headers and every body byte.
            Some(Ok(mut res)) if report.reason() != Reason::RecoveryFailed => {
                self.settings.common.finish(&report);
                attach_report(&mut res, report);
                return Ok(res);
            }
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(Err(e.into())),
            None => None,
        };
        let mut finished = Finished::<(), BoxError>::new(last, report);
        finished.recovery_error = recovery_error;
        Err(self.final_error(finished))
    }
}
