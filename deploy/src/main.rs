use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy::plan;
use deploy::stackfile::{self, Input};
use event_bus::runtime::{args::CommonArgs, telemetry};
use event_bus::{Bus, StateStore};

/// Rancher stack files (docker-compose.yml + rancher-compose.yml) → Corral's desired state in
/// NATS: every file checked before anything is written, a plan shown before it is applied.
#[derive(Parser)]
#[command(name = "deploy", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the stack files and print the desired services; needs no NATS.
    Validate(StackArgs),
    /// Check the stack files, show what would change, and apply it (unless --dry-run).
    Up {
        #[command(flatten)]
        stack: StackArgs,
        /// Show the plan only; write nothing.
        #[arg(long, env = "CORRAL_DEPLOY_DRY_RUN")]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct StackArgs {
    /// The compose file.
    #[arg(short = 'f', long = "file", env = "CORRAL_DEPLOY_FILE", default_value = "docker-compose.yml")]
    file: PathBuf,
    /// The rancher-compose file (default: rancher-compose.yml beside the compose file, if present).
    #[arg(short = 'r', long = "rancher-file", env = "CORRAL_DEPLOY_RANCHER_FILE")]
    rancher_file: Option<PathBuf>,
    /// Stack name (default: the compose file's directory name).
    #[arg(short = 'p', long = "project-name", env = "CORRAL_DEPLOY_STACK")]
    stack: Option<String>,
    /// KEY=VALUE file for variables (after --answers, before the process environment).
    #[arg(short = 'e', long = "env-file", env = "CORRAL_DEPLOY_ENV_FILE")]
    env_file: Option<PathBuf>,
    /// YAML map of answers: the first place variables are looked up.
    #[arg(long, env = "CORRAL_DEPLOY_ANSWERS")]
    answers: Option<PathBuf>,
}

impl StackArgs {
    fn input(&self) -> Result<Input, Vec<deploy::problem::Problem>> {
        let dir = self.file.canonicalize().ok().and_then(|p| p.parent().map(|d| d.to_path_buf()));
        let stack = self.stack.clone().unwrap_or_else(|| {
            dir.as_ref().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default()
        });
        let rancher = self.rancher_file.clone().or_else(|| {
            let beside = self.file.parent().unwrap_or(std::path::Path::new(".")).join("rancher-compose.yml");
            beside.exists().then_some(beside)
        });
        let env_file = match &self.env_file {
            Some(p) => stackfile::read_env_file(p).map_err(|e| vec![e])?,
            None => BTreeMap::new(),
        };
        let answers = match &self.answers {
            Some(p) => read_answers(p).map_err(|e| vec![e])?,
            None => BTreeMap::new(),
        };
        Ok(Input { compose: self.file.clone(), rancher, stack, answers, env_file })
    }
}

fn read_answers(path: &std::path::Path) -> Result<BTreeMap<String, String>, deploy::problem::Problem> {
    let problem = |pos, message: String| deploy::problem::Problem {
        file: path.display().to_string(),
        pos,
        path: String::new(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(Default::default(), format!("cannot read: {e}")))?;
    let node = deploy::yaml::parse(&text).map_err(|e| problem(e.pos, format!("YAML: {}", e.message)))?;
    let mut out = BTreeMap::new();
    for (k, v) in node.as_map().unwrap_or_default() {
        let value = match v.to_json() {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.as_str().unwrap_or_default().to_string(),
            _ => return Err(problem(v.pos, "answers are strings, numbers or booleans".into())),
        };
        out.insert(k.as_str().unwrap_or_default().to_string(), value);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = telemetry::init("deploy", cli.common.log_format, cli.common.log.as_deref().unwrap_or("warn"));
    let args = match &cli.command {
        Command::Validate(a) => a,
        Command::Up { stack, .. } => stack,
    };
    // Everything is checked before NATS is contacted: a broken file reads the same offline.
    let desired = match args.input().and_then(|i| stackfile::load(&i)) {
        Ok(d) => d,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s); nothing was written", problems.len());
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Validate(_) => {
            for s in &desired.services {
                println!("{}", serde_json::to_string(s).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Command::Up { dry_run, .. } => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("deploy: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(up(&cli.common, &desired, dry_run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("deploy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn up(common: &CommonArgs, desired: &stackfile::Desired, dry_run: bool) -> anyhow::Result<()> {
    let bus = Bus::connect(&common.nats.options("deploy"), &common.env, common.nats.nats_connect_timeout).await?;
    let store = StateStore::open(&bus).await?;
    let exists = store.get::<event_bus::model::Stack>(&desired.stack.uuid).await?.is_some();
    let current = plan::current(&store, &desired.stack.name).await?;
    let plan = plan::plan(desired, exists, &current);
    print!("{plan}");
    if !dry_run && !plan.is_empty() {
        plan::apply(&store, desired, &plan).await?;
        println!("applied");
    }
    Ok(())
}
