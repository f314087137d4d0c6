//! The misbehaviour the sandbox can be told to show: added latency, a project-wide token-bucket rate
//! limit, random 500s and dropped connections, and HTTP 200 answers to subscribe/unsubscribe that do not
//! account for the batch (miscounted or truncated), and list drift: changes answered as done but dropped (silent
//! drops), a delay before `getUsers` shows a change, and `getUsers` answers cut short. Owns the settings and the bucket, nothing else; the
//! settings can be changed while serving, through `Sandbox::set_faults` or `POST /_sandbox/faults`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};

/// A partial change to the fault settings; fields left `None` keep their current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Milliseconds added before answering every `/api` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Requests per second over all `/api` endpoints. `Some(None)` (JSON `null`) turns the limit off.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Option<f64>>,
    /// Probability in `0..=1` that an `/api` request fails (500, or applied then dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    /// Send `Retry-After` on 429 answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<bool>,
    /// Probability in `0..=1` that a subscribe or unsubscribe answers HTTP 200 `{"successCount":0,
    /// "failCount":0,…}` without applying anything: an answer that does not account for the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miscount_rate: Option<f64>,
    /// The next this many subscribe or unsubscribe requests get such a miscounted answer (replaces the count
    /// left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miscount_next: Option<u64>,
    /// The next this many subscribe or unsubscribe requests are applied, then answered HTTP 200 with the
    /// first half of their JSON body only (replaces the count left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_next: Option<u64>,
    /// Requests the rate limit lets through at once (the bucket's size). Default: the rate (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<f64>,
    /// The next this many subscribe or unsubscribe requests are answered HTTP 200 with every member counted a
    /// success, and nothing applied: a change Iterable acknowledged correctly and then dropped (replaces the count
    /// left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_drop_next: Option<u64>,
    /// Milliseconds before a change of a list's members shows in `getUsers` and the list's size, as Iterable shows
    /// list changes with a delay (0: at once). Changes made while it is 0 show at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_users_delay_ms: Option<u64>,
    /// The next this many `getUsers` answers stop after the first half of the list's members: a whole-looking
    /// HTTP 200 that holds too few (replaces the count left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_get_users_next: Option<u64>,
    /// `true` holds every `/api` request before it is handled, until `false` lets them all go on: Iterable frozen
    /// mid-run, for a test (or a demo) to look at a run in flight for as long as it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<bool>,
}

/// Distinguishes a field given as `null` (`Some(None)`) from one left out (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(deserializer).map(Some)
}

impl Faults {
    /// Says what is wrong with a change, for the `/_sandbox/faults` endpoint to refuse it.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.fail_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("fail_rate must be between 0 and 1, got {rate}"));
            }
        }
        if let Some(rate) = self.miscount_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("miscount_rate must be between 0 and 1, got {rate}"));
            }
        }
        if let Some(burst) = self.rate_limit_burst {
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(format!("rate_limit_burst must be a number of requests of at least 1, got {burst}"));
            }
        }
        if let Some(Some(rate)) = self.rate_limit {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("rate_limit must be a positive number of requests per second or null, got {rate}"));
            }
        }
        Ok(())
    }
}

/// The fault settings in force.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaultSettings {
    pub latency_ms: u64,
    pub rate_limit: Option<f64>,
    pub fail_rate: f64,
    pub retry_after: bool,
    pub miscount_rate: f64,
    /// Miscounted answers still to come (besides `miscount_rate`).
    pub miscount_next: u64,
    /// Truncated answers still to come.
    pub truncate_next: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<f64>,
    /// Silent drops still to come.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub silent_drop_next: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub get_users_delay_ms: u64,
    /// Cut-short `getUsers` answers still to come.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_get_users_next: u64,
    /// Whether `/api` requests are held.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a request was picked to suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    Nothing,
    /// Answer 500 without applying the change.
    ServerError,
    /// Apply the change, then abort the connection before a complete answer.
    DropAfterApplying,
}

/// What a subscribe or unsubscribe answer was picked to suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadAnswer {
    None,
    /// Apply nothing and answer HTTP 200 with zero counts.
    Miscount,
    /// Apply the change and answer HTTP 200 with half of the JSON body.
    Truncate,
    /// Apply nothing and answer HTTP 200 counting every member a success.
    SilentDrop,
}

