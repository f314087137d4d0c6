//! The Iterable REST client: requests and responses of the list endpoints, error classification, retries and the
//! per-connection pace.
//!
//! Classification lives in one place (`error.rs`): transport errors, 408, 429 and 5xx (not 501) are retried with
//! capped exponential backoff and jitter, honouring `Retry-After` (or `params.rateLimitReset`) when present; every
//! other answer is final. HTTP status is checked before the body, because Iterable can say `code: "Success"` on a 400.
//! A 2xx is accepted only when its body reads as expected; a subscribe or unsubscribe answer must also account for
//! its whole batch (`BulkResponse::accounts_for`); anything else is retried like a 5xx. Every wait (pace, backoff)
//! ends early when the run's `CancellationToken` is cancelled.

mod client;
mod error;
mod pacer;
mod types;

pub use client::{
    ClientStats, IterableClient, ListReadLimits, ListUsersReader, RequestObserver, RetrySettings, SendGate,
};
pub use error::IterableError;
pub use pacer::{Pacer, Ticket};
pub use types::{
    encode_subscriber, is_forgotten, user_id_key, BulkResponse, FailedUpdates, ListDetails, Region, UserRef,
    USER_ID_KEY_PREFIX,
};
