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
        Ok(new) => {
            let n = new.len();
            routes.replace(RouteTable::new(new));
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "ok").increment(1);
            tracing::info!(file = %path.display(), routes = n, "config reloaded");
            Ok(n)
        }
        Err(error) => {
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "refused").increment(1);
            // One line, every problem: log pipelines split on newlines.
            let problems = match error.issues() {
                [] => super::Chain(&error).to_string(),
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
