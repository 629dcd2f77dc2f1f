use std::path::PathBuf;

use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::{connect, output::Output};
use crate::cache::StateCache;
use crate::error::Error;
use crate::keys::{decode, decode_value, Family, Key};
use crate::runtime::args::CommonArgs;
use crate::runtime::metrics::Metrics;
use crate::store::StateStore;

#[derive(clap::Subcommand)]
pub enum StateCommand {
    /// Print the document stored under KEY (`<family>.<id>`, e.g. `service.web`).
    Get {
        /// `<family>.<id>`, e.g. `service.web`.
        key: String,
        /// Print certificate private keys instead of `<redacted>`.
        #[arg(long, env = "CORRAL_SHOW_SECRETS")]
        show_secrets: bool,
        #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Validate a JSON or YAML document against the model and store it under KEY.
    /// Nothing is written when the document is invalid.
    Put {
        /// `<family>.<id>`, e.g. `service.web`; the document's id field must match `<id>`.
        key: String,
        /// The document (JSON or YAML); `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Accept fields the model does not know (normally refused as likely typos); they are stored as given.
        #[arg(long, env = "CORRAL_STATE_ALLOW_UNKNOWN")]
        allow_unknown: bool,
        /// Only create: fail if KEY exists.
        #[arg(long, env = "CORRAL_STATE_CREATE", conflicts_with = "if_revision")]
        create: bool,
        /// Compare-and-set: write only if KEY is still at this revision.
        #[arg(long, env = "CORRAL_STATE_IF_REVISION")]
        if_revision: Option<u64>,
    },
    /// Delete KEY.
    Delete {
        /// `<family>.<id>`, e.g. `container.web-1`.
        key: String,
    },
    /// Print every document (optionally of one family) with the environment version.
    Dump {
        /// Only this key family (host, stack, service, container, status, health, …).
        #[arg(long, env = "CORRAL_STATE_FAMILY")]
        family: Option<Family>,
        /// Print certificate private keys instead of `<redacted>`.
        #[arg(long, env = "CORRAL_SHOW_SECRETS")]
        show_secrets: bool,
        #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Print changes as they happen: current values first, then live (one JSON object per line).
    Watch {
        /// Replay every change after this revision instead of starting from the current values.
        #[arg(long, env = "CORRAL_STATE_FROM_REVISION")]
        from_revision: Option<u64>,
        /// Exit after this many changes.
        #[arg(long, env = "CORRAL_STATE_COUNT")]
        count: Option<usize>,
        /// Print certificate private keys instead of `<redacted>`.
        #[arg(long, env = "CORRAL_SHOW_SECRETS")]
        show_secrets: bool,
        #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
}

pub async fn run(common: &CommonArgs, cmd: StateCommand) -> anyhow::Result<()> {
    // Validate what we can before touching the network.
    let parsed_put = match &cmd {
        StateCommand::Put { key, file, allow_unknown, .. } => Some(read_document(key, file.as_ref(), *allow_unknown)?),
        _ => None,
    };
    let bus = connect(common).await?;
    let store = StateStore::open(&bus).await?;
    match cmd {
        StateCommand::Get { key, output, show_secrets } => {
            let key: Key = key.parse()?;
            match store.get_raw(&key).await? {
                None => anyhow::bail!("key {key} not found in bucket {}", store.bucket()),
                Some(v) => {
                    let record = decode(&key, &v.value)?;
                    output.print(&shown(&record, show_secrets)?)?;
                }
            }
        }
        StateCommand::Put { create, if_revision, .. } => {
            let record = parsed_put.expect("parsed above");
            let revision = match (create, if_revision) {
                (true, _) => store.create_record(&record).await?,
                (false, Some(rev)) => store.update_record(&record, rev).await?,
                (false, None) => store.put_record(&record).await?,
            };
            println!("stored {} at revision {revision}", Key::new(record.family(), record.id())?);
        }
        StateCommand::Delete { key } => {
            let key: Key = key.parse()?;
            if store.get_raw(&key).await?.is_none() {
                anyhow::bail!("key {key} not found in bucket {}", store.bucket());
            }
            store.delete(&key).await?;
            println!("deleted {key}");
        }
        StateCommand::Dump { family, output, show_secrets } => {
            let cache = StateCache::start(&bus, &Metrics::new()).await?;
            let snap = cache.snapshot();
            let mut records = Map::new();
            for (key, record) in snap.records().into_iter().filter(|(k, _)| family.is_none_or(|f| k.family == f)) {
                records.insert(key.to_string(), shown(&record, show_secrets)?);
            }
            let invalid: Map<String, Value> =
                snap.invalid().map(|(k, why)| (k.clone(), Value::String(why.clone()))).collect();
            let mut doc = json!({ "env": bus.env(), "version": snap.version(), "records": records });
            if !invalid.is_empty() {
                doc["invalid"] = Value::Object(invalid);
            }
            output.print(&doc)?;
        }
        StateCommand::Watch { from_revision, count, output, show_secrets } => {
            let mut changes = store.watch(from_revision).await?;
            let mut seen = 0usize;
            while count.is_none_or(|c| seen < c) {
                let Some(change) = changes.next().await else { break };
                let change = change?;
                let mut line = json!({ "revision": change.revision, "key": change.key });
                match change.record {
                    Ok(Some(record)) => {
                        line["op"] = "put".into();
                        line["value"] = shown(&record, show_secrets)?;
                    }
                    Ok(None) => line["op"] = "delete".into(),
                    Err(e) => {
                        line["op"] = "put".into();
                        line["error"] = e.to_string().into();
                    }
                }
                output.print_line(&line)?;
                seen += 1;
            }
        }
    }
    Ok(())
}

/// A record as printed: certificate private keys are redacted unless asked for.
fn shown(record: &crate::keys::Record, show_secrets: bool) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(record)?;
    if record.family() == Family::Certificate && !show_secrets {
        v["key"] = Value::String("<redacted>".into());
    }
    Ok(v)
}

/// Reads and validates the document for `put`; the error names the file, line or field.
fn read_document(key: &str, file: Option<&PathBuf>, allow_unknown: bool) -> anyhow::Result<crate::keys::Record> {
    let key: Key = key.parse()?;
    let (name, text) = match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?,
        ),
        None => (
            "<stdin>".to_string(),
            std::io::read_to_string(std::io::stdin()).map_err(|source| Error::Io { path: "<stdin>".into(), source })?,
        ),
    };
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml") || !text.trim_start().starts_with('{');
    let value: Value = if yaml {
        serde_norway::from_str(&text).map_err(|e| anyhow::anyhow!("{name}: not valid YAML: {e}"))?
    } else {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{name}: not valid JSON: {e}"))?
    };
    let record = decode_value(&key, value).map_err(|e| anyhow::anyhow!("{name}: {e}; nothing was written"))?;
    let problems: Vec<_> =
        record.problems().into_iter().filter(|p| !(allow_unknown && p.reason.starts_with("unknown field"))).collect();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("field `{}`: {}", p.field, p.reason)).collect();
        let hint = if problems.iter().any(|p| p.reason.starts_with("unknown field")) {
            " (--allow-unknown stores unknown fields as given)"
        } else {
            ""
        };
        anyhow::bail!(
            "{name}: invalid {} document for key \"{key}\": {}; nothing was written{hint}",
            key.family,
            list.join("; ")
        );
    }
    Ok(record)
}
