//! Printing for the commands: received text made safe (a receiver's body or error must not
//! drive the terminal), and aligned tables.

use std::fmt::Write as _;

/// `text` with every control character (ESC, BEL, CR, …) and every bidirectional override
/// written as a visible escape such as `\u{1b}`, so that printed text cannot retitle or clear
/// the terminal, move the cursor, or reorder what is shown. With `keep_newlines`, `\n` and
/// `\t` stay as they are (for text printed as an indented block); otherwise they are escaped
/// too, so that a received line cannot pose as one of ours (e.g. a fake `response: status`).
pub fn printable(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let layout = keep_newlines && (c == '\n' || c == '\t');
        if (c.is_control() || is_bidi_control(c)) && !layout {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Unicode bidirectional formatting characters (they are not `is_control`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// An aligned table with `header` as its first line; cells are separated by two spaces and
/// lines carry no trailing blanks.
pub fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{aligned, printable};

    #[test]
    fn tables_are_aligned_without_trailing_blanks() {
        let rows = [["1".to_owned(), "long name".to_owned(), String::new()]];
        assert_eq!(
            aligned(["ID", "NAME", "X"], &rows),
            "ID  NAME       X\n1   long name\n"
        );
    }

    #[test]
    fn escapes_drive_no_terminal() {
        let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nresponse: status 200\u{202e}";
        let shown = printable(hostile, false);
        assert_eq!(
            shown,
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\\nresponse: status 200\\u{202e}"
        );
        assert_eq!(printable("a\n\tb\u{1b}", true), "a\n\tb\\u{1b}");
        assert_eq!(printable("plain é ✓", false), "plain é ✓");
    }
}
