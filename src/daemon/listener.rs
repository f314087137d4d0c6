//! The daemon's HTTP listener: which transport it serves on its address (HTTPS with rustls, or plain HTTP), whether
//! that is allowed there, and the serving itself. Plain HTTP is served on loopback, and off it only when
//! `daemon.allow_plain_http` says something in front does TLS; passwords, tokens and session cookies never cross a
//! network in clear by default. A certificate renewed on disk is served from the next connection on. The routes are
//! the caller's; this module does not look at requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

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

/// Serves `app` on `listener` until `stop` is cancelled: HTTPS when `tls` is given, else plain HTTP. Handlers see
/// the peer's address (`ConnectInfo<SocketAddr>`) either way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<RustlsConfig>,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let Some(tls) = tls else {
        return axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    };
    let handle = axum_server::Handle::new();
    let on_stop = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        on_stop.graceful_shutdown(Some(DRAIN));
    });
    axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, tls)?.handle(handle).serve(app).await
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
