//! `LOOKUP_BACKEND=http` through the binary: the userli API described by
//! `examples/http-backend/userli.toml` answers `query`, and `check-config` names
//! a broken description's setting.

use std::path::Path;
use std::process::Command;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/http-backend/userli.toml")
}

fn adapter(config: &Path, base_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_userli-postfix-adapter"));
    cmd.env_clear()
        .env("CONFIG_FILE", config)
        .env("USERLI_BASE_URL", base_url)
        .env("USERLI_TOKEN", "t0ken");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_userli_description_answers_lookups_through_the_binary() {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/alias/alias@example.org"))
        .and(wiremock::matchers::header("authorization", "Bearer t0ken"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!(["user2@example.org"])),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/postfix/mailbox/down@example.org"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&api)
        .await;
    let uri = api.uri();
    let config = example();
    let run = |map: &str, key: &str| {
        let out = adapter(&config, &uri)
            .args(["query", map, key])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (code, reply) = tokio::task::block_in_place(|| run("alias", "alias@example.org"));
    assert_eq!((code, reply.as_str()), (Some(0), "OK user2@example.org"));
    let (code, reply) = tokio::task::block_in_place(|| run("mailbox", "down@example.org"));
    assert_eq!(code, Some(75), "TEMP, never NOTFOUND: {reply}");
    assert!(reply.starts_with("TEMP"), "{reply}");
}

#[test]
fn check_config_names_the_broken_part_of_the_description() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "lookup_backend = \"http\"\n[http.alias]\nurl = \"${USERLI_BASE_URL}/alias/{key}\"\nanswer = { pointer = \"to\" }\n",
    )
    .unwrap();
    let out = adapter(&broken, "http://127.0.0.1:9")
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http.alias.answer.pointer"), "{stderr}");

    let good = adapter(&example(), "http://127.0.0.1:9")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    // Without the variable the description needs, the message says which.
    let mut cmd = adapter(&example(), "http://127.0.0.1:9");
    cmd.env_remove("USERLI_TOKEN");
    let out = cmd.arg("check-config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("USERLI_TOKEN_FILE"), "{stderr}");
}
