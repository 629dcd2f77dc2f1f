use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy::history::History;
use deploy::plan::{self, Scale};
use deploy::stackfile::{self, Input};
use deploy::{apply, catalog, ps, template};
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
        /// Replace the containers of services whose launch config changed, in batches
        /// (`upgrade_strategy` in rancher-compose.yml: batch_size, interval_millis, start_first).
        #[arg(short = 'u', long, env = "CORRAL_DEPLOY_UPGRADE", conflicts_with_all = ["confirm_upgrade", "rollback"])]
        upgrade: bool,
        /// Units replaced at a time (default: the service's upgrade_strategy, else 2).
        #[arg(long, env = "CORRAL_DEPLOY_BATCH_SIZE", requires = "upgrade", value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: Option<u32>,
        /// Milliseconds between batches (default: the service's upgrade_strategy, else 1000).
        #[arg(long, env = "CORRAL_DEPLOY_INTERVAL", requires = "upgrade")]
        interval: Option<u64>,
        /// Finish an upgrade that is done: the old (stopped) containers are removed.
        #[arg(short = 'c', long, env = "CORRAL_DEPLOY_CONFIRM_UPGRADE", conflicts_with = "rollback")]
        confirm_upgrade: bool,
        /// Undo an upgrade: the previous launch config back, the old containers started again,
        /// the new ones removed.
        #[arg(long, env = "CORRAL_DEPLOY_ROLLBACK")]
        rollback: bool,
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
    /// Run the controller: places containers for every service (one active per environment; a
    /// standby takes over when the active one's lease lapses). Runs until SIGTERM.
    Controller {
        /// How long the lease lasts without renewal (a standby takes over after it).
        #[arg(long, env = "CORRAL_DEPLOY_LEASE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
        lease_ttl: std::time::Duration,
        /// A host whose heartbeat is older than this has its containers placed elsewhere.
        #[arg(long, env = "CORRAL_DEPLOY_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat_timeout: std::time::Duration,
        /// This controller's name in the lease (default: host name and process id).
        #[arg(long, env = "CORRAL_DEPLOY_HOLDER")]
        holder: Option<String>,
        /// Health decisions (deploy/src/health.rs).
        #[command(flatten)]
        health: deploy::health::HealthArgs,
    },
    /// Run the host agent: registers this host and makes the local Docker engine run the
    /// containers the controller assigned to it. Runs until SIGTERM.
    Agent {
        /// This host's id in the state (default: the host name).
        #[arg(long, env = "CORRAL_DEPLOY_HOST_UUID")]
        host_uuid: Option<String>,
        /// This host's name (default: the host name).
        #[arg(long, env = "CORRAL_DEPLOY_HOST_NAME")]
        host_name: Option<String>,
        /// The address other hosts reach this one at.
        #[arg(long, env = "CORRAL_DEPLOY_AGENT_IP", default_value = "127.0.0.1")]
        agent_ip: String,
        /// This host's slice of the managed network (e.g. 10.42.3.0/24).
        #[arg(long, env = "CORRAL_DEPLOY_SUBNET")]
        subnet: String,
        /// Host labels for scheduling rules, `k=v` comma-separated.
        #[arg(long, env = "CORRAL_DEPLOY_HOST_LABELS", value_delimiter = ',')]
        labels: Vec<String>,
        /// The Docker network to create for the subnet (default: corral-<host uuid>).
        #[arg(long, env = "CORRAL_DEPLOY_NETWORK")]
        network: Option<String>,
        /// How often the host record's heartbeat is written.
        #[arg(long, env = "CORRAL_DEPLOY_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
        heartbeat: std::time::Duration,
        /// DNS servers for containers (rancher-dns), comma-separated; default: Docker's.
        #[arg(long, env = "CORRAL_DEPLOY_CONTAINER_DNS", value_delimiter = ',')]
        container_dns: Vec<String>,
        /// How long a container gets to stop after SIGTERM before it is killed (upgrades).
        #[arg(long, env = "CORRAL_DEPLOY_STOP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        stop_timeout: std::time::Duration,
        /// The image load balancer services' containers run: lb-haproxy with HAProxy, built by
        /// scripts/lb-image.
        #[arg(long, env = "CORRAL_DEPLOY_LB_IMAGE", default_value = "corral/lb-haproxy:dev")]
        lb_image: String,
    },
    /// Everything on this machine from one command: `deploy local up web-lb` starts a private
    /// NATS, the controller, an agent on the local Docker engine, rancher-dns and
    /// rancher-metadata, deploys the stack and waits until it runs; `deploy local down` stops it.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Browse a catalog (Rancher's layout: templates/<name>/config.yml, numbered versions).
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
        /// The catalog directory (or git checkout).
        #[arg(long, env = "CORRAL_DEPLOY_CATALOG", default_value = "catalog", global = true)]
        catalog: PathBuf,
    },
    /// The output of a stack's (or one service's) containers, from the agents of their hosts,
    /// each line prefixed with the container's name.
    Logs {
        /// `stack` or `stack/service`.
        target: String,
        /// Keep streaming new output until interrupted.
        #[arg(short = 'f', long, env = "CORRAL_DEPLOY_LOGS_FOLLOW")]
        follow: bool,
        /// Only the last N lines of each container.
        #[arg(long, env = "CORRAL_DEPLOY_LOGS_TAIL")]
        tail: Option<u64>,
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

#[derive(Subcommand)]
enum LocalCommand {
    /// Start what is not running yet, deploy TARGET (if given) and wait until its containers run.
    Up(LocalUp),
    /// Stop the processes `up` started and the local agent's containers; the state is kept (the
    /// next `up` brings the same containers back).
    Down {
        #[command(flatten)]
        machine: deploy::local::Machine,
        /// How long a container gets to stop after SIGTERM before it is killed.
        #[arg(long, env = "CORRAL_LOCAL_STOP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
        stop_timeout: std::time::Duration,
    },
}

#[derive(clap::Args)]
struct LocalUp {
    /// A catalog template (`NAME[:VERSION]`), a directory holding docker-compose.yml, or a
    /// compose file; none: only start the services.
    target: Option<String>,
    /// Stack name (default: the template's or the directory's name).
    #[arg(short = 'p', long = "project-name", env = "CORRAL_DEPLOY_STACK")]
    stack: Option<String>,
    /// YAML map of answers for a template, or of variables for a compose file.
    #[arg(long, env = "CORRAL_DEPLOY_ANSWERS")]
    answers: Option<PathBuf>,
    /// KEY=VALUE file for variables.
    #[arg(short = 'e', long = "env-file", env = "CORRAL_DEPLOY_ENV_FILE")]
    env_file: Option<PathBuf>,
    /// The catalog templates come from.
    #[arg(long = "catalog", env = "CORRAL_DEPLOY_CATALOG", default_value = "catalog")]
    catalog_dir: PathBuf,
    #[command(flatten)]
    machine: deploy::local::Machine,
    #[command(flatten)]
    services: deploy::local::Services,
}

impl LocalUp {
    /// The stack arguments `up` would get: a template, a directory, or a file.
    fn stack_args(&self, target: &str) -> StackArgs {
        let path = std::path::Path::new(target);
        let (file, template) = if path.is_dir() {
            (path.join("docker-compose.yml"), None)
        } else if path.is_file() {
            (path.to_path_buf(), None)
        } else {
            (PathBuf::from("docker-compose.yml"), Some(target.to_string()))
        };
        StackArgs {
            file,
            rancher_file: None,
            stack: self.stack.clone(),
            env_file: self.env_file.clone(),
            answers: self.answers.clone(),
            template,
            catalog_dir: self.catalog_dir.clone(),
            prompt: false,
        }
    }
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Templates, their versions and descriptions.
    List,
    /// One template version's questions: `NAME[:VERSION]`.
    Show { template: String },
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
    /// Deploy a catalog template instead of -f/-r: `NAME[:VERSION]`.
    #[arg(short = 't', long, env = "CORRAL_DEPLOY_TEMPLATE")]
    template: Option<String>,
    /// The catalog the template comes from.
    #[arg(long = "catalog", env = "CORRAL_DEPLOY_CATALOG", default_value = "catalog")]
    catalog_dir: PathBuf,
    /// Ask for missing required answers on stdin (default: only when stdin is a terminal).
    #[arg(long, env = "CORRAL_DEPLOY_PROMPT")]
    prompt: bool,
}

impl StackArgs {
    fn input(&self) -> Result<Input, Vec<deploy::problem::Problem>> {
        let problem = |file: &str, message: String| deploy::problem::Problem {
            file: file.to_string(),
            pos: Default::default(),
            path: String::new(),
            message,
        };
        let env_file = match &self.env_file {
            Some(p) => stackfile::read_env_file(p).map_err(|e| vec![e])?,
            None => BTreeMap::new(),
        };
        let (mut answers, answer_pos) = match &self.answers {
            Some(p) => read_answers(p).map_err(|e| vec![e])?,
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let Some(spec) = &self.template else {
            let dir = self.file.canonicalize().ok().and_then(|p| p.parent().map(|d| d.to_path_buf()));
            // The directory's name, made a valid stack name as rancher-compose did (`My_App` → `my-app`).
            let stack = self.stack.clone().unwrap_or_else(|| {
                let dir_name = dir
                    .as_ref()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                dir_name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect::<String>()
                    .trim_matches('-')
                    .to_string()
            });
            let rancher = self.rancher_file.clone().or_else(|| {
                let beside = self.file.parent().unwrap_or(std::path::Path::new(".")).join("rancher-compose.yml");
                beside.exists().then_some(beside)
            });
            return Ok(Input { compose: self.file.clone(), rancher, stack, answers, env_file, ..Default::default() });
        };
        // A catalog template: answers checked against the questions, then `.tpl` rendered.
        let (t, v) = catalog::resolve(&self.catalog_dir, spec).map_err(|e| vec![problem(spec, e.to_string())])?;
        let interactive = self.prompt || std::io::IsTerminal::is_terminal(&std::io::stdin());
        if interactive {
            prompt_missing(&v.questions, &mut answers);
        }
        // A bad answer is reported where it was given; a missing one against the template.
        let template_file = v.rancher.as_ref().unwrap_or(&v.compose).display().to_string();
        let answers_file = self.answers.as_ref().map(|p| p.display().to_string());
        catalog::check_answers(&v.questions, &answers).map_err(|ps| {
            ps.into_iter()
                .map(|(var, message)| match (answer_pos.get(&var), &answers_file) {
                    (Some(pos), Some(file)) => {
                        deploy::problem::Problem { file: file.clone(), pos: *pos, path: var, message }
                    }
                    _ => deploy::problem::Problem {
                        file: template_file.clone(),
                        pos: deploy::yaml::Pos { line: 1, col: 1 },
                        path: format!("questions.{var}"),
                        message,
                    },
                })
                .collect::<Vec<_>>()
        })?;
        // Answers the template does not ask for are most likely misspelt.
        let unknown: Vec<deploy::problem::Problem> = answers
            .keys()
            .filter(|k| !v.questions.iter().any(|q| &q.variable == *k))
            .map(|k| deploy::problem::Problem {
                file: answers_file.clone().unwrap_or_default(),
                pos: answer_pos.get(k).copied().unwrap_or_default(),
                path: k.clone(),
                message: "not a question of this template".into(),
            })
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
        // As Rancher's UI did, a template's answers start from the questions' defaults, so
        // `{{ .Values.X }}` and `${X}` read the same value (the environment does not override it).
        let defaults = catalog::defaults(&v.questions);
        for (k, d) in &defaults {
            answers.entry(k.clone()).or_insert_with(|| d.clone());
        }
        let stack = self.stack.clone().unwrap_or_else(|| t.id.clone());
        let compose_text = if v.compose.extension().is_some_and(|e| e == "tpl") {
            let text = std::fs::read_to_string(&v.compose)
                .map_err(|e| vec![problem(&v.compose.display().to_string(), e.to_string())])?;
            let mut values = defaults.clone();
            values.extend(answers.clone());
            let data =
                template::Data { values, stack_name: stack.clone(), version: v.version.clone().unwrap_or_default() };
            Some(template::render(&text, &data).map_err(|e| {
                vec![deploy::problem::Problem {
                    file: v.compose.display().to_string(),
                    pos: deploy::yaml::Pos { line: e.line, col: 1 },
                    path: String::new(),
                    message: e.message,
                }]
            })?)
        } else {
            None
        };
        Ok(Input {
            compose: v.compose.clone(),
            rancher: v.rancher.clone(),
            stack,
            answers,
            env_file,
            defaults,
            compose_text,
        })
    }
}

/// Asks for every required question that has no answer and no default, on stderr/stdin, until
/// the answer passes the question's checks (three tries).
fn prompt_missing(questions: &[catalog::Question], answers: &mut BTreeMap<String, String>) {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    for q in questions {
        if answers.contains_key(&q.variable) || !q.required || q.default.as_deref().is_some_and(|d| !d.is_empty()) {
            continue;
        }
        for _ in 0..3 {
            eprint!("{} ({}): ", if q.label.is_empty() { &q.variable } else { &q.label }, q.variable);
            let mut line = String::new();
            if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            match catalog::check(q, &line) {
                Ok(()) => {
                    answers.insert(q.variable.clone(), line);
                    break;
                }
                Err(e) => eprintln!("  {e}"),
            }
        }
    }
}

type Answers = (BTreeMap<String, String>, BTreeMap<String, deploy::yaml::Pos>);

/// A YAML map of answers, with the position of each value.
fn read_answers(path: &std::path::Path) -> Result<Answers, deploy::problem::Problem> {
    let problem = |pos, message: String| deploy::problem::Problem {
        file: path.display().to_string(),
        pos,
        path: String::new(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(Default::default(), format!("cannot read: {e}")))?;
    let node = deploy::yaml::parse(&text).map_err(|e| problem(e.pos, format!("YAML: {}", e.message)))?;
    let (mut out, mut pos) = (BTreeMap::new(), BTreeMap::new());
    let Some(entries) = node.as_map() else {
        return Err(problem(node.pos, format!("expected a map of VARIABLE: answer, found {}", node.kind())));
    };
    for (k, v) in entries {
        let value = match v.to_json() {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.as_str().unwrap_or_default().to_string(),
            _ => return Err(problem(v.pos, "answers are strings, numbers or booleans".into())),
        };
        let key = k.as_str().unwrap_or_default().to_string();
        pos.insert(key.clone(), v.pos);
        out.insert(key, value);
    }
    Ok((out, pos))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One-shot commands piped into `head` end quietly when the reader goes, as other CLIs do,
    // instead of panicking on a broken pipe. (Not the long-running ones: they own sockets.)
    if !matches!(cli.command, Command::Controller { .. } | Command::Agent { .. } | Command::Local { .. }) {
        // SAFETY: restores the default disposition of one signal before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The long-running commands log what they do (`info`), as every component does; one-shot
    // commands only warnings.
    let long_running = matches!(cli.command, Command::Controller { .. } | Command::Agent { .. });
    let default_log = if long_running { "info" } else { "warn" };
    let _telemetry = telemetry::init("deploy", cli.common.log_format, cli.common.log.as_deref().unwrap_or(default_log));
    // Stack files are checked before NATS is contacted: a broken file reads the same offline.
    let desired = match &cli.command {
        Command::Local { command: LocalCommand::Up(LocalUp { target: Some(target), .. }) } => {
            let Command::Local { command: LocalCommand::Up(up) } = &cli.command else { unreachable!() };
            match up.stack_args(target).input().and_then(|i| stackfile::load(&i)) {
                Ok(d) => Some(d),
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("{} problem(s); nothing was started or written", problems.len());
                    return ExitCode::from(2);
                }
            }
        }
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
    if let Command::Catalog { command, catalog } = &cli.command {
        return match catalog_command(command, catalog) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("deploy: {e}");
                ExitCode::from(2)
            }
        };
    }
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
    let result = match &cli.command {
        Command::Local { command: LocalCommand::Up(up) } => {
            rt.block_on(deploy::local::up(&cli.common, &up.machine, &up.services, desired.as_ref()))
        }
        Command::Local { command: LocalCommand::Down { machine, stop_timeout } } => {
            rt.block_on(deploy::local::down(&cli.common, machine, *stop_timeout))
        }
        _ => rt.block_on(run(&cli, desired.as_ref())),
    };
    match result {
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
        Command::Validate(_) | Command::Catalog { .. } | Command::Local { .. } => unreachable!("handled before"),
        Command::Agent {
            host_uuid,
            host_name,
            agent_ip,
            subnet,
            labels,
            network,
            heartbeat,
            container_dns,
            stop_timeout,
            lb_image,
        } => {
            let default_name = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
            let host_uuid = host_uuid.clone().unwrap_or_else(|| default_name.clone());
            let mut host_labels = event_bus::model::Labels::new();
            for l in labels.iter().filter(|l| !l.is_empty()) {
                let Some((k, v)) = l.split_once('=') else {
                    eprintln!("--labels {l:?}: expected k=v");
                    return Ok(ExitCode::from(2));
                };
                host_labels.insert(k.trim().into(), v.trim().into());
            }
            let settings = deploy::agent::Settings {
                network: network.clone().unwrap_or_else(|| format!("corral-{host_uuid}")),
                host_name: host_name.clone().unwrap_or_else(|| default_name.clone()),
                host_uuid,
                agent_ip: agent_ip.clone(),
                labels: host_labels,
                subnet: subnet.clone(),
                heartbeat: *heartbeat,
                dns: container_dns.clone(),
                stop_timeout: *stop_timeout,
                lb_image: lb_image.clone(),
                // Credentials never go into a container's environment (docker inspect shows it).
                nats_url: event_bus::bus::redact_url(&common.nats.nats_url),
                env: common.env.clone(),
            };
            let docker = bollard::Docker::connect_with_local_defaults()?;
            let metrics = event_bus::runtime::metrics::Metrics::new();
            let cache = event_bus::StateCache::start(&bus, &metrics).await?;
            let readiness = event_bus::runtime::admin::Readiness::new();
            let c = cache.clone();
            readiness.add("state cache", move || c.readiness());
            let admin_addr = common.admin_addr.unwrap_or("127.0.0.1:9224".parse().expect("valid"));
            let _admin = event_bus::runtime::admin::AdminServer::start(admin_addr, metrics, readiness).await?;
            tokio::spawn(deploy::agent::serve_logs(
                bus.clone(),
                docker.clone(),
                cache.clone(),
                settings.host_uuid.clone(),
            ));
            tokio::select! {
                r = deploy::agent::run(docker, store.clone(), cache.clone(), settings) => r?,
                _ = event_bus::runtime::shutdown::signal() => tracing::info!("agent stopping"),
            }
        }
        Command::Controller { lease_ttl, heartbeat_timeout, holder, health } => {
            let metrics = event_bus::runtime::metrics::Metrics::new();
            let cache = event_bus::StateCache::start(&bus, &metrics).await?;
            let (active_tx, active_rx) = tokio::sync::watch::channel(false);
            let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
            metrics.register(
                "corral_deploy_controller_active",
                "1 while this controller holds the lease",
                gauge.clone(),
            );
            let readiness = event_bus::runtime::admin::Readiness::new();
            let c = cache.clone();
            readiness.add("state cache", move || c.readiness());
            // Health verdicts and strategies: a task beside the controller that writes only while
            // `active_rx` says this controller holds the lease (deploy/src/health.rs).
            let _health = deploy::health::spawn(
                store.clone(),
                cache.clone(),
                event_bus::Events::new(&bus, "deploy-controller"),
                health.settings(*heartbeat_timeout),
                active_rx.clone(),
                &metrics,
            );
            let admin_addr = common.admin_addr.unwrap_or("127.0.0.1:9223".parse().expect("valid"));
            let _admin = event_bus::runtime::admin::AdminServer::start(admin_addr, metrics, readiness).await?;
            let settings = deploy::controller::Settings {
                holder: holder.clone().unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        std::env::var("HOSTNAME").unwrap_or_else(|_| "controller".into()),
                        std::process::id()
                    )
                }),
                lease_ttl: *lease_ttl,
                heartbeat_timeout: *heartbeat_timeout,
            };
            tracing::info!(holder = %settings.holder, "controller starting");
            let mut watch_active = active_rx.clone();
            tokio::spawn(async move {
                while watch_active.changed().await.is_ok() {
                    gauge.set(*watch_active.borrow() as i64);
                }
            });
            let holder = settings.holder.clone();
            tokio::select! {
                _ = deploy::controller::run(store.clone(), cache.clone(), settings, active_tx) => {}
                _ = event_bus::runtime::shutdown::signal() => tracing::info!("controller stopping"),
            }
            // Giving the lease up is a courtesy to the standby; with NATS gone it must not
            // keep the process from exiting.
            let release = deploy::controller::release(&store, &holder);
            if tokio::time::timeout(std::time::Duration::from_secs(2), release).await.is_err() {
                tracing::warn!("could not give the lease up (NATS unreachable); it lapses by itself");
            }
        }
        Command::Up { dry_run, upgrade, batch_size, interval, confirm_upgrade, rollback, .. } => {
            let d = desired.expect("loaded above");
            let stack = d.stack.name.clone();
            let current = plan::current(&store, &stack).await?;
            if *confirm_upgrade || *rollback {
                return finish_upgrade(&store, &history, &bus, &stack, *rollback, *dry_run).await;
            }
            let mut d = d.clone();
            let how = upgrade.then_some((*batch_size, *interval));
            let upgraded = match deploy::upgrade::prepare(&current, &mut d.services, how) {
                Ok((upgraded, notes)) => {
                    notes.iter().for_each(|n| eprintln!("{n}"));
                    upgraded
                }
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let command = if *upgrade { "up --upgrade" } else { "up" };
            report(apply::run(&store, &history, &stack, Some(&d), Scale::Exact, command, *dry_run).await?);
            if !upgraded.is_empty() && !*dry_run {
                println!(
                    "upgrading {} in batches; `deploy ps {stack}` shows the progress, then `deploy up --confirm-upgrade` (or --rollback)",
                    upgraded.join(", ")
                );
            }
        }
        Command::Rm { stack, dry_run } => {
            if store.get::<event_bus::model::Stack>(&deploy::compose::stack_id(stack)).await?.is_none() {
                eprintln!("no stack {stack:?}");
                return Ok(ExitCode::from(2));
            }
            report(apply::run(&store, &history, stack, None, Scale::Exact, "rm", *dry_run).await?);
        }
        Command::Scale { targets } => {
            let mut stack_name: Option<String> = None;
            let mut wanted = Vec::new();
            for t in targets {
                let parsed =
                    t.split_once('=').and_then(|(svc, n)| Some((svc.split_once('/')?, n.parse::<u32>().ok()?)));
                let Some(((stack, svc), n)) = parsed.filter(|(_, n)| *n <= 10_000) else {
                    eprintln!("{t:?}: expected stack/service=N with N from 0 to 10000");
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
        Command::Logs { target, follow, tail } => {
            return deploy::logs::run(&bus, target, *follow, *tail).await;
        }
        Command::Ps { stack, output } => {
            let metrics = event_bus::runtime::metrics::Metrics::new();
            let cache = event_bus::StateCache::start(&bus, &metrics).await?;
            let snap = cache.snapshot();
            if let Some(name) = stack.as_deref().filter(|n| !snap.stacks().any(|s| s.name == *n)) {
                eprintln!("no stack {name:?}");
                return Ok(ExitCode::from(2));
            }
            let rows = ps::rows(&snap, stack.as_deref());
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => print!("{}", ps::table(&rows)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn catalog_command(command: &CatalogCommand, root: &std::path::Path) -> Result<(), catalog::CatalogError> {
    match command {
        CatalogCommand::List => {
            println!("{:<24} {:<12} {:<16} DESCRIPTION", "TEMPLATE", "DEFAULT", "VERSIONS");
            let (templates, broken) = catalog::templates(root)?;
            for e in &broken {
                eprintln!("deploy: skipped a template: {e}");
            }
            for t in templates {
                let versions: Vec<String> =
                    t.versions.iter().map(|v| v.version.clone().unwrap_or_else(|| v.folder.clone())).collect();
                let default = t.config.version.clone().or_else(|| versions.last().cloned()).unwrap_or_default();
                println!("{:<24} {:<12} {:<16} {}", t.id, default, versions.join(","), t.config.description);
            }
        }
        CatalogCommand::Show { template } => {
            let (t, v) = catalog::resolve(root, template)?;
            println!("{} ({}) version {}", t.config.name, t.id, v.version.clone().unwrap_or_else(|| v.folder.clone()));
            if !t.config.description.is_empty() {
                println!("{}", t.config.description);
            }
            println!();
            println!("{:<24} {:<12} {:<9} {:<16} LABEL", "VARIABLE", "TYPE", "REQUIRED", "DEFAULT");
            for q in &v.questions {
                let kind =
                    if q.options.is_empty() { q.kind.clone() } else { format!("{}({})", q.kind, q.options.join("|")) };
                let default = if q.kind == "password" && q.default.is_some() {
                    "(set)".to_string()
                } else {
                    q.default.clone().unwrap_or_default()
                };
                println!("{:<24} {:<12} {:<9} {:<16} {}", q.variable, kind, q.required, default, q.label);
            }
        }
    }
    Ok(())
}

/// `up --confirm-upgrade` / `up --rollback` on every service of the stack being upgraded.
/// Confirming needs the upgrade done (no old container running), as Rancher's finishupgrade.
async fn finish_upgrade(
    store: &StateStore,
    history: &History,
    bus: &Bus,
    stack: &str,
    rollback: bool,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let Some(mut d) = stored(store, stack).await? else {
        eprintln!("no stack {stack:?}");
        return Ok(ExitCode::from(2));
    };
    let metrics = event_bus::runtime::metrics::Metrics::new();
    let snap = event_bus::StateCache::start(bus, &metrics).await?.snapshot();
    let mut touched = Vec::new();
    for s in d.services.iter_mut() {
        if s.state != "upgrading" {
            continue;
        }
        if !rollback && !deploy::upgrade::done(&snap, s) {
            eprintln!(
                "service {}: the upgrade is not done (old containers still run, or new ones do not run or are not healthy yet); wait (deploy ps {stack}) or --rollback",
                s.name
            );
            return Ok(ExitCode::from(2));
        }
        let done = if rollback { deploy::upgrade::rollback(s) } else { deploy::upgrade::confirm(s) };
        if done {
            touched.push(s.name.clone());
        }
    }
    if touched.is_empty() {
        eprintln!("stack {stack:?} has no service being upgraded");
        return Ok(ExitCode::from(2));
    }
    let command = if rollback { "up --rollback" } else { "up --confirm-upgrade" };
    let applied = apply::run(store, history, stack, Some(&d), Scale::Exact, command, dry_run).await?;
    print!("{}", applied.plan);
    if let Some(rev) = applied.revision {
        println!("applied as revision {rev}");
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
