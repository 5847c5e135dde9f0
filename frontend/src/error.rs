//! Errors and lint warnings, each pointing at a Dockerfile position.

use std::fmt;

use crate::options::OptionsError;
use crate::shell::ShellError;

/// A position in the Dockerfile: 1-based line and column, plus the last line of the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// First line (1-based).
    pub line: usize,
    /// Column (1-based) on the first line.
    pub column: usize,
    /// Last line (1-based) of the instruction, continuations and heredocs included.
    pub end_line: usize,
}

impl Location {
    /// A location covering `line..=end_line` starting at `column`.
    pub fn new(line: usize, column: usize, end_line: usize) -> Self {
        Self {
            line,
            column,
            end_line,
        }
    }
}

/// Why the frontend refused a Dockerfile or its build options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The Dockerfile has no instruction at all.
    #[error("file with no instructions")]
    Empty,
    /// Only `ARG`s, no `FROM`.
    #[error("dockerfile contains no stages to build: expected a `FROM` instruction")]
    NoStages,
    /// An instruction other than `ARG` before the first `FROM`.
    #[error("no build stage in current context: expected `FROM` before `{0}`")]
    MissingFrom(String),
    /// A keyword that is not an instruction, with the instruction it is closest to (as
    /// BuildKit suggests one: fewer than three edits away).
    #[error("unknown instruction: {keyword}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction {
        /// The keyword as written.
        keyword: String,
        /// The closest instruction, in the keyword's case.
        suggestion: Option<String>,
    },
    /// A `--flag` the instruction does not know.
    #[error("unknown flag: {flag} (`{instruction}` accepts {expected})")]
    UnknownFlag {
        /// The instruction.
        instruction: String,
        /// The flag as written.
        flag: String,
        /// The flags it accepts.
        expected: String,
    },
    /// A flag with a missing or malformed value.
    #[error("{0}")]
    BadFlag(String),
    /// Malformed arguments of an instruction (`FROM requires either one or three arguments`).
    #[error("{0}")]
    BadArguments(String),
    /// A parser directive with a bad value.
    #[error("{0}")]
    BadDirective(String),
    /// A heredoc without its terminator line.
    #[error("unterminated heredoc `{0}`: expected a line `{0}` before the end of the file")]
    UnterminatedHeredoc(String),
    /// A word that could not be lexed (unterminated quote, bad `${}`).
    #[error("{0}")]
    Shell(#[from] ShellError),
    /// `--from` names no stage and is not an image either.
    #[error("invalid stage index {0}: expected a stage index or name defined before")]
    BadStageIndex(String),
    /// `COPY --from=x` where stage `x` is defined later.
    #[error(
        "cannot copy from stage `{from}`, it needs to be defined before current stage `{stage}`"
    )]
    StageDefinedLater {
        /// The referenced stage.
        from: String,
        /// The stage doing the copy.
        stage: String,
    },
    /// Stages depending on each other in a cycle.
    #[error("circular dependency detected on stage: {0}")]
    CircularDependency(String),
    /// `--target` names no stage.
    #[error("target stage `{target}` could not be found (stages: {known})")]
    UnknownTarget {
        /// The requested target.
        target: String,
        /// The stage names there are.
        known: String,
    },
    /// A build argument that is not `NAME` = value with a valid name.
    #[error(
        "invalid build-arg `{0}`: expected a name of letters, digits, `_`, `.` or `-`, not starting with a digit"
    )]
    BadBuildArg(String),
    /// An image reference that cannot be parsed.
    #[error("invalid reference format `{reference}`: {reason}")]
    BadReference {
        /// The reference as written after expansion.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `COPY --from=x` where `x` is no stage and no resolvable image.
    #[error(
        "`--from={from}` is neither a stage defined before nor an image that resolves (stages: {known}): {message}"
    )]
    UnknownFromSource {
        /// The `--from` value.
        from: String,
        /// The stage names there are.
        known: String,
        /// The resolver's message.
        message: String,
    },
    /// The image resolver failed.
    #[error("failed to resolve image `{reference}`: {message}")]
    Resolve {
        /// The normalized reference.
        reference: String,
        /// The resolver's message.
        message: String,
    },
    /// The base image config JSON is malformed.
    #[error("failed to parse image config of `{reference}`: {message}")]
    BadImageConfig {
        /// The normalized reference.
        reference: String,
        /// The JSON error.
        message: String,
    },
    /// A platform string that cannot be parsed.
    #[error("invalid platform `{0}`: expected os/arch[/variant]")]
    BadPlatform(String),
    /// An `ONBUILD` trigger inherited from the base (image or stage) that cannot be used.
    #[error("`ONBUILD {trigger}` inherited from {origin}: {cause}")]
    OnbuildTrigger {
        /// The trigger as stored (`RUN make`).
        trigger: String,
        /// `image `busybox`` or `stage `base``.
        origin: String,
        /// What is wrong with it.
        cause: Box<ErrorKind>,
    },
    /// A named context (`context:NAME`) that cannot be used where the Dockerfile uses it.
    #[error("named context `{name}`: {cause}")]
    NamedContext {
        /// Its key in the options (`NAME` or `NAME::platform`).
        name: String,
        /// What went wrong (resolving its image, parsing its config, …).
        cause: Box<ErrorKind>,
    },
    /// A build option that cannot be used.
    #[error("{0}")]
    Options(#[from] OptionsError),
    /// A feature BuildKit has that MemoBuild does not run.
    #[error("{0}")]
    Unsupported(String),
    /// `# check=error=true` and lint rules fired.
    #[error("lint violation found for rules: {rules}")]
    LintViolation {
        /// The rules, by name, comma-separated.
        rules: String,
        /// The findings, which a caller shows beside the error as BuildKit does.
        found: Vec<Warning>,
    },
}

