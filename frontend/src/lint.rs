//! Lint rules (BuildKit's `frontend/dockerfile/linter` names and messages) and the `# check=`
//! directive that skips rules, enables experimental ones or turns findings into an error.
//!
//! Rules are checked where the facts are (parser, instruction parsing, lowering) and pushed as
//! [`Warning`]s; [`CheckConfig::apply`] filters them once at the end, so every rule obeys the
//! directive the same way.

use std::collections::BTreeSet;

use crate::error::{ErrorKind, Location, Warning};
use crate::instructions::{Command, Dockerfile};
use crate::lower::go_quote;
use crate::platform::Platform;
use crate::reference::normalize_image_ref;
use crate::shell::{EnvGetter, EnvList, Lexer};

/// A lint rule: its BuildKit name, whether it only runs when enabled as experimental, and
/// whether a `# check=` comment right above the instruction it fires on applies to it (BuildKit
/// checks those rules with the instruction's merged linter; whole-file rules and the base-image
/// platform check use the file's only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub name: &'static str,
    pub experimental: bool,
    pub scoped: bool,
}

const fn rule(name: &'static str) -> Rule {
    Rule {
        name,
        experimental: false,
        scoped: true,
    }
}

const fn file_rule(name: &'static str) -> Rule {
    Rule {
        name,
        experimental: false,
        scoped: false,
    }
}

pub(crate) const STAGE_NAME_CASING: Rule = rule("StageNameCasing");
pub(crate) const FROM_AS_CASING: Rule = rule("FromAsCasing");
pub(crate) const NO_EMPTY_CONTINUATION: Rule = file_rule("NoEmptyContinuation");
pub(crate) const CONSISTENT_INSTRUCTION_CASING: Rule = file_rule("ConsistentInstructionCasing");
pub(crate) const DUPLICATE_STAGE_NAME: Rule = file_rule("DuplicateStageName");
pub(crate) const RESERVED_STAGE_NAME: Rule = file_rule("ReservedStageName");
pub(crate) const JSON_ARGS_RECOMMENDED: Rule = rule("JSONArgsRecommended");
pub(crate) const MAINTAINER_DEPRECATED: Rule = rule("MaintainerDeprecated");
pub(crate) const UNDEFINED_ARG_IN_FROM: Rule = rule("UndefinedArgInFrom");
pub(crate) const WORKDIR_RELATIVE_PATH: Rule = rule("WorkdirRelativePath");
pub(crate) const UNDEFINED_VAR: Rule = rule("UndefinedVar");
pub(crate) const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule("MultipleInstructionsDisallowed");
pub(crate) const LEGACY_KEY_VALUE_FORMAT: Rule = rule("LegacyKeyValueFormat");
pub(crate) const REDUNDANT_TARGET_PLATFORM: Rule = rule("RedundantTargetPlatform");
pub(crate) const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule("SecretsUsedInArgOrEnv");
pub(crate) const INVALID_DEFAULT_ARG_IN_FROM: Rule = file_rule("InvalidDefaultArgInFrom");
pub(crate) const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule =
    rule("FromPlatformFlagConstDisallowed");
pub(crate) const COPY_IGNORED_FILE: Rule = rule("CopyIgnoredFile");
pub(crate) const EXPOSE_PROTO_CASING: Rule = rule("ExposeProtoCasing");
pub(crate) const EXPOSE_INVALID_FORMAT: Rule = rule("ExposeInvalidFormat");
pub(crate) const INVALID_DEFINITION_DESCRIPTION: Rule = Rule {
    name: "InvalidDefinitionDescription",
    experimental: true,
    scoped: true,
};
pub(crate) const INVALID_BASE_IMAGE_PLATFORM: Rule = file_rule("InvalidBaseImagePlatform");

const ALL: &[Rule] = &[
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    INVALID_DEFAULT_ARG_IN_FROM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
    INVALID_DEFINITION_DESCRIPTION,
    INVALID_BASE_IMAGE_PLATFORM,
];

