#![no_main]

#[path = "../fuzz_bodies.rs"]
#[allow(dead_code)]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::retry_after(data));
