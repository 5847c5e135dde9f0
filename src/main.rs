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
mod gitctx;
mod k8s;
mod output;
mod pipeline;
mod progress;
mod report;
mod server;
mod session;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMOBUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on: the chain of causes, joined.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
