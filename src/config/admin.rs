//! `[admin]`: who may use the admin API.

use std::fmt;

use serde::Deserialize;

use super::ServerConfig;
use super::validate::Report;

/// `[admin]`: access to the admin listener's API.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required for `/metrics` and `/admin/*` (health checks stay open). Required
    /// when `server.admin_listen` is not a loopback address. `IFMATCH_ADMIN_TOKEN` overrides it.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    // The token is a secret: never in logs or error output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AdminConfig {
    pub(super) fn check(&self, server: &ServerConfig, report: &mut Report) {
        match &self.token {
            Some(token)
                if token.trim().is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                report.error("admin.token", "must be non-empty visible ASCII (no spaces)");
            }
            // Anyone who can reach a non-loopback port could purge keys and read paths.
            None if !server.admin_listen.ip().is_loopback() => report.error(
                "admin.token",
                &format!(
                    "required when server.admin_listen ({}) is not a loopback address: \
                     set [admin] token or IFMATCH_ADMIN_TOKEN",
                    server.admin_listen
                ),
            ),
            _ => {}
        }
    }
}
