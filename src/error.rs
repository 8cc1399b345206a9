//! Bad input: anything stencilcheck cannot read or cannot place. Always one
//! line naming where (`file:line`, or `file: section+offset`), exit code 2.
//! A *finding* (a wrong relocation) is never an error: it goes to the judge.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    /// `path:line`, `path: .text+0x1c`, or just `path`.
    pub location: String,
    pub message: String,
    pub kind: Refusal,
}

/// Why an input is refused: it is wrong (exit 2), or it is valid but asks
/// for something stencilcheck cannot do yet (exit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refusal {
    #[default]
    BadInput,
    Unsupported,
}

impl Refusal {
    /// The process exit code: 2 bad input, 3 not supported.
    pub fn exit_code(self) -> u8 {
        match self {
            Refusal::BadInput => 2,
            Refusal::Unsupported => 3,
        }
    }
}

/// Longest text quoted (between backticks) in a message, in characters.
pub const MAX_QUOTE: usize = 120;
/// Longest message, in characters.
pub const MAX_MESSAGE: usize = 1000;

/// `s` cut to at most `max` characters, an ellipsis marking the cut.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A message made readable: every backtick-quoted piece (a line of the
/// input, a token) cut to [`MAX_QUOTE`] characters, the whole to
/// [`MAX_MESSAGE`]: a 16 MB line is not echoed into an error.
pub fn shorten(message: String) -> String {
    let quoted_too_long = message.split('`').skip(1).step_by(2).any(|q| q.chars().count() > MAX_QUOTE);
    let message = if quoted_too_long {
        message
            .split('`')
            .enumerate()
            .map(|(i, part)| if i % 2 == 1 { excerpt(part, MAX_QUOTE) } else { part.to_string() })
            .collect::<Vec<_>>()
            .join("`")
    } else {
        message
    };
    if message.chars().count() > MAX_MESSAGE {
        excerpt(&message, MAX_MESSAGE)
    } else {
        message
    }
}

impl BadInput {
    pub fn at_line(path: impl fmt::Display, line: usize, message: impl Into<String>) -> BadInput {
        BadInput { location: format!("{path}:{line}"), message: shorten(message.into()), kind: Refusal::BadInput }
    }
    pub fn in_file(path: impl fmt::Display, message: impl Into<String>) -> BadInput {
        BadInput { location: path.to_string(), message: shorten(message.into()), kind: Refusal::BadInput }
    }
    /// A valid input this stencilcheck cannot handle (exit 3).
    pub fn unsupported(path: impl fmt::Display, what: &crate::target::Unsupported) -> BadInput {
        BadInput { location: path.to_string(), message: what.to_string(), kind: Refusal::Unsupported }
    }
    pub fn at_offset(path: impl fmt::Display, section: &str, offset: u64, message: impl Into<String>) -> BadInput {
        BadInput {
            location: format!("{path}: {}+{offset:#x}", excerpt(section, MAX_QUOTE)),
            message: shorten(message.into()),
            kind: Refusal::BadInput,
        }
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always: newlines in a message would break CI log greps,
        // and names read from an input (a section's) may hold any byte.
        write!(f, "{}: {}", one_line(&self.location), shorten(one_line(&self.message)))
    }
}

impl std::error::Error for BadInput {}

/// `s` with control characters (newlines, escapes, NULs) spelled `\n`,
/// `\u{1b}`: what an input names can never break the line or the terminal.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

pub type Result<T, E = BadInput> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_quotes_are_cut_to_a_readable_excerpt() {
        let line = "x".repeat(16 << 20);
        let e = BadInput::at_line("h.h", 7, format!("malformed statement `{line}` here"));
        assert!(e.message.starts_with("malformed statement `xxx"), "{}", &e.message[..40]);
        assert!(e.message.ends_with("…` here"), "{}", e.message);
        assert_eq!(e.message.chars().count(), "malformed statement `` here".len() + MAX_QUOTE);
        // Short quotes and unquoted messages are left alone; a huge unquoted
        // one is cut whole; Display cuts what a struct literal built.
        assert_eq!(BadInput::in_file("f", "bad `x`").to_string(), "f: bad `x`");
        assert_eq!(BadInput::in_file("f", "y".repeat(5000)).message.chars().count(), MAX_MESSAGE);
        let raw = BadInput { location: "f".into(), message: "z".repeat(5000), kind: Refusal::BadInput };
        assert!(raw.to_string().chars().count() <= MAX_MESSAGE + 3);
        // A name read from an input cannot break the line (the fuzzer's
        // first find: a COFF section named with newlines).
        let named = BadInput::at_offset("f.o", "\n\n.te\x1bxt", 0, "truncated\nsection");
        assert_eq!(named.to_string(), "f.o: \\n\\n.te\\u{1b}xt+0x0: truncated\\nsection");
        // Multi-byte characters are cut on a character boundary.
        assert!(excerpt(&"é".repeat(200), 10).ends_with("é…"));
    }
}
