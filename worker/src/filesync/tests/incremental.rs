//! Repeated transfers into the same destination: only changes are requested, and the
//! destination ends up equal to the source whatever it held before.

use std::fs;
use std::os::unix::fs::symlink;

use crate::filesync::tests::harness::*;
use crate::filesync::tests::roundtrip::build_tree;
use crate::filesync::{ReceiveOptions, SendOptions};

#[tokio::test]
async fn unchanged_tree_requests_nothing() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    let (_, again) = transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_eq!(
        (again.files_requested, again.bytes_received, again.removed),
        (0, 0, 0)
    );
    assert_same_tree(src.path(), dest.path());
}

/// A re-sync leaves directories that are already right untouched (their ctime does not move),
/// and still sets a directory whose mode changed at the source.
#[tokio::test]
async fn unchanged_directories_are_not_written_again() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ctime = |rel: &str, root: &std::path::Path| {
        let md = fs::symlink_metadata(root.join(rel)).unwrap();
        (md.ctime(), md.ctime_nsec())
    };
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    let options = || (SendOptions::default(), keep_owners());
    let (send, recv) = options();
    transfer(src.path(), dest.path(), send, recv).await;
    let before = [ctime("dir", dest.path()), ctime("dir/sub", dest.path())];
    // ctime has the kernel's tick as its resolution: let one pass so any write would show.
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (send, recv) = options();
    transfer(src.path(), dest.path(), send, recv).await;
    assert_eq!(
        [ctime("dir", dest.path()), ctime("dir/sub", dest.path())],
        before
    );

    fs::set_permissions(
        src.path().join("dir/sub"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    set_mtime(src.path(), "dir/sub", 1_600_000_000_123_456_789);
    let (send, recv) = options();
    transfer(src.path(), dest.path(), send, recv).await;
    assert_eq!(ctime("dir", dest.path()), before[0]);
    assert_ne!(ctime("dir/sub", dest.path()), before[1]);
    let mode = fs::symlink_metadata(dest.path().join("dir/sub"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);
    assert_same_tree(src.path(), dest.path());
}

#[tokio::test]
async fn one_edit_requests_one_file() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;

    // Same size, new content and mtime.
    write(src.path(), "dir/a.txt", "ALPHA");
    set_mtime(src.path(), "dir/a.txt", 1_700_000_000_000_000_001);
    set_mtime(src.path(), "dir", 1_700_000_000_000_000_002);
    let (_, received) = transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_eq!((received.files_requested, received.bytes_received), (1, 5));
    assert_eq!(fs::read(dest.path().join("dir/a.txt")).unwrap(), b"ALPHA");
    assert_same_tree(src.path(), dest.path());
}

#[tokio::test]
async fn metadata_changes_are_applied_without_requests() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;

    chmod(src.path(), "dir.txt", 0o600);
    std::os::unix::fs::lchown(src.path().join("dir0"), Some(42), Some(43)).unwrap();
    chmod(src.path(), "modes/locked", 0o755);
    set_mtime(src.path(), "links/abs", 1_650_000_000_000_000_003);
    let (_, received) = transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_eq!(received.files_requested, 0);
    assert_same_tree(src.path(), dest.path());
}

#[tokio::test]
async fn deletions_and_type_changes() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;

    let s = src.path();
    fs::remove_file(s.join("dir.txt")).unwrap();
    fs::remove_dir_all(s.join("dir/sub")).unwrap();
    // file → directory, directory → file, symlink → directory, file → symlink.
    fs::remove_file(s.join("empty")).unwrap();
    write(s, "empty/now/a/dir", "nested");
    fs::remove_dir_all(s.join("modes/sticky")).unwrap();
    write(s, "modes/sticky", "a file now");
    fs::remove_file(s.join("links/abs")).unwrap();
    write(s, "links/abs/x", "x");
    fs::remove_file(s.join("dir0")).unwrap();
    symlink("dir", s.join("dir0")).unwrap();
    // A read-only directory that is gone from the source must still be removable.
    fs::remove_dir_all(s.join("modes/locked")).unwrap();
    chmod(dest.path(), "modes/locked", 0o500);

    let (_, received) = transfer(s, dest.path(), SendOptions::default(), keep_owners()).await;
    assert_same_tree(s, dest.path());
    // dir.txt, dir/sub (with its file, counted once), modes/locked.
    assert_eq!(received.removed, 3);
    assert!(!dest.path().join("dir/sub").exists());
    assert_eq!(
        received.files_requested, 3,
        "empty/now/a/dir, modes/sticky, links/abs/x"
    );

    // And back: the original tree again, over all of that.
    let again = tempfile::tempdir().unwrap();
    build_tree(again.path());
    transfer(
        again.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_same_tree(again.path(), dest.path());
}

#[tokio::test]
async fn leftovers_of_an_interrupted_transfer_are_cleaned() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    write(dest.path(), "dir/.memobuild-filesync-1-1", "half a file");
    write(dest.path(), "stray/file", "not in the source");
    mkdir(dest.path(), "dir/sub");
    symlink("/", dest.path().join("dir/sub/deep.txt.old")).unwrap();
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        keep_owners(),
    )
    .await;
    assert_same_tree(src.path(), dest.path());
}

#[tokio::test]
async fn without_chown_files_belong_to_the_receiver() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    let receive = ReceiveOptions::default();
    transfer(
        src.path(),
        dest.path(),
        SendOptions::default(),
        receive.clone(),
    )
    .await;
    let me = nix::unistd::geteuid().as_raw();
    let entries = snapshot(dest.path());
    assert!(entries.values().all(|e| e.uid == me), "{entries:?}");
    // Ownership is not compared then: nothing is requested the second time.
    let (_, again) = transfer(src.path(), dest.path(), SendOptions::default(), receive).await;
    assert_eq!(again.files_requested, 0);
}

#[tokio::test]
async fn receive_filter_sees_every_stat_and_can_keep_entries_out() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(src.path());
    write(
        dest.path(),
        "dir/local-only",
        "kept: the filter leaves `dir` alone",
    );
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let options = ReceiveOptions {
        filter: Some(std::sync::Arc::new({
            let seen = seen.clone();
            move |st| {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                st.uid = 7;
                st.path != "dir"
            }
        })),
        ..keep_owners()
    };
    let (sent, _) = transfer(src.path(), dest.path(), SendOptions::default(), options).await;
    // `dir`'s children are not offered to the filter: its subtree is left out whole.
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        sent.entries - 4
    );
    let entries = snapshot(dest.path());
    assert_eq!(entries["big.bin"].uid, 7);
    assert_eq!(
        entries
            .keys()
            .filter(|k| k.starts_with("dir/"))
            .collect::<Vec<_>>(),
        ["dir/local-only"]
    );
}

#[tokio::test]
async fn merge_keeps_what_the_listing_does_not_name() {
    let (src, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "dir/new.txt", "new");
    write(src.path(), "top.txt", "top");
    write(dest.path(), "dir/old.txt", "old");
    write(dest.path(), "top.txt", "stale");
    write(dest.path(), "other/kept.txt", "kept");
    let merge = ReceiveOptions {
        merge: true,
        ..keep_owners()
    };
    let (_, received) = transfer(src.path(), dest.path(), SendOptions::default(), merge).await;
    assert_eq!(received.removed, 0);
    for (rel, content) in [
        ("dir/new.txt", "new"),
        ("dir/old.txt", "old"),
        ("top.txt", "top"),
        ("other/kept.txt", "kept"),
    ] {
        assert_eq!(
            fs::read_to_string(dest.path().join(rel)).unwrap(),
            content,
            "{rel}"
        );
    }
}