/// The rule's one-line description, as BuildKit's linter states it (`linter/ruleset.go`);
/// empty for a name that is no rule.
pub(crate) fn description(name: &str) -> &'static str {
    match name {
        "StageNameCasing" => "Stage names should be lowercase",
        "FromAsCasing" => "The 'as' keyword should match the case of the 'from' keyword",
        "NoEmptyContinuation" => "Empty continuation lines will become errors in a future release",
        "ConsistentInstructionCasing" => {
            "All commands within the Dockerfile should use the same casing (either upper or lower)"
        }
        "DuplicateStageName" => "Stage names should be unique",
        "ReservedStageName" => "Reserved words should not be used as stage names",
        "JSONArgsRecommended" => {
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
        }
        "MaintainerDeprecated" => {
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
        }
        "UndefinedArgInFrom" => "FROM command must use declared ARGs",
        "WorkdirRelativePath" => {
            "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
        }
        "UndefinedVar" => "Variables should be defined before their use",
        "MultipleInstructionsDisallowed" => {
            "Multiple instructions of the same type should not be used in the same stage"
        }
        "LegacyKeyValueFormat" => {
            "Legacy key/value format with whitespace separator should not be used"
        }
        "InvalidBaseImagePlatform" => "Base image platform does not match expected target platform",
        "RedundantTargetPlatform" => {
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
        }
        "SecretsUsedInArgOrEnv" => "Sensitive data should not be used in the ARG or ENV commands",
        "InvalidDefaultArgInFrom" => {
            "Default value for global ARG results in an empty or invalid base image name"
        }
        "FromPlatformFlagConstDisallowed" => "FROM --platform flag should not use a constant value",
        "CopyIgnoredFile" => "Attempting to Copy file that is excluded by .dockerignore",
        "InvalidDefinitionDescription" => {
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment."
        }
        "ExposeProtoCasing" => "Protocol in EXPOSE instruction should be lowercase",
        "ExposeInvalidFormat" => {
            "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
        }
        _ => "",
    }
}

/// `NoEmptyContinuation` → `no-empty-continuation`, the name of the rule's page.
pub(crate) fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            // A word starts at an upper-case letter after a lower-case one, or at the last
            // capital of an acronym followed by lower case (`JSONArgs` → `json-args`).
            let starts = prev.is_some_and(|p| p.is_ascii_lowercase())
                || (prev.is_some_and(|p| p.is_ascii_uppercase())
                    && next.is_some_and(|n| n.is_ascii_lowercase()));
            if starts {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A finding of `rule` at `location`.
pub(crate) fn warning(rule: Rule, message: String, location: Option<Location>) -> Warning {
    Warning {
        rule: rule.name.to_owned(),
        message,
        location,
        instruction_check: None,
    }
}

/// The value (up to the first space, so `# check=skip=X // why` works) of the first `check`
/// comment among an instruction's comments: BuildKit's `WithMergedConfigFromComments`.
pub(crate) fn comment_check(comments: &[String]) -> Option<String> {
    comments.iter().find_map(|c| {
        let (name, value) = crate::parser::split_directive(c.trim_start())?;
        name.eq_ignore_ascii_case("check")
            .then(|| value.split(' ').next().unwrap_or_default().to_owned())
    })
}

/// Ties the findings of one instruction to the `# check=` comment above it (`comments`): it
/// then skips or enables the instruction-scoped rules among them.
pub(crate) fn scope_to(warnings: &mut [Warning], comments: &[String]) {
    let Some(check) = comment_check(comments) else {
        return;
    };
    for w in warnings {
        if ALL.iter().any(|r| r.name == w.rule && r.scoped) {
            w.instruction_check = Some(check.clone());
        }
    }
}

/// The `# check=` directive: `skip=<rules>|all`, `experimental=<rules>|all`, `error=<bool>`,
/// separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckConfig {
    skip_all: bool,
    skip: BTreeSet<String>,
    experimental_all: bool,
    experimental: BTreeSet<String>,
    error: bool,
}

