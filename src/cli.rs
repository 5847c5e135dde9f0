//! Command-line flags. This is the only place flags and environment variables are read; the
//! libraries get typed options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// MemoBuild: a strictly incremental container image builder.
#[derive(Debug, Parser)]
#[command(name = "memobuild", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
    /// Print the LLB Definition a Dockerfile lowers to (the bytes `buildctl build` reads on stdin).
    Lower(LowerArgs),
    /// Say why each step of the last build of a target ran instead of coming from the cache.
    Why(WhyArgs),
}

/// Flags shared by `build` and `lower`: what to build.
#[derive(Debug, Args)]
pub struct FrontendArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Build this stage instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Registries (`HOST:PORT`) to reach over plain HTTP; loopback registries always are.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "MEMOBUILD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// Progress output styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    /// Live view for terminals.
    Tty,
    /// Plain lines, as `buildx --progress plain`.
    Plain,
    /// One JSON object per line for each event.
    Json,
}

/// `memobuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// What to build.
    #[command(flatten)]
    pub frontend: FrontendArgs,
    /// Name (and tag) of the image, e.g. `registry:5000/app:1.0`; may be given several times.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Push the image to the registries named by `--tag` (shorthand for `--output type=image,push=true`).
    #[arg(long)]
    pub push: bool,
    /// Output destination, as in buildx: `type=oci,dest=FILE`, `type=oci,dest=DIR,tar=false`.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// How to show progress (written to stderr).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Do not use cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// containerd socket (`unix:///path` or a path).
    #[arg(long, value_name = "ADDR", env = "MEMOBUILD_CONTAINERD")]
    pub containerd: Option<String>,
    /// Directory for MemoBuild's own state (blobs, cache).
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How many RUN steps may execute at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_parallelism: usize,
    /// After the build, say why each step that ran was not taken from the cache.
    #[arg(long)]
    pub explain: bool,
}

/// `memobuild why`.
#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The stage that was built (default: the last one).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// MemoBuild's state directory, as given to `build`.
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// Output encodings of `memobuild lower`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LowerFormat {
    /// Binary protobuf `pb.Definition`.
    Pb,
    /// A readable JSON rendering of the ops.
    Json,
}

/// `memobuild lower`.
#[derive(Debug, Args)]
pub struct LowerArgs {
    /// What to lower.
    #[command(flatten)]
    pub frontend: FrontendArgs,
    /// Output encoding.
    #[arg(long, value_enum, default_value_t = LowerFormat::Pb)]
    pub format: LowerFormat,
}
