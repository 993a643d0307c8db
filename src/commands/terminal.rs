//! Received text made safe to print: a receiver's body or error must not drive the terminal.

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

#[cfg(test)]
mod tests {
    use super::printable;

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
