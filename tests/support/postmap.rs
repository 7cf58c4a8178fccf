//! Postfix's own socketmap client, `postmap -q`, with a private configuration
//! directory: the tests never read the machine's `/etc/postfix` (which a "No
//! configuration" install does not even have).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A configuration directory with a minimal `main.cf`, made once per test binary.
fn config_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed directory under target/ for every run: nothing piles up in /tmp.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("postmap-config");
        std::fs::create_dir_all(&dir).expect("create the postmap config directory");
        std::fs::write(dir.join("main.cf"), "compatibility_level = 3.6\n").expect("write main.cf");
        dir
    })
}

/// `postmap -c <private dir> -q key table`.
pub(crate) fn postmap(key: &str, table: &str) -> Output {
    Command::new("postmap")
        .arg("-c")
        .arg(config_dir())
        .args(["-q", key, table])
        .output()
        .expect("postmap is installed (apt-get install postfix)")
}
