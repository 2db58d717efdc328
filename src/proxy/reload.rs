//! Reloading routes and policies from the config file, in place.

use std::path::Path;

use super::router::{RouteTable, Routes};
use crate::config::{Config, ConfigError, Overrides};
use crate::telemetry;

/// Loads `path` (with the same command-line `overrides` as at start) and, if it is valid,
/// swaps its routes and policies into `routes`; returns the number of routes. Requests in
/// flight finish under the table they started with; the store and connections are untouched.
///
/// An invalid file changes nothing: the current routes stay in force and the error says why.
/// Listener, timeout and store settings take effect only on restart.
///
/// # Errors
/// The file cannot be read, is not TOML, or is invalid.
pub fn reload(path: &Path, overrides: &Overrides, routes: &Routes) -> Result<usize, ConfigError> {
    let result = Config::load(path, overrides).and_then(|config| config.routes());
    match result {
        Ok(mut new) => {
            // The store's lease TTL was checked against the bounds the server started with,
            // and only a restart changes it: a reload must not lengthen a write's run past it.
            if let Some((response, outcome)) = routes.load().write_bounds() {
                let mut changed = false;
                for route in &mut new {
                    let policy = std::sync::Arc::make_mut(&mut route.policy);
                    changed |= (policy.response_timeout, policy.write_outcome_timeout)
                        != (response, outcome);
                    policy.response_timeout = response;
                    policy.write_outcome_timeout = outcome;
                }
                if changed {
                    tracing::warn!(
                        file = %path.display(),
                        "server timeouts changed: they take effect on restart"
                    );
                }
            }
            let n = new.len();
            telemetry::register(new.iter().map(|route| &*route.id));
            routes.replace(RouteTable::new(new));
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "ok").increment(1);
            tracing::info!(file = %path.display(), routes = n, "config reloaded");
            Ok(n)
        }
        Err(error) => {
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "refused").increment(1);
            // One line, every problem: log pipelines split on newlines.
            let problems = match error.issues() {
                [] => one_line(&super::Chain(&error).to_string()),
                issues => issues
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            tracing::error!(
                file = %path.display(),
                error = %problems,
                "config reload refused, the current config stays in force"
            );
            Err(error)
        }
    }
}

/// A multi-line error (the TOML parser's, with the offending line and a caret) as one line:
/// its first line, which says where, and its last, which says what.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default();
    match lines.next_back() {
        Some(last) => format!("{first}: {last}"),
        None => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_error_becomes_one_line_that_says_where_and_what() {
        let error = Config::from_toml("routes = [\n", &Overrides::default()).unwrap_err();
        let line = one_line(&crate::proxy::Chain(&error).to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("config is not valid toml: TOML parse error at line 1"),
            "{line}"
        );
        assert!(line.ends_with("unclosed array, expected `]`"), "{line}");
        assert_eq!(line.matches("TOML parse error").count(), 1, "{line}");
        assert_eq!(one_line("just one"), "just one");
    }
}
