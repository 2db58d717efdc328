// A real `redis-server` on a loopback port, started and stopped by the test itself.
//
// The server runs under a small shell that kills it when its stdin closes: dropping the
// handle closes it, and so does the test process dying, so no server outlives its test run.
// Shared by the unit tests (`src/store/redis.rs`, through `include!`, hence plain comments)
// and the integration tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it was started (or to go away).
const STARTUP: Duration = Duration::from_secs(10);

/// A running `redis-server`; stopped when dropped.
pub struct RedisServer {
    port: u16,
    process: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    /// Starts a server on a free loopback port. Panics, saying why, if `redis-server` is not
    /// installed: these tests must not pass by skipping.
    pub fn start() -> Self {
        // Bind port 0 to have the kernel pick a free port, then release it for the server.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        Self::start_on(port)
    }

    /// Starts a server on `port` (to restart one where clients expect it).
    pub fn start_on(port: u16) -> Self {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed,
            "redis-server is not installed: these tests need a real one \
             (apt-get install -y redis-server; .ci/run does it)"
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "redis-server --port \"$0\" --bind 127.0.0.1 --save '' --appendonly no \
                 --loglevel warning & pid=$!; cat >/dev/null; kill $pid; wait $pid",
            )
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdin = child.stdin.take().expect("piped stdin");
        let server = Self {
            port,
            process: Some((child, stdin)),
        };
        let deadline = Instant::now() + STARTUP;
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {port} within {STARTUP:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Whether it answers PING right now.
    pub fn answers(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Runs one command through `redis-cli` and returns its output (for checks in tests).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
