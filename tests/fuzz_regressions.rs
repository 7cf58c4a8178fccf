//! Replays the fuzz targets' seed corpora (`fuzz/seeds/`, captured from real Postfix
//! traffic by `tests/fuzz_seeds_from_postfix.rs`) and every past finding
//! (`fuzz/regressions/`) through the same checks the fuzzers run
//! (`fuzz/checks.rs`), so `cargo test` keeps them fixed without a fuzzing toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// A fuzz target's name and the check it runs.
type Target = (&'static str, fn(&[u8]));

/// Each fuzz target and its check.
const TARGETS: [Target; 4] = [
    ("netstring", checks::netstring),
    ("socketmap_request", checks::socketmap_request),
    ("policy_request", checks::policy_request),
    ("dovecot_line", checks::dovecot_line),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut replayed = 0;
    for (target, check) in TARGETS {
        for file in files(&root.join(target)) {
            let input = std::fs::read(&file).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "{target} fails on {}", file.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_seed_from_real_postfix_traffic_passes_the_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, _) in TARGETS {
        assert!(
            !files(&root.join(target)).is_empty(),
            "no seeds for {target}: run UPDATE_FUZZ_SEEDS=1 cargo test --test \
             fuzz_seeds_from_postfix -- --include-ignored"
        );
    }
    assert!(replay("seeds") >= TARGETS.len());
}

#[test]
fn every_past_finding_stays_fixed() {
    // No findings so far; scripts/fuzz.sh files them here. The folder itself must
    // exist: a missing one would read as "no findings" and this test could never
    // fail.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    assert!(
        root.join("README.md").is_file(),
        "{} is missing",
        root.display()
    );
    for entry in std::fs::read_dir(&root).expect("readable fuzz/regressions") {
        let path = entry.expect("readable entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            name == "README.md" || TARGETS.iter().any(|(t, _)| *t == name),
            "{} belongs to no fuzz target",
            path.display()
        );
    }
    let files: usize = TARGETS
        .iter()
        .map(|(t, _)| files(&root.join(t)).len())
        .sum();
    assert_eq!(replay("regressions"), files, "every finding was replayed");
}
