//! Fuzz target: see `checks::socketmap_request`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::socketmap_request(data));
