//! Markdown for a check run's summary: what both Flux slices render their detail
//! with (`fluxv1/report.rs`, `fluxv2/report.rs`). Pure, and knows no Flux.
//!
//! Text from events is escaped: a pipe or a newline in an error must not break the
//! table it sits in, and Markdown in a message must not render as markup.

use std::fmt::Write;

/// `text` safe inside a table cell: one line, pipes and Markdown escaped. Newlines
/// become `<br>`, which GitHub renders inside a cell.
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let text = text.trim();
    let mut lines = text.lines().map(str::trim_end).peekable();
    while let Some(line) = lines.next() {
        escape_into(&mut out, line);
        if lines.peek().is_some() {
            out.push_str("<br>");
        }
    }
    if out.is_empty() {
        out.push('—');
    }
    out
}

/// `text` as inline text: Markdown characters escaped, line breaks kept.
pub fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    escape_into(&mut out, text);
    out
}

/// `text` as a code span: Markdown is not read inside one, so nothing is escaped;
/// backticks, which would end it, become quotes, and it stays on one line.
pub fn code(text: &str) -> String {
    let inner: String = text
        .chars()
        .map(|c| match c {
            '`' => '\'',
            '\r' | '\n' => ' ',
            c => c,
        })
        .collect();
    format!("`{}`", inner.trim())
}

/// `text` in a fenced block, whole: for a message that may span lines. The fence is
/// longer than any run of backticks inside.
pub fn block(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n", text.trim_end())
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// A table: a header row, then one row per item, every cell escaped.
pub fn table(out: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

/// A `**label:** value` line, the value escaped.
pub fn field(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "- **{label}:** {}", inline(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_stays_one_cell() {
        assert_eq!(cell("a | b\nc\r\nd"), "a \\| b<br>c<br>d");
        assert_eq!(cell("  "), "—");
        assert_eq!(cell("*x* [y](z) <b>"), "\\*x\\* \\[y\\](z) \\<b\\>");
    }

    #[test]
    fn a_table_has_one_line_per_row() {
        let mut s = String::new();
        table(&mut s, &["a", "b"], [vec!["1|2".into(), "x\ny".into()]]);
        assert_eq!(s, "| a | b |\n|---|---|\n| 1\\|2 | x<br>y |\n");
    }

    #[test]
    fn a_code_span_is_not_escaped_and_cannot_be_ended_early() {
        assert_eq!(code("my_ns/a*b"), "`my_ns/a*b`");
        assert_eq!(code("a`b\nc"), "`a'b c`");
    }

    #[test]
    fn a_block_fence_outlasts_backticks_inside() {
        let b = block("run ````x````");
        assert!(b.starts_with("`````text\n"), "{b}");
        assert!(b.ends_with("\n`````\n"), "{b}");
    }
}
