//! Bad input: anything stencilcheck cannot read or cannot place. Always one
//! line naming where (`file:line`, or `file: section+offset`), exit code 2.
//! A *finding* (a wrong relocation) is never an error: it goes to the judge.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    /// `path:line`, `path: .text+0x1c`, or just `path`.
    pub location: String,
    pub message: String,
}

impl BadInput {
    pub fn at_line(path: impl fmt::Display, line: usize, message: impl Into<String>) -> BadInput {
        BadInput { location: format!("{path}:{line}"), message: message.into() }
    }
    pub fn in_file(path: impl fmt::Display, message: impl Into<String>) -> BadInput {
        BadInput { location: path.to_string(), message: message.into() }
    }
    pub fn at_offset(
        path: impl fmt::Display,
        section: &str,
        offset: u64,
        message: impl Into<String>,
    ) -> BadInput {
        BadInput { location: format!("{path}: {section}+{offset:#x}"), message: message.into() }
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always: newlines in a message would break CI log greps.
        write!(f, "{}: {}", self.location, self.message.replace('\n', " "))
    }
}

impl std::error::Error for BadInput {}

pub type Result<T, E = BadInput> = std::result::Result<T, E>;
