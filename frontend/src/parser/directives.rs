//! Parser directives (`# syntax=`, `# escape=`, `# check=`) at the top of the file.

use std::collections::BTreeSet;

/// A parser directive found at the top of the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-case name: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// The 1-based line.
    pub line: usize,
}

/// Recognises directives until the first line that is not one.
#[derive(Debug, Default)]
pub(crate) struct DirectiveParser {
    line: usize,
    done: bool,
    seen: BTreeSet<String>,
}

impl DirectiveParser {
    /// Looks at the next line (newline already removed). `Ok(None)` once directives are over.
    pub(crate) fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start();
        let Some((name, value)) = split_directive(rest) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if !self.seen.insert(name.clone()) {
            return Err(format!("only one `{name}` parser directive can be used"));
        }
        Ok(Some(Directive {
            name,
            value: value.to_owned(),
            line: self.line,
        }))
    }
}

/// `name = value` with name `[a-zA-Z][a-zA-Z0-9]*` and a non-empty value.
pub(crate) fn split_directive(s: &str) -> Option<(&str, &str)> {
    let first = s.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(s.len(), |(i, _)| i);
    let name = &s[..name_end];
    let rest = s[name_end..].trim_start();
    let value = rest.strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_stop_at_first_other_line() {
        let mut p = DirectiveParser::default();
        let d = p.parse_line("# escape=`").expect("ok").expect("directive");
        assert_eq!(
            (d.name.as_str(), d.value.as_str(), d.line),
            ("escape", "`", 1)
        );
        assert!(
            p.parse_line("# syntax = docker/dockerfile:1 ")
                .expect("ok")
                .is_some()
        );
        assert!(p.parse_line("# a comment").expect("ok").is_none());
        assert!(p.parse_line("# check=skip=all").expect("ok").is_none());
    }

    #[test]
    fn duplicate_directive_is_an_error() {
        let mut p = DirectiveParser::default();
        p.parse_line("#escape=\\").expect("ok");
        assert!(p.parse_line("#escape=`").is_err());
    }
}
