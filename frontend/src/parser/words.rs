//! Word splitting used by instruction arguments: BuildKit's `parseWords` (quotes kept for later
//! expansion), whitespace splitting, builder `--flags` and the JSON (exec) form.

/// The JSON form of an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonArgs {
    /// Not a JSON array: use the shell form.
    NotJson,
    /// A JSON array of strings.
    Array(Vec<String>),
    /// A JSON array with something other than strings.
    NotStrings,
}

/// Parses `rest` as a JSON array of strings, as the exec form of RUN/CMD/COPY… is written.
pub fn parse_json_array(rest: &str) -> JsonArgs {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return JsonArgs::NotJson;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(rest) {
        Err(_) => JsonArgs::NotJson,
        Ok(values) => {
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return JsonArgs::NotStrings,
                }
            }
            JsonArgs::Array(out)
        }
    }
}

/// Splits at runs of spaces and tabs (`[\t\v\f\r ]+`), as FROM, EXPOSE and the list form of
/// COPY do. Quotes are not special.
pub fn split_whitespace(rest: &str) -> Vec<String> {
    rest.split(is_ws)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits `rest` into words at unquoted whitespace, keeping quotes and escapes in the words
/// (they are removed later, when variables are expanded). Used by ARG, ENV and LABEL.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut buf = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !buf.is_empty() {
                words.push(std::mem::take(&mut buf));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !buf.is_empty() {
                    words.push(std::mem::take(&mut buf));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                buf.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            buf.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            buf.push(ch);
            ch = chars[pos];
        }
        buf.push(ch);
        pos += 1;
    }
    words
}

/// Splits leading `--flag[=value]` words off `rest`; returns the flags and the remainder.
/// Quotes inside flag words are removed; `--` alone ends the flags.
pub(crate) fn extract_flags(rest: &str, escape: char) -> (Vec<String>, String) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let rest_from = |pos: usize| chars[pos..].iter().collect::<String>();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut buf = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            if ch != '-' || pos + 1 == chars.len() || chars[pos + 1] != '-' {
                return (words, rest_from(pos));
            }
            phase = Phase::Word;
        }
        if at_end {
            if buf != "--" && (blank_ok || !buf.is_empty()) {
                words.push(buf);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if buf == "--" {
                    return (words, rest_from(pos));
                }
                if blank_ok || !buf.is_empty() {
                    words.push(std::mem::take(&mut buf));
                }
                buf.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos];
            }
            buf.push(ch);
            pos += 1;
            continue;
        }
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos];
        }
        buf.push(ch);
        pos += 1;
    }
    (words, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words(r#"A="x y" B=c\ d  C='$e'"#, '\\'),
            vec![r#"A="x y""#, r"B=c\ d", "C='$e'"]
        );
        assert_eq!(parse_words("", '\\'), Vec::<String>::new());
    }

    #[test]
    fn flags_split_off() {
        let (flags, rest) = extract_flags("--from=build --chown=\"1:1\" a b", '\\');
        assert_eq!(flags, vec!["--from=build", "--chown=1:1"]);
        assert_eq!(rest, "a b");
        let (flags, rest) = extract_flags("-- --notaflag x", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, " --notaflag x");
        let (flags, rest) = extract_flags("--link", '\\');
        assert_eq!(flags, vec!["--link"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            parse_json_array(r#"["a", "b c"]"#),
            JsonArgs::Array(vec!["a".into(), "b c".into()])
        );
        assert_eq!(parse_json_array("[1]"), JsonArgs::NotStrings);
        assert_eq!(parse_json_array("[not json"), JsonArgs::NotJson);
        assert_eq!(parse_json_array("echo"), JsonArgs::NotJson);
    }

    #[test]
    fn whitespace() {
        assert_eq!(split_whitespace("a \t b"), vec!["a", "b"]);
    }
}
