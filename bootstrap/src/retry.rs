//! The one backoff helper behind every wait and retry: download retries,
//! readiness polling, waiting for a process to end or to report, waiting
//! for a lock file. Delays double from `first` up to `max`; a deadline, when
//! set, bounds the whole wait (the last sleep is cut to it).

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max: max.max(first), deadline: None }
    }

    /// The same delay every time.
    pub fn fixed(every: Duration) -> Backoff {
        Backoff::new(every, every)
    }

    /// Bounds the whole wait to `timeout` from now.
    pub fn for_at_most(self, timeout: Duration) -> Backoff {
        self.until(Instant::now() + timeout)
    }

    pub fn until(mut self, deadline: Instant) -> Backoff {
        self.deadline = Some(deadline);
        self
    }

    /// The delay before the next attempt, doubling each time; `None` once
    /// the deadline has passed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let mut d = self.next;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            d = d.min(left);
        }
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(d)
    }

    /// Sleeps before the next attempt; false (without sleeping) once the
    /// deadline has passed.
    pub fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                std::thread::sleep(d);
                true
            }
            None => false,
        }
    }

    /// Calls `f` until it returns `Some`, sleeping between tries; `None` if
    /// the deadline passes first (`f` is always tried once more at the end).
    pub fn poll<T>(mut self, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if !self.wait() {
                return f();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_stops_at_the_deadline() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().unwrap().as_millis()).collect();
        assert_eq!(got, [10, 20, 35, 35]);
        let mut b = Backoff::fixed(Duration::from_secs(5)).for_at_most(Duration::from_millis(30));
        let t = Instant::now();
        while b.wait() {}
        assert!(t.elapsed() < Duration::from_secs(1));
        let mut n = 0;
        assert_eq!(
            Backoff::fixed(Duration::from_millis(1)).for_at_most(Duration::from_secs(5)).poll(|| {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
    }
}
