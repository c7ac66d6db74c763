//! The store's circuit breaker: after consecutive failed callouts, stop asking the store for a
//! while (requests go straight to the origin, with no added wait), then let one lookup probe
//! it, and close again when the store answers.
//!
//! Pure: fed outcomes with `now`, asked whether a command may go. The backoff doubles on each
//! failed probe up to a cap, and is jittered (by a seed the caller gives) so the workers and
//! proxies of a fleet do not probe a recovering store in lockstep.

/// When to open and how long to stay open (`store.breaker_*` in the plugin config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failed callouts that open the breaker; 0 never opens it.
    pub failures: u32,
    /// The first open period, ms.
    pub backoff_ms: u64,
    /// The longest open period, ms.
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Commands go; `failures` in a row so far.
    Closed { failures: u32 },
    /// Nothing goes until `until_ms`; the period that was drawn from `backoff_ms`.
    Open { until_ms: u64, backoff_ms: u64 },
    /// One lookup (the probe) is out; nothing else goes until it is answered.
    Probing { backoff_ms: u64 },
}

/// Whether a lookup may go to the store now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the probe of a half-open breaker: it goes alone, and its outcome decides.
    Probe,
    No,
}

/// A change of state worth telling (a gauge, a counter, a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    /// xorshift64 state for the jitter.
    rng: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, seed: u64) -> Breaker {
        Breaker {
            settings,
            state: State::Closed { failures: 0 },
            rng: seed | 1,
        }
    }

    /// Whether a lookup may go now. After the open period, the first lookup asked about is
    /// the probe (the breaker is then half-open until its outcome).
    pub fn admit_lookup(&mut self, now_ms: u64) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open {
                until_ms,
                backoff_ms,
            } if now_ms >= until_ms => {
                self.state = State::Probing { backoff_ms };
                Admit::Probe
            }
            State::Open { .. } | State::Probing { .. } => Admit::No,
        }
    }

    /// Whether writes (and purges) may go: only while closed. Writes never probe: a lookup's
    /// answer is what a request waits for.
    pub fn admits_writes(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// The store answered a callout usefully.
    pub fn success(&mut self) -> Option<Change> {
        let was_open = self.is_open();
        self.state = State::Closed { failures: 0 };
        was_open.then_some(Change::Closed)
    }

    /// A callout failed (timeout, down, garbage, another command's answer). `probe` says
    /// whether it was the half-open breaker's probe: failures of callouts sent before the
    /// breaker opened change nothing while it is open.
    pub fn failure(&mut self, now_ms: u64, probe: bool) -> Option<Change> {
        match self.state {
            State::Closed { failures } => {
                let failures = failures + 1;
                if self.settings.failures == 0 || failures < self.settings.failures {
                    self.state = State::Closed { failures };
                    return None;
                }
                self.open(now_ms, self.settings.backoff_ms);
                Some(Change::Opened)
            }
            State::Probing { backoff_ms } if probe => {
                let next = backoff_ms
                    .saturating_mul(2)
                    .min(self.settings.max_backoff_ms);
                self.open(now_ms, next);
                None
            }
            State::Open { .. } | State::Probing { .. } => None,
        }
    }

    /// The probe was never sent (its stream left first): the next lookup probes instead.
    pub fn probe_abandoned_if_probing(&mut self) {
        if let State::Probing { backoff_ms } = self.state {
            self.state = State::Open {
                until_ms: 0,
                backoff_ms,
            };
        }
    }

    fn open(&mut self, now_ms: u64, backoff_ms: u64) {
        // Between half and all of the backoff.
        let half = backoff_ms / 2;
        let jitter = if half == 0 {
            0
        } else {
            self.next() % (half + 1)
        };
        self.state = State::Open {
            until_ms: now_ms.saturating_add(backoff_ms - half + jitter),
            backoff_ms,
        };
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: BreakerSettings = BreakerSettings {
        failures: 3,
        backoff_ms: 1000,
        max_backoff_ms: 4000,
    };

    fn open_until(b: &Breaker) -> u64 {
        match b.state {
            State::Open { until_ms, .. } => until_ms,
            other => panic!("not open: {other:?}"),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = Breaker::new(S, 7);
        assert_eq!(b.failure(0, false), None);
        assert_eq!(b.failure(0, false), None);
        assert_eq!(b.success(), None, "a success in between resets the count");
        assert_eq!(b.failure(0, false), None);
        assert_eq!(b.failure(0, false), None);
        assert_eq!(b.admit_lookup(0), Admit::Yes);
        assert_eq!(b.failure(10, false), Some(Change::Opened));
        assert_eq!(b.admit_lookup(10), Admit::No);
        assert!(!b.admits_writes());
        let until = open_until(&b);
        assert!(
            (510..=1010).contains(&until),
            "jittered within the backoff: {until}"
        );
    }

    #[test]
    fn one_probe_after_the_backoff_then_closes_on_success() {
        let mut b = Breaker::new(S, 7);
        for _ in 0..3 {
            b.failure(0, false);
        }
        let until = open_until(&b);
        assert_eq!(b.admit_lookup(until - 1), Admit::No);
        assert_eq!(b.admit_lookup(until), Admit::Probe);
        assert_eq!(b.admit_lookup(until), Admit::No, "one probe at a time");
        assert!(!b.admits_writes());
        assert_eq!(b.failure(until, false), None, "an older callout's failure");
        assert_eq!(b.success(), Some(Change::Closed));
        assert_eq!(b.admit_lookup(until), Admit::Yes);
        assert!(b.admits_writes());
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let mut b = Breaker::new(S, 99);
        for _ in 0..3 {
            b.failure(0, false);
        }
        let mut now = open_until(&b);
        let mut periods = Vec::new();
        for _ in 0..4 {
            assert_eq!(b.admit_lookup(now), Admit::Probe);
            assert_eq!(b.failure(now, true), None, "still open: not a new opening");
            let until = open_until(&b);
            periods.push(until - now);
            now = until;
        }
        assert!((1000..=2000).contains(&periods[0]), "{periods:?}");
        assert!((2000..=4000).contains(&periods[1]), "{periods:?}");
        assert!((2000..=4000).contains(&periods[3]), "capped: {periods:?}");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_lookup_probe() {
        let mut b = Breaker::new(S, 5);
        for _ in 0..3 {
            b.failure(0, false);
        }
        let until = open_until(&b);
        assert_eq!(b.admit_lookup(until), Admit::Probe);
        assert_eq!(b.admit_lookup(until), Admit::No);
        b.probe_abandoned_if_probing();
        assert_eq!(b.admit_lookup(until + 1), Admit::Probe);
    }

    #[test]
    fn zero_failures_never_opens() {
        let mut b = Breaker::new(BreakerSettings { failures: 0, ..S }, 1);
        for _ in 0..100 {
            assert_eq!(b.failure(0, false), None);
        }
        assert_eq!(b.admit_lookup(0), Admit::Yes);
    }
}
