//! The `ifmatch` binary as users run it.

#[path = "support/binary.rs"]
mod binary;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use binary::ifmatch;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(20);

async fn run(command: &mut Command) -> Output {
    tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("ifmatch finished in time")
        .expect("ifmatch ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("write temp config");
    path
}

#[tokio::test]
async fn check_config_accepts_the_example() {
    let out = run(ifmatch().args(["check-config", "config/ifmatch.toml"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok: 2 routes");
}

#[tokio::test]
async fn check_config_lists_every_error() {
    let path = temp_file(
        "cli-bad.toml",
        r#"
        [server]
        listen = "nowhere"
        colour = "blue"

        [store]
        kind = "redis"

        [defaults]
        conflict_status = 418

        [[routes]]
        name = "a"
        upstream = "https://a.example"
        "#,
    );
    let out = run(ifmatch().arg("check-config").arg(&path)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for expected in [
        "5 errors",
        "server.listen",
        "server.colour: unknown field",
        "store.url: is required with kind = \"redis\"",
        "defaults.conflict_status: must be 409 or 412",
        "routes[0].upstream",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn check_config_refuses_a_lease_ttl_the_write_bounds_do_not_fit_in() {
    // 10 s revalidation + 40 s exchange + 3 x 1 s store calls = 53 s: a 50 s lease could lapse
    // while its write may still apply.
    let config = |lease_ttl: &str| {
        format!(
            r#"
            [server]
            response_timeout = "10s"
            write_outcome_timeout = "40s"

            [store]
            kind = "redis"
            url = "redis://127.0.0.1:6379"
            timeout = "1s"
            lease_ttl = "{lease_ttl}"

            [[routes]]
            name = "a"
            upstream = "http://127.0.0.1:3000"
            "#
        )
    };
    let path = temp_file("cli-lease-short.toml", &config("50s"));
    let out = run(ifmatch().arg("check-config").arg(&path)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("store.lease_ttl: must exceed the longest time a write holds its lease, 53s"),
        "{stderr}"
    );
    let path = temp_file("cli-lease-fits.toml", &config("54s"));
    let out = run(ifmatch().arg("check-config").arg(&path)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn check_config_reports_a_missing_file() {
    let out = run(ifmatch().args(["check-config", "no/such/file.toml"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read config file no/such/file.toml"));
}

#[tokio::test]
async fn check_config_shows_a_toml_error_once() {
    let path = temp_file("cli-not-toml.toml", "routes = [\n");
    let out = run(ifmatch().arg("check-config").arg(&path)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not valid toml"), "{stderr}");
    assert_eq!(stderr.matches("TOML parse error").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("unclosed array").count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_host_name_listener_gets_a_hint() {
    for flag in ["--listen", "--admin-listen"] {
        let out = run(ifmatch().args([
            "--upstream",
            "http://127.0.0.1:3000",
            flag,
            "localhost:8080",
        ]))
        .await;
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("127.0.0.1:8080"), "{flag}: {stderr}");
        assert!(stderr.contains("not resolved"), "{flag}: {stderr}");
    }
    let out = run(ifmatch().args(["demo", "--api-listen", "localhost:3001"])).await;
    assert!(
        text(&out.stderr).contains("127.0.0.1:3001"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn help_says_what_the_admin_listener_serves() {
    let out = run(ifmatch().arg("--help")).await;
    let help = text(&out.stdout);
    let admin = help
        .split("--admin-listen <ADDR>")
        .nth(1)
        .and_then(|rest| rest.split("--conflict-status").next())
        .expect("--admin-listen in --help");
    for expected in ["/healthz", "/readyz", "/metrics", "admin API"] {
        assert!(admin.contains(expected), "missing {expected:?} in:{admin}");
    }
}

#[tokio::test]
async fn help_lists_the_spec_flags() {
    let out = run(ifmatch().arg("--help")).await;
    assert!(out.status.success());
    let help = text(&out.stdout);
    for expected in [
        "--upstream <URL>",
        "IFMATCH_UPSTREAM",
        "--listen <ADDR>",
        "IFMATCH_LISTEN",
        "127.0.0.1:8080",
        "--admin-listen <ADDR>",
        "IFMATCH_ADMIN_LISTEN",
        "127.0.0.1:9901",
        "--conflict-status <STATUS>",
        "409",
        "412",
        "--require-if-match",
        "--config <FILE>",
        "IFMATCH_CONFIG",
        "--passthrough",
        "check-config",
        "demo",
    ] {
        assert!(help.contains(expected), "missing {expected:?} in:\n{help}");
    }
}

#[tokio::test]
async fn bad_arguments_fail_clearly() {
    let out = run(&mut ifmatch()).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nothing to proxy"));

    let out = run(ifmatch().args(["--upstream", "https://secure.example"])).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("https upstreams are not supported"));

    let out = run(ifmatch().args(["--upstream", "http://a:1", "--conflict-status", "418"])).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("418"));
}

/// Starts the proxy on ephemeral ports, finds them in its log, checks health, and stops it with
/// SIGTERM: a graceful shutdown exits 0.
#[cfg(unix)]
#[tokio::test]
async fn runs_and_stops_gracefully_on_sigterm() {
    let mut child = ifmatch()
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--passthrough",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ifmatch");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut admin = None;
    let mut proxy = None;
    tokio::time::timeout(TIMEOUT, async {
        while admin.is_none() || proxy.is_none() {
            let line = lines
                .next_line()
                .await
                .expect("read log")
                .expect("log line");
            let addr = || {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))
                    .map(str::to_owned)
            };
            if line.contains("admin listening") {
                admin = addr();
            } else if line.contains("proxy listening") {
                proxy = addr();
            }
        }
    })
    .await
    .expect("ifmatch logged its listeners");
    let (admin, proxy) = (admin.unwrap(), proxy.unwrap());

    let health = http_get(&admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The upstream (discard port) is down: 502 from the proxy itself.
    let down = http_get(&proxy, "/x").await;
    assert!(down.starts_with("HTTP/1.1 502"), "{down}");

    let pid = child.id().expect("pid").to_string();
    let kill = run(Command::new("kill").args(["-TERM", &pid])).await;
    assert!(kill.status.success());
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("exited in time")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

/// A one-shot HTTP/1.1 GET over a raw socket; returns the whole response.
async fn http_get(authority: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .expect("response in time")
}
