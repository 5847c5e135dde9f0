//! Scripted senders that break the protocol or try to write outside the destination. Every
//! test checks that the receiver fails (or copes) and that nothing outside `dest` changed.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::filesync::mode::{
    MODE_CHAR_DEVICE, MODE_DEVICE, MODE_DIR, MODE_NAMED_PIPE, MODE_SYMLINK,
};
use crate::filesync::tests::harness::{snapshot, stream, write};
use crate::filesync::transport::Message;
use crate::filesync::{FilesyncError, Packet, ReceiveOptions, ReceiveStats, Stat, receive};

const MTIME: i64 = 1_500_000_000_000_000_001;

fn stat(path: &str, mode: u32, size: i64, linkname: &str) -> Message {
    Message::Stat(Some(Stat {
        path: path.into(),
        mode,
        size,
        linkname: linkname.into(),
        mod_time: MTIME,
        ..Stat::default()
    }))
}

fn file(path: &str, size: i64) -> Message {
    stat(path, 0o644, size, "")
}

fn dir(path: &str) -> Message {
    stat(path, MODE_DIR | 0o755, 0, "")
}

fn link(path: &str, target: &str) -> Message {
    stat(path, MODE_SYMLINK | 0o777, target.len() as i64, target)
}

fn hard(path: &str, target: &str) -> Message {
    stat(path, 0o644, 0, target)
}

fn end() -> Message {
    Message::Stat(None)
}

fn data(id: u32, bytes: &str) -> Message {
    Message::Data(id, bytes.as_bytes().to_vec())
}

/// A destination next to a directory the sender must never reach.
struct Sandbox {
    outer: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
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

    fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_string()
    }

    /// Nothing appeared next to `dest` and nothing changed in `outside`.
    fn assert_contained(&self) {
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

    fn dest_names(&self) -> Vec<String> {
        snapshot(&self.dest).into_keys().collect()
    }

    /// Feeds `script` to a receiver into `dest`, then ends the stream.
    async fn run(
        &self,
        options: ReceiveOptions,
        script: Vec<Message>,
    ) -> (Result<ReceiveStats, FilesyncError>, Vec<Packet>) {
        run_script(&self.dest, options, script).await
    }
}

async fn run_script(
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

#[tokio::test]
async fn escaping_and_unclean_paths_are_rejected() {
    for path in [
        "../x",
        "/abs",
        "a/../../x",
        "../outside/target",
        "..",
        "./x",
        "x/",
    ] {
        let sb = Sandbox::new();
        let script = vec![file(path, 3), end(), data(0, "abc"), data(0, "")];
        let (result, replies) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::InvalidPath { id: 0, .. })),
            "{path}: {result:?}"
        );
        // The sender is told why.
        assert_eq!(replies.last().map(|p| p.r#type), Some(4), "{path}");
        sb.assert_contained();
        assert!(sb.dest_names().is_empty(), "{path}");
    }
}

#[tokio::test]
async fn out_of_order_listings_are_rejected() {
    let cases: Vec<(Vec<Message>, u32)> = vec![
        (vec![file("b", 0), file("a", 0)], 1),
        (vec![file("a", 0), file("a", 0)], 1),
        (vec![dir("a"), file("a.txt", 0), file("a/x", 0)], 2),
        (vec![file("a/x", 0)], 0),
        (vec![dir("a"), dir("b"), file("a/y", 0)], 2),
    ];
    for (script, bad) in cases {
        let sb = Sandbox::new();
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::OutOfOrder { id, .. }) if id == bad),
            "{result:?}"
        );
        sb.assert_contained();
    }
}

#[tokio::test]
async fn nothing_goes_under_a_symlink_entry() {
    let sb = Sandbox::new();
    let outside = sb.outside_abs();
    for target in [outside.as_str(), "../outside"] {
        let script = vec![
            link("l", target),
            file("l/evil", 3),
            end(),
            data(1, "abc"),
            data(1, ""),
        ];
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::OutOfOrder { id: 1, .. })),
            "{result:?}"
        );
        sb.assert_contained();
    }
}

