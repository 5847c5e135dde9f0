//! The shell-word lexer: quote removal, escapes and variable expansion as Dockerfile words use them.
//!
//! This follows BuildKit's `frontend/dockerfile/shell/lex.go` in behaviour: `$V`, `${V}`,
//! `${V:-x}`, `${V-x}`, `${V:+x}`, `${V+x}`, `${V:?msg}`, `${V?msg}`, `${V#pat}`, `${V##pat}`,
//! `${V%pat}`, `${V%%pat}`, `${V/pat/rep}`, `${V//pat/rep}`; single quotes are literal, double
//! quotes expand variables, the escape character (`\` or `` ` `` after `# escape=`) escapes one
//! character.

use std::collections::BTreeSet;
use std::fmt;

/// Where variable values come from.
pub trait EnvGetter {
    /// The value of `key`, if it is set.
    fn get(&self, key: &str) -> Option<&str>;
}

/// An environment with no variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyEnv;

impl EnvGetter for EmptyEnv {
    fn get(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// An ordered list of variables; setting an existing key moves it to the end (as BuildKit's
/// `EnvList` does, which decides the order of `ExecOp` env).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvList {
    entries: Vec<(String, String)>,
}

impl EnvList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, moving it to the end.
    pub fn set(&mut self, key: &str, value: &str) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value.to_owned()));
    }

    /// Sets `key` only if it is not set yet.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.set(key, value);
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `K=V` strings in order.
    pub fn to_vec(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl EnvGetter for EnvList {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Two environments: the first wins.
pub struct Layered<'a>(pub &'a dyn EnvGetter, pub &'a dyn EnvGetter);

impl EnvGetter for Layered<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).or_else(|| self.1.get(key))
    }
}

/// A word that could not be lexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellError {
    /// The input word.
    pub word: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to process {:?}: {}", self.word, self.message)
    }
}

impl std::error::Error for ShellError {}

/// The outcome of lexing one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The word with quotes removed and variables expanded.
    pub result: String,
    /// The same split into words at unquoted whitespace.
    pub words: Vec<String>,
    /// Variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Variables that were referenced but not set.
    pub unmatched: BTreeSet<String>,
}

/// A configured lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Lexer {
    /// A lexer with the given escape character and default options.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Lexes `word` into one string.
    pub fn process_word(&self, word: &str, env: &dyn EnvGetter) -> Result<String, ShellError> {
        Ok(self.process(word, env)?.result)
    }

    /// Lexes `word` into several words split at unquoted whitespace.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn EnvGetter,
    ) -> Result<Vec<String>, ShellError> {
        Ok(self.process(word, env)?.words)
    }

    /// Lexes `word`, reporting which variables it referenced.
    pub fn process(&self, word: &str, env: &dyn EnvGetter) -> Result<Expansion, ShellError> {
        let mut sc = Scanner {
            chars: word.chars().collect(),
            pos: 0,
            lex: *self,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let raw = sc.raw_escapes;
        match sc.process_stop_on(None, raw) {
            Ok((result, words)) => Ok(Expansion {
                result,
                words,
                matched: sc.matched,
                unmatched: sc.unmatched,
            }),
            Err(message) => Err(ShellError {
                word: word.to_owned(),
                message,
            }),
        }
    }
}

struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    lex: Lexer,
    env: &'a dyn EnvGetter,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

