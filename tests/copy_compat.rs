//! End to end: COPY/ADD behaviours compared against BuildKit (v0.11.6 at first, v0.32.2 for the
//! destination of a directory copy) on the same LLB — ADD
//! unpacks local tar archives (and refuses hostile ones), symbolic `--chmod`, `--exclude`
//! relative to the copied source, and `.dockerignore` hiding even explicitly named files.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{Env, Sandbox, assert_ok, stderr};

/// A tar member: name, type flag, mode, uid, gid, link target, data.
struct Member<'a> {
    name: &'a str,
    kind: u8,
    mode: u32,
    owner: (u32, u32),
    link: &'a str,
    data: &'a [u8],
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A ustar archive written by hand, so member names can be anything (even `../escape`).
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = [0u8; 512];
        h[..m.name.len()].copy_from_slice(m.name.as_bytes());
        octal(&mut h[100..108], u64::from(m.mode));
        octal(&mut h[108..116], u64::from(m.owner.0));
        octal(&mut h[116..124], u64::from(m.owner.1));
        octal(&mut h[124..136], m.data.len() as u64);
        octal(&mut h[136..148], 1_600_000_000);
        h[156] = m.kind;
        h[157..157 + m.link.len()].copy_from_slice(m.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(data: &[u8], path: &Path) {
    std::fs::write(path, data).expect("write tar");
    let out = common::run({
        let mut c = std::process::Command::new("gzip");
        c.arg("-n").arg(path);
        c
    });
    assert_ok(&out, "gzip");
}

/// Compresses `path` in place with a command-line tool (`xz`, `bzip2`, `zstd`), the way a user
/// makes such an archive; the tool adds its own suffix.
fn compress_with(tool: &str, path: &Path) {
    let out = common::run({
        let mut c = std::process::Command::new(tool);
        c.arg("-q").arg(path);
        if tool == "zstd" {
            c.arg("--rm");
        }
        c
    });
    assert_ok(&out, tool);
}

/// A package: a directory, a file owned 5:6, an executable and a symlink.
fn pkg_tar(data: &[u8]) -> Vec<u8> {
    tar(&[
        Member {
            name: "pkg/",
            kind: b'5',
            mode: 0o750,
            owner: (0, 0),
            link: "",
            data: b"",
        },
        Member {
            name: "pkg/data.txt",
            kind: b'0',
            mode: 0o640,
            owner: (5, 6),
            link: "",
            data,
        },
        Member {
            name: "pkg/run.sh",
            kind: b'0',
            mode: 0o755,
            owner: (0, 0),
            link: "",
            data: b"#!/bin/sh\n",
        },
        Member {
            name: "pkg/link",
            kind: b'2',
            mode: 0o777,
            owner: (0, 0),
            link: "data.txt",
            data: b"",
        },
    ])
}

/// Builds the context's Dockerfile and exports the result to a local directory (and, for
/// owners, to `out.tar`: a local export is written as the user running it, as BuildKit's
/// client writes it, while the tar keeps the image's owners).
fn build_local(env: &Env, sb: &Sandbox) -> (std::process::Output, PathBuf) {
    let dest = sb.path("out");
    let out = sb.build(
        env,
        &[
            "--output",
            &format!("type=local,dest={}", dest.display()),
            "--output",
            &format!("type=tar,dest={}", sb.path("out.tar").display()),
        ],
    );
    (out, dest)
}

/// The owner the image gives `path` (relative to its root), from the `type=tar` output.
fn owner(sb: &Sandbox, path: &str) -> (u64, u64) {
    let f = std::fs::File::open(sb.path("out.tar")).expect("out.tar");
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().expect("tar") {
        let e = e.expect("tar entry");
        if e.path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            == path
        {
            let h = e.header();
            return (h.uid().expect("uid"), h.gid().expect("gid"));
        }
    }
    panic!("`{path}` is not in out.tar")
}

fn mode(p: &Path) -> (u32, u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.mode() & 0o7777, md.uid(), md.gid())
}

