//! The built `ifmatch` binary, started from the crate root with none of the environment
//! variables it reads inherited from the test runner's shell.

use tokio::process::Command;

/// `ifmatch` with a clean environment, killed when dropped.
pub fn ifmatch() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ifmatch"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "IFMATCH_UPSTREAM",
        "IFMATCH_LISTEN",
        "IFMATCH_ADMIN_LISTEN",
        "IFMATCH_ADMIN_TOKEN",
        "IFMATCH_CONFIG",
        "IFMATCH_LOG_FORMAT",
        "IFMATCH_STORE",
    ] {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info").kill_on_drop(true);
    command
}
