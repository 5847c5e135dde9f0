//! Git repositories as build contexts, as buildx takes them:
//! `memobuild build https://host/repo.git#REF:SUBDIR` (also `git://…`, `ssh://…`,
//! `git@host:repo.git`, `github.com/owner/repo`).
//!
//! The repository is checked out into a directory of its own under the state directory
//! (`contexts/<hash of the URL>/repo`), reused by later builds of the same URL: a fetch of the
//! one ref (shallow), a forced checkout of what it fetched, `git clean`, submodules. Files git
//! leaves alone keep their stat data, so the stat cache spares rehashing them. A lock on the
//! directory is held until the build ends, so two builds of one URL take turns. `.git` is not
//! part of the context.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};

/// A git context: where to fetch, what, and which directory of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitContext {
    /// The URL as given, without the fragment (for messages and the cache's key).
    pub url: String,
    /// What git fetches from.
    pub remote: String,
    /// Branch, tag or commit; `HEAD` when none was given.
    pub reference: String,
    /// Directory inside the repository, without leading or trailing `/`; empty for the root.
    pub subdir: String,
}

/// Whether `s` names a git repository the way BuildKit's `IsGitURL` and git's own transports
/// do: `git://`, `git@`, `ssh://`, `github.com/…`, scp-like `user@host:path`, or an `http(s)`
/// URL whose path ends in `.git`.
fn is_git_url(s: &str) -> bool {
    let (base, _) = s.split_once('#').unwrap_or((s, ""));
    if ["git://", "git@", "ssh://", "github.com/"]
        .iter()
        .any(|p| base.starts_with(p))
    {
        return true;
    }
    if base.starts_with("http://") || base.starts_with("https://") {
        return base.trim_end_matches('/').ends_with(".git");
    }
    // scp-like: `user@host:path` (no scheme, no slash before the colon).
    base.split_once(':').is_some_and(|(user_host, path)| {
        !path.is_empty()
            && user_host
                .split_once('@')
                .is_some_and(|(u, h)| !u.is_empty() && !h.is_empty() && !h.contains('/'))
    })
}

/// `url` without a password or token in its user part (`https://user:TOKEN@host/…` →
/// `https://***@host/…`), for messages and names.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            // `user:password`, and over http(s) a lone user part (often a token), are hidden
            // whole; an ssh user name (`git@`) is no secret.
            let secret = userinfo.contains(':') || scheme.starts_with("http");
            let shown = if secret { "***" } else { userinfo };
            format!("{scheme}://{shown}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl GitContext {
    /// The repository's name: the last part of its path, without `.git`.
    pub fn name(&self) -> String {
        let path = self.url.trim_end_matches('/');
        let last = path.rsplit(['/', ':']).next().unwrap_or(path);
        last.strip_suffix(".git").unwrap_or(last).to_owned()
    }

    /// Reads `s` as a git context; `None` when it is not one.
    pub fn parse(s: &str) -> Option<GitContext> {
        if !is_git_url(s) {
            return None;
        }
        let (url, fragment) = s.split_once('#').unwrap_or((s, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let remote = if url.starts_with("github.com/") {
            format!("https://{url}")
        } else {
            url.to_owned()
        };
        Some(GitContext {
            url: url.to_owned(),
            remote,
            reference: if reference.is_empty() {
                "HEAD".to_owned()
            } else {
                reference.to_owned()
            },
            subdir: subdir.trim_matches('/').to_owned(),
        })
    }
}

/// A checked-out context, locked until dropped.
#[derive(Debug)]
pub struct Checkout {
    /// The context directory (the repository's work tree, or its subdirectory).
    pub dir: PathBuf,
    /// Whether `dir` is the work tree's root, where `.git` lives.
    pub at_root: bool,
    _lock: Flock<File>,
}

fn git(repo: &Path, ssh_sock: Option<&Path>) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(repo)
        // Never wait for a password or a host-key answer on a terminal: a build is not
        // interactive (an ssh command the user set is left alone).
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    if let Some(sock) = ssh_sock {
        cmd.env("SSH_AUTH_SOCK", sock);
    }
    cmd
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run git"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        bail!("{what}: {tail}");
    }
    Ok(())
}

/// Removes `*.lock` files under a `.git` directory (not into its object store).
fn remove_stale_locks(git_dir: &Path) {
    let mut stack = vec![git_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && e.file_name() != "objects" {
                stack.push(p);
            } else if ft.is_file()
                && p.extension().is_some_and(|x| x == "lock")
                && let Err(err) = std::fs::remove_file(&p)
            {
                tracing::warn!("cannot remove the stale git lock `{}`: {err}", p.display());
            }
        }
    }
}

