//! How long the fixture backend takes to load (and reload on SIGHUP) a large file.
//!
//! ```text
//! cargo run --release -p postfix-adapter-tools --bin fixture_load -- 100000
//! ```
//!
//! Generates a fixture with N users, each with an argon2id hash (checked for shape
//! at load, not verified) and an alias, then loads it three times and prints the
//! best time. The figure is reported in `docs/robustness.md`.

use std::time::{Duration, Instant};

use postfix_adapter_backend_fixture::FixtureBackend;

fn main() {
    let users: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |n| n.parse().expect("a number of users"));
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$C5zk7OMKcgYC+c+EfnweWg$yamQ4G2sb0KpLxwLLXgPLarar5RcZo0uf7g/eekmsvY";
    let mut text = String::from("domains = [\"example.org\", \"example.com\"]\n");
    for i in 0..users {
        text.push_str(&format!(
            "\n[[users]]\nemail = \"user{i}@example.org\"\npassword_hash = \"{hash}\"\n\n[[aliases]]\nsource = \"alias{i}@example.org\"\ndestination = \"user{i}@example.org\"\n"
        ));
    }
    let best = (0..3)
        .map(|_| {
            let started = Instant::now();
            let backend = FixtureBackend::from_toml_str(&text, "generated.toml").expect("valid");
            let took = started.elapsed();
            drop(backend);
            took
        })
        .min()
        .unwrap_or(Duration::ZERO);
    println!(
        "{users} users + {users} aliases ({:.1} MiB of TOML): loaded in {:.0} ms (best of 3)",
        text.len() as f64 / (1024.0 * 1024.0),
        best.as_secs_f64() * 1000.0
    );
}
