//! Captures what a real Postfix sends to the adapter's three listeners and turns it
//! into the fuzzers' seed corpora.
//!
//! Recording proxies sit between a private Postfix 3.7 instance (and `postmap -q`)
//! and the adapter binary on the demo fixture; swaks drives authenticated and
//! unauthenticated SMTP sessions through them. The test asserts the captured bytes
//! are what the adapter expects (complete netstrings for all four maps, an
//! `END-OF-MESSAGE` policy request with the login, the Dovecot handshake and both
//! mechanisms) and runs every seed through the fuzz checks. With
//! `UPDATE_FUZZ_SEEDS=1` it also writes them to `fuzz/seeds/<target>/`:
//!
//! ```text
//! UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds_from_postfix -- --include-ignored
//! ```
//!
//! Needs root, Postfix and swaks, hence ignored by default.

#[path = "../fuzz/checks.rs"]
mod checks;
mod common;
#[path = "support/postmap.rs"]
mod postmap_client;
#[allow(dead_code)]
#[path = "support/private_postfix.rs"]
mod private_postfix;

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::Adapter;
use private_postfix::PrivatePostfix;
use userli_postfix_adapter::protocol::netstring::NetstringDecoder;
use userli_postfix_adapter::protocol::policy::PolicyDecoder;

/// The client-to-server bytes of every connection a [`Recorder`] relayed.
type Captured = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A TCP proxy on a loopback port that relays to `upstream` and keeps a copy of
/// what each client sent.
struct Recorder {
    addr: String,
    captured: Captured,
}

impl Recorder {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
        let addr = listener.local_addr().unwrap().to_string();
        let captured: Captured = Arc::default();
        let (upstream, all) = (upstream.to_owned(), captured.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let server = TcpStream::connect(&upstream).expect("adapter listener");
                let copy = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(copy.clone());
                relay(client, server, copy);
            }
        });
        Self { addr, captured }
    }

    /// Each connection's bytes, once every relay has gone quiet.
    fn streams(&self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        let all = self.captured.lock().unwrap();
        all.iter().map(|c| c.lock().unwrap().clone()).collect()
    }
}

fn relay(mut client: TcpStream, mut server: TcpStream, copy: Arc<Mutex<Vec<u8>>>) {
    let (mut client_out, mut server_in) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_in, &mut client_out);
        let _ = client_out.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    copy.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server.shutdown(Shutdown::Write);
    });
}

/// Seeds per fuzz target, de-duplicated.
#[derive(Default)]
struct Seeds {
    by_target: Vec<(&'static str, BTreeSet<Vec<u8>>)>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, seed: Vec<u8>) {
        match self.by_target.iter_mut().find(|(t, _)| *t == target) {
            Some((_, set)) => {
                set.insert(seed);
            }
            None => self.by_target.push((target, BTreeSet::from([seed]))),
        }
    }

    fn count(&self, target: &str) -> usize {
        self.by_target
            .iter()
            .find(|(t, _)| *t == target)
            .map_or(0, |(_, s)| s.len())
    }

    fn write(&self, root: &Path) {
        for (target, seeds) in &self.by_target {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for seed in seeds {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                seed.hash(&mut hasher);
                std::fs::write(dir.join(format!("postfix-{:016x}", hasher.finish())), seed)
                    .unwrap();
            }
        }
    }
}

