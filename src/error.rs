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

impl BadInput {
    pub fn at_line(path: impl fmt::Display, line: usize, message: impl Into<String>) -> BadInput {
        BadInput { location: format!("{path}:{line}"), message: message.into(), kind: Refusal::BadInput }
    }
    pub fn in_file(path: impl fmt::Display, message: impl Into<String>) -> BadInput {
        BadInput { location: path.to_string(), message: message.into(), kind: Refusal::BadInput }
    }
    /// A valid input this stencilcheck cannot handle (exit 3).
    pub fn unsupported(path: impl fmt::Display, what: &crate::target::Unsupported) -> BadInput {
        BadInput { location: path.to_string(), message: what.to_string(), kind: Refusal::Unsupported }
    }
    pub fn at_offset(
        path: impl fmt::Display,
        section: &str,
        offset: u64,
        message: impl Into<String>,
    ) -> BadInput {
        BadInput { location: format!("{path}: {section}+{offset:#x}"), message: message.into(), kind: Refusal::BadInput }
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
