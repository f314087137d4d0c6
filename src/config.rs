//! The configuration file: one strict struct tree, each field documented with its unit and default.
//!
//! What the pipeline *is* (store, Iterable pacing, guards, log format) lives here; how one command runs lives in
//! CLI flags. Defaults are defined once, in the `Default` impls below, and `config/segment-exporter.toml` shows them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub iterable: IterableConfig,
    pub sync: SyncConfig,
    pub log: LogConfig,
    pub daemon: DaemonConfig,
    pub sources: SourcesConfig,
    pub notify: NotifyConfig,
    pub smtp: SmtpConfig,
}

/// Where connections, exports, member state and run history are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Path of the SQLite store, created on first use. Relative paths are relative to the working directory.
    /// Default: `segment-exporter.db`. Not used when `url` (or `SEGMENT_EXPORTER_STORE_URL`) names a PostgreSQL
    /// store.
    pub path: PathBuf,
    /// A PostgreSQL store instead of the SQLite file, shared by any number of daemons:
    /// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=verify-full]`. Its password never goes here (`password_env`
    /// or `password_file`); `SEGMENT_EXPORTER_STORE_URL` (which may carry one) takes precedence. Default: none.
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL store's password.
    pub password_env: Option<String>,
    /// File holding the PostgreSQL store's password (its first line).
    pub password_file: Option<PathBuf>,
    /// Connections each process keeps open to a PostgreSQL store, at most. Default 10.
    pub max_connections: u32,
    /// How often a daemon on a PostgreSQL store renews the lease of each run it holds (and publishes its
    /// progress). Default 5s.
    #[serde(with = "humantime_serde")]
    pub lease_renew: Duration,
    /// A lease not renewed for this long is lost, and another daemon takes the run over. At least
    /// `iterable.timeout` plus twice `lease_renew`. Default 60s.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// File holding the 32-byte master key that encrypts API keys given with `--api-key-stdin` and database
    /// passwords given in a postgres source URL. Created with mode 0600 when missing (never while secrets sealed
    /// with another key are stored, and never for a PostgreSQL store). `SEGMENT_EXPORTER_MASTER_KEY` (64 hex
    /// characters) overrides it. Default: `<store>.key`.
    pub master_key_file: Option<PathBuf>,
    /// Runs that finished longer ago than this are pruned with their per-list counts and invalid/rejected members
    /// (each export's latest run is always kept). Default 90d.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// Audit rows (who changed what, when, from where) older than this are pruned whenever a row is added.
    /// Default 400d.
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("segment-exporter.db"),
            url: None,
            password_env: None,
            password_file: None,
            max_connections: 10,
            lease_renew: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(60),
            master_key_file: None,
            history_retention: Duration::from_secs(90 * 24 * 3600),
            audit_retention: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// The environment variable that names a PostgreSQL store (password included, if need be), over `store.url`.
pub const STORE_URL_ENV: &str = "SEGMENT_EXPORTER_STORE_URL";

impl StoreConfig {
    /// The master key file, beside the store unless configured.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| with_suffix(&self.path, ".key"))
    }

    /// Directory of the per-export run locks, beside the store.
    pub fn lock_dir(&self) -> PathBuf {
        with_suffix(&self.path, ".locks")
    }

    /// The PostgreSQL store's URL as configured (`SEGMENT_EXPORTER_STORE_URL`, else `url`), or None for SQLite.
    /// It may carry a password: never show it whole (`redacted_url`).
    pub fn postgres_url(&self) -> Option<String> {
        std::env::var(STORE_URL_ENV).ok().filter(|u| !u.trim().is_empty()).or_else(|| self.url.clone())
    }

    /// Which store this is, for people: the SQLite file, or the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self.postgres_url() {
            Some(url) => format!("PostgreSQL {}", redacted_url(&url)),
            None => format!("SQLite {}", self.path.display()),
        }
    }
}

/// A URL with its password (if any) replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Defaults for talking to Iterable; every connection uses them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IterableConfig {
    /// Members per subscribe or unsubscribe request. Default 1000 (what other integrations use).
    pub batch_size: usize,
    /// Largest request body, in bytes; a batch is cut earlier when its JSON would exceed it. Default 4000000.
    pub max_body_bytes: usize,
    /// Requests in flight at once per run. Default 4.
    pub concurrency: usize,
    /// Requests per second per connection (token bucket). Halved once per burst of 429s, regained within seconds
    /// once they stop. Default 10.
    pub requests_per_second: f64,
    /// Timeout of one HTTP request. Default 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per request before a retryable failure fails the run (the first try included). Default 8.
    pub retry_max_attempts: usize,
    /// First retry delay; doubles each attempt, with full jitter. Default 500ms.
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    /// Longest retry delay, also the cap on a server's `Retry-After`. Default 60s.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// How long a newly created list may answer `invalidListId` before that counts as an error. Default 30s.
    #[serde(with = "humantime_serde")]
    pub new_list_grace: Duration,
}

