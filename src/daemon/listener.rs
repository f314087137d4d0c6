//! The daemon's HTTP listener: which transport it serves on its address (HTTPS with rustls, or plain HTTP), whether
//! that is allowed there, and the serving itself. Plain HTTP is served on loopback, and off it only when
//! `daemon.allow_plain_http` says something in front does TLS; passwords, tokens and session cookies never cross a
//! network in clear by default. A certificate renewed on disk is served from the next connection on. Each
//! connection is served here (HTTP/1.1, over TLS or not) with the same bounds: a request's header must arrive
//! within `daemon.idle_timeout`, and at most `daemon.max_connections` are open (`super::connections` keeps that
//! table). The routes are the caller's; this module does not look at requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::connections::{Busy, Connections, Slot};
use crate::config::DaemonConfig;

/// How the listener serves, as decided from the config and its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTPS with `daemon.tls_cert` and `daemon.tls_key` (on any address).
    Https,
    /// Plain HTTP on a loopback address: only this host reaches it.
    PlainLoopback,
    /// Plain HTTP off loopback, allowed by `daemon.allow_plain_http` (a proxy in front does TLS).
    PlainAllowed,
}

impl Mode {
    /// What `validate` and the start-up log say about it.
    pub fn describe(self, addr: &str) -> String {
        match self {
            Mode::Https => format!("HTTPS on {addr} (daemon.tls_cert and daemon.tls_key)"),
            Mode::PlainLoopback => format!("plain HTTP on {addr}, a loopback address: only this host reaches it"),
            Mode::PlainAllowed => format!(
                "plain HTTP on {addr}, off loopback: allowed by daemon.allow_plain_http, so whatever is in front of \
                 it must do TLS"
            ),
        }
    }

    pub fn is_tls(self) -> bool {
        self == Mode::Https
    }
}

/// What `validate` and the start-up log add about reverse proxies: whose X-Forwarded-* headers are believed, or,
/// for plain HTTP off loopback (a proxy in front, most likely) without any, what the daemon then cannot tell.
pub fn proxies_note(daemon: &DaemonConfig, mode: Mode) -> Option<String> {
    match (daemon.trusted_proxies.is_empty(), mode) {
        (false, _) => Some(format!(
            "X-Forwarded-For, -Proto and -Host believed from daemon.trusted_proxies ({})",
            daemon.trusted_proxies.join(", ")
        )),
        (true, Mode::PlainAllowed) => Some(
            "no daemon.trusted_proxies: behind a proxy, every request seems to come from it (the audit records its \
             address, and failed sign-ins are throttled for everyone behind it); name the proxy there"
                .into(),
        ),
        (true, _) => None,
    }
}

/// What `validate` says about client connections: the cap the daemon will keep under this process's hard
/// descriptor limit (the one it raises its soft limit to), and the idle timeout.
pub fn connections_note(daemon: &DaemonConfig) -> String {
    let idle = humantime::format_duration(daemon.idle_timeout);
    match super::connections::hard_descriptor_limit() {
        Some(limit) => format!(
            "at most {} client connections at once (daemon.max_connections {}, descriptor limit {limit}), each \
             closed when no request arrives within {idle}",
            super::connections::cap(daemon.max_connections, limit),
            daemon.max_connections
        ),
        None => format!(
            "at most {} client connections at once, each closed when no request arrives within {idle}",
            daemon.max_connections
        ),
    }
}

/// The mode for serving on `addr`, or why serving there is refused.
pub fn mode(daemon: &DaemonConfig, addr: SocketAddr) -> Result<Mode, String> {
    if daemon.tls_cert.is_some() && daemon.tls_key.is_some() {
        Ok(Mode::Https)
    } else if addr.ip().is_loopback() {
        Ok(Mode::PlainLoopback)
    } else if daemon.allow_plain_http {
        Ok(Mode::PlainAllowed)
    } else {
        Err(off_loopback_refusal(&addr.to_string()))
    }
}

/// Why plain HTTP off loopback is refused, and what to do.
pub fn off_loopback_refusal(addr: &str) -> String {
    format!(
        "daemon.status_listen '{addr}' is not a loopback address, and plain HTTP there would carry passwords, tokens \
         and session cookies in clear: set daemon.tls_cert and daemon.tls_key (PEM files) to serve HTTPS, or set \
         daemon.allow_plain_http = true when a proxy in front of it does TLS (or the port is published on the \
         host's loopback only), or listen on 127.0.0.1"
    )
}

/// Reads `daemon.tls_cert` (a PEM chain, the server's certificate first) and `daemon.tls_key` (a PEM private key)
/// into a rustls server configuration; the error names the file and what to do.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("cannot read daemon.tls_cert {}: {e}. Give a PEM certificate chain.", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "daemon.tls_cert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----). Give the server's \
             certificate, followed by its intermediates.",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!("cannot read daemon.tls_key {}: {e}. Give the certificate's private key in PEM.", key.display())
    })?;
    // The provider is named rather than taken from the process default, which would panic if a dependency ever
    // enabled a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            format!(
                "daemon.tls_cert {} and daemon.tls_key do not make a TLS configuration: {e}. Check that the key \
                 belongs to the certificate.",
                cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The certificate the listener serves: its files, when they were last changed as far as the daemon read them,
/// and the live configuration the listener takes each new connection's from. A certificate renewed on disk
/// (certbot, cert-manager) replaces it for new connections, without a restart.
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    stamp: Option<[(SystemTime, u64); 2]>,
    live: RustlsConfig,
}

