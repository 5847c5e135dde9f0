//! `memobuild build --addr ADDR`: the build runs on a BuildKit daemon (buildkitd, or
//! `memobuild daemon`) and this process is its client, speaking the protocol as
//! `buildctl build --frontend dockerfile.v0 --local context=… --local dockerfile=…` v0.32
//! does (`docs/buildkit-wire.md` §2.A):
//!
//! 1. one gRPC connection ([`connect`]); `Control/ListWorkers` first;
//! 2. a session ([`session`]) offering the context and the Dockerfile's directory, the
//!    outputs, `--secret`s, `--ssh` agents and registry credentials;
//! 3. `Control/Solve` with the exporters ([`exporters`]) and frontend options ([`request`]),
//!    `Control/Status` ([`status`]) and the LLBBridge build function ([`gateway`]), at once
//!    ([`solve`]);
//! 4. the image digest from the exporters' response on stdout, as a local build prints it.
//!
//! Nothing here knows how images are built: everything between the flags and the wire is a
//! conversion, and the daemon's errors are shown as the daemon worded them.

pub mod connect;
pub mod exporters;
pub mod gateway;
pub mod request;
pub mod result;
pub mod session;
pub mod solve;
pub mod source;
pub mod status;

use std::sync::Arc;

use anyhow::Context;
use memobuild_proto::control::ListWorkersRequest;
use memobuild_worker::progress::Progress;
use memobuild_worker::ssh::{PrivateAgent, SshAgents};
use tokio::sync::mpsc;

use crate::cli::{BuildArgs, SshSource};
use crate::client::connect::Address;
use crate::client::exporters::Target;
use crate::client::request::BuildRequest;
use crate::client::session::{Services, SessionConfig};

/// The exporter response key holding the image manifest's digest
/// (`exporter/containerimage/exptypes`).
const IMAGE_DIGEST: &str = "containerimage.digest";

/// `memobuild build --addr ADDR`.
pub async fn build(args: BuildArgs, addr: &str) -> anyhow::Result<()> {
    let address = Address::parse(addr)?;
    // Everything that can be wrong with the flags fails before the daemon is contacted.
    let request = BuildRequest::from_args(&args)?;
    for export in &request.exports {
        check_destination(&export.target)?;
    }
    let secrets = match args.secrets.is_empty() {
        true => None,
        false => Some(args.secrets()?),
    };
    // Key files are loaded into an agent of our own, stopped when the build is over.
    let (ssh, _private_agents) = ssh_agents(&args).await?;

    let tls = match &args.tlsdir {
        Some(dir) => connect::TlsFiles::from_dir(dir, args.tlsservername.clone())?,
        None => connect::TlsFiles {
            ca_cert: args.tlscacert.clone(),
            cert: args.tlscert.clone(),
            key: args.tlskey.clone(),
            server_name: args.tlsservername.clone(),
        },
    };
    let channel = connect::connect(&address, &tls).await?;
    connect::control(&channel)
        .list_workers(ListWorkersRequest::default())
        .await
        .map_err(remote)
        .context("listing workers for Build")?;

    let ids = solve::Ids {
        build_ref: new_id(),
        session: new_id(),
    };
    let services = Services::new(SessionConfig {
        locals: request.locals.clone(),
        targets: request
            .exports
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.target.clone()))
            .collect(),
        secrets,
        ssh,
        credentials: Arc::new(crate::credentials::DockerCredentials::load()),
        upload: request.upload.clone(),
    });
    let headers = session::headers(&ids.session, &request.shared_key, &services);
    tracing::debug!(build_ref = %ids.build_ref, session = %ids.session, %address, "remote build");

    let (tx, rx) = mpsc::unbounded_channel();
    let renderer = tokio::spawn(crate::progress::render(args.progress, rx));
    let progress = Progress::new(tx);
    let call = request::call_request(&args)?;
    if request.exports.is_empty() && call.is_none() {
        progress.send(memobuild_worker::progress::ProgressEvent::Message(
            "warning: no output specified; the result stays in the daemon's cache (use --output type=oci,dest=FILE, --output DIR or -t NAME --push)".into(),
        ));
    }
    let outcome = tokio::select! {
        outcome = solve::run(&channel, &ids, &request, headers, services.routes, &progress) => outcome,
        // Dropping the build drops its calls, and the daemon cancels a build whose client
        // went away.
        _ = tokio::signal::ctrl_c() => solve::Outcome {
            result: Err(anyhow::anyhow!("interrupted")),
            failures: Vec::new(),
        },
    };
    drop(progress);
    let _ = renderer.await;
    if let Err(e) = &outcome.result {
        print_failures(&outcome.failures);
        for source in source::sources(e) {
            eprint!("{}", source.render());
        }
    }
    let response = outcome.result.map_err(|e| lost_connection(e, &address))?;
    for (k, v) in &response {
        tracing::debug!("exporter response: {k}={v}");
    }
    result::write_files(
        &response,
        args.metadata_file.as_deref(),
        args.iidfile.as_deref(),
    )?;
    if let Some(call) = &call {
        return result::print_call(call, &response);
    }
    if let Some(digest) = response.get(IMAGE_DIGEST) {
        println!("{digest}");
    }
    Ok(())
}

