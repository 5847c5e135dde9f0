//! SSH agents for `RUN --mount=type=ssh`.
//!
//! A build is given agents by id ([`SshAgents`]): a running agent's socket (`--ssh default`,
//! `--ssh ID=/path/agent.sock`), or a [`PrivateAgent`] started for the build and loaded with key
//! files (`--ssh ID=/path/key`). Each exec that mounts one gets its own socket ([`AgentProxy`]),
//! owned and permissioned as the mount says, that relays the agent protocol to the agent and
//! refuses what would change it (adding, removing or locking keys, extensions), as BuildKit's
//! read-only agent does. Neither a key nor an agent's socket path enters an op, a key, a layer or
//! a log.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// The id an ssh mount without `id=` asks for (BuildKit's `sshforward.DefaultID`).
pub const DEFAULT_ID: &str = "default";

/// Longest path a unix socket can be bound at (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The agent protocol's largest message (OpenSSH's `AGENT_MAX_LEN`).
const MAX_MESSAGE: usize = 256 * 1024;

/// Agent messages the proxy relays: list keys, sign, unlock. Everything else (add, remove,
/// lock, extensions, SSH1 requests) is answered with a failure without reaching the agent.
const ALLOWED_REQUESTS: [u8; 3] = [
    11, // SSH2_AGENTC_REQUEST_IDENTITIES
    13, // SSH2_AGENTC_SIGN_REQUEST
    23, // SSH_AGENTC_UNLOCK
];

/// `SSH_AGENT_FAILURE`.
const AGENT_FAILURE: u8 = 5;

/// Errors of setting up ssh agents.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A program the private agent needs is not installed.
    #[error(
        "`{0}` not found: install OpenSSH's client tools (e.g. `apt-get install openssh-client`) to use key files with --ssh, or pass an agent socket instead"
    )]
    MissingProgram(&'static str),
    /// A key file is protected by a passphrase.
    #[error(
        "ssh key `{0}` is protected by a passphrase: add it to your ssh-agent and pass `--ssh ID` (uses $SSH_AUTH_SOCK) instead"
    )]
    Passphrase(String),
    /// `ssh-add` refused a key.
    #[error("ssh key `{key}` cannot be loaded: {message}")]
    BadKey {
        /// The key file.
        key: String,
        /// What `ssh-add` said.
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Agent sockets by ssh id. Cheap to clone; `Debug` shows ids only.
#[derive(Clone, Default)]
pub struct SshAgents {
    sockets: BTreeMap<String, PathBuf>,
}

impl SshAgents {
    /// No agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the agent for `id` (`""` is [`DEFAULT_ID`]).
    pub fn insert(&mut self, id: impl Into<String>, socket: impl Into<PathBuf>) {
        let id = id.into();
        let id = if id.is_empty() {
            DEFAULT_ID.to_string()
        } else {
            id
        };
        self.sockets.insert(id, socket.into());
    }

    /// The agent socket for `id` (`""` is [`DEFAULT_ID`]).
    pub fn get(&self, id: &str) -> Option<&Path> {
        let id = if id.is_empty() { DEFAULT_ID } else { id };
        self.sockets.get(id).map(PathBuf::as_path)
    }

    /// The ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.sockets.keys().map(String::as_str)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl std::fmt::Debug for SshAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}

/// A private key file's bytes and its name for messages.
pub struct KeyFile {
    /// The path it was read from (for messages).
    pub name: String,
    /// Its contents.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("name", &self.name).finish()
    }
}

/// An `ssh-agent` started for one build and holding the keys it was given; stopped (and its
/// socket removed) when dropped. Should MemoBuild die first, the agent notices within seconds
/// that its parent is gone and exits by itself.
pub struct PrivateAgent {
    /// `sh`, run by `ssh-agent` as its command; it lives until its stdin closes.
    child: Child,
    /// The agent process (a child of `child`).
    agent_pid: i32,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for PrivateAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateAgent")
            .field("agent_pid", &self.agent_pid)
            .finish()
    }
}

