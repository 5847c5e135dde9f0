//! Heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `2<<EOF`) and their bodies.

use crate::shell::{EmptyEnv, Lexer};

/// One heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word (quotes removed).
    pub name: String,
    /// The file descriptor before `<<` (0 if none).
    pub fd: u32,
    /// Whether variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines.
    pub chomp: bool,
    /// The body, each line with its newline, without the terminator line.
    pub content: String,
}

/// Recognises a heredoc marker word: `^(\d*)<<(-?)\s*([^<]*)$` whose delimiter is one word.
/// Returns `Ok(None)` for words that are not heredoc markers.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, crate::shell::ShellError> {
    let digits = word.chars().take_while(char::is_ascii_digit).count();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let fd = if digits == 0 {
        0
    } else {
        word[..digits].parse().unwrap_or(0)
    };
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &EmptyEnv)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &EmptyEnv)?;
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw.len() == 1 && quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// The heredoc markers of an instruction line, in order.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, crate::shell::ShellError> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let words = lex.process_words(line, &EmptyEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

/// Strips leading tabs from every line (the `<<-` form).
pub fn chomp_heredoc_content(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let h = parse_heredoc("<<EOF").expect("ok").expect("heredoc");
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", true, false, 0)
        );
        let h = parse_heredoc("<<-'EOT'").expect("ok").expect("heredoc");
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOT", false, true));
        let h = parse_heredoc("3<<\"X\"").expect("ok").expect("heredoc");
        assert_eq!((h.name.as_str(), h.expand, h.fd), ("X", false, 3));
        assert!(parse_heredoc("<<").expect("ok").is_none());
        assert!(parse_heredoc("a<<b").expect("ok").is_none());
    }

    #[test]
    fn line_markers() {
        let docs = heredocs_from_line("RUN cat <<A > /a && cat <<-\"B\" > /b").expect("ok");
        let names: Vec<_> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["A", "B"]);
    }

    #[test]
    fn chomp() {
        assert_eq!(chomp_heredoc_content("\t\ta\n\tb\nc"), "a\nb\nc");
    }
}
