//! The adapter's load and soak tools, as binaries (`src/bin/`):
//!
//! | Binary | What it measures |
//! |---|---|
//! | `loadgen` | socketmap throughput and latency against a floor server, miss overhead, cold keys, idle connections |
//! | `soak` | hours of mixed socketmap, policy and SASL traffic: errors, latency and memory over time |
//! | `policy_loadgen` | policy server throughput with the quota store |
//! | `sasl_flood` | lookups while a flood of wrong passwords runs |
//! | `fixture_load` | how long a large fixture takes to load |
//!
//! Their protocol clients and `/proc` sampling come from `postfix-adapter-clients`,
//! which the integration tests use too. Scripts run them: `scripts/bench.sh`,
//! `scripts/soak.sh`.