impl PrivateAgent {
    /// Starts `ssh-agent` with its socket in a private directory under `parent` (or the system's
    /// temporary directory when that path would be too long for a socket) and loads `keys` into
    /// it with `ssh-add`. Blocks while it does.
    pub fn start(parent: &Path, keys: &[KeyFile]) -> Result<PrivateAgent, SshError> {
        for k in keys {
            if is_encrypted(&k.data) {
                return Err(SshError::Passphrase(k.name.clone()));
            }
        }
        let dir = socket_dir(parent)?;
        let socket = dir.path().join("agent.sock");
        // `ssh-agent -a SOCK COMMAND` runs COMMAND as the agent's parent and exits when it does;
        // the command prints the agent's pid and waits for its stdin (our pipe) to close.
        let mut child = Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .args(["sh", "-c", "echo \"$SSH_AGENT_PID\"; read -r _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_AGENT_PID")
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SshError::MissingProgram("ssh-agent"),
                _ => SshError::Other(format!("starting ssh-agent: {e}")),
            })?;
        let pid_line = child.stdout.take().and_then(|out| {
            let mut line = String::new();
            io::BufReader::new(out).read_line(&mut line).ok()?;
            line.trim().parse::<i32>().ok().filter(|p| *p > 0)
        });
        let Some(agent_pid) = pid_line else {
            let _ = child.kill();
            let out = child.wait_with_output();
            let said = out
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                .unwrap_or_default();
            return Err(SshError::Other(format!("ssh-agent did not start: {said}")));
        };
        let agent = PrivateAgent {
            child,
            agent_pid,
            socket,
            _dir: dir,
        };
        agent.wait_for_socket()?;
        for k in keys {
            agent.add(k)?;
        }
        Ok(agent)
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn wait_for_socket(&self) -> Result<(), SshError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                return Err(SshError::Other(format!(
                    "ssh-agent did not open `{}`",
                    self.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `ssh-add -` with the key on stdin; passphrase prompts go to a program that fails instead
    /// of a terminal, so an encrypted key we did not recognise fails rather than hangs.
    fn add(&self, key: &KeyFile) -> Result<(), SshError> {
        let mut p = Command::new("ssh-add")
            .args(["-q", "-"])
            .env("SSH_AUTH_SOCK", &self.socket)
            .env("SSH_ASKPASS", "false")
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env_remove("DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SshError::MissingProgram("ssh-add"),
                _ => SshError::Other(format!("running ssh-add: {e}")),
            })?;
        if let Some(mut stdin) = p.stdin.take() {
            // A refused key may close stdin early; the exit status says what happened.
            let _ = stdin.write_all(&key.data);
        }
        let out = p
            .wait_with_output()
            .map_err(|e| SshError::Other(format!("running ssh-add: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim().replace("(stdin)", "the key");
        if said.contains("passphrase") {
            return Err(SshError::Passphrase(key.name.clone()));
        }
        Err(SshError::BadKey {
            key: key.name.clone(),
            message: if said.is_empty() {
                format!("ssh-add failed ({})", out.status)
            } else {
                said
            },
        })
    }
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        // SIGTERM: the agent removes its socket and exits. Then its parent command.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.agent_pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private (0700) directory for a socket: under `parent` if the socket path fits, else in the
/// system's temporary directory.
fn socket_dir(parent: &Path) -> Result<tempfile::TempDir, SshError> {
    let fits = |d: &Path| d.as_os_str().len() + "/ssh-XXXXXX/agent.sock".len() <= MAX_SOCKET_PATH;
    if fits(parent)
        && std::fs::create_dir_all(parent).is_ok()
        && let Ok(d) = tempfile::Builder::new().prefix("ssh-").tempdir_in(parent)
    {
        return Ok(d);
    }
    tempfile::Builder::new()
        .prefix("memobuild-ssh-")
        .tempdir()
        .map_err(|e| SshError::Other(format!("creating a directory for an ssh socket: {e}")))
}

/// Whether a private key file is encrypted: an OpenSSH key whose cipher is not `none`, or an
/// encrypted PEM key (legacy `Proc-Type: 4,ENCRYPTED` or PKCS#8 `ENCRYPTED PRIVATE KEY`).
fn is_encrypted(data: &[u8]) -> bool {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(data);
    if text.contains("Proc-Type: 4,ENCRYPTED") || text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        return true;
    }
    let Some(body) = text
        .split("-----BEGIN OPENSSH PRIVATE KEY-----")
        .nth(1)
        .and_then(|b| b.split("-----END OPENSSH PRIVATE KEY-----").next())
    else {
        return false;
    };
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher name as a uint32-length-prefixed string.
    let Some(rest) = raw.strip_prefix(b"openssh-key-v1\0") else {
        return false;
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    rest.get(..len).is_some_and(|cipher| cipher != b"none")
}

/// One exec's socket for an ssh mount: a listener in a private directory whose connections are
/// relayed to an agent; stopped (connections closed, directory removed) when dropped.
pub(crate) struct AgentProxy {
    task: JoinHandle<()>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProxy {
    /// Listens on a fresh socket (in a private directory under `parent` when the path fits)
    /// owned by `uid:gid` with permission bits `mode`, relaying to the agent at `agent`. Must be
    /// called within a tokio runtime.
    pub(crate) fn start(
        parent: &Path,
        agent: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<AgentProxy, String> {
        let dir = socket_dir(parent).map_err(|e| e.to_string())?;
        let socket = dir.path().join("agent.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path `{}` is too long for a unix socket",
                socket.display()
            ));
        }
        let listener =
            UnixListener::bind(&socket).map_err(|e| format!("listening for ssh agent: {e}"))?;
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
            .and_then(|()| {
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode & 0o777))
            })
            .map_err(|e| format!("setting the ssh socket's owner and mode: {e}"))?;
        let agent = agent.to_path_buf();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let agent = agent.clone();
                        conns.spawn(async move {
                            if let Err(e) = relay_read_only(conn, &agent).await {
                                tracing::debug!("ssh agent connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("ssh agent socket: {e}");
                        break;
                    }
                }
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(AgentProxy {
            task,
            socket,
            _dir: dir,
        })
    }

    /// The socket to bind into the container.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection.
        self.task.abort();
    }
}

/// Relays one client connection: each request the client may make is forwarded to the agent
/// (connected on first use) and its reply returned; any other request gets a failure reply.
/// The client may be any byte stream: an exec's socket connection here, or a session's
/// `SSH/ForwardAgent` call in `memobuild build --addr`, which serves the same read-only agent
/// as buildctl.
pub async fn relay_read_only<C>(mut client: C, agent: &Path) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream: Option<UnixStream> = None;
    while let Some(request) = read_message(&mut client).await? {
        if !request
            .first()
            .is_some_and(|t| ALLOWED_REQUESTS.contains(t))
        {
            write_message(&mut client, &[AGENT_FAILURE]).await?;
            continue;
        }
        let up = match &mut upstream {
            Some(u) => u,
            None => upstream.insert(UnixStream::connect(agent).await?),
        };
        write_message(up, &request).await?;
        let reply = read_message(up)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "agent closed"))?;
        write_message(&mut client, &reply).await?;
    }
    Ok(())
}

/// One agent protocol message (uint32 length, then that many bytes); `None` at a clean EOF.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("agent message of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn write_message<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "agent message too long"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_ids_not_paths() {
        let mut a = SshAgents::new();
        a.insert("", "/secret/place/agent.sock");
        a.insert("github", "/x.sock");
        assert_eq!(
            a.get("default"),
            Some(Path::new("/secret/place/agent.sock"))
        );
        assert_eq!(a.get(""), Some(Path::new("/secret/place/agent.sock")));
        assert!(a.get("gitlab").is_none());
        let shown = format!("{a:?}");
        assert!(shown.contains("github") && shown.contains("default"));
        assert!(!shown.contains("secret/place"));
    }