/// An error with the Dockerfile name and, when it comes from an instruction, its position.
///
/// Displays as one line: `Dockerfile:3:1: unknown instruction: FORM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendError {
    /// The Dockerfile name given in the options.
    pub file: String,
    /// Where in the file, if the error belongs to a place.
    pub location: Option<Location>,
    /// What went wrong (boxed to keep `Result`s small).
    pub kind: Box<ErrorKind>,
}

impl FrontendError {
    /// An error at `location` of `file`.
    pub fn at(file: &str, location: Location, kind: ErrorKind) -> Self {
        Self {
            file: file.to_owned(),
            location: Some(location),
            kind: Box::new(kind),
        }
    }

    /// An error about the whole file or the options.
    pub fn global(file: &str, kind: ErrorKind) -> Self {
        Self {
            file: file.to_owned(),
            location: None,
            kind: Box::new(kind),
        }
    }
}

impl fmt::Display for FrontendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "{}:{}:{}: {}", self.file, l.line, l.column, self.kind),
            None => write!(f, "{}: {}", self.file, self.kind),
        }
    }
}

impl std::error::Error for FrontendError {
    /// The kind's own cause: the kind itself is already part of `Display`, and error-chain
    /// printers (`{:#}`) would repeat it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.kind.as_ref())
    }
}

/// A lint finding: not a failure, returned beside the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The BuildKit lint rule name, e.g. `NoEmptyContinuation`.
    pub rule: String,
    /// What was found.
    pub message: String,
    /// Where, if known.
    pub location: Option<Location>,
    /// The `# check=` comment above the instruction this finding belongs to (its value up to
    /// the first space), for rules BuildKit lets such a comment skip or enable there.
    pub(crate) instruction_check: Option<String>,
}

impl Warning {
    /// The rule's one-line description (BuildKit's linter's words).
    pub fn description(&self) -> &'static str {
        crate::lint::description(&self.rule)
    }

    /// The rule's documentation page.
    pub fn url(&self) -> String {
        format!(
            "https://docs.docker.com/go/dockerfile/rule/{}/",
            crate::lint::kebab(&self.rule)
        )
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "line {}: {}: {}", l.line, self.rule, self.message),
            None => write!(f, "{}: {}", self.rule, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_pages_are_kebab_case() {
        let w = |rule: &str| Warning {
            rule: rule.into(),
            message: String::new(),
            location: None,
            instruction_check: None,
        };
        assert_eq!(
            w("NoEmptyContinuation").url(),
            "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/"
        );
        assert!(
            w("JSONArgsRecommended")
                .url()
                .contains("/json-args-recommended/")
        );
        assert!(w("FromAsCasing").url().contains("/from-as-casing/"));
        assert_eq!(
            w("StageNameCasing").description(),
            "Stage names should be lowercase"
        );
    }

    #[test]
    fn displays_one_line_with_position() {
        let e = FrontendError::at(
            "Dockerfile",
            Location::new(3, 1, 3),
            ErrorKind::UnknownInstruction {
                keyword: "FORM".into(),
                suggestion: Some("FROM".into()),
            },
        );
        assert_eq!(
            e.to_string(),
            "Dockerfile:3:1: unknown instruction: FORM (did you mean FROM?)"
        );
        let g = FrontendError::global("Dockerfile", ErrorKind::Empty);
        assert_eq!(g.to_string(), "Dockerfile: file with no instructions");
    }
}
