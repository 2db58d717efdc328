//! The `ifmatch` binary: command line, configuration, tracing, signals; the work is in the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ifmatch::app::{self, Server};
use ifmatch::config::{self, Config, ConfigError, Overrides};
use ifmatch::proxy::Chain;
use tracing_subscriber::EnvFilter;

/// The binary allocates with mimalloc (without transparent huge pages, which cost 9 MiB of
/// RSS at rest): a proxied GET makes about twenty small allocations, and glibc's malloc and
/// free spent some 4.5k instructions on them, 2.9k more than mimalloc (BENCHMARKS.md, issue 16,
/// round 5). The library leaves the choice to the application.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Optimistic concurrency for any HTTP API: a reverse proxy that rejects stale writes with
/// 409 before they reach the backend.
#[derive(Debug, Parser)]
#[command(name = "ifmatch", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format on stderr; filter with RUST_LOG (e.g. `info,ifmatch=debug`)
    #[arg(
        long,
        global = true,
        env = "IFMATCH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: print "ok: N routes", or every error and exit 1
    CheckConfig {
        /// The TOML config file
        file: PathBuf,
    },
    /// Run the bundled demo API (no ETags, racy updates) with the proxy in front of it
    Demo(DemoArgs),
    /// Storm a target with concurrent read-modify-write writers and count lost updates
    #[command(after_help = ifmatch::storm::REQUIREMENTS)]
    Storm(ifmatch::storm::StormArgs),
    /// Exit 0 if the admin listener answers /healthz (for container health checks)
    Healthcheck {
        /// The admin listener (an unspecified address such as 0.0.0.0 means this host)
        #[arg(long, env = "IFMATCH_ADMIN_LISTEN", default_value = "127.0.0.1:9901", value_parser = listen_addr)]
        admin_listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// One catch-all route to this upstream (http://host:port)
    #[arg(long, env = "IFMATCH_UPSTREAM", value_name = "URL", value_parser = upstream_url)]
    upstream: Option<String>,
    /// Data-plane listener (IP:port), HTTP/1.1 and h2c [default: 127.0.0.1:8080]
    #[arg(long, env = "IFMATCH_LISTEN", value_name = "ADDR", value_parser = listen_addr)]
    listen: Option<SocketAddr>,
    /// Admin listener (IP:port): /healthz, /readyz, /metrics (Prometheus) and the admin API
    /// (/admin/resources, /admin/hotspots) [default: 127.0.0.1:9901]
    #[arg(long, env = "IFMATCH_ADMIN_LISTEN", value_name = "ADDR", value_parser = listen_addr)]
    admin_listen: Option<SocketAddr>,
    /// Status for a failed precondition on a write [default: 409]
    #[arg(long, value_name = "STATUS")]
    conflict_status: Option<ConflictStatus>,
    /// Answer unconditional writes (PUT, PATCH, DELETE) with 428 Precondition Required
    #[arg(long)]
    require_if_match: bool,
    /// TOML config (routes, store, limits); flags override it
    #[arg(long, env = "IFMATCH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Forward everything unchecked, without the guard (a baseline for benchmarks)
    #[arg(long)]
    passthrough: bool,
    /// Bearer token for /metrics and /admin/* (required off loopback)
    #[arg(
        long,
        env = "IFMATCH_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Share validators and write leases with other replicas through this Redis/Valkey
    #[arg(long, env = "IFMATCH_STORE", value_name = "redis://HOST:PORT")]
    store: Option<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where the demo API listens (IP:port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000", value_parser = listen_addr)]
    api_listen: SocketAddr,
    /// Where the proxy in front of it listens (IP:port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = listen_addr)]
    listen: SocketAddr,
    /// Where the proxy's admin listener (health, metrics, admin API) listens (IP:port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", value_parser = listen_addr)]
    admin_listen: SocketAddr,
    /// Status for a failed precondition on a write [default: 409]
    #[arg(long, value_name = "STATUS")]
    conflict_status: Option<ConflictStatus>,
    /// Answer unconditional writes with 428 Precondition Required
    #[arg(long)]
    require_if_match: bool,
    /// Run only the demo API, without the proxy (to see the lost updates)
    #[arg(long)]
    api_only: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConflictStatus {
    /// 409 Conflict
    #[value(name = "409")]
    Conflict,
    /// 412 Precondition Failed (RFC 9110 mode)
    #[value(name = "412")]
    PreconditionFailed,
}

impl ConflictStatus {
    fn code(self) -> u16 {
        match self {
            Self::Conflict => 409,
            Self::PreconditionFailed => 412,
        }
    }
}

/// A listener address: an IP and a port. Host names are not resolved (a name can stand for
/// several addresses, and a listener binds one), so say what to write instead.
fn listen_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|_| {
        let port = addr
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| port.parse::<u16>().is_ok())
            .unwrap_or("8080");
        format!(
            "expected an IP address and port, such as 127.0.0.1:{port} (this machine only) or \
             0.0.0.0:{port} (every interface); host names such as localhost are not resolved"
        )
    })
}

