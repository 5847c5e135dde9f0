//! Lint rules (BuildKit's `frontend/dockerfile/linter` names and messages) and the `# check=`
//! directive that skips rules, enables experimental ones or turns findings into an error.
//!
//! Rules are checked where the facts are (parser, instruction parsing, lowering) and pushed as
//! [`Warning`]s; [`CheckConfig::apply`] filters them once at the end, so every rule obeys the
//! directive the same way.

use std::collections::BTreeSet;

use crate::error::{ErrorKind, Location, Warning};
use crate::instructions::{Command, Dockerfile};
use crate::platform::Platform;
use crate::reference::normalize_image_ref;
use crate::shell::{EnvGetter, EnvList, Lexer};

/// A lint rule: its BuildKit name and whether it only runs when enabled as experimental.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub name: &'static str,
    pub experimental: bool,
}

const fn rule(name: &'static str) -> Rule {
    Rule {
        name,
        experimental: false,
    }
}

pub(crate) const STAGE_NAME_CASING: Rule = rule("StageNameCasing");
pub(crate) const FROM_AS_CASING: Rule = rule("FromAsCasing");
pub(crate) const NO_EMPTY_CONTINUATION: Rule = rule("NoEmptyContinuation");
pub(crate) const CONSISTENT_INSTRUCTION_CASING: Rule = rule("ConsistentInstructionCasing");
pub(crate) const DUPLICATE_STAGE_NAME: Rule = rule("DuplicateStageName");
pub(crate) const RESERVED_STAGE_NAME: Rule = rule("ReservedStageName");
pub(crate) const JSON_ARGS_RECOMMENDED: Rule = rule("JSONArgsRecommended");
pub(crate) const MAINTAINER_DEPRECATED: Rule = rule("MaintainerDeprecated");
pub(crate) const UNDEFINED_ARG_IN_FROM: Rule = rule("UndefinedArgInFrom");
pub(crate) const WORKDIR_RELATIVE_PATH: Rule = rule("WorkdirRelativePath");
pub(crate) const UNDEFINED_VAR: Rule = rule("UndefinedVar");
pub(crate) const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule("MultipleInstructionsDisallowed");
pub(crate) const LEGACY_KEY_VALUE_FORMAT: Rule = rule("LegacyKeyValueFormat");
pub(crate) const REDUNDANT_TARGET_PLATFORM: Rule = rule("RedundantTargetPlatform");
pub(crate) const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule("SecretsUsedInArgOrEnv");
pub(crate) const INVALID_DEFAULT_ARG_IN_FROM: Rule = rule("InvalidDefaultArgInFrom");
pub(crate) const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule =
    rule("FromPlatformFlagConstDisallowed");
pub(crate) const COPY_IGNORED_FILE: Rule = rule("CopyIgnoredFile");
pub(crate) const EXPOSE_PROTO_CASING: Rule = rule("ExposeProtoCasing");
pub(crate) const EXPOSE_INVALID_FORMAT: Rule = rule("ExposeInvalidFormat");
pub(crate) const INVALID_DEFINITION_DESCRIPTION: Rule = Rule {
    name: "InvalidDefinitionDescription",
    experimental: true,
};

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
];

/// A finding of `rule` at `location`.
pub(crate) fn warning(rule: Rule, message: String, location: Option<Location>) -> Warning {
    Warning {
        rule: rule.name.to_owned(),
        message,
        location,
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
                    "invalid check option {part:?}: expected skip=, experimental= or error="
                )));
            };
            let v = v.trim();
            match k.trim() {
                "skip" if v == "all" => c.skip_all = true,
                "skip" => c.skip = list(v),
                "experimental" if v == "all" => c.experimental_all = true,
                "experimental" => c.experimental = list(v),
                "error" => {
                    c.error = match v.to_ascii_lowercase().as_str() {
                        "1" | "t" | "true" => true,
                        "0" | "f" | "false" => false,
                        _ => {
                            return Err(ErrorKind::BadDirective(format!(
                                "failed to parse check option {part:?}: expected true or false"
                            )));
                        }
                    }
                }
                other => {
                    return Err(ErrorKind::BadDirective(format!(
                        "invalid check option {other:?}: expected skip, experimental or error"
                    )));
                }
            }
        }
        Ok(c)
    }

    fn enabled(&self, name: &str) -> bool {
        let experimental = ALL.iter().any(|r| r.name == name && r.experimental);
        if experimental {
            self.experimental_all || self.experimental.contains(name)
        } else {
            !self.skip_all && !self.skip.contains(name)
        }
    }

    /// Keeps the findings of enabled rules, in file order, without repeats; with `error=true`
    /// any finding becomes an error naming the rules.
    pub(crate) fn apply(&self, warnings: Vec<Warning>) -> Result<Vec<Warning>, ErrorKind> {
        let mut seen = BTreeSet::new();
        let mut out: Vec<Warning> = warnings
            .into_iter()
            .filter(|w| self.enabled(&w.rule))
            .filter(|w| seen.insert((w.location, w.rule.clone(), w.message.clone())))
            .collect();
        out.sort_by_key(|w| w.location.map(|l| l.line).unwrap_or(0));
        if self.error && !out.is_empty() {
            let rules: BTreeSet<&str> = out.iter().map(|w| w.rule.as_str()).collect();
            return Err(ErrorKind::LintViolation(
                rules.into_iter().collect::<Vec<_>>().join(", "),
            ));
        }
        Ok(out)
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
    for st in &df.stages {
        if let Ok(m) = lex.process(&st.from.base, global) {
            undefined(&m.unmatched, st.location, &mut out);
        }
        let Some(p) = &st.from.platform else { continue };
        let Ok(m) = lex.process(p, global) else {
            continue;
        };
        undefined(&m.unmatched, st.location, &mut out);
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
pub(crate) fn check_config(df: &Dockerfile) -> Result<CheckConfig, (Location, ErrorKind)> {
    match df.directives.iter().find(|d| d.name == "check") {
        None => Ok(CheckConfig::default()),
        Some(d) => {
            // BuildKit reads the value up to the first space.
            let v = d.value.split(' ').next().unwrap_or_default();
            CheckConfig::parse(v).map_err(|e| (Location::new(d.line, 1, d.line), e))
        }
    }
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
