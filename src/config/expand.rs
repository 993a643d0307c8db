//! `${NAME}` expansion inside one parsed string value.
//!
//! Rules:
//! - `${NAME}` is replaced by the environment variable `NAME`; `NAME` is
//!   `[A-Za-z_][A-Za-z0-9_]*`. An unset variable is an error, never an empty string.
//! - `$${` is the escape for a literal `${` (so `"$${HOME}"` stays `"${HOME}"`).
//! - Any other `$` is literal, and expanded text is not expanded again.
//!
//! Expansion runs on string values after TOML parsing, so comments never need variables and
//! a value containing quotes or newlines cannot change the file's structure.

/// Why a string could not be expanded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` names a variable that is not set.
    Unset(String),
    /// `${` is not followed by a valid name and `}`; holds the offending text.
    Malformed(String),
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpandError::Unset(name) => write!(f, "environment variable {name} is not set"),
            ExpandError::Malformed(text) => write!(
                f,
                "invalid variable reference {text:?}; write ${{NAME}} with NAME made of \
                 letters, digits and _, or $${{ for a literal \"${{\""
            ),
        }
    }
}

/// Expands every `${NAME}` in `text`, reporting each problem (not only the first).
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ExpandError>> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let from_dollar = &rest[dollar..];
        if let Some(after) = from_dollar.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            match after.find('}') {
                Some(end) if is_var_name(&after[..end]) => {
                    let name = &after[..end];
                    match env(name) {
                        Some(value) => out.push_str(&value),
                        None => errors.push(ExpandError::Unset(name.to_owned())),
                    }
                    rest = &after[end + 1..];
                }
                Some(end) => {
                    errors.push(ExpandError::Malformed(format!("${{{}}}", &after[..end])));
                    rest = &after[end + 1..];
                }
                None => {
                    errors.push(ExpandError::Malformed(from_dollar.to_owned()));
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &from_dollar[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the portable shell variable name.
fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("alice".into()),
            "PASS" => Some("p@ss${NOT_EXPANDED}".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables() {
        assert_eq!(expand("plain", &env), Ok("plain".into()));
        assert_eq!(expand("${USER}", &env), Ok("alice".into()));
        assert_eq!(
            expand("postgres://${USER}:${PASS}@db/x", &env),
            Ok("postgres://alice:p@ss${NOT_EXPANDED}@db/x".into())
        );
        assert_eq!(expand("a${EMPTY}b", &env), Ok("ab".into()));
    }

    #[test]
    fn escape_and_lone_dollars_stay_literal() {
        assert_eq!(expand("$${USER}", &env), Ok("${USER}".into()));
        assert_eq!(
            expand("cost: 5$ or $USER", &env),
            Ok("cost: 5$ or $USER".into())
        );
        assert_eq!(expand("$$", &env), Ok("$$".into()));
        assert_eq!(expand("end$", &env), Ok("end$".into()));
    }

    #[test]
    fn reports_every_problem() {
        assert_eq!(
            expand("${A} ${USER} ${B}", &env),
            Err(vec![
                ExpandError::Unset("A".into()),
                ExpandError::Unset("B".into())
            ])
        );
        assert_eq!(
            expand("${1X} ${OPEN", &env),
            Err(vec![
                ExpandError::Malformed("${1X}".into()),
                ExpandError::Malformed("${OPEN".into())
            ])
        );
        assert_eq!(
            expand("${}", &env),
            Err(vec![ExpandError::Malformed("${}".into())])
        );
    }
}
