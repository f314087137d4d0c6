//! segment-exporter keeps Iterable static lists equal to customer segments.
#![forbid(unsafe_code)]
