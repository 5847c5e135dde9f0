//! Progress names (`[stage-0 2/5] RUN …`) and history strings as BuildKit formats them.

use crate::lower::state::StageState;
use crate::shell::{EnvGetter, Lexer};

/// Prefixes `s` with `[<stage> <i>/<n>] ` and advances the stage's counter.
pub(crate) fn prefix_command(st: &mut StageState, s: &str) -> String {
    if st.cmd_total == 0 {
        return s.to_owned();
    }
    st.cmd_index += 1;
    let width = st.cmd_total.to_string().len();
    let stage = if st.display.is_empty() {
        String::new()
    } else {
        format!("{} ", st.display)
    };
    let onbuild = if st.in_trigger { "ONBUILD " } else { "" };
    format!(
        "[{stage}{:>width$}/{}] {onbuild}{s}",
        st.cmd_index, st.cmd_total
    )
}

/// Upper-cases the first word (the keyword).
pub(crate) fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((k, rest)) => format!("{} {rest}", k.to_uppercase()),
        None => s.to_uppercase(),
    }
}

/// Expands variables for display; on error the text is kept as is.
pub(crate) fn process_cmd_env(lex: &Lexer, s: &str, env: &dyn EnvGetter) -> String {
    lex.process_word(s, env).unwrap_or_else(|_| s.to_owned())
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let v = c as u32;
                if v <= 0xffff {
                    out.push_str(&format!("\\u{v:04x}"));
                } else {
                    out.push_str(&format!("\\U{v:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `fmt.Sprintf("%q", []string{…})`: `["a" "b"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", inner.join(" "))
}

/// Go's `fmt.Sprintf("%v", []string{…})`: `[a b]`.
pub(crate) fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            go_quote_list(&["cat".into(), "/x".into()]),
            r#"["cat" "/x"]"#
        );
        assert_eq!(go_quote("a\"b\n"), r#""a\"b\n""#);
        assert_eq!(
            go_list(&["/bin/bash".into(), "-c".into()]),
            "[/bin/bash -c]"
        );
        assert_eq!(uppercase_cmd("run echo hi"), "RUN echo hi");
    }

    #[test]
    fn prefixes() {
        let mut st = StageState::for_test("stage-0", 12);
        assert_eq!(prefix_command(&mut st, "RUN x"), "[stage-0  1/12] RUN x");
        let mut st = StageState::for_test("", 3);
        assert_eq!(prefix_command(&mut st, "RUN x"), "[1/3] RUN x");
    }
}
