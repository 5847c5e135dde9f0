//! The stage loop: base images, then each instruction of each reachable stage in file order.

use std::collections::{BTreeMap, BTreeSet};

use memobuild_proto::pb;

use crate::config::{Empty, Healthcheck, ImageConfig, format_go_duration};
use crate::error::{ErrorKind, Location, Warning};
use crate::instructions::{Command, Dockerfile, Instruction, ShellCmd};
use crate::lint;
use crate::lower::context::PendingLocal;
use crate::lower::graph::{Graph, NodeId, Out};
use crate::lower::naming::{go_list, go_quote_list};
use crate::lower::onbuild::StageTriggers;
use crate::lower::paths::{join, normalize_workdir};
use crate::lower::source::{LocalSource, local_op};
use crate::lower::state::{DEFAULT_PATH, StageState};
use crate::shell::{EnvGetter, EnvList, Lexer};
use crate::stages::{Base, StageGraph};
use crate::{BuildOptions, ImageResolver};

/// An error at a place in the Dockerfile (or nowhere in particular).
pub(crate) type LowerError = (Option<Location>, ErrorKind);
pub(crate) type Res<T> = Result<T, LowerError>;

/// The frontend input that replaces the main context, as BuildKit's `dockerui` names it.
const INPUT_CONTEXT: &str = "context";

pub(crate) struct Lowerer<'a> {
    pub(crate) opts: &'a BuildOptions,
    pub(crate) resolver: &'a dyn ImageResolver,
    pub(crate) graph: Graph,
    pub(crate) lex: Lexer,
    pub(crate) global: EnvList,
    pub(crate) epoch: Option<i64>,
    pub(crate) warnings: Vec<Warning>,
    context: Option<NodeId>,
    /// The main context when it is the frontend input `context` (buildx's remote bake
    /// definitions): its root, `None` for an empty one, once imported.
    context_input: Option<Option<Out>>,
    /// Context paths read by COPY/ADD (for `local.followpaths`).
    pub(crate) ctx_paths: BTreeSet<String>,
    pub(crate) states: Vec<Option<StageState>>,
    pub(crate) proxy: Option<pb::ProxyEnv>,
    /// The instruction being lowered (where lint findings of expansions go).
    pub(crate) current: Option<Location>,
    /// Deterministic progress-group ids (`COPY --link`).
    pub(crate) progress_groups: usize,
    /// `/etc/hosts` entries of every RUN (the validated `extra_hosts` option).
    pub(crate) extra_hosts: Vec<pb::HostIp>,
    /// Paths read from each chain of stages (keyed by the chain's first stage, the one not
    /// based on another stage), BuildKit's shared `dispatchState.paths`: `/` for RUN and the
    /// target, the sources of `COPY --from` and `RUN --mount=from`. They become the
    /// followpaths of a `local:` named context at the chain's start.
    pub(crate) paths: BTreeMap<usize, BTreeSet<String>>,
    /// `local:` named contexts, completed in [`Self::finish`] once their paths are known.
    pub(crate) named_locals: Vec<PendingLocal>,
}

/// What lowering produced.
pub(crate) struct LowerOutput {
    pub root: Option<Out>,
    pub image: ImageConfig,
    pub graph: Graph,
    pub warnings: Vec<Warning>,
}

impl<'a> Lowerer<'a> {
    pub(crate) fn new(
        opts: &'a BuildOptions,
        resolver: &'a dyn ImageResolver,
        lex: Lexer,
        global: EnvList,
        epoch: Option<i64>,
    ) -> Self {
        Self {
            opts,
            resolver,
            graph: Graph::default(),
            lex,
            global,
            epoch,
            warnings: Vec::new(),
            context: None,
            context_input: None,
            ctx_paths: BTreeSet::new(),
            states: Vec::new(),
            proxy: proxy_env(&opts.build_args),
            current: None,
            progress_groups: 0,
            extra_hosts: Vec::new(),
            paths: BTreeMap::new(),
            named_locals: Vec::new(),
        }
    }

