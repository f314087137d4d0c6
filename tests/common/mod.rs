//! Test harness: a temp dir with its own store and config, a real sandbox server on a free loopback port, and the
//! real `segment-exporter` binary driven through `assert_cmd`.
#![allow(dead_code)]

pub mod daemon;
pub mod in_process;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use segment_exporter::sandbox::{Faults, Sandbox, SandboxOptions, SandboxStats};

pub const KEY: &str = "test-key-0123456789";

/// Sandbox options accepting `KEY`, to be completed with `..opts()`.
pub fn opts() -> SandboxOptions {
    SandboxOptions { api_keys: vec![KEY.into()], ..SandboxOptions::default() }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sandbox: Sandbox,
    pub base_url: String,
    _server: std::thread::JoinHandle<()>,
    /// The PostgreSQL database of an env whose store is there (`Env::on_postgres`), dropped with it.
    pub pg: Option<pg::Database>,
}

impl Env {
    pub fn new() -> Env {
        Env::with_sandbox(opts())
    }

    /// A temp dir with a config (small batches so tests exercise batching) and a sandbox with these options.
    pub fn with_sandbox(opts: SandboxOptions) -> Env {
        Self::with_config(opts, "")
    }

    pub fn with_config(opts: SandboxOptions, extra_iterable: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("[store]\npath = \"{}\"\n", dir.path().join("store.db").display());
        Self::with_store(dir, None, &store, opts, extra_iterable)
    }

    /// An env whose store is a PostgreSQL database of its own (`TEST_POSTGRES_URL`), with a master key file every
    /// process of the env reads, and leases short enough for takeovers within a test: renewed every second, lost
    /// after six, with a two-second Iterable timeout. `extra` goes after `[iterable]`, as for `with_config`.
    pub fn on_postgres(opts: SandboxOptions, extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = pg::Database::new();
        let key = dir.path().join("master.key");
        std::fs::write(&key, pg::random_hex_key()).unwrap();
        let store = format!(
            "[store]\nurl = \"{}\"\nmaster_key_file = \"{}\"\nlease_renew = \"1s\"\nlease_ttl = \"6s\"\nmax_connections = 6\n",
            db.url,
            key.display()
        );
        Self::with_store(dir, Some(db), &store, opts, &format!("timeout = \"2s\"\n{extra}"))
    }

