//! Process edges: flag parsing errors, signals (SIGTERM/SIGINT stop, SIGHUP reloads), the admin
//! HTTP listener.

use std::net::TcpListener as StdTcpListener;

use tokio_util::sync::CancellationToken;

/// Parses flags; `--help`/`--version` print as usual, a bad flag exits 2 with one line naming it.
pub fn parse_args<A: clap::Parser>(binary: &str) -> A {
    match A::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("{binary}: error: {line} (see --help)");
            std::process::exit(2);
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub async fn shutdown_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// Asks `reloads` for a configuration reload on every SIGHUP, until the process ends. Installed
/// by `main`, so SIGHUP no longer terminates the process.
pub async fn reload_on_sighup(reloads: crate::reload::Reloads) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; the config file is still re-read when it changes");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received");
        reloads.request();
    }
}

/// Serves `router` (the admin endpoints) on `listener` until `stop`.
pub async fn serve_admin(
    listener: StdTcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
}