impl Default for IterableConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_body_bytes: 4_000_000,
            concurrency: 4,
            requests_per_second: 10.0,
            timeout: Duration::from_secs(30),
            retry_max_attempts: 8,
            retry_min_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(60),
            new_list_grace: Duration::from_secs(30),
        }
    }
}

/// How runs plan and guard their changes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// A run that would unsubscribe more than this share (0 to 1) of a list's members stops before removing anyone,
    /// unless run with `--allow-mass-removal`. Default 0.5.
    pub mass_removal_share: f64,
    /// A run that would put on a list more new members (members not on it by the export's memory) than this many
    /// times the members it records there stops before adding anyone, unless run with `--allow-mass-addition`.
    /// 1.0 lets a list at most double in one run. Default 1.0.
    pub mass_addition_share: f64,
    /// The addition guard leaves alone a list on which the export's memory records fewer members than this.
    /// Default 100.
    pub mass_addition_min_list_size: u64,
    /// Invalid and rejected members kept per run for `runs show --rejected`. Default 100000.
    pub max_recorded_issues: u64,
    /// Invalid and rejected members are kept for the last this many runs of each export; older runs keep only
    /// their counts. Default 20.
    pub keep_issue_runs: u32,
    /// A run with nothing to send makes no request at all, unless its lists were last seen in Iterable longer ago
    /// than this: then it checks them (one `GET /api/lists`) and recreates and refills a deleted one. Default 24h.
    #[serde(with = "humantime_serde")]
    pub list_check_interval: Duration,
    /// A member Iterable refused (e.g. `invalidDataEmails`), or too large to send, is sent again by the next run in
    /// which its fields changed, and otherwise once this long has passed since it was refused; "0s" retries on
    /// every run. Members Iterable calls forgotten are never retried. Default 24h.
    #[serde(with = "humantime_serde")]
    pub retry_rejected_interval: Duration,
    /// A verify (`export verify`) counts members changed this long before it read a list as settling, never as
    /// missing or lingering: Iterable shows list changes with a delay. Default 15m.
    #[serde(with = "humantime_serde")]
    pub verify_settle: Duration,
    /// How often the daemon verifies each export's lists after a run's sends (report only, never a repair), or
    /// "off". Default "off".
    #[serde(with = "off_or_duration")]
    pub verify_interval: Option<Duration>,
}

/// A duration in humantime form ("7d"), or "off" for none.
mod off_or_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_str("off"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(None);
        }
        humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e}; give a duration such as \"7d\", or \"off\"")))
    }
}

impl SyncConfig {
    /// Members refused at or before this Unix time are due to be sent again.
    pub fn retry_rejected_until(&self, now: chrono::DateTime<chrono::Utc>) -> i64 {
        let interval = i64::try_from(self.retry_rejected_interval.as_secs()).unwrap_or(i64::MAX);
        now.timestamp().saturating_sub(interval)
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            mass_removal_share: 0.5,
            mass_addition_share: 1.0,
            mass_addition_min_list_size: 100,
            max_recorded_issues: 100_000,
            keep_issue_runs: 20,
            list_check_interval: Duration::from_secs(24 * 3600),
            retry_rejected_interval: Duration::from_secs(24 * 3600),
            verify_settle: Duration::from_secs(15 * 60),
            verify_interval: None,
        }
    }
}

