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
}

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
    let exists = store.get::<Stack>(&crate::compose::stack_id(stack)).await?.is_some();
    let current = plan::current(store, stack).await?;
    let plan = match desired {
        Some(d) => plan::plan(d, exists, &current, scale),
        None => plan::removal(stack, exists, &current),
    };
    if dry_run || plan.is_empty() {
        return Ok(Applied { plan, revision: None });
    }
    let claim = history.claim(stack, head.as_ref()).await?;
    let revision = claim.revision;
    // The head did not move between reading the state and taking it, so the plan is current.
    plan::apply(store, desired.map(|d| &d.stack), &plan).await?;
    let record = Revision {
        revision,
        applied_at_ms: now_ms(),
        command: command.to_string(),
        stack: desired.map(|d| d.stack.clone()),
        services: plan.result.clone(),
    };
    history.commit(claim, &record).await?;
    Ok(Applied { plan, revision: Some(revision) })
}
