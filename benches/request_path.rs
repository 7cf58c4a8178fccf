//! Benchmarks of the request path without sockets: [`LookupService::answer`]
//! (parse, normalise, deadline, backend call, reply) against an in-memory backend,
//! and the whole per-request CPU work of a connection (decode the frame, answer,
//! render, frame the reply, record the metrics).
//!
//! The backend answers at once, so these numbers are the engine's own cost per
//! lookup. A cache wired inside `Server::bind` is not in this path: this measures
//! [`LookupService`] as it is constructed here.
//!
//! `cargo bench --bench request_path`.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use userli_postfix_adapter::Lookups;
use userli_postfix_adapter::backend_api::{Address, BackendError, LookupBackend, async_trait};
use userli_postfix_adapter::config::Config;
use userli_postfix_adapter::protocol::netstring::{NetstringDecoder, encode_into};

/// Lookups answered from hash tables, like the fixture backend.
#[derive(Debug, Default)]
struct MemoryBackend {
    domains: HashSet<String>,
    mailboxes: HashSet<String>,
    aliases: HashMap<String, Vec<String>>,
    senders: HashMap<String, Vec<String>>,
    down: bool,
}

impl MemoryBackend {
    fn with_users(n: usize) -> Self {
        let mut b = Self::default();
        b.domains.insert("example.org".into());
        for i in 0..n {
            let user = format!("user{i}@example.org");
            b.mailboxes.insert(user.clone());
            b.senders.insert(user.clone(), vec![user.clone()]);
            b.aliases.insert(
                format!("alias{i}@example.org"),
                vec![user, format!("other{i}@example.net")],
            );
        }
        b
    }

    fn check(&self) -> Result<(), BackendError> {
        if self.down {
            Err(BackendError::unavailable("down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl LookupBackend for MemoryBackend {
    async fn aliases(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.check()?;
        Ok(self
            .aliases
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    async fn domain_exists(&self, domain: &str) -> Result<bool, BackendError> {
        self.check()?;
        Ok(self.domains.contains(domain))
    }

    async fn mailbox_exists(&self, address: &Address) -> Result<bool, BackendError> {
        self.check()?;
        Ok(self.mailboxes.contains(address.as_str()))
    }

    async fn senders(&self, address: &Address) -> Result<Vec<String>, BackendError> {
        self.check()?;
        Ok(self
            .senders
            .get(address.as_str())
            .cloned()
            .unwrap_or_default())
    }

    fn name(&self) -> &str {
        "memory"
    }
}

fn service(backend: MemoryBackend) -> Lookups {
    let mut config = Config::embedded();
    config.lookups.recipient_delimiter = "+".into();
    config.lookups.timeout = Duration::from_secs(3);
    Lookups::new(&config, Arc::new(backend)).expect("metrics register")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn answer(c: &mut Criterion) {
    let rt = runtime();
    let svc = service(MemoryBackend::with_users(1000));
    let down = service(MemoryBackend {
        down: true,
        ..MemoryBackend::default()
    });
    let cases: [(&str, &Lookups, &[u8]); 9] = [
        ("mailbox_hit", &svc, b"mailbox user42@example.org"),
        ("mailbox_miss", &svc, b"mailbox nobody@example.org"),
        (
            "mailbox_normalised",
            &svc,
            b"mailbox  User42+Tag@Example.ORG ",
        ),
        ("alias_hit_list", &svc, b"alias alias42@example.org"),
        ("domain_hit", &svc, b"domain example.org"),
        ("alias_bare_domain_probe", &svc, b"alias example.org"),
        ("unknown_map", &svc, b"frobnicate x"),
        ("invalid_request", &svc, b"invalidrequest"),
        ("backend_down_temp", &down, b"mailbox user42@example.org"),
    ];
    let mut group = c.benchmark_group("lookup_answer");
    group.throughput(Throughput::Elements(1));
    for (name, svc, payload) in cases {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async move { black_box(svc.answer(black_box(payload)).await) });
        });
    }
    group.finish();
}

/// What a connection does per request once the bytes are in its buffer.
fn per_request(c: &mut Criterion) {
    let rt = runtime();
    let svc = service(MemoryBackend::with_users(1000));
    let decoder = NetstringDecoder::new(16_384);
    let mut request = Vec::new();
    encode_into(b"mailbox user42@example.org", &mut request);
    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_answer_render_frame_record", |b| {
        b.to_async(&rt).iter_batched(
            || (BytesMut::from(&request[..]), Vec::with_capacity(256)),
            |(mut buf, mut out)| {
                let svc = &svc;
                async move {
                    let frame = decoder.decode(&mut buf).unwrap().unwrap();
                    let reply = svc.answer(&frame).await;
                    encode_into(&reply.render(), &mut out);
                    black_box(out)
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = answer, per_request
}
criterion_main!(benches);
