//! cargo-fuzz target `http_body`: see `fuzz/harness.rs` for the input layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::http_body(data));
