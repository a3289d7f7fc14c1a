//! Whether dist compiles its targets one after the other or at the same
//! time, and with how many jobs each.

use anyhow::{bail, Result};

/// The environment variable that overrides the choice: `1` builds the
/// targets in parallel, `0` one after the other.
pub const OVERRIDE_VAR: &str = "XTASK_PARALLEL_TARGETS";

/// The fewest cores on which dist builds its targets in parallel.
///
/// On 2 cores, from clean, both targets took 148 s one after the other
/// (load average 3.1 falling to 1.6) and 145 s as two concurrent cargos
/// with their default jobs, each in its own target directory (load 0.1
/// rising to 2.1): no gain within the noise, so 2 cores stay sequential.
/// In one target directory the second cargo waits for the first one's
/// lock, so there is no overlap at all (323 s with `--jobs 1` each against
/// 378 s sequential, both under a load of 3 to 8 from other jobs). 4 is
/// not measured: it is the smallest count that gives each target 2 jobs,
/// where the single-threaded end of each build (the server crate with one
/// codegen unit and LTO) leaves a core the other target can use.
pub const PARALLEL_MIN_CORES: usize = 4;

/// How the cargo builds of dist are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// `Some(n)`: every target's cargo runs at once, each with `--jobs n`.
    /// `None`: one after the other, each with cargo's default jobs.
    pub parallel_jobs: Option<usize>,
    /// Why, for the plan's one line.
    pub reason: String,
}

impl Schedule {
    /// Chooses from the core count and the number of targets to build;
    /// `forced` is the override, if set.
    pub fn choose(cores: usize, targets: usize, forced: Option<bool>) -> Schedule {
        let cores = cores.max(1);
        // With one target there is nothing to overlap, forced or not.
        if targets < 2 {
            return Schedule::sequential(format!("{targets} target to build"));
        }
        let share = (cores / targets).max(1);
        match forced {
            Some(true) => Schedule::parallel(share, format!("{OVERRIDE_VAR}=1")),
            Some(false) => Schedule::sequential(format!("{OVERRIDE_VAR}=0")),
            None if cores >= PARALLEL_MIN_CORES => Schedule::parallel(
                share,
                format!("{cores} cores, at least {PARALLEL_MIN_CORES}"),
            ),
            None => Schedule::sequential(format!("{cores} cores, fewer than {PARALLEL_MIN_CORES}")),
        }
    }

    /// Chooses for this machine and this environment.
    pub fn for_this_machine(targets: usize) -> Result<Schedule> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let forced = parse_override(std::env::var(OVERRIDE_VAR).ok().as_deref())?;
        Ok(Schedule::choose(cores, targets, forced))
    }

    fn sequential(reason: String) -> Schedule {
        Schedule {
            parallel_jobs: None,
            reason,
        }
    }

    fn parallel(jobs: usize, reason: String) -> Schedule {
        Schedule {
            parallel_jobs: Some(jobs),
            reason,
        }
    }

    /// The plan's line: what was chosen and why.
    pub fn describe(&self) -> String {
        match self.parallel_jobs {
            Some(jobs) => format!(
                "targets: built in parallel, --jobs {jobs} each ({})",
                self.reason
            ),
            None => format!("targets: built one after the other ({})", self.reason),
        }
    }
}

/// The value of [`OVERRIDE_VAR`]: unset or empty chooses by the cores.
pub fn parse_override(value: Option<&str>) -> Result<Option<bool>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("1") => Ok(Some(true)),
        Some("0") => Ok(Some(false)),
        Some(other) => bail!("{OVERRIDE_VAR} must be 0 or 1, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(cores: usize, forced: Option<bool>) -> Option<usize> {
        Schedule::choose(cores, 2, forced).parallel_jobs
    }

    #[test]
    fn chooses_by_the_cores_for_two_targets() {
        assert_eq!(jobs(1, None), None);
        assert_eq!(jobs(2, None), None);
        assert_eq!(jobs(4, None), Some(2));
        assert_eq!(jobs(8, None), Some(4));
    }

    #[test]
    fn the_override_wins_over_the_cores() {
        assert_eq!(jobs(1, Some(true)), Some(1));
        assert_eq!(jobs(2, Some(true)), Some(1));
        assert_eq!(jobs(8, Some(true)), Some(4));
        assert_eq!(jobs(8, Some(false)), None);
        assert_eq!(jobs(2, Some(false)), None);
    }

    #[test]
    fn one_target_is_always_built_alone() {
        assert_eq!(Schedule::choose(8, 1, None).parallel_jobs, None);
        assert_eq!(Schedule::choose(8, 1, Some(true)).parallel_jobs, None);
    }

    #[test]
    fn the_plan_line_says_what_and_why() {
        assert_eq!(
            Schedule::choose(2, 2, None).describe(),
            "targets: built one after the other (2 cores, fewer than 4)"
        );
        assert_eq!(
            Schedule::choose(2, 2, Some(true)).describe(),
            "targets: built in parallel, --jobs 1 each (XTASK_PARALLEL_TARGETS=1)"
        );
        assert_eq!(
            Schedule::choose(8, 2, None).describe(),
            "targets: built in parallel, --jobs 4 each (8 cores, at least 4)"
        );
    }

    #[test]
    fn the_override_is_0_or_1() {
        assert_eq!(parse_override(None).unwrap(), None);
        assert_eq!(parse_override(Some("")).unwrap(), None);
        assert_eq!(parse_override(Some("1")).unwrap(), Some(true));
        assert_eq!(parse_override(Some("0")).unwrap(), Some(false));
        assert_eq!(
            parse_override(Some("yes")).unwrap_err().to_string(),
            "XTASK_PARALLEL_TARGETS must be 0 or 1, not \"yes\""
        );
    }
}