/// The long-running service: schedules, trigger files, concurrency, shutdown and the status listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// When exports with schedule `refresh` run: a cron expression with seconds first. Default "0 0 * * * *"
    /// (every hour, on the hour).
    pub refresh_schedule: String,
    /// Time zone of every schedule, as an IANA name such as "Europe/Berlin". Default "UTC".
    pub time_zone: String,
    /// Directory watched for trigger files: a file named after an export (or `all`) runs it; other files are left
    /// alone. It must not be, or contain, the folder of the store, the master key or the config file. Relative
    /// paths are relative to the working directory. Default "triggers".
    pub trigger_dir: PathBuf,
    /// How often the trigger directory is also scanned, for file systems that miss events. Default 1s.
    #[serde(with = "humantime_serde")]
    pub trigger_poll_interval: Duration,
    /// How often the store is checked for exports added, changed or removed with the CLI, and the TLS files for a
    /// renewal. Default 3s.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Exports running side by side at most. Default 2.
    pub max_concurrent_runs: usize,
    /// At start-up, run once every export whose scheduled run was missed while the daemon was down. Default true.
    pub run_missed_on_start: bool,
    /// On SIGTERM or SIGINT, how long batches in flight may take to finish before the daemon (or `export run`)
    /// stops the run anyway and exits. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Address of the HTTP listener (/healthz, /readyz, /metrics, /status and the API under /api/v1), or "off".
    /// Off loopback it needs `tls_cert` and `tls_key`, or `allow_plain_http`. Default "127.0.0.1:9185".
    pub status_listen: String,
    /// PEM certificate chain (the server's certificate first) to serve HTTPS with; set together with `tls_key`.
    /// Read at start-up and again when the files change (a renewal); relative paths are relative to the working
    /// directory. Default none (plain HTTP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback, because something in front of the daemon does TLS (a
    /// reverse proxy), or the port is only reachable from this host (a container whose port is published on the
    /// host's loopback). Default false: off loopback, the daemon refuses to start without TLS.
    pub allow_plain_http: bool,
    /// File holding a token (its first line, at least 32 characters, e.g. from `openssl rand -hex 32`) that reads
    /// `/metrics` and `/status` and nothing else: for a Prometheus scraper, which then holds no account's power.
    /// Off loopback those two need it or an administrator's token. Read at start-up. Default none.
    pub metrics_token_file: Option<PathBuf>,
    /// Reverse proxies (IP addresses, or networks such as "10.0.0.0/8") whose X-Forwarded-For, X-Forwarded-Proto
    /// and X-Forwarded-Host headers are believed: the client's address behind them is what the audit records and
    /// failed sign-ins are throttled by, and a browser that reached the proxy over HTTPS gets a Secure session
    /// cookie. Headers from any other peer are ignored. Default none.
    pub trusted_proxies: Vec<String>,
    /// The host names people and proxies reach the listener by, besides `localhost` (e.g. "exports.example.com";
    /// behind a trusted proxy, the host it forwards). A request naming any other host name is refused with 421
    /// before it reaches anything, so that a web page on another name cannot read the service through DNS
    /// rebinding; IP addresses are always accepted, and `/healthz` and `/readyz` answer whatever the host.
    /// Names only: no scheme, port or path. Default none.
    pub public_hosts: Vec<String>,
    /// The address people open the console at, e.g. "https://exports.example.com": notifications link to runs
    /// under it, and its host counts as one of `public_hosts`. Default none (messages carry no link).
    pub public_url: Option<String>,
    /// Client connections the listener keeps open at once. A new client beyond it takes the place of the
    /// connection idle longest, or waits until one is free when none is idle. Never more than the descriptor limit
    /// (raised at start to its hard limit) less 128 kept for the store, the trigger watcher, sources and
    /// Iterable. Default 512.
    pub max_connections: usize,
    /// A client connection is closed when a request's header has not fully arrived this long after the
    /// connection opened (the TLS handshake included) or after its previous answer: it bounds a silent or slow
    /// client and an idle kept-alive connection alike. Default 30s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A web console session unused for this long ends (the next request answers 401). Default 30m.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A web console session ends this long after sign-in, however busy. Default 12h.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            refresh_schedule: "0 0 * * * *".into(),
            time_zone: "UTC".into(),
            trigger_dir: PathBuf::from("triggers"),
            trigger_poll_interval: Duration::from_secs(1),
            reload_interval: Duration::from_secs(3),
            max_concurrent_runs: 2,
            run_missed_on_start: true,
            shutdown_grace: Duration::from_secs(30),
            status_listen: "127.0.0.1:9185".into(),
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
            metrics_token_file: None,
            trusted_proxies: Vec::new(),
            public_hosts: Vec::new(),
            public_url: None,
            max_connections: 512,
            idle_timeout: Duration::from_secs(30),
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

