//! What a build reads from whoever asked for it, behind traits.
//!
//! A build started by `memobuild build` reads its context from a directory of this machine,
//! secrets from files and environment variables, ssh agents from sockets and registry
//! credentials from `~/.docker/config.json`. A build the daemon runs for `buildctl` or `docker
//! buildx` reads the same things from the client, through its BuildKit session: FileSync for
//! directories, the Secrets, SSH and Auth services for the rest. The solver sees neither: it
//! asks a [`Caller`], whose parts have a host implementation here ([`HostLocals`], and
//! [`crate::secrets::Secrets`] and [`crate::ssh::SshAgents`], which implement the traits) and a
//! session implementation in the daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::progress::Progress;
use crate::registry::{CredentialProvider, Credentials};

/// A caller's source failed: the client went away, refused, or sent something bad.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// What the source traits return.
pub type SourceFuture<'a, T> = BoxFuture<'a, Result<T, SourceError>>;

/// What a `local://NAME` source op asks for, from its attributes.
#[derive(Debug, Clone, Copy)]
pub struct LocalRequest<'a> {
    /// The local's name (`context`, `dockerfile`, a `--local` key).
    pub name: &'a str,
    /// `local.session`: the session to read it from, when the op names one.
    pub session: Option<&'a str>,
    /// `local.sharedkeyhint`: which earlier transfer of the same directory to start from.
    pub shared_key_hint: Option<&'a str>,
    /// `local.includepattern`: only these paths.
    pub include_patterns: &'a [String],
    /// `local.excludepatterns` (`.dockerignore`).
    pub exclude_patterns: &'a [String],
    /// `local.followpaths`: these paths, with the symbolic links on their way.
    pub follow_paths: &'a [String],
    /// Digest of the source vertex (for progress).
    pub vertex: &'a str,
    /// The build's progress, for transfer statuses.
    pub progress: &'a Progress,
}

/// A directory a local source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDir {
    /// Where it is on this machine.
    pub path: PathBuf,
    /// Whether its files' owners are part of its content (an unpacked archive), rather than
    /// whoever wrote the directory: a client's directory reads as root's, as BuildKit's
    /// transfer resets owners.
    pub keeps_owners: bool,
}

impl LocalDir {
    /// A client's directory at `path`: its files read as root's.
    pub fn root_owned(path: PathBuf) -> Self {
        LocalDir {
            path,
            keeps_owners: false,
        }
    }
}

/// Local directories by name.
pub trait LocalSource: Send + Sync {
    /// A directory on this machine holding (at least) what `req` selects; for a remote
    /// caller, a copy kept up to date by transferring what changed. The solver applies the
    /// request's patterns to it again, so a directory holding more is fine.
    fn local<'a>(&'a self, req: LocalRequest<'a>) -> SourceFuture<'a, LocalDir>;
}

/// Secret values by id.
pub trait SecretSource: Send + Sync {
    /// The value of secret `id`; `None` if the caller has no such secret.
    fn secret<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<Arc<Vec<u8>>>>;
}

/// SSH agents by id.
pub trait SshSource: Send + Sync {
    /// A unix socket speaking the ssh-agent protocol for agent `id` (`default` for an empty
    /// id); `None` if the caller forwards no such agent.
    fn agent<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<PathBuf>>;
}

/// Everything a build reads from its caller.
#[derive(Clone)]
pub struct Caller {
    /// Local directories.
    pub locals: Arc<dyn LocalSource>,
    /// Secrets.
    pub secrets: Arc<dyn SecretSource>,
    /// SSH agents.
    pub ssh: Arc<dyn SshSource>,
    /// Registry credentials.
    pub credentials: Arc<dyn CredentialProvider>,
}

impl Caller {
    /// A caller that has nothing: no directories, secrets, agents or credentials.
    pub fn empty() -> Self {
        Caller {
            locals: Arc::new(HostLocals::default()),
            secrets: Arc::new(crate::secrets::Secrets::new()),
            ssh: Arc::new(crate::ssh::SshAgents::new()),
            credentials: Arc::new(Anonymous),
        }
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caller")
    }
}

/// Local directories of this machine, by name.
#[derive(Debug, Clone, Default)]
pub struct HostLocals {
    dirs: HashMap<String, PathBuf>,
}

impl HostLocals {
    /// No directories.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `local://name` read `dir`. A relative `dir` is made absolute here, once: mounts
    /// and containers see paths from elsewhere.
    pub fn insert(&mut self, name: impl Into<String>, dir: impl Into<PathBuf>) {
        let dir = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        self.dirs.insert(name.into(), dir);
    }
}

impl LocalSource for HostLocals {
    fn local<'a>(&'a self, req: LocalRequest<'a>) -> SourceFuture<'a, LocalDir> {
        let found = self
            .dirs
            .get(req.name)
            .cloned()
            .map(LocalDir::root_owned)
            .ok_or_else(|| {
                SourceError(format!(
                    "no local directory named `{}` was given to the build",
                    req.name
                ))
            });
        futures::future::ready(found).boxed()
    }
}

impl SecretSource for crate::secrets::Secrets {
    fn secret<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<Arc<Vec<u8>>>> {
        futures::future::ready(Ok(self.get_shared(id))).boxed()
    }
}

impl SshSource for crate::ssh::SshAgents {
    fn agent<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<PathBuf>> {
        futures::future::ready(Ok(self.get(id).map(std::path::Path::to_path_buf))).boxed()
    }
}

/// No credentials for any registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credentials<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, Option<Credentials>> {
        futures::future::ready(None).boxed()
    }
}
