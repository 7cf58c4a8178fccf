//! The deployment files verified by the tools that consume them.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
#[ignore = "needs systemd-analyze (package systemd)"]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary just built.
    let unit = read("deploy/systemd/userli-postfix-adapter.service").replace(
        "/usr/local/bin/userli-postfix-adapter",
        env!("CARGO_BIN_EXE_userli-postfix-adapter"),
    );
    let path = dir.path().join("userli-postfix-adapter.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let diagnostics = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{diagnostics}");
    assert!(
        diagnostics.trim().is_empty(),
        "systemd-analyze found problems:\n{diagnostics}"
    );
}

#[test]
fn env_example_uses_only_known_settings() {
    let text = read("deploy/systemd/userli-postfix-adapter.env");
    for line in text.lines().map(|l| l.trim_start_matches("# ").trim()) {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
            assert!(
                userli_postfix_adapter::config::settings::find(name).is_some(),
                "unknown setting {name} in the env example"
            );
        }
    }
}

#[test]
fn env_example_is_a_valid_configuration() {
    let text = read("deploy/systemd/userli-postfix-adapter.env");
    let env = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sources = userli_postfix_adapter::config::Sources { file: None, env };
    userli_postfix_adapter::config::load(&sources).expect("the example configuration is valid");
}