impl DaemonConfig {
    /// The configured time zone.
    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        self.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!(
                "daemon.time_zone '{}' is not an IANA time zone name; use e.g. \"UTC\" or \"Europe/Berlin\"",
                self.time_zone
            )
        })
    }

    /// `trusted_proxies`, parsed; the error names every entry that is neither an address nor a network.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        let mut bad = Vec::new();
        let nets = self
            .trusted_proxies
            .iter()
            .filter_map(|entry| {
                let text = entry.trim();
                let net =
                    text.parse::<ipnet::IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(Into::into));
                if net.is_none() {
                    bad.push(format!("'{entry}'"));
                }
                net
            })
            .collect();
        if bad.is_empty() {
            Ok(nets)
        } else {
            Err(format!(
                "daemon.trusted_proxies: {} not an IP address or network; use e.g. \"127.0.0.1\" or \"172.16.0.0/12\"",
                are(&bad)
            ))
        }
    }

    /// The host names a request may name in its `Host` (IP addresses aside): `localhost` and `public_hosts`,
    /// lower case and without a final dot.
    pub fn known_host_names(&self) -> impl Iterator<Item = String> + '_ {
        let public_url_host = self.public_url().and_then(|u| u.host_str().map(str::to_string));
        std::iter::once("localhost")
            .chain(self.public_hosts.iter().map(String::as_str))
            .map(host_name)
            .chain(public_url_host.map(|h| host_name(&h)))
    }

    /// `public_url`, parsed (None when unset or not an http(s) URL: `problems` names that).
    pub fn public_url(&self) -> Option<url::Url> {
        let url = url::Url::parse(self.public_url.as_deref()?.trim()).ok()?;
        (matches!(url.scheme(), "http" | "https") && url.host_str().is_some()).then_some(url)
    }

    /// `public_hosts` entries that are not host names, quoted, for the problem that names them.
    fn unusable_public_hosts(&self) -> Vec<String> {
        let usable = |entry: &str| match url::Host::parse(entry.trim()) {
            Ok(url::Host::Domain(name)) => {
                name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            }
            Ok(_) => true,
            Err(_) => false,
        };
        self.public_hosts.iter().filter(|e| !usable(e)).map(|e| format!("'{e}'")).collect()
    }

    /// `session_idle_timeout` as a span of calendar time (the longest one for a timeout beyond it).
    pub fn session_idle(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.session_idle_timeout).unwrap_or(chrono::Duration::MAX)
    }

    /// The status listener address, or None when it is off.
    pub fn status_addr(&self) -> Option<&str> {
        let a = self.status_listen.trim();
        (!a.is_empty() && a != "off").then_some(a)
    }
}

/// Quoted entries as the subject of a problem: "'a' is", "'a', 'b' are".
fn are(entries: &[String]) -> String {
    match entries {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(", ")),
    }
}

/// A host name as `known_host_names` holds it, and as a request's host is compared with them: as a browser sends
/// it (lower case, international names in their `xn--` form), without a final dot (`Exports.Example.com.` is
/// `exports.example.com`).
pub fn host_name(name: &str) -> String {
    let name = name.trim().trim_end_matches('.');
    url::Host::parse(name).map_or_else(|_| name.to_ascii_lowercase(), |host| host.to_string())
}

/// Notifications: when they are told again, and how long and how often their delivery is tried.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// A condition that goes on (an export that keeps failing, a list still rejecting members) is told again after
    /// this long, at its next run. Default 24h.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// A notification not delivered this long after its event is given up (and shown so in `notify log`).
    /// Default 24h.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// The `rejected` event is raised when more than this share (0 to 1) of the members a run planned to send were
    /// rejected by Iterable or invalid. Default 0.05.
    pub rejected_share: f64,
    /// How long one delivery may take (connecting, sending, the receiver's answer). Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The pause before the first retry of a delivery; it doubles (with full jitter) up to `retry_max_delay`.
    /// Default 5s.
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    /// The longest pause between two attempts. Default 10m.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// How often the daemon looks for notifications due (it is also woken at each run's end). Default 1s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long `export run` (without a daemon) tries to deliver its own notifications before it exits; what is
    /// left stays in the outbox for the daemon or the next run. Default 5s.
    #[serde(with = "humantime_serde")]
    pub run_wait: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            repeat_interval: Duration::from_secs(24 * 3600),
            give_up_after: Duration::from_secs(24 * 3600),
            rejected_share: 0.05,
            timeout: Duration::from_secs(10),
            retry_min_delay: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
            run_wait: Duration::from_secs(5),
        }
    }
}