type Res<T> = Result<T, String>;

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Res<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words {
            buf: String::new(),
            words: Vec::new(),
            in_word: false,
        };
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            let special = match ch {
                '$' => Some(self.process_dollar()?),
                '<' => Some(self.process_possible_heredoc()),
                '\'' if !self.lex.skip_process_quotes => Some(self.process_single_quote()?),
                '"' if !self.lex.skip_process_quotes => Some(self.process_double_quote()?),
                _ => None,
            };
            if let Some(tmp) = special {
                result.push_str(&tmp);
                if ch == '$' {
                    words.add_string(&tmp);
                } else {
                    words.add_raw_string(&tmp);
                }
                continue;
            }
            self.next();
            if ch == self.lex.escape {
                if self.raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                let Some(esc) = self.next() else { break };
                words.add_raw_char(esc);
                result.push(esc);
            } else {
                words.add_char(ch);
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Res<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Res<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(_) => {
                    let Some(mut ch) = self.next() else { continue };
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(p) if p == '"' || p == '$' || p == self.lex.escape => {
                                self.next();
                                ch = p;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_owned());
                Some(v.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    fn process_dollar(&mut self) -> Res<String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut chs = ch.to_string();
        match ch {
            '}' => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = ch == ':';
                if null_is_unset {
                    let Some(c) = self.next() else {
                        return Err("syntax error: missing '}'".into());
                    };
                    ch = c;
                    chs.push(c);
                }
                let raw = ch == '#' || ch == '%';
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({chs}) in substitution"));
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                let value = self.lookup(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let empty = value
                    .as_deref()
                    .is_none_or(|v| null_is_unset && v.is_empty());
                match ch {
                    '-' => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if empty { String::new() } else { word }),
                    '?' => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    '#' | '%' => {
                        let (greedy, pat) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_owned()),
                            None => (false, word),
                        };
                        let pat = parse_pattern(&pat)?;
                        let v = value.unwrap_or_default();
                        Ok(if ch == '%' {
                            trim_suffix(&pat, &v, greedy)
                        } else {
                            trim_prefix(&pat, &v, greedy)
                        })
                    }
                    _ => Err(format!("unsupported modifier ({chs}) in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '/' in ${}".into());
                        }
                        return Err(e);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                let value = self.lookup(&name);
                let Some(value) = value else {
                    if self.lex.skip_unset_env {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                let pat = parse_pattern(&pattern)?;
                Ok(replace(&pat, &value, &replacement, all))
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut out = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            out.push(c);
            self.next();
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

fn parse_pattern(p: &str) -> Res<Vec<Tok>> {
    let mut out = Vec::new();
    let mut it = p.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' => match it.peek().copied() {
                Some('}' | '/') => {}
                Some(n @ ('*' | '?' | '\\')) => {
                    it.next();
                    out.push(Tok::Lit(n));
                }
                other => {
                    let shown = other.map(String::from).unwrap_or_default();
                    return Err(format!(
                        "invalid pattern ({p}) in substitution: invalid escape '\\{shown}'"
                    ));
                }
            },
            c => out.push(Tok::Lit(c)),
        }
    }
    Ok(out)
}

fn glob_match(p: &[Tok], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((Tok::Star, rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
        Some((Tok::Any, rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
        Some((Tok::Lit(c), rest)) => s.first() == Some(c) && glob_match(rest, &s[1..]),
    }
}

fn trim_prefix(p: &[Tok], value: &str, greedy: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut lens: Vec<usize> = (0..=chars.len()).collect();
    if greedy {
        lens.reverse();
    }
    for n in lens {
        if glob_match(p, &chars[..n]) {
            return chars[n..].iter().collect();
        }
    }
    value.to_owned()
}

fn trim_suffix(p: &[Tok], value: &str, greedy: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut starts: Vec<usize> = (0..=chars.len()).collect();
    if !greedy {
        starts.reverse();
    }
    for s in starts {
        if glob_match(p, &chars[s..]) {
            return chars[..s].iter().collect();
        }
    }
    value.to_owned()
}

fn replace(p: &[Tok], value: &str, rep: &str, all: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i <= chars.len() {
        let found = (i..=chars.len())
            .rev()
            .find(|&j| glob_match(p, &chars[i..j]));
        match found {
            Some(j) => {
                out.push_str(rep);
                if j > i {
                    i = j;
                } else {
                    if i < chars.len() {
                        out.push(chars[i]);
                    }
                    i += 1;
                }
                if !all {
                    out.extend(chars.get(i..).unwrap_or_default());
                    return out;
                }
            }
            None => {
                if i < chars.len() {
                    out.push(chars[i]);
                }
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvList {
        let mut e = EnvList::new();
        e.set("A", "alpha");
        e.set("E", "");
        e.set("P", "/usr/local/bin.tar.gz");
        e
    }

    fn w(s: &str) -> String {
        Lexer::new('\\').process_word(s, &env()).expect("lexes")
    }

    #[test]
    fn expands_every_form() {
        assert_eq!(w("$A"), "alpha");
        assert_eq!(w("${A}x"), "alphax");
        assert_eq!(w("${U:-def}"), "def");
        assert_eq!(w("${E:-def}"), "def");
        assert_eq!(w("${E-def}"), "");
        assert_eq!(w("${U-def}"), "def");
        assert_eq!(w("${A:+set}"), "set");
        assert_eq!(w("${E:+set}"), "");
        assert_eq!(w("${E+set}"), "set");
        assert_eq!(w("${U+set}"), "");
        assert_eq!(w("${P#*.}"), "tar.gz");
        assert_eq!(w("${P##*.}"), "gz");
        assert_eq!(w("${P%.*}"), "/usr/local/bin.tar");
        assert_eq!(w("${P%%.*}"), "/usr/local/bin");
        assert_eq!(w("${A/l/L}"), "aLpha");
        assert_eq!(w("${A//a/A}"), "AlphA");
        assert_eq!(w("$"), "$");
        assert_eq!(w("$U"), "");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A b\""), "alpha b");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(w("\"a\\\"b\""), "a\"b");
        assert_eq!(w("\"a\\nb\""), "a\\nb");
        let l = Lexer::new('`');
        assert_eq!(l.process_word("`$A", &env()).expect("lexes"), "$A");
    }

    #[test]
    fn words_split() {
        let l = Lexer::new('\\');
        let words = l.process_words("a \"b c\" $A", &env()).expect("lexes");
        assert_eq!(words, vec!["a", "b c", "alpha"]);
    }

    #[test]
    fn errors() {
        let l = Lexer::new('\\');
        let e = l.process_word("\"abc", &env()).expect_err("fails");
        assert_eq!(
            e.to_string(),
            "failed to process \"\\\"abc\": unexpected end of statement while looking for matching double-quote"
        );
        assert!(l.process_word("${A", &env()).is_err());
        assert!(l.process_word("${:}", &env()).is_err());
        let e = l
            .process_word("${U:?must be set}", &env())
            .expect_err("fails");
        assert!(e.message.contains("U: must be set"));
    }

    #[test]
    fn skip_unset_keeps_references() {
        let mut l = Lexer::new('\\');
        l.skip_unset_env = true;
        l.raw_quotes = true;
        assert_eq!(
            l.process_word("echo \"$U\" ${A} ${U:-x}", &env())
                .expect("lexes"),
            "echo \"$U\" alpha ${U:-x}"
        );
    }

    #[test]
    fn env_list_order_moves_on_set() {
        let mut e = EnvList::new();
        e.set("A", "1");
        e.set("B", "2");
        e.set("A", "3");
        assert_eq!(e.to_vec(), vec!["B=2", "A=3"]);
    }
}
