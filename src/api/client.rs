//! Where a request comes from: the peer's address and the host and scheme the browser addressed, or, when the peer
//! is a reverse proxy named in `daemon.trusted_proxies`, what that proxy reports in `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host`. From any other peer those headers are ignored, since anyone can
//! send them. The audit records this address, failed sign-ins are throttled by it, the CSRF check compares the
//! page's Origin with this host, and the session cookie is Secure when this scheme is HTTPS.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use ipnet::IpNet;

/// The client of one request, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or behind trusted proxies the nearest address that is not one of them.
    pub address: Option<IpAddr>,
    /// Whether the browser reached this service (or the trusted proxy in front of it) over HTTPS.
    pub https: bool,
    /// The host (and port) the browser addressed.
    pub host: Option<String>,
}

impl Client {
    /// The client of the request `parts`, served over HTTPS when `tls`.
    pub fn of(parts: &Parts, proxies: &[IpNet], tls: bool) -> Client {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let authority = parts.uri.authority().map(|a| a.as_str());
        resolve(peer, &parts.headers, authority, proxies, tls)
    }
}

/// The values of a header that proxies append to, each occurrence and each comma-separated entry in order.
fn entries<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// One hop of `X-Forwarded-For`: an address, possibly with a port or in brackets.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, authority: Option<&str>, proxies: &[IpNet], tls: bool) -> Client {
    let trusted = |ip: IpAddr| proxies.iter().any(|net| net.contains(&ip));
    // A dual-stack listener ("[::]:9185") sees IPv4 peers as ::ffff:a.b.c.d: they are IPv4 addresses.
    let peer = peer.map(|p| p.to_canonical());
    // HTTP/2 carries the host in the URI's authority instead of a Host header.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(authority).map(str::to_string);
    let direct = Client { address: peer, https: tls, host };
    let Some(peer) = peer.filter(|p| trusted(*p)) else { return direct };
    // From the right, each hop was added by the proxy before it: believe hops while the one that added them is
    // trusted, and stop at the first address that is not a proxy of ours (what it claims is its own business).
    let mut address = peer;
    for hop in entries(headers, "x-forwarded-for").into_iter().rev() {
        if !trusted(address) {
            break;
        }
        match hop_address(hop) {
            Some(ip) => address = ip.to_canonical(),
            None => break,
        }
    }
    // The proxy that met the browser wrote the first entry; a forged "https" would only make the cookie Secure.
    let https = tls || entries(headers, "x-forwarded-proto").first().is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let host = entries(headers, "x-forwarded-host").first().map(|h| h.to_string()).or(direct.host);
    Client { address: Some(address), https, host }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn without_trusted_proxies_the_forwarded_headers_are_ignored() {
        let forged = headers(&[
            ("host", "127.0.0.1:9185"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let client = resolve(Some(ip("10.1.2.3")), &forged, None, &[], false);
        assert_eq!(client, Client { address: Some(ip("10.1.2.3")), https: false, host: Some("127.0.0.1:9185".into()) });
        // Nor from a peer outside the trusted networks.
        let client = resolve(Some(ip("10.1.2.3")), &forged, None, &nets(&["127.0.0.1/32"]), false);
        assert_eq!(client.address, Some(ip("10.1.2.3")));
        assert!(!client.https);
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_first_untrusted_hop_from_the_right() {
        let proxies = nets(&["127.0.0.1/32", "172.16.0.0/12"]);
        let h = headers(&[
            ("host", "segment-exporter:9185"),
            // The client forged the first entry; the host's nginx appended the client's real address, the
            // container network's proxy appended nginx's.
            ("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
            ("x-forwarded-for", "172.17.0.1:51234"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "exports.example.com"),
        ]);
        let client = resolve(Some(ip("172.18.0.2")), &h, None, &proxies, false);
        assert_eq!(client.address, Some(ip("203.0.113.9")));
        assert!(client.https);
        assert_eq!(client.host.as_deref(), Some("exports.example.com"));
        // A proxy that says nothing leaves the peer, the Host header and the listener's own scheme.
        let bare = resolve(Some(ip("127.0.0.1")), &headers(&[("host", "h:1")]), None, &proxies, true);
        assert_eq!(bare, Client { address: Some(ip("127.0.0.1")), https: true, host: Some("h:1".into()) });
        // A garbled hop stops the walk at the last proxy that vouched for it.
        let garbled = headers(&[("x-forwarded-for", "203.0.113.9, not-an-ip")]);
        assert_eq!(resolve(Some(ip("127.0.0.1")), &garbled, None, &proxies, false).address, Some(ip("127.0.0.1")));
        let mapped = headers(&[("x-forwarded-for", "::ffff:203.0.113.9")]);
        let dual_stack_peer = Some(ip("::ffff:127.0.0.1"));
        assert_eq!(resolve(dual_stack_peer, &mapped, None, &proxies, false).address, Some(ip("203.0.113.9")));
        let v6 = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(resolve(Some(ip("127.0.0.1")), &v6, None, &proxies, false).address, Some(ip("2001:db8::7")));
    }

    #[test]
    fn http2_requests_name_their_host_in_the_authority() {
        let client = resolve(Some(ip("127.0.0.1")), &HeaderMap::new(), Some("127.0.0.1:9185"), &[], true);
        assert_eq!(client.host.as_deref(), Some("127.0.0.1:9185"));
    }
}
