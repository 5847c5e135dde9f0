//! Instruction types. Words are kept unexpanded: variables are expanded while lowering, with
//! the environment of the stage at that point.

use crate::error::Location;
use crate::parser::{Directive, Heredoc};

/// A parsed Dockerfile: global `ARG`s and stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// Parser directives.
    pub directives: Vec<Directive>,
    /// The escape character.
    pub escape: char,
    /// `ARG`s before the first `FROM` (global scope).
    pub meta_args: Vec<Instruction>,
    /// Stages in file order.
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `FROM` instruction.
    pub from: FromCmd,
    /// Where the `FROM` is.
    pub location: Location,
    /// The `FROM` line as written.
    pub original: String,
    /// Comments above the `FROM`.
    pub comments: Vec<String>,
    /// The instructions of the stage.
    pub commands: Vec<Instruction>,
}

impl Stage {
    /// The `FROM` keyword as written (`FROM`, `from`, …).
    pub fn keyword(&self) -> &str {
        self.original
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
    }
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The keyword as written.
    pub keyword: String,
    /// The instruction as written (continuations joined), used in progress names and history.
    pub original: String,
    /// Where it is.
    pub location: Location,
    /// Comments above it.
    pub comments: Vec<String>,
    /// What it does.
    pub command: Command,
}

/// The instruction kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `FROM` (only inside [`Stage::from`]; never in a stage's command list).
    From(FromCmd),
    /// `ARG NAME[=value] …`
    Arg(Vec<ArgPair>),
    /// `ENV K=V …` or `ENV K V`
    Env(Vec<KeyValue>),
    /// `LABEL K=V …`
    Label(Vec<KeyValue>),
    /// `RUN`
    Run(RunCmd),
    /// `CMD`
    Cmd(ShellCmd),
    /// `ENTRYPOINT`
    Entrypoint(ShellCmd),
    /// `SHELL ["exe", "arg"]`
    Shell(Vec<String>),
    /// `COPY`
    Copy(CopyCmd),
    /// `ADD`
    Add(AddCmd),
    /// `WORKDIR path`
    Workdir(String),
    /// `USER user[:group]`
    User(String),
    /// `EXPOSE port[/proto] …` (sorted, as BuildKit does)
    Expose(Vec<String>),
    /// `VOLUME path …`
    Volume(Vec<String>),
    /// `STOPSIGNAL sig`
    StopSignal(String),
    /// `MAINTAINER name`
    Maintainer(String),
    /// `HEALTHCHECK`
    Healthcheck(HealthcheckCmd),
    /// `ONBUILD <instruction>`: the trigger as written.
    Onbuild(String),
}

/// `FROM [--platform=p] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromCmd {
    /// The base: an image reference, `scratch` or an earlier stage name (unexpanded).
    pub base: String,
    /// The stage name (lower case).
    pub name: Option<String>,
    /// `--platform` (unexpanded).
    pub platform: Option<String>,
}

/// One `ARG` definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgPair {
    /// The name.
    pub key: String,
    /// The default (unexpanded), if given.
    pub value: Option<String>,
}

/// A `K=V` pair of ENV or LABEL (both unexpanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Written in the legacy `ENV K V` form.
    pub no_delim: bool,
}

/// A command line of RUN/CMD/ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCmd {
    /// Exec form: the argv; shell form: one element, the command string.
    pub args: Vec<String>,
    /// Shell form: the stage's shell is prepended.
    pub prepend_shell: bool,
    /// Heredoc files (RUN only).
    pub files: Vec<Heredoc>,
}

/// `RUN [--mount=…] [--network=…] [--security=…] [--device=…] cmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCmd {
    /// The command.
    pub cmd: ShellCmd,
    /// `--mount` values as written.
    pub mounts: Vec<String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--security`.
    pub security: Option<String>,
    /// `--device` values (parsed so that lowering can refuse them clearly).
    pub devices: Vec<String>,
}

/// An inline (heredoc) source of COPY/ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The file name (the heredoc delimiter).
    pub path: String,
    /// The content (leading tabs already stripped for `<<-`).
    pub data: String,
    /// Whether variables in it are expanded.
    pub expand: bool,
}

/// Sources and destination of COPY/ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// Source paths (unexpanded).
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub contents: Vec<SourceContent>,
    /// The destination (unexpanded).
    pub dest: String,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCmd {
    /// Sources and destination.
    pub paths: SourcesAndDest,
    /// `--from`.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: String,
    /// `--chmod`.
    pub chmod: String,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCmd {
    /// Sources and destination.
    pub paths: SourcesAndDest,
    /// `--chown`.
    pub chown: String,
    /// `--chmod`.
    pub chmod: String,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: Option<bool>,
    /// `--checksum`.
    pub checksum: String,
    /// `--unpack`.
    pub unpack: Option<bool>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckCmd {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", cmd]`.
    pub test: Vec<String>,
    /// `--interval` in nanoseconds (0 = default).
    pub interval: i64,
    /// `--timeout` in nanoseconds.
    pub timeout: i64,
    /// `--start-period` in nanoseconds.
    pub start_period: i64,
    /// `--start-interval` in nanoseconds.
    pub start_interval: i64,
    /// `--retries`.
    pub retries: i64,
}
