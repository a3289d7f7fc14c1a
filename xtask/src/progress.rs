//! Numbered, timed steps on stderr, so that stdout stays free for --json.

use std::time::{Duration, Instant};

use anyhow::Result;

pub struct Steps {
    total: usize,
    done: usize,
    started: Instant,
    pub timings: Vec<(String, Duration)>,
}

impl Steps {
    pub fn new(total: usize) -> Steps {
        Steps {
            total,
            done: 0,
            started: Instant::now(),
            timings: Vec::new(),
        }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        eprintln!("[{}/{}] {name}", self.done, self.total);
        let started = Instant::now();
        let result = f();
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => eprintln!(
                "[{}/{}] {name}: done in {:.2}s",
                self.done,
                self.total,
                elapsed.as_secs_f64()
            ),
            Err(_) => eprintln!(
                "[{}/{}] {name}: failed after {:.2}s",
                self.done,
                self.total,
                elapsed.as_secs_f64()
            ),
        }
        self.timings.push((name.to_owned(), elapsed));
        result
    }

    pub fn total_elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