/// Refusal by the rate limiter, with what the 429 answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimited {
    /// Bucket capacity (the burst), reported as `rateLimitLimit`.
    pub limit: u64,
    /// Whole seconds until a token is available, at least 1.
    pub reset_secs: u64,
}

#[derive(Debug)]
pub(crate) struct FaultState {
    latency: Duration,
    fail_rate: f64,
    retry_after: bool,
    miscount_rate: f64,
    miscount_next: u64,
    truncate_next: u64,
    silent_drop_next: u64,
    get_users_delay: Duration,
    cut_get_users_next: u64,
    bucket: Option<TokenBucket>,
    /// The rate limit's bucket size; None: the rate.
    burst: Option<f64>,
    /// Iterable's documented per-endpoint limits, by endpoint label.
    documented: Vec<(&'static str, TokenBucket)>,
    /// Whether `/api` requests are held (`Faults::hold`); held requests wait for it to turn false.
    hold: tokio::sync::watch::Sender<bool>,
}

/// Iterable's documented per-project limits of the list endpoints: (label, requests, per seconds).
const DOCUMENTED_LIMITS: &[(&str, f64, f64)] = &[
    ("lists.get", 100.0, 1.0),
    ("lists.getUsers", 5.0, 60.0),
    ("lists.previewUsers", 5.0, 60.0),
    ("lists.size", 5.0, 60.0),
];

impl FaultState {
    /// Turns on Iterable's documented per-endpoint limits.
    pub(crate) fn enforce_documented_limits(&mut self, now: Instant) {
        self.documented = DOCUMENTED_LIMITS
            .iter()
            .map(|&(label, requests, per)| (label, TokenBucket::with_burst(requests / per, requests, now)))
            .collect();
    }

    /// Takes a token of the endpoint's documented limit, if it has one.
    pub(crate) fn take_documented(&mut self, label: &str, now: Instant) -> Result<(), RateLimited> {
        match self.documented.iter_mut().find(|(l, _)| *l == label) {
            Some((_, bucket)) => bucket.take(now),
            None => Ok(()),
        }
    }

    /// Out-of-range values are clamped (fail rate) or turn the feature off (rate limit); use
    /// `Faults::validate` first where the caller should hear about it.
    pub(crate) fn new(latency: Duration, rate_limit: Option<f64>, fail_rate: f64, retry_after: bool) -> Self {
        Self {
            latency,
            fail_rate: clamp_probability(fail_rate),
            retry_after,
            miscount_rate: 0.0,
            miscount_next: 0,
            truncate_next: 0,
            silent_drop_next: 0,
            get_users_delay: Duration::ZERO,
            cut_get_users_next: 0,
            bucket: rate_limit.and_then(|rate| TokenBucket::new(rate, None, Instant::now())),
            burst: None,
            documented: Vec::new(),
            hold: tokio::sync::watch::Sender::new(false),
        }
    }

    /// While requests are held, what waits for the hold to be lifted; None when they are not.
    pub(crate) fn hold_wait(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut held = self.hold.subscribe();
        let on = *held.borrow_and_update();
        // An error means the sender is gone with the sandbox: nothing to wait for.
        on.then_some(async move {
            let _ = held.wait_for(|on| !on).await;
        })
    }

    pub(crate) fn apply(&mut self, change: &Faults) {
        if let Some(ms) = change.latency_ms {
            self.latency = Duration::from_millis(ms);
        }
        if let Some(burst) = change.rate_limit_burst {
            self.burst = Some(burst);
            let rate = self.bucket.as_ref().map(|bucket| bucket.rate);
            self.bucket = rate.and_then(|rate| TokenBucket::new(rate, self.burst, Instant::now()));
        }
        if let Some(rate) = change.rate_limit {
            self.bucket = rate.and_then(|rate| TokenBucket::new(rate, self.burst, Instant::now()));
        }
        if let Some(rate) = change.fail_rate {
            self.fail_rate = clamp_probability(rate);
        }
        if let Some(on) = change.retry_after {
            self.retry_after = on;
        }
        if let Some(rate) = change.miscount_rate {
            self.miscount_rate = clamp_probability(rate);
        }
        if let Some(n) = change.miscount_next {
            self.miscount_next = n;
        }
        if let Some(n) = change.truncate_next {
            self.truncate_next = n;
        }
        if let Some(n) = change.silent_drop_next {
            self.silent_drop_next = n;
        }
        if let Some(ms) = change.get_users_delay_ms {
            self.get_users_delay = Duration::from_millis(ms);
        }
        if let Some(n) = change.cut_get_users_next {
            self.cut_get_users_next = n;
        }
        if let Some(on) = change.hold {
            self.hold.send_replace(on);
        }
    }

