//! `nodedns-agent`: parse flags, set up logging, bind, run. Everything else is in `lib.rs`.

use anyhow::Context as _;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_common::process::{parse_args, reload_on_sighup, shutdown_on_signals};
use nodedns_common::telemetry::init_logging;
use tokio_util::sync::CancellationToken;

fn main() {
    if let Err(e) = real_main() {
        // One line an operator can act on: what failed and why.
        eprintln!("nodedns-agent: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args: Args = parse_args("nodedns-agent");
    let config = Config::resolve(&args).context("invalid configuration")?;
    init_logging(config.log_format);
    if args.check_config {
        println!("configuration OK");
        return Ok(());
    }
    let listeners = Listeners::bind(&config)?;
    let agent = Agent::new(config).reload_from(args);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(shutdown_on_signals(shutdown.clone()));
        tokio::spawn(reload_on_sighup(agent.reloads()));
        agent.run(listeners, shutdown).await
    })?;
    Ok(())
}
