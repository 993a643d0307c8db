//! What went wrong while loading a config, located by file, line and key path.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file: where it is and what is wrong.
///
/// Displays as `walhook.toml:14: subscriptions[0].url: invalid URL "htp://x": …`. The line is
/// left out when the problem has no place in the file (a missing `[source]` table, a value from
/// `WALHOOK_SOURCE_URL`); the column is shown only for TOML syntax errors, where it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column in characters; set for syntax errors only.
    pub column: Option<usize>,
    /// Key path such as `subscriptions[1].rate_limit.per_second`; empty for syntax errors.
    pub key: String,
    /// What is wrong, and where possible how to fix it. Never contains a secret.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read config file: {source}")]
    Read {
        /// The path as given.
        file: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; one finding per problem, in file order.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Finding>),
}

impl ConfigError {
    /// Every problem found; empty for [`ConfigError::Read`].
    pub fn findings(&self) -> &[Finding] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(findings) => findings,
        }
    }

    /// The file the (first) problem is in.
    pub fn file(&self) -> String {
        match self {
            ConfigError::Read { file, .. } => file.display().to_string(),
            ConfigError::Invalid(findings) => {
                findings.first().map(|f| f.file.clone()).unwrap_or_default()
            }
        }
    }

    /// The line of the first problem, if it has one.
    pub fn line(&self) -> Option<usize> {
        self.findings().first().and_then(|f| f.line)
    }

    /// The key path of the first problem; empty for syntax and read errors.
    pub fn key(&self) -> &str {
        self.findings().first().map_or("", |f| f.key.as_str())
    }
}

/// One finding per line, as a user reads compiler output.
fn display_lines(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(Finding::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
