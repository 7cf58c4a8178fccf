//! Fuzz target: see `checks::dovecot_line`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dovecot_line(data));
