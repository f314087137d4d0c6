//! segment-exporter keeps Iterable static lists equal to customer segments.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod iterable;
pub mod logging;
pub mod notify;
pub mod queue;
pub mod sandbox;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod store;
pub mod sync;