    fn with_store(
        dir: tempfile::TempDir,
        pg: Option<pg::Database>,
        store: &str,
        opts: SandboxOptions,
        extra_iterable: &str,
    ) -> Env {
        let sandbox = Sandbox::new(opts);
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = sandbox.clone();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let (url, task) = handle.spawn().await.unwrap();
                tx.send(url).unwrap();
                let _ = task.await;
            });
        });
        let base_url = rx.recv_timeout(Duration::from_secs(10)).expect("sandbox started");
        // Small batches so tests exercise batching; a key `extra_iterable` sets itself wins.
        let defaults = [
            "batch_size = 50",
            "concurrency = 3",
            "requests_per_second = 500.0",
            "retry_min_delay = \"20ms\"",
            "retry_max_delay = \"500ms\"",
            "retry_max_attempts = 12",
        ];
        let mut iterable = String::new();
        for line in defaults {
            let key = line.split(' ').next().unwrap();
            if !extra_iterable.lines().any(|l| l.trim_start().starts_with(&format!("{key} "))) {
                iterable.push_str(line);
                iterable.push('\n');
            }
        }
        let config = format!("{store}\n[iterable]\n{iterable}{extra_iterable}\n");
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Env { dir, sandbox, base_url, _server: server, pg }
    }

    /// The first column of the first row of `sql` on this env's PostgreSQL store, as a number.
    pub fn pg_i64(&self, sql: &str) -> i64 {
        let url = &self.pg.as_ref().expect("a PostgreSQL env").url;
        block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// The first column of the first row of `sql` on this env's PostgreSQL store, as text.
    pub fn pg_text(&self, sql: &str) -> String {
        let url = &self.pg.as_ref().expect("a PostgreSQL env").url;
        block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Runs statements on this env's PostgreSQL store directly.
    pub fn pg_sql(&self, statements: &[&str]) {
        let url = &self.pg.as_ref().expect("a PostgreSQL env").url;
        block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
            for statement in statements {
                sqlx::query(statement).execute(&mut conn).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with this env's config and the API key in `ITERABLE_KEY`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("segment-exporter").unwrap();
        c.current_dir(self.dir.path())
            .env("SEGMENT_EXPORTER_CONFIG", self.path("config.toml"))
            .env("ITERABLE_KEY", KEY)
            .env_remove("RUST_LOG")
            .env_remove("SEGMENT_EXPORTER_MASTER_KEY")
            .timeout(Duration::from_secs(120));
        c
    }

    /// Runs the binary; returns its output without judging it.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs the binary and insists that it succeeds.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`{}` failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// Runs the binary with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no JSON ({e}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                text(&out.stdout),
                text(&out.stderr)
            )
        })
    }

    /// Adds the connection `iterable` pointing at the sandbox.
    pub fn add_connection(&self) {
        self.add_connection_with(&[]);
    }

    /// Adds the connection `iterable` with extra flags.
    pub fn add_connection_with(&self, extra: &[&str]) {
        let base = ["connection", "add", "iterable", "--api-key-env", "ITERABLE_KEY", "--base-url", &self.base_url];
        self.ok(&[&base[..], &["--accept-data-privacy"], extra].concat());
    }

    /// Segment `segment` from `source` (with `query`) and export `exp` of it sending the `tier` field.
    pub fn add_segment_and_export(&self, segment: &str, source: &str, query: Option<&str>) {
        let mut args = vec!["segment", "add", segment, "--source", source];
        if let Some(q) = query {
            args.extend(["--query", q]);
        }
        self.ok(&args);
        let export =
            ["export", "add", "exp", "--connection", "iterable", "--segment", segment, "--email-field", "email"];
        self.ok(&[&export[..], &["--field", "tier"]].concat());
    }

    /// Writes a CSV of `email,tier` rows.
    pub fn write_csv(&self, name: &str, rows: &[(&str, &str)]) -> PathBuf {
        let mut text = String::from("email,tier\n");
        for (email, tier) in rows {
            text.push_str(&format!("{email},{tier}\n"));
        }
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Connection, one CSV segment named `segment` and export `exp` with the `tier` field.
    pub fn setup_csv_export(&self, segment: &str, emails: &[String]) -> PathBuf {
        let rows: Vec<(&str, &str)> = emails.iter().map(|e| (e.as_str(), "gold")).collect();
        let csv = self.write_csv("members.csv", &rows);
        self.add_connection();
        self.add_segment_and_export(segment, &format!("csv:{}", csv.display()), None);
        csv
    }

    /// Starts `export run exp` in the background, output discarded (for kill and overlap tests).
    pub fn spawn_run(&self) -> std::process::Child {
        self.spawn(&["export", "run", "exp"])
    }

    /// Starts the binary with `args` in the background, output discarded.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("segment-exporter"))
            .current_dir(self.dir.path())
            .env("SEGMENT_EXPORTER_CONFIG", self.path("config.toml"))
            .env("ITERABLE_KEY", KEY)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Freezes the sandbox: every `/api` request waits until `release`, so a run in flight stays in flight for as
    /// long as a test looks at it, however slow the machine.
    pub fn hold(&self) {
        self.sandbox.set_faults(Faults { hold: Some(true), ..Faults::default() });
    }

    /// Lets the requests `hold` held go on.
    pub fn release(&self) {
        self.sandbox.set_faults(Faults { hold: Some(false), ..Faults::default() });
    }

    /// Waits until the sandbox has received at least `n` subscribers.
    pub fn wait_for_subscribers(&self, n: u64, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.stats().subscribers_received < n {
            assert!(std::time::Instant::now() < deadline, "the run never got going: {:?}", self.stats());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs export `exp` and insists that it succeeds and that list `list` then holds exactly `members`.
    pub fn run_exact(&self, list: &str, members: &[String]) -> serde_json::Value {
        let report = self.json(&["export", "run", "exp"]);
        assert_eq!(report["status"], "succeeded", "{report}");
        assert_eq!(self.members(list), sorted(members.to_vec()));
        report
    }

    pub fn list_id(&self, name: &str) -> Option<i64> {
        let lists = self.sandbox_lists();
        lists.into_iter().find(|(_, n)| n == name).map(|(id, _)| id)
    }

    /// (id, name) of every list in the sandbox, via the real API.
    pub fn sandbox_lists(&self) -> Vec<(i64, String)> {
        let body: serde_json::Value = blocking_get(&format!("{}/api/lists", self.base_url));
        body["lists"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["id"].as_i64().unwrap(), l["name"].as_str().unwrap().to_string()))
            .collect()
    }

    /// Sorted members of the sandbox list with this name.
    pub fn members(&self, list: &str) -> Vec<String> {
        let id = self.list_id(list).unwrap_or_else(|| panic!("no list named {list}"));
        self.sandbox.list_members(id).unwrap()
    }

    /// Deletes a list through the real API, as someone working in Iterable might.
    pub fn delete_list(&self, id: i64) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async {
            reqwest::Client::new()
                .delete(format!("{}/api/lists/{id}", self.base_url))
                .header("Api-Key", KEY)
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "deleting list {id}: {status}");
    }

    pub fn stats(&self) -> SandboxStats {
        self.sandbox.stats()
    }

    /// Sends `body` to an Iterable endpoint of the sandbox through the real API, as someone working in Iterable
    /// might, insists on a 2xx answer and returns its JSON.
    pub fn post_api(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}{path}", self.base_url))
                .header("Api-Key", KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json().await.unwrap()
        })
    }

    /// Creates a list of any type through the sandbox's control endpoint (no key needed), as someone working in
    /// Iterable's UI might; returns its id.
    pub fn create_list_of_type(&self, name: &str, list_type: &str) -> i64 {
        let answer: serde_json::Value = block_on(async {
            reqwest::Client::new()
                .post(format!("{}/_sandbox/lists", self.base_url))
                .json(&serde_json::json!({"name": name, "listType": list_type}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        answer["listId"].as_i64().unwrap()
    }

    /// Creates a list by hand through the real API; returns its id.
    pub fn create_list_by_hand(&self, name: &str) -> i64 {
        self.post_api("/api/lists", serde_json::json!({ "name": name }))["listId"].as_i64().unwrap()
    }

    /// Subscribes members to a list by hand through the real API.
    pub fn subscribe_by_hand(&self, list_id: i64, emails: &[&str]) {
        let subscribers: Vec<_> = emails.iter().map(|e| serde_json::json!({ "email": e })).collect();
        self.post_api("/api/lists/subscribe", serde_json::json!({ "listId": list_id, "subscribers": subscribers }));
    }

    /// Runs statements on this env's store file directly, as another tool (or an older version) would.
    pub fn store_sql(&self, statements: &[&str]) {
        block_on(async {
            use sqlx::ConnectOptions;
            let mut conn =
                sqlx::sqlite::SqliteConnectOptions::new().filename(self.path("store.db")).connect().await.unwrap();
            for statement in statements {
                sqlx::query(statement).execute(&mut conn).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
        })
    }

    /// The first column of the first row of `sql` on this env's store, as a number.
    pub fn store_i64(&self, sql: &str) -> i64 {
        block_on(async {
            use sqlx::ConnectOptions;
            let mut conn =
                sqlx::sqlite::SqliteConnectOptions::new().filename(self.path("store.db")).connect().await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }
}

/// Runs a future to its end on a runtime of its own (tests are synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn blocking_get(url: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        reqwest::Client::new().get(url).header("Api-Key", KEY).send().await.unwrap().json().await.unwrap()
    })
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `n` emails: `user{start}@example.com` ..
pub fn emails(start: usize, n: usize) -> Vec<String> {
    (start..start + n).map(|i| format!("user{i}@example.com")).collect()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Requests the sandbox saw on an endpoint label such as "lists.subscribe".
pub fn requests(stats: &SandboxStats, endpoint: &str) -> u64 {
    stats.requests.get(endpoint).copied().unwrap_or(0)
}

/// Creates a SQLite file with a `profiles(email, tier)` table holding `rows`.
pub fn write_sqlite(path: &Path, rows: &[(Option<&str>, &str)]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
        let mut conn = opts.connect().await.unwrap();
        sqlx::query("DROP TABLE IF EXISTS profiles").execute(&mut conn).await.unwrap();
        sqlx::query("CREATE TABLE profiles (email TEXT, tier TEXT)").execute(&mut conn).await.unwrap();
        for (email, tier) in rows {
            sqlx::query("INSERT INTO profiles VALUES (?, ?)").bind(email).bind(tier).execute(&mut conn).await.unwrap();
        }
    });
}
