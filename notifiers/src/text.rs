//! Descriptions: one line, cut on a character boundary to a provider's limit.

/// Collapses all whitespace runs (newlines included) to single spaces and cuts the
/// result to at most `max_chars` characters, ending in `…` when anything was cut.
///
/// Limits are in characters, not bytes: GitHub counts characters, and cutting a
/// multi-byte character in half would make the request invalid UTF-8.
pub fn one_line_truncated(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut count = 0;
    let mut words = s.split_whitespace().peekable();
    let mut truncated = false;
    'outer: while let Some(word) = words.next() {
        for c in word.chars() {
            if count == max_chars {
                truncated = true;
                break 'outer;
            }
            out.push(c);
            count += 1;
        }
        if words.peek().is_some() {
            if count == max_chars {
                truncated = true;
                break;
            }
            out.push(' ');
            count += 1;
        }
    }
    if truncated && max_chars > 0 {
        // Make room for the ellipsis, and do not end on a dangling space.
        out.pop();
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('…');
    }
    out
}

/// `s` cut to at most `max_chars` characters (on a character boundary, newlines
/// kept), ending in `note` when anything was cut; the note counts toward the limit.
pub fn cut_with_note(s: &str, max_chars: usize, note: &str) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let keep = max_chars.saturating_sub(note.chars().count());
    let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
    let mut out = String::with_capacity(end + note.len());
    out.push_str(&s[..end]);
    out.push_str(note);
    out
}

#[cfg(test)]
mod tests {
    use super::one_line_truncated as t;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_note() {
        use super::cut_with_note as cut;
        assert_eq!(cut("ab\ncd", 5, "!"), "ab\ncd");
        assert_eq!(cut("€€€€€€", 5, "[cut]"), "[cut]");
        assert_eq!(cut("€€€€€€", 5, "…"), "€€€€…");
        assert_eq!(
            cut(&"é".repeat(70_000), 65_535, "\n_cut_").chars().count(),
            65_535
        );
    }

    #[test]
    fn short_text_is_only_folded() {
        assert_eq!(t("Sync  succeeded\n\nok", 140), "Sync succeeded ok");
        assert_eq!(t("", 140), "");
    }

    #[test]
    fn long_text_is_cut_to_exactly_the_limit() {
        let s = "x".repeat(200);
        let out = t(&s, 140);
        assert_eq!(out.chars().count(), 140);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn cut_respects_multibyte_characters() {
        let s = "é".repeat(150) + "日本語";
        let out = t(&s, 140);
        assert_eq!(out.chars().count(), 140);
        assert!(out.starts_with("éé") && out.ends_with('…'));
    }

    #[test]
    fn cut_does_not_leave_a_trailing_space() {
        assert_eq!(t("abcd efgh", 6), "abcd…");
        assert_eq!(t("abcd efgh", 9), "abcd efgh");
    }

    proptest::proptest! {
        #[test]
        fn never_exceeds_limit(s in "\\PC{0,300}", max in 1usize..200) {
            let out = t(&s, max);
            proptest::prop_assert!(out.chars().count() <= max);
        }
    }
}