    /// Records that `path` of stage `stage`'s filesystem is read (see [`Self::paths`]).
    pub(crate) fn mark_path(&mut self, sg: &StageGraph, stage: usize, path: String) {
        let mut first = stage;
        // Bounded: stage graphs are acyclic, a base is always an earlier stage.
        for _ in 0..sg.stages.len() {
            match sg.stages.get(first).map(|s| &s.base) {
                Some(Base::Stage(b)) => first = *b,
                _ => break,
            }
        }
        self.paths.entry(first).or_default().insert(path);
    }

    /// The build context: the frontend input `context` when the request carries one, else the
    /// local source (created on first use, completed in [`Self::finish`]). `None` is an empty
    /// input.
    pub(crate) fn context(&mut self) -> Res<Option<Out>> {
        if let Some(root) = self.context_input {
            return Ok(root);
        }
        if let Some(def) = self.opts.inputs.get(INPUT_CONTEXT) {
            let root = self.graph.add_definition(def).map_err(|e| {
                (
                    self.current,
                    ErrorKind::BadArguments(format!("frontend input `{INPUT_CONTEXT}`: {e}")),
                )
            })?;
            self.context_input = Some(root);
            return Ok(root);
        }
        let id = match self.context {
            Some(id) => id,
            None => {
                let id = self.graph.add(
                    pb::Op::default(),
                    Vec::new(),
                    pb::OpMetadata::default(),
                    None,
                );
                self.context = Some(id);
                id
            }
        };
        Ok(Some(Out { node: id, index: 0 }))
    }

    pub(crate) fn run(
        mut self,
        df: &Dockerfile,
        sg: &StageGraph,
        triggers: &BTreeMap<usize, StageTriggers>,
    ) -> Res<LowerOutput> {
        self.states = vec![None; sg.stages.len()];
        // Images used by `COPY --from=<image>` are resolved first, as BuildKit does.
        for (i, info) in sg.stages.iter().enumerate() {
            if info.source.is_none() && sg.reachable.contains(&i) {
                let st = self.init_stage(sg, i, 0)?;
                self.states[i] = Some(st);
            }
        }
        for (i, info) in sg.stages.iter().enumerate() {
            let Some(src) = info.source else { continue };
            if !sg.reachable.contains(&i) {
                continue;
            }
            let stage = &df.stages[src];
            // BuildKit counts the FROM unless it is `scratch` or a stage (a named context too,
            // although its op is named `[context …]`).
            let mut total = usize::from(matches!(info.base, Base::Image(_) | Base::Context { .. }));
            total += stage
                .commands
                .iter()
                .filter(|c| {
                    matches!(
                        c.command,
                        Command::Add(_) | Command::Copy(_) | Command::Run(_) | Command::Workdir(_)
                    )
                })
                .count();
            let mut st = self.init_stage(sg, i, total)?;
            if info.replaced() {
                // `context:NAME` stands for the whole stage: nothing of it is lowered.
                self.states[i] = Some(st);
                continue;
            }
            self.prepare_stage(&mut st);
            let inherited = triggers.get(&src);
            self.states[i] = Some(st);
            for (ci, ins) in stage.commands.iter().enumerate() {
                let mut st = self.states[i]
                    .take()
                    .ok_or((Some(ins.location), ErrorKind::Empty))?;
                self.current = Some(ins.location);
                st.in_trigger = inherited.is_some_and(|t| ci < t.count);
                let before = self.warnings.len();
                let r = self.dispatch(sg, i, ci, &mut st, ins);
                // A `# check=` comment above the instruction applies to its findings (a
                // trigger has no comments).
                if let Some(found) = self.warnings.get_mut(before..) {
                    lint::scope_to(found, &ins.comments);
                }
                self.states[i] = Some(st);
                r.map_err(|(l, e)| match inherited {
                    Some(t) if ci < t.count => (
                        Some(ins.location),
                        ErrorKind::OnbuildTrigger {
                            trigger: ins.original.clone(),
                            origin: t.origin.clone(),
                            cause: Box::new(e),
                        },
                    ),
                    _ => (l.or(Some(ins.location)), e),
                })?;
            }
        }
        self.finish(sg)
    }