impl CheckConfig {
    /// Parses the directive's value (BuildKit's `ParseLintOptions`).
    pub(crate) fn parse(value: &str) -> Result<Self, ErrorKind> {
        let mut c = CheckConfig::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(c);
        }
        let list =
            |v: &str| -> BTreeSet<String> { v.split(',').map(|r| r.trim().to_owned()).collect() };
        for part in value.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(ErrorKind::BadDirective(format!(
                    "invalid check option {}",
                    go_quote(part)
                )));
            };
            let v = v.trim();
            match k.trim() {
                "skip" if v == "all" => c.skip_all = true,
                "skip" => c.skip = list(v),
                "experimental" if v == "all" => c.experimental_all = true,
                "experimental" => c.experimental = list(v),
                "error" => {
                    // Go's strconv.ParseBool.
                    c.error = match v {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => {
                            return Err(ErrorKind::BadDirective(format!(
                                "failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax",
                                go_quote(part),
                                go_quote(v)
                            )));
                        }
                    }
                }
                other => {
                    return Err(ErrorKind::BadDirective(format!(
                        "invalid check option {}",
                        go_quote(other)
                    )));
                }
            }
        }
        Ok(c)
    }

    /// This configuration with an instruction's `# check=` comment merged in: its skip and
    /// experimental lists (and `all`s) added, its `error` ignored (`WithMergedConfig`).
    fn merged(&self, other: &CheckConfig) -> CheckConfig {
        let mut c = self.clone();
        c.skip_all |= other.skip_all;
        c.skip.extend(other.skip.iter().cloned());
        c.experimental_all |= other.experimental_all;
        c.experimental.extend(other.experimental.iter().cloned());
        c
    }

    fn enabled(&self, name: &str) -> bool {
        let experimental = ALL.iter().any(|r| r.name == name && r.experimental);
        if experimental {
            self.experimental_all || self.experimental.contains(name)
        } else {
            !self.skip_all && !self.skip.contains(name)
        }
    }

    /// Keeps the findings of enabled rules (by this configuration merged with the `# check=`
    /// comment of the finding's instruction, if any; one that does not parse is ignored), in
    /// file order, without repeats; with `error=true` any finding becomes an error naming the
    /// rules.
    pub(crate) fn apply(&self, warnings: Vec<Warning>) -> Result<Vec<Warning>, ErrorKind> {
        let out = self.filter(warnings);
        match self.violation(&out) {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// With `error=true` and findings: the error naming their rules.
    pub(crate) fn violation(&self, found: &[Warning]) -> Option<ErrorKind> {
        if !self.error || found.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = found.iter().map(|w| w.rule.as_str()).collect();
        Some(ErrorKind::LintViolation {
            rules: rules.into_iter().collect::<Vec<_>>().join(", "),
            found: found.to_vec(),
        })
    }

    /// The findings of enabled rules, in file order, without repeats (see [`Self::apply`]).
    pub(crate) fn filter(&self, warnings: Vec<Warning>) -> Vec<Warning> {
        let mut seen = BTreeSet::new();
        let enabled = |w: &Warning| match w
            .instruction_check
            .as_deref()
            .and_then(|v| CheckConfig::parse(v).ok())
        {
            Some(local) => self.merged(&local).enabled(&w.rule),
            None => self.enabled(&w.rule),
        };
        let mut out: Vec<Warning> = warnings
            .into_iter()
            .filter(|w| enabled(w))
            .filter(|w| seen.insert((w.location, w.rule.clone(), w.message.clone())))
            .collect();
        out.sort_by_key(|w| w.location.map(|l| l.line).unwrap_or(0));
        out
    }
}

/// BuildKit's `validateNoSecretKey`: a `_`-separated part of the name is a secret-like word
/// and none is an allowed one (`public`, `file`, `version`).
pub(crate) fn looks_secret(key: &str) -> bool {
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: &[&str] = &["public", "file", "version"];
    let parts: Vec<String> = key.split('_').map(str::to_ascii_lowercase).collect();
    parts.iter().any(|p| DENY.contains(&p.as_str()))
        && !parts.iter().any(|p| ALLOW.contains(&p.as_str()))
}

/// CopyIgnoredFile's question: is context path `src` (as written in COPY/ADD) excluded by the
/// `.dockerignore` `patterns`? Like BuildKit, only answered when no pattern is an exclusion
/// (`!…`): a negated file inside an ignored directory cannot be judged statically.
pub(crate) fn ignored_by_dockerignore(patterns: &[String], src: &str) -> bool {
    let pats: Vec<String> = patterns
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty() && !p.starts_with('#'))
        .map(|p| {
            let c = crate::lower::clean_path(p);
            match c.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => rest.to_owned(),
                _ => c,
            }
        })
        .collect();
    if pats.is_empty() || pats.iter().any(|p| p.starts_with('!')) {
        return false;
    }
    let file = crate::lower::clean_path(src);
    if file == "." || file == "/" {
        return pats
            .iter()
            .any(|p| matches!(p.as_str(), "*" | "**" | "**/*"));
    }
    // The file or any of its parent directories.
    let chars: Vec<char> = file.chars().collect();
    let mut candidates = vec![chars.as_slice()];
    for (i, c) in chars.iter().enumerate() {
        if *c == '/' && i > 0 {
            candidates.push(&chars[..i]);
        }
    }
    pats.iter().any(|p| {
        let p: Vec<char> = p.chars().collect();
        candidates.iter().any(|c| glob(&p, c))
    })
}

