//! The built `ifmatch` binary, started from the crate root with none of the environment
//! variables it reads inherited from the test runner's shell, and a handle that reads its logs.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Every wait on the process is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

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

/// A running ifmatch whose log lines (stderr) arrive on a channel.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines read while waiting for another: startup lines come in no fixed order.
    backlog: Vec<String>,
}

impl Running {
    /// Spawns `command` with stderr captured (stdout discarded).
    pub fn spawn(command: &mut Command) -> Self {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ifmatch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            backlog: Vec::new(),
        }
    }

    /// The next log line containing `needle`.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(i) = self.backlog.iter().position(|line| line.contains(needle)) {
            return self.backlog.remove(i);
        }
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let line = self.lines.recv().await.expect("ifmatch still logging");
                if line.contains(needle) {
                    return line;
                }
                self.backlog.push(line);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }

    /// The `field` of the next line containing `needle`, text or JSON.
    pub async fn field(&mut self, needle: &str, field: &str) -> String {
        let line = self.wait_for(needle).await;
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
            let value = &json[field];
            return value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
        }
        let prefix = format!("{field}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {field} in {line:?}"))
            .to_owned()
    }

    /// The `addr` field of the next line containing `needle`, text or JSON.
    pub async fn addr(&mut self, needle: &str) -> String {
        self.field(needle, "addr").await
    }

    /// Sends signal `name` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Kills the process (SIGKILL: no shutdown, nothing flushed) and waits until it is gone.
    pub async fn kill(mut self) {
        self.signal("KILL");
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("killed in time")
            .expect("exit status");
    }

    /// Stops the process (SIGTERM) and returns every line it logged.
    pub async fn finish(mut self) -> Vec<String> {
        self.signal("TERM");
        tokio::time::timeout(TIMEOUT, async {
            self.child.wait().await.expect("exit status");
            while let Some(line) = self.lines.recv().await {
                self.backlog.push(line);
            }
        })
        .await
        .expect("exited and closed stderr in time");
        self.backlog
    }
}