    fn finish(mut self, sg: &StageGraph) -> Res<LowerOutput> {
        if let Some(ctx) = self.context {
            let follow = follow_paths(&self.ctx_paths);
            let (op, md) = local_op(&LocalSource {
                name: &self.opts.context_name,
                session: self.opts.session_for(&self.opts.context_name),
                excludes: &self.opts.dockerignore,
                follow_paths: &follow,
                shared_key_hint: &self.opts.context_name,
                custom_name: "[internal] load build context",
            });
            self.graph.replace(ctx, op, md);
        }
        self.mark_path(sg, sg.target, "/".into());
        self.complete_named_locals();
        let target = self.states[sg.target]
            .take()
            .ok_or((None, ErrorKind::NoStages))?;
        let mut image = target.image;
        // `label:` options, after the Dockerfile's LABELs (BuildKit's `finalizeResultImage`).
        image
            .config
            .labels
            .extend(self.opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let p = &self.opts.platform;
        let same = image.os == p.os && image.architecture == p.architecture;
        image.os = p.os.clone();
        image.architecture = p.architecture.clone();
        if p.variant.is_some() || !same {
            image.variant = p.variant.clone().unwrap_or_default();
        }
        image.created = self.epoch.map(crate::config::format_rfc3339);
        Ok(LowerOutput {
            root: target.root,
            image,
            graph: self.graph,
            warnings: self.warnings,
        })
    }

    /// BuildKit's per-stage set-up: PATH guaranteed, image env/workdir/user into the state.
    fn prepare_stage(&mut self, st: &mut StageState) {
        let has_path = st
            .image
            .config
            .env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == "PATH");
        if !has_path && st.platform.os != "windows" {
            st.image.config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        for e in st.image.config.env.clone() {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            st.env.set(k, v);
        }
        if !st.image.config.working_dir.is_empty() {
            let wd = normalize_workdir(&st.image.config.working_dir, &st.image.config.working_dir);
            st.image.config.working_dir = wd.clone();
            st.cwd = wd;
        }
        if !st.image.config.user.is_empty() {
            st.user = st.image.config.user.clone();
        }
    }

    /// Expands `word` with the stage's variables, reporting unset ones (UndefinedVar).
    pub(crate) fn expand(&mut self, st: &StageState, word: &str) -> Res<String> {
        let e = self
            .lex
            .process(word, &st.env)
            .map_err(|e| (None, ErrorKind::Shell(e)))?;
        self.report_unmatched(st, &e.unmatched);
        Ok(e.result)
    }

    /// Expands without lint (ARG defaults, as BuildKit does).
    fn expand_quiet(&self, st: &StageState, word: &str) -> Res<String> {
        self.lex
            .process_word(word, &st.env)
            .map_err(|e| (None, ErrorKind::Shell(e)))
    }

    /// BuildKit's `reportUnmatchedVariables`: variables that are neither set nor declared with
    /// `ARG` in the stage.
    pub(crate) fn report_unmatched(&mut self, st: &StageState, unmatched: &BTreeSet<String>) {
        for v in unmatched {
            if st.build_args.iter().any(|(k, _)| k == v)
                || matches!(
                    v.as_str(),
                    "BUILDKIT_SBOM_SCAN_CONTEXT" | "BUILDKIT_SBOM_SCAN_STAGE"
                )
            {
                continue;
            }
            let hint = lint::did_you_mean(&lint::suggest(v, st.env.iter().map(|(k, _)| k)), true);
            self.warnings.push(lint::warning(
                lint::UNDEFINED_VAR,
                format!("Usage of undefined variable '${v}'{hint}"),
                self.current,
            ));
        }
    }

    fn lint(&mut self, rule: lint::Rule, message: String, at: Option<Location>) {
        self.warnings.push(lint::warning(rule, message, at));
    }

    fn dispatch(
        &mut self,
        sg: &StageGraph,
        si: usize,
        ci: usize,
        st: &mut StageState,
        ins: &Instruction,
    ) -> Res<()> {
        match &ins.command {
            Command::From(_) => Ok(()),
            Command::Env(kvs) => {
                // Every word is expanded before any is set: `ENV A=1 B=$A` sees the old `A`.
                let mut pairs = Vec::with_capacity(kvs.len());
                for kv in kvs {
                    pairs.push((self.expand(st, &kv.key)?, self.expand(st, &kv.value)?));
                }
                let mut msg = String::from("ENV");
                for (kv, (k, v)) in kvs.iter().zip(pairs) {
                    self.legacy_key_value(kv.no_delim, "ENV", ins.location);
                    self.secret_key("ENV", &k, ins.location);
                    msg.push_str(&format!(" {k}={v}"));
                    st.env.set(&k, &v);
                    st.add_image_env(&k, &v);
                }
                st.commit(msg, false, false);
                Ok(())
            }
            Command::Label(kvs) => {
                let mut msg = String::from("LABEL");
                for kv in kvs {
                    self.legacy_key_value(kv.no_delim, "LABEL", ins.location);
                    let k = self.expand(st, &kv.key)?;
                    let v = self.expand(st, &kv.value)?;
                    msg.push_str(&format!(" {k}={v}"));
                    st.image.config.labels.insert(k, v);
                }
                st.commit(msg, false, false);
                Ok(())
            }
            Command::Arg(pairs) => {
                let mut parts = Vec::new();
                for p in pairs {
                    let from_build = self.opts.build_args.get(&p.key).cloned();
                    let value = match (&from_build, &p.value) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(self.expand_quiet(st, d)?),
                        (None, None) => self.global.get(&p.key).map(str::to_owned),
                    };
                    if let Some(v) = &value
                        && !matches!(
                            p.key.as_str(),
                            "BUILDKIT_SBOM_SCAN_CONTEXT" | "BUILDKIT_SBOM_SCAN_STAGE"
                        )
                    {
                        st.env.set(&p.key, v);
                    }
                    parts.push(match &value {
                        Some(v) => format!("{}={v}", p.key),
                        None => p.key.clone(),
                    });
                    st.build_args.push((p.key.clone(), value));
                    self.secret_key("ARG", &p.key, ins.location);
                }
                st.commit(format!("ARG {}", parts.join(" ")), false, false);
                Ok(())
            }
            Command::Workdir(path) => {
                let path = self.expand(st, path)?;
                self.workdir(st, ins, &path)
            }
            Command::User(u) => {
                let u = self.expand(st, u)?;
                st.user = u.clone();
                st.image.config.user = u.clone();
                st.commit(format!("USER {u}"), false, false);
                Ok(())
            }
            Command::Run(r) => {
                // A RUN may read anything of its stage (BuildKit marks `/`).
                self.mark_path(sg, si, "/".into());
                if !r.devices.is_empty() {
                    return Err((
                        None,
                        ErrorKind::Unsupported(
                            "`RUN --device` is not supported: MemoBuild's worker gives containers no CDI devices (BuildKit has it only in the 1.14-labs frontend); remove the flag".into(),
                        ),
                    ));
                }
                let sources = (0..r.mounts.len())
                    .map(|mi| {
                        sg.mount_sources
                            .get(&(si, ci, mi))
                            .and_then(|&dep| self.states.get(dep).and_then(Option::as_ref))
                            .map(|s| s.root)
                    })
                    .collect();
                for (mi, path) in self.run_cmd(st, ins, r, sources)? {
                    if let Some(&dep) = sg.mount_sources.get(&(si, ci, mi)) {
                        self.mark_path(sg, dep, path);
                    }
                }
                Ok(())
            }
            Command::Copy(c) => {
                let from = sg.copy_sources.get(&(si, ci)).copied();
                let sources = self.copy(st, ins, c, from, sg)?;
                if let Some(dep) = from {
                    for src in sources {
                        self.mark_path(sg, dep, join("/", &src));
                    }
                }
                Ok(())
            }
            Command::Add(a) => self.add(st, ins, a),
            Command::Cmd(c) => {
                self.used_once("CMD", &mut st.cmd_at, ins.location);
                let args = self.cmd_args(st, ins, c, "CMD");
                st.image.config.cmd = args.clone();
                st.image.config.args_escaped = true;
                st.cmd_set = true;
                st.commit(format!("CMD {}", go_quote_list(&args)), false, false);
                Ok(())
            }
            Command::Entrypoint(c) => {
                self.used_once("ENTRYPOINT", &mut st.entrypoint_at, ins.location);
                let args = self.cmd_args(st, ins, c, "ENTRYPOINT");
                st.image.config.entrypoint = args.clone();
                if !st.cmd_set {
                    st.image.config.cmd.clear();
                }
                st.commit(format!("ENTRYPOINT {}", go_quote_list(&args)), false, false);
                Ok(())
            }
            Command::Shell(s) => {
                st.image.config.shell = s.clone();
                st.commit(format!("SHELL {}", go_list(s)), false, false);
                Ok(())
            }
            Command::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    let words = self
                        .lex
                        .process_words(p, &st.env)
                        .map_err(|e| (None, ErrorKind::Shell(e)))?;
                    for w in words {
                        self.lint_port(&w, ins.location);
                        out.extend(parse_port(&w)?);
                    }
                }
                for p in &out {
                    st.image.config.exposed_ports.insert(p.clone(), Empty {});
                }
                st.commit(format!("EXPOSE {}", go_list(&out)), false, false);
                Ok(())
            }
            Command::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.expand(st, v)?;
                    if v.is_empty() {
                        return Err((
                            None,
                            ErrorKind::BadArguments(
                                "`VOLUME` specified can not be an empty string".into(),
                            ),
                        ));
                    }
                    st.image.config.volumes.insert(v.clone(), Empty {});
                    out.push(v);
                }
                st.commit(format!("VOLUME {}", go_list(&out)), false, false);
                Ok(())
            }
            Command::StopSignal(s) => {
                let s = self.expand(st, s)?;
                if !valid_signal(&s) {
                    return Err((
                        None,
                        ErrorKind::BadArguments(format!(
                            "invalid signal: {s}: expected a name like SIGTERM or a number"
                        )),
                    ));
                }
                st.image.config.stop_signal = s.clone();
                st.commit(format!("STOPSIGNAL {s}"), false, false);
                Ok(())
            }
            Command::Maintainer(m) => {
                st.image.author = m.clone();
                st.commit(format!("MAINTAINER {m}"), false, false);
                Ok(())
            }
            Command::Healthcheck(h) => {
                self.used_once("HEALTHCHECK", &mut st.healthcheck_at, ins.location);
                let hc = Healthcheck {
                    test: h.test.clone(),
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    start_interval: h.start_interval,
                    retries: h.retries,
                };
                let msg = format!(
                    "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    go_list(&hc.test),
                    format_go_duration(hc.interval),
                    format_go_duration(hc.timeout),
                    format_go_duration(hc.start_period),
                    format_go_duration(hc.start_interval),
                    hc.retries
                );
                st.image.config.healthcheck = Some(hc);
                st.commit(msg, false, false);
                Ok(())
            }
            Command::Onbuild(expr) => {
                st.image.config.on_build.push(expr.clone());
                Ok(())
            }
        }
    }

    fn cmd_args(
        &mut self,
        st: &StageState,
        ins: &Instruction,
        c: &ShellCmd,
        kw: &str,
    ) -> Vec<String> {
        if c.prepend_shell {
            if st.image.config.shell.is_empty() {
                self.lint(
                    lint::JSON_ARGS_RECOMMENDED,
                    format!(
                        "JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"
                    ),
                    Some(ins.location),
                );
            }
            with_shell(st, &c.args)
        } else {
            c.args.clone()
        }
    }
}

