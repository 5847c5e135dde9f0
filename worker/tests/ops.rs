//! Ops that no Dockerfile produces yet, solved from hand-built LLB on a REAL containerd and
//! registry (`hack/services.sh start DIR` + `hack/base-image.sh DIR`, found through
//! `MEMOBUILD_TEST_CONTAINERD` / `MEMOBUILD_TEST_REGISTRY`; without them each test prints a loud
//! SKIPPED line and passes): MergeOp, DiffOp (layer-prefix and computed), and FileOps whose
//! actions work on several bases. Results are read back from the layer blobs: contents, modes,
//! owners and whiteouts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use memobuild_proto::{DefinitionBuilder, ParsedDefinition, pb};
use memobuild_worker::layer::LayerBlob;
use memobuild_worker::progress::Progress;
use memobuild_worker::registry::Platform;
use memobuild_worker::solver::{FsRef, SolveOptions, SolveResult};
use memobuild_worker::{Build, Caller, Engine, EngineConfig, StateDir};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A worker in a fresh namespace and state directory, and the base image reference.
struct Env {
    worker: Build,
    busybox: String,
    /// How `worker`'s engine was opened (to open another engine on the same state directory).
    config: EngineConfig,
    _state: tempfile::TempDir,
}

async fn env(test: &str) -> Option<Env> {
    let (Some(socket), Ok(registry)) = (
        std::env::var_os("MEMOBUILD_TEST_CONTAINERD"),
        std::env::var("MEMOBUILD_TEST_REGISTRY"),
    ) else {
        eprintln!("SKIPPED: MEMOBUILD_TEST_CONTAINERD / MEMOBUILD_TEST_REGISTRY not set ({test})");
        return None;
    };
    let state = tempfile::tempdir().expect("state dir");
    let config = EngineConfig {
        namespace: format!(
            "memobuild-test-ops-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        ..EngineConfig::new(PathBuf::from(socket), StateDir::new(state.path()))
    };
    let worker = open(config.clone()).await.expect("worker opens");
    Some(Env {
        worker,
        busybox: format!("docker-image://{registry}/library/busybox:latest"),
        config,
        _state: state,
    })
}

/// An engine on `config` and a build on it with nothing from a caller.
async fn open(config: EngineConfig) -> Result<Build, memobuild_worker::WorkerError> {
    Engine::open(config).await?.build(Caller::empty()).await
}

fn platform() -> pb::Platform {
    let p = Platform::host();
    pb::Platform {
        architecture: p.architecture,
        os: p.os,
        variant: p.variant.unwrap_or_default(),
        ..Default::default()
    }
}

/// Builds a Definition op by op.
struct Llb {
    b: DefinitionBuilder,
    busybox: String,
}

impl Llb {
    fn new(env: &Env) -> Self {
        Llb {
            b: DefinitionBuilder::new(),
            busybox: env.busybox.clone(),
        }
    }

    fn image(&mut self) -> String {
        self.b.add_op(&pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: self.busybox.clone(),
                ..Default::default()
            })),
            platform: Some(platform()),
            ..Default::default()
        })
    }

    /// `sh -c script` on the filesystem `root` produces.
    fn run(&mut self, root: &str, script: &str) -> String {
        self.b.add_op(&pb::Op {
            inputs: vec![pb::Input::new(root, 0)],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into()],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                mounts: vec![pb::Mount {
                    input: 0,
                    dest: "/".into(),
                    output: 0,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            platform: Some(platform()),
            ..Default::default()
        })
    }

    fn merge(&mut self, inputs: &[&str]) -> String {
        self.b.add_op(&pb::Op {
            inputs: inputs.iter().map(|d| pb::Input::new(*d, 0)).collect(),
            op: Some(pb::op::Op::Merge(pb::MergeOp {
                inputs: (0..inputs.len() as i64)
                    .map(|input| pb::MergeInput { input })
                    .collect(),
            })),
            ..Default::default()
        })
    }

    /// Diff from `lower` to `upper` (`None`: scratch).
    fn diff(&mut self, lower: Option<&str>, upper: Option<&str>) -> String {
        let mut inputs = Vec::new();
        let mut index = |d: Option<&str>| match d {
            Some(d) => {
                inputs.push(pb::Input::new(d, 0));
                inputs.len() as i64 - 1
            }
            None => -1,
        };
        let (l, u) = (index(lower), index(upper));
        self.b.add_op(&pb::Op {
            inputs,
            op: Some(pb::op::Op::Diff(pb::DiffOp {
                lower: Some(pb::LowerDiffInput { input: l }),
                upper: Some(pb::UpperDiffInput { input: u }),
            })),
            ..Default::default()
        })
    }

    async fn solve(&self, worker: &Build, digest: &str, index: i64) -> Result<FsRef, String> {
        self.solve_full(worker, digest, index).await.map(|r| r.fs)
    }

    /// Solves output `index` of `digest`, with the report of which vertices were cached.
    async fn solve_full(
        &self,
        worker: &Build,
        digest: &str,
        index: i64,
    ) -> Result<SolveResult, String> {
        let def = self.b.clone().finish(pb::Input::new(digest, index));
        let def = ParsedDefinition::try_from(def).map_err(|e| e.to_string())?;
        let opts = SolveOptions {
            layer: Default::default(),
            max_parallel_exec: 2,
            platform: platform(),
            no_cache: false,
            explain_against: None,
        };
        worker
            .solve(def, opts, Progress::discard())
            .await
            .map_err(|e| e.to_string())
    }
}

