//! Keeps the README, Dockerfile and compose file true to the code.

use std::path::Path;

use userli_postfix_adapter::config::settings::{SETTINGS, reference_markdown};

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn readme_configuration_reference_is_current() {
    let readme = read("README.md");
    let start = readme
        .find("<!-- config-reference:start -->\n")
        .expect("start marker")
        + 32;
    let end = readme
        .find("<!-- config-reference:end -->")
        .expect("end marker");
    assert_eq!(
        &readme[start..end],
        reference_markdown(),
        "README reference is stale: regenerate it with `userli-postfix-adapter config-reference`"
    );
}

#[test]
fn readme_first_screen_has_the_two_setup_commands() {
    let readme = read("README.md");
    let first_screen: String = readme.lines().take(25).collect::<Vec<_>>().join("\n");
    assert!(first_screen.contains("./scripts/demo.sh"));
    assert!(first_screen.contains("./scripts/test.sh"));
    assert!(
        first_screen.contains("Rust 1.88"),
        "says which Rust it needs"
    );
    // The demo needs no system package (it used to install a whole MTA).
    let demo = read("scripts/demo.sh");
    assert!(!demo.contains("install-deps") && !demo.contains("apt-get"));
    assert!(
        demo.contains(" query "),
        "shows answers with the adapter's own client"
    );
    // The test line names every package the test suite's run of the script may
    // install (the `*)` case: what `scripts/test.sh` asks for).
    let install = read("scripts/install-deps.sh");
    let test_line = first_screen
        .lines()
        .find(|l| l.starts_with("./scripts/test.sh"))
        .unwrap();
    let wanted = install
        .lines()
        .find_map(|l| l.trim().strip_prefix("*) wanted=("))
        .expect("the default case of install-deps.sh");
    fn package_of(command: &str) -> &str {
        match command {
            "postmap" => "postfix",
            "promtool" => "prometheus",
            "systemd-analyze" => "systemd",
            "pg_ctlcluster" => "postgresql",
            "mariadbd" => "mariadb-server",
            other => other,
        }
    }
    let commands: Vec<&str> = wanted
        .split(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(commands.len() >= 7, "{commands:?}");
    for command in commands {
        let package = package_of(command);
        assert!(install.contains(&format!("{command}) echo {package}")) || package == command);
        assert!(
            test_line.contains(package),
            "the README's test line misses {package}"
        );
    }
    let test_script = read("scripts/test.sh");
    assert!(test_script.contains("--include-ignored"));
    assert!(read(".ci/run").contains("scripts/test.sh"));
}

/// Every metric family a running server exports (socketmap, metrics, policy and
/// SASL all on) is documented in the README.
#[tokio::test]
async fn readme_lists_every_metric_the_engine_exports() {
    use std::sync::Arc;
    use userli_postfix_adapter::config::{Config, ListenAddr};
    let readme = read("README.md");
    let state = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.listeners.socketmap = ListenAddr::parse("127.0.0.1:0").unwrap();
    config.listeners.metrics = ListenAddr::parse("127.0.0.1:0").unwrap();
    config.listeners.policy = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    config.listeners.sasl = Some(ListenAddr::parse("127.0.0.1:0").unwrap());
    config.policy.state_directory = state.path().to_owned();
    let metrics = userli_postfix_adapter::metrics::Metrics::new().unwrap();
    let backend = Arc::new(postfix_adapter_backend::testkit::StubBackend::new());
    let server = userli_postfix_adapter::Server::bind(config, backend, metrics.clone())
        .await
        .unwrap();
    let text = metrics.render();
    drop(server);
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 40, "{text}");
    for name in families {
        if name.starts_with("process_") {
            continue;
        }
        assert!(
            readme.contains(&format!("`{name}`")),
            "README misses metric {name}"
        );
    }
}

#[test]
fn compose_uses_only_known_settings() {
    let compose = read("docker-compose.yml");
    let mut in_env = false;
    for line in compose.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("environment:") {
            in_env = true;
            continue;
        }
        if in_env && indent <= 4 {
            in_env = false;
        }
        if !in_env {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        if key.starts_with("USERLI_")
            || key.starts_with("SOCKETMAP_")
            || key.starts_with("LOOKUP_")
            || key.starts_with("FIXTURE_")
            || key.starts_with("METRICS_")
            || key.starts_with("POSTFIX_")
            || key.starts_with("LOG_")
        {
            assert!(
                SETTINGS.iter().any(|s| s.env == key),
                "compose sets unknown {key}"
            );
        }
    }
    assert!(compose.contains("/usr/share/userli-postfix-adapter/demo.toml"));
}

#[test]
fn dockerfile_ships_the_binary_as_non_root_with_the_demo_data() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("target/release/userli-postfix-adapter"));
    assert!(dockerfile.contains("USER 10001"));
    assert!(
        dockerfile.contains(
            "COPY examples/fixtures/demo.toml /usr/share/userli-postfix-adapter/demo.toml"
        )
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/fixtures/demo.toml")
            .exists()
    );
    let version = read("Cargo.toml");
    assert!(
        dockerfile.contains("rust:1.95"),
        "builder image matches the toolchain"
    );
    assert!(version.contains("rust-version"));
}

/// Every entry of the README's contents leads to a heading (a lost heading once
/// swallowed a whole section into a code block).
#[test]
fn readme_contents_point_at_headings() {
    let readme = read("README.md");
    let anchor = |heading: &str| -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    };
    let anchors: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let contents = readme
        .split("## Contents")
        .nth(1)
        .expect("a contents section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut entries = 0;
    for line in contents.lines() {
        if let Some(target) = line.split("](#").nth(1) {
            let target = target.trim_end_matches(')');
            assert!(
                anchors.iter().any(|a| a == target),
                "no heading for #{target}"
            );
            entries += 1;
        }
    }
    assert!(entries >= 10, "{entries} entries");
    // Code fences are balanced: a missing one turns the rest into code.
    let fences = readme
        .lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count();
    assert_eq!(fences % 2, 0, "an unclosed code block in the README");
}
