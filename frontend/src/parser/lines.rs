//! Line joining: turns the file into one [`Node`] per instruction.

use crate::error::{ErrorKind, Location, Warning};
use crate::lint;
use crate::parser::directives::{Directive, DirectiveParser};
use crate::parser::heredoc::{Heredoc, heredocs_from_line};
use crate::parser::words::{JsonArgs, extract_flags, parse_json_array};

/// One instruction as written: keyword, flags, the rest of the line, heredoc bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, …).
    pub keyword: String,
    /// `--name[=value]` flags before the arguments, quotes removed.
    pub flags: Vec<String>,
    /// The arguments after the flags, trimmed.
    pub rest: String,
    /// The whole instruction after joining continuation lines, trimmed.
    pub original: String,
    /// Heredoc bodies, in the order their markers appear.
    pub heredocs: Vec<Heredoc>,
    /// Where it is.
    pub location: Location,
    /// Comment lines directly above it.
    pub comments: Vec<String>,
}

/// The first layer's output for a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFile {
    /// Parser directives.
    pub directives: Vec<Directive>,
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// Instructions in file order.
    pub nodes: Vec<Node>,
    /// Lint findings (empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// A first-layer error with its position.
pub type LineError = (Location, ErrorKind);

struct Directives {
    parser: DirectiveParser,
    escape: char,
    found: Vec<Directive>,
}

impl Directives {
    fn process_line(&mut self, raw: &str, strip_left: bool) -> Result<(String, bool), String> {
        let mut token = raw.trim_end_matches(['\r', '\n']);
        if strip_left {
            token = token.trim_start();
        }
        let mut ok = false;
        if let Some(d) = self.parser.parse_line(token)? {
            if d.name == "escape" {
                match d.value.as_str() {
                    "`" => self.escape = '`',
                    "\\" => self.escape = '\\',
                    v => {
                        return Err(format!("invalid escape token '{v}' does not match ` or \\"));
                    }
                }
            }
            self.found.push(d);
            ok = true;
        }
        let out = if is_comment(token) { "" } else { token };
        Ok((out.to_owned(), ok))
    }

