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
        key: String,
        #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Validate a JSON or YAML document against the model and store it under KEY.
    /// Nothing is written when the document is invalid.
    Put {
        key: String,
        /// The document; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Only create: fail if KEY exists.
        #[arg(long, env = "CORRAL_STATE_CREATE", conflicts_with = "if_revision")]
        create: bool,
        /// Compare-and-set: write only if KEY is still at this revision.
        #[arg(long, env = "CORRAL_STATE_IF_REVISION")]
        if_revision: Option<u64>,
    },
    /// Delete KEY.
    Delete { key: String },
    /// Print every document (optionally of one family) with the environment version.
    Dump {
        /// Only this key family (host, stack, service, container, status, health, …).
        #[arg(long, env = "CORRAL_STATE_FAMILY")]
        family: Option<Family>,
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
        #[arg(long, short, env = "CORRAL_OUTPUT", value_enum, default_value_t = Output::Json)]
        output: Output,
    },
}

pub async fn run(common: &CommonArgs, cmd: StateCommand) -> anyhow::Result<()> {
    // Validate what we can before touching the network.
    let parsed_put = match &cmd {
        StateCommand::Put { key, file, .. } => Some(read_document(key, file.as_ref())?),
        _ => None,
    };
    let bus = connect(common).await?;
    let store = StateStore::open(&bus).await?;
    match cmd {
        StateCommand::Get { key, output } => {
            let key: Key = key.parse()?;
            match store.get_raw(&key).await? {
                None => anyhow::bail!("key {key} not found in bucket {}", store.bucket()),
                Some(v) => {
                    let record = decode(&key, &v.value)?;
                    output.print(&record)?;
                }
            }
        }
        StateCommand::Put { create, if_revision, .. } => {
            let record = parsed_put.expect("parsed above");
            let revision = match (create, if_revision) {
                (true, _) => {
                    store.kv().create(record_key(&record), crate::keys::encode(&record).into()).await.map_err(|e| {
                        match e.kind() {
                            async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                                Error::AlreadyExists { key: record_key(&record) }
                            }
                            _ => Error::Nats { op: "create", source: Box::new(e) },
                        }
                    })?
                }
                (false, Some(rev)) => {
                    store.kv().update(record_key(&record), crate::keys::encode(&record).into(), rev).await.map_err(
                        |e| match e.kind() {
                            async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                                Error::RevisionMismatch { key: record_key(&record), expected: rev }
                            }
                            _ => Error::Nats { op: "update", source: Box::new(e) },
                        },
                    )?
                }
                (false, None) => store.put_record(&record).await?,
            };
            println!("stored {} at revision {revision}", record_key(&record));
        }
        StateCommand::Delete { key } => {
            let key: Key = key.parse()?;
            if store.get_raw(&key).await?.is_none() {
                anyhow::bail!("key {key} not found in bucket {}", store.bucket());
            }
            store.delete(&key).await?;
            println!("deleted {key}");
        }
        StateCommand::Dump { family, output } => {
            let cache = StateCache::start(&bus, &Metrics::new()).await?;
            let snap = cache.snapshot();
            let mut records = Map::new();
            for (key, record) in snap.records().into_iter().filter(|(k, _)| family.is_none_or(|f| k.family == f)) {
                records.insert(key.to_string(), serde_json::to_value(&record)?);
            }
            let invalid: Map<String, Value> =
                snap.invalid().map(|(k, why)| (k.clone(), Value::String(why.clone()))).collect();
            let mut doc = json!({ "env": bus.env(), "version": snap.version(), "records": records });
            if !invalid.is_empty() {
                doc["invalid"] = Value::Object(invalid);
            }
            output.print(&doc)?;
        }
        StateCommand::Watch { from_revision, count, output } => {
            let mut watch = match from_revision {
                Some(rev) => store.kv().watch_all_from_revision(rev + 1).await,
                None => store.kv().watch_with_history(">").await,
            }
            .map_err(|e| Error::Nats { op: "watch", source: Box::new(e) })?;
            let mut seen = 0usize;
            while count.is_none_or(|c| seen < c) {
                let Some(entry) = watch.next().await else { break };
                let entry = entry.map_err(|e| Error::Nats { op: "watch", source: Box::new(e) })?;
                let mut line = json!({ "revision": entry.revision, "key": entry.key });
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => {
                        line["op"] = "put".into();
                        match entry.key.parse::<Key>().and_then(|k| decode(&k, &entry.value)) {
                            Ok(record) => line["value"] = serde_json::to_value(&record)?,
                            Err(e) => line["error"] = e.to_string().into(),
                        }
                    }
                    _ => line["op"] = "delete".into(),
                }
                output.print_line(&line)?;
                seen += 1;
            }
        }
    }
    Ok(())
}

fn record_key(record: &crate::keys::Record) -> String {
    format!("{}.{}", record.family().prefix(), record.id())
}

/// Reads and validates the document for `put`; the error names the file, line or field.
fn read_document(key: &str, file: Option<&PathBuf>) -> anyhow::Result<crate::keys::Record> {
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
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{name}: not valid JSON: line {}, column {}: {e}", e.line(), e.column()))?
    };
    decode_value(&key, value).map_err(|e| anyhow::anyhow!("{name}: {e}; nothing was written"))
}
