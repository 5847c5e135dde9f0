//! A scripted sender: packet builders and a destination next to a directory that must stay
//! untouched, for the hostile-sender tests.

use std::fs;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::filesync::mode::{MODE_DIR, MODE_SYMLINK};
use crate::filesync::tests::harness::{snapshot, stream, write};
use crate::filesync::transport::Message;
use crate::filesync::{FilesyncError, Packet, ReceiveOptions, ReceiveStats, Stat, receive};

pub const MTIME: i64 = 1_500_000_000_000_000_001;

pub fn stat(path: &str, mode: u32, size: i64, linkname: &str) -> Message {
    Message::Stat(Some(Stat {
        path: path.into(),
        mode,
        size,
        linkname: linkname.into(),
        mod_time: MTIME,
        ..Stat::default()
    }))
}

pub fn file(path: &str, size: i64) -> Message {
    stat(path, 0o644, size, "")
}

pub fn dir(path: &str) -> Message {
    stat(path, MODE_DIR | 0o755, 0, "")
}

pub fn link(path: &str, target: &str) -> Message {
    stat(path, MODE_SYMLINK | 0o777, target.len() as i64, target)
}

pub fn hard(path: &str, target: &str) -> Message {
    stat(path, 0o644, 0, target)
}

pub fn end() -> Message {
    Message::Stat(None)
}

pub fn data(id: u32, bytes: &str) -> Message {
    Message::Data(id, bytes.as_bytes().to_vec())
}

/// A destination next to a directory the sender must never reach.
pub struct Sandbox {
    pub outer: tempfile::TempDir,
    pub dest: PathBuf,
    pub outside: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let outer = tempfile::tempdir().unwrap();
        let (dest, outside) = (outer.path().join("dest"), outer.path().join("outside"));
        fs::create_dir(&dest).unwrap();
        write(&outside, "target", "secret");
        Sandbox {
            outer,
            dest,
            outside,
        }
    }

    pub fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_string()
    }

    /// Nothing appeared next to `dest` and nothing changed in `outside`.
    pub fn assert_contained(&self) {
        let mut top: Vec<String> = fs::read_dir(self.outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["dest", "outside"]);
        let inside = snapshot(&self.outside);
        assert_eq!(inside.keys().collect::<Vec<_>>(), ["target"]);
        assert_eq!(inside["target"].content.as_deref(), Some(&b"secret"[..]));
    }

    pub fn dest_names(&self) -> Vec<String> {
        snapshot(&self.dest).into_keys().collect()
    }

    /// Feeds `script` to a receiver into `dest`, then ends the stream.
    pub async fn run(
        &self,
        options: ReceiveOptions,
        script: Vec<Message>,
    ) -> (Result<ReceiveStats, FilesyncError>, Vec<Packet>) {
        run_script(&self.dest, options, script).await
    }
}

pub async fn run_script(
    dest: &Path,
    options: ReceiveOptions,
    script: Vec<Message>,
) -> (Result<ReceiveStats, FilesyncError>, Vec<Packet>) {
    let (to_receiver, from_sender) = mpsc::channel(script.len() + 1);
    let (to_sender, mut from_receiver) = mpsc::channel(1024);
    for m in script {
        to_receiver.send(m.into_packet()).await.unwrap();
    }
    drop(to_receiver);
    let result = receive(dest, options, stream(from_sender), to_sender).await;
    let mut replies = Vec::new();
    while let Ok(p) = from_receiver.try_recv() {
        replies.push(p);
    }
    (result, replies)
}
