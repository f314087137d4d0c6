//! Emptying a list an export stops managing (`export edit --empty-removed-lists`, `export remove --empty-lists`):
//! unsubscribes the members this export put there, and only those, in batches, forgetting each acknowledged batch.
//!
//! The user asked for it explicitly, so the mass-removal guard does not apply. The caller holds the export's run
//! lock. It must not touch members that were on the list otherwise; `Store::members_put_there` decides which.

use super::{Engine, SyncError};
use crate::iterable::IterableError;
use crate::store::{Export, Store, StoreError, Target};

/// Why emptying stopped. What Iterable acknowledged before is forgotten, the rest is still recorded.
#[derive(Debug, thiserror::Error)]
pub enum EmptyError {
    #[error("emptying list '{list}' stopped: {error}")]
    Iterable { list: String, error: IterableError },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What emptying did to one list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Emptied {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub unsubscribed: u64,
}

/// Unsubscribes from each target's list the members this export put there. Stops at the first failure: what was
/// acknowledged is forgotten, the rest stays recorded, so running it again finishes the job.
pub async fn empty_lists(
    engine: &Engine,
    store: &Store,
    batch_size: usize,
    export: &Export,
    targets: &[&Target],
) -> Result<Vec<Emptied>, EmptyError> {
    let mut out = Vec::new();
    let mut client = None;
    for target in targets {
        let members = store.members_put_there(target.id).await?;
        let mut emptied = Emptied { list_name: target.list_name.clone(), list_id: target.list_id, unsubscribed: 0 };
        if let (Some(list_id), false) = (target.list_id, members.is_empty()) {
            let connection_id = export.connection_id.ok_or_else(|| SyncError::NotRunnable {
                export: export.name.clone(),
                why: "it has no connection, so its lists cannot be emptied; leave out the emptying option".into(),
            })?;
            if client.is_none() {
                client = Some(engine.client_for(connection_id).await?);
            }
            let client = client.as_ref().expect("set above");
            for batch in members.chunks(batch_size.max(1)) {
                client
                    .unsubscribe(list_id, batch)
                    .await
                    .map_err(|error| EmptyError::Iterable { list: target.list_name.clone(), error })?;
                store.forget_members(target.id, batch).await?;
                emptied.unsubscribed += batch.len() as u64;
            }
            tracing::info!(export = %export.name, list = %target.list_name, list_id, unsubscribed = emptied.unsubscribed,
                "Emptied the list of the members this export put there.");
        }
        out.push(emptied);
    }
    Ok(out)
}