/// Docker's pattern syntax: `*` and `?` within one path element, `**` across elements,
/// `[…]` classes, `\` escapes.
fn glob(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            if rest.first() == Some(&'/') && glob(&rest[1..], s) {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some('*') => {
            let mut i = 0;
            loop {
                if glob(&p[1..], &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == '/' {
                    return false;
                }
                i += 1;
            }
        }
        Some('?') => s.first().is_some_and(|c| *c != '/') && glob(&p[1..], &s[1..]),
        Some('[') => {
            let Some(&c) = s.first().filter(|c| **c != '/') else {
                return false;
            };
            let mut i = 1;
            let negate = matches!(p.get(i), Some('^' | '!'));
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            while let Some(&pc) = p.get(i) {
                if pc == ']' && !first {
                    return hit != negate && glob(&p[i + 1..], &s[1..]);
                }
                first = false;
                let lo = if pc == '\\' {
                    i += 1;
                    p.get(i).copied().unwrap_or('\\')
                } else {
                    pc
                };
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|h| *h != ']') {
                    let hi = p[i + 2];
                    hit |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    hit |= lo == c;
                    i += 1;
                }
            }
            false
        }
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// Levenshtein distance (unit costs).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// BuildKit's `suggest.Search`: the closest option under distance 3, none on an exact match.
pub(crate) fn suggest<'a>(val: &str, options: impl IntoIterator<Item = &'a str>) -> String {
    let mut best = String::new();
    let mut min = 3;
    for opt in options {
        if opt == val {
            return String::new();
        }
        let d = distance(val, opt);
        if d < min {
            best = opt.to_owned();
            min = d;
        }
    }
    best
}

/// ` (did you mean $X?)`-style suffix for a suggestion, empty without one.
pub(crate) fn did_you_mean(suggestion: &str, dollar: bool) -> String {
    match (suggestion.is_empty(), dollar) {
        (true, _) => String::new(),
        (false, true) => format!(" (did you mean ${suggestion}?)"),
        (false, false) => format!(" (did you mean {suggestion}?)"),
    }
}

/// Whole-file rules BuildKit runs before lowering (every stage, reachable or not):
/// ConsistentInstructionCasing, ReservedStageName, DuplicateStageName.
pub(crate) fn check_dockerfile(df: &Dockerfile) -> Vec<Warning> {
    let mut out = Vec::new();
    let self_consistent = |k: &str| k == k.to_ascii_lowercase() || k == k.to_ascii_uppercase();
    let keywords = || {
        df.stages.iter().flat_map(|st| {
            std::iter::once((st.keyword(), st.location))
                .chain(st.commands.iter().map(|c| (c.keyword.as_str(), c.location)))
        })
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for (k, _) in keywords() {
        if self_consistent(k) {
            if k == k.to_ascii_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for (k, loc) in keywords() {
        let casing = if majority_lower && k != k.to_ascii_lowercase() {
            "lowercase"
        } else if !majority_lower && k != k.to_ascii_uppercase() {
            "uppercase"
        } else {
            continue;
        };
        out.push(warning(
            CONSISTENT_INSTRUCTION_CASING,
            format!("Command '{k}' should match the case of the command majority ({casing})"),
            Some(loc),
        ));
    }
    let mut names = BTreeSet::new();
    for st in &df.stages {
        let Some(name) = &st.from.name else { continue };
        if matches!(name.as_str(), "context" | "scratch") {
            out.push(warning(
                RESERVED_STAGE_NAME,
                format!("Stage name should not use the same name as reserved stage {name:?}"),
                Some(st.location),
            ));
        }
        if !names.insert(name.clone()) {
            out.push(warning(
                DUPLICATE_STAGE_NAME,
                format!("Duplicate stage name {name:?}, stage names should be unique"),
                Some(st.location),
            ));
        }
    }
    out
}

/// The FROM rules BuildKit checks on every stage: UndefinedArgInFrom, RedundantTargetPlatform,
/// FromPlatformFlagConstDisallowed (with `global`, the global args of this build) and
/// InvalidDefaultArgInFrom (with `defaults_only`, the global args without any `--build-arg`).
pub(crate) fn check_froms(
    df: &Dockerfile,
    lex: &Lexer,
    global: &EnvList,
    defaults_only: Option<&EnvList>,
) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut keys: Vec<&str> = global.iter().map(|(k, _)| k).collect();
    for ins in &df.meta_args {
        if let Command::Arg(pairs) = &ins.command {
            keys.extend(pairs.iter().map(|p| p.key.as_str()));
        }
    }
    for st in &df.stages {
        let before = out.len();
        check_from(st, lex, global, &keys, &mut out);
        if let Some(found) = out.get_mut(before..) {
            scope_to(found, &st.comments);
        }
    }
    if let Some(defaults) = defaults_only {
        for st in &df.stages {
            let Ok(base) = lex.process_word(&st.from.base, defaults) else {
                break;
            };
            if normalize_image_ref(&base).is_err() {
                out.push(warning(
                    INVALID_DEFAULT_ARG_IN_FROM,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        st.from.base
                    ),
                    Some(st.location),
                ));
            }
        }
    }
    out
}

/// The `# check=` directive of `df`, if any.
/// The file's lint configuration: the `BUILDKIT_DOCKERFILE_CHECK` build argument when given
/// (it replaces the directive, which is then not read), else the `# check=` directive.
pub(crate) fn check_config(
    text: &str,
    build_arg: Option<&str>,
) -> Result<CheckConfig, (Option<Location>, ErrorKind)> {
    if let Some(v) = build_arg {
        return CheckConfig::parse(v).map_err(|e| {
            (
                None,
                ErrorKind::BadDirective(format!("failed to parse BUILDKIT_DOCKERFILE_CHECK: {e}")),
            )
        });
    }
    match check_directive(text) {
        None => Ok(CheckConfig::default()),
        Some((v, line)) => CheckConfig::parse(&v).map_err(|e| {
            (
                Some(Location::new(line, 1, line)),
                ErrorKind::BadDirective(format!("failed to parse check options: {e}")),
            )
        }),
    }
}

/// BuildKit's `ParseDirective("check", …)`: the `# check=` directive among the leading
/// directives, after a byte-order mark and a `#!` line (which the instruction parser does not
/// skip); its value up to the first space, and its 1-based line.
fn check_directive(text: &str) -> Option<(String, usize)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .peekable();
    let mut offset = 0;
    if lines.peek().is_some_and(|l| l.starts_with("#!")) {
        lines.next();
        offset = 1;
    }
    let mut parser = crate::parser::DirectiveParser::default();
    for (i, line) in lines.enumerate() {
        // A repeated directive ends the search (the instruction parser reports it).
        let Ok(found) = parser.parse_line(line) else {
            return None;
        };
        match found {
            Some(d) if d.name == "check" => {
                let v = d.value.split(' ').next().unwrap_or_default().to_owned();
                return Some((v, i + 1 + offset));
            }
            Some(_) => {}
            None => return None,
        }
    }
    None
}

/// InvalidBaseImagePlatform: the base image's config names another OS or architecture than
/// the stage's platform (`validateBaseImagePlatform`; variants are not compared). Both are
/// shown as containerd's `FormatAll` of the normalized platform.
pub(crate) fn base_image_platform(
    name: &str,
    expected: &Platform,
    image: &crate::config::ImageConfig,
    at: Location,
) -> Option<Warning> {
    if expected.os == image.os && expected.architecture == image.architecture {
        return None;
    }
    let expected = format_platform(
        &expected.os,
        &expected.architecture,
        expected.variant.as_deref().unwrap_or_default(),
        "",
        &[],
    );
    let actual = format_platform(
        &image.os,
        &image.architecture,
        &image.variant,
        &image.os_version,
        &image.os_features,
    );
    Some(warning(
        INVALID_BASE_IMAGE_PLATFORM,
        format!(
            "Base image {name} was pulled with platform {}, expected {} for current build",
            go_quote(&actual),
            go_quote(&expected)
        ),
        Some(at),
    ))
}

/// containerd's `platforms.FormatAll(platforms.Normalize(p))`: `os[(version+features)]/arch
/// [/variant]`; an empty OS is the frontend's own.
fn format_platform(
    os: &str,
    arch: &str,
    variant: &str,
    os_version: &str,
    os_features: &[String],
) -> String {
    let os = match os.to_ascii_lowercase().as_str() {
        "" => Platform::host().os,
        "macos" => "darwin".to_owned(),
        o => o.to_owned(),
    };
    let (arch, variant) = normalize_arch(arch, variant);
    let encode = |v: &str| {
        v.replace('%', "%25")
            .replace('+', "%2B")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('/', "%2F")
    };
    let mut features: Vec<&str> = os_features
        .iter()
        .map(String::as_str)
        .filter(|f| !f.is_empty())
        .collect();
    features.sort_unstable();
    features.dedup();
    let features: Vec<String> = features.into_iter().map(encode).collect();
    let mut first = os;
    let version = encode(os_version);
    if !version.is_empty() || !features.is_empty() {
        first.push('(');
        first.push_str(&version);
        if !features.is_empty() {
            first.push('+');
            first.push_str(&features.join("+"));
        }
        first.push(')');
    }
    [first, arch, variant]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// UndefinedArgInFrom, RedundantTargetPlatform and FromPlatformFlagConstDisallowed of one
/// stage.
fn check_from(
    st: &crate::instructions::Stage,
    lex: &Lexer,
    global: &EnvList,
    keys: &[&str],
    out: &mut Vec<Warning>,
) {
    let undefined = |unmatched: &BTreeSet<String>, loc: Location, out: &mut Vec<Warning>| {
        for arg in unmatched {
            if keys.contains(&arg.as_str()) {
                continue;
            }
            let hint = did_you_mean(&suggest(arg, keys.iter().copied()), false);
            out.push(warning(
                UNDEFINED_ARG_IN_FROM,
                format!("FROM argument '{arg}' is not declared{hint}"),
                Some(loc),
            ));
        }
    };
    if let Ok(m) = lex.process(&st.from.base, global) {
        undefined(&m.unmatched, st.location, out);
    }
    let Some(p) = &st.from.platform else { return };
    let Ok(m) = lex.process(p, global) else {
        return;
    };
    undefined(&m.unmatched, st.location, out);
    if m.matched.len() == 1
        && m.unmatched.is_empty()
        && m.matched.contains("TARGETPLATFORM")
        && global.get("TARGETPLATFORM") == Some(m.result.as_str())
    {
        out.push(warning(
            REDUNDANT_TARGET_PLATFORM,
            format!(
                "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
            ),
            Some(st.location),
        ));
    }
    if m.matched.is_empty()
        && m.unmatched.is_empty()
        && let Some(plat) = Platform::parse(&m.result)
    {
        let name = st.from.name.as_deref().unwrap_or_default();
        if !name.contains(&plat.os) && !name.contains(&plat.architecture) {
            out.push(warning(
                FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                format!(
                    "FROM --platform flag should not use constant value {:?}",
                    m.result
                ),
                Some(st.location),
            ));
        }
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v) = match (arch.as_str(), variant.as_str()) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", "9" | "9.0" | "v9.0") => ("arm64", "v9"),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", v @ ("5" | "6" | "8")) => return ("arm".to_owned(), format!("v{v}")),
        (a, v) => (a, v),
    };
    (a.to_owned(), v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_directive() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true")
            .expect("parses");
        assert!(!c.enabled("JSONArgsRecommended"));
        assert!(!c.enabled("StageNameCasing"));
        assert!(c.enabled("UndefinedVar"));
        assert!(!c.enabled("InvalidDefinitionDescription"));
        let e = c
            .apply(vec![warning(UNDEFINED_VAR, "x".into(), None)])
            .expect_err("error=true");
        assert_eq!(
            e.to_string(),
            "lint violation found for rules: UndefinedVar"
        );
        let c = CheckConfig::parse("experimental=all;skip=all").expect("parses");
        assert!(c.enabled("InvalidDefinitionDescription"));
        assert!(!c.enabled("UndefinedVar"));
        assert!(CheckConfig::parse("nope").is_err());
        assert!(CheckConfig::parse("error=maybe").is_err());
    }

    #[test]
    fn check_option_errors_are_buildkits() {
        let msg = |v: &str| CheckConfig::parse(v).expect_err(v).to_string();
        assert_eq!(msg("nope"), r#"invalid check option "nope""#);
        assert_eq!(msg("skip=all; bogus=1"), r#"invalid check option "bogus""#);
        assert_eq!(
            msg("error=tRuE"),
            r#"failed to parse check option "error=tRuE": strconv.ParseBool: parsing "tRuE": invalid syntax"#
        );
        assert!(CheckConfig::parse("error=T").expect("Go's true").error);
    }

    #[test]
    fn check_directive_is_read_like_parse_directive() {
        let at = |t: &str| super::check_directive(t);
        assert_eq!(
            at("# check=skip=A,B error=true\nFROM x\n"),
            Some(("skip=A,B".to_owned(), 1))
        );
        // After a `#!` line and other directives; not after a comment or instruction.
        assert_eq!(
            at("#!/usr/bin/env buildctl\n# syntax=x\n#check = error=true\nFROM x\n"),
            Some(("error=true".to_owned(), 3))
        );
        assert_eq!(at("# a comment\n# check=error=true\nFROM x\n"), None);
        assert_eq!(
            at("# check=error=true\n# check=skip=all\n"),
            Some(("error=true".to_owned(), 1))
        );
        assert_eq!(at("# escape=`\n# escape=`\n# check=error=true\n"), None);
        // The build argument replaces the directive, which is then not even parsed.
        assert!(
            check_config("# check=bogus\n", Some("error=true"))
                .expect("ok")
                .error
        );
        let e = check_config("# check=bogus\n", None).expect_err("bad").1;
        assert_eq!(
            e.to_string(),
            r#"failed to parse check options: invalid check option "bogus""#
        );
    }

    #[test]
    fn instruction_check_comments() {
        let c = |v: &[&str]| comment_check(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(c(&["check=skip=A // why"]), Some("skip=A".into()));
        assert_eq!(
            c(&["about x", "CHECK = skip=all", "check=skip=B"]),
            Some("skip=all".into())
        );
        assert_eq!(c(&["checks are fun", "syntax=x"]), None);
        let scoped = |rule: Rule, check: &str| {
            let mut w = vec![warning(rule, "m".into(), None)];
            scope_to(&mut w, &[check.to_owned()]);
            w
        };
        let file = CheckConfig::parse("skip=StageNameCasing;error=false").expect("parses");
        // Skips add to the file's; experimental rules can be enabled; whole-file rules and a
        // comment that does not parse are unaffected; `error` is not taken from a comment.
        assert!(
            file.apply(scoped(JSON_ARGS_RECOMMENDED, "check=skip=all"))
                .expect("ok")
                .is_empty()
        );
        assert_eq!(
            file.apply(scoped(
                INVALID_DEFINITION_DESCRIPTION,
                "check=experimental=all"
            ))
            .expect("ok")
            .len(),
            1
        );
        assert_eq!(
            file.apply(scoped(DUPLICATE_STAGE_NAME, "check=skip=all"))
                .expect("ok")
                .len(),
            1
        );
        assert_eq!(
            file.apply(scoped(UNDEFINED_VAR, "check=skip=UndefinedVar;bogus"))
                .expect("ok")
                .len(),
            1
        );
        assert_eq!(
            file.apply(scoped(UNDEFINED_VAR, "check=error=true"))
                .expect("ok")
                .len(),
            1
        );
    }

    #[test]
    fn platforms_are_formatted_like_containerd() {
        let f = |os: &str, arch: &str, variant: &str, v: &str, feats: &[&str]| {
            let feats: Vec<String> = feats.iter().map(|s| (*s).to_owned()).collect();
            format_platform(os, arch, variant, v, &feats)
        };
        assert_eq!(f("linux", "amd64", "", "", &[]), "linux/amd64");
        assert_eq!(f("Linux", "x86_64", "v1", "", &[]), "linux/amd64");
        assert_eq!(f("linux", "aarch64", "v8", "", &[]), "linux/arm64");
        assert_eq!(f("linux", "arm", "", "", &[]), "linux/arm/v7");
        assert_eq!(f("linux", "arm", "6", "", &[]), "linux/arm/v6");
        assert_eq!(f("linux", "armhf", "", "", &[]), "linux/arm/v7");
        assert_eq!(f("macos", "arm64", "", "", &[]), "darwin/arm64");
        assert_eq!(f("", "", "", "", &[]), Platform::host().os);
        assert_eq!(
            f(
                "windows",
                "amd64",
                "",
                "10.0(1)",
                &["win32k", "a+b", "win32k", ""]
            ),
            "windows(10.0%281%29+a%2Bb+win32k)/amd64"
        );
        assert_eq!(f("windows", "amd64", "", "", &["x"]), "windows(+x)/amd64");
    }

    #[test]
    fn secrets() {
        assert!(looks_secret("GITHUB_TOKEN"));
        assert!(looks_secret("api_key"));
        assert!(looks_secret("AUTH"));
        assert!(!looks_secret("PUBLIC_KEY"));
        assert!(!looks_secret("TOKENIZER"));
        assert!(!looks_secret("KEY_FILE"));
    }

    #[test]
    fn dockerignore_matching() {
        let pats = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(ignored_by_dockerignore(&pats(&["*.log"]), "app.log"));
        assert!(!ignored_by_dockerignore(&pats(&["*.log"]), "dir/app.log"));
        assert!(ignored_by_dockerignore(
            &pats(&["**/*.log"]),
            "dir/sub/app.log"
        ));
        assert!(ignored_by_dockerignore(
            &pats(&["secret/"]),
            "secret/key.pem"
        ));
        assert!(ignored_by_dockerignore(&pats(&["/build"]), "./build/out"));
        assert!(ignored_by_dockerignore(
            &pats(&["data/[a-c]?.csv"]),
            "data/b1.csv"
        ));
        assert!(!ignored_by_dockerignore(
            &pats(&["data/[!a-c]*"]),
            "data/b1.csv"
        ));
        assert!(!ignored_by_dockerignore(
            &pats(&["*.log", "!keep.log"]),
            "a.log"
        ));
        assert!(!ignored_by_dockerignore(&pats(&["*.log"]), "."));
        assert!(ignored_by_dockerignore(&pats(&["*"]), "."));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("VERSON", ["VERSION", "PATH"]), "VERSION");
        assert_eq!(suggest("PATH", ["PATH"]), "");
        assert_eq!(suggest("ABCDEFG", ["PATH"]), "");
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
