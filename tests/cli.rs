//! The binary as an operator runs it: subcommands, exit codes, signals.

mod common;

use std::process::Command;

use common::{Adapter, Client, demo_fixture, free_loopback_addr};

fn adapter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_userli-postfix-adapter"));
    cmd.env_clear();
    cmd
}

fn fixture_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LOOKUP_BACKEND", "fixture")
        .env("FIXTURE_PATH", demo_fixture())
}

#[test]
fn check_config_redacts_the_token() {
    let out = adapter()
        .arg("check-config")
        .env("USERLI_TOKEN", "super-secret-token")
        .env("LOOKUP_TIMEOUT", "5s")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("super-secret-token"));
    assert!(
        text.contains("USERLI_TOKEN=<redacted>  # environment"),
        "{text}"
    );
    assert!(text.contains("LOOKUP_TIMEOUT=5s  # environment"));
    assert!(text.contains("SOCKETMAP_LISTEN_ADDR=:10001  # default"));
}

#[test]
fn bad_configuration_exits_1_with_one_line_naming_the_variable() {
    for (name, value) in [
        ("LOOKUP_TIMEOUT", "soon"),
        ("SOCKETMAP_LISTEN_ADDR", "nowhere"),
        ("LOG_LEVEL", "loud"),
    ] {
        let out = adapter()
            .env("USERLI_TOKEN", "t")
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(name), "{err}");
    }
    let out = adapter().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("USERLI_TOKEN is required"));
}

#[test]
fn query_prints_the_reply_with_an_exit_code_per_status() {
    for (map, key, reply, code) in [
        ("mailbox", "user@example.org", "OK 1", 0),
        ("alias", "alias@example.org", "OK user2@example.org", 0),
        ("mailbox", "nobody@example.org", "NOTFOUND", 1),
        ("nomap", "x", "PERM Unknown map name", 78),
    ] {
        let out = fixture_env(&mut adapter())
            .args(["query", map, key])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim_end(), reply);
        assert_eq!(out.status.code(), Some(code), "{map} {key}");
    }
    let dead = free_loopback_addr();
    let out = adapter()
        .env("USERLI_TOKEN", "t")
        .env("USERLI_BASE_URL", format!("http://{dead}"))
        .args(["query", "domain", "example.org"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        "TEMP Error fetching domain"
    );
    assert_eq!(out.status.code(), Some(75));
}

#[test]
fn help_lists_every_setting_and_version_works() {
    let out = adapter().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for s in userli_postfix_adapter::config::settings::SETTINGS {
        assert!(text.contains(s.env), "--help misses {}", s.env);
    }
    // The long help carries every meaning, from the same table as the README.
    let out = adapter().arg("--help").output().unwrap();
    let long = String::from_utf8(out.stdout).unwrap();
    let squeeze = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let long = squeeze(&long);
    for s in userli_postfix_adapter::config::settings::SETTINGS {
        let first_words: String = s.help.chars().filter(|&c| c != '`' && c != '*').collect();
        let first_words = squeeze(&first_words)
            .split(' ')
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            long.contains(&first_words),
            "--help misses the meaning of {}",
            s.env
        );
    }
    // How to flush the caches without a restart.
    for help in [&text, &long] {
        assert!(help.contains("SIGHUP"), "{help}");
        assert!(help.contains("drops every cached SMTP login"), "{help}");
    }
    let out = adapter().arg("--version").output().unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_listener_that_cannot_bind_is_fatal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = fixture_env(&mut adapter())
        .env("SOCKETMAP_LISTEN_ADDR", &addr)
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("POLICY_LISTEN_ADDR", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    // One line, naming the setting that chose the port, the cause once, the fix.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("SOCKETMAP_LISTEN_ADDR: cannot listen on {addr}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("choose another address in SOCKETMAP_LISTEN_ADDR"),
        "{stderr}"
    );
}

