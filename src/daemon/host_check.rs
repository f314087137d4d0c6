//! The host check: a request addressed to a host name the service is not known by is refused (421 Misdirected
//! Request) before it reaches anything. A web page on another name can point that name at this host (DNS
//! rebinding) and read whatever answers; the browser still sends the page's name as `Host`, which this refuses.
//! Known names are `localhost` and `daemon.public_hosts` (`DaemonConfig::known_host_names`, the one place to add
//! another); an IP address is always accepted, since rebinding needs a name. Behind a trusted proxy the host is the
//! one it forwards. The composition leaves `/healthz` and `/readyz` outside this check.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{ApiError, ApiState};
use crate::config::{host_name, DaemonConfig};

/// Answers 421 to a request whose host is a name the service is not known by; passes every other one on.
pub async fn known_hosts_only(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let host = state.client(&parts).host;
    match host.as_deref().and_then(|h| unknown_host(h, &state.config().daemon)) {
        None => next.run(Request::from_parts(parts, body)).await,
        Some(name) => refusal(&name, parts.uri.path()),
    }
}

/// The host name of `authority` (a `Host` header: a name or address, and maybe a port) when it is a name the
/// service is not known by; None for a known name or an IP address. A value that is no host at all is unknown.
fn unknown_host(authority: &str, daemon: &DaemonConfig) -> Option<String> {
    let Ok(parsed) = authority.trim().parse::<axum::http::uri::Authority>() else {
        return Some(authority.to_string());
    };
    match url::Host::parse(parsed.host()) {
        Ok(url::Host::Domain(name)) => {
            let name = host_name(&name);
            (!daemon.known_host_names().any(|known| known == name)).then_some(name)
        }
        Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => None,
        Err(_) => Some(parsed.host().to_string()),
    }
}

/// The 421 answer naming `host`: the API's JSON error under `/api`, plain text elsewhere.
fn refusal(host: &str, path: &str) -> Response {
    let message = format!(
        "this service is not known by the name '{host}' that the request was addressed to (a page on another name \
         reaching it through DNS rebinding looks like this); if people or a proxy reach it by that name, add it to \
         daemon.public_hosts. IP addresses and localhost always work."
    );
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::new(StatusCode::MISDIRECTED_REQUEST, "misdirected", message).into_response();
    }
    let mut answer = (StatusCode::MISDIRECTED_REQUEST, format!("{message}\n")).into_response();
    answer.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    answer
}

/// What `validate` says about the host names the listener answers to.
pub fn names_note(daemon: &DaemonConfig) -> String {
    let names: Vec<String> = daemon.known_host_names().collect();
    match names.as_slice() {
        [_localhost] => "answers requests that name it by an IP address or localhost (daemon.public_hosts names no \
                         other)"
            .into(),
        names => {
            format!("answers requests that name it by an IP address or {} (daemon.public_hosts)", names.join(", "))
        }
    }
}

/// What `validate` and the start-up log warn about: a listener that others reach (off loopback, or behind a
/// proxy) while `daemon.public_hosts` names nothing, so that every request by name but `localhost` is refused.
pub fn missing_public_hosts(daemon: &DaemonConfig) -> Option<String> {
    let addr: SocketAddr = daemon.status_addr()?.parse().ok()?;
    if !daemon.public_hosts.is_empty() {
        return None;
    }
    let reached = match (addr.ip().is_loopback(), daemon.trusted_proxies.is_empty()) {
        (true, true) => return None,
        (false, _) => format!("the listener on {addr} is off loopback"),
        (true, false) => "the listener is behind daemon.trusted_proxies".to_string(),
    };
    Some(format!(
        "{reached}, but daemon.public_hosts is empty: a request by any host name but localhost (an IP address is \
         fine) is refused with 421. List the names people and proxies reach it by, e.g. \
         public_hosts = [\"exports.example.com\"]"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(public_hosts: &[&str]) -> DaemonConfig {
        DaemonConfig { public_hosts: public_hosts.iter().map(|h| h.to_string()).collect(), ..DaemonConfig::default() }
    }

    #[test]
    fn names_other_than_localhost_and_the_public_hosts_are_unknown_and_addresses_never_are() {
        let d = daemon(&["Exports.Example.com"]);
        for known in [
            "localhost",
            "LOCALHOST:9185",
            "localhost.",
            "exports.example.com",
            "EXPORTS.example.COM.:443",
            "127.0.0.1:9185",
            "[::1]:9185",
            "10.1.2.3",
            "[2001:db8::1]",
        ] {
            assert_eq!(unknown_host(known, &d), None, "{known}");
        }
        for (unknown, named) in [
            ("evil.example:9185", "evil.example"),
            ("Evil.Example", "evil.example"),
            ("exports.example.com.evil.example", "exports.example.com.evil.example"),
            ("sub.localhost", "sub.localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("not a host", "not a host"),
            ("evil.example:port", "evil.example"),
        ] {
            assert_eq!(unknown_host(unknown, &d).as_deref(), Some(named), "{unknown}");
        }
    }

    #[test]
    fn only_a_listener_others_reach_without_public_hosts_is_warned_about() {
        let at = |listen: &str, proxies: &[&str], hosts: &[&str]| {
            let mut d = daemon(hosts);
            d.status_listen = listen.into();
            d.trusted_proxies = proxies.iter().map(|p| p.to_string()).collect();
            missing_public_hosts(&d)
        };
        assert_eq!(at("127.0.0.1:9185", &[], &[]), None);
        assert_eq!(at("off", &[], &[]), None);
        assert!(at("0.0.0.0:9185", &[], &[]).unwrap().contains("0.0.0.0:9185 is off loopback"));
        assert!(at("127.0.0.1:9185", &["127.0.0.1"], &[]).unwrap().contains("behind daemon.trusted_proxies"));
        assert_eq!(at("0.0.0.0:9185", &["10.0.0.0/8"], &["exports.example.com"]), None);
    }
}