    /// Removes a trailing escape (plus spaces/tabs after it); `true` if the line ends there.
    fn trim_continuation(&self, line: &str) -> (String, bool) {
        let t = line.trim_end_matches([' ', '\t']);
        if let Some(before) = t.strip_suffix(self.escape)
            && (before.is_empty() || !before.ends_with(self.escape))
        {
            return (before.to_owned(), false);
        }
        (line.to_owned(), true)
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_empty_continuation_line(line: &str) -> bool {
    line.trim_end_matches(['\r', '\n']).trim_start().is_empty()
}

/// Splits a joined line into keyword, flags and arguments (also used for `ONBUILD`'s trigger).
pub fn node_from_line(line: &str, escape: char) -> (String, Vec<String>, String) {
    let line = line.trim();
    let (keyword, rest) = match line.find(['\t', '\u{b}', '\u{c}', '\r', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    };
    let rest = rest.trim_start_matches(['\t', '\u{b}', '\u{c}', '\r', ' ']);
    if rest.is_empty() {
        return (keyword.to_owned(), Vec::new(), String::new());
    }
    let (flags, args) = extract_flags(rest, escape);
    (keyword.to_owned(), flags, args.trim().to_owned())
}

fn can_contain_heredoc(keyword: &str, rest: &str, escape: char) -> bool {
    let mut keyword = keyword.to_ascii_lowercase();
    let mut rest = rest.to_owned();
    if keyword == "onbuild" {
        let (k, _, r) = node_from_line(&rest, escape);
        keyword = k.to_ascii_lowercase();
        rest = r;
    }
    matches!(keyword.as_str(), "add" | "copy" | "run")
        && !matches!(parse_json_array(&rest), JsonArgs::Array(_))
}

/// Parses a whole Dockerfile into directives and instruction nodes.
pub fn parse_lines(text: &str) -> Result<ParsedFile, LineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut d = Directives {
        parser: DirectiveParser::default(),
        escape: '\\',
        found: Vec::new(),
    };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut current = 0usize;
    let mut i = 0usize;
    let at = |line: usize| Location::new(line.max(1), 1, line.max(1));
    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        if is_comment(raw) {
            let c = raw.trim_start()[1..].trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_owned());
            }
        }
        let (bytes, directive) = d
            .process_line(raw, true)
            .map_err(|e| (at(current + 1), ErrorKind::BadDirective(e)))?;
        if directive {
            comments.pop();
        }
        current += 1;
        let start = current;
        let column = raw.chars().take_while(|c| c.is_whitespace()).count() + 1;
        let (first, mut eol) = d.trim_continuation(&bytes);
        if eol && first.is_empty() {
            continue;
        }
        let mut buf = first;
        let mut has_empty = false;
        while !eol && i < lines.len() {
            let raw = lines[i];
            i += 1;
            let (bytes, _) = d
                .process_line(raw, false)
                .map_err(|e| (at(current + 1), ErrorKind::BadDirective(e)))?;
            current += 1;
            if is_comment(raw) {
                continue;
            }
            if is_empty_continuation_line(&bytes) {
                has_empty = true;
                continue;
            }
            let (b, e) = d.trim_continuation(&bytes);
            eol = e;
            buf.push_str(&b);
        }
        let location = Location::new(start, column, current);
        if has_empty {
            // BuildKit reports it on the instruction's last line.
            warnings.push(lint::warning(
                lint::NO_EMPTY_CONTINUATION,
                "Empty continuation line".into(),
                Some(Location::new(current, 1, current)),
            ));
        }
        let (keyword, flags, rest) = node_from_line(&buf, d.escape);
        let mut heredocs = Vec::new();
        if can_contain_heredoc(&keyword, &rest, d.escape) && buf.contains("<<") {
            let docs = heredocs_from_line(&buf).map_err(|e| (location, ErrorKind::Shell(e)))?;
            for mut doc in docs {
                let mut terminated = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    current += 1;
                    let mut candidate = raw.trim_end_matches(['\r', '\n']);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err((
                        Location::new(start, column, current),
                        ErrorKind::UnterminatedHeredoc(doc.name),
                    ));
                }
                heredocs.push(doc);
            }
        }
        nodes.push(Node {
            keyword,
            flags,
            rest,
            original: buf.trim().to_owned(),
            heredocs,
            location: Location::new(start, column, current),
            comments: std::mem::take(&mut comments),
        });
    }
    if nodes.is_empty() {
        return Err((at(current), ErrorKind::Empty));
    }
    Ok(ParsedFile {
        directives: d.found,
        escape: d.escape,
        nodes,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_continuations_skipping_comments_and_blank_lines() {
        let f =
            parse_lines("FROM a\nRUN echo a \\\n  # inner comment\n\n  b\nCMD x\n").expect("ok");
        assert_eq!(f.nodes.len(), 3);
        assert_eq!(f.nodes[1].original, "RUN echo a   b");
        assert_eq!(f.nodes[1].location, Location::new(2, 1, 5));
        assert_eq!(f.nodes[2].location.line, 6);
        assert_eq!(f.warnings.len(), 1);
    }

    #[test]
    fn escape_directive_changes_continuation() {
        let f = parse_lines("# escape=`\nFROM a\nRUN dir c:\\ `\n  x\n").expect("ok");
        assert_eq!(f.escape, '`');
        assert_eq!(f.nodes[1].original, "RUN dir c:\\   x");
    }

    #[test]
    fn heredocs_are_collected() {
        let f = parse_lines("FROM a\nRUN <<EOF\necho hi\nEOF\nCOPY <<-X /f\n\tbody\n\tX\n")
            .expect("ok");
        assert_eq!(f.nodes[1].heredocs[0].content, "echo hi\n");
        assert_eq!(f.nodes[1].location, Location::new(2, 1, 4));
        assert_eq!(f.nodes[2].heredocs[0].content, "\tbody\n");
        let e = parse_lines("FROM a\nRUN <<EOF\necho\n").expect_err("unterminated");
        assert_eq!(e.0.line, 2);
    }

    #[test]
    fn flags_and_column() {
        let f = parse_lines("FROM a\n  COPY --from=b x /y\n").expect("ok");
        let n = &f.nodes[1];
        assert_eq!(n.keyword, "COPY");
        assert_eq!(n.flags, vec!["--from=b"]);
        assert_eq!(n.rest, "x /y");
        assert_eq!(n.location.column, 3);
    }

    #[test]
    fn comments_attach() {
        let f = parse_lines("# syntax=x\n# hello\nFROM a\n").expect("ok");
        assert_eq!(f.directives.len(), 1);
        assert_eq!(f.nodes[0].comments, vec!["hello"]);
    }
}