impl Lowerer<'_> {
    fn legacy_key_value(&mut self, no_delim: bool, kw: &str, at: Location) {
        if no_delim {
            self.lint(
                lint::LEGACY_KEY_VALUE_FORMAT,
                format!(
                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                ),
                Some(at),
            );
        }
    }

    fn secret_key(&mut self, kw: &str, key: &str, at: Location) {
        if lint::looks_secret(key) {
            self.lint(
                lint::SECRETS_USED_IN_ARG_OR_ENV,
                format!("Do not use ARG or ENV instructions for sensitive data ({kw} {key:?})"),
                Some(at),
            );
        }
    }

    /// MultipleInstructionsDisallowed, reported at the earlier instruction (the one ignored).
    fn used_once(&mut self, kw: &str, last: &mut Option<Location>, at: Location) {
        if let Some(prev) = last.replace(at) {
            self.lint(
                lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                format!(
                    "Multiple {kw} instructions should not be used in the same stage because only the last one will be used"
                ),
                Some(prev),
            );
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat.
    fn lint_port(&mut self, raw: &str, at: Location) {
        let (spec, proto) = raw.split_once('/').unwrap_or((raw, ""));
        if proto != proto.to_ascii_lowercase() {
            self.lint(
                lint::EXPOSE_PROTO_CASING,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
                Some(at),
            );
        }
        if spec.contains(':') {
            self.lint(
                lint::EXPOSE_INVALID_FORMAT,
                format!(
                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
                ),
                Some(at),
            );
        }
    }
}

/// BuildKit's `normalizeContextPaths`: the read paths relative to the root, none when `/` is
/// read (the whole directory is sent).
pub(crate) fn follow_paths(paths: &BTreeSet<String>) -> Vec<String> {
    if paths.contains("/") {
        return Vec::new();
    }
    paths
        .iter()
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect()
}

/// The stage's shell (SHELL or `/bin/sh -c`) with the command joined into one argument.
pub(crate) fn with_shell(st: &StageState, args: &[String]) -> Vec<String> {
    let mut shell = if st.image.config.shell.is_empty() {
        if st.platform.os == "windows" {
            vec!["cmd".to_owned(), "/S".to_owned(), "/C".to_owned()]
        } else {
            vec!["/bin/sh".to_owned(), "-c".to_owned()]
        }
    } else {
        st.image.config.shell.clone()
    };
    shell.push(args.join(" "));
    shell
}

fn proxy_env(args: &BTreeMap<String, String>) -> Option<pb::ProxyEnv> {
    let mut pe = pb::ProxyEnv::default();
    let mut set = false;
    for (k, v) in args {
        let slot = match k.to_ascii_lowercase().as_str() {
            "http_proxy" => &mut pe.http_proxy,
            "https_proxy" => &mut pe.https_proxy,
            "ftp_proxy" => &mut pe.ftp_proxy,
            "no_proxy" => &mut pe.no_proxy,
            "all_proxy" => &mut pe.all_proxy,
            _ => continue,
        };
        *slot = v.clone();
        set = true;
    }
    set.then_some(pe)
}

fn parse_port(p: &str) -> Res<Vec<String>> {
    let bad = || {
        (
            None,
            ErrorKind::BadArguments(format!(
                "invalid port `{p}`: expected port[-port][/tcp|udp|sctp]"
            )),
        )
    };
    let (port, proto) = match p.split_once('/') {
        Some((a, b)) => (a, b.to_ascii_lowercase()),
        None => (p, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    // `ip:host:container` forms keep only the container part, as Docker does.
    let port = port.rsplit(':').next().unwrap_or(port);
    let (lo, hi) = match port.split_once('-') {
        Some((a, b)) => (a, b),
        None => (port, port),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    NAMES.contains(&name)
        || name
            .strip_prefix("RTMIN+")
            .or_else(|| name.strip_prefix("RTMAX-"))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("80").expect("ok"), vec!["80/tcp"]);
        assert_eq!(parse_port("53/UDP").expect("ok"), vec!["53/udp"]);
        assert_eq!(
            parse_port("8000-8001").expect("ok"),
            vec!["8000/tcp", "8001/tcp"]
        );
        assert!(parse_port("x").is_err());
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("term"));
        assert!(valid_signal("9"));
        assert!(!valid_signal("SIGNOPE"));
    }
}
