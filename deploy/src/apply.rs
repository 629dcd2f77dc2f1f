//! One change to a stack, end to end: plan against NATS, take the stack in the history (so no
//! other deploy can interleave), write, and record the revision.

use event_bus::model::Stack;
use event_bus::StateStore;

use crate::history::{now_ms, History, Revision};
use crate::plan::{self, Plan, Scale};
use crate::stackfile::Desired;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error(transparent)]
    State(#[from] event_bus::Error),
    #[error("volume {volume:?}: its driver is {was:?}; changing the driver of an existing volume is not allowed (as in Rancher): give it another name")]
    VolumeDriver { volume: String, was: String },
    #[error(
        "stack {stack}: {bytes} bytes of desired state is more than one history record holds ({max}); split the stack"
    )]
    TooLarge { stack: String, bytes: usize, max: usize },
    #[error("stack {stack}: writing the state failed after some of it was written ({source}); nothing was recorded; run the same command again")]
    Partial { stack: String, source: event_bus::Error },
}

/// A history record is one KV value; stay well under NATS's 1 MB default message size.
const MAX_RECORD: usize = 900 * 1024;

/// What happened.
#[derive(Debug)]
pub struct Applied {
    pub plan: Plan,
    /// The revision recorded, when something was written.
    pub revision: Option<u64>,
}

/// Brings `stack` to `desired` (`None`: removes it). With `dry_run` only plans.
pub async fn run(
    store: &StateStore,
    history: &History,
    stack: &str,
    desired: Option<&Desired>,
    scale: Scale,
    command: &str,
    dry_run: bool,
) -> Result<Applied, ApplyError> {
    let head = history.head(stack).await?;
    let current_stack = store.get::<Stack>(&crate::compose::stack_id(stack)).await?.map(|v| v.value);
    let current = plan::current(store, stack).await?;
    if let (Some(old), Some(d)) = (&current_stack, desired) {
        check_volume_drivers(old, &d.stack)?;
    }
    let plan = match desired {
        Some(d) => plan::plan(d, current_stack.as_ref(), &current, scale),
        None => plan::removal(stack, current_stack.is_some(), &current),
    };
    if dry_run || plan.is_empty() {
        return Ok(Applied { plan, revision: None });
    }
    let mut record = Revision {
        revision: 0,
        applied_at_ms: now_ms(),
        command: command.to_string(),
        stack: desired.map(|d| d.stack.clone()),
        services: plan.result.clone(),
    };
    let bytes = serde_json::to_vec(&record).map(|b| b.len()).unwrap_or(0);
    if bytes > MAX_RECORD {
        return Err(ApplyError::TooLarge { stack: stack.into(), bytes, max: MAX_RECORD });
    }
    let claim = history.claim(stack, head.as_ref()).await?;
    record.revision = claim.revision;
    // The revision is recorded before the state is written: a deploy that dies halfway leaves
    // the record of what it was doing. The head did not move between reading the state and
    // taking it, so the plan is current.
    history.record(&claim, &record).await?;
    if let Err(source) = plan::apply(store, desired.map(|d| &d.stack), &plan).await {
        let _ = history.release(claim).await;
        return Err(ApplyError::Partial { stack: stack.into(), source });
    }
    let revision = claim.revision;
    history.commit(claim).await?;
    Ok(Applied { plan, revision: Some(revision) })
}

fn check_volume_drivers(old: &Stack, new: &Stack) -> Result<(), ApplyError> {
    let (Some(old), Some(new)) = (old.extra.get("volumes"), new.extra.get("volumes")) else { return Ok(()) };
    let Some(new) = new.as_object() else { return Ok(()) };
    for (name, def) in new {
        let was = old.get(name).and_then(|d| d.get("driver")).and_then(|d| d.as_str()).unwrap_or("local");
        let now = def.get("driver").and_then(|d| d.as_str()).unwrap_or("local");
        if old.get(name).is_some() && was != now {
            return Err(ApplyError::VolumeDriver { volume: name.clone(), was: was.into() });
        }
    }
    Ok(())
}
