//! The binary as operators run it: the container settings of `docker/`, the `healthcheck`
//! subcommand, JSON logs, and SIGHUP reload.
#![cfg(unix)]

#[path = "support/binary.rs"]
mod binary;

use std::path::PathBuf;

use binary::{Running, TIMEOUT, ifmatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 request; returns the whole response.
async fn http(authority: &str, method: &str, path: &str, headers: &str) -> String {
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n{headers}connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .expect("response in time")
}

/// `0.0.0.0:port` -> `127.0.0.1:port`.
fn loopback(addr: &str) -> String {
    addr.replace("0.0.0.0", "127.0.0.1")
}

/// The settings of `docker/compose.yaml`'s sidecar, on ephemeral ports: all from the
/// environment, admin on every interface with a token, JSON logs.
#[tokio::test]
async fn starts_with_the_compose_settings_and_passes_its_healthcheck() {
    let mut running = Running::spawn(
        ifmatch()
            .env("IFMATCH_UPSTREAM", "http://127.0.0.1:9")
            .env("IFMATCH_LISTEN", "0.0.0.0:0")
            .env("IFMATCH_ADMIN_LISTEN", "0.0.0.0:0")
            .env("IFMATCH_ADMIN_TOKEN", "compose-token")
            .env("IFMATCH_LOG_FORMAT", "json"),
    );
    let admin = running.addr("admin listening").await;
    assert!(admin.starts_with("0.0.0.0:"), "{admin}");

    let check = ifmatch()
        .args(["healthcheck", "--admin-listen", &admin])
        .status()
        .await
        .expect("healthcheck ran");
    assert!(check.success());

    let local = loopback(&admin);
    let metrics = http(&local, "GET", "/metrics", "").await;
    assert!(metrics.starts_with("HTTP/1.1 401"), "{metrics}");
    let metrics = http(
        &local,
        "GET",
        "/metrics",
        "authorization: Bearer compose-token\r\n",
    )
    .await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");

    running.signal("TERM");
    let status = tokio::time::timeout(TIMEOUT, running.child.wait())
        .await
        .expect("exited in time")
        .expect("exit status");
    assert!(status.success());
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_answers() {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    let status = ifmatch()
        .args(["healthcheck", "--admin-listen", &addr])
        .status()
        .await
        .expect("healthcheck ran");
    assert!(!status.success());
}

#[tokio::test]
async fn refuses_an_open_admin_listener_without_a_token() {
    let output = ifmatch()
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("IFMATCH_ADMIN_LISTEN", "0.0.0.0:0")
        .output()
        .await
        .expect("ran");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.token: required"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_routes_and_keeps_them_when_the_file_is_bad() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operate-sighup.toml");
    let file = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
             [[routes]]\nname = \"api\"\nupstream = \"http://127.0.0.1:9\"\n{extra}"
        )
    };
    std::fs::write(&path, file("")).unwrap();
    let mut running = Running::spawn(ifmatch().arg("--config").arg(&path));
    let proxy = running.addr("proxy listening").await;
    running.wait_for("send SIGHUP").await;
    // The upstream (discard port) is down: an unconditional write reaches for it.
    let blind = http(&proxy, "PUT", "/x", "").await;
    assert!(blind.starts_with("HTTP/1.1 502"), "{blind}");

    std::fs::write(&path, file("require_if_match = true\n")).unwrap();
    running.signal("HUP");
    running.wait_for("config reloaded").await;
    let blind = http(&proxy, "PUT", "/x", "").await;
    assert!(blind.starts_with("HTTP/1.1 428"), "{blind}");

    std::fs::write(&path, "[[routes]]\nname = 1\n").unwrap();
    running.signal("HUP");
    let refused = running.wait_for("config reload refused").await;
    assert!(refused.contains("routes[0]"), "{refused}");
    let blind = http(&proxy, "PUT", "/x", "").await;
    assert!(blind.starts_with("HTTP/1.1 428"), "{blind}");
}

/// The series the README's "Metrics" paragraph names, its `{a,b}` shorthand expanded, each with
/// the label names it lists (none for a label-free series).
fn readme_series() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let paragraph = readme
        .split("**Metrics**")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a **Metrics** paragraph in the README");
    let mut series = Vec::new();
    for quoted in paragraph.split('`').skip(1).step_by(2) {
        let Some(name) = quoted.strip_prefix("ifmatch_") else {
            continue;
        };
        let (name, labels) = match name.split_once('{') {
            // `store_{entries,hits_total}`: alternatives, not labels.
            Some((stem, rest)) if stem.ends_with('_') => {
                for tail in rest.trim_end_matches('}').split(',') {
                    series.push((format!("ifmatch_{stem}{tail}"), Vec::new()));
                }
                continue;
            }
            Some((name, labels)) => (
                name,
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (name, Vec::new()),
        };
        series.push((format!("ifmatch_{name}"), labels));
    }
    series
}

/// A fresh process, before any traffic: every series the README documents is already in
/// `/metrics` (at zero), labelled with the configured route where it has a `route` label.
#[tokio::test]
async fn a_fresh_process_exports_every_documented_series() {
    let series = readme_series();
    assert!(series.len() >= 17, "{series:?}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operate-fresh-metrics.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"fresh\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut running = Running::spawn(ifmatch().arg("--config").arg(&path));
    let admin = running.addr("admin listening").await;

    let metrics = http(&admin, "GET", "/metrics", "").await;

    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for (name, labels) in &series {
        let samples: Vec<&str> = metrics
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{']) || rest.starts_with("_bucket"))
            })
            .collect();
        assert!(
            !samples.is_empty(),
            "{name} missing from a fresh /metrics:\n{metrics}"
        );
        for label in labels {
            assert!(
                samples
                    .iter()
                    .any(|line| line.contains(&format!("{label}=\""))),
                "{name} has no {label} label: {samples:?}"
            );
        }
        if labels.iter().any(|label| label == "route") {
            assert!(
                samples.iter().any(|line| line.contains("route=\"fresh\"")),
                "{name} not registered for the configured route: {samples:?}"
            );
        }
    }
    let zero = |line: &str| line.rsplit(' ').next() == Some("0");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ifmatch_connections_refused_total") && zero(l))
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ifmatch_config_reloads_total{result=\"refused\"}") && zero(l))
    );
    running.kill().await;
}
