//! `git://` sources, run with the `git` binary.
//!
//! The identifier is BuildKit's: `git://<host>/<path>[#<ref>[:<subdir>]]`; the URL git talks to
//! is `git.fullurl` (the frontend always sets it), else `https://<host>/<path>`. The ref is a
//! branch, a tag or a full commit SHA (none: the remote's `HEAD`).
//!
//! - **Key** (`solver/cachekey.rs`): the op plus the commit the ref names right now, found with
//!   `git ls-remote` (no fetch; a SHA ref needs no network). A moved branch gives a new key, an
//!   unchanged one a hit that never fetches.
//! - **Execution**: one bare mirror per remote URL under `<state>/cache/git/`, shared by builds
//!   (an exclusive `flock` while fetching), fetched only when it lacks the commit; the commit is
//!   pinned there under `refs/memobuild/pins/`. The tree is checked out into a temporary
//!   directory with a private index (the mirror is only read), `subdir` selected inside it (never
//!   leaving it), and written as one layer. With `git.keepgitdir` and no subdir the result is a
//!   repository instead: `.git` holding that commit (depth 1) with `origin` set to the URL, on
//!   the branch when the ref is one, detached otherwise.
//!
//! The commit the key named is handed to the execution, so a branch moving between the two
//! cannot record one commit's files under another's key.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{LazyLock, Mutex};

use memobuild_proto::{attr, pb};
use nix::fcntl::{Flock, FlockArg};

use crate::fsops::resolve_in_root;
use crate::layer::write_layer;
use crate::solver::{FsRef, Output, Solve, SolveError};

/// What a git source op asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitSpec {
    /// The URL git fetches from.
    pub(crate) remote: String,
    /// Branch, tag or commit; empty for `HEAD`.
    pub(crate) reference: String,
    /// Directory inside the repository to take (no leading `/`); empty for all of it.
    pub(crate) subdir: String,
    /// `git.keepgitdir`.
    pub(crate) keep_git_dir: bool,
    /// `git.mountsshsock`: the `--ssh` id whose agent git's ssh may use.
    pub(crate) ssh_id: Option<String>,
    /// `git.knownsshhosts`: known_hosts lines git's ssh must check the server against.
    pub(crate) known_hosts: Option<String>,
}

/// A ref resolved on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The commit (for an annotated tag: the commit it points to).
    pub(crate) commit: String,
    /// The full ref it came from (`refs/heads/main`, `refs/tags/v1`, `HEAD`); `None` for a SHA.
    pub(crate) full_ref: Option<String>,
}

/// Commits resolved for a key, by (solve, vertex), waiting for that vertex's execution. A solve
/// computes a vertex's key right before executing it, so an entry is replaced before it could
/// be read again; entries of vertices that were cache hits are never read.
static RESOLVED: LazyLock<Mutex<HashMap<(usize, String), Resolved>>> =
    LazyLock::new(Default::default);