    pub(crate) fn settings(&self) -> FaultSettings {
        FaultSettings {
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            rate_limit: self.bucket.as_ref().map(|bucket| bucket.rate),
            fail_rate: self.fail_rate,
            retry_after: self.retry_after,
            rate_limit_burst: self.bucket.as_ref().map(|bucket| bucket.burst).filter(|_| self.burst.is_some()),
            miscount_rate: self.miscount_rate,
            miscount_next: self.miscount_next,
            truncate_next: self.truncate_next,
            silent_drop_next: self.silent_drop_next,
            get_users_delay_ms: u64::try_from(self.get_users_delay.as_millis()).unwrap_or(u64::MAX),
            cut_get_users_next: self.cut_get_users_next,
            hold: *self.hold.borrow(),
        }
    }

    /// Picks what a subscribe or unsubscribe answer suffers, using up the one-shot counts first.
    pub(crate) fn roll_answer(&mut self) -> BadAnswer {
        if self.miscount_next > 0 {
            self.miscount_next -= 1;
            BadAnswer::Miscount
        } else if self.truncate_next > 0 {
            self.truncate_next -= 1;
            BadAnswer::Truncate
        } else if self.silent_drop_next > 0 {
            self.silent_drop_next -= 1;
            BadAnswer::SilentDrop
        } else if self.miscount_rate > 0.0 && rand::random::<f64>() < self.miscount_rate {
            BadAnswer::Miscount
        } else {
            BadAnswer::None
        }
    }

    /// How long a change of a list's members takes to show in `getUsers` and the list's size.
    pub(crate) fn get_users_delay(&self) -> Duration {
        self.get_users_delay
    }

    /// Whether this `getUsers` answer is to be cut short, using up one of the count.
    pub(crate) fn cut_get_users(&mut self) -> bool {
        let cut = self.cut_get_users_next > 0;
        self.cut_get_users_next = self.cut_get_users_next.saturating_sub(1);
        cut
    }

    pub(crate) fn latency(&self) -> Duration {
        self.latency
    }

    pub(crate) fn retry_after(&self) -> bool {
        self.retry_after
    }

    pub(crate) fn take_token(&mut self, now: Instant) -> Result<(), RateLimited> {
        match &mut self.bucket {
            Some(bucket) => bucket.take(now),
            None => Ok(()),
        }
    }