#[test]
fn add_extracts_a_local_tar_gz_with_modes_owners_and_symlinks() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "FROM scratch\nADD pkg.tar.gz /opt/\nCOPY pkg.tar.gz /copied/\n",
    );
    let archive = tar(&[
        Member {
            name: "pkg/",
            kind: b'5',
            mode: 0o755,
            owner: (0, 0),
            link: "",
            data: b"",
        },
        Member {
            name: "pkg/data.txt",
            kind: b'0',
            mode: 0o640,
            owner: (5, 6),
            link: "",
            data: b"hello\n",
        },
        Member {
            name: "pkg/link",
            kind: b'2',
            mode: 0o777,
            owner: (0, 0),
            link: "data.txt",
            data: b"",
        },
    ]);
    gzip(&archive, &sb.context().join("pkg.tar"));
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    let data = dest.join("opt/pkg/data.txt");
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "hello\n");
    assert_eq!(mode(&data).0, 0o640);
    assert_eq!(owner(&sb, "opt/pkg/data.txt"), (5, 6));
    assert_eq!(
        std::fs::read_link(dest.join("opt/pkg/link")).expect("link"),
        Path::new("data.txt")
    );
    assert!(!dest.join("opt/pkg.tar.gz").exists());
    // COPY never unpacks.
    assert!(dest.join("copied/pkg.tar.gz").is_file());
}

#[test]
fn add_of_a_hostile_tar_does_not_write_outside_the_destination() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", "FROM scratch\nADD evil.tar /x/y/\n");
    let archive = tar(&[Member {
        name: "../escape",
        kind: b'0',
        mode: 0o644,
        owner: (0, 0),
        link: "",
        data: b"escaped\n",
    }]);
    std::fs::write(sb.context().join("evil.tar"), archive).expect("write");
    let (out, dest) = build_local(&env, &sb);
    assert!(!out.status.success(), "hostile archive was accepted");
    assert!(stderr(&out).contains("outside"), "{}", stderr(&out));
    assert!(!dest.join("x/escape").exists() && !dest.join("escape").exists());
}

#[test]
fn symbolic_chmod_applies_like_chmod() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "FROM scratch\nCOPY --chmod=u+x,go-w f.txt /f.txt\nCOPY --chmod=a=rX d /d\n",
    )
    .write("f.txt", "f\n")
    .write("d/g.txt", "g\n");
    let set = |rel: &str, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(sb.context().join(rel), std::fs::Permissions::from_mode(m))
            .expect("chmod");
    };
    set("f.txt", 0o644);
    set("d/g.txt", 0o664);
    set("d", 0o755);
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    assert_eq!(mode(&dest.join("f.txt")).0, 0o744);
    assert_eq!(mode(&dest.join("d/g.txt")).0, 0o444);
    // The destination directory is made as `mkdir -p` makes it (BuildKit v0.32.2).
    assert_eq!(mode(&dest.join("d")).0, 0o755);
}

#[test]
fn a_copied_directory_s_destination_is_made_as_mkdir_p_makes_it() {
    // As BuildKit v0.32.2: COPY of a directory copies what it holds; its destination is made
    // 0755 (or a numeric `--chmod`), owned by the `--chown` user or root, or left as it is when
    // it exists. What is below keeps its modes and owners.
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {base} AS b\nRUN mkdir -m 700 /src && mkdir -m 750 /src/sub && echo x > /src/sub/f && chown -R 1000:1000 /src && mkdir -m 711 /exists && chown 5:5 /exists\nFROM b\nCOPY --from=b /src /d1\nCOPY --from=b /src /exists\nCOPY --chmod=0600 --from=b /src /d2\nCOPY --chown=7:7 --from=b /src /d3\nCOPY --from=b /src /a/b/c\n",
            base = env.busybox()
        ),
    );
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    let perm = |p: &str| mode(&dest.join(p)).0;
    assert_eq!(
        (perm("d1"), owner(&sb, "d1")),
        (0o755, (0, 0)),
        "a missing destination"
    );
    assert_eq!(
        (perm("d1/sub"), owner(&sb, "d1/sub")),
        (0o750, (1000, 1000)),
        "what is below keeps its own"
    );
    assert_eq!(
        (perm("exists"), owner(&sb, "exists")),
        (0o711, (5, 5)),
        "an existing destination is left as it is"
    );
    assert_eq!(perm("d2"), 0o600, "a numeric --chmod");
    assert_eq!((perm("d3"), owner(&sb, "d3")), (0o755, (7, 7)), "--chown");
    assert_eq!((perm("a/b"), perm("a/b/c")), (0o755, 0o755));
}

