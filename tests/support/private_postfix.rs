//! A private, throw-away Postfix instance for integration tests, and a swaks driver.
//!
//! The instance lives entirely in a tempdir: its own `main.cf`/`master.cf`, queue
//! and data directories, maillog file, and one smtpd on a free loopback port. The
//! system instance (`/etc/postfix`, port 25) is never touched: Debian's shared
//! files (`/usr/lib/postfix`, `/etc/postfix/postfix-files`) are only read.
//!
//! `master` runs as our child process (`-s` keeps it in the foreground) rather than
//! through `postfix start`, so the guard can always signal and reap it. `-e` makes it
//! exit on its own even if the test process is SIGKILLed and the guard never runs.
//! Needs root: master and the queue layout insist on it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid and gid (`nobody`) virtual(8) delivers as in delivering instances.
const NOBODY: u32 = 65534;

/// Upper bound on the life of a master process we started, in seconds.
const MASTER_EXIT_TIME: &str = "300";

/// A free loopback port: bind port 0 and let the listener go. Racy in theory, in
/// practice the kernel does not hand the same ephemeral port out again right away.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A running private Postfix; stopped (and its maillog printed if the test panicked)
/// on drop.
pub(crate) struct PrivatePostfix {
    dir: tempfile::TempDir,
    master: Child,
    /// The smtpd listener, on 127.0.0.1.
    pub(crate) port: u16,
}

impl PrivatePostfix {
    /// Starts an instance whose virtual domain, mailbox and alias maps are the
    /// adapter's socketmap at `socketmap` ("127.0.0.1:PORT"), and waits for its
    /// SMTP banner.
    pub(crate) fn start(socketmap: &str) -> Self {
        Self::start_with(socketmap, "")
    }

    /// Like [`Self::start`], with `extra_main_cf` appended to `main.cf`: a later
    /// `name = value` overrides an earlier one, so this can replace defaults too.
    pub(crate) fn start_with(socketmap: &str, extra_main_cf: &str) -> Self {
        Self::start_with_smtpd_limit(socketmap, extra_main_cf, None)
    }

    /// Like [`Self::start_with`], with the smtpd service's process limit (master.cf
    /// `maxproc` column) set to `smtpd_maxproc` instead of the default: with `1`,
    /// consecutive SMTP sessions are served by the same smtpd process.
    pub(crate) fn start_with_smtpd_limit(
        socketmap: &str,
        extra_main_cf: &str,
        smtpd_maxproc: Option<u32>,
    ) -> Self {
        Self::launch(socketmap, extra_main_cf, smtpd_maxproc, None, &mut |_| {})
    }

    /// Like [`Self::start_with`], running `before_start` with the queue directory
    /// once its layout exists and before any Postfix daemon runs (to put a socket
    /// there that smtpd connects to as it starts).
    // Only some of the test binaries that include this module use it.
    #[allow(dead_code)]
    pub(crate) fn start_after(
        socketmap: &str,
        extra_main_cf: &str,
        before_start: &mut dyn FnMut(&Path),
    ) -> Self {
        Self::launch(socketmap, extra_main_cf, None, None, before_start)
    }

    /// Like [`Self::start_with`], but accepted mail is really delivered: Postfix's
    /// `virtual(8)` writes each message into a Maildir under the instance's
    /// directory (see [`Self::maildir`]), for the recipient cleanup arrived at
    /// through the adapter's alias socketmap.
    ///
    /// virtual(8) refuses socketmaps for its own mailbox lookup (it needs paths, and
    /// a socketmap lacks the NO_UNAUTH safety flag), so it gets a `texthash` table
    /// mapping each of `mailboxes` (`local@domain`) to `domain/local/`, as an
    /// operator would give it a path map; recipient validation (smtpd) and alias
    /// expansion (cleanup) still go through the adapter.
    pub(crate) fn start_delivering(
        socketmap: &str,
        extra_main_cf: &str,
        mailboxes: &[&str],
    ) -> Self {
        Self::launch(socketmap, extra_main_cf, None, Some(mailboxes), &mut |_| {})
    }

