//! The web console in a real browser: Debian's Chromium, headless, driven through Debian's chromedriver with
//! fantoccini, against the daemon built in this process (its listener on a free port) and the sandbox. Each test
//! saves a screenshot of the screens it passes under `target/screenshots/` (the README shows two of them, copied
//! to `docs/screenshots/`).
//!
//! Ignored unless asked for, as they need `chromium` and `chromium-driver` (Debian packages), which `.ci/run`
//! installs and then runs them with the other ignored tests.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::in_process::{serve, Served};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use segment_exporter::sandbox::SandboxOptions;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// The daemon with its listener, the sandbox, and accounts ann (admin), carl and dora (contributors), each with
/// `PASSWORD`.
struct Service {
    env: Env,
    base: String,
    served: Served,
}

async fn service(env: Env) -> Service {
    let env = tokio::task::spawn_blocking(move || {
        for (name, role) in [("ann", "admin"), ("carl", "contributor"), ("dora", "contributor")] {
            env.ok(&["user", "add", name, "--role", role]);
            env.cmd().args(["user", "password", name, "--password-stdin"]).write_stdin(PASSWORD).assert().success();
        }
        env
    })
    .await
    .unwrap();
    let served = serve(&env, "").await;
    Service { base: served.base.clone(), env, served }
}

impl Service {
    async fn close(self) {
        self.served.stop().await;
    }
}

/// Chromium driven by its chromedriver, on a free port; both end when it drops.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver's process group holds the Chromium it started: killing the driver alone left Chromium
        // running (and using CPU) after every test.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A laptop's window.
async fn browser(width: u32, height: u32) -> Browser {
    let args = json!([format!("--window-size={width},{height}")]);
    browser_with(args, None).await
}