    pub(crate) fn roll(&self) -> Injected {
        if self.fail_rate <= 0.0 || rand::random::<f64>() >= self.fail_rate {
            Injected::Nothing
        } else if rand::random::<bool>() {
            Injected::ServerError
        } else {
            Injected::DropAfterApplying
        }
    }
}

fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// Classic token bucket: `rate` tokens per second, capacity `burst` (default `max(1, rate)`), starting full.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `None` for a rate that is not a positive finite number.
    fn new(rate: f64, burst: Option<f64>, now: Instant) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        Some(Self::with_burst(rate, burst.unwrap_or(rate).max(1.0), now))
    }

    /// A bucket of `burst` tokens refilled at `rate` a second, starting full.
    fn with_burst(rate: f64, burst: f64, now: Instant) -> Self {
        Self { rate, burst, tokens: burst, last: now }
    }

    fn take(&mut self, now: Instant) -> Result<(), RateLimited> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Err(RateLimited { limit: self.burst.floor() as u64, reset_secs: (wait.ceil() as u64).max(1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_refuses_until_tokens_refill() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, None, start).unwrap();
        assert!(bucket.take(start).is_ok());
        assert!(bucket.take(start).is_ok());
        let refused = bucket.take(start).unwrap_err();
        assert_eq!(refused.limit, 2);
        assert_eq!(refused.reset_secs, 1);
        assert!(bucket.take(start + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn a_slow_rate_still_allows_one_request_and_reports_a_long_reset() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0.1, None, start).unwrap();
        assert!(bucket.take(start).is_ok());
        let refused = bucket.take(start).unwrap_err();
        assert_eq!(refused.limit, 1);
        assert_eq!(refused.reset_secs, 10);
    }

    #[test]
    fn a_burst_setting_sizes_the_bucket_apart_from_the_rate() {
        let start = Instant::now();
        let mut state = FaultState::new(Duration::ZERO, Some(10.0), 0.0, false);
        state.apply(&Faults { rate_limit_burst: Some(2.0), ..Faults::default() });
        assert!(state.take_token(start).is_ok());
        assert!(state.take_token(start).is_ok());
        let refused = state.take_token(start).unwrap_err();
        assert_eq!(refused.limit, 2, "two at once, not ten");
        assert!(state.take_token(start + Duration::from_millis(100)).is_ok(), "refilled at 10 a second");
        assert_eq!(state.settings().rate_limit_burst, Some(2.0));
        assert!(Faults { rate_limit_burst: Some(0.5), ..Faults::default() }.validate().is_err());
    }

    #[test]
    fn null_rate_limit_is_told_apart_from_a_missing_one() {
        let off: Faults = serde_json::from_str(r#"{"rate_limit": null}"#).unwrap();
        assert_eq!(off.rate_limit, Some(None));
        let untouched: Faults = serde_json::from_str(r#"{"fail_rate": 0.5}"#).unwrap();
        assert_eq!(untouched.rate_limit, None);
        let mut state = FaultState::new(Duration::ZERO, Some(5.0), 0.0, false);
        state.apply(&untouched);
        assert_eq!(state.settings().rate_limit, Some(5.0));
        state.apply(&off);
        assert_eq!(state.settings().rate_limit, None);
    }

    #[test]
    fn one_shot_bad_answers_are_used_up_in_order() {
        let mut state = FaultState::new(Duration::ZERO, None, 0.0, false);
        state.apply(&Faults { miscount_next: Some(1), truncate_next: Some(1), ..Faults::default() });
        assert_eq!(state.roll_answer(), BadAnswer::Miscount);
        assert_eq!(state.roll_answer(), BadAnswer::Truncate);
        assert_eq!(state.roll_answer(), BadAnswer::None);
        assert!(Faults { miscount_rate: Some(2.0), ..Faults::default() }.validate().is_err());
    }

    #[test]
    fn silent_drops_and_cut_short_reads_are_used_up_and_the_delay_is_kept() {
        let mut state = FaultState::new(Duration::ZERO, None, 0.0, false);
        state.apply(&Faults {
            silent_drop_next: Some(2),
            cut_get_users_next: Some(1),
            get_users_delay_ms: Some(1500),
            ..Faults::default()
        });
        let settings = state.settings();
        assert_eq!((settings.silent_drop_next, settings.cut_get_users_next, settings.get_users_delay_ms), (2, 1, 1500));
        assert_eq!(state.roll_answer(), BadAnswer::SilentDrop);
        assert_eq!(state.roll_answer(), BadAnswer::SilentDrop);
        assert_eq!(state.roll_answer(), BadAnswer::None);
        assert!(state.cut_get_users());
        assert!(!state.cut_get_users(), "one cut-short read, as asked");
        assert_eq!(state.get_users_delay(), Duration::from_millis(1500));
    }

    #[test]
    fn invalid_changes_are_refused_by_validate() {
        let bad_rate = Faults { fail_rate: Some(1.5), ..Faults::default() };
        assert!(bad_rate.validate().is_err());
        let bad_limit = Faults { rate_limit: Some(Some(0.0)), ..Faults::default() };
        assert!(bad_limit.validate().is_err());
        assert!(Faults::default().validate().is_ok());
    }

    #[test]
    fn a_fail_rate_of_one_always_injects_and_zero_never_does() {
        let always = FaultState::new(Duration::ZERO, None, 1.0, false);
        assert!((0..100).all(|_| always.roll() != Injected::Nothing));
        let never = FaultState::new(Duration::ZERO, None, 0.0, false);
        assert!((0..100).all(|_| never.roll() == Injected::Nothing));
    }
}