#[test]
fn add_exclude_is_relative_to_the_copied_source() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "FROM scratch\nADD --exclude=*.bak conf/ /etc/conf/\n",
    )
    .write("conf/a.conf", "a\n")
    .write("conf/a.bak", "old\n")
    .write("conf/secret.conf", "s\n")
    .write(".dockerignore", "conf/secret.conf\n");
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    assert!(dest.join("etc/conf/a.conf").is_file());
    assert!(!dest.join("etc/conf/a.bak").exists(), "--exclude=*.bak");
    assert!(!dest.join("etc/conf/secret.conf").exists(), ".dockerignore");
}

#[test]
fn copy_of_an_ignored_file_is_not_found() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", "FROM scratch\nCOPY ignored.txt /\n")
        .write("ignored.txt", "i\n")
        .write(".dockerignore", "ignored.txt\n");
    let (out, _) = build_local(&env, &sb);
    assert!(!out.status.success(), "an ignored file was copied");
    assert!(
        stderr(&out).contains("\"/ignored.txt\": not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn add_extracts_xz_bzip2_and_zstd_archives_and_copies_other_compressed_files() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "FROM scratch\nADD pkg.tar.xz /xz/\nADD pkg.tar.bz2 /bz2/\nADD pkg.tar.zst /zst/\n\
         ADD notes.txt.xz /raw/\n",
    );
    let ctx = sb.context();
    for tool in ["xz", "bzip2", "zstd"] {
        std::fs::write(ctx.join("pkg.tar"), pkg_tar(tool.as_bytes())).expect("write tar");
        compress_with(tool, &ctx.join("pkg.tar"));
    }
    std::fs::write(ctx.join("notes.txt"), "not a tar\n").expect("write");
    compress_with("xz", &ctx.join("notes.txt"));
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    for (dir, tool) in [("xz", "xz"), ("bz2", "bzip2"), ("zst", "zstd")] {
        let pkg = dest.join(dir).join("pkg");
        let data = pkg.join("data.txt");
        assert_eq!(std::fs::read_to_string(&data).expect("data"), tool);
        assert_eq!(mode(&data).0, 0o640, "{dir}");
        assert_eq!(owner(&sb, &format!("{dir}/pkg/data.txt")), (5, 6), "{dir}");
        assert_eq!(mode(&pkg.join("run.sh")).0, 0o755, "{dir}");
        assert_eq!(mode(&pkg).0, 0o750, "{dir}");
        assert_eq!(
            std::fs::read_link(pkg.join("link")).expect("link"),
            Path::new("data.txt")
        );
        let listing: Vec<_> = std::fs::read_dir(dest.join(dir))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(listing, ["pkg"], "{dir}: only the extracted tree");
    }
    // A compressed file that is no tar archive is copied as it is.
    assert_eq!(
        std::fs::read(dest.join("raw/notes.txt.xz")).expect("raw"),
        std::fs::read(ctx.join("notes.txt.xz")).expect("ctx")
    );
}