    #[test]
    fn encrypted_keys_are_recognised() {
        use base64::Engine as _;
        let openssh = |cipher: &str| {
            let mut raw = b"openssh-key-v1\0".to_vec();
            raw.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
            raw.extend_from_slice(cipher.as_bytes());
            raw.extend_from_slice(&[0; 16]);
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{b64}\n-----END OPENSSH PRIVATE KEY-----\n"
            )
        };
        assert!(is_encrypted(openssh("aes256-ctr").as_bytes()));
        assert!(!is_encrypted(openssh("none").as_bytes()));
        assert!(is_encrypted(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: x\n\nAAAA\n"
        ));
        assert!(is_encrypted(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
        ));
        assert!(!is_encrypted(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n"));
        assert!(!is_encrypted(b"not a key"));
    }

    /// A fake agent: answers every request with `[request type]`, counting requests.
    async fn fake_agent(dir: &Path) -> (PathBuf, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    while let Ok(Some(m)) = read_message(&mut c).await {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = write_message(&mut c, &[m[0]]).await;
                    }
                });
            }
        });
        (path, seen)
    }

    // Verifies: the per-exec socket gets the mount's mode, relays listing and signing requests
    // to the agent and answers requests that would change the agent (add, remove all, lock,
    // extensions) with a failure, without forwarding them; after drop the socket is gone.
    #[tokio::test]
    async fn proxy_relays_reads_and_refuses_changes() {
        let d = tempfile::tempdir().unwrap();
        let (agent, seen) = fake_agent(d.path()).await;
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let proxy = AgentProxy::start(d.path(), &agent, uid, gid, 0o640).unwrap();
        let md = std::fs::metadata(proxy.socket()).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        let mut c = UnixStream::connect(proxy.socket()).await.unwrap();
        for (request, reply) in [(11u8, 11u8), (17, 5), (13, 13), (19, 5), (22, 5), (27, 5)] {
            write_message(&mut c, &[request, 1, 2]).await.unwrap();
            let got = read_message(&mut c).await.unwrap().unwrap();
            assert_eq!(got, [reply], "request {request}");
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
        let socket = proxy.socket().to_path_buf();
        drop(proxy);
        assert!(!socket.exists());
    }

    /// `ssh-keygen -t ed25519` into `dir/name` with `passphrase`; `None` without OpenSSH tools.
    fn keygen(dir: &Path, name: &str, passphrase: &str) -> Option<(KeyFile, String)> {
        let path = dir.join(name);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        assert!(ok, "ssh-keygen failed");
        let fp = Command::new("ssh-keygen")
            .args(["-l", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let data = std::fs::read(&path).unwrap();
        Some((
            KeyFile {
                name: path.display().to_string(),
                data,
            },
            fp,
        ))
    }

    // Verifies: a private agent holds exactly the keys it was given (as `ssh-add -l` lists them
    // through its socket), and dropping it stops the agent and removes its socket; a
    // passphrase-protected key is refused with an error naming it, and a file that is no key is
    // an error naming it.
    #[test]
    fn private_agent_loads_keys_and_stops() {
        let d = tempfile::tempdir().unwrap();
        let Some((key, fp)) = keygen(d.path(), "id_plain", "") else {
            eprintln!("SKIPPED: ssh-keygen not installed");
            return;
        };
        let agent = PrivateAgent::start(&d.path().join("state"), &[key]).unwrap();
        let socket = agent.socket().to_path_buf();
        let list = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&list.stdout);
        assert!(list.status.success(), "{listed}");
        assert!(listed.contains(&fp), "{listed}");
        assert_eq!(listed.lines().count(), 1, "{listed}");
        let pid = agent.agent_pid;
        drop(agent);
        assert!(!socket.exists());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "ssh-agent {pid} still running");
            std::thread::sleep(Duration::from_millis(20));
        }

        let (locked, _) = keygen(d.path(), "id_locked", "secret phrase").unwrap();
        let e = PrivateAgent::start(d.path(), &[locked]).unwrap_err();
        assert!(matches!(e, SshError::Passphrase(_)), "{e}");
        assert!(e.to_string().contains("id_locked"), "{e}");

        let junk = KeyFile {
            name: "/keys/not-a-key".into(),
            data: b"hello".to_vec(),
        };
        let e = PrivateAgent::start(d.path(), &[junk]).unwrap_err();
        assert!(e.to_string().contains("/keys/not-a-key"), "{e}");
    }
}
