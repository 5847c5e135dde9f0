//! Scripted senders that break the packet protocol: DATA that was not asked for or is too
//! long, aborts half way, packets out of place, special files, guessed temporary names.

use std::fs;

use tokio::sync::mpsc;

use crate::filesync::mode::{
    MODE_CHAR_DEVICE, MODE_DEVICE, MODE_DIR, MODE_NAMED_PIPE, MODE_SYMLINK,
};
use crate::filesync::tests::harness::{snapshot, stream, write};
use crate::filesync::tests::script::*;
use crate::filesync::transport::Message;
use crate::filesync::{FilesyncError, ReceiveOptions, receive};

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
