//! `nodedns-authority`: parse flags, set up logging, bind, run. Everything else is in `lib.rs`.

use anyhow::Context as _;
use clap::Parser as _;
use nodedns_authority::config::{Args, Config, LogFormat};
use nodedns_authority::{Authority, Listeners};
use tokio_util::sync::CancellationToken;

fn main() {
    if let Err(e) = real_main() {
        // One line an operator can act on: what failed and why.
        eprintln!("nodedns-authority: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version print as usual; a bad flag is one line naming it.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("nodedns-authority: error: {line} (see --help)");
            std::process::exit(2);
        }
    };
    let config = Config::resolve(&args).context("invalid configuration")?;
    init_logging(config.log_format);
    if args.check_config {
        let authority = Authority::new(config);
        authority.load().context("checking the cluster file")?;
        println!("configuration OK");
        return Ok(());
    }
    let listeners = Listeners::bind(&config)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        Authority::new(config).run(listeners, shutdown).await
    })?;
    Ok(())
}

async fn signals(shutdown: CancellationToken) {
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
