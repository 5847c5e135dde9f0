//! Sender → receiver round trips, and what the sender lists.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use crate::filesync::mode::{MODE_DIR, MODE_NAMED_PIPE, MODE_SETUID, MODE_STICKY, MODE_SYMLINK};
use crate::filesync::tests::harness::*;
use crate::filesync::{ReceiveOptions, SendOptions, compare_path};

const BIG: usize = 300 * 1024 + 17;

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i * 31 % 251) as u8).collect()
}

/// A tree with every kind of entry the transfer carries.
pub fn build_tree(root: &Path) {
    write(root, "empty", "");
    write(root, "big.bin", big_content());
    write(root, "dir/a.txt", "alpha");
    write(root, "dir/sub/deep.txt", "deep");
    write(root, "dir.txt", "sorts after everything in dir/");
    write(root, "dir0", "and so does this");
    fs::hard_link(root.join("big.bin"), root.join("dir/hard")).unwrap();
    mkdir(root, "links");
    symlink("/etc/passwd", root.join("links/abs")).unwrap();
    symlink("../dir/a.txt", root.join("links/rel")).unwrap();
    symlink("nowhere/at/all", root.join("links/dangling")).unwrap();
    write(root, "modes/setuid", "#!/bin/sh\n");
    chmod(root, "modes/setuid", 0o4755);
    write(root, "modes/none", "unreadable to all but root");
    chmod(root, "modes/none", 0o000);
    mkdir(root, "modes/sticky");
    chmod(root, "modes/sticky", 0o1777);
    mkdir(root, "modes/setgid");
    chmod(root, "modes/setgid", 0o2750);
    write(root, "modes/locked/inner", "inside a 0000 directory");
    chmod(root, "modes/locked", 0o000);
    write(root, "owned", "by someone else");
    std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    write(root, "xattr.txt", "with an attribute");
    xattr::set(root.join("xattr.txt"), "user.memobuild", b"value").unwrap();
    stamp_all(root, 1_600_000_000_123_456_789);
}

#[tokio::test]
async fn round_trip_preserves_content_and_metadata() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    let out = dest.path().join("out");
    let (sent, received) = transfer(src.path(), &out, SendOptions::default(), keep_owners()).await;
    assert_same_tree(src.path(), &out);

    // Every non-empty regular file once; not the hard link, the empty file, or anything else.
    let files = [
        "big.bin",
        "dir/a.txt",
        "dir/sub/deep.txt",
        "dir.txt",
        "dir0",
        "modes/setuid",
        "modes/none",
        "modes/locked/inner",
        "owned",
        "xattr.txt",
    ];
    let bytes: u64 = files
        .iter()
        .map(|f| fs::symlink_metadata(src.path().join(f)).unwrap().len())
        .sum();
    assert_eq!(received.files_requested, files.len() as u64);
    assert_eq!(sent.files_sent, files.len() as u64);
    assert_eq!((received.bytes_received, sent.bytes_sent), (bytes, bytes));
    assert_eq!(received.entries, sent.entries);
    assert_eq!(sent.entries, snapshot(src.path()).len() as u64);
    assert_eq!(received.removed, 0);
}

#[tokio::test]
async fn listing_order_ids_links_and_modes() {
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let stats = listing(src.path(), SendOptions::default()).await;
    let listed = paths(&stats);
    assert_eq!(
        listed,
        [
            "big.bin",
            "dir",
            "dir/a.txt",
            "dir/hard",
            "dir/sub",
            "dir/sub/deep.txt",
            "dir.txt",
            "dir0",
            "empty",
            "links",
            "links/abs",
            "links/dangling",
            "links/rel",
            "modes",
            "modes/locked",
            "modes/locked/inner",
            "modes/none",
            "modes/setgid",
            "modes/setuid",
            "modes/sticky",
            "owned",
            "xattr.txt",
        ]
    );
    for pair in listed.windows(2) {
        assert!(compare_path(pair[0], pair[1]).is_lt(), "{pair:?}");
    }
    let by_path = |p: &str| stats.iter().find(|s| s.path == p).unwrap();
    let hard = by_path("dir/hard");
    assert_eq!(
        (hard.linkname.as_str(), hard.size, hard.mode),
        ("big.bin", 0, 0o644)
    );
    assert_eq!(by_path("big.bin").size, BIG as i64);
    assert!(by_path("big.bin").linkname.is_empty());
    let abs = by_path("links/abs");
    assert_eq!(
        (abs.mode, abs.linkname.as_str()),
        (MODE_SYMLINK | 0o777, "/etc/passwd")
    );
    assert_eq!(abs.size, "/etc/passwd".len() as i64);
    assert_eq!(by_path("dir").mode, MODE_DIR | 0o755);
    assert_eq!(by_path("dir").size, 0);
    assert_eq!(by_path("modes/setuid").mode, MODE_SETUID | 0o755);
    assert_eq!(by_path("modes/sticky").mode, MODE_DIR | MODE_STICKY | 0o777);
    assert_eq!(by_path("modes/locked").mode, MODE_DIR);
    assert_eq!((by_path("owned").uid, by_path("owned").gid), (1234, 5678));
    assert_eq!(
        by_path("xattr.txt").xattrs.get("user.memobuild").unwrap(),
        b"value"
    );
    let on_disk = snapshot(src.path());
    for st in &stats {
        assert_eq!(
            st.mod_time, on_disk[&st.path].mtime,
            "mtime of `{}`",
            st.path
        );
    }
    assert_ne!(
        on_disk["empty"].mtime % 1_000_000_000,
        0,
        "nanoseconds are exercised"
    );
}

