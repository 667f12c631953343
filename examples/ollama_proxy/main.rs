//! A retrying Ollama proxy: any Ollama client gets CodeWorm's retry
//! semantics by changing only its base URL.
//!
//! ```text
//! cargo run --release --example ollama_proxy -- --listen 127.0.0.1:11435 \
//!     --upstream http://127.0.0.1:11434 --mode default --retry-delay 2s
//! OLLAMA_HOST=http://127.0.0.1:11435 ollama run qwen2.5:7b "why is the sky blue?"
//! ```
//!
//! Once it listens it prints `listening on ADDR` on stdout (the bound
//! address, so `--listen 127.0.0.1:0` works). Every retry decision is logged
//! on stderr through `tracing`; `RUST_LOG` sets the filter (default: `info`
//! for this proxy and the retry crate).

mod proxy;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "warn,tower_ollama_retry=info,ollama_proxy=info";

fn init_tracing() {
    let filter = match std::env::var_os("RUST_LOG") {
        Some(_) => EnvFilter::from_default_env(),
        None => EnvFilter::new(DEFAULT_FILTER),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    // A bad argument: clap prints the error (or --help) and exits.
    let config = proxy::Config::parse();
    init_tracing();

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        upstream = %config.upstream,
        mode = ?config.mode,
        max_attempts = config.max_attempts,
        retry_delay = ?config.retry_delay,
        attempt_timeout = ?config.attempt_timeout,
        connect_timeout = ?config.connect_timeout,
        recovery_settle = ?config.recovery_settle,
        "proxy configured"
    );
    let app = proxy::router(&config);

    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Nobody reads stdout any more; serving is still useful.
        tracing::warn!("could not write the `listening on` line");
    }
    drop(stdout);

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
