//! The real `segment-exporter daemon` as a child process on an env's config: its log captured, its listener's
//! address read from the log (so `status_listen` may use port 0), and killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Env, KEY};

pub struct Daemon {
    pub child: Child,
    pub logs: Arc<Mutex<String>>,
    /// `http://HOST:PORT` of the listener (a wildcard address read as 127.0.0.1).
    pub status: String,
    /// The listener's port.
    pub port: u16,
    /// Whether it serves HTTPS.
    pub https: bool,
}

const LISTENING: &str = "Status endpoint listening. address=";

impl Daemon {
    pub fn start(env: &Env) -> Daemon {
        Daemon::start_command(env, StdCommand::new(assert_cmd::cargo::cargo_bin("segment-exporter")))
    }

    /// The daemon started by a shell that first sets its descriptor limit (soft and hard) to `limit`, as a
    /// service manager would.
    pub fn start_with_descriptor_limit(env: &Env, limit: u32) -> Daemon {
        let mut shell = StdCommand::new("sh");
        shell.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\"")]);
        shell.arg(assert_cmd::cargo::cargo_bin("segment-exporter"));
        Daemon::start_command(env, shell)
    }

    fn start_command(env: &Env, mut command: StdCommand) -> Daemon {
        let mut child = command
            .current_dir(env.dir.path())
            .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
            .env("ITERABLE_KEY", KEY)
            .env_remove("RUST_LOG")
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (address, https) = loop {
            let text = logs.lock().unwrap().clone();
            if let Some(pos) = text.find(LISTENING) {
                let line = text[pos + LISTENING.len()..].lines().next().unwrap().to_string();
                break (line.split_whitespace().next().unwrap().to_string(), line.contains("https=true"));
            }
            assert!(Instant::now() < deadline, "daemon did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let address: std::net::SocketAddr = address.parse().unwrap();
        let port = address.port();
        let host = if address.ip().is_unspecified() { "127.0.0.1".to_string() } else { address.ip().to_string() };
        let status = format!("http://{host}:{port}");
        let d = Daemon { child, logs, status, port, https };
        d.wait_for_log("Daemon ready.", Duration::from_secs(30));
        d
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(needle) {
            assert!(Instant::now() < deadline, "no `{needle}` in the daemon's log:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = reqwest::get(format!("{}{path}", self.status)).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    pub fn signal(&self, sig: &str) {
        let ok = StdCommand::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not exit in {within:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
