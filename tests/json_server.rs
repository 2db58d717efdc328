//! `ifmatch storm` through the proxy against a real third-party API: json-server 0.17.4 (an
//! Express app with weak ETags, which creates with POST and answers a PUT to a missing id 404).
//!
//! Needs `npm` (and the npm registry, once: the package is cached under the target dir). Without
//! either, or when the install takes more than a minute, the test says so and passes without
//! running: `cargo test` must not depend on the network being fast. `IFMATCH_SKIP_NPM=1` skips it
//! outright.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ifmatch::storm::{self, Create, StormArgs};
use support::{Proxy, config, unused_addr};
use tokio::process::{Child, Command};

const VERSION: &str = "0.17.4";
const INSTALL_BOUND: Duration = Duration::from_secs(60);

/// Where json-server is installed (once per target dir), or why it cannot be.
async fn installed() -> Result<PathBuf, String> {
    if std::env::var_os("IFMATCH_SKIP_NPM").is_some() {
        return Err("IFMATCH_SKIP_NPM is set".to_owned());
    }
    let node = Command::new("node").arg("--version").output().await;
    if !node.is_ok_and(|out| out.status.success()) {
        return Err("node is not installed".to_owned());
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("json-server-{VERSION}"));
    let bin = dir.join("node_modules/.bin/json-server");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let install = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .arg(format!("json-server@{VERSION}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(INSTALL_BOUND, install).await {
        Err(_) => Err(format!("npm install took more than {INSTALL_BOUND:?}")),
        Ok(Err(error)) => Err(format!("cannot run npm: {error}")),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "npm install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(_)) if bin.exists() => Ok(bin),
        Ok(Ok(_)) => Err(format!("npm install left no {}", bin.display())),
    }
}

/// json-server on `addr`, serving a fresh `items` collection with one item, id 1.
async fn json_server(bin: &Path, addr: SocketAddr) -> Child {
    let db = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("json-server-db-{}.json", std::process::id()));
    std::fs::write(
        &db,
        r#"{"items": [{"id": 1, "name": "widget", "counter": 0}]}"#,
    )
    .unwrap();
    let child = Command::new(bin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--quiet",
        ])
        .arg(&db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn json-server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "json-server did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

fn args(target: String) -> StormArgs {
    let mut args = StormArgs::new(target);
    args.writers = 8;
    args.keys = 2;
    args.requests = Some(150);
    args.duration = Duration::from_secs(30);
    args.max_retries = 1000;
    args.no_progress = true;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_through_the_proxy_loses_nothing_on_json_server() {
    let bin = match installed().await {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED storm against json-server {VERSION}: {why}");
            return;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), async {
        let addr = unused_addr().await;
        let _server = json_server(&bin, addr).await;
        let proxy = Proxy::spawn(config(addr)).await;

        // Storm's default, PUT-create, is what json-server refuses: the error says what to do.
        let refused = storm::run(args(proxy.url("/items")), std::future::pending())
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("--create post"), "{refused}");

        let mut posted = args(proxy.url("/items"));
        posted.create = Create::Post;
        let report = storm::run(posted, std::future::pending())
            .await
            .expect("storm with --create post");
        assert_eq!(report.lost_updates, 0, "{}", report.render_table());
        assert!(report.commits > 0, "{}", report.render_table());
        for key in &report.per_key {
            assert!(key.path.starts_with("/items/"), "{}", key.path);
            assert_ne!(key.path, "/items/1");
        }

        let mut existing = args(proxy.url("/items"));
        existing.keys_list = vec!["1".to_owned()];
        existing.create = Create::None;
        let report = storm::run(existing, std::future::pending())
            .await
            .expect("storm on the existing item");
        assert_eq!(report.lost_updates, 0, "{}", report.render_table());
        assert_eq!(report.per_key[0].path, "/items/1");
        assert_eq!(report.per_key[0].final_counter, report.commits as i64);
    })
    .await
    .expect("the json-server storm finished in time");
}
