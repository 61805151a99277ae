//! A real `redis-server` for the tests, and the gate that decides whether they run.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Whether the Redis tests run: `CLIENT_AUTH_REDIS=1` and `redis-server` installed.
pub(crate) fn redis_enabled() -> bool {
    if std::env::var("CLIENT_AUTH_REDIS").as_deref() != Ok("1") {
        // Written to stderr directly so libtest's capture does not hide it; once per binary.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "Redis tests skipped: install redis-server and set CLIENT_AUTH_REDIS=1 to run them"
            );
        });
        return false;
    }
    match std::process::Command::new("redis-server")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => true,
        _ => panic!(
            "CLIENT_AUTH_REDIS=1 but `redis-server` is not installed (apt-get install redis-server)"
        ),
    }
}

/// `redis-server` on a free loopback port without persistence, killed when dropped.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    process: Option<std::process::Child>,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            process: None,
        };
        server.restart();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on the same port, empty.
    pub(crate) fn restart(&mut self) {
        assert!(self.process.is_none());
        let process = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG"
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