/// One entry of a flattened filesystem (mtimes left out: layers clamp them anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    /// File contents or link target.
    data: Vec<u8>,
}

/// The raw entries of a layer: (path, entry), in order.
fn layer_entries(worker: &Build, layer: &LayerBlob) -> Vec<(String, Entry)> {
    let blob = worker.blobs().open_blob(&layer.digest).expect("blob");
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let mut out = Vec::new();
    for e in ar.entries().expect("tar") {
        let mut e = e.expect("tar entry");
        let h = e.header().clone();
        let path = e
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        let path = if path == "." { String::new() } else { path };
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            _ => 'f',
        };
        let data = if kind == 'l' || kind == 'h' {
            h.link_name_bytes().map(|b| b.to_vec()).unwrap_or_default()
        } else {
            let mut d = Vec::new();
            e.read_to_end(&mut d).expect("read");
            d
        };
        out.push((
            path,
            Entry {
                kind,
                mode: h.mode().expect("mode") & 0o7777,
                uid: h.uid().expect("uid"),
                gid: h.gid().expect("gid"),
                data,
            },
        ));
    }
    out
}

/// Applies layers in order, as an unpacker does (whiteouts and opaque directories included).
fn flatten(worker: &Build, layers: &[LayerBlob]) -> BTreeMap<String, Entry> {
    let mut fs: BTreeMap<String, Entry> = BTreeMap::new();
    let under = |p: &str, dir: &str| p == dir || p.starts_with(&format!("{dir}/"));
    for l in layers {
        for (path, e) in layer_entries(worker, l) {
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                fs.retain(|p, _| dir.is_empty() || !p.starts_with(&format!("{dir}/")));
            } else if let Some(gone) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                };
                fs.retain(|p, _| !under(p, &gone));
            } else if path.is_empty() {
                continue;
            } else {
                if e.kind != 'd' {
                    fs.retain(|p, _| !under(p, &path));
                }
                fs.insert(path, e);
            }
        }
    }
    fs
}

fn file(fs: &BTreeMap<String, Entry>, path: &str) -> String {
    fs.get(path)
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .unwrap_or_else(|| panic!("`{path}` missing"))
}

