//! The daemon built and run in this process (`Daemon::build` + `run_until`) on an env's config, its listener on a
//! free loopback port: for tests that call its HTTP API or drive the web console.

use segment_exporter::config::Config;
use segment_exporter::daemon::Daemon;
use tokio_util::sync::CancellationToken;

use super::Env;

pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Appends a `[daemon]` section (trigger folder in the env, a schedule that does not fire during a test, the
/// status listener given by the socket below) and `extra` TOML to the env's config, then serves it.
pub async fn serve(env: &Env, extra: &str) -> Served {
    let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    config.push_str(&format!(
        "\n[daemon]\nstatus_listen = \"off\"\ntrigger_dir = \"{}\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n{extra}",
        env.path("triggers").display()
    ));
    std::fs::write(env.path("config.toml"), config).unwrap();
    let config = Config::load(Some(&env.path("config.toml"))).unwrap().0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::build(config, Some(env.path("config.toml")), Some(listener)).await.unwrap();
    let base = format!("http://{}", daemon.status_address().unwrap());
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { daemon.run_until(shutdown).await.unwrap() });
    Served { base, stop, task }
}

impl Served {
    /// Stops the daemon and waits for it to return.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}
