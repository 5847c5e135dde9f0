//! Channels, tree builders and tree snapshots shared by the transfer tests.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use filetime::FileTime;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::filesync::transport::Message;
use crate::filesync::{
    Packet, ReceiveOptions, ReceiveStats, SendOptions, SendStats, Stat, receive, send,
};

/// Capacity of the channels between a real sender and receiver: 1, so that a side that stops
/// reading while it writes deadlocks the test instead of hiding in a buffer.
const CAPACITY: usize = 1;

pub fn stream(
    mut rx: mpsc::Receiver<Packet>,
) -> impl Stream<Item = Result<Packet, Infallible>> + Unpin {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok)
}

/// Sends `src` into `dest` with the real sender and receiver.
pub async fn transfer(
    src: &Path,
    dest: &Path,
    send_options: SendOptions,
    receive_options: ReceiveOptions,
) -> (SendStats, ReceiveStats) {
    let (to_receiver, from_sender) = mpsc::channel(CAPACITY);
    let (to_sender, from_receiver) = mpsc::channel(CAPACITY);
    let (sent, received) = tokio::join!(
        send(src, send_options, stream(from_receiver), to_receiver),
        receive(dest, receive_options, stream(from_sender), to_sender),
    );
    (sent.unwrap(), received.unwrap())
}

/// The receiver options the round trips use: keep owners (the tests run as root).
pub fn keep_owners() -> ReceiveOptions {
    ReceiveOptions {
        chown: true,
        ..ReceiveOptions::default()
    }
}

/// The STATs the sender lists for `src`, read by a fake receiver that requests nothing.
pub async fn listing(src: &Path, options: SendOptions) -> Vec<Stat> {
    let (to_receiver, mut from_sender) = mpsc::channel(CAPACITY);
    let (to_sender, from_receiver) = mpsc::channel(CAPACITY);
    let sender = send(src, options, stream(from_receiver), to_receiver);
    let receiver = async move {
        let mut stats = Vec::new();
        while let Some(p) = from_sender.recv().await {
            assert_eq!(p.r#type, 0, "only STATs before the end of the listing");
            match p.stat {
                Some(s) => stats.push(s),
                None => break,
            }
        }
        to_sender.send(Message::Fin.into_packet()).await.unwrap();
        let fin = from_sender.recv().await.unwrap();
        assert_eq!(fin.r#type, 3, "the sender answers FIN with FIN");
        stats
    };
    let (sent, stats) = tokio::join!(sender, receiver);
    assert_eq!(sent.unwrap().entries, stats.len() as u64);
    stats
}

pub fn paths(stats: &[Stat]) -> Vec<&str> {
    stats.iter().map(|s| s.path.as_str()).collect()
}

pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

pub fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the mtime (and atime) of `rel`, not following a symlink.
pub fn set_mtime(root: &Path, rel: &str, ns: i64) {
    let t = FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(root.join(rel), t, t).unwrap();
}

/// Gives every entry under `root` a distinct mtime with nanoseconds, children before parents
/// (setting a child's time does not touch its parent's).
pub fn stamp_all(root: &Path, base: i64) {
    let all: Vec<String> = snapshot(root).into_keys().collect();
    for (i, rel) in all.iter().enumerate().rev() {
        set_mtime(root, rel, base + i as i64 * 1_000_000_007);
    }
}

/// What a test compares of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Symlink target.
    pub target: Option<String>,
    pub content: Option<Vec<u8>>,
    /// For a file with several links: the first of its paths in the tree.
    pub link_group: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry below `root` (not following symlinks), by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    visit(root, "", &mut out, &mut inodes);
    out
}

fn visit(
    root: &Path,
    rel: &str,
    out: &mut BTreeMap<String, Entry>,
    inodes: &mut HashMap<(u64, u64), String>,
) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let link_group = (ft.is_file() && md.nlink() > 1).then(|| {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mut xattrs = BTreeMap::new();
        for key in xattr::list(&p).unwrap() {
            let value = xattr::get(&p, &key).unwrap().unwrap_or_default();
            xattrs.insert(key.into_string().unwrap(), value);
        }
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().to_str().unwrap().to_string()),
                content: ft.is_file().then(|| fs::read(&p).unwrap()),
                link_group,
                xattrs,
            },
        );
        if ft.is_dir() {
            visit(root, &rel, out, inodes);
        }
    }
}

/// Asserts two trees are the same entry by entry, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (a, b) = (snapshot(a), snapshot(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same paths"
    );
    for (path, ea) in &a {
        assert_eq!(Some(ea), b.get(path), "entry `{path}`");
    }
}