// Verifies: diff(base, base+layer) is exactly that layer (nothing runs), merge stacks its inputs'
// layers (input 0 at the bottom), and a process runs on the merged filesystem: the two
// independent changes are both there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_of_prefix_diffs_stacks_layers_and_runs() -> TestResult {
    let Some(env) = env("merge").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    let a = llb.run(&base, "echo a > /a");
    let b = llb.run(&base, "echo b > /b");
    let da = llb.diff(Some(&base), Some(&a));
    let db = llb.diff(Some(&base), Some(&b));
    let merged = llb.merge(&[&base, &da, &db]);
    let c = llb.run(&merged, "cat /a /b > /c");

    let base_fs = llb.solve(w, &base, 0).await?;
    let a_fs = llb.solve(w, &a, 0).await?;
    let da_fs = llb.solve(w, &da, 0).await?;
    assert_eq!(da_fs.layers, a_fs.layers[base_fs.layers.len()..]);
    assert_eq!(da_fs.layers.len(), 1);

    let merged_fs = llb.solve(w, &merged, 0).await?;
    assert_eq!(merged_fs.layers.len(), base_fs.layers.len() + 2);
    assert_eq!(merged_fs.layers[..base_fs.layers.len()], base_fs.layers[..]);

    let c_fs = llb.solve(w, &c, 0).await?;
    let flat = flatten(w, &c_fs.layers);
    assert_eq!(file(&flat, "c"), "a\nb\n");
    assert_eq!(file(&flat, "a"), "a\n");
    assert!(flat.contains_key("bin/busybox"));
    w.clone().finish().await;
    Ok(())
}

// Verifies: a diff between two filesystems that do not share a layer prefix is computed into one
// layer holding exactly the changes (new, changed, chmodded, whiteouts for deletions; unchanged
// files left out); lower + that layer has the same files, modes and owners as upper, also when
// containerd unpacks it under a process; diff(x, x) is empty; diff(x, scratch) deletes all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_diff_turns_lower_into_upper() -> TestResult {
    let Some(env) = env("diff").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    let lower = llb.run(
        &base,
        "echo 1 > /x && echo keep > /k && echo y > /y && mkdir /d && echo f > /d/f && mkdir -p /gone/sub",
    );
    let upper = llb.run(
        &base,
        "echo 2 > /x && echo keep > /k && echo z > /z && rm /bin/ls && mkdir -m 700 /d && \
         echo f > /d/f && ln -s x /lnk && chown 1000:1000 /z",
    );
    let d = llb.diff(Some(&lower), Some(&upper));
    let applied = llb.merge(&[&lower, &d]);
    let check = llb.run(
        &applied,
        "cat /x > /out && { [ -e /y ] || echo no-y; } >> /out && { [ -e /bin/ls ] || echo no-ls; } >> /out && \
         { [ -e /gone ] || echo no-gone; } >> /out && stat -c '%a' /d >> /out",
    );
    let same = llb.diff(Some(&upper), Some(&upper));
    let wipe = llb.diff(Some(&lower), None);

    let lower_fs = llb.solve(w, &lower, 0).await?;
    let upper_fs = llb.solve(w, &upper, 0).await?;
    let d_fs = llb.solve(w, &d, 0).await?;
    assert_eq!(d_fs.layers.len(), 1);
    let names: Vec<String> = layer_entries(w, &d_fs.layers[0])
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    for want in ["x", "z", "lnk", "d", ".wh.y", ".wh.gone", "bin/.wh.ls"] {
        assert!(names.iter().any(|n| n == want), "`{want}` in {names:?}");
    }
    for unchanged in ["k", "d/f", "bin/busybox", "etc/passwd"] {
        assert!(
            !names.iter().any(|n| n == unchanged),
            "`{unchanged}` in {names:?}"
        );
    }

    let mut stacked = lower_fs.layers.clone();
    stacked.extend(d_fs.layers.clone());
    let got = flatten(w, &stacked);
    let want = flatten(w, &upper_fs.layers);
    let differing: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|p| got.get(*p) != want.get(*p))
        .collect();
    assert!(
        differing.is_empty(),
        "lower + diff != upper at {differing:?}"
    );
    assert_eq!(got["z"].uid, 1000);

    let check_fs = llb.solve(w, &check, 0).await?;
    assert_eq!(
        file(&flatten(w, &check_fs.layers), "out"),
        "2\nno-y\nno-ls\nno-gone\n700\n"
    );

    assert!(llb.solve(w, &same, 0).await?.layers.is_empty());
    let wipe_fs = llb.solve(w, &wipe, 0).await?;
    let mut all = lower_fs.layers.clone();
    all.extend(wipe_fs.layers);
    let left = flatten(w, &all);
    assert!(
        left.is_empty(),
        "{:?}",
        left.keys().take(5).collect::<Vec<_>>()
    );
    w.clone().finish().await;
    Ok(())
}

