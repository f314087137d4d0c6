//! The listener against hostile clients, through the real daemon binary: a sign-in link whose `next` leads off
//! this origin (an open redirect).

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::*;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

/// An env whose daemon listens on loopback, with `extra` lines in `[daemon]`, and admin ann (with `PASSWORD`).
/// Returns ann's token.
fn team(extra: &str) -> (Env, String) {
    let daemon = format!(
        "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\ntrigger_poll_interval = \"500ms\"\n\
         refresh_schedule = \"0 0 0 1 1 *\"\n{extra}"
    );
    let env = Env::with_config(opts(), &daemon);
    let ann = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    env.cmd()
        .args(["user", "password", "ann", "--password-stdin"])
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .success();
    (env, ann)
}

/// A client that follows no redirect, so that each answer is seen as sent.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

fn send(request: reqwest::RequestBuilder) -> Answer {
    block_on(async {
        let r = request.timeout(Duration::from_secs(30)).send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        Answer { status, headers, text: r.text().await.unwrap() }
    })
}

/// `/sign-in?next=NEXT`, `next` encoded as a link would carry it.
fn sign_in_link(next: &str) -> String {
    format!("/sign-in?next={}", url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>())
}

/// Where a browser on `page` goes when told `target` (a Location header, or `location.href = target`).
fn followed(page: &str, target: &str) -> url::Url {
    url::Url::parse(page).unwrap().join(target).unwrap_or_else(|e| panic!("a browser cannot follow {target:?}: {e}"))
}

/// The `data-next` attribute of the sign-in page, which its script follows after signing in.
fn data_next(page: &str) -> String {
    let start = page.find("data-next=\"").expect("the sign-in form says where it goes next") + "data-next=\"".len();
    let raw = &page[start..start + page[start..].find('"').unwrap()];
    raw.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'").replace("&amp;", "&")
}

/// Links an attacker could send: each leads a browser off the service's origin if `next` is followed as given.
const OFF_ORIGIN: [&str; 12] = [
    "/\t/evil.example/phish",
    "/\n/evil.example/phish",
    "/\r\n/evil.example/phish",
    "//evil.example/phish",
    "/\\evil.example/phish",
    "\\\\evil.example/phish",
    "/.//evil.example/phish",
    "/%2e//evil.example/phish",
    "https://evil.example/phish",
    "http:\\\\evil.example\\phish",
    "javascript:alert(document.domain)",
    " //evil.example/phish",
];

#[test]
fn a_sign_in_link_never_leads_the_browser_off_this_origin_signed_in_or_not_and_never_fails() {
    let (env, _) = team("");
    let daemon = Daemon::start(&env);
    let http = client();
    let origin = url::Url::parse(&daemon.status).unwrap().origin();
    let sign_in = send(
        http.post(format!("{}/api/v1/session", daemon.status))
            .header(ORIGIN, &daemon.status)
            .json(&json!({ "user": "ann", "password": PASSWORD })),
    );
    assert_eq!(sign_in.status, 200, "{}", sign_in.text);
    let cookie = sign_in.headers[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();

    for next in OFF_ORIGIN {
        let page_url = format!("{}{}", daemon.status, sign_in_link(next));
        // Not signed in: the page's script goes to data-next after signing in.
        let page = send(http.get(&page_url));
        assert_eq!(page.status, 200, "next={next:?}: {}", page.text);
        let target = data_next(&page.text);
        let went = followed(&page_url, &target);
        assert_eq!(went.origin(), origin, "next={next:?}: the script would go to {went} ({target:?})");

        // Signed in: the server redirects at once.
        let redirect = send(http.get(&page_url).header(COOKIE, &cookie));
        assert_eq!(redirect.status, 303, "next={next:?}: {}", redirect.text);
        let location = redirect.headers[LOCATION].to_str().unwrap();
        let went = followed(&page_url, location);
        assert_eq!(went.origin(), origin, "next={next:?}: redirected to {went} ({location:?})");
        assert_eq!(went.path(), "/exports", "next={next:?}: an unsafe next falls back to the exports");
    }

    // A next on this origin is kept, however it is spelled, and sent back as a path of this service.
    for (next, kept) in [
        ("/exports/vip-x?tab=runs", "/exports/vip-x?tab=runs"),
        ("/exports/vip%20x", "/exports/vip%20x"),
        ("/users/../audit", "/audit"),
        (&format!("{}/account", daemon.status), "/account"),
    ] {
        let page_url = format!("{}{}", daemon.status, sign_in_link(next));
        let redirect = send(http.get(&page_url).header(COOKIE, &cookie));
        assert_eq!(redirect.status, 303, "next={next:?}: {}", redirect.text);
        assert_eq!(redirect.headers[LOCATION], kept, "next={next:?}");
        assert_eq!(data_next(&send(http.get(&page_url)).text), kept, "next={next:?}");
    }
}
