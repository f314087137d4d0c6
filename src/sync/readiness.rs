//! Whether this process can run an export here: what a run reads on its own host (the API key from an
//! environment variable or a file, file sources, database passwords from the environment or a file) must be here.
//! On a PostgreSQL store shared by daemons on several hosts, a daemon takes only the runs it can make, and says
//! which it skips and why; the others take them.

use crate::config::Config;
use crate::source::SourceSpec;
use crate::store::Store;

/// What this process lacks to run export `export_id`, if anything (None: it can run it here). Errors of the store
/// itself are errors.
pub async fn missing_here(store: &Store, config: &Config, export_id: i64) -> crate::store::Result<Option<String>> {
    let export = store.export_by_id(export_id).await?;
    let key_path = config.store.master_key_path();
    if let Some(connection_id) = export.connection_id {
        let connection = store.connection_by_id(connection_id).await?;
        if let Err(e) = crate::secrets::resolve_api_key(&connection, &key_path) {
            return Ok(Some(format!("the API key of connection '{}' cannot be read here: {e}", connection.name)));
        }
    }
    for target in &export.targets {
        let Ok(segment) = store.segment(&target.segment_name).await else { continue };
        if let Err(e) = crate::secrets::resolve_source_password(&segment, &key_path) {
            return Ok(Some(format!("segment '{}': {e}", segment.name)));
        }
        let path = match segment.source.parse::<SourceSpec>() {
            Ok(SourceSpec::Csv { path } | SourceSpec::Jsonl { path } | SourceSpec::Sqlite { path }) => path,
            _ => continue,
        };
        if let Err(e) = std::fs::metadata(&path) {
            return Ok(Some(format!("segment '{}': its file {} is not here ({e})", segment.name, path.display())));
        }
    }
    Ok(None)
}