// Verifies: an exec's writable mount with an output index is an output of its own (a layer on
// the mount's input, here scratch), while a writable mount without one (BuildKit's
// readwrite-nooutput) is thrown away; neither leaves anything in the root filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mount_outputs() -> TestResult {
    let Some(env) = env("execout").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    let seed = llb.run(&base, "mkdir /seed && echo seed > /seed/s");
    let mount = |input: i64, dest: &str, output: i64| pb::Mount {
        input,
        dest: dest.into(),
        output,
        ..Default::default()
    };
    let exec = llb.b.add_op(&pb::Op {
        inputs: vec![pb::Input::new(&base, 0), pb::Input::new(&seed, 0)],
        op: Some(pb::op::Op::Exec(pb::ExecOp {
            meta: Some(pb::Meta {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo out > /out/f && echo scribble > /tmpw/seed/s && cat /tmpw/seed/s > /root.txt"
                        .into(),
                ],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            }),
            mounts: vec![mount(0, "/", 0), mount(-1, "/out", 1), mount(1, "/tmpw", -1)],
            ..Default::default()
        })),
        platform: Some(platform()),
        ..Default::default()
    });
    let out1 = llb.solve(w, &exec, 1).await?;
    assert_eq!(out1.layers.len(), 1);
    let fs1 = flatten(w, &out1.layers);
    assert_eq!(fs1.keys().collect::<Vec<_>>(), ["f"]);
    assert_eq!(file(&fs1, "f"), "out\n");

    let root = llb.solve(w, &exec, 0).await?;
    let fs0 = flatten(w, &root.layers);
    assert_eq!(file(&fs0, "root.txt"), "scribble\n");
    assert!(!fs0.contains_key("out") && !fs0.contains_key("tmpw"));

    let seed_again = llb.run(&seed, "cat /seed/s > /again");
    let again = llb.solve(w, &seed_again, 0).await?;
    assert_eq!(file(&flatten(w, &again.layers), "again"), "seed\n");
    w.clone().finish().await;
    Ok(())
}

/// Whether vertex `digest` came from the cache in `r` (`None`: it is not in the report).
fn was_cached(r: &SolveResult, digest: &str) -> Option<bool> {
    r.vertices
        .iter()
        .find(|v| v.digest == digest)
        .map(|v| v.cached)
}

