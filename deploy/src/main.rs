use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy::history::History;
use deploy::plan::{self, Scale};
use deploy::stackfile::{self, Input};
use deploy::{apply, ps};
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
    /// Remove a stack: its services, then the stack (recorded, so `rollback` can bring it back).
    Rm {
        stack: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stacks, services and containers with their state and health.
    Ps {
        /// Only this stack.
        stack: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Set the scale of services: `deploy scale app/web=3 app/db=1`.
    Scale {
        /// `stack/service=N`, one or more (all of one stack).
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// A stack's (or one service's) desired state as stored, in JSON.
    Inspect {
        /// `stack` or `stack/service`.
        target: String,
    },
    /// Every applied revision of a stack.
    History { stack: String },
    /// Apply an earlier revision again, exactly (default: the one before the latest).
    Rollback {
        stack: String,
        revision: Option<u64>,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
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
    // Stack files are checked before NATS is contacted: a broken file reads the same offline.
    let desired = match &cli.command {
        Command::Validate(a) | Command::Up { stack: a, .. } => match a.input().and_then(|i| stackfile::load(&i)) {
            Ok(d) => Some(d),
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!("{} problem(s); nothing was written", problems.len());
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    if let (Command::Validate(_), Some(d)) = (&cli.command, &desired) {
        for s in &d.services {
            println!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deploy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli, desired.as_ref())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deploy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, desired: Option<&stackfile::Desired>) -> anyhow::Result<ExitCode> {
    let common = &cli.common;
    let bus = Bus::connect(&common.nats.options("deploy"), &common.env, common.nats.nats_connect_timeout).await?;
    let store = StateStore::open(&bus).await?;
    let history = History::open(&bus).await?;
    let report = |applied: apply::Applied| {
        print!("{}", applied.plan);
        if let Some(rev) = applied.revision {
            println!("applied as revision {rev}");
        }
    };
    match &cli.command {
        Command::Validate(_) => unreachable!("handled without NATS"),
        Command::Up { dry_run, .. } => {
            let d = desired.expect("loaded above");
            report(apply::run(&store, &history, &d.stack.name, Some(d), Scale::Keep, "up", *dry_run).await?);
        }
        Command::Rm { stack, dry_run } => {
            report(apply::run(&store, &history, stack, None, Scale::Exact, "rm", *dry_run).await?);
        }
        Command::Scale { targets } => {
            let mut stack_name: Option<String> = None;
            let mut wanted = Vec::new();
            for t in targets {
                let parsed =
                    t.split_once('=').and_then(|(svc, n)| Some((svc.split_once('/')?, n.parse::<u32>().ok()?)));
                let Some(((stack, svc), n)) = parsed else {
                    eprintln!("{t:?}: expected stack/service=N");
                    return Ok(ExitCode::from(2));
                };
                if stack_name.get_or_insert_with(|| stack.to_string()) != stack {
                    eprintln!("{t:?}: one stack at a time");
                    return Ok(ExitCode::from(2));
                }
                wanted.push((svc.to_string(), n));
            }
            let stack = stack_name.expect("at least one target");
            let Some(d) = stored(&store, &stack).await? else {
                eprintln!("no stack {stack:?}");
                return Ok(ExitCode::from(2));
            };
            let mut d = d;
            for (svc, n) in &wanted {
                match d.services.iter_mut().find(|s| &s.name == svc) {
                    Some(s) => s.scale = Some(*n),
                    None => {
                        eprintln!("stack {stack:?} has no service {svc:?}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            report(
                apply::run(
                    &store,
                    &history,
                    &stack,
                    Some(&d),
                    Scale::Exact,
                    &format!("scale {}", targets.join(" ")),
                    false,
                )
                .await?,
            );
        }
        Command::Rollback { stack, revision, dry_run } => {
            let target = match revision {
                Some(r) => *r,
                None => match history.head(stack).await? {
                    Some((head, _)) if head.revision >= 2 => head.revision - 1,
                    _ => {
                        eprintln!("stack {stack:?} has no earlier revision to roll back to");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            let rev = history.get(stack, target).await?;
            let command = format!("rollback {target}");
            let applied = match rev.stack {
                Some(st) => {
                    let d = stackfile::Desired { stack: st, services: rev.services, volumes: Default::default() };
                    apply::run(&store, &history, stack, Some(&d), Scale::Exact, &command, *dry_run).await?
                }
                None => apply::run(&store, &history, stack, None, Scale::Exact, &command, *dry_run).await?,
            };
            report(applied);
        }
        Command::History { stack } => {
            let revs = history.list(stack).await?;
            if revs.is_empty() {
                eprintln!("no revisions of stack {stack:?}");
                return Ok(ExitCode::from(2));
            }
            println!("{:<8} {:<24} {:<9} COMMAND", "REVISION", "APPLIED (UTC)", "SERVICES");
            for r in revs {
                println!("{:<8} {:<24} {:<9} {}", r.revision, utc(r.applied_at_ms), r.services.len(), r.command);
            }
        }
        Command::Inspect { target } => {
            let (stack, svc) = match target.split_once('/') {
                Some((st, sv)) => (st.to_string(), Some(sv.to_string())),
                None => (target.clone(), None),
            };
            let Some(d) = stored(&store, &stack).await? else {
                eprintln!("no stack {stack:?}");
                return Ok(ExitCode::from(2));
            };
            let value = match svc {
                None => serde_json::json!({"stack": d.stack, "services": d.services}),
                Some(name) => match d.services.iter().find(|s| s.name == name) {
                    Some(s) => serde_json::to_value(s)?,
                    None => {
                        eprintln!("stack {stack:?} has no service {name:?}");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Command::Ps { stack, output } => {
            let metrics = event_bus::runtime::metrics::Metrics::new();
            let cache = event_bus::StateCache::start(&bus, &metrics).await?;
            let rows = ps::rows(&cache.snapshot(), stack.as_deref());
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print!("{}", ps::table(&rows)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The stack as NATS holds it now.
async fn stored(store: &StateStore, stack: &str) -> anyhow::Result<Option<stackfile::Desired>> {
    let Some(st) = store.get::<event_bus::model::Stack>(&deploy::compose::stack_id(stack)).await? else {
        return Ok(None);
    };
    let services = plan::current(store, stack).await?.into_values().collect();
    Ok(Some(stackfile::Desired { stack: st.value, services, volumes: Default::default() }))
}

fn utc(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
