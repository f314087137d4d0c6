//! `sandbox`: the local Iterable-compatible API, served until Ctrl-C or SIGTERM.

use std::time::Duration;

use clap::Args;

use super::{exit, Ctx, Exit};
use crate::sandbox::{Sandbox, SandboxOptions, SandboxProjectType};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8085")]
    pub listen: String,
    /// API key the sandbox accepts (repeat for several).
    #[arg(long = "api-key", default_value = "sandbox-key")]
    pub api_keys: Vec<String>,
    /// Delay added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency: u64,
    /// Requests per second allowed over all API endpoints; beyond it requests are answered 429 like Iterable.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate_limit: Option<f64>,
    /// Requests the rate limit lets through at once [default: the rate]. Iterable's own bucket sizes are not
    /// documented; a small burst makes a client's pacing visible.
    #[arg(long, value_name = "REQUESTS", requires = "rate_limit")]
    pub rate_limit_burst: Option<f64>,
    /// Send a Retry-After header with 429 answers (Iterable's docs do not say it does).
    #[arg(long)]
    pub retry_after: bool,
    /// Share (0 to 1) of API requests that fail: half answer 500, half drop the connection after applying the change.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Do not enforce Iterable's documented per-endpoint limits (GET /api/lists 100/s; getUsers, previewUsers and
    /// size 5 a minute).
    #[arg(long)]
    pub no_documented_limits: bool,
    /// How long after its creation a list answers invalidListId, like a new Iterable list may, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub list_propagation: u64,
    /// The kind of Iterable project to imitate: `email` (users identified by email), `userid` (by user id only: an
    /// email alone identifies nobody) or `hybrid` (by either; a user id sent with preferUserId is looked up first),
    /// as a new connection is by default.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub project_type: SandboxProjectType,
    /// Make the keys read-only keys: lists can be read, every write (create a list, subscribe, unsubscribe) is
    /// refused with 403, as Iterable refuses a read-only key's (its exact answer is not documented).
    #[arg(long)]
    pub read_only_keys: bool,
    /// Refuse a subscribe whose subscriber carries both an email and a userId, as the letter of Iterable's API
    /// specification would ("an email or a userId (but not both)"); Iterable is not known to enforce it.
    #[arg(long)]
    pub one_identifier_per_subscriber: bool,
}

pub async fn run(ctx: &Ctx, a: SandboxArgs) -> anyhow::Result<u8> {
    if !(0.0..=1.0).contains(&a.fail_rate) {
        return Err(Exit::error(exit::USAGE, format!("--fail-rate {} must be between 0 and 1", a.fail_rate)));
    }
    if a.rate_limit_burst.is_some_and(|b| b.is_nan() || b < 1.0) {
        return Err(Exit::error(exit::USAGE, "--rate-limit-burst must be at least 1 request"));
    }
    if a.rate_limit.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(Exit::error(exit::USAGE, "--rate-limit must be above 0 requests per second"));
    }
    let listener = tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| {
        Exit::error(exit::FAILED, format!("cannot listen on {}: {e}. Pick another --listen address.", a.listen))
    })?;
    let addr = listener.local_addr()?;
    let opts = SandboxOptions {
        api_keys: a.api_keys,
        latency: Duration::from_millis(a.latency),
        rate_limit: a.rate_limit,
        rate_limit_burst: a.rate_limit_burst,
        retry_after: a.retry_after,
        fail_rate: a.fail_rate,
        list_propagation: Duration::from_millis(a.list_propagation),
        documented_limits: !a.no_documented_limits,
        project_type: a.project_type,
        read_only_keys: a.read_only_keys,
        one_identifier_per_subscriber: a.one_identifier_per_subscriber,
        ..SandboxOptions::default()
    };
    // Listen for stop signals before the address is printed: whoever reads it may stop the sandbox at once.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({ "base_url": format!("http://{addr}") }));
    } else {
        println!("Iterable sandbox listening on http://{addr}");
        println!(
            "Point a connection at it: --base-url http://{addr} with the key given by --api-key (default sandbox-key)."
        );
    }
    tracing::info!(address = %addr, "Sandbox listening.");
    let shutdown = async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    };
    Sandbox::new(opts).serve(listener, shutdown).await?;
    Ok(exit::OK)
}