fn upstream_url(url: &str) -> Result<String, String> {
    config::parse_upstream(url).map(|_| url.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Demo(args)) => demo(args).await,
        Some(Command::Storm(args)) => return storm(args).await,
        Some(Command::Healthcheck { admin_listen }) => healthcheck(admin_listen).await,
        None => run(cli.run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Fields at the top level, so log pipelines can index `request_id`, `route`...
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check_config(file: &Path) -> Result<(), String> {
    let config = Config::load(file, &Overrides::default()).map_err(describe)?;
    println!("ok: {} routes", config.routes.len());
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), String> {
    let overrides = Overrides {
        upstream: args.upstream,
        listen: args.listen,
        admin_listen: args.admin_listen,
        conflict_status: args.conflict_status.map(ConflictStatus::code),
        require_if_match: args.require_if_match,
        admin_token: args.admin_token,
        store: args.store,
    };
    let config = match &args.config {
        Some(path) => Config::load(path, &overrides),
        None if overrides.upstream.is_none() => {
            return Err(
                "nothing to proxy: pass --upstream URL or --config FILE (or try `ifmatch demo`)"
                    .into(),
            );
        }
        None => Config::from_overrides(&overrides),
    }
    .map_err(describe)?;
    let server = Server::new(config)
        .map_err(|e| Chain(&e).to_string())?
        .passthrough(args.passthrough);
    let reloader = args
        .config
        .map(|path| tokio::spawn(app::reload_on_sighup(path, overrides, server.routes())));
    let served = server.run(shutdown_signal()).await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    served.map_err(|e| Chain(&e).to_string())
}

/// GET /healthz on the admin listener, bounded: the container image has no curl.
async fn healthcheck(mut addr: SocketAddr) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    if addr.ip().is_unspecified() {
        let local: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        addr.set_ip(local);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/healthz")
        .parse()
        .map_err(|e| format!("bad admin address: {e}"))?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri)).await;
    match answer {
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("unhealthy: {}", response.status())),
        Ok(Err(error)) => Err(format!("no answer from {addr}: {error}")),
        Err(_) => Err(format!("no answer from {addr} within 3s")),
    }
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let proxy = Overrides {
        upstream: None,
        listen: Some(args.listen),
        admin_listen: Some(args.admin_listen),
        conflict_status: args.conflict_status.map(ConflictStatus::code),
        require_if_match: args.require_if_match,
        admin_token: None,
        store: None,
    };
    app::demo(args.api_listen, proxy, args.api_only, shutdown_signal())
        .await
        .map_err(|e| Chain(&e).to_string())
}

/// The exit status of a storm that detected lost updates (without `--allow-lost`).
const EXIT_LOST_UPDATES: u8 = 3;

async fn storm(args: ifmatch::storm::StormArgs) -> ExitCode {
    let allow_lost = args.allow_lost;
    match ifmatch::storm::run(args, shutdown_signal()).await {
        Ok(report) => {
            print!("{}", report.render_table());
            if report.lost_updates > 0 && !allow_lost {
                eprintln!(
                    "error: {} lost updates detected (exit status {EXIT_LOST_UPDATES}; \
                     --allow-lost exits 0)",
                    report.lost_updates
                );
                return ExitCode::from(EXIT_LOST_UPDATES);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", Chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Config errors are shown whole: every problem, one per line.
fn describe(error: ConfigError) -> String {
    Chain(&error).to_string()
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