/// The mail server email notifications go through.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// The server's host name. Default none (email channels cannot send).
    pub host: Option<String>,
    /// Its port. Default by `tls`: 587 for starttls, 465 for tls, 25 for none.
    pub port: Option<u16>,
    /// `starttls` (upgrade a plain connection, required), `tls` (TLS from the start) or `none` (plain: a relay on
    /// this host only). Default starttls.
    pub tls: SmtpTls,
    /// The account to sign in with. Default none (no sign-in).
    pub user: Option<String>,
    /// Environment variable holding its password. Default none.
    pub password_env: Option<String>,
    /// File holding its password (its first line). Default none.
    pub password_file: Option<PathBuf>,
    /// The sender, e.g. "segment-exporter <exports@example.com>". Required to send email.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

impl SmtpConfig {
    /// The port, given or the usual one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

/// Where segments may read from when they are added or changed through the HTTP API.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Folders whose files (and the files of their subfolders) the HTTP API may name in a file source (`sqlite:`,
    /// `csv:`, `jsonl:`). A path is resolved when the segment is saved (`..` and symbolic links followed) and must
    /// then lie inside one of these folders; every later read of a segment saved over HTTP opens it again, following
    /// no link, and only inside one of these folders as they are then (see `crate::source::Reach`), so that no
    /// request can read the master key, the store or any other file through a segment. Segments saved from the CLI,
    /// by the operator on the host, are not limited. Default: none (file sources come from the CLI only; postgres
    /// sources are accepted from the API).
    pub allowed_dirs: Vec<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (readable, for terminals) or `json` (one object per line, for journald and log collectors).
    /// Default human.
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax, e.g. `info` or `segment_exporter=debug`. `RUST_LOG` overrides it.
    /// Default info.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// A configuration that could not be read or that does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the config file {path}: {source}. Check the path given with --config or $SEGMENT_EXPORTER_CONFIG."
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the config file {path} has {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// Where the config came from, for messages.
pub const DEFAULT_CONFIG_PATH: &str = "config/segment-exporter.toml";

impl Config {
    /// Reads the config: the given path, else `$SEGMENT_EXPORTER_CONFIG` (handled by clap), else
    /// `config/segment-exporter.toml` when present, else built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
        };
        match path {
            None => Ok((Config::default(), None)),
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let config = Config::parse(&text, &path)?;
                Ok((config, Some(path)))
            }
        }
    }

    /// Parses and validates config text; `path` is only used in messages.
    ///
    /// Every problem of the file is reported in one pass: a key that cannot be read (unknown, wrong type, bad
    /// value) is noted with its dotted path and set aside, the rest is read again, and the values are then checked
    /// against the rules. Only a TOML syntax error stops at once, since nothing after it can be read.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let mut problems = Vec::new();
        let config = loop {
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(e) => {
                    let key = e.path().to_string();
                    problems.push(format!("{key}: {}", with_example(e.inner().message().trim())));
                    // A key that cannot be set aside would fail the same way again: report what we have.
                    if !remove_key(&mut table, e.path()) || problems.len() > 100 {
                        return Err(ConfigError::Invalid { path: path.to_path_buf(), problems });
                    }
                }
            }
        };
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_path_buf(), problems })
        }
    }

    /// What is wrong with `[store]`: a PostgreSQL URL that does not parse or carries its password in the file, and
    /// leases too short for the Iterable timeout (a run taken over while a request of the old holder may still
    /// land would leave members no memory records).
    fn store_problems(&self) -> Vec<String> {
        let (s, mut p) = (&self.store, Vec::new());
        if let Some(url) = &s.url {
            match url::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql") => p.push(format!(
                    "store.url must be a postgres:// URL (e.g. \"postgres://segment_exporter@db.internal/exports\"), not {}",
                    redacted_url(url)
                )),
                Ok(u) if u.password().is_some() => p.push(
                    "store.url carries a password: take it out of the file and give it with store.password_env or \
                     store.password_file (or set the whole URL in SEGMENT_EXPORTER_STORE_URL)"
                        .into(),
                ),
                Ok(_) => {}
                Err(e) => p.push(format!("store.url is not a URL ({e}); write e.g. \"postgres://USER@HOST/DATABASE\"")),
            }
        }
        if s.password_env.is_some() && s.password_file.is_some() {
            p.push("store.password_env and store.password_file both set: keep one".into());
        }
        if s.max_connections < 2 {
            p.push(format!("store.max_connections is {}; use at least 2 (10 is the default)", s.max_connections));
        }
        if s.lease_renew.is_zero() {
            p.push("store.lease_renew is 0; use a duration such as \"5s\" (the default)".into());
        }
        let needed = self.iterable.timeout + 2 * s.lease_renew;
        // Leases are taken on a PostgreSQL store only (SQLite has its file locks).
        if s.postgres_url().is_some() && s.lease_ttl < needed {
            p.push(format!(
                "store.lease_ttl ({}) is shorter than iterable.timeout plus twice store.lease_renew ({}): a daemon \
                 holding a run sends a request only while its lease has at least iterable.timeout plus \
                 store.lease_renew left, so a shorter lease could never send, and a run taken over could meet a \
                 request of its old holder landing late. Set store.lease_ttl to at least {}",
                humantime::format_duration(s.lease_ttl),
                humantime::format_duration(needed),
                humantime::format_duration(needed)
            ));
        }
        p
    }

    /// What is wrong with `[notify]` and `[smtp]`.
    fn notify_problems(&self) -> Vec<String> {
        let (n, m, mut p) = (&self.notify, &self.smtp, Vec::new());
        if !(0.0..=1.0).contains(&n.rejected_share) {
            p.push(format!("notify.rejected_share is {}; use a share from 0 to 1, e.g. 0.05", n.rejected_share));
        }
        for (key, value) in
            [("timeout", n.timeout), ("poll_interval", n.poll_interval), ("give_up_after", n.give_up_after)]
        {
            if value.is_zero() {
                p.push(format!("notify.{key} is 0; use a duration such as \"10s\""));
            }
        }
        if n.retry_min_delay.is_zero() || n.retry_min_delay > n.retry_max_delay {
            p.push("notify.retry_min_delay must be above 0 and no longer than notify.retry_max_delay".into());
        }
        if m.password_env.is_some() && m.password_file.is_some() {
            p.push("smtp.password_env and smtp.password_file both set: keep one".into());
        }
        if m.host.is_some() && m.from.is_none() {
            p.push("smtp.from is not set: email notifications need a sender, e.g. \"segment-exporter <exports@example.com>\"".into());
        }
        if let Some(from) = &m.from {
            if from.parse::<lettre::message::Mailbox>().is_err() {
                p.push(format!("smtp.from '{from}' is not an address like \"segment-exporter <exports@example.com>\""));
            }
        }
        p
    }

    /// Every rule the values break, so an operator can fix them all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let it = &self.iterable;
        if self.store.history_retention.is_zero() {
            p.push("store.history_retention is 0; use a duration such as \"90d\" (the default)".into());
        }
        p.extend(self.store_problems());
        if it.batch_size == 0 || it.batch_size > 10_000 {
            p.push(format!("iterable.batch_size is {}; use 1 to 10000 (1000 is the usual size)", it.batch_size));
        }
        if it.max_body_bytes < 10_000 {
            p.push(format!(
                "iterable.max_body_bytes is {}; use at least 10000 (4000000 is Iterable's documented cap)",
                it.max_body_bytes
            ));
        }
        if it.concurrency == 0 || it.concurrency > 64 {
            p.push(format!("iterable.concurrency is {}; use 1 to 64", it.concurrency));
        }
        if !(it.requests_per_second.is_finite() && it.requests_per_second > 0.0) {
            p.push(format!("iterable.requests_per_second is {}; use a number above 0", it.requests_per_second));
        }
        if it.timeout.is_zero() {
            p.push("iterable.timeout is 0; use a duration such as \"30s\"".into());
        }
        if it.retry_max_attempts == 0 {
            p.push("iterable.retry_max_attempts is 0; use at least 1 (1 means no retries)".into());
        }
        if it.retry_min_delay > it.retry_max_delay {
            p.push("iterable.retry_min_delay is longer than iterable.retry_max_delay; swap them".into());
        }
        let share = self.sync.mass_removal_share;
        if !(0.0..=1.0).contains(&share) {
            p.push(format!("sync.mass_removal_share is {share}; use a share from 0 to 1, e.g. 0.5 for half a list"));
        }
        let growth = self.sync.mass_addition_share;
        if !growth.is_finite() || growth < 0.0 {
            p.push(format!(
                "sync.mass_addition_share is {growth}; use a share of 0 or more, e.g. 1.0 to let a list at most double"
            ));
        }
        let d = &self.daemon;
        if let Err(e) = crate::schedule::parse_cron(&d.refresh_schedule) {
            p.push(format!("daemon.refresh_schedule: {e}"));
        }
        if let Err(e) = d.tz() {
            p.push(e);
        }
        if d.max_concurrent_runs == 0 {
            p.push("daemon.max_concurrent_runs is 0; use at least 1".into());
        }
        if d.trigger_poll_interval.is_zero() || d.reload_interval.is_zero() {
            p.push("daemon.trigger_poll_interval and daemon.reload_interval must be above 0, e.g. \"1s\"".into());
        }
        if let Some(addr) = d.status_addr() {
            match addr.parse::<std::net::SocketAddr>() {
                Err(_) => p.push(format!(
                    "daemon.status_listen '{addr}' is not an address like \"127.0.0.1:9185\" (or \"off\")"
                )),
                Ok(a) => {
                    if let Err(e) = crate::daemon::listener::mode(d, a) {
                        p.push(e);
                    }
                }
            }
        }
        if let Err(e) = d.trusted_proxies() {
            p.push(e);
        }
        let unusable = d.unusable_public_hosts();
        if !unusable.is_empty() {
            p.push(format!(
                "daemon.public_hosts: {} not a host name; write each name alone, without scheme, port or path, e.g. \
                 \"exports.example.com\"",
                are(&unusable)
            ));
        }
        if d.public_url.is_some() && d.public_url().is_none() {
            p.push(
                "daemon.public_url is not an http(s) URL with a host; write e.g. \"https://exports.example.com\""
                    .into(),
            );
        }
        p.extend(self.notify_problems());
        if d.max_connections == 0 {
            p.push("daemon.max_connections is 0; use at least 1 (512 is the default)".into());
        }
        if d.idle_timeout.is_zero() {
            p.push("daemon.idle_timeout is 0; use a duration such as \"30s\" (the default)".into());
        }
        if d.tls_cert.is_some() != d.tls_key.is_some() {
            p.push(
                "daemon.tls_cert and daemon.tls_key go together: set both (PEM files) to serve HTTPS, or neither"
                    .into(),
            );
        }
        if d.session_idle_timeout.is_zero() || d.session_lifetime.is_zero() {
            p.push(
                "daemon.session_idle_timeout and daemon.session_lifetime must be above 0, e.g. \"30m\" and \"12h\""
                    .into(),
            );
        }
        if self.log.level.trim().is_empty() {
            p.push("log.level is empty; use e.g. \"info\"".into());
        }
        for dir in &self.sources.allowed_dirs {
            // A relative folder would mean another folder for each working directory the daemon is started from.
            if !dir.is_absolute() {
                p.push(format!(
                    "sources.allowed_dirs: '{}' is not an absolute path; write the folder from the root, e.g. \
                     \"/srv/segments\"",
                    dir.display()
                ));
            } else if dir.parent().is_none() {
                p.push(
                    "sources.allowed_dirs: '/' would let the HTTP API read any file; name the folders of the \
                        segments' files"
                        .into(),
                );
            }
        }
        p
    }
}

