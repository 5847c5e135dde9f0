//! A real nginx (Debian's package, `hack/setup.sh` installs it) serving a directory over
//! WebDAV `PUT`, the smallest "any Bazel HTTP cache" a team could put behind `--remote-cache`.
//! Killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Nginx {
    /// Starts nginx on a free loopback port, serving (and storing `PUT`s into) [`Nginx::root`].
    pub fn start() -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} missing: run hack/setup.sh (it installs Debian's nginx)"
        );
        let dir = tempfile::tempdir().expect("nginx dir");
        std::fs::create_dir_all(dir.path().join("root")).expect("mkdir root");
        // nginx takes a port number, not a listener: pick one, and retry if someone took it.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, config(dir.path(), port)).expect("write nginx.conf");
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        child,
                        dir,
                        url: format!("http://127.0.0.1:{port}"),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let out = child.wait_with_output().expect("nginx output");
            eprintln!(
                "nginx did not come up on port {port}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("nginx did not start (see above)");
    }

    /// The directory nginx serves and stores into.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One process in the foreground (killed with the test), everything under `dir`, WebDAV `PUT`
/// creating the `ac/` and `cas/` directories on first use, no body size limit (layers).
fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/root;
        client_max_body_size 0;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"
    )
}