/// When the two files were last modified and how long they are, if both can be told. The length catches a file
/// rewritten within the file system's timestamp granularity (a few milliseconds), as a truncate and a write are.
fn stamp(cert: &Path, key: &Path) -> Option<[(SystemTime, u64); 2]> {
    let of = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    Some([of(cert)?, of(key)?])
}

impl Certificate {
    /// Reads `daemon.tls_cert` and `daemon.tls_key`; the error names the file and what to do.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, String> {
        let stamp = stamp(cert, key);
        let config = tls_config(cert, key)?;
        Ok(Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            stamp,
            live: RustlsConfig::from_config(config),
        })
    }

    /// The configuration to serve: each new connection takes the certificate in it then.
    pub fn live(&self) -> RustlsConfig {
        self.live.clone()
    }

    /// Reads the files again if they changed since they were last read: None when they did not, else whether the
    /// new pair now serves (an error keeps the previous one serving, and is not repeated until the files change
    /// again).
    pub fn refresh(&mut self) -> Option<Result<(), String>> {
        let now = stamp(&self.cert, &self.key);
        if now.is_none() || now == self.stamp {
            return None;
        }
        self.stamp = now;
        Some(tls_config(&self.cert, &self.key).map(|config| self.live.reload_from_config(config)))
    }
}

/// How long connections may finish their requests once the daemon stops.
const DRAIN: Duration = Duration::from_secs(5);

/// How the listener treats its clients' connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Client connections open at once (see `connections::cap`).
    pub max_connections: usize,
    /// `daemon.idle_timeout`: how long a request's header (or the TLS handshake) may take to arrive.
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` is cancelled: HTTPS when `tls` is given, else plain HTTP, HTTP/1.1
/// either way. Handlers see the peer's address (`ConnectInfo<SocketAddr>`). At most `limits.max_connections` are
/// open at once (see `super::connections`), and a connection whose next request's header does not arrive within
/// `limits.idle_timeout` is closed. Once stopped, requests in progress get `DRAIN` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<RustlsConfig>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let connections = Connections::new(limits.max_connections);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = async {
                connections.room().await;
                listener.accept().await
            } => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        // None only when every connection turned busy since `room`: the new one is dropped, as if refused.
        let Some(slot) = connections.admit() else { continue };
        let connection = Connection { peer, app: app.clone(), slot: Arc::new(slot), limits, stop: stop.clone() };
        tokio::spawn(connection.serve(stream, tls.clone()));
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, connections.drained()).await.is_err() {
        tracing::info!(connections = connections.open(), "Stopped serving; connections still open are dropped.");
    }
}

/// Waits out a failed accept. Out of descriptors (the daemon's own work holds more than its reserve), new clients
/// wait in the backlog while the daemon's work goes on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) {
        return;
    }
    tracing::warn!(error = %e, "Cannot accept a client connection; trying again in a second.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One client connection being served.
struct Connection {
    peer: SocketAddr,
    app: Router,
    slot: Arc<Slot>,
    limits: Limits,
    stop: CancellationToken,
}

impl Connection {
    /// Serves the connection until the client or the idle timeout ends it, it gives way to a new client, or the
    /// daemon stops.
    async fn serve(self, stream: tokio::net::TcpStream, tls: Option<RustlsConfig>) {
        let slot = self.slot.clone();
        let served = async {
            match tls {
                None => self.http(stream).await,
                Some(tls) => {
                    let handshake = RustlsAcceptor::new(tls).handshake_timeout(self.limits.idle_timeout);
                    if let Ok((stream, _)) = handshake.accept(stream, ()).await {
                        self.http(stream).await;
                    }
                }
            }
        };
        tokio::select! {
            () = served => {}
            () = slot.evicted() => {}
        }
    }

    /// HTTP/1.1 on `io`: the idle timeout is hyper's header read timeout, which runs from the connection's start
    /// and from the end of each answer until the next request's header is in.
    async fn http<I>(&self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, app, slot) = (self.peer, self.app.clone(), self.slot.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = slot.busy();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| Body::new(BusyBody { body, _busy: busy })))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.limits.idle_timeout);
        let connection = http.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = self.stop.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}

/// An answer's body, which keeps its connection busy (not to be closed for a new client) until it is sent.
struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(tls: bool, allow_plain_http: bool) -> DaemonConfig {
        DaemonConfig {
            tls_cert: tls.then(|| "cert.pem".into()),
            tls_key: tls.then(|| "key.pem".into()),
            allow_plain_http,
            ..DaemonConfig::default()
        }
    }

    #[test]
    fn plain_http_is_served_on_loopback_and_off_it_only_when_allowed_or_with_tls() {
        let lo: SocketAddr = "127.0.0.1:9185".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9185".parse().unwrap();
        let all: SocketAddr = "0.0.0.0:9185".parse().unwrap();
        assert_eq!(mode(&daemon(false, false), lo), Ok(Mode::PlainLoopback));
        assert_eq!(mode(&daemon(false, false), lo6), Ok(Mode::PlainLoopback));
        let refused = mode(&daemon(false, false), all).unwrap_err();
        assert!(refused.contains("0.0.0.0:9185") && refused.contains("daemon.tls_cert"), "{refused}");
        assert_eq!(mode(&daemon(false, true), all), Ok(Mode::PlainAllowed));
        assert_eq!(mode(&daemon(true, false), all), Ok(Mode::Https));
        assert_eq!(mode(&daemon(true, false), lo), Ok(Mode::Https));
    }

    #[test]
    fn a_missing_or_wrong_pem_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let err = tls_config(&cert, &key).unwrap_err();
        assert!(err.contains("daemon.tls_cert") && err.contains("cert.pem"), "{err}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let err = tls_config(&cert, &key).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