#[test]
fn add_of_a_truncated_compressed_archive_fails_naming_it() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", "FROM scratch\nADD big.tar.zst /x/\n");
    let ctx = sb.context();
    // Data that does not compress, so that half of the file holds the first header whole.
    let noise = common::noise(1 << 20, 1);
    std::fs::write(ctx.join("big.tar"), pkg_tar(&noise)).expect("write tar");
    compress_with("zstd", &ctx.join("big.tar"));
    let full = std::fs::read(ctx.join("big.tar.zst")).expect("read");
    std::fs::write(ctx.join("big.tar.zst"), &full[..full.len() / 2]).expect("truncate");
    let (out, dest) = build_local(&env, &sb);
    assert!(!out.status.success(), "a truncated archive was accepted");
    let err = stderr(&out);
    assert!(err.contains("unpacking /big.tar.zst"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(!dest.exists(), "nothing is exported from a failed build");
}

#[test]
fn backslashes_escape_wildcards_only_inside_a_pattern() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    // With the default escape character the instruction's word lexer removes an unquoted
    // backslash (`a\*.txt` is the glob `a*.txt`) and keeps it in double quotes; with
    // `# escape=`` every backslash reaches the copy. There a backslash escapes a wildcard only
    // in a path that has an unescaped wildcard; a path without one is a literal name.
    // (`COPY . /all/` sends the whole context, as BuildKit does once a COPY names `.`.)
    sb.write(
        "Dockerfile",
        "FROM scratch\nCOPY \"a\\*.tx[t]\" /quoted-pattern/\nCOPY a\\*.txt /unquoted/\n\
         COPY \"a\\*.txt\" /quoted-literal/\nCOPY . /all/\n",
    )
    .write("a*.txt", "star\n")
    .write("a\\*.txt", "backslash\n")
    .write("ab.txt", "b\n");
    sb.write(
        "escaped/Dockerfile",
        "# escape=`\nFROM scratch\nCOPY [a]\\*.txt /pattern/\n",
    );
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dest.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("quoted-pattern"), ["a*.txt"]);
    assert_eq!(names("unquoted"), ["a*.txt", "a\\*.txt", "ab.txt"]);
    assert_eq!(names("quoted-literal"), ["a\\*.txt"]);
    assert_eq!(
        std::fs::read_to_string(dest.join("quoted-literal/a\\*.txt")).expect("literal"),
        "backslash\n"
    );
    let escaped = sb.path("escaped-out");
    let out = sb.build(
        &env,
        &[
            "-f",
            &sb.context().join("escaped/Dockerfile").to_string_lossy(),
            "--output",
            &format!("type=local,dest={}", escaped.display()),
        ],
    );
    assert_ok(&out, "memobuild build with escape=`");
    let got: Vec<_> = std::fs::read_dir(escaped.join("pattern"))
        .expect("pattern")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(got, ["a*.txt"]);
}

#[test]
fn the_context_holds_only_what_copies_name_with_their_links_resolved() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    // BuildKit sends only the paths COPY/ADD name (`local.followpaths`), read as patterns, plus
    // the targets of the links on their way. `a\b.txt` under `# escape=`` is the pattern
    // matching `ab.txt`: the file literally named `a\b.txt` is never sent, so it is not found.
    sb.write(
        "Dockerfile",
        "# escape=`\nFROM scratch\nCOPY a\\b.txt /c\\d/\n",
    )
    .write("a\\b.txt", "literal backslash\n");
    let (out, _) = build_local(&env, &sb);
    assert!(
        !out.status.success(),
        "a file outside the follow paths was copied"
    );
    assert!(
        stderr(&out).contains("not found") && stderr(&out).contains("Dockerfile:3"),
        "{}",
        stderr(&out)
    );

    // A directory reached through a symbolic link, and a link to a file elsewhere: their
    // targets are part of what is sent.
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "FROM scratch\nCOPY link/ /viadir/\nCOPY file-link /f\nCOPY re*l/x.txt /glob/\n",
    )
    .write("real/x.txt", "x\n")
    .write("real/sub/y.txt", "y\n")
    .write("elsewhere/target.txt", "t\n")
    .write("unrelated.txt", "u\n");
    std::os::unix::fs::symlink("real", sb.context().join("link")).expect("symlink");
    std::os::unix::fs::symlink("elsewhere/target.txt", sb.context().join("file-link"))
        .expect("symlink");
    let (out, dest) = build_local(&env, &sb);
    assert_ok(&out, "memobuild build");
    let read =
        |p: &str| std::fs::read_to_string(dest.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("viadir/x.txt"), "x\n");
    assert_eq!(read("viadir/sub/y.txt"), "y\n");
    assert_eq!(read("f"), "t\n");
    assert_eq!(read("glob/x.txt"), "x\n");
}
