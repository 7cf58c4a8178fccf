//! Micro-benchmarks of the protocol codecs: netstring framing of typical Postfix
//! requests (one per read, pipelined, split across reads), reply encoding, and the
//! socketmap request/reply grammar.
//!
//! `cargo bench --bench codec`; `cargo bench --bench codec -- decode` for a subset.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use userli_postfix_adapter::protocol::netstring::{NetstringDecoder, encode, encode_into};
use userli_postfix_adapter::protocol::socketmap::{Reply, parse_request};

/// What Postfix sends: `name SP key`, one netstring per lookup.
const REQUESTS: [&[u8]; 4] = [
    b"mailbox user@example.org",
    b"alias alias@example.org",
    b"domain example.org",
    b"senders someone.with.a.longer.name+tag@sub.example.org",
];

/// The engine's default `SOCKETMAP_MAX_REQUEST_SIZE`.
const MAX_REQUEST: usize = 16_384;

fn wire(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        encode_into(p, &mut out);
    }
    out
}

fn decode(c: &mut Criterion) {
    let decoder = NetstringDecoder::new(MAX_REQUEST);
    let mut group = c.benchmark_group("netstring_decode");

    let single = wire(&REQUESTS[..1]);
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&single[..]),
            |buf| black_box(decoder.decode(buf).unwrap()),
            BatchSize::SmallInput,
        );
    });

    // 16 requests in one read (Postfix does not pipeline, but the decoder must cope).
    let many: Vec<&[u8]> = REQUESTS.iter().copied().cycle().take(16).collect();
    let pipelined = wire(&many);
    group.throughput(Throughput::Elements(16));
    group.bench_function("pipelined_16", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&pipelined[..]),
            |buf| {
                let mut n = 0;
                while let Some(frame) = decoder.decode(buf).unwrap() {
                    black_box(frame);
                    n += 1;
                }
                n
            },
            BatchSize::SmallInput,
        );
    });

    // One request arriving in three reads: length only, half the payload, the rest.
    let split = wire(&REQUESTS[3..4]);
    let (a, rest) = split.split_at(3);
    let (b_part, c_part) = rest.split_at(rest.len() / 2);
    group.throughput(Throughput::Elements(1));
    group.bench_function("split_3_reads", |b| {
        b.iter_batched_ref(
            || BytesMut::with_capacity(1024),
            |buf| {
                buf.extend_from_slice(a);
                assert!(decoder.decode(buf).unwrap().is_none());
                buf.extend_from_slice(b_part);
                assert!(decoder.decode(buf).unwrap().is_none());
                buf.extend_from_slice(c_part);
                black_box(decoder.decode(buf).unwrap())
            },
            BatchSize::SmallInput,
        );
    });

    // A hostile prefix: rejected from the digits alone.
    group.bench_function("oversized_prefix", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&b"999999999:"[..]),
            |buf| black_box(decoder.decode(buf).is_err()),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("netstring_encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ok_1", |b| b.iter(|| encode(black_box(b"OK 1"))));
    let mut out = Vec::with_capacity(256);
    group.bench_function("ok_1_reused_buffer", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(b"OK 1"), &mut out);
            black_box(out.len())
        });
    });
    let long = format!(
        "OK {}",
        (0..50)
            .map(|i| format!("destination{i}@example.org"))
            .collect::<Vec<_>>()
            .join(",")
    );
    group.bench_function("alias_list_50", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(long.as_bytes()), &mut out);
            black_box(out.len())
        });
    });
    group.finish();
}

fn socketmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("socketmap");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_request", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % REQUESTS.len();
            black_box(parse_request(black_box(REQUESTS[i])).unwrap())
        });
    });
    group.bench_function("parse_request_invalid", |b| {
        b.iter(|| black_box(parse_request(black_box(b"invalidrequest")).is_err()));
    });

    let replies = [
        ("ok_1", Reply::Ok("1".into())),
        ("notfound", Reply::NotFound),
        ("temp", Reply::Temp("Error fetching mailbox".into())),
        (
            "ok_list_3",
            Reply::Ok("user2@example.org,other@example.net,third@example.com".into()),
        ),
    ];
    for (name, reply) in &replies {
        group.bench_function(format!("render_{name}"), |b| {
            b.iter(|| black_box(black_box(reply).render()));
        });
    }
    // The whole reply side of one request: render plus framing into a reused buffer.
    let ok = Reply::Ok("1".into());
    let mut out = Vec::with_capacity(256);
    group.bench_function("render_and_frame_ok_1", |b| {
        b.iter(|| {
            out.clear();
            encode_into(&black_box(&ok).render(), &mut out);
            black_box(out.len())
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encoding, socketmap
}
criterion_main!(benches);