/// What the failed steps printed last, above the one-line error, as buildctl (and a local
/// build) show it.
fn print_failures(failures: &[status::Failure]) {
    for f in failures {
        eprintln!("------");
        eprintln!(" > {}:", f.name);
        for line in &f.tail {
            eprintln!("{line}");
        }
        eprintln!("------");
    }
}

/// Fails early where buildctl would (it creates the file before the build): a file output
/// must go into an existing directory and must not be a directory itself.
fn check_destination(target: &Target) -> anyhow::Result<()> {
    if let Target::File(dest) = target {
        if dest.is_dir() {
            anyhow::bail!("destination file `{}` is a directory", dest.display());
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            anyhow::bail!(
                "destination file `{}`: directory `{}` does not exist",
                dest.display(),
                parent.display()
            );
        }
    }
    Ok(())
}

/// The agents `--ssh` names (none: not offered), with key files loaded into a private agent.
async fn ssh_agents(args: &BuildArgs) -> anyhow::Result<(Option<SshAgents>, Vec<PrivateAgent>)> {
    if args.ssh.is_empty() {
        return Ok((None, Vec::new()));
    }
    let mut agents = SshAgents::new();
    let mut private = Vec::new();
    for (id, source) in args.ssh()? {
        match source {
            SshSource::Socket(p) => agents.insert(id, p),
            SshSource::Keys(keys) => {
                let dir = std::env::temp_dir();
                let agent = tokio::task::spawn_blocking(move || PrivateAgent::start(&dir, &keys))
                    .await
                    .context("starting ssh-agent")?
                    .with_context(|| format!("--ssh `{id}`"))?;
                agents.insert(id, agent.socket());
                private.push(agent);
            }
        }
    }
    Ok((Some(agents), private))
}

/// A random id in BuildKit's form (`identity.NewID`): 25 lower-case base-36 characters.
pub fn new_id() -> String {
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut id = [b'0'; 25];
    for slot in id.iter_mut().rev() {
        // `n % 36` < 36: the index is in range.
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&id).into_owned()
}

/// A failed call as an error that reads as the daemon's message (tonic's `Display` of a
/// status is a debugging dump), its cause chain kept.
pub fn remote(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(RemoteError(status))
}

/// See [`remote`].
#[derive(Debug)]
pub struct RemoteError(pub tonic::Status);

impl RemoteError {
    /// The transport failure behind the status, when the call never got an answer: the
    /// innermost cause, since tonic's layers above it (`transport error`, twice) repeat it.
    fn transport_cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let mut cause = std::error::Error::source(&self.0)?;
        while let Some(next) = cause.source() {
            cause = next;
        }
        Some(cause)
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(cause) = self.transport_cause() {
            return write!(f, "{cause}");
        }
        match self.0.message() {
            "" => write!(f, "{}", self.0.code()),
            m => f.write_str(m),
        }
    }
}

impl std::error::Error for RemoteError {}

/// Names the daemon when the connection to it broke, which otherwise reads as a bare
/// transport error. Statuses the daemon sent (whatever their code) are its own words; only
/// failures our side of the connection saw carry a transport cause.
fn lost_connection(e: anyhow::Error, address: &Address) -> anyhow::Error {
    let broken = e.chain().any(|c| {
        c.downcast_ref::<RemoteError>()
            .is_some_and(|r| r.transport_cause().is_some())
    });
    if broken {
        // What the build was doing when the connection broke does not help; where it broke does.
        anyhow::anyhow!(
            "lost the connection to the BuildKit daemon at {address}: {}",
            e.root_cause()
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_buildkits() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "{a}"
        );
        assert_ne!(a, new_id());
    }

    #[test]
    fn remote_errors_read_as_the_daemons_message() {
        let e = remote(tonic::Status::unknown(
            "failed to compute cache key: not found",
        ))
        .context("failed to solve");
        assert_eq!(
            format!("{e:#}"),
            "failed to solve: failed to compute cache key: not found"
        );
        let e = remote(tonic::Status::new(tonic::Code::Unimplemented, ""));
        assert_eq!(
            format!("{e:#}"),
            "Operation is not implemented or not supported"
        );
    }

    #[test]
    fn a_broken_connection_names_the_daemon() {
        let address = Address::parse("unix:///tmp/bk.sock").unwrap();
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let transport = tonic::Status::from_error(Box::new(reset));
        let e = lost_connection(remote(transport).context("failed to solve"), &address);
        assert_eq!(
            format!("{e:#}"),
            "lost the connection to the BuildKit daemon at unix:///tmp/bk.sock: connection reset"
        );
        // The daemon's own statuses stay as they are, Unavailable included.
        for status in [
            tonic::Status::unknown("exit code: 1"),
            tonic::Status::unavailable("no active sessions"),
        ] {
            let message = status.message().to_owned();
            let e = lost_connection(remote(status), &address);
            assert_eq!(format!("{e:#}"), message);
        }
    }
}