// Verifies: an exec with two outputs (its root and a writable mount with an output index) is
// recorded whole: a later solve asking for either output is a cache hit (nothing runs), in the
// same process and in a fresh worker reading the records from disk, and both outputs' files are
// right. The process writes a random token, so a re-run would be seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_two_outputs_is_cached_whole() -> TestResult {
    let Some(env) = env("twoout").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    let exec = llb.b.add_op(&pb::Op {
        inputs: vec![pb::Input::new(&base, 0)],
        op: Some(pb::op::Op::Exec(pb::ExecOp {
            meta: Some(pb::Meta {
                args: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /token && \
                     cp /token /out/token && echo second > /out/f && echo root > /root.txt"
                        .into(),
                ],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            }),
            mounts: vec![
                pb::Mount {
                    input: 0,
                    dest: "/".into(),
                    output: 0,
                    ..Default::default()
                },
                pb::Mount {
                    input: -1,
                    dest: "/out".into(),
                    output: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })),
        platform: Some(platform()),
        ..Default::default()
    });

    let first = llb.solve_full(w, &exec, 1).await?;
    assert_eq!(was_cached(&first, &exec), Some(false));
    let out1 = flatten(w, &first.fs.layers);
    assert_eq!(file(&out1, "f"), "second\n");
    let token = file(&out1, "token");
    assert_eq!(token.len(), 32, "{token:?}");

    // The other output, in a new solve: from the cache, the same run's files.
    let root = llb.solve_full(w, &exec, 0).await?;
    assert_eq!(was_cached(&root, &exec), Some(true));
    let fs0 = flatten(w, &root.fs.layers);
    assert_eq!(file(&fs0, "root.txt"), "root\n");
    assert_eq!(file(&fs0, "token"), token);
    assert!(fs0.contains_key("bin/busybox"));
    assert!(!fs0.contains_key("out/f"), "output 1 is not in the root");
    w.clone().finish().await;

    // A fresh worker on the same state directory: the record comes from disk.
    let w2 = open(env.config.clone()).await?;
    let again = llb.solve_full(&w2, &exec, 1).await?;
    assert_eq!(was_cached(&again, &exec), Some(true));
    assert_eq!(again.fs.layers, first.fs.layers);
    assert_eq!(file(&flatten(&w2, &again.fs.layers), "token"), token);
    let root2 = llb.solve_full(&w2, &exec, 0).await?;
    assert_eq!(was_cached(&root2, &exec), Some(true));
    assert_eq!(root2.fs.layers, root.fs.layers);
    w2.clone().finish().await;
    Ok(())
}

fn owner(user: &str, group: Option<&str>) -> Option<pb::ChownOpt> {
    let by_name = |n: &str| pb::UserOpt {
        user: Some(pb::user_opt::User::ByName(pb::NamedUserOpt {
            name: n.into(),
            input: 0,
        })),
    };
    Some(pb::ChownOpt {
        user: Some(by_name(user)),
        group: group.map(by_name),
    })
}