/// A type error of the file with an example of what fits, where serde's own message gives none.
fn with_example(message: &str) -> String {
    if message.ends_with("expected a duration") {
        format!("{message}: a number and a unit, in quotes, e.g. \"30s\", \"15m\" or \"24h\"")
    } else {
        message.to_string()
    }
}

/// Removes the key at `path` from `table`; false when there is none.
fn remove_key(table: &mut toml::Table, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = keys.split_last() else { return false };
    let mut current = table;
    for key in parents {
        match current.get_mut(*key) {
            Some(toml::Value::Table(t)) => current = t,
            _ => return false,
        }
    }
    current.remove(*last).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses_and_equals_the_defaults() {
        let text = include_str!("../config/segment-exporter.toml");
        let parsed = Config::parse(text, Path::new("config/segment-exporter.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_packaged_configs_for_systemd_and_docker_are_valid() {
        for (path, text) in [
            ("packaging/systemd/segment-exporter.toml", include_str!("../packaging/systemd/segment-exporter.toml")),
            ("packaging/docker/segment-exporter.toml", include_str!("../packaging/docker/segment-exporter.toml")),
        ] {
            let c = Config::parse(text, Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.log.format, LogFormat::Json, "{path}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::parse("[iterable]\nbatchsize = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn every_invalid_value_is_listed_at_once() {
        let text = "[iterable]\nbatch_size = 0\nconcurrency = 0\n[sync]\nmass_removal_share = 2.0\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else { panic!("expected Invalid") };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_one_pass_unknown_keys_and_bad_types_included() {
        let text = "[iterable]\nbatchsize = 5\nconcurrency = \"many\"\nbatch_size = 0\n\
                    [daemon]\nshutdown_grace = \"5 parsecs\"\nmax_concurrent_runs = 0\nwatch_dir = \"x\"\n\
                    [nosuch]\na = 1\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else { panic!("expected Invalid, got {err}") };
        let joined = problems.join("\n");
        for expected in [
            "iterable.batchsize: unknown field",
            "iterable.concurrency: invalid type",
            "daemon.shutdown_grace: invalid value: string \"5 parsecs\", expected a duration: a number and a unit, in \
             quotes, e.g. \"30s\", \"15m\" or \"24h\"",
            "daemon.watch_dir: unknown field",
            "nosuch: unknown field",
            "iterable.batch_size is 0",
            "daemon.max_concurrent_runs is 0",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
        assert_eq!(problems.len(), 7, "{joined}");
    }

    #[test]
    fn allowed_dirs_must_be_absolute_folders_other_than_the_root() {
        let text = "[sources]\nallowed_dirs = [\"segments\", \"/\", \"/srv/segments\"]\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else { panic!("expected Invalid, got {err}") };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("'segments' is not an absolute path"), "{problems:?}");
        assert!(problems[1].contains("'/' would let the HTTP API read any file"), "{problems:?}");
        let ok = Config::parse("[sources]\nallowed_dirs = [\"/srv/segments\"]\n", Path::new("x.toml")).unwrap();
        assert_eq!(ok.sources.allowed_dirs, vec![PathBuf::from("/srv/segments")]);
    }

    #[test]
    fn a_listener_off_loopback_needs_tls_or_allow_plain_http_and_the_problem_says_so() {
        let off = "[daemon]\nstatus_listen = \"0.0.0.0:9185\"\n";
        let err = Config::parse(off, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("not a loopback address") && err.contains("daemon.allow_plain_http"), "{err}");
        let allowed = format!("{off}allow_plain_http = true\n");
        assert!(Config::parse(&allowed, Path::new("x.toml")).is_ok());
        let tls = format!("{off}tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
        assert!(Config::parse(&tls, Path::new("x.toml")).is_ok(), "the files are read at start, not here");
        let half = "[daemon]\ntls_cert = \"c.pem\"\n";
        let err = Config::parse(half, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_and_every_bad_one_is_named() {
        let good = "[daemon]\ntrusted_proxies = [\"127.0.0.1\", \"::1\", \"172.16.0.0/12\"]\n";
        let nets = Config::parse(good, Path::new("x.toml")).unwrap().daemon.trusted_proxies().unwrap();
        assert!(nets[0].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[2].contains(&"172.17.0.1".parse::<std::net::IpAddr>().unwrap()));
        let bad = "[daemon]\ntrusted_proxies = [\"nginx\", \"10.0.0.0/33\", \"10.0.0.1\"]\n";
        let err = Config::parse(bad, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("'nginx', '10.0.0.0/33' are not an IP address or network"), "{err}");
    }

    #[test]
    fn public_hosts_are_names_alone_and_are_known_in_lower_case_beside_localhost() {
        let good =
            "[daemon]\npublic_hosts = [\"Exports.Example.com.\", \"intranet\", \"10.0.0.5\", \"Bücher.example\"]\n";
        let d = Config::parse(good, Path::new("x.toml")).unwrap().daemon;
        let known: Vec<String> = d.known_host_names().collect();
        assert_eq!(known, ["localhost", "exports.example.com", "intranet", "10.0.0.5", "xn--bcher-kva.example"]);
        let bad = "[daemon]\npublic_hosts = [\"https://a.example\", \"b.example:443\", \"*.c.example\", \"\", \"d.example\"]\n";
        let err = Config::parse(bad, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("'https://a.example', 'b.example:443', '*.c.example', '' are not a host name"), "{err}");
        let zero = "[daemon]\nmax_connections = 0\nidle_timeout = \"0s\"\n";
        let err = Config::parse(zero, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("daemon.max_connections is 0") && err.contains("daemon.idle_timeout is 0"), "{err}");
    }

    #[test]
    fn durations_are_read_in_human_units() {
        let c = Config::parse("[iterable]\ntimeout = \"2m\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.iterable.timeout, Duration::from_secs(120));
    }
}
