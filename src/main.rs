//! The `memobuild` binary: command-line glue over the frontend and worker crates.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod build;
mod cache_cmd;
mod cli;
mod client;
mod credentials;
mod daemon;
mod dump;
mod embedded;
mod frontend_request;
mod gateway_client;
mod gitctx;
mod k8s;
mod output;
mod pipeline;
mod progress;
mod report;
mod server;
mod session;

use clap::Parser;

/// Logs to stderr: colours only on a terminal; by default (warnings only) a warning reads as
/// one plain line, `warning: …`; with `MEMOBUILD_LOG` set, the full format with times and
/// targets, for debugging.
fn init_logging() {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    match tracing_subscriber::EnvFilter::try_from_env("MEMOBUILD_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_ansi(ansi)
            .without_time()
            .with_target(false)
            .with_level(false)
            .event_format(WarningFormat)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// `warning: MESSAGE` (or `error: MESSAGE`), without times, levels in colour or targets.
struct WarningFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for WarningFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = if *event.metadata().level() == tracing::Level::ERROR {
            "error"
        } else {
            "warning"
        };
        write!(writer, "{level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A frontend process reads stdin on a blocking thread that never returns while the daemon
    // keeps stdin open (until the process exits): it must not wait for that thread.
    let is_frontend = matches!(cli.command, cli::Command::Frontend);
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Build(args) => match args.addr.clone().filter(|a| !a.is_empty()) {
                Some(addr) => client::build(args, &addr).await,
                None => build::build(args).await,
            },
            cli::Command::Lower(args) => build::lower(args).await,
            cli::Command::Why(args) => build::why(args),
            cli::Command::Server(args) => server::run(args).await,
            cli::Command::Cache(args) => cache_cmd::run(args).await,
            cli::Command::K8s(args) => k8s::run(args),
            cli::Command::Daemon(args) => daemon::run(args).await,
            cli::Command::Frontend => gateway_client::serve_stdio().await,
            cli::Command::EmbeddedLinger { dir, linger } => embedded::linger(&dir, linger).await,
        }
    });
    if is_frontend {
        runtime.shutdown_background();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<client::result::ExitStatus>().is_some() => {
            let code = e
                .downcast_ref::<client::result::ExitStatus>()
                .map_or(1, |s| s.0);
            std::process::ExitCode::from(code)
        }
        Err(e) => {
            // One line a user can act on: the chain of causes, joined.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
