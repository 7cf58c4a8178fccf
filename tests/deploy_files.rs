//! The deployment files verified by the tools that consume them.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
#[ignore = "needs systemd-analyze (package systemd)"]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary just built.
    let unit = read("deploy/systemd/userli-postfix-adapter.service").replace(
        "/usr/local/bin/userli-postfix-adapter",
        env!("CARGO_BIN_EXE_userli-postfix-adapter"),
    );
    let service = dir.path().join("userli-postfix-adapter.service");
    std::fs::write(&service, unit).unwrap();
    let mut units = vec![service];
    for socket in ["socketmap", "policy", "sasl"] {
        let name = format!("userli-postfix-adapter-{socket}.socket");
        let path = dir.path().join(&name);
        std::fs::write(&path, read(&format!("deploy/systemd/{name}"))).unwrap();
        units.push(path);
    }
    let verify = |units: &[std::path::PathBuf]| {
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(units)
            // The drop-in is found next to the units (a trailing ':' keeps the
            // built-in search path for the units they refer to).
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .output()
            .expect("systemd-analyze runs")
    };
    let check = |out: std::process::Output, what: &str| {
        let diagnostics = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {diagnostics}");
        assert!(
            diagnostics.trim().is_empty(),
            "{what}: systemd-analyze found problems:\n{diagnostics}"
        );
    };
    check(verify(&units), "service and sockets");
    let drop_in = dir.path().join("userli-postfix-adapter.service.d");
    std::fs::create_dir(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("socket-activation.conf"),
        read("deploy/systemd/socket-activation.conf"),
    )
    .unwrap();
    check(verify(&units), "with the socket-activation drop-in");
    // The drop-in is really read: a broken line in it is reported.
    std::fs::write(drop_in.join("broken.conf"), "[Service]\nnot a setting\n").unwrap();
    let out = verify(&units);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.conf"),
        "drop-ins are not being verified"
    );
}

#[test]
fn env_example_uses_only_known_settings() {
    let text = read("deploy/systemd/userli-postfix-adapter.env");
    let mut checked = 0;
    for line in text.lines().map(|l| l.trim_start_matches("# ").trim()) {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
            assert!(
                userli_postfix_adapter::config::settings::find(name).is_some(),
                "unknown setting {name} in the env example"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} settings found in the env example"
    );
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

fn yaml_documents(rel: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn assert_known(name: &str, file: &str) {
    assert!(
        userli_postfix_adapter::config::settings::find(name).is_some(),
        "{file} sets unknown setting {name}"
    );
}

#[test]
fn compose_file_parses_and_wires_every_service() {
    let compose = &yaml_documents("docker-compose.yml")[0];
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "mariadb",
        "userli",
        "webserver",
        "adapter",
        "postfix",
        "adapter-demo",
        "postfix-demo",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    for adapter in ["adapter", "adapter-demo"] {
        let env = services[adapter]["environment"].as_mapping().unwrap();
        for key in env.keys() {
            assert_known(key.as_str().unwrap(), "docker-compose.yml");
        }
        for listener in [
            "SOCKETMAP_LISTEN_ADDR",
            "POLICY_LISTEN_ADDR",
            "SASL_LISTEN_ADDR",
        ] {
            assert!(env.contains_key(listener), "{adapter} sets {listener}");
        }
    }
    // Only the demo publishes an adapter port to the host (for postmap -q from the
    // host); the userli stack's adapter is reached by its Postfix over the compose
    // network alone.
    assert!(
        services["adapter"].get("ports").is_none(),
        "the adapter publishes no port to the host"
    );
    for port in services["adapter-demo"]["ports"].as_sequence().unwrap() {
        assert!(
            port.as_str().unwrap().starts_with("127.0.0.1:"),
            "demo ports are on the host's loopback only"
        );
    }
    let main_cf = read("docker/postfix/main.cf");
    for wiring in [
        "socketmap:inet:@ADAPTER@:10001:alias",
        "inet:@ADAPTER@:10004",
        "inet:@ADAPTER@:10003",
    ] {
        assert!(main_cf.contains(wiring), "main.cf lacks {wiring}");
    }
}

#[test]
fn kubernetes_example_parses_with_probes_secret_and_known_settings() {
    let docs = yaml_documents("deploy/kubernetes/userli-postfix-adapter.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    // No Secret: re-applying the manifest must never overwrite the real token.
    assert_eq!(kinds, ["Deployment", "Service", "NetworkPolicy"]);
    let secret = yaml_documents("deploy/kubernetes/secret.example.yaml");
    assert_eq!(secret.len(), 1);
    assert_eq!(secret[0]["kind"].as_str(), Some("Secret"));
    let docs = [
        secret[0].clone(),
        docs[0].clone(),
        docs[1].clone(),
        docs[2].clone(),
    ];
    let volumes = docs[1]["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == docs[0]["metadata"]["name"]),
        "the Deployment mounts the Secret of that name"
    );
    // Nothing leaves the cluster, and only Postfix pods reach the protocol ports.
    assert_eq!(docs[2]["spec"]["type"].as_str(), Some("ClusterIP"));
    let policy = &docs[3]["spec"];
    assert_eq!(
        policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("userli-postfix-adapter")
    );
    let rules = policy["ingress"].as_sequence().unwrap();
    let ports_of = |rule: &serde_yaml::Value| -> Vec<u64> {
        rule["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        rules[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("postfix")
    );
    assert_eq!(ports_of(&rules[0]), [10001, 10003, 10004]);
    assert_eq!(ports_of(&rules[1]), [10002], "the metrics port is apart");
    assert_eq!(rules.len(), 2, "no other way in");
    let container = &docs[1]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    // Readiness means "can serve": /ready would take every replica out during a
    // userli outage, when their cached answers should keep mail flowing.
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/serving")
    );
    let env = container["env"].as_sequence().unwrap();
    assert!(env.len() >= 5, "the example configures the adapter");
    for var in env {
        assert_known(var["name"].as_str().unwrap(), "the Kubernetes example");
    }
    assert!(
        !read("deploy/kubernetes/userli-postfix-adapter.yaml").contains("USERLI_TOKEN\n"),
        "the token comes from the Secret, not a plain variable"
    );
}

#[test]
#[ignore = "needs postfix (postconf)"]
fn compose_postfix_configuration_is_accepted_by_postconf() {
    let dir = tempfile::tempdir().unwrap();
    let main_cf = read("docker/postfix/main.cf").replace("@ADAPTER@", "127.0.0.1");
    std::fs::write(dir.path().join("main.cf"), main_cf).unwrap();
    // A private master.cf: tests never read the machine's /etc/postfix.
    std::fs::write(
        dir.path().join("master.cf"),
        "smtp inet n - n - - smtpd\npickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n",
    )
    .unwrap();
    let out = std::process::Command::new("postconf")
        .arg("-c")
        .arg(dir.path())
        .arg("-n")
        .output()
        .expect("postconf runs");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warnings}");
    assert!(!warnings.contains("warning"), "{warnings}");
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains("smtpd_sasl_path = inet:127.0.0.1:10004"),
        "{effective}"
    );
}