/// A phone's screen, as Chromium's device emulation makes it (a window cannot be made that narrow).
async fn phone() -> Browser {
    let metrics = json!({ "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0, "mobile": true } });
    browser_with(json!(["--window-size=390,844"]), Some(metrics)).await
}

async fn browser_with(extra_args: Value, mobile: Option<Value>) -> Browser {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver is not installed: apt-get install chromium chromium-driver");
    let port = free_port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        // Its own process group, with the Chromium it starts, so that the drop ends them together.
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No crash reporter: it would leave its own process group behind.
    let mut args = json!([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-crash-reporter",
        "--disable-breakpad",
        "--lang=en-US"
    ]);
    args.as_array_mut().unwrap().extend(extra_args.as_array().unwrap().iter().cloned());
    let mut options = json!({ "binary": "/usr/bin/chromium", "args": args });
    if let Some(m) = mobile {
        options["mobileEmulation"] = m;
    }
    let caps = json!({ "goog:chromeOptions": options });
    let caps: serde_json::Map<String, Value> = serde_json::from_value(caps).unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver session");
    Browser { client, driver }
}

/// An XPath string literal for `text` (which holds no double quote here).
fn lit(text: &str) -> String {
    format!("\"{text}\"")
}

impl Browser {
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Waits until the page's path is `path`.
    async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.path().await;
            if now == path {
                return;
            }
            assert!(Instant::now() < deadline, "the browser stayed on {now}, expected {path}: {}", self.text().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The control labelled `label` (an input, select or textarea inside the label element).
    async fn field(&self, label: &str) -> fantoccini::elements::Element {
        let xpath = format!(
            "//label[normalize-space(text())={l} or normalize-space(.)={l}]//*[self::input or self::select or self::textarea]",
            l = lit(label)
        );
        self.client
            .wait()
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no field '{label}': {e}"))
    }

    async fn fill(&self, label: &str, value: &str) {
        let f = self.field(label).await;
        f.clear().await.unwrap();
        f.send_keys(value).await.unwrap();
    }

    async fn choose(&self, label: &str, option_text: &str) {
        self.field(label).await.select_by_label(option_text).await.unwrap();
    }

    async fn button(&self, text: &str) -> fantoccini::elements::Element {
        let xpath = format!("//*[self::button or self::a][normalize-space(.)={}]", lit(text));
        self.client
            .wait()
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button '{text}': {e}"))
    }

    async fn click(&self, text: &str) {
        self.button(text).await.click().await.unwrap();
    }

    /// Waits until the page shows `text`.
    async fn wait_text(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let body = self.text().await;
            if body.contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "the page never showed '{text}': {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&self, base: &str, user: &str) {
        self.goto(&format!("{base}/exports")).await;
        self.wait_path("/sign-in").await;
        self.fill("User name", user).await;
        self.fill("Password", PASSWORD).await;
        self.click("Sign in").await;
        self.wait_path("/exports").await;
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }
}

/// The tests proper, under one path (`browser::`) so that `.ci/run` can leave them out where no browser can be
/// installed.
mod browser {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn an_admin_signs_in_and_adds_a_connection_through_the_products_steps() {
        let svc = service(Env::new()).await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;
        b.screenshot("sign-in-done-exports").await;

        b.click("Connections").await;
        b.wait_path("/connections").await;
        b.click("Add connection").await;
        b.wait_path("/connections/new").await;
        b.click("Iterable").await;
        b.fill("Display name", "Iterable marketing").await;
        b.choose("Who can use this connection", "Administrators and contributors").await;
        b.choose("Project type", "Email-based").await;
        b.client.find(Locator::Css("details summary")).await.unwrap().click().await.unwrap();
        b.fill("Base URL", &svc.env.base_url).await;
        b.fill("API key", "wrong-key").await;
        b.field("I agree").await.click().await.unwrap();
        let save = b.button("Save").await;
        assert!(save.attr("disabled").await.unwrap().is_some(), "Save is enabled before the key checked out");

        // A key Iterable refuses keeps Save disabled and says so.
        b.click("Connect").await;
        b.wait_text("Iterable refused the key", Duration::from_secs(15)).await;
        assert!(save.attr("disabled").await.unwrap().is_some(), "Save is enabled after a refused key");
        b.screenshot("add-connection-refused-key").await;

        b.fill("API key", KEY).await;
        b.click("Connect").await;
        // What Connect could check without writing, and that it was no more.
        b.wait_text("Connected: Iterable let this key read the project's lists", Duration::from_secs(15)).await;
        assert!(b.text().await.contains("Whether it may also write them shows at the first run"));
        assert!(save.attr("disabled").await.unwrap().is_none(), "Save stays disabled after the key checked out");
        b.screenshot("add-connection").await;
        b.click("Save").await;
        b.wait_path("/connections/Iterable%20marketing").await;
        b.wait_text("Administrators and contributors", Duration::from_secs(10)).await;
        let page = b.text().await;
        assert!(page.contains("ann"), "the admin is the export user: {page}");
        assert!(!page.contains(KEY), "the connection page shows the key: {page}");

        b.click("Connections").await;
        b.wait_path("/connections").await;
        b.wait_text("Iterable marketing", Duration::from_secs(10)).await;
        b.screenshot("connections").await;

        // What the browser saved is what the store holds: usable by contributors, consent by ann, ann export user.
        let shown = tokio::task::block_in_place(|| svc.env.json(&["connection", "show", "Iterable marketing"]));
        assert_eq!(shown["usable_by"], "contributors", "{shown}");
        assert_eq!(shown["project_type"], "email", "{shown}");
        assert_eq!(shown["privacy_accepted_by"], "ann", "{shown}");
        let audit = tokio::task::block_in_place(|| svc.env.json(&["audit", "--user", "ann"]));
        let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
        assert!(actions.contains(&"connection.add"), "{actions:?}");
        assert!(actions.contains(&"session.sign_in"), "{actions:?}");
        svc.close().await;
    }

    /// `team_setup` with 30 members, and export `vip-x` of `vip` on `open`, run once.
    fn with_a_run_export() -> Env {
        let env = Env::new();
        tokio::task::block_in_place(|| {
            team_setup(&env, 30);
            env.ok(&["export", "add", "vip-x", "--connection", "open", "--segment", "vip", "--email-field", "email"]);
            env.ok(&["export", "run", "vip-x"]);
        });
        env
    }

    /// An env whose runs are slow enough to watch: 20 members a request, one request at a time, 150 ms each.
    fn slow_runs() -> Env {
        let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
        let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
        let config = config.replace("batch_size = 50", "batch_size = 20").replace("concurrency = 3", "concurrency = 1");
        std::fs::write(env.path("config.toml"), config).unwrap();
        env
    }

    /// Connections `open` (contributors) and `closed` (admins); segment `vip` of `n` members; dora's export `dora-x`.
    fn team_setup(env: &Env, n: usize) -> Vec<String> {
        let key = env.path("iterable.key");
        std::fs::write(&key, KEY).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let key = key.display().to_string();
        for (name, usable_by) in [("open", "contributors"), ("closed", "admins")] {
            let base = ["connection", "add", name, "--api-key-file", &key, "--base-url", &env.base_url];
            env.ok(&[&base[..], &["--accept-data-privacy", "--usable-by", usable_by]].concat());
        }
        let members = emails(0, n);
        let mut rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
        // Rows no run may send, so that runs have members "not sent, and why" to show: a malformed email and none
        // at all (an empty cell is NULL in a CSV source).
        rows.push(("not-an-email", "gold"));
        rows.push(("", "gold"));
        let csv = env.write_csv("vip.csv", &rows).display().to_string();
        env.ok(&["segment", "add", "vip", "--source", &format!("csv:{csv}")]);
        env.ok(&["segment", "add", "dora-seg", "--source", &format!("csv:{csv}")]);
        members
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn a_contributor_adds_a_destination_runs_it_watches_it_progress_and_the_list_equals_the_segment() {
        // Slow enough that a run of 600 members lasts a few seconds.
        let env = slow_runs();
        let members = tokio::task::block_in_place(|| team_setup(&env, 600));
        let svc = service(env).await;
        // dora's export, which carl must not reach.
        tokio::task::block_in_place(|| {
            svc.env.ok(&[
                "export",
                "add",
                "dora-x",
                "--connection",
                "open",
                "--segment",
                "dora-seg",
                "--email-field",
                "email",
            ]);
            svc.env.ok(&["export", "users", "dora-x", "--add", "dora"]);
        });

        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "carl").await;
        let nav = b.client.find(Locator::Css("header nav")).await.unwrap().text().await.unwrap();
        assert!(!nav.contains("Connections") && !nav.contains("Users"), "a contributor sees admin entries: {nav}");
        assert!(!b.text().await.contains("dora-x"), "carl sees dora's export in the list");

        b.click("Add destination").await;
        b.wait_path("/exports/new").await;
        let select = b.field("Connection for export").await;
        let options = select.find_all(Locator::Css("option")).await.unwrap();
        let mut names = Vec::new();
        for o in options {
            names.push(o.text().await.unwrap());
        }
        assert_eq!(
            names,
            vec!["open".to_string()],
            "a contributor is offered only the connections open to contributors"
        );
        let group = select.find(Locator::Css("optgroup")).await.unwrap().attr("label").await.unwrap();
        assert_eq!(group.as_deref(), Some("Iterable"));
        b.fill("Export name", "vip-to-iterable").await;
        b.wait_text("vip", Duration::from_secs(10)).await;
        b.wait_text("Choose the segments first", Duration::from_secs(10)).await;
        b.client.find(Locator::Css("input[name=segments][value=vip]")).await.unwrap().click().await.unwrap();
        // The segment's columns are offered for the email (and filled in where one is plainly it); typing stays open.
        b.wait_text("Columns of the chosen segments: email, tier.", Duration::from_secs(10)).await;
        let offered = b.js("return [...document.querySelectorAll('#columns option')].map(o => o.value);").await;
        assert_eq!(offered, json!(["email", "tier"]));
        assert_eq!(b.field("Email").await.prop("value").await.unwrap().as_deref(), Some("email"));
        assert_eq!(b.field("Email").await.attr("list").await.unwrap().as_deref(), Some("columns"));
        assert!(b.text().await.contains("Saving does not run the export"));
        b.screenshot("add-destination").await;
        b.click("Save").await;
        b.wait_path("/exports/vip-to-iterable").await;
        b.wait_text("No run yet", Duration::from_secs(10)).await;
        assert!(tokio::task::block_in_place(|| svc.env.list_id("vip")).is_none(), "saving ran the export");

        b.click("Run").await;
        // The bar moves: at least two different values strictly between 0 and the planned count.
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = b
                .js("const p = document.querySelector('#run-area progress'); return p ? [p.value, p.max] : null;")
                .await;
            if let Some([value, max]) =
                v.as_array().map(|a| [a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)])
            {
                if value > 0.0 && value < max {
                    if seen.is_empty() {
                        b.screenshot("export-running").await;
                    }
                    seen.insert(value as u64);
                }
            }
            if b.text().await.contains("Succeeded") {
                break;
            }
            assert!(Instant::now() < deadline, "the run did not succeed within a minute: {}", b.text().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen.len() >= 2, "the progress bar did not move: {seen:?}");
        b.wait_text("600 added", Duration::from_secs(10)).await;
        b.screenshot("export-run").await;
        assert_eq!(sorted(tokio::task::block_in_place(|| svc.env.members("vip"))), sorted(members.clone()));

        // Admin pages and dora's export are not there for carl, by URL too.
        for path in ["/connections", "/connections/open", "/users", "/audit", "/exports/dora-x", "/connections/new"] {
            b.goto(&format!("{}{path}", svc.base)).await;
            b.wait_text("Not found", Duration::from_secs(10)).await;
            let body = b.text().await;
            assert!(!body.contains("dora-seg") && !body.contains(KEY), "{path} showed: {body}");
        }
        b.screenshot("not-found").await;

        // carl left a browser signed in elsewhere: his account page lists both, and he ends the other one.
        let elsewhere = browser(1280, 900).await;
        elsewhere.sign_in(&svc.base, "carl").await;
        b.goto(&format!("{}/exports", svc.base)).await;
        b.client.find(Locator::Css("#who-name")).await.unwrap().click().await.unwrap();
        b.wait_path("/account").await;
        b.wait_text("This browser", Duration::from_secs(10)).await;
        let rows = b.client.find_all(Locator::Css("#sessions-list tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 2, "{}", b.text().await);
        b.screenshot("account").await;
        b.click("End").await;
        b.click("Yes, end it").await;
        b.wait_text("That session has ended", Duration::from_secs(10)).await;
        assert_eq!(b.client.find_all(Locator::Css("#sessions-list tbody tr")).await.unwrap().len(), 1);
        elsewhere.goto(&format!("{}/exports", svc.base)).await;
        elsewhere.wait_path("/sign-in").await;
        drop(elsewhere);

        // Signing out ends the session: the pages send the browser to sign in again, and the old cookie is dead.
        b.goto(&format!("{}/exports", svc.base)).await;
        let cookie = b.client.get_named_cookie("segment_exporter_session").await.unwrap().value().to_string();
        b.click("Sign out").await;
        b.wait_path("/sign-in").await;
        b.goto(&format!("{}/exports", svc.base)).await;
        b.wait_path("/sign-in").await;
        let after = reqwest::Client::new()
            .get(format!("{}/api/v1/exports", svc.base))
            .header("Cookie", format!("segment_exporter_session={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(after.status(), 401, "the signed-out session still works");
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn a_sign_in_link_that_leads_elsewhere_lands_on_this_service_and_one_that_leads_here_is_followed() {
        let svc = service(Env::new()).await;
        let origin = url::Url::parse(&svc.base).unwrap().origin();
        let b = browser(1280, 900).await;
        // A phishing link: the browser drops the tab, which would leave `//evil.example/phish`, another host.
        let phishing = format!("{}/sign-in?next=/%09/evil.example/phish", svc.base);
        b.goto(&phishing).await;
        b.fill("User name", "ann").await;
        b.fill("Password", PASSWORD).await;
        b.click("Sign in").await;
        b.wait_path("/exports").await;
        assert_eq!(b.client.current_url().await.unwrap().origin(), origin, "the script followed the link away");
        b.screenshot("sign-in-next-elsewhere").await;
        // Signed in, the link is answered with a redirect, which stays here too.
        b.goto(&format!("{}/account", svc.base)).await;
        b.wait_path("/account").await;
        b.goto(&phishing).await;
        b.wait_path("/exports").await;
        assert_eq!(b.client.current_url().await.unwrap().origin(), origin, "the redirect led away");
        b.goto(&format!("{}/sign-in?next=/account", svc.base)).await;
        b.wait_path("/account").await;
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn every_screen_fits_a_phone_and_loads_nothing_from_elsewhere() {
        let svc = service(with_a_run_export()).await;
        let b = phone().await;
        b.sign_in(&svc.base, "ann").await;
        for (path, shows) in [
            ("/exports", "vip-x"),
            ("/exports/vip-x", "Run history"),
            ("/exports/new", "Data matching"),
            ("/connections", "open"),
            ("/connections/new", "Iterable"),
            ("/connections/open", "Who can use this connection"),
            ("/users", "carl"),
            ("/notifications", "Add channel"),
            ("/audit", "user.add"),
            ("/account", "This browser"),
        ] {
            b.goto(&format!("{}{path}", svc.base)).await;
            b.wait_text(shows, Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let fits = b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;").await;
            let name = format!("phone{}", path.replace('/', "-"));
            b.screenshot(&name).await;
            assert_eq!(fits, json!(true), "{path} is wider than a phone's screen (see target/screenshots/{name}.png)");
            let foreign = b
            .js("return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin));")
            .await;
            assert_eq!(foreign, json!([]), "{path} loaded something from elsewhere");
        }
        // The browser is told so too.
        let page = reqwest::get(format!("{}/sign-in", svc.base)).await.unwrap();
        let csp = page.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        svc.close().await;
    }

    /// A webhook receiver that answers 200 to everything and counts the requests.
    async fn receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            }
        });
        (url, count)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn an_admin_adds_a_webhook_sends_it_a_test_and_subscribes_an_export_on_its_page() {
        let svc = service(with_a_run_export()).await;
        let (url, received) = receiver().await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;
        b.click("Notifications").await;
        b.wait_path("/notifications").await;
        b.fill("Name", "ops").await;
        b.fill("URL or addresses", &url).await;
        b.click("Add channel").await;
        b.wait_text("shown once", Duration::from_secs(10)).await;
        let secret = b.client.find(Locator::Css("#new-secret code")).await.unwrap().text().await.unwrap();
        assert!(secret.starts_with("whsec_"), "{secret}");
        let row = b.client.wait().for_element(Locator::Css("tr[data-channel=ops]")).await.unwrap();
        assert!(!row.text().await.unwrap().contains(&url), "the URL is never shown again");
        b.click("Send a test").await;
        b.wait_text("the receiver answered HTTP 200", Duration::from_secs(15)).await;
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
        b.screenshot("notifications").await;

        b.goto(&format!("{}/exports/vip-x", svc.base)).await;
        b.wait_text("No channel is told about this export.", Duration::from_secs(10)).await;
        b.click("Notify").await;
        b.wait_text("ops is told about this export", Duration::from_secs(10)).await;
        let export: Value = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert_eq!(
            export["notify"],
            json!([{ "channel": "ops", "channel_id": 1, "events": ["failed", "guard", "recovered", "key"] }])
        );
        b.screenshot("export-notify").await;
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn an_admin_adds_an_account_whose_token_and_password_work_and_finds_it_in_the_audit() {
        let svc = service(Env::new()).await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;
        b.click("Users").await;
        b.wait_path("/users").await;
        b.fill("User name", "erin").await;
        b.choose("Role", "Administrator").await;
        b.click("Add user").await;
        b.wait_text("shown this once", Duration::from_secs(10)).await;
        let token = b.client.find(Locator::Css("#new-token code")).await.unwrap().text().await.unwrap();
        let me =
            reqwest::Client::new().get(format!("{}/api/v1/me", svc.base)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(me.status(), 200, "the token the Users screen showed does not work");
        let me: Value = me.json().await.unwrap();
        assert_eq!((me["name"].as_str(), me["role"].as_str()), (Some("erin"), Some("admin")));
        b.screenshot("users").await;

        // A password set on the screen signs erin in.
        let row = b.client.wait().for_element(Locator::Css("tr[data-user=erin]")).await.unwrap();
        let field = row.find(Locator::Css("input[type=password]")).await.unwrap();
        field.send_keys("erin's long passphrase").await.unwrap();
        row.find(Locator::XPath(".//button[normalize-space(.)='Reset password']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_text("Set the password of erin", Duration::from_secs(15)).await;
        let other = browser(1280, 900).await;
        other.goto(&format!("{}/sign-in", svc.base)).await;
        other.fill("User name", "erin").await;
        other.fill("Password", "erin's long passphrase").await;
        other.click("Sign in").await;
        other.wait_path("/exports").await;

        // A wrong password is told in words, and nothing else happens.
        let third = browser(1280, 900).await;
        third.goto(&format!("{}/sign-in", svc.base)).await;
        third.fill("User name", "erin").await;
        third.fill("Password", "not the password at all").await;
        third.click("Sign in").await;
        third.wait_text("The user name or password is wrong.", Duration::from_secs(10)).await;
        assert_eq!(third.path().await, "/sign-in");
        drop(third);

        // erin's browser is signed out from ann's screen; it is sent to the sign-in page on its next request.
        let row = b.client.wait().for_element(Locator::Css("tr[data-user=erin]")).await.unwrap();
        let sign_out = Locator::XPath(".//button[normalize-space(.)='Sign out everywhere']");
        row.find(sign_out).await.unwrap().click().await.unwrap();
        row.find(Locator::XPath(".//button[normalize-space(.)='Yes, sign out']")).await.unwrap().click().await.unwrap();
        b.wait_text("Ended 1 session of erin", Duration::from_secs(10)).await;
        other.goto(&format!("{}/exports", svc.base)).await;
        other.wait_path("/sign-in").await;
        drop(other);

        b.click("Audit").await;
        b.wait_path("/audit").await;
        b.fill("User", "ann").await;
        b.click("Filter").await;
        b.wait_text("user.password", Duration::from_secs(10)).await;
        let rows = b.client.find_all(Locator::Css("#audit-list tbody tr")).await.unwrap();
        let mut texts = Vec::new();
        for r in rows {
            texts.push(r.text().await.unwrap());
        }
        assert!(texts.iter().any(|t| t.contains("user.add") && t.contains("erin")), "{texts:?}");
        assert!(texts.iter().all(|t| t.contains("ann")), "the filter let other users' rows through: {texts:?}");
        assert!(
            !texts.iter().any(|t| t.contains("session.sign_in.failed")),
            "erin's failed sign-in is ann's: {texts:?}"
        );
        b.screenshot("audit").await;
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn a_preview_changes_nothing_and_a_run_the_guard_stopped_runs_anyway_after_a_confirmation() {
        let env = Env::new();
        let members = tokio::task::block_in_place(|| {
            let members = team_setup(&env, 30);
            env.ok(&["export", "add", "vip-x", "--connection", "open", "--segment", "vip", "--email-field", "email"]);
            env.ok(&["export", "run", "vip-x"]);
            // The segment shrinks to 2 of its 30 members: more than half of the list would go.
            let rows: Vec<(&str, &str)> = members[..2].iter().map(|e| (e.as_str(), "gold")).collect();
            env.write_csv("vip.csv", &rows);
            members
        });
        let svc = service(env).await;
        tokio::task::block_in_place(|| svc.env.ok(&["export", "users", "vip-x", "--add", "carl"]));
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "carl").await;
        b.goto(&format!("{}/exports/vip-x", svc.base)).await;
        b.click("Preview").await;
        b.wait_text("Nothing was sent: this is a preview.", Duration::from_secs(15)).await;
        let preview = b.client.find(Locator::Css(".preview tbody tr")).await.unwrap().text().await.unwrap();
        assert!(preview.contains("28"), "the preview does not say 28 would be removed: {preview}");
        b.screenshot("export-preview").await;
        assert_eq!(tokio::task::block_in_place(|| svc.env.members("vip")).len(), 30, "the preview changed the list");

        b.click("Run").await;
        b.wait_text("Stopped by the mass-removal guard", Duration::from_secs(30)).await;
        assert_eq!(tokio::task::block_in_place(|| svc.env.members("vip")).len(), 30, "the guard let the run through");
        let anyway = b.button("Run anyway").await;
        anyway.click().await.unwrap();
        b.wait_text("Yes, unsubscribe them", Duration::from_secs(15)).await;
        assert_eq!(tokio::task::block_in_place(|| svc.env.members("vip")).len(), 30, "one click ran it");
        b.screenshot("export-guard").await;
        b.click("Yes, unsubscribe them").await;
        // The history already shows run #1 succeeded: wait for this run's own outcome.
        b.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("#run-area .outcome.succeeded"))
            .await
            .expect("the run anyway did not succeed within 30 s");
        assert_eq!(
            sorted(tokio::task::block_in_place(|| svc.env.members("vip"))),
            sorted(members[..2].to_vec()),
            "the list is not the segment after running anyway"
        );
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn an_export_user_verifies_a_list_someone_changed_by_hand_and_repairs_it_from_its_page() {
        let env = with_a_run_export();
        let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
        config.push_str("\n[sync]\nverify_settle = \"0s\"\n");
        std::fs::write(env.path("config.toml"), config).unwrap();
        // Someone takes three of the export's members off its list by hand.
        let (env, list_id) = tokio::task::spawn_blocking(move || {
            let list_id = env.list_id("vip").unwrap();
            let gone: Vec<Value> = emails(0, 3).iter().map(|e| json!({ "email": e })).collect();
            env.post_api(
                "/api/lists/unsubscribe",
                json!({ "listId": list_id, "subscribers": gone, "channelUnsubscribe": false }),
            );
            (env, list_id)
        })
        .await
        .unwrap();
        let svc = service(env).await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;
        b.goto(&format!("{}/exports/vip-x", svc.base)).await;
        b.wait_text("Run history", Duration::from_secs(10)).await;
        b.click("Verify").await;
        b.wait_text(
            "vip: Drifted: 3 missing, 0 not yet sent, 0 lingering, 0 others', 0 settling",
            Duration::from_secs(30),
        )
        .await;
        b.screenshot("export-verify-drifted").await;
        b.click("Repair").await;
        b.wait_text("Repair: 3 added", Duration::from_secs(30)).await;
        b.wait_text("Last verify (#", Duration::from_secs(10)).await;
        b.screenshot("export-verify-repaired").await;
        let members = svc.env.sandbox.list_members(list_id).unwrap();
        assert!(emails(0, 3).iter().all(|e| members.contains(e)), "the missing are back: {members:?}");
        b.click("Verify").await;
        b.wait_text("vip: Clean: 0 missing", Duration::from_secs(30)).await;
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn an_admin_edits_an_export_opens_a_connection_and_removes_another_keeping_its_exports() {
        let svc = service(with_a_run_export()).await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;

        b.goto(&format!("{}/exports/vip-x", svc.base)).await;
        b.wait_text("Run history", Duration::from_secs(10)).await;
        // The run's details name the member that was not sent, and why.
        b.click("Details").await;
        b.wait_text("Members that were not sent, and why", Duration::from_secs(10)).await;
        let details = b.client.find(Locator::Css("tr.run-details")).await.unwrap().text().await.unwrap();
        assert!(details.contains("not-an-email") && details.contains("email has no @"), "{details}");
        assert!(details.contains("(no value)"), "a NULL email reads as no value: {details}");
        assert!(details.contains("30 added (new on the list)"), "{details}");
        b.screenshot("export-run-details").await;
        b.client.find(Locator::Css("#export-edit summary")).await.unwrap().click().await.unwrap();
        b.fill("Schedule", "0 0 6 * * *").await;
        b.fill("Add extra fields", "tier").await;
        b.click("Save changes").await;
        b.wait_text("Saved. The next run uses the new settings.", Duration::from_secs(10)).await;
        let shown = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert_eq!(shown["schedule"], "0 0 6 * * *", "{shown}");
        assert_eq!(shown["fields"][0]["column"], "tier", "{shown}");
        // A change the API refuses is told on the page, and nothing is saved.
        b.fill("Schedule", "every now and then").await;
        b.click("Save changes").await;
        b.wait_text("every now and then", Duration::from_secs(10)).await;
        let error = b.client.find(Locator::Css("#edit-export .error")).await.unwrap().text().await.unwrap();
        assert!(!error.is_empty(), "a refused schedule said nothing");
        let shown = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert_eq!(shown["schedule"], "0 0 6 * * *", "a refused change was saved: {shown}");

        b.goto(&format!("{}/connections/closed", svc.base)).await;
        b.wait_text("Key last checked", Duration::from_secs(10)).await;
        // Its key is read from a file: the page says so, as `connection show` does, and never that it is stored.
        let details = b.client.find(Locator::Css("#connection-details")).await.unwrap().text().await.unwrap();
        assert!(details.contains("read at each use from the file") && details.contains("iterable.key"), "{details}");
        assert!(!details.contains("never shown again"), "{details}");
        let page = b.text().await;
        assert_eq!(page.matches("Who can use this connection").count(), 1, "said twice: {page}");
        b.choose("Who can use this connection", "Administrators and contributors").await;
        b.click("Save").await;
        b.wait_text("Saved who can use this connection.", Duration::from_secs(10)).await;
        let closed = tokio::task::block_in_place(|| svc.env.json(&["connection", "show", "closed"]));
        assert_eq!(closed["usable_by"], "contributors", "{closed}");
        // A key Iterable refuses is not stored, and the page says so; the right one is.
        b.fill("New API key", "not-the-key").await;
        b.click("Rotate key").await;
        b.wait_text("Iterable rejected the API key", Duration::from_secs(15)).await;
        assert!(!b.text().await.contains("Iterable accepted the new key"));
        b.fill("New API key", KEY).await;
        b.click("Rotate key").await;
        b.wait_text("Iterable accepted the new key", Duration::from_secs(15)).await;
        b.wait_text("stored encrypted (ends in …6789); never shown again", Duration::from_secs(10)).await;
        tokio::task::block_in_place(|| svc.env.ok(&["connection", "test", "closed"]));
        b.screenshot("connection").await;

        b.goto(&format!("{}/connections/open", svc.base)).await;
        b.wait_text("Key last checked", Duration::from_secs(10)).await;
        b.click("Remove").await;
        b.wait_text("Remove this connection?", Duration::from_secs(15)).await;
        b.screenshot("connection-remove").await;
        b.click("Remove connection").await;
        b.wait_path("/connections").await;
        let connections = tokio::task::block_in_place(|| svc.env.json(&["connection", "list"]));
        let names: Vec<&str> = connections.as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, vec!["closed"], "{connections}");
        let kept = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert!(kept["connection_name"].is_null(), "the export was not detached: {kept}");
        svc.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs chromium and chromedriver (Debian packages chromium, chromium-driver)"]
    async fn a_change_to_a_running_export_offers_to_stop_the_run_and_then_saves() {
        // A run of 1,200 members: several seconds.
        let env = slow_runs();
        tokio::task::block_in_place(|| {
            team_setup(&env, 1200);
            env.ok(&["export", "add", "vip-x", "--connection", "open", "--segment", "vip", "--email-field", "email"]);
        });
        let svc = service(env).await;
        let b = browser(1280, 900).await;
        b.sign_in(&svc.base, "ann").await;
        b.goto(&format!("{}/exports/vip-x", svc.base)).await;
        b.wait_text("Run history", Duration::from_secs(10)).await;
        b.client.find(Locator::Css("#export-edit summary")).await.unwrap().click().await.unwrap();
        b.fill("Schedule", "0 0 6 * * *").await;

        // A run from the host's shell is under way when the change is saved.
        let mut run = svc.env.spawn(&["export", "run", "vip-x"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::task::block_in_place(|| svc.env.stats().subscribers_received) == 0 {
            assert!(Instant::now() < deadline, "the run never got going");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b.click("Save changes").await;
        b.wait_text("This export is running now; nothing was changed.", Duration::from_secs(10)).await;
        let said = b.text().await;
        assert!(!said.contains("--cancel-run") && !said.contains("cancel_run"), "another surface's words: {said}");
        let shown = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert_eq!(shown["schedule"], "refresh", "refused, yet saved: {shown}");
        b.screenshot("export-edit-while-running").await;
        b.click("Stop the run and save").await;
        b.wait_text("Saved. The next run uses the new settings.", Duration::from_secs(30)).await;
        let shown = tokio::task::block_in_place(|| svc.env.json(&["export", "show", "vip-x"]));
        assert_eq!(shown["schedule"], "0 0 6 * * *", "{shown}");
        let status = tokio::task::block_in_place(|| run.wait()).unwrap();
        assert!(!status.success(), "the run was stopped, not finished");
        let runs = tokio::task::block_in_place(|| svc.env.json(&["runs", "--export", "vip-x"]));
        assert_eq!(runs[0]["status"], "cancelled", "{runs}");
        svc.close().await;
    }
}