#[tokio::test]
async fn symlinks_already_in_dest_are_replaced_not_followed() {
    let sb = Sandbox::new();
    symlink(&sb.outside, sb.dest.join("d")).unwrap();
    symlink(sb.outside.join("target"), sb.dest.join("f")).unwrap();
    let script = vec![
        dir("d"),
        file("d/evil", 3),
        file("f", 3),
        end(),
        data(1, "abc"),
        data(1, ""),
        data(2, "new"),
        data(2, ""),
    ];
    let (result, replies) = sb.run(ReceiveOptions::default(), script).await;
    let stats = result.unwrap();
    assert_eq!(stats.files_requested, 2);
    let kinds: Vec<(i32, u32)> = replies.iter().map(|p| (p.r#type, p.id)).collect();
    assert_eq!(kinds, [(1, 1), (1, 2), (3, 0)], "REQ 1, REQ 2, FIN");
    let entries = snapshot(&sb.dest);
    assert_eq!(entries["d"].kind, "dir");
    assert_eq!(entries["d/evil"].content.as_deref(), Some(&b"abc"[..]));
    assert_eq!(entries["f"].kind, "file");
    assert_eq!(entries["f"].content.as_deref(), Some(&b"new"[..]));
    sb.assert_contained();
}

#[tokio::test]
async fn hard_links_only_to_regular_files_sent_before() {
    let sb = Sandbox::new();
    let outside_target = format!("{}/target", sb.outside_abs());
    let cases = vec![
        (vec![hard("a", "b"), file("b", 0)], 0),
        (vec![dir("d"), hard("e", "d")], 1),
        (vec![file("a", 0), hard("b", "../outside/target")], 1),
        (vec![file("a", 0), hard("b", &outside_target)], 1),
        (vec![link("s", &outside_target), hard("t", "s")], 1),
        (vec![file("a", 0), hard("b", "a"), hard("c", "b")], 2),
    ];
    for (script, bad) in cases {
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::HardLinkTarget { id, .. }) if id == bad),
            "{result:?}"
        );
        sb.assert_contained();
    }
    // A valid one links.
    let script = vec![
        file("a", 3),
        hard("b", "a"),
        end(),
        data(0, "abc"),
        data(0, ""),
    ];
    sb.run(ReceiveOptions::default(), script).await.0.unwrap();
    let entries = snapshot(&sb.dest);
    assert_eq!(entries["b"].link_group.as_deref(), Some("a"));
    assert_eq!(entries["b"].content.as_deref(), Some(&b"abc"[..]));
}

#[tokio::test]
async fn data_past_the_declared_size_is_rejected_and_leaves_nothing() {
    for chunks in [vec!["abc"], vec!["ab", "c"]] {
        let sb = Sandbox::new();
        let mut script = vec![file("f", 2), end()];
        script.extend(chunks.iter().map(|c| data(0, c)));
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(
                result,
                Err(FilesyncError::DataPastSize { id: 0, size: 2, .. })
            ),
            "{result:?}"
        );
        assert!(
            sb.dest_names().is_empty(),
            "no temporary file left: {:?}",
            sb.dest_names()
        );
        sb.assert_contained();
    }
}

#[tokio::test]
async fn data_for_ids_never_requested_is_rejected() {
    let sb = Sandbox::new();
    let cases = vec![
        (vec![file("f", 3), end(), data(1, "x")], 1),
        (vec![dir("d"), file("d/f", 1), end(), data(0, "x")], 0),
        (vec![file("f", 3), end(), data(7, "")], 7),
    ];
    for (script, bad) in cases {
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::UnrequestedData { id }) if id == bad),
            "{result:?}"
        );
        sb.assert_contained();
    }
    // A file the receiver already has is not requested, so its data is unwanted too (data
    // after the listing would come after the transfer is complete, and be ignored).
    let sb = Sandbox::new();
    let first = vec![file("f", 3), end(), data(0, "abc"), data(0, "")];
    sb.run(ReceiveOptions::default(), first).await.0.unwrap();
    let again = vec![file("f", 3), data(0, "xyz"), data(0, ""), end()];
    let (result, _) = sb.run(ReceiveOptions::default(), again).await;
    assert!(
        matches!(result, Err(FilesyncError::UnrequestedData { id: 0 })),
        "{result:?}"
    );
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"abc");
}

#[tokio::test]
async fn invalid_stats_are_rejected() {
    let sb = Sandbox::new();
    let cases = vec![
        stat("neg", 0o644, -1, ""),
        stat("both", MODE_DIR | MODE_SYMLINK, 0, ""),
        stat("chr", MODE_CHAR_DEVICE, 0, ""),
        stat("empty-link", MODE_SYMLINK | 0o777, 0, ""),
    ];
    for m in cases {
        let (result, _) = sb.run(ReceiveOptions::default(), vec![m]).await;
        assert!(
            matches!(result, Err(FilesyncError::InvalidStat { id: 0, .. })),
            "{result:?}"
        );
    }
    // An absurd size is only a promise: what arrives is written.
    let script = vec![file("huge", i64::MAX), end(), data(0, "abc"), data(0, "")];
    sb.run(ReceiveOptions::default(), script).await.0.unwrap();
    assert_eq!(fs::read(sb.dest.join("huge")).unwrap(), b"abc");
    sb.assert_contained();
}

