//! The per-connection pace: a token bucket (`governor`) that slows down when Iterable answers 429 and regains its
//! pace within seconds once the 429s stop, so a connection settles just under whatever limit Iterable enforces.
//!
//! Three rules keep it from collapsing under a burst of 429s:
//! - **One burst, one signal.** Every request carries the generation of the pace it was sent under
//!   ([`Ticket`]). Only a 429 to a request sent under the current generation slows the pace down; the other 429s
//!   of the same round of requests in flight were sent before the slowdown and say nothing new.
//! - **Waiting requests follow the new pace.** A request waiting for its turn re-checks, once its turn comes,
//!   that the bucket it waited on is still the current one, and waits on the new one when it is not.
//! - **Quick recovery to the last pace that worked, then careful probing.** After a slowdown from rate R, each
//!   success raises the pace by a tenth, up to 90% of R, which takes a handful of requests; above that it creeps
//!   up by 1% of the configured rate per success, up to the configured rate.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// How far one 429 slows the pace down.
const DECREASE: f64 = 0.5;
/// Fast recovery: the pace grows by this factor per success, up to `CEILING_SHARE` of the pace that drew a 429.
const FAST_GROWTH: f64 = 1.1;
const CEILING_SHARE: f64 = 0.9;
/// Slow probing above that: this share of the configured pace per success.
const PROBE_STEP: f64 = 0.01;
/// The pace never drops below this share of the configured one.
const FLOOR_SHARE: f64 = 1.0 / 64.0;

#[derive(Debug)]
pub struct Pacer {
    configured: f64,
    state: Mutex<State>,
}

/// The pace a request was sent under: hand it back with [`Pacer::succeeded`] or [`Pacer::slow_down`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
}

#[derive(Debug)]
struct State {
    rate: f64,
    /// The pace at which the last 429 came; None before any.
    ceiling: Option<f64>,
    /// Bumped by every slowdown.
    generation: u64,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// A bucket for `rate`. A bucket that replaces another starts without its one token (`fresh` = false): otherwise
/// every change of pace would let one request through at once, on top of the old pace's.
fn limiter(rate: f64, fresh: bool) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let quota = Quota::with_period(period).expect("period is positive").allow_burst(NonZeroU32::MIN);
    let limiter = RateLimiter::direct(quota);
    if !fresh {
        let _ = limiter.check();
    }
    Arc::new(limiter)
}

impl Pacer {
    /// A pacer allowing `requests_per_second`, without bursts.
    pub fn new(requests_per_second: f64) -> Pacer {
        Pacer {
            configured: requests_per_second,
            state: Mutex::new(State {
                rate: requests_per_second,
                ceiling: None,
                generation: 0,
                limiter: limiter(requests_per_second, true),
            }),
        }
    }

    /// Waits for this request's turn, at the pace in force when the turn comes.
    pub async fn ready(&self) -> Ticket {
        loop {
            let limiter = self.state.lock().expect("pacer lock").limiter.clone();
            limiter.until_ready().await;
            let state = self.state.lock().expect("pacer lock");
            if Arc::ptr_eq(&state.limiter, &limiter) {
                return Ticket { generation: state.generation };
            }
            // The pace changed while this request waited: take a turn at the new one.
        }
    }

    /// The current pace in requests per second.
    pub fn rate(&self) -> f64 {
        self.state.lock().expect("pacer lock").rate
    }

    /// Iterable said 429 to a request sent under `ticket`: slow down, unless the pace was already lowered since
    /// that request was sent (then this 429 belongs to the burst that caused it).
    pub fn slow_down(&self, ticket: Ticket) {
        let mut s = self.state.lock().expect("pacer lock");
        if ticket.generation != s.generation {
            return;
        }
        let new_rate = (s.rate * DECREASE).max(self.configured * FLOOR_SHARE);
        s.ceiling = Some(s.rate);
        s.generation += 1;
        if new_rate < s.rate {
            s.rate = new_rate;
            s.limiter = limiter(new_rate, false);
            tracing::info!(requests_per_second = new_rate, "Iterable answered 429; slowing this connection down.");
        }
    }

    /// A request sent under `ticket` succeeded: regain pace (see the module notes).
    pub fn succeeded(&self, ticket: Ticket) {
        let mut s = self.state.lock().expect("pacer lock");
        if s.rate >= self.configured || ticket.generation != s.generation {
            return;
        }
        let fast_until = s.ceiling.map_or(self.configured, |c| c * CEILING_SHARE);
        let new_rate = if s.rate < fast_until {
            (s.rate * FAST_GROWTH).min(fast_until.max(s.rate + self.configured * PROBE_STEP))
        } else {
            s.rate + self.configured * PROBE_STEP
        }
        .min(self.configured);
        s.rate = new_rate;
        s.limiter = limiter(new_rate, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_429s_of_one_round_in_flight_slow_the_pace_down_once() {
        let p = Pacer::new(20.0);
        let in_flight: Vec<Ticket> = (0..8).map(|_| Ticket { generation: 0 }).collect();
        for t in &in_flight {
            p.slow_down(*t);
        }
        assert_eq!(p.rate(), 10.0, "eight 429s of one burst are one signal");
        // A request sent after the slowdown that also draws a 429 is a new signal.
        p.slow_down(Ticket { generation: 1 });
        assert_eq!(p.rate(), 5.0);
    }

    #[test]
    fn the_pace_regains_most_of_its_last_good_rate_within_a_few_successes() {
        let p = Pacer::new(20.0);
        p.slow_down(Ticket { generation: 0 });
        assert_eq!(p.rate(), 10.0);
        let ticket = Ticket { generation: 1 };
        let mut successes = 0;
        while p.rate() < 18.0 - 1e-9 {
            p.succeeded(ticket);
            successes += 1;
            assert!(successes < 20, "recovery is too slow: {} after {successes}", p.rate());
        }
        assert!(successes <= 8, "{successes} successes to regain 90%");
        // Beyond the last pace that drew a 429 it only creeps up.
        p.succeeded(ticket);
        assert!((p.rate() - 18.2).abs() < 1e-9, "{}", p.rate());
        for _ in 0..200 {
            p.succeeded(ticket);
        }
        assert_eq!(p.rate(), 20.0, "and never past the configured pace");
    }

    #[test]
    fn successes_of_requests_sent_before_a_slowdown_do_not_undo_it() {
        let p = Pacer::new(10.0);
        p.slow_down(Ticket { generation: 0 });
        p.succeeded(Ticket { generation: 0 });
        assert_eq!(p.rate(), 5.0);
    }

    #[test]
    fn the_pace_never_drops_below_a_floor() {
        let p = Pacer::new(64.0);
        for generation in 0..20 {
            p.slow_down(Ticket { generation });
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

    #[tokio::test]
    async fn a_request_waiting_when_the_pace_drops_takes_its_turn_at_the_new_pace() {
        let p = Arc::new(Pacer::new(10.0));
        let first = p.ready().await;
        // The next turn at 10/s would come in 100 ms; the pace drops to 1/s while it waits.
        let waiter = tokio::spawn({
            let p = p.clone();
            async move {
                let start = std::time::Instant::now();
                let ticket = p.ready().await;
                (start.elapsed(), ticket)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        for generation in 0..3 {
            p.slow_down(Ticket { generation: first.generation + generation });
        }
        assert_eq!(p.rate(), 1.25);
        let (waited, ticket) = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(500), "the waiter kept the old pace: {waited:?}");
        assert_eq!(ticket.generation, 3, "and its ticket carries the new pace");
    }
}