// Verifies: a FileOp whose actions use different bases (an op input and scratch), refer to
// earlier actions' results as base and as copy source (a wildcard copy out of an intermediate
// result), has two outputs, skips an action no output needs, and applies mkdir/mkfile/symlink/
// copy/rm (with a wildcard) with modes and owners given by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_op_actions_on_several_bases() -> TestResult {
    let Some(env) = env("fileop").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    use pb::file_action::Action;
    let act = |input: i64, secondary: i64, output: i64, action: Action| pb::FileAction {
        input,
        secondary_input: secondary,
        output,
        action: Some(action),
    };
    let mkfile = |path: &str, data: &str, mode: i32| {
        Action::Mkfile(pb::FileActionMkFile {
            path: path.into(),
            mode,
            data: data.as_bytes().to_vec(),
            timestamp: -1,
            ..Default::default()
        })
    };
    // n = 1 input, so action k's result is index k + 1.
    let actions = vec![
        // 0: on the image.
        act(
            0,
            -1,
            -1,
            Action::Mkdir(pb::FileActionMkDir {
                path: "/dir".into(),
                mode: 0o750,
                owner: owner("app", None),
                timestamp: -1,
                ..Default::default()
            }),
        ),
        // 1: on 0.
        act(1, -1, -1, mkfile("/dir/a.txt", "A", 0o640)),
        // 2: on scratch; read by 4 and output 1.
        act(-1, -1, 1, mkfile("/b.txt", "B", 0o644)),
        // 3: on 1.
        act(
            2,
            -1,
            -1,
            Action::Symlink(pb::FileActionSymlink {
                oldpath: "a.txt".into(),
                newpath: "/dir/link".into(),
                timestamp: -1,
                ..Default::default()
            }),
        ),
        // 4: on 3, copying out of 2 with a wildcard.
        act(
            4,
            3,
            -1,
            Action::Copy(pb::FileActionCopy {
                src: "/*.txt".into(),
                dest: "/dir/".into(),
                owner: owner("nobody", Some("app")),
                mode: 0o600,
                allow_wildcard: true,
                follow_symlink: true,
                timestamp: -1,
                ..Default::default()
            }),
        ),
        // 5, 6: on 4, 5.
        act(5, -1, -1, mkfile("/dir/t1", "t", 0o644)),
        act(6, -1, -1, mkfile("/dir/t2", "t", 0o644)),
        // 7: on 6, output 0.
        act(
            7,
            -1,
            0,
            Action::Rm(pb::FileActionRm {
                path: "/dir/t*".into(),
                allow_wildcard: true,
                ..Default::default()
            }),
        ),
        // 8: needed by nothing; would fail if it ran.
        act(
            -1,
            -1,
            -1,
            Action::Rm(pb::FileActionRm {
                path: "/not-there".into(),
                ..Default::default()
            }),
        ),
    ];
    let fop = llb.b.add_op(&pb::Op {
        inputs: vec![pb::Input::new(&base, 0)],
        op: Some(pb::op::Op::File(pb::FileOp { actions })),
        ..Default::default()
    });

    let base_fs = llb.solve(w, &base, 0).await?;
    let out0 = llb.solve(w, &fop, 0).await?;
    assert_eq!(
        out0.layers.len(),
        base_fs.layers.len() + 1,
        "one chain of actions, one layer"
    );
    let fs = flatten(w, &out0.layers);
    let meta = |p: &str| {
        let e = &fs[p];
        (e.kind, e.mode, e.uid, e.gid)
    };
    assert_eq!(meta("dir"), ('d', 0o750, 1000, 1000));
    assert_eq!(meta("dir/a.txt"), ('f', 0o640, 0, 0));
    assert_eq!(file(&fs, "dir/a.txt"), "A");
    assert_eq!(meta("dir/link").0, 'l');
    assert_eq!(file(&fs, "dir/link"), "a.txt");
    assert_eq!(meta("dir/b.txt"), ('f', 0o600, 65534, 1000));
    assert_eq!(file(&fs, "dir/b.txt"), "B");
    assert!(!fs.contains_key("dir/t1") && !fs.contains_key("dir/t2"));
    assert!(fs.contains_key("bin/busybox"));

    let out1 = llb.solve(w, &fop, 1).await?;
    assert_eq!(out1.layers.len(), 1);
    let fs1 = flatten(w, &out1.layers);
    assert_eq!(fs1.keys().collect::<Vec<_>>(), ["b.txt"]);
    assert_eq!(fs1["b.txt"].mode, 0o644);
    w.clone().finish().await;
    Ok(())
}

// Verifies: malformed file-op indexes and merges of nothing are clear errors, not panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_are_clear_errors() -> TestResult {
    let Some(env) = env("bad").await else {
        return Ok(());
    };
    let w = &env.worker;
    let mut llb = Llb::new(&env);
    let base = llb.image();
    let forward = llb.b.add_op(&pb::Op {
        inputs: vec![pb::Input::new(&base, 0)],
        op: Some(pb::op::Op::File(pb::FileOp {
            actions: vec![pb::FileAction {
                input: 1,
                secondary_input: -1,
                output: 0,
                action: Some(pb::file_action::Action::Mkdir(Default::default())),
            }],
        })),
        ..Default::default()
    });
    let e = llb.solve(w, &forward, 0).await.expect_err("must fail");
    assert!(e.contains("does not come before it"), "{e}");
    let empty_merge = llb.b.add_op(&pb::Op {
        op: Some(pb::op::Op::Merge(pb::MergeOp { inputs: vec![] })),
        ..Default::default()
    });
    let e = llb.solve(w, &empty_merge, 0).await.expect_err("must fail");
    assert!(e.contains("merge op has no inputs"), "{e}");
    w.clone().finish().await;
    Ok(())
}