#[test]
#[ignore = "needs postfix and swaks"]
fn real_postfix_traffic_becomes_fuzz_seeds() {
    let adapter = Adapter::spawn_demo(&[]);
    let socketmap = Recorder::start(&adapter.socketmap);
    let policy = Recorder::start(adapter.policy.as_deref().expect("policy listener"));
    let sasl = Recorder::start(adapter.sasl.as_deref().expect("SASL listener"));
    let main_cf = format!(
        "smtpd_sasl_type = dovecot\n\
         smtpd_sasl_path = inet:{sasl}\n\
         smtpd_sasl_auth_enable = yes\n\
         smtpd_tls_auth_only = no\n\
         smtpd_sender_login_maps = socketmap:inet:{map}:senders\n\
         smtpd_sender_restrictions = reject_sender_login_mismatch\n\
         smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
         smtpd_end_of_data_restrictions = check_policy_service inet:{policy}\n",
        sasl = sasl.addr,
        map = socketmap.addr,
        policy = policy.addr,
    );
    let postfix = PrivatePostfix::start_with(&socketmap.addr, &main_cf);

    let login = [
        "--auth-user",
        "user@example.org",
        "--auth-password",
        "password",
    ];
    for (mechanism, extra) in [
        ("PLAIN", None),
        ("LOGIN", None),
        ("PLAIN", Some("--auth-plaintext")),
    ] {
        let mut args = vec![
            "--auth",
            mechanism,
            "--from",
            "user@example.org",
            "--to",
            "alias@example.org",
        ];
        args.extend_from_slice(&login);
        args.extend(extra);
        let t = postfix.swaks(&args);
        assert_eq!(t.exit, Some(0), "authenticated submission:\n{}", t.text);
    }
    let wrong = postfix.swaks(&[
        "--auth",
        "LOGIN",
        "--auth-user",
        "User+tag@Example.org",
        "--auth-password",
        "wrong",
        "--quit-after",
        "AUTH",
    ]);
    assert_eq!(
        wrong.exit,
        Some(28),
        "wrong password refused:\n{}",
        wrong.text
    );
    for rcpt in [
        "user2+list@example.org",
        "nobody@example.org",
        "someone@elsewhere.test",
    ] {
        postfix.rcpt(rcpt);
    }
    for (map, key) in [
        ("mailbox", "user@example.org"),
        ("domain", "example.com"),
        ("alias", "alias@example.org"),
        ("senders", "alias@example.org"),
        ("alias", "Caps+Tag@EXAMPLE.ORG"),
    ] {
        let out = postmap_client::postmap(key, &format!("socketmap:inet:{}:{map}", socketmap.addr));
        assert!(out.status.code().is_some(), "postmap ran");
    }

    let mut seeds = Seeds::default();
    let mut maps = BTreeSet::new();
    for stream in socketmap.streams() {
        let decoder = NetstringDecoder::new(10_000);
        let mut buf = BytesMut::from(&stream[..]);
        while let Some(payload) = decoder.decode(&mut buf).expect("Postfix sends netstrings") {
            let text = String::from_utf8_lossy(&payload).into_owned();
            maps.insert(text.split(' ').next().unwrap_or_default().to_owned());
            seeds.add("socketmap_request", payload.to_vec());
        }
        assert!(buf.is_empty(), "a partial netstring was left: {buf:?}");
        // 0xff: the adapter's maximum length, 4-byte reads.
        seeds.add("netstring", [&[0xff][..], &stream].concat());
    }
    for map in ["alias", "domain", "mailbox", "senders"] {
        assert!(maps.contains(map), "Postfix looked up {map}: {maps:?}");
    }

    let mut end_of_message = 0;
    for stream in policy.streams() {
        let mut decoder = PolicyDecoder::default();
        let mut buf = BytesMut::from(&stream[..]);
        while let Some(request) = decoder
            .decode(&mut buf)
            .expect("Postfix sends policy requests")
        {
            if request.value("protocol_state") == "END-OF-MESSAGE" {
                assert_eq!(request.value("sasl_username"), "user@example.org");
                end_of_message += 1;
            }
        }
        // 0x8f: the adapter's default limits, 16-byte reads.
        seeds.add("policy_request", [&[0x8f][..], &stream].concat());
    }
    assert!(
        end_of_message >= 3,
        "one policy request per message: {end_of_message}"
    );

    let mut first_words = BTreeSet::new();
    for stream in sasl.streams() {
        for line in stream.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
            first_words.insert(String::from_utf8_lossy(fields[0]).into_owned());
            if fields[0] == b"AUTH" {
                first_words.insert(format!("AUTH {}", String::from_utf8_lossy(fields[2])));
            }
            seeds.add("dovecot_line", line.to_vec());
        }
    }
    for word in ["VERSION", "CPID", "AUTH PLAIN", "AUTH LOGIN", "CONT"] {
        assert!(
            first_words.contains(word),
            "Postfix sent {word}: {first_words:?}"
        );
    }

    for (target, check) in [
        ("netstring", checks::netstring as fn(&[u8])),
        ("socketmap_request", checks::socketmap_request),
        ("policy_request", checks::policy_request),
        ("dovecot_line", checks::dovecot_line),
    ] {
        assert!(seeds.count(target) > 0, "no seeds for {target}");
        for (_, set) in seeds.by_target.iter().filter(|(t, _)| *t == target) {
            set.iter().for_each(|seed| check(seed));
        }
    }
    if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
        seeds.write(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds"));
    }
    drop(postfix);
}
