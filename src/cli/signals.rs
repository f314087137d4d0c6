//! Stop and reload signals for the long-running commands (`daemon`, `export run`), as values: the first SIGTERM or
//! SIGINT cancels `stop`, a second one cancels `abort`, SIGHUP wakes `hangup`. What they mean (a graceful stop, an
//! exit with code 130 at once, a reload) is decided by the commands and by `main.rs`; nothing here exits.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Signals {
    stop: CancellationToken,
    abort: CancellationToken,
    hangup: Arc<Notify>,
}

impl Signals {
    /// Signals that never come: for commands that keep the default handling (Ctrl-C ends them at once).
    pub fn none() -> Signals {
        Signals::default()
    }

    /// Listens for SIGTERM and SIGINT, and for SIGHUP when `hangup`. Call inside the runtime.
    pub fn install(hangup: bool) -> std::io::Result<Signals> {
        let signals = Signals::default();
        let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        let (stop, abort) = (signals.stop.clone(), signals.abort.clone());
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            stop.cancel();
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            abort.cancel();
        });
        if hangup {
            let mut hup = signal(SignalKind::hangup())?;
            let notify = signals.hangup.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    notify.notify_one();
                }
            });
        }
        Ok(signals)
    }

    /// Cancelled by the first stop signal.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Completes at the second stop signal.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Completes at the next SIGHUP.
    pub async fn hangup(&self) {
        self.hangup.notified().await
    }
}
