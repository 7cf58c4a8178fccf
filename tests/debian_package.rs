//! The Debian package, as an operator meets it: built by `scripts/package-deb.sh`,
//! inspected with `dpkg-deb`, installed with `dpkg -i` on this machine, its unit
//! checked by `systemd-analyze verify`, its binary run, reinstalled over an edited
//! conffile, and purged without leftovers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PACKAGE: &str = "userli-postfix-adapter";
const ENV_FILE: &str = "/etc/userli-postfix-adapter/userli-postfix-adapter.env";
const UNIT: &str = "/lib/systemd/system/userli-postfix-adapter.service";

/// The settings of the installed env file, as systemd's EnvironmentFile reads them.
fn env_file_vars() -> Vec<(String, String)> {
    std::fs::read_to_string(ENV_FILE)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
#[ignore = "needs dpkg, systemd-analyze and root (installs the package on this machine)"]
fn the_package_installs_verifies_runs_keeps_its_conffile_and_purges_cleanly() {
    // A leftover from an interrupted run would hide what this install does.
    let _ = run("dpkg", &["--purge", PACKAGE]);

    let built = ok("scripts/package-deb.sh", &[]);
    let deb: PathBuf = root().join(
        built
            .lines()
            .rev()
            .find(|l| l.ends_with(".deb"))
            .expect("the script names the package"),
    );
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{PACKAGE}_{}", env!("CARGO_PKG_VERSION")))
            && name.ends_with("_amd64.deb"),
        "{name}"
    );
    let deb = deb.to_str().unwrap();

    let info = ok("dpkg-deb", &["--info", deb]);
    for field in [
        "Package: userli-postfix-adapter",
        "Section: mail",
        "adduser",
    ] {
        assert!(info.contains(field), "control lacks {field}:\n{info}");
    }
    let listing = ok("dpkg-deb", &["--contents", deb]);
    for (path, mode) in [
        ("./usr/bin/userli-postfix-adapter", "-rwxr-xr-x"),
        (
            "./lib/systemd/system/userli-postfix-adapter.service",
            "-rw-r--r--",
        ),
        (
            "./lib/systemd/system/userli-postfix-adapter-sasl.socket",
            "-rw-r--r--",
        ),
        (
            "./etc/userli-postfix-adapter/userli-postfix-adapter.env",
            "-rw-------",
        ),
        (
            "./usr/share/doc/userli-postfix-adapter/README.md",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/userli-postfix-adapter/copyright",
            "-rw-r--r--",
        ),
        (
            "./usr/share/doc/userli-postfix-adapter/userli-postfix-adapter.help.txt",
            "-rw-r--r--",
        ),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} ({mode}) missing:\n{listing}"
        );
    }

    ok("dpkg", &["-i", deb]);
    let status = ok("dpkg-query", &["-W", "-f=${Status} ${Conffiles}", PACKAGE]);
    assert!(status.starts_with("install ok installed"), "{status}");
    assert!(
        status.contains(ENV_FILE),
        "the env file is a conffile: {status}"
    );
    // The system user, and the SASL socket directory in Postfix's chroot.
    let user = ok("getent", &["passwd", PACKAGE]);
    assert!(user.contains("/nonexistent"), "{user}");
    if Path::new("/var/spool/postfix").is_dir() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata("/var/spool/postfix/userli-postfix-adapter").unwrap();
        assert_eq!(dir.mode() & 0o7777, 0o2750);
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/userli-postfix-adapter"));
    assert!(unit.contains(&format!("EnvironmentFile={ENV_FILE}")));
    assert!(
        unit.contains("Documentation=file:///usr/share/doc/userli-postfix-adapter/README.md"),
        "documentation of this project, not the Go one"
    );
    assert!(unit.contains("\nUser=userli-postfix-adapter\n"));

    let verify = run(
        "systemd-analyze",
        &[
            "verify",
            "--man=no",
            UNIT,
            "/lib/systemd/system/userli-postfix-adapter-sasl.socket",
        ],
    );
    let diagnostics = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{diagnostics}");
    assert!(
        diagnostics.trim().is_empty(),
        "systemd-analyze: {diagnostics}"
    );

    // The installed binary with the installed settings.
    let check = Command::new("/usr/bin/userli-postfix-adapter")
        .arg("check-config")
        .env_clear()
        .envs(env_file_vars())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(shown.contains("# configuration is valid"), "{shown}");
    assert!(!shown.contains("change-me"), "the token is never shown");

    // An operator's edit survives reinstalling (or upgrading) the package.
    let edited = std::fs::read_to_string(ENV_FILE)
        .unwrap()
        .replace("USERLI_TOKEN=change-me", "USERLI_TOKEN=the-operators-token");
    std::fs::write(ENV_FILE, &edited).unwrap();
    let reinstall = Command::new("dpkg")
        .args(["-i", "--force-confold", deb])
        .output()
        .unwrap();
    assert!(reinstall.status.success());
    assert_eq!(
        std::fs::read_to_string(ENV_FILE).unwrap(),
        edited,
        "conffile kept"
    );

    ok("dpkg", &["--purge", PACKAGE]);
    for gone in [
        "/usr/bin/userli-postfix-adapter",
        UNIT,
        ENV_FILE,
        "/etc/userli-postfix-adapter",
        "/var/spool/postfix/userli-postfix-adapter",
        "/usr/share/doc/userli-postfix-adapter",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    let status = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(!status.contains("installed"), "{status}");
}