/// A state directory the user may not write names the setting and both ways
/// out, once (as root, a directory below a regular file stands in for it).
#[test]
fn an_unusable_state_directory_says_how_to_fix_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = fixture_env(&mut adapter())
        .env("SOCKETMAP_LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("POLICY_LISTEN_ADDR", "127.0.0.1:0")
        .env("STATE_DIRECTORY", file.join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("userli-postfix-adapter: STATE_DIRECTORY: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
    assert!(stderr.contains("POLICY_LISTEN_ADDR=off"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("Not a directory"),
        "said once, on stderr: {stdout}"
    );
}

/// `check-config | head -1`: the reader leaves early, the adapter does not panic.
#[test]
fn check_config_into_a_closed_pipe_exits_0() {
    use std::io::Read;
    let mut child = fixture_env(&mut adapter())
        .arg("check-config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Gone before the adapter has read its configuration, so its first write
    // meets a closed pipe (EPIPE), as `head -1` leaves one behind.
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_the_fixture_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.toml");
    let original = std::fs::read_to_string(demo_fixture()).unwrap();
    std::fs::write(&file, &original).unwrap();
    let adapter = Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", file.to_str().unwrap()),
    ]);
    let mut client = Client::tcp(adapter.socketmap.parse().unwrap()).await;
    assert_eq!(client.ask("mailbox new@example.org").await, "NOTFOUND");

    std::fs::write(
        &file,
        format!("{original}\n[[users]]\nemail = \"new@example.org\"\n"),
    )
    .unwrap();
    adapter.signal("HUP");
    adapter.wait_for_log("backend reloaded");
    assert_eq!(
        client.ask("mailbox new@example.org").await,
        "OK 1",
        "same connection, new data"
    );

    std::fs::write(&file, "domains = [\"broken").unwrap();
    adapter.signal("HUP");
    let line = adapter.wait_for_log("backend reload failed");
    assert_eq!(line["level"], "error");
    assert_eq!(
        client.ask("mailbox new@example.org").await,
        "OK 1",
        "old data kept"
    );

    drop(client);
    let status = adapter.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let adapter = Adapter::spawn(&[
        ("LOOKUP_BACKEND", "fixture"),
        ("FIXTURE_PATH", demo_fixture().to_str().unwrap()),
    ]);
    let mut idle = Client::tcp(adapter.socketmap.parse().unwrap()).await;
    assert_eq!(idle.ask("domain example.org").await, "OK 1");
    let status = adapter.terminate();
    assert!(status.success(), "{status:?}");
    assert!(idle.until_closed().await.is_empty());
}

/// The child's exit status, or a panic (after killing it) when it has not exited
/// within [`common::READ_LIMIT`].
fn wait_with_limit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + common::READ_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the process did not exit in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `systemd-socket-activate` (package systemd) listening on `sockets` with `names`,
/// starting the adapter on the first connection with `env`.
fn socket_activated(
    state: &std::path::Path,
    sockets: &[String],
    names: &str,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new("systemd-socket-activate");
    for socket in sockets {
        cmd.arg("-l").arg(socket);
    }
    cmd.arg(format!("--fdname={names}"));
    let fixture = demo_fixture();
    let fixture = format!("FIXTURE_PATH={}", fixture.display());
    let state = format!("STATE_DIRECTORY={}", state.display());
    for var in [
        "LOOKUP_BACKEND=fixture",
        &fixture,
        &state,
        "METRICS_LISTEN_ADDR=127.0.0.1:0",
    ] {
        cmd.arg("-E").arg(var);
    }
    for (k, v) in env {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.arg(env!("CARGO_BIN_EXE_userli-postfix-adapter"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate runs (package systemd)")
}

/// Connects to `addr` once it listens (the activator binds after it starts).
async fn connect_when_listening(addr: &str) -> tokio::net::TcpStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{addr}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs systemd-socket-activate (package systemd)"]
async fn socket_activation_serves_the_sockets_systemd_passes_and_leaves_them_in_place() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_loopback_addr().to_string();
    let sasl = dir.path().join("auth");
    let mut child = socket_activated(
        &dir.path().join("state"),
        &[tcp.clone(), sasl.display().to_string()],
        "socketmap:sasl",
        &[
            ("SOCKETMAP_LISTEN_ADDR", "systemd:socketmap"),
            ("SASL_LISTEN_ADDR", "systemd:sasl"),
            ("POLICY_LISTEN_ADDR", "off"),
        ],
    );
    // The first lookup starts the adapter; it is answered on the passed socket.
    let mut map = Client::new(connect_when_listening(&tcp).await);
    assert_eq!(map.ask("mailbox user@example.org").await, "OK 1");
    // The UNIX socket systemd created serves SASL.
    let auth = tokio::net::UnixStream::connect(&sasl).await.unwrap();
    let mut first = String::new();
    tokio::time::timeout(
        common::READ_LIMIT,
        tokio::io::BufReader::new(auth).read_line(&mut first),
    )
    .await
    .expect("the SASL handshake within the read limit")
    .unwrap();
    assert_eq!(first, "VERSION\t1\t2\n");
    // SIGTERM: a clean exit that leaves systemd's socket file alone.
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait_with_limit(&mut child);
    assert!(exited.success(), "{exited:?}");
    assert!(sasl.exists(), "the socket file belongs to systemd");

    // A name systemd did not pass is a start-up error naming it and what was passed.
    let tcp = free_loopback_addr().to_string();
    let mut child = socket_activated(
        &dir.path().join("state"),
        std::slice::from_ref(&tcp),
        "socketmap",
        &[
            ("SOCKETMAP_LISTEN_ADDR", "systemd:lookups"),
            ("POLICY_LISTEN_ADDR", "off"),
        ],
    );
    let mut trigger = connect_when_listening(&tcp).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(common::READ_LIMIT, trigger.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the failing adapter did not close the connection"
    );
    let exited = wait_with_limit(&mut child);
    assert_eq!(exited.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("systemd:lookups") && stderr.contains("LISTEN_FDNAMES: \"socketmap\""),
        "{stderr}"
    );
}