#[tokio::test]
async fn a_transfer_failing_half_way_keeps_old_files_whole() {
    let sb = Sandbox::new();
    write(&sb.dest, "f", "old content");
    let half = vec![file("f", 11), end(), data(0, "new c")];
    let mut aborted = half.clone();
    aborted.push(Message::Err("boom".into()));
    let (result, replies) = sb.run(ReceiveOptions::default(), aborted).await;
    assert!(
        matches!(&result, Err(FilesyncError::Peer(m)) if m == "boom"),
        "{result:?}"
    );
    assert!(
        replies.iter().all(|p| p.r#type != 4),
        "no ERR back to a sender that sent one"
    );
    // The stream just ending is no better.
    let (result, _) = sb.run(ReceiveOptions::default(), half).await;
    assert!(
        matches!(result, Err(FilesyncError::UnexpectedEof(_))),
        "{result:?}"
    );
    assert_eq!(sb.dest_names(), ["f"], "no temporary file left");
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"old content");
    sb.assert_contained();
}

#[tokio::test]
async fn protocol_violations_are_rejected() {
    let sb = Sandbox::new();
    let cases = vec![
        vec![file("f", 3), end(), Message::Fin],
        vec![file("f", 3), end(), file("g", 0)],
        vec![file("f", 3), end(), end()],
        vec![Message::Req(0)],
    ];
    for script in cases {
        let (result, _) = sb.run(ReceiveOptions::default(), script).await;
        assert!(
            matches!(result, Err(FilesyncError::UnexpectedPacket { .. })),
            "{result:?}"
        );
        sb.assert_contained();
    }
}

#[tokio::test]
async fn special_files_are_created_only_when_allowed() {
    let sb = Sandbox::new();
    let script = || {
        vec![
            stat("fifo", MODE_NAMED_PIPE | 0o600, 0, ""),
            stat("null", MODE_DEVICE | MODE_CHAR_DEVICE | 0o666, 0, ""),
            end(),
        ]
    };
    let (result, replies) = sb.run(ReceiveOptions::default(), script()).await;
    assert_eq!(result.unwrap().skipped, 2);
    assert!(sb.dest_names().is_empty());
    assert!(
        replies.iter().all(|p| p.r#type != 1),
        "special files are never requested"
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: FIFO/device creation not tested");
        return;
    }
    let allowed = ReceiveOptions {
        special_files: true,
        ..ReceiveOptions::default()
    };
    let mut script = script();
    // /dev/null's numbers, in fsutil's split form.
    if let Message::Stat(Some(st)) = &mut script[1] {
        (st.devmajor, st.devminor) = (1, 3);
    }
    let (result, _) = sb.run(allowed, script).await;
    match result {
        Ok(stats) => {
            assert_eq!(stats.skipped, 0);
            assert_eq!(snapshot(&sb.dest)["fifo"].kind, "special");
            let rdev = std::os::unix::fs::MetadataExt::rdev(
                &fs::symlink_metadata(sb.dest.join("null")).unwrap(),
            );
            assert_eq!((libc::major(rdev), libc::minor(rdev)), (1, 3));
        }
        // A container without CAP_MKNOD cannot make devices even as root.
        Err(FilesyncError::Io { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("mknod not permitted here: device creation not tested");
        }
        Err(e) => panic!("{e:?}"),
    }
    sb.assert_contained();
}

#[tokio::test]
async fn a_listing_entry_cannot_replace_a_file_being_received() {
    let sb = Sandbox::new();
    let target = sb.outside.join("target");
    fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (to_receiver, from_sender) = mpsc::channel(16);
    let (to_sender, mut from_receiver) = mpsc::channel(16);
    let receiver = receive(
        &sb.dest,
        ReceiveOptions::default(),
        stream(from_sender),
        to_sender,
    );
    let sender = async {
        // `-f` sorts before the receiver's temporary names (they start with `.`).
        to_receiver.send(file("-f", 3).into_packet()).await.unwrap();
        let req = from_receiver.recv().await.unwrap();
        assert_eq!((req.r#type, req.id), (1, 0));
        let temp = fs::read_dir(&sb.dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with(crate::filesync::disk::TEMP_PREFIX))
            .expect("a temporary file while the data is outstanding");
        let target = target.to_str().unwrap();
        for m in [link(&temp, target), data(0, "abc"), data(0, ""), end()] {
            to_receiver.send(m.into_packet()).await.unwrap();
        }
        drop(to_receiver);
    };
    let (result, ()) = tokio::join!(receiver, sender);
    assert!(
        matches!(result, Err(FilesyncError::InvalidPath { id: 1, .. })),
        "{result:?}"
    );
    let mode = fs::metadata(&target).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o600
    );
    assert!(sb.dest_names().is_empty(), "{:?}", sb.dest_names());
    sb.assert_contained();
}
