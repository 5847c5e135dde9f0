//! Text as buildx prints subrequest results: Go's `text/tabwriter` tables and
//! `errdefs.Source.Print` snippets.

/// Rows as Go's `tabwriter.NewWriter(w, 0, 0, padding, ' ', 0)` writes cells joined by tabs,
/// each row ending in a newline: every cell but a row's last is padded to its column's width
/// plus `padding`; the last is written as it is.
pub(crate) fn table(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + padding - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The lines `ranges` (1-based, inclusive `(start, end)`) point at in `text`, with a few lines
/// around them and the ranges' lines marked `>>>`, under `filename:LINE`, as BuildKit's
/// `errdefs.Source.Print` writes them; empty when the ranges name no line of the text.
pub fn render_source(filename: &str, text: &str, ranges: &[(i64, i64)]) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let Some(mut start) = ranges.iter().map(|r| r.0).min() else {
        return String::new();
    };
    let mut end = ranges.iter().map(|r| r.0.max(r.1)).max().unwrap_or(start);
    let count = i64::try_from(lines.len()).unwrap_or(i64::MAX);
    if start > count || start < 1 {
        return String::new();
    }
    end = end.min(count);
    // Up to two lines of context (four for a single line), split around the range as
    // BuildKit's loop splits them.
    let pad = if end == start { 4 } else { 2 };
    let first = start;
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != count {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let marked = |l: i64| ranges.iter().any(|r| r.0 <= l && r.0.max(r.1) >= l);
    let mut out = format!("{filename}:{first}\n--------------------\n");
    for l in start..=end {
        let prefix = if marked(l) { ">>>" } else { "   " };
        let text = usize::try_from(l - 1)
            .ok()
            .and_then(|i| lines.get(i))
            .copied()
            .unwrap_or_default();
        out.push_str(&format!(" {l:>3} | {prefix} {text}\n"));
    }
    out.push_str("--------------------\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_all_but_the_last_cell() {
        let rows = vec![
            vec!["BUILD ARG".to_owned(), "VALUE".into(), "DESCRIPTION".into()],
            vec!["GREETING".to_owned(), "hello".into(), String::new()],
        ];
        assert_eq!(
            table(&rows, 3),
            "BUILD ARG   VALUE   DESCRIPTION\nGREETING    hello   \n"
        );
        let rows = vec![
            vec!["TARGET".to_owned(), "DESCRIPTION".into()],
            vec!["(default)".to_owned(), String::new()],
        ];
        assert_eq!(table(&rows, 1), "TARGET    DESCRIPTION\n(default) \n");
    }

    #[test]
    fn snippets_as_buildkit_prints_them() {
        let text = "FROM a\nRUN b\nRUN c\n";
        assert_eq!(
            render_source("Dockerfile", text, &[(2, 2)]),
            "Dockerfile:2\n--------------------\n   1 |     FROM a\n   2 | >>> RUN b\n   3 |     RUN c\n   4 |     \n--------------------\n"
        );
        assert_eq!(render_source("Dockerfile", text, &[(9, 9)]), "");
        assert_eq!(render_source("Dockerfile", text, &[]), "");
    }
}
