//! Reporting every problem of a file before failing: the [`Report`] that collects them, the
//! per-key parsing that keeps one bad key from hiding the others, and shared checks.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::ConfigError;

/// The longest timeout accepted: longer is a typo, and would overflow deadlines.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// One problem found in a configuration, at a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, e.g. `routes[1].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })?;
        for issue in &self.0 {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

pub(super) fn check_field<T>(
    at: &str,
    key: &str,
    result: Result<T, String>,
    report: &mut Report,
) -> Option<T> {
    result
        .map_err(|message| report.error(&format!("{at}.{key}"), &message))
        .ok()
}

/// Deserializes one section; a bad key is reported and dropped so the others still parse.
pub(super) fn section<T: DeserializeOwned + Default>(
    value: toml::Value,
    at: &str,
    report: &mut Report,
) -> T {
    let toml::Value::Table(table) = value else {
        report.parse_error(at, "expected a table");
        return T::default();
    };
    if let Ok(parsed) = toml::Value::Table(table.clone()).try_into() {
        return parsed;
    }
    // Deserialize each key alone: every field has a default, so only bad keys fail.
    let mut good = toml::Table::new();
    for (key, value) in table {
        let single = toml::Table::from_iter([(key.clone(), value.clone())]);
        match toml::Value::Table(single).try_into::<T>() {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => report.parse_error(&format!("{at}.{key}"), e.message()),
        }
    }
    toml::Value::Table(good).try_into().unwrap_or_default()
}

/// Collects problems; a key that failed to parse gets no further (misleading) validation errors.
#[derive(Default)]
pub(super) struct Report {
    issues: Vec<Issue>,
    unparsed: HashSet<String>,
}

impl Report {
    pub(super) fn parse_error(&mut self, path: &str, message: &str) {
        self.unparsed.insert(path.to_owned());
        self.push(path, message);
    }

    pub(super) fn error(&mut self, path: &str, message: &str) {
        let unparsed = |prefix: &String| {
            path.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if !self.unparsed.iter().any(unparsed) {
            self.push(path, message);
        }
    }

    fn push(&mut self, path: &str, message: &str) {
        self.issues.push(Issue {
            path: path.to_owned(),
            message: message.trim().to_owned(),
        });
    }

    pub(super) fn len(&self) -> usize {
        self.issues.len()
    }

    pub(super) fn into_issues(self) -> Vec<Issue> {
        self.issues
    }

    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(Issues(self.issues)))
        }
    }
}