/// Fetches and checks out `ctx` under `state` (blocking). `ssh_sock` is the agent for ssh URLs.
pub fn checkout(
    ctx: &GitContext,
    state: &memobuild_worker::StateDir,
    ssh_sock: Option<&Path>,
) -> anyhow::Result<Checkout> {
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        ctx.remote.as_bytes(),
    ));
    let dir = state.git_context(&hash[..16]);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let lock_path = dir.join("lock");
    let lock_file =
        File::create(&lock_path).with_context(|| format!("creating `{}`", lock_path.display()))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking `{}`: {e}", lock_path.display()))?;

    let repo = dir.join("repo");
    let what = format!("git context `{}`", redact(&ctx.url));
    // A ref is never an option to git.
    if ctx.reference.starts_with('-') {
        bail!("{what}: `{}` is not a ref", ctx.reference);
    }
    if !repo.join(".git").is_dir() {
        // A half-made clone from an interrupted build is started over.
        if repo.exists() {
            std::fs::remove_dir_all(&repo)
                .with_context(|| format!("removing `{}`", repo.display()))?;
        }
        let mut init = Command::new("git");
        init.args(["init", "-q"]).arg(&repo);
        run(init, &what)?;
    }
    // A build killed mid-way (SIGKILL, OOM, a Job's deadline) leaves git's lock files; the
    // flock says nobody else is working here, so they are stale.
    remove_stale_locks(&repo.join(".git"));
    let mut fetch = git(&repo, ssh_sock);
    fetch.args([
        "fetch",
        "-q",
        "--depth",
        "1",
        "--no-tags",
        "--",
        // The URL itself, not a remote: credentials in it are not written to `.git/config`
        // (git keeps only an anonymized URL in FETCH_HEAD).
        &ctx.remote,
        &ctx.reference,
    ]);
    run(fetch, &format!("{what}: fetching `{}`", ctx.reference))?;
    let mut co = git(&repo, ssh_sock);
    co.args(["checkout", "-q", "-f", "--detach", "FETCH_HEAD"]);
    run(co, &format!("{what}: checking out `{}`", ctx.reference))?;
    let mut clean = git(&repo, ssh_sock);
    clean.args(["clean", "-q", "-ffdx"]);
    run(clean, &what)?;
    if repo.join(".gitmodules").is_file() {
        let mut sub = git(&repo, ssh_sock);
        sub.args([
            "submodule",
            "update",
            "-q",
            "--init",
            "--recursive",
            "--depth",
            "1",
        ]);
        run(sub, &format!("{what}: submodules"))?;
    }

    let context = if ctx.subdir.is_empty() {
        repo.clone()
    } else {
        if ctx.subdir.split('/').any(|c| c == "..") {
            bail!(
                "{what}: subdirectory `{}` leaves the repository",
                ctx.subdir
            );
        }
        let p = repo.join(&ctx.subdir);
        let real = p.canonicalize().with_context(|| {
            format!(
                "{what}: no directory `{}` at `{}`",
                ctx.subdir, ctx.reference
            )
        })?;
        let root = repo
            .canonicalize()
            .with_context(|| format!("{what}: reading the checkout"))?;
        if !real.starts_with(&root) || !real.is_dir() {
            bail!(
                "{what}: `{}` at `{}` is not a directory of the repository",
                ctx.subdir,
                ctx.reference
            );
        }
        real
    };
    Ok(Checkout {
        dir: context,
        at_root: ctx.subdir.is_empty(),
        _lock: lock,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            redact("https://bob:ghp_s3cr3t@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact("https://ghp_s3cr3t@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact("ssh://git:pw@host/r.git#main"),
            "ssh://***@host/r.git#main"
        );
        assert_eq!(redact("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(redact("git@host:r.git"), "git@host:r.git");
        assert_eq!(redact("https://host/r.git"), "https://host/r.git");
    }

    #[test]
    fn stale_locks_go_but_objects_stay() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::create_dir_all(git.join("objects/pack")).unwrap();
        for f in [
            "index.lock",
            "shallow.lock",
            "refs/heads/main.lock",
            "objects/pack/x.lock",
            "HEAD",
        ] {
            std::fs::write(git.join(f), "").unwrap();
        }
        remove_stale_locks(&git);
        assert!(!git.join("index.lock").exists());
        assert!(!git.join("shallow.lock").exists());
        assert!(!git.join("refs/heads/main.lock").exists());
        assert!(git.join("objects/pack/x.lock").exists());
        assert!(git.join("HEAD").exists());
    }

    #[test]
    fn a_ref_is_never_an_option() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = GitContext::parse("git://127.0.0.1:1/r.git#--upload-pack=touch pwned").unwrap();
        let err = checkout(&ctx, &memobuild_worker::StateDir::new(dir.path()), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a ref"), "{err}");
    }

    #[test]
    fn git_urls_and_fragments() {
        let c = GitContext::parse("https://example.com/team/app.git#v1.2:services/api").unwrap();
        assert_eq!(c.remote, "https://example.com/team/app.git");
        assert_eq!(c.reference, "v1.2");
        assert_eq!(c.subdir, "services/api");
        let c = GitContext::parse("git@example.com:team/app.git").unwrap();
        assert_eq!(c.name(), "app");
        assert_eq!(
            GitContext::parse("git@example.com:app.git").unwrap().name(),
            "app"
        );
        assert_eq!(
            GitContext::parse("github.com/o/tool").unwrap().name(),
            "tool"
        );
        assert_eq!((c.reference.as_str(), c.subdir.as_str()), ("HEAD", ""));
        let c = GitContext::parse("github.com/moby/buildkit#master").unwrap();
        assert_eq!(c.remote, "https://github.com/moby/buildkit");
        assert!(
            GitContext::parse("git://127.0.0.1:9418/r.git#main:/sub/")
                .unwrap()
                .subdir
                == "sub"
        );
        for not_git in [
            ".",
            "./app",
            "/srv/app",
            "https://example.com/context.tar.gz",
            "app:latest",
        ] {
            assert!(GitContext::parse(not_git).is_none(), "{not_git}");
        }
    }
}
