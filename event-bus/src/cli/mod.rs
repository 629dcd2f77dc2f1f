//! The `event-bus` command: run a local NATS, provision an environment, read and write state,
//! follow events.

mod output;
mod server;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;

use crate::bus::{validate_env, Bus};
use crate::events::Events;
use crate::runtime::args::CommonArgs;
use crate::runtime::telemetry;
use crate::store::{provision, Provision};
use output::Output;

#[derive(Parser)]
#[command(
    name = "event-bus",
    version,
    about = "Corral's state and events on NATS: run a local server, provision an environment, read and write state, follow events.",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a local nats-server with JetStream (store under --store-dir) and provision the environment.
    Server(server::ServerArgs),
    /// Provision the environment's bucket and events stream on an existing server or cluster.
    Init(InitArgs),
    /// Print events as they happen (one JSON object per line), optionally starting in the past.
    Tail(TailArgs),
    /// Read and write the environment's state.
    #[command(subcommand)]
    State(state::StateCommand),
}

#[derive(clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub provision: ProvisionArgs,
}

#[derive(clap::Args, Clone)]
pub struct ProvisionArgs {
    /// JetStream replicas for the bucket and the events stream (3 or 5 on a cluster).
    #[arg(long, env = "CORRAL_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Values kept per key in the bucket.
    #[arg(long, env = "CORRAL_HISTORY", default_value_t = 5)]
    pub history: i64,
    /// How long the events stream keeps events (e.g. 24h, 30m).
    #[arg(long, env = "CORRAL_EVENTS_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub events_max_age: Duration,
}

impl ProvisionArgs {
    fn provision(&self) -> Provision {
        Provision { replicas: self.replicas, history: self.history, events_max_age: self.events_max_age }
    }
}

#[derive(clap::Args)]
pub struct TailArgs {
    /// Event names to follow, with NATS wildcards (`healthcheck.*`, `>` for all).
    #[arg(default_value = ">", env = "CORRAL_TAIL_PATTERN", value_name = "PATTERN")]
    pub subject: String,
    /// Start this far in the past (e.g. 10m, 1h); without it only new events are shown.
    #[arg(long, env = "CORRAL_TAIL_SINCE", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Exit after this many events.
    #[arg(long, env = "CORRAL_TAIL_COUNT")]
    pub count: Option<usize>,
    /// Output format.
    #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
    pub output: Output,
}

/// Entry point of the binary: parse flags, set up logging, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = if matches!(cli.command, Command::Server(_)) { "info" } else { "warn" };
    let filter = cli.common.log.clone().unwrap_or_else(|| quiet.to_string());
    let _telemetry = match telemetry::init("event-bus", cli.common.log_format, &filter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: logging setup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message above already carries.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    validate_env(&cli.common.env)?;
    match cli.command {
        Command::Server(args) => server::run(&cli.common, args).await,
        Command::Init(args) => {
            let bus = connect(&cli.common).await?;
            let store = provision(&bus, &args.provision.provision()).await?;
            println!(
                "provisioned environment {:?}: bucket {} (version {}), events stream {}",
                bus.env(),
                store.bucket(),
                store.version().await?,
                bus.events_stream_name()
            );
            Ok(())
        }
        Command::Tail(args) => tail(&cli.common, args).await,
        Command::State(cmd) => state::run(&cli.common, cmd).await,
    }
}

pub(crate) async fn connect(common: &CommonArgs) -> anyhow::Result<Bus> {
    Ok(Bus::connect(&common.nats.options("event-bus"), &common.env, common.nats.nats_connect_timeout).await?)
}

async fn tail(common: &CommonArgs, args: TailArgs) -> anyhow::Result<()> {
    let bus = connect(common).await?;
    let events = Events::new(&bus, "event-bus");
    let mut stream = events.replay(&args.subject, args.since).await?;
    let mut seen = 0usize;
    while args.count.is_none_or(|c| seen < c) {
        let Some(received) = stream.next().await else { break };
        args.output.print_line(&serde_json::json!({
            "subject": received.subject,
            "sequence": received.sequence,
            "event": received.event,
        }))?;
        seen += 1;
    }
    Ok(())
}

pub(crate) fn default_store_dir() -> PathBuf {
    PathBuf::from(".corral/nats")
}
