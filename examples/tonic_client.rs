//! A tonic client that retries `UNAVAILABLE`, against a flaky in-process
//! health server.
//!
//! ```text
//! cargo run --example tonic_client --features tonic
//! ```
//!
//! The server answers `UNAVAILABLE` to its first two checks, then
//! `SERVING`. The client wraps its `Channel` in `GrpcRetryLayer`, so one
//! `check()` makes three attempts and succeeds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::ServiceBuilder;
use tower_ollama_retry::Report;
use tower_ollama_retry::backoff::Constant;
use tower_ollama_retry::grpc::{GrpcPolicy, GrpcRetryLayer};

/// Answers `UNAVAILABLE` to the first `failures` checks, then `SERVING`.
struct Flaky {
    calls: AtomicU32,
    failures: u32,
}

#[tonic::async_trait]
impl Health for Flaky {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.failures {
            println!("server: call {n}: UNAVAILABLE");
            return Err(Status::unavailable("warming up"));
        }
        println!("server: call {n}: SERVING");
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not served here"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server, on a free loopback port.
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse()?)?;
    let addr = incoming.local_addr()?;
    let flaky = Flaky {
        calls: AtomicU32::new(0),
        failures: 2,
    };
    tokio::spawn(
        Server::builder()
            .add_service(HealthServer::new(flaky))
            .serve_with_incoming(incoming),
    );

    // The client: a Channel under the retry layer.
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let policy = GrpcPolicy::new()
        .with_backoff(Constant::new(Duration::from_millis(20)))
        .on_retry(|event| {
            println!(
                "client: attempt {} after {:?} (previous: {})",
                event.attempt.number(),
                event.delay,
                event.failure,
            );
        });
    let svc = ServiceBuilder::new()
        .layer(GrpcRetryLayer::new(policy))
        .service(channel);
    let mut client = HealthClient::new(svc);

    let res = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    let attempts = res.extensions().get::<Report>().map_or(1, Report::attempts);
    println!(
        "client: {:?} after {attempts} attempts",
        res.get_ref().status()
    );
    Ok(())
}