    /// The messages delivered to the Maildir of `local@domain` (instances from
    /// [`Self::start_delivering`]), waiting up to 15 s for at least `want`.
    pub(crate) fn maildir(&self, local: &str, domain: &str, want: usize) -> Vec<String> {
        let new = self
            .dir
            .path()
            .join("mail")
            .join(domain)
            .join(local)
            .join("new");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let messages: Vec<String> = std::fs::read_dir(&new)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect();
            if messages.len() >= want || Instant::now() >= deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn launch(
        socketmap: &str,
        extra_main_cf: &str,
        smtpd_maxproc: Option<u32>,
        deliver_to: Option<&[&str]>,
        before_start: &mut dyn FnMut(&Path),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("private-postfix-")
            .tempdir()
            .expect("create a tempdir");
        // smtpd and friends run as `postfix` and chdir into the queue below; tempdirs
        // are created 0700.
        set_mode(dir.path(), 0o755);
        let etc = dir.path().join("etc");
        let queue = dir.path().join("queue");
        std::fs::create_dir(&etc).expect("create config dir");
        // post-install creates the queue's subdirectories, not the queue itself; it
        // must be root-owned and not group/other-writable.
        std::fs::create_dir(&queue).expect("create queue dir");
        set_mode(&queue, 0o755);
        let port = free_port();
        let mut main = main_cf(dir.path(), socketmap);
        let mut master = master_cf(port, smtpd_maxproc);
        if let Some(mailboxes) = deliver_to {
            let mail = dir.path().join("mail");
            std::fs::create_dir(&mail).expect("create the mail directory");
            // virtual(8) writes as the static uid below and creates the Maildirs.
            std::os::unix::fs::chown(&mail, Some(NOBODY), Some(NOBODY))
                .expect("chown the mail directory");
            let paths: String = mailboxes
                .iter()
                .map(|m| {
                    let (local, domain) = m.rsplit_once('@').expect("local@domain");
                    format!("{m} {domain}/{local}/\n")
                })
                .collect();
            write(&etc.join("vmailbox"), &paths);
            main.push_str(&format!(
                "virtual_transport = virtual\n\
                 virtual_mailbox_base = {mail}\n\
                 virtual_uid_maps = static:{NOBODY}\n\
                 virtual_gid_maps = static:{NOBODY}\n",
                mail = mail.display()
            ));
            master.push_str(&format!(
                "virtual   unix  -  n  n  -  -  virtual -o virtual_mailbox_maps=texthash:{}\n",
                etc.join("vmailbox").display()
            ));
        }
        main.push_str(extra_main_cf);
        if !main.ends_with('\n') {
            main.push('\n');
        }
        write(&etc.join("main.cf"), &main);
        write(&etc.join("master.cf"), &master);

        // `postfix check` runs post-install create-missing (queue subdirectories with
        // their owners) and postsuper, exactly what `postfix start` would do first.
        let check = Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("check")
            .output()
            .expect("postfix is installed (apt-get install postfix)");
        assert!(
            check.status.success(),
            "postfix check failed: {}{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            std::fs::read_to_string(dir.path().join("maillog")).unwrap_or_default()
        );

        before_start(&queue);

        let daemon_dir = postconf_default("daemon_directory");
        let master = Command::new(Path::new(&daemon_dir).join("master"))
            .arg("-c")
            .arg(&etc)
            .args(["-s", "-e", MASTER_EXIT_TIME])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Postfix master");
        let mut postfix = Self { dir, master, port };
        postfix.wait_for_banner();
        postfix
    }

    /// Everything the instance logged so far.
    pub(crate) fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Waits until some maillog line contains every one of `parts`; returns that line.
    pub(crate) fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self
                .maillog()
                .lines()
                .find(|line| parts.iter().all(|p| line.contains(p)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no maillog line containing all of {parts:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs swaks against the instance with `args` added to the connection options.
    pub(crate) fn swaks(&self, args: &[&str]) -> Transcript {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &self.port.to_string()])
            // A fixed HELO and sender keep swaks from consulting the local hostname and
            // keep the sender out of the hosted domains.
            .args(["--helo", "client.test", "--from", "sender@example.net"])
            .args(["--timeout", "30"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("swaks is installed (apt-get install swaks)");
        Transcript {
            exit: out.status.code(),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// One SMTP transaction that stops after a single RCPT TO.
    pub(crate) fn rcpt(&self, to: &str) -> Transcript {
        self.swaks(&["--to", to, "--quit-after", "RCPT"])
    }

    /// The master must have bound the smtpd port before it reports anything, so
    /// reading a 220 banner proves master, smtpd and the config all work.
    fn wait_for_banner(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.master.try_wait().expect("poll the master") {
                panic!(
                    "Postfix master exited early ({status}):\n{}",
                    self.maillog()
                );
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("set a read timeout");
                let mut banner = String::new();
                let _ = BufReader::new(&stream).read_line(&mut banner);
                let _ = (&stream).write_all(b"QUIT\r\n");
                if banner.starts_with("220 ") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no SMTP banner from the private Postfix:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- private Postfix maillog ---\n{}--- end of maillog ---",
                self.maillog()
            );
        }
        // SIGTERM, not SIGKILL: on SIGTERM the master also terminates its children,
        // which would otherwise linger until they notice the master is gone.
        let _ = Command::new("kill")
            .args(["-TERM", &self.master.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

/// main.cf lines for SMTP AUTH against the adapter's SASL listener `sasl` and
/// sender ownership checks against its socketmap `socketmap`.
// Not every test binary that includes this module uses it.
#[allow(dead_code)]
pub(crate) fn sasl_main_cf(socketmap: &str, sasl: &str) -> String {
    format!(
        "\
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{sasl}
smtpd_sasl_auth_enable = yes
# No TLS in this instance: allow AUTH in the clear.
smtpd_tls_auth_only = no
broken_sasl_auth_clients = no
smtpd_sender_login_maps = socketmap:inet:{socketmap}:senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination
"
    )
}

/// What swaks printed and how it exited.
pub(crate) struct Transcript {
    /// swaks' exit code: 0 all accepted, 24 no RCPT accepted, 26 DATA refused, ...
    pub(crate) exit: Option<i32>,
    /// The whole session transcript.
    pub(crate) text: String,
}

impl Transcript {
    /// The server's reply to the first command that starts with `command`
    /// (e.g. "RCPT TO:", "." for end of DATA), without swaks' arrow prefix.
    pub(crate) fn reply_to(&self, command: &str) -> &str {
        let mut lines = self.text.lines();
        lines
            .by_ref()
            .find(|l| {
                l.strip_prefix(" -> ")
                    .is_some_and(|c| c.starts_with(command))
            })
            .unwrap_or_else(|| panic!("swaks never sent {command:?}:\n{}", self.text));
        // Server lines are "<-  250 ..." when swaks expected the code, "<** 550 ..."
        // when it did not.
        lines
            .find(|l| l.starts_with("<-") || l.starts_with("<**"))
            .map(|l| l.trim_start_matches(['<', '-', '*']).trim_start())
            .unwrap_or_else(|| panic!("no reply to {command:?}:\n{}", self.text))
    }

    /// The reply to the (single) RCPT TO.
    pub(crate) fn rcpt_reply(&self) -> &str {
        self.reply_to("RCPT TO:")
    }
}

fn main_cf(dir: &Path, socketmap: &str) -> String {
    let dir = dir.display();
    let map = |name: &str| format!("socketmap:inet:{socketmap}:{name}");
    let (domain, mailbox, alias) = (map("domain"), map("mailbox"), map("alias"));
    let (shlib, meta, daemon, command) = (
        postconf_default("shlib_directory"),
        postconf_default("meta_directory"),
        postconf_default("daemon_directory"),
        postconf_default("command_directory"),
    );
    format!(
        "\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
shlib_directory = {shlib}
meta_directory = {meta}
daemon_directory = {daemon}
command_directory = {command}
mail_owner = postfix
setgid_group = postdrop
# Log to a file we can print when a test fails; postlogd only writes under a
# listed prefix.
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
syslog_name = postfix-test
myhostname = postfix-test.invalid
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Nothing is local, so every accepted recipient goes through the virtual maps.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
# Loopback must NOT be trusted, or permit_mynetworks would relay anything.
mynetworks = 192.0.2.0/24
biff = no
recipient_delimiter = +
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = {mailbox}
virtual_alias_maps = {alias}
# virtual(8) refuses socketmaps (dict flag NO_UNAUTH); nothing should be delivered
# anyway, so accepted mail is discarded.
virtual_transport = discard:
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_reject_unlisted_recipient = yes
"
    )
}

/// Only the services an smtpd-to-discard path needs, none chrooted (the tempdir
/// queue has no chroot environment). `smtpd_maxproc`: the smtpd process limit
/// (`-`, the default process limit, when `None`).
fn master_cf(port: u16, smtpd_maxproc: Option<u32>) -> String {
    let maxproc = smtpd_maxproc.map_or_else(|| "-".to_owned(), |n| n.to_string());
    format!(
        "\
127.0.0.1:{port} inet n - n - {maxproc} smtpd
pickup    unix  n  -  n  60    1  pickup
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000? 0  flush
proxymap  unix  -  -  n  -     -  proxymap
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n - n - 1 postlogd
"
    )
}

/// A compiled-in default, so the instance uses wherever this distribution put
/// Postfix's programs and shared files.
fn postconf_default(name: &str) -> String {
    let out = Command::new("postconf")
        .args(["-d", "-h", name])
        .output()
        .expect("postconf is installed (apt-get install postfix)");
    assert!(out.status.success(), "postconf -d {name}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 postconf output")
        .trim()
        .to_owned()
}

/// Writes a config file, backdated: Postfix treats a file modified within the last
/// second as still being edited and re-reads it after 300 ms sleeps, which costs
/// about 1.5 s per fresh file and command.
fn write(path: &Path, text: &str) {
    let file = std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).map(|()| f))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    file.set_modified(past)
        .unwrap_or_else(|e| panic!("backdate {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
