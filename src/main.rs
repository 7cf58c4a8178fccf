//! The `userli-postfix-adapter` binary: serve, query once, or check the configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use userli_postfix_adapter::config::{self, Config, Sources};
use userli_postfix_adapter::metrics::Metrics;
use userli_postfix_adapter::protocol::socketmap::Reply;
use userli_postfix_adapter::{Lookups, Server, backend};

#[derive(Parser)]
#[command(
    version,
    about = "Postfix socketmap adapter for userli and other user directories",
    after_help = config::settings::help_text(),
    after_long_help = config::settings::long_help_text()
)]
struct Cli {
    /// A TOML configuration file (keys are the settings in lower case); the
    /// environment overrides it. Same as CONFIG_FILE.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Postfix (the default).
    Serve,
    /// Look one key up through the configured backend and print the socketmap reply.
    ///
    /// Exit status: 0 OK, 1 NOTFOUND, 75 TEMP, 78 PERM.
    Query {
        /// alias, domain, mailbox or senders.
        map: String,
        /// The key, as Postfix would send it.
        key: String,
    },
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Print the configuration reference as Markdown (used for the README).
    #[command(hide = true)]
    ConfigReference,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::ConfigReference) = cli.command {
        print_out(&config::settings::reference_markdown());
        return ExitCode::SUCCESS;
    }
    let config = match config::load(&Sources::from_process(cli.config.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("userli-postfix-adapter: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        print_out(&format!(
            "{}# configuration is valid\n",
            config.render_effective()
        ));
        return ExitCode::SUCCESS;
    }
    init_logging(&config, !matches!(cli.command, Some(Command::Query { .. })));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("userli-postfix-adapter: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Query { map, key }) => query(config, &map, &key).await,
            _ => serve(config).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Once, on stderr, like configuration errors (systemd's journal and a
            // terminal both show it); the log has said what led up to it.
            eprintln!("userli-postfix-adapter: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`check-config | head -1`)
/// is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The error and its causes, each said once: a cause whose text the message
/// already contains (`cannot listen on X: Address already in use` over the OS
/// error itself) is not repeated.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Logs go to stdout when serving (as upstream's do) and to stderr for `query`,
/// whose stdout is the answer.
fn init_logging(config: &Config, to_stdout: bool) {
    use std::io::IsTerminal;
    let writer =
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
            if to_stdout {
                Box::new(std::io::stdout())
            } else {
                Box::new(std::io::stderr())
            }
        });
    let ansi = if to_stdout {
        std::io::stdout().is_terminal()
    } else {
        std::io::stderr().is_terminal()
    };
    userli_postfix_adapter::logging::init(
        config.logging.level,
        config.logging.format,
        writer,
        ansi,
    );
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("creating metrics")?;
    let backend = backend::build_backend(&config, &metrics).context("starting the backend")?;
    let backend_name = backend.name().to_owned();
    // Where answers come from, named once at start (never the token).
    let backend_source = match config.backend.kind {
        config::BackendKind::Userli => config.backend.userli_base_url.to_string(),
        config::BackendKind::Fixture => config
            .backend
            .fixture_path
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string()),
        config::BackendKind::Http => "the [http] table of the config file".to_owned(),
        config::BackendKind::Sql => "SQL_URL".to_owned(),
        config::BackendKind::Custom => String::new(),
    };
    raise_open_files_limit(&config);
    let server = Server::bind(config, backend.clone(), metrics.clone()).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = backend_name,
        backend_source,
        socketmap = ?server.socketmap_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        metrics = ?server.http_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        policy = ?server.policy_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        sasl = ?server.sasl_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "userli-postfix-adapter started"
    );

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let reloader = server.reloader();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received, reloading the backend and dropping cached logins");
            reloader.reload().await;
        }
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    server.run(shutdown).await;
    tracing::info!("All servers stopped");
    Ok(())
}

/// Raises the soft open-files limit to the hard one (Go programs, upstream among them,
/// get this from their runtime): Debian's default soft limit of 1024 is far below
/// `MAX_CONNECTIONS`, and a full descriptor table makes accepts fail.
fn raise_open_files_limit(config: &Config) {
    let listeners = 1
        + usize::from(config.listeners.policy.is_some())
        + usize::from(config.listeners.sasl.is_some());
    // Each connection is one descriptor; the rest is listeners, backend and Redis
    // connections, the state file and the metrics server.
    let needed = (listeners * config.listeners.max_connections + 256) as u64;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "open-files limit is below what MAX_CONNECTIONS allows; raise LimitNOFILE \
             or ulimit -n, or connections beyond it fail"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

async fn query(config: Config, map: &str, key: &str) -> anyhow::Result<ExitCode> {
    let metrics = Metrics::new().context("creating metrics")?;
    let backend = backend::build_backend(&config, &metrics).context("starting the backend")?;
    let lookups = Lookups::new(&config, Arc::clone(&backend))?;
    let reply = lookups.query(map, key.as_bytes()).await;
    println!("{}", String::from_utf8_lossy(&reply.render()));
    Ok(ExitCode::from(match reply {
        Reply::Ok(_) => 0,
        Reply::NotFound => 1,
        Reply::Temp(_) => 75,
        Reply::Perm(_) => 78,
    }))
}