impl GitSpec {
    /// Reads the identifier and `git.*` attrs of a source op.
    pub(crate) fn from_op(src: &pb::SourceOp) -> Result<Self, String> {
        let rest = src
            .identifier
            .strip_prefix(attr::SCHEME_GIT)
            .ok_or_else(|| format!("`{}` is not a git source", src.identifier))?;
        let (location, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let remote = match src.attrs.get(attr::ATTR_GIT_FULLURL) {
            Some(u) if !u.is_empty() => u.clone(),
            _ if is_git_transport(location) => location.to_owned(),
            _ => format!("https://{location}"),
        };
        if location.is_empty() && remote.is_empty() {
            return Err(format!("`{}` names no repository", src.identifier));
        }
        Ok(GitSpec {
            remote,
            reference: reference.to_owned(),
            subdir: clean_subdir(subdir),
            keep_git_dir: src
                .attrs
                .get(attr::ATTR_GIT_KEEPGITDIR)
                .is_some_and(|v| v == "true"),
            ssh_id: src
                .attrs
                .get(attr::ATTR_GIT_MOUNTSSHSOCK)
                .filter(|v| !v.is_empty())
                .cloned(),
            known_hosts: src
                .attrs
                .get(attr::ATTR_GIT_KNOWNSSHHOSTS)
                .filter(|v| !v.trim().is_empty())
                .cloned(),
        })
    }
}

/// A URL git understands as it is: a scheme git speaks, or scp-like `user@host:path`.
fn is_git_transport(s: &str) -> bool {
    ["http://", "https://", "git://", "ssh://", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
        || s.split_once(':').is_some_and(|(user_host, _)| {
            user_host
                .split_once('@')
                .is_some_and(|(u, h)| !u.is_empty() && !h.is_empty() && !h.contains('/'))
        })
}

/// `path.Join("/", subdir)` without the leading slash: `""` for the root.
fn clean_subdir(subdir: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in subdir.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A full commit SHA (sha1 or sha256 object format).
fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Picks the commit for `reference` from `git ls-remote` output as BuildKit does: an exact
/// `refs/…` name first, then a branch, then a tag (peeled when annotated).
fn pick_ref(reference: &str, ls_remote: &str) -> Option<Resolved> {
    let lines: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .collect();
    let find = |name: &str| {
        lines
            .iter()
            .find(|(_, r)| *r == name)
            .map(|(sha, _)| sha.to_string())
    };
    if reference.is_empty() || reference == "HEAD" {
        return find("HEAD").map(|commit| Resolved {
            commit,
            full_ref: Some("HEAD".into()),
        });
    }
    let exact = format!("refs/{}", reference.trim_start_matches("refs/"));
    let head = format!("refs/heads/{}", reference.trim_start_matches("refs/heads/"));
    let tag = format!("refs/tags/{}", reference.trim_start_matches("refs/tags/"));
    for name in [&exact, &head, &tag] {
        let peeled = find(&format!("{name}^{{}}"));
        if let Some(commit) = peeled.or_else(|| find(name)) {
            return Some(Resolved {
                commit,
                full_ref: Some(name.clone()),
            });
        }
    }
    None
}

/// Runs git with `args` (in `dir` when given); its stdout, or an error with its last stderr lines.
async fn git<I, S>(dir: Option<&Path>, env: &[(&str, &OsStr)], args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(&args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // git's http(s) transport (curl) has no read timeout by default: a server that accepts
    // and then says nothing would hold the build forever. Less than 1 byte/s for 60 s (waiting
    // for an answer counts) ends the transfer; a slow one that moves never trips it. The
    // user's own setting, if any, wins.
    for (k, v) in [
        ("GIT_HTTP_LOW_SPEED_LIMIT", "1"),
        ("GIT_HTTP_LOW_SPEED_TIME", "60"),
    ] {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run `git` (is it installed?): {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "`git {}` failed ({}): {}",
            shown(),
            out.status,
            tail.join(" / ")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `spec` names on its remote now.
async fn resolve(spec: &GitSpec, env: &[(&str, &OsStr)]) -> Result<Resolved, String> {
    if is_commit_sha(&spec.reference) {
        return Ok(Resolved {
            commit: spec.reference.to_ascii_lowercase(),
            full_ref: None,
        });
    }
    let r = if spec.reference.is_empty() {
        "HEAD"
    } else {
        &spec.reference
    };
    let out = git(
        None,
        env,
        ["ls-remote", "--", &spec.remote, r, &format!("{r}^{{}}")],
    )
    .await?;
    pick_ref(&spec.reference, &out).ok_or_else(|| {
        format!(
            "repository `{}` has no branch or tag `{}`",
            spec.remote, spec.reference
        )
    })
}

/// Whether the mirror holds `commit`.
async fn has_commit(mirror: &Path, commit: &str) -> bool {
    git(
        Some(mirror),
        &[],
        ["cat-file", "-e", &format!("{commit}^{{commit}}")],
    )
    .await
    .is_ok()
}

/// Makes sure the bare mirror at `mirror` has `r.commit` (fetching what is needed) and pins it.
async fn fetch_into_mirror(
    mirror: &Path,
    spec: &GitSpec,
    r: &Resolved,
    env: &[(&str, &OsStr)],
) -> Result<(), String> {
    if !mirror.join("HEAD").exists() {
        let parent = mirror.parent().unwrap_or(mirror);
        git(
            Some(parent),
            &[],
            [
                OsStr::new("init"),
                "-q".as_ref(),
                "--bare".as_ref(),
                mirror.as_os_str(),
            ],
        )
        .await?;
        // Fetched commits may be reachable from nothing but our pins; never let git prune them.
        git(Some(mirror), &[], ["config", "gc.auto", "0"]).await?;
    }
    let c = &r.commit;
    if !has_commit(mirror, c).await {
        let mut attempts: Vec<Vec<String>> = Vec::new();
        match r.full_ref.as_deref() {
            Some("HEAD") => attempts.push(vec!["HEAD".into()]),
            Some(full) => attempts.push(vec![format!("+{full}:{full}")]),
            None => {}
        }
        // The ref may have moved since it was resolved, or be a bare SHA: ask for the commit,
        // then (for servers that refuse that) for every branch and tag.
        attempts.push(vec![c.clone()]);
        attempts.push(vec![
            "+refs/heads/*:refs/heads/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ]);
        let mut last_err = String::new();
        for refspecs in attempts {
            let mut args = vec![
                "fetch".to_owned(),
                "-q".into(),
                "--no-tags".into(),
                "--".into(),
                spec.remote.clone(),
            ];
            args.extend(refspecs);
            if let Err(e) = git(Some(mirror), env, &args).await {
                last_err = e;
            }
            if has_commit(mirror, c).await {
                break;
            }
        }
        if !has_commit(mirror, c).await {
            return Err(format!(
                "cannot fetch commit {c} of `{}` (`{}`): {last_err}",
                spec.remote,
                if spec.reference.is_empty() {
                    "HEAD"
                } else {
                    &spec.reference
                }
            ));
        }
    }
    git(
        Some(mirror),
        &[],
        ["update-ref", &format!("refs/memobuild/pins/{c}"), c],
    )
    .await?;
    Ok(())
}

/// Checks the commit out into `dir/tree`, with the repository itself when `keep`.
async fn checkout(
    mirror: &Path,
    dir: &Path,
    spec: &GitSpec,
    r: &Resolved,
    keep: bool,
) -> Result<PathBuf, String> {
    let tree = dir.join("tree");
    let c = &r.commit;
    if !keep {
        tokio::fs::create_dir(&tree)
            .await
            .map_err(|e| format!("`{}`: {e}", tree.display()))?;
        let index = dir.join("index");
        let env = [("GIT_INDEX_FILE", index.as_os_str())];
        let mut git_dir = std::ffi::OsString::from("--git-dir=");
        git_dir.push(mirror);
        let mut work_tree = std::ffi::OsString::from("--work-tree=");
        work_tree.push(&tree);
        let base: [&OsStr; 2] = [&git_dir, &work_tree];
        let read = base
            .iter()
            .copied()
            .chain(["read-tree".as_ref(), OsStr::new(c)]);
        git(Some(dir), &env, read).await?;
        let co = base.iter().copied().chain([
            "checkout-index".as_ref(),
            "-a".as_ref(),
            OsStr::new("-f"),
        ]);
        git(Some(dir), &env, co).await?;
        return Ok(tree);
    }
    git(Some(dir), &[], ["init", "-q", "tree"]).await?;
    let pin = format!("refs/memobuild/pins/{c}");
    let branch = r
        .full_ref
        .as_deref()
        .and_then(|f| f.strip_prefix("refs/heads/"));
    let local = match r.full_ref.as_deref() {
        Some(f) if f.starts_with("refs/heads/") || f.starts_with("refs/tags/") => f.to_owned(),
        _ => "refs/memobuild/checkout".to_owned(),
    };
    let mut from = std::ffi::OsString::from("file://");
    from.push(mirror);
    git(
        Some(&tree),
        &[],
        [
            OsStr::new("fetch"),
            "-q".as_ref(),
            // The fresh repository's unborn branch may be the one fetched into.
            "--update-head-ok".as_ref(),
            "--no-tags".as_ref(),
            "--depth=1".as_ref(),
            &from,
            OsStr::new(&format!("{pin}:{local}")),
        ],
    )
    .await?;
    match branch {
        Some(b) => git(Some(&tree), &[], ["checkout", "-q", b]).await?,
        None => git(Some(&tree), &[], ["checkout", "-q", "--detach", c]).await?,
    };
    if local == "refs/memobuild/checkout" {
        git(Some(&tree), &[], ["update-ref", "-d", &local]).await?;
    }
    git(Some(&tree), &[], ["remote", "add", "origin", &spec.remote]).await?;
    Ok(tree)
}

/// An exclusive `flock` on `path`, created if missing (blocking: call off the runtime).
fn lock(path: &Path) -> Result<Flock<File>, String> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening `{}`: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking `{}`: {e}", path.display()))
}

/// The environment git's ssh gets, and the known_hosts file it names (removed on drop).
struct GitEnv {
    vars: Vec<(&'static str, OsString)>,
    _known_hosts: Option<tempfile::NamedTempFile>,
}

impl GitEnv {
    /// - `SSH_AUTH_SOCK`: the agent `--ssh` gave for the source's `git.mountsshsock` id, or none
    ///   at all (an empty value: no agent of the user's is used unasked, as BuildKit forwards
    ///   only what `--ssh` names). Sources without the attr keep the process' environment.
    /// - With `git.knownsshhosts`, the lines go to a file of their own and git runs
    ///   `ssh -F /dev/null -o UserKnownHostsFile=FILE`, as BuildKit does: the server must be
    ///   one of those hosts. Without it, the user's own ssh configuration and known_hosts apply
    ///   (BuildKit turns host-key checking off instead; its client usually scans the keys).
    fn new(sock: Option<Option<PathBuf>>, spec: &GitSpec, tmp: &Path) -> Result<Self, String> {
        let mut vars = Vec::new();
        match sock {
            None => {}
            Some(Some(p)) => vars.push(("SSH_AUTH_SOCK", p.into_os_string())),
            Some(None) => vars.push(("SSH_AUTH_SOCK", OsString::new())),
        }
        let mut known = None;
        if let Some(lines) = &spec.known_hosts {
            std::fs::create_dir_all(tmp)
                .map_err(|e| format!("creating `{}`: {e}", tmp.display()))?;
            let mut f = tempfile::Builder::new()
                .prefix("known_hosts-")
                .tempfile_in(tmp)
                .map_err(|e| format!("creating a file in `{}`: {e}", tmp.display()))?;
            let mut text = lines.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            f.write_all(text.as_bytes())
                .map_err(|e| format!("writing `{}`: {e}", f.path().display()))?;
            vars.push(("GIT_SSH_COMMAND", OsString::from(ssh_command(f.path()))));
            known = Some(f);
        }
        Ok(GitEnv {
            vars,
            _known_hosts: known,
        })
    }

    fn pairs(&self) -> Vec<(&str, &OsStr)> {
        self.vars.iter().map(|(k, v)| (*k, v.as_os_str())).collect()
    }
}

/// The `GIT_SSH_COMMAND` that checks the server against a known_hosts file (git runs it with
/// the shell). With no ssh config read, the timeouts are ours: 30 s to connect and exchange
/// banners, and a server that leaves 4 keepalives in a row (15 s apart) unanswered is gone.
fn ssh_command(known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null {SSH_TIMEOUTS} -o UserKnownHostsFile={}",
        shell_quote(&known_hosts.to_string_lossy())
    )
}

/// ssh options bounding a connection to a server that stops answering (see [`ssh_command`]).
const SSH_TIMEOUTS: &str =
    "-o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4";

/// `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Solve {
    /// For a source with `git.mountsshsock`: the agent socket of its id, if the caller
    /// forwards one.
    async fn git_ssh_sock(&self, spec: &GitSpec) -> Result<Option<Option<PathBuf>>, String> {
        let Some(id) = spec.ssh_id.as_deref() else {
            return Ok(None);
        };
        let agent = self
            .build
            .caller
            .ssh
            .agent(id)
            .await
            .map_err(|e| format!("ssh agent `{id}`: {e}"))?;
        Ok(Some(agent))
    }

    /// The environment for git commands of `spec`, and the agent it uses.
    async fn git_env(&self, spec: &GitSpec) -> Result<(GitEnv, Option<Option<PathBuf>>), String> {
        let agent = self.git_ssh_sock(spec).await?;
        let env = GitEnv::new(agent.clone(), spec, &self.build.engine.state().tmp())?;
        Ok((env, agent))
    }

    /// A git failure's message, with a hint when the source wanted an ssh agent the caller did
    /// not forward.
    fn ssh_hint(spec: &GitSpec, agent: &Option<Option<PathBuf>>, message: String) -> String {
        match (spec.ssh_id.as_deref(), agent) {
            (Some(id), Some(None)) => format!(
                "{message} (no ssh agent was forwarded for `{id}`: pass `--ssh {id}` to use $SSH_AUTH_SOCK)"
            ),
            _ => message,
        }
    }

    fn solve_id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The commit a git source names now: the part of its key that can move. Remembered for
    /// the vertex's execution.
    pub(crate) async fn git_commit(
        &self,
        digest: &str,
        src: &pb::SourceOp,
    ) -> Result<String, SolveError> {
        let spec = GitSpec::from_op(src).map_err(|m| self.error(digest, m))?;
        let (env, agent) = self
            .git_env(&spec)
            .await
            .map_err(|m| self.error(digest, m))?;
        let r = resolve(&spec, &env.pairs())
            .await
            .map_err(|m| self.error(digest, Self::ssh_hint(&spec, &agent, m)))?;
        if let Ok(mut m) = RESOLVED.lock() {
            m.insert((self.solve_id(), digest.to_owned()), r.clone());
        }
        Ok(r.commit)
    }

    /// Fetches and checks out a git source into a layer.
    pub(crate) async fn git_source(
        &self,
        digest: &str,
        src: &pb::SourceOp,
    ) -> Result<Vec<Output>, SolveError> {
        let fail = |m: String| self.error(digest, m);
        let spec = GitSpec::from_op(src).map_err(&fail)?;
        let remembered = RESOLVED
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(self.solve_id(), digest.to_owned())));
        let (git_env, agent) = self.git_env(&spec).await.map_err(&fail)?;
        let env = git_env.pairs();
        let r = match remembered {
            Some(r) => r,
            None => resolve(&spec, &env)
                .await
                .map_err(|m| fail(Self::ssh_hint(&spec, &agent, m)))?,
        };

        let root = self.build.engine.state().git_mirrors();
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| fail(format!("creating `{}`: {e}", root.display())))?;
        let name = blake3::hash(spec.remote.as_bytes()).to_hex();
        let mirror = root.join(&name[..32]);
        let lock_path = root.join(format!("{}.lock", &name[..32]));
        let guard = tokio::task::spawn_blocking(move || lock(&lock_path))
            .await
            .map_err(|e| fail(format!("lock task failed: {e}")))?
            .map_err(&fail)?;
        fetch_into_mirror(&mirror, &spec, &r, &env)
            .await
            .map_err(|m| fail(Self::ssh_hint(&spec, &agent, m)))?;
        drop(guard);

        let dir = self.temp_dir().map_err(&fail)?;
        let keep = spec.keep_git_dir && spec.subdir.is_empty();
        let tree = checkout(&mirror, dir.path(), &spec, &r, keep)
            .await
            .map_err(&fail)?;
        let top = if spec.subdir.is_empty() {
            tree
        } else {
            let p = resolve_in_root(&tree, &spec.subdir, true)
                .map_err(|e| fail(format!("subdirectory `{}`: {e}", spec.subdir)))?;
            if !p.is_dir() {
                return Err(fail(format!(
                    "`{}` at {} has no directory `{}`",
                    spec.remote, r.commit, spec.subdir
                )));
            }
            p
        };
        let blobs = self.build.blobs().clone();
        let opts = self.opts.layer;
        let layer = tokio::task::spawn_blocking(move || {
            let l = write_layer(&top, &blobs, opts).map_err(|e| e.to_string());
            drop(dir);
            l
        })
        .await
        .map_err(|e| fail(format!("layer task failed: {e}")))?
        .map_err(&fail)?;
        Ok(vec![Output::Fs(FsRef {
            layers: vec![layer],
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verifies: `git.knownsshhosts` lands in a file of its own that git's ssh is pointed at
    // (ignoring the user's ssh config, as BuildKit does), the file goes when the build is
    // done with it, and a source without the attr leaves ssh as the user set it up.
    #[test]
    fn known_ssh_hosts_become_the_only_known_hosts_file() {
        let tmp = tempfile::tempdir().unwrap();
        let line = "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx";
        let src = op(
            "git://127.0.0.1:2222/r.git",
            &[
                (attr::ATTR_GIT_FULLURL, "ssh://git@127.0.0.1:2222/r.git"),
                (attr::ATTR_GIT_KNOWNSSHHOSTS, line),
            ],
        );
        let spec = GitSpec::from_op(&src).unwrap();
        let env = GitEnv::new(Some(None), &spec, &tmp.path().join("t")).unwrap();
        let pairs = env.pairs();
        assert_eq!(pairs[0], ("SSH_AUTH_SOCK", OsStr::new("")));
        let (k, cmd) = pairs[1];
        assert_eq!(k, "GIT_SSH_COMMAND");
        let cmd = cmd.to_str().unwrap().to_owned();
        let file = cmd
            .strip_prefix(&format!(
                "ssh -F /dev/null {SSH_TIMEOUTS} -o UserKnownHostsFile="
            ))
            .unwrap();
        assert_eq!(std::fs::read_to_string(file).unwrap(), format!("{line}\n"));
        drop(env);
        assert!(!Path::new(file).exists());

        let plain = GitSpec::from_op(&op("git://h/r.git", &[])).unwrap();
        assert_eq!(plain.known_hosts, None);
        let env = GitEnv::new(None, &plain, tmp.path()).unwrap();
        assert!(env.pairs().is_empty());
    }

    #[test]
    fn shell_quote_keeps_one_word() {
        assert_eq!(shell_quote("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_quote("/my dir/it's"), "'/my dir/it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    fn op(id: &str, attrs: &[(&str, &str)]) -> pb::SourceOp {
        pb::SourceOp {
            identifier: id.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn identifiers() {
        let s = GitSpec::from_op(&op(
            "git://127.0.0.1:9418/repo#v1:sub/dir",
            &[(attr::ATTR_GIT_FULLURL, "git://127.0.0.1:9418/repo")],
        ))
        .unwrap();
        assert_eq!(s.remote, "git://127.0.0.1:9418/repo");
        assert_eq!((s.reference.as_str(), s.subdir.as_str()), ("v1", "sub/dir"));
        assert!(!s.keep_git_dir);

        let s = GitSpec::from_op(&op(
            "git://github.com/moby/buildkit.git#main",
            &[(attr::ATTR_GIT_KEEPGITDIR, "true")],
        ))
        .unwrap();
        assert_eq!(s.remote, "https://github.com/moby/buildkit.git");
        assert_eq!((s.reference.as_str(), s.subdir.as_str()), ("main", ""));
        assert!(s.keep_git_dir);

        let s = GitSpec::from_op(&op("git://h/r#:/a/../b/./", &[])).unwrap();
        assert_eq!((s.reference.as_str(), s.subdir.as_str()), ("", "b"));
        assert!(GitSpec::from_op(&op("https://h/r.git", &[])).is_err());
    }

    #[test]
    fn transports() {
        assert!(is_git_transport("git@github.com:moby/buildkit.git"));
        assert!(is_git_transport("ssh://git@h/r"));
        assert!(!is_git_transport("github.com/moby/buildkit.git"));
        assert!(!is_git_transport("h:9418/r"));
    }

    #[test]
    fn subdirs_and_shas() {
        assert_eq!(clean_subdir("/"), "");
        assert_eq!(clean_subdir("../x//y"), "x/y");
        assert!(is_commit_sha(&"a".repeat(40)));
        assert!(!is_commit_sha("abc1234"));
    }

    #[test]
    fn refs_resolve_as_buildkit_prefers() {
        let ls = "1111111111111111111111111111111111111111\tHEAD\n\
                  2222222222222222222222222222222222222222\trefs/heads/v1\n\
                  3333333333333333333333333333333333333333\trefs/tags/v1\n\
                  4444444444444444444444444444444444444444\trefs/tags/v1^{}\n\
                  5555555555555555555555555555555555555555\trefs/tags/v2\n\
                  6666666666666666666666666666666666666666\trefs/tags/v2^{}\n";
        let r = pick_ref("v1", ls).unwrap();
        assert_eq!(r.commit, "2".repeat(40));
        assert_eq!(r.full_ref.as_deref(), Some("refs/heads/v1"));
        let r = pick_ref("v2", ls).unwrap();
        assert_eq!(
            r.commit,
            "6".repeat(40),
            "annotated tags peel to the commit"
        );
        assert_eq!(r.full_ref.as_deref(), Some("refs/tags/v2"));
        let r = pick_ref("refs/tags/v1", ls).unwrap();
        assert_eq!(r.commit, "4".repeat(40));
        assert_eq!(pick_ref("", ls).unwrap().commit, "1".repeat(40));
        assert!(pick_ref("nope", ls).is_none());
    }
}