#[tokio::test]
async fn reset_owner_and_map_hook() {
    let src = tempfile::tempdir().unwrap();
    build_tree(src.path());
    let options = SendOptions {
        reset_owner: true,
        map_stat: Some(Arc::new(|st| {
            st.mode |= 0o004;
            st.path != "dir" && st.path != "links/rel"
        })),
        ..SendOptions::default()
    };
    let stats = listing(src.path(), options).await;
    assert!(stats.iter().all(|s| s.uid == 0 && s.gid == 0));
    assert!(stats.iter().all(|s| s.mode & 0o004 != 0));
    let listed = paths(&stats);
    assert!(
        !listed
            .iter()
            .any(|p| *p == "links/rel" || p.starts_with("dir/") || *p == "dir")
    );
    assert!(listed.contains(&"big.bin") && listed.contains(&"dir.txt"));
}

#[tokio::test]
async fn include_exclude_and_follow_paths() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    for f in [
        "a/keep.txt",
        "a/drop.log",
        "b/x",
        "c/y.txt",
        "c/z.bin",
        "node_modules/m/x.js",
        "docs/keep.md",
        "docs/other.md",
        "docs/deep/keep.md",
        "real/sub/f",
        "real/other",
        "top.log",
    ] {
        write(root, f, f);
    }
    symlink("real/sub", root.join("link")).unwrap();

    let excluded = SendOptions {
        exclude_patterns: vec![
            "**/*.log".into(),
            "node_modules".into(),
            "docs".into(),
            "!docs/keep.md".into(),
        ],
        ..SendOptions::default()
    };
    // `docs` is excluded but walked for its exception, and sent only because of it.
    assert_eq!(
        paths(&listing(root, excluded).await),
        [
            "a",
            "a/keep.txt",
            "b",
            "b/x",
            "c",
            "c/y.txt",
            "c/z.bin",
            "docs",
            "docs/keep.md",
            "link",
            "real",
            "real/other",
            "real/sub",
            "real/sub/f"
        ]
    );

    let included = SendOptions {
        include_patterns: vec!["a".into(), "c/*.txt".into(), "docs/deep".into()],
        exclude_patterns: vec!["*/*.log".into()],
        ..SendOptions::default()
    };
    assert_eq!(
        paths(&listing(root, included).await),
        [
            "a",
            "a/keep.txt",
            "c",
            "c/y.txt",
            "docs",
            "docs/deep",
            "docs/deep/keep.md"
        ]
    );

    // A follow path through a symlink brings the link and its target (with parents).
    let followed = SendOptions {
        follow_paths: vec!["link/f".into()],
        ..SendOptions::default()
    };
    assert_eq!(
        paths(&listing(root, followed).await),
        ["link", "real", "real/sub", "real/sub/f"]
    );

    // And the receiver gets exactly that.
    let dest = tempfile::tempdir().unwrap();
    let only = SendOptions {
        include_patterns: vec!["b".into()],
        ..SendOptions::default()
    };
    transfer(root, dest.path(), only, ReceiveOptions::default()).await;
    assert_eq!(
        snapshot(dest.path()).into_keys().collect::<Vec<_>>(),
        ["b", "b/x"]
    );
}

#[tokio::test]
async fn a_hard_link_whose_first_path_is_left_out_is_sent_as_a_file() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", "shared");
    fs::hard_link(src.path().join("a"), src.path().join("b")).unwrap();
    fs::hard_link(src.path().join("a"), src.path().join("c")).unwrap();
    let options = SendOptions {
        exclude_patterns: vec!["a".into()],
        ..SendOptions::default()
    };
    let stats = listing(src.path(), options.clone()).await;
    assert_eq!(paths(&stats), ["b", "c"]);
    assert_eq!((stats[0].linkname.as_str(), stats[0].size), ("", 6));
    assert_eq!((stats[1].linkname.as_str(), stats[1].size), ("b", 0));

    let dest = tempfile::tempdir().unwrap();
    transfer(src.path(), dest.path(), options, keep_owners()).await;
    let entries = snapshot(dest.path());
    assert_eq!(entries["c"].link_group.as_deref(), Some("b"));
    assert_eq!(entries["c"].content.as_deref(), Some(&b"shared"[..]));
}

#[tokio::test]
async fn sockets_skipped_fifos_listed_and_never_opened() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "file", "x");
    nix::unistd::mkfifo(
        &src.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let stats = listing(src.path(), SendOptions::default()).await;
    assert_eq!(paths(&stats), ["fifo", "file"]);
    assert_eq!(stats[0].mode, MODE_NAMED_PIPE | 0o640);

    // Root with special files allowed: the FIFO is recreated; otherwise skipped.
    let dest = tempfile::tempdir().unwrap();
    let allowed = ReceiveOptions {
        special_files: true,
        ..keep_owners()
    };
    let (_, received) = transfer(src.path(), dest.path(), SendOptions::default(), allowed).await;
    assert_eq!(received.skipped, 0);
    let entries = snapshot(dest.path());
    assert_eq!(entries["fifo"].kind, "special");
    assert_eq!(entries["fifo"].mode, 0o640);

    let (_, received) = transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_eq!(received.skipped, 1);
    assert_eq!(
        snapshot(dest.path()).into_keys().collect::<Vec<_>>(),
        ["file"]
    );
}

#[tokio::test]
async fn many_files_with_tiny_channels_do_not_deadlock() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..300 {
        write(
            src.path(),
            &format!("d{}/f{i:03}", i % 7),
            format!("content {i}").repeat(i),
        );
    }
    let (_, received) = transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_eq!(received.files_requested, 299);
    assert_same_tree(src.path(), dest.path());
}
