//! Runs every checked-in seed of `tests/fuzz/corpus/<target>/` through the
//! same body as the cargo-fuzz target, so that the seeds (and any crash
//! input added to them) are checked by plain `cargo test`, without nightly.

#![cfg(all(feature = "http", feature = "ollama"))]

#[path = "fuzz/fuzz_bodies.rs"]
mod fuzz_bodies;

use std::path::PathBuf;

/// Feeds each file of the target's corpus to `body`; returns how many ran.
fn run_corpus(target: &str, body: fn(&[u8])) -> usize {
    let dir: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fuzz",
        "corpus",
        target,
    ]
    .iter()
    .collect();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(
            outcome.is_ok(),
            "{target}: seed {} ({:?}) failed",
            path.display(),
            String::from_utf8_lossy(&data)
        );
    }
    entries.len()
}

#[test]
fn retry_after_seeds() {
    let n = run_corpus("retry_after", fuzz_bodies::retry_after);
    assert!(n >= 15, "only {n} retry_after seeds ran");
}

#[test]
fn ollama_body_seeds() {
    let n = run_corpus("ollama_body", fuzz_bodies::ollama_body);
    assert!(n >= 20, "only {n} ollama_body seeds ran");
}

#[test]
fn grpc_headers_seeds() {
    let n = run_corpus("grpc_headers", fuzz_bodies::grpc_headers);
    assert!(n >= 10, "only {n} grpc_headers seeds ran");
}
