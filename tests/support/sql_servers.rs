//! Throw-away PostgreSQL and MariaDB servers (the Debian packages) for tests: a
//! fresh data directory and a free loopback port each, no authentication, killed
//! on drop; [`SqlServer::stop`] and [`SqlServer::start`] restart one on the same
//! port and data (a database restarted under the adapter).

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    MariaDb,
}

/// A database server child process.
pub(crate) struct SqlServer {
    kind: Kind,
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// The directory of PostgreSQL's server binaries (`/usr/lib/postgresql/NN/bin`).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server binary")
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SqlServer {
    /// A new server of `kind` with an empty data directory, started.
    pub(crate) fn new(kind: Kind) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("upa-sql-")
            .tempdir()
            .unwrap();
        // The servers refuse to run as root: the data belongs to their own user.
        let user = match kind {
            Kind::Postgres => "postgres",
            Kind::MariaDb => "mysql",
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        run(
            Command::new("chown").arg(format!("{user}:")).arg(&data),
            "chown the data directory",
        );
        match kind {
            Kind::Postgres => run(
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(postgres_bin().join("initdb"))
                    .args([
                        "-A",
                        "trust",
                        "-U",
                        "postgres",
                        "-E",
                        "UTF8",
                        "--no-sync",
                        "-D",
                    ])
                    .arg(&data),
                "initdb",
            ),
            Kind::MariaDb => run(
                Command::new("mariadb-install-db")
                    .args([
                        "--no-defaults",
                        "--user=mysql",
                        "--auth-root-authentication-method=normal",
                    ])
                    .arg(format!("--datadir={}", data.display())),
                "mariadb-install-db",
            ),
        }
        let mut server = Self {
            kind,
            child: None,
            port: free_port(),
            dir,
        };
        server.start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts the server on its port and waits until it accepts connections.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let data = self.data();
        let mut command = match self.kind {
            Kind::Postgres => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(postgres_bin().join("postgres"))
                    .arg("-D")
                    .arg(&data)
                    .args([
                        "-p",
                        &self.port.to_string(),
                        "-c",
                        "listen_addresses=127.0.0.1",
                    ])
                    .args(["-c", "fsync=off", "-c", "max_connections=200"])
                    .arg("-k")
                    .arg(&data);
                c
            }
            Kind::MariaDb => {
                let mut c = Command::new("mariadbd");
                c.args([
                    "--no-defaults",
                    "--user=mysql",
                    "--skip-grant-tables",
                    "--skip-networking=0",
                ])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={}", self.port))
                .arg(format!("--socket={}", data.join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", data.join("mysqld.pid").display()))
                .args([
                    "--bind-address=127.0.0.1",
                    "--innodb-flush-log-at-trx-commit=0",
                ]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.kind));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not start", self.kind);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // runuser passes the signal on to postgres.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
            // The port is free again once the server is gone.
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The URL of `database` (no password: trust authentication).
    pub(crate) fn url(&self, database: &str) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// The URL of the server's own database, to create others.
    fn admin_url(&self) -> String {
        match self.kind {
            Kind::Postgres => self.url("postgres"),
            Kind::MariaDb => self.url("mysql"),
        }
    }

    /// Creates `database` and runs `sql` (several statements) in it.
    pub(crate) async fn create_database(&self, database: &str, sql: &str) {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&self.admin_url()).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {database}").as_str())
            .await
            .unwrap();
        admin.close().await;
        let pool = sqlx::AnyPool::connect(&self.url(database)).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }

    /// A new server of `kind` holding `database`, made by `sql`.
    pub(crate) async fn started_with(kind: Kind, database: &str, sql: &str) -> Self {
        let server = tokio::task::block_in_place(|| Self::new(kind));
        server.create_database(database, sql).await;
        server
    }

    /// Where the server keeps its files (for logs on failure).
    #[allow(dead_code)]
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        self.stop();
    }
}
