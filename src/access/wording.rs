//! The one rule for how an error reads to someone who may not see a segment's source or the connection's Iterable
//! address (contributors, and channels open to them): an error that names one is replaced by a pointer to an
//! administrator. The API, the console and notifications all word errors through here.
//!
//! It reads the store and decides nothing else.

use crate::store::{Segment, Store, StoreError};

/// What contributors are told instead of an error that names something only administrators see.
pub const HIDDEN_ERROR: &str = "the run failed on a segment's source or the connection's address, which only \
     administrators see; an administrator can see why (`segment-exporter runs show`)";

/// What names a segment's source in a message (its path or URL, the URL's host): hidden from contributors.
pub fn source_names(seg: &Segment) -> Vec<String> {
    let mut names = vec![seg.source.clone()];
    if let Ok(spec) = seg.source.parse::<crate::source::SourceSpec>() {
        names.push(spec.to_string());
    }
    if let Some((_, rest)) = seg.source.split_once(':') {
        names.push(rest.trim_start_matches('/').to_string());
    }
    if let Some(host) = url::Url::parse(&seg.source).ok().and_then(|u| u.host_str().map(str::to_string)) {
        names.push(host);
    }
    names.retain(|n| n.len() >= 3);
    names
}

/// What, in an error, names something contributors may not see, for the export of `export_id`: a segment's source
/// (its path or URL, the URL's host) or the connection's Iterable address.
pub async fn hidden_names(store: &Store, export_id: i64) -> Result<Vec<String>, StoreError> {
    let export = store.export_by_id(export_id).await?;
    let mut names = Vec::new();
    for t in &export.targets {
        let Ok(seg) = store.segment(&t.segment_name).await else { continue };
        names.extend(source_names(&seg));
    }
    if let Some(id) = export.connection_id {
        let conn = store.connection_by_id(id).await?;
        let host = url::Url::parse(&conn.base_url).ok().and_then(|u| u.host_str().map(str::to_string));
        names.extend([conn.base_url].into_iter().chain(host).filter(|n| n.len() >= 3));
    }
    Ok(names)
}

/// A run error of export `export_id` as a contributor may read it: as it is, unless it names a segment's source or
/// the Iterable address.
pub async fn error_for_contributors(store: &Store, export_id: i64, error: &str) -> Result<String, StoreError> {
    if hidden_names(store, export_id).await?.iter().any(|n| error.contains(n.as_str())) {
        return Ok(HIDDEN_ERROR.to_string());
    }
    Ok(error.to_string())
}
