//! The per-connection pace: a token bucket (`governor`) whose rate halves on every 429 and creeps back up after a
//! run of successes, so a connection settles just under whatever limit Iterable enforces.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Successes needed before the pace is raised again after a 429.
const RECOVER_AFTER: u32 = 50;

#[derive(Debug)]
pub struct Pacer {
    configured: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    successes: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

fn limiter(rate: f64) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let quota = Quota::with_period(period).expect("period is positive").allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(quota))
}

impl Pacer {
    /// A pacer allowing `requests_per_second`, without bursts.
    pub fn new(requests_per_second: f64) -> Pacer {
        Pacer {
            configured: requests_per_second,
            state: Mutex::new(State { rate: requests_per_second, successes: 0, limiter: limiter(requests_per_second) }),
        }
    }

    /// Waits for this request's turn.
    pub async fn ready(&self) {
        let limiter = self.state.lock().expect("pacer lock").limiter.clone();
        limiter.until_ready().await;
    }

    /// The current pace in requests per second.
    pub fn rate(&self) -> f64 {
        self.state.lock().expect("pacer lock").rate
    }

    /// Iterable said 429: halve the pace (down to 1/64 of the configured one).
    pub fn slow_down(&self) {
        let mut s = self.state.lock().expect("pacer lock");
        let new_rate = (s.rate / 2.0).max(self.configured / 64.0);
        if new_rate < s.rate {
            s.rate = new_rate;
            s.limiter = limiter(new_rate);
            tracing::info!(requests_per_second = new_rate, "Iterable answered 429; slowing this connection down.");
        }
        s.successes = 0;
    }

    /// A request succeeded: after enough of them, regain a quarter of the pace, up to the configured one.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().expect("pacer lock");
        if s.rate >= self.configured {
            return;
        }
        s.successes += 1;
        if s.successes >= RECOVER_AFTER {
            s.rate = (s.rate * 1.25).min(self.configured);
            s.limiter = limiter(s.rate);
            s.successes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_halves_on_429_and_recovers_to_the_configured_rate() {
        let p = Pacer::new(8.0);
        p.slow_down();
        assert_eq!(p.rate(), 4.0);
        for _ in 0..(RECOVER_AFTER * 10) {
            p.succeeded();
        }
        assert_eq!(p.rate(), 8.0);
    }

    #[test]
    fn the_pace_never_drops_below_a_floor() {
        let p = Pacer::new(64.0);
        for _ in 0..20 {
            p.slow_down();
        }
        assert_eq!(p.rate(), 1.0);
    }

    #[tokio::test]
    async fn requests_are_spaced_at_the_configured_rate() {
        let p = Pacer::new(50.0);
        let start = std::time::Instant::now();
        for _ in 0..11 {
            p.ready().await;
        }
        // 10 gaps of 20 ms after the first free request.
        assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
    }
}
