//! Numbered, timed steps on stderr, so that stdout stays free for results
//! and --json.
//!
//! A task run inside another's step numbers its own steps under the
//! parent's: `[5/8 › 2/3]` is the second of three sub-steps of the fifth
//! step. In GitHub Actions each top-level step is also a folded log group.

use std::time::{Duration, Instant};

use anyhow::Result;

/// Where a task's steps sit: at the top, or inside another task's step.
#[derive(Debug, Clone, Default)]
pub struct Nest {
    prefix: String,
}

impl Nest {
    pub fn top() -> Nest {
        Nest::default()
    }
}

pub struct Steps {
    prefix: String,
    total: usize,
    done: usize,
    started: Instant,
    groups: bool,
    pub timings: Vec<(String, Duration)>,
}

impl Steps {
    pub fn new(total: usize) -> Steps {
        Steps::within(&Nest::top(), total)
    }

    /// Steps numbered under `nest`.
    pub fn within(nest: &Nest, total: usize) -> Steps {
        Steps {
            prefix: nest.prefix.clone(),
            total,
            done: 0,
            started: Instant::now(),
            groups: nest.prefix.is_empty() && std::env::var_os("GITHUB_ACTIONS").is_some(),
            timings: Vec::new(),
        }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.run_nested(name, |_| f())
    }

    /// Runs a step whose work has numbered steps of its own.
    pub fn run_nested<T>(&mut self, name: &str, f: impl FnOnce(&Nest) -> Result<T>) -> Result<T> {
        self.done += 1;
        let label = format!("{}{}/{}", self.prefix, self.done, self.total);
        if self.groups {
            eprintln!("::group::[{label}] {name}");
        }
        eprintln!("[{label}] {name}");
        let nest = Nest {
            prefix: format!("{label} › "),
        };
        let started = Instant::now();
        let result = f(&nest);
        let elapsed = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => eprintln!("[{label}] {name}: done in {elapsed:.2}s"),
            Err(_) => eprintln!("[{label}] {name}: failed after {elapsed:.2}s"),
        }
        if self.groups {
            eprintln!("::endgroup::");
        }
        self.timings.push((name.to_owned(), started.elapsed()));
        result
    }

    pub fn total_elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_labels() {
        let mut steps = Steps::new(8);
        let inner = steps
            .run_nested("outer", |nest| {
                let mut inner = Steps::within(nest, 3);
                inner.run("inner", || Ok(()))?;
                Ok(inner.prefix.clone())
            })
            .unwrap();
        assert_eq!(inner, "1/8 › ");
    }
}
