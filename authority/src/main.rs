//! `nodedns-authority`: parse flags, set up logging, bind, run. Everything else is in `lib.rs`.

use anyhow::Context as _;
use nodedns_authority::config::{Args, Config};
use nodedns_authority::migrate::{self, MigrateCli, MigrateCommand};
use nodedns_authority::{Authority, Listeners};
use nodedns_common::process::{parse_args, reload_on_sighup, shutdown_on_signals};
use nodedns_common::telemetry::init_logging;
use tokio_util::sync::CancellationToken;

fn main() {
    if let Err(e) = real_main() {
        // One line an operator can act on: what failed and why.
        eprintln!("nodedns-authority: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    // `migrate` is a one-shot tool beside the server, parsed on its own so the server's flags
    // stay as they are.
    if std::env::args_os().nth(1).is_some_and(|a| a == "migrate") {
        let MigrateCli { command: MigrateCommand::Migrate(args) } = parse_args("nodedns-authority");
        if args.corefile.is_none() && args.kube_dns_configmap.is_none() {
            eprintln!(
                "nodedns-authority: error: migrate needs --corefile FILE or --kube-dns-configmap FILE (see --help)"
            );
            std::process::exit(2);
        }
        print!("{}", migrate::run(&args)?);
        return Ok(());
    }
    let args: Args = parse_args("nodedns-authority");
    let config = Config::resolve(&args).context("invalid configuration")?;
    init_logging(config.log_format);
    if args.check_config {
        let authority = Authority::new(config);
        authority.load().context("checking the cluster file")?;
        println!("configuration OK");
        return Ok(());
    }
    let listeners = Listeners::bind(&config)?;
    let authority = Authority::new(config).reload_from(args);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(shutdown_on_signals(shutdown.clone()));
        tokio::spawn(reload_on_sighup(authority.reloads()));
        authority.run(listeners, shutdown).await
    })?;
    Ok(())
}
