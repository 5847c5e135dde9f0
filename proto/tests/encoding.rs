//! Wire-level checks: field order, map order and `-1` sentinels as Go's deterministic
//! marshal writes them (`buildkit-wire.md` §6.8).

use memobuild_proto::{digest_of, encode_op, pb};
use prost::Message;

/// Reads one varint from the front of `buf`, returning it and its encoded length.
fn varint(buf: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("truncated varint in {buf:?}");
}

/// Top-level (field number, wire type, payload) triples of a message, in wire order.
fn fields(mut buf: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (key, n) = varint(buf);
        buf = &buf[n..];
        let (field, wire) = (key >> 3, key & 7);
        let len = match wire {
            0 => varint(buf).1,
            2 => {
                let (len, n) = varint(buf);
                buf = &buf[n..];
                usize::try_from(len).expect("length fits")
            }
            1 => 8,
            5 => 4,
            _ => panic!("unexpected wire type {wire}"),
        };
        out.push((field, wire, &buf[..len]));
        buf = &buf[len..];
    }
    out
}

fn busybox_op() -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            ..Default::default()
        })),
        platform: Some(pb::Platform::new("amd64", "linux")),
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    }
}

#[test]
fn image_source_op_matches_go_field_order_and_bytes() {
    let (bytes, digest) = encode_op(&busybox_op());

    let tags: Vec<_> = fields(&bytes).iter().map(|(f, w, _)| (*f, *w)).collect();
    assert_eq!(tags, [(3, 2), (10, 2), (11, 2)]);

    // Hand-assembled the way Go's deterministic marshal writes it: fields ascending,
    // the empty-but-set WorkerConstraints as tag + zero length.
    let id = b"docker-image://docker.io/library/busybox:latest";
    let mut want = vec![0x1a, u8::try_from(id.len() + 2).expect("short"), 0x0a];
    want.push(u8::try_from(id.len()).expect("short"));
    want.extend_from_slice(id);
    want.extend_from_slice(&[0x52, 14, 0x0a, 5]);
    want.extend_from_slice(b"amd64");
    want.extend_from_slice(&[0x12, 5]);
    want.extend_from_slice(b"linux");
    want.extend_from_slice(&[0x5a, 0x00]);
    assert_eq!(bytes, want);
    assert_eq!(digest, digest_of(&want));
}

#[test]
fn op_with_inputs_writes_inputs_first() {
    let op = pb::Op {
        inputs: vec![
            pb::Input::new("sha256:aa", 0),
            pb::Input::new("sha256:bb", 1),
        ],
        ..busybox_op()
    };
    let tags: Vec<_> = fields(&op.encode_to_vec())
        .iter()
        .map(|(f, _, _)| *f)
        .collect();
    assert_eq!(tags, [1, 1, 3, 10, 11]);
}

#[test]
fn map_fields_encode_in_key_order_regardless_of_insertion() {
    let keys = [
        "local.sharedkeyhint",
        "local.differ",
        "local.session",
        "local.followpaths",
    ];
    let op_with = |order: &[usize]| {
        let mut src = pb::SourceOp {
            identifier: "local://context".into(),
            ..Default::default()
        };
        for &i in order {
            src.attrs.insert(keys[i].to_owned(), format!("v{i}"));
        }
        pb::Op {
            op: Some(pb::op::Op::Source(src)),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let a = op_with(&[0, 1, 2, 3]);
    let b = op_with(&[3, 2, 1, 0]);
    assert_eq!(a, b);
    assert_eq!(digest_of(&a), digest_of(&b));

    // Entries come out sorted bytewise, each with key (1) and value (2).
    let (_, _, source) = fields(&a)[0];
    let entries: Vec<_> = fields(source)
        .into_iter()
        .filter(|(f, _, _)| *f == 2)
        .map(|(_, _, entry)| {
            let kv = fields(entry);
            assert_eq!(kv.iter().map(|(f, _, _)| *f).collect::<Vec<_>>(), [1, 2]);
            String::from_utf8(kv[0].2.to_vec()).expect("utf-8 key")
        })
        .collect();
    let mut sorted = keys.map(str::to_owned).to_vec();
    sorted.sort();
    assert_eq!(entries, sorted);
}

#[test]
fn metadata_caps_encode_in_key_order() {
    let a = pb::OpMetadata {
        caps: [
            ("source.local", true),
            ("constraints", true),
            ("platform", true),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into(),
        ..Default::default()
    };
    let mut b = pb::OpMetadata::default();
    for k in ["platform", "source.local", "constraints"] {
        b.caps.insert(k.to_owned(), true);
    }
    assert_eq!(a.encode_to_vec(), b.encode_to_vec());
}

/// Known divergence from Go (§6.8 b): prost omits default values inside map entries.
/// Harmless for correctness (digests are taken over our own bytes); pinned so a prost change
/// is noticed.
#[test]
fn empty_map_value_is_omitted_by_prost() {
    let src = pb::SourceOp {
        attrs: [("local.unique".to_owned(), String::new())].into(),
        ..Default::default()
    };
    let bytes = src.encode_to_vec();
    let entry = fields(&bytes)[0].2;
    assert_eq!(fields(entry).len(), 1);
}

#[test]
fn minus_one_sentinels_round_trip_as_ten_byte_varints() {
    let copy = pb::FileActionCopy {
        src: "/a".into(),
        dest: "/b".into(),
        mode: pb::FileActionCopy::KEEP_MODE,
        timestamp: pb::FileActionCopy::KEEP_TIMESTAMP,
        ..Default::default()
    };
    let bytes = copy.encode_to_vec();
    let f = fields(&bytes);
    let mode = f.iter().find(|(n, _, _)| *n == 4).expect("mode present");
    assert_eq!(
        mode.2,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
    let ts = f
        .iter()
        .find(|(n, _, _)| *n == 11)
        .expect("timestamp present");
    assert_eq!(ts.2.len(), 10);
    assert_eq!(
        pb::FileActionCopy::decode(bytes.as_slice()).expect("decodes"),
        copy
    );

    let mount = pb::Mount {
        input: pb::Mount::SCRATCH_INPUT,
        dest: "/tmp".into(),
        output: pb::Mount::NO_OUTPUT,
        mount_type: pb::MountType::Tmpfs.into(),
        ..Default::default()
    };
    let bytes = mount.encode_to_vec();
    let f = fields(&bytes);
    assert_eq!(f[0].0, 1);
    assert_eq!(f[0].2.len(), 10);
    assert_eq!(pb::Mount::decode(bytes.as_slice()).expect("decodes"), mount);

    // And inside a whole op, after a digest round trip.
    let op = pb::Op {
        op: Some(pb::op::Op::File(pb::FileOp {
            actions: vec![pb::FileAction {
                input: pb::FileAction::SCRATCH,
                secondary_input: pb::FileAction::SCRATCH,
                output: 0,
                action: Some(pb::file_action::Action::Copy(copy)),
            }],
        })),
        ..Default::default()
    };
    let (bytes, digest) = encode_op(&op);
    let back = pb::Op::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, op);
    assert_eq!(encode_op(&back).1, digest);
}
