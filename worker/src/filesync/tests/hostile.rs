//! Scripted senders whose listings try to write outside the destination or break its rules.
//! Every test checks that the receiver fails (or copes) and that nothing outside `dest`
//! changed.

use std::os::unix::fs::symlink;

use crate::filesync::FilesyncError;
use crate::filesync::ReceiveOptions;
use crate::filesync::tests::harness::snapshot;
use crate::filesync::tests::script::*;
use crate::filesync::transport::Message;

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
