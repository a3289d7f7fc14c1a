//! Running a child whose output people should see as it happens.
//!
//! Plain commands go through xshell's `cmd!`. This is for the rest, through
//! duct: a child whose stderr streams live (indented under the current
//! step) while a copy is kept for the error message, such as cosign during
//! a release.

use std::io::{BufRead, BufReader};

use anyhow::{Context, Result};

pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `expression` with stdout captured and stderr both shown live,
/// each line indented, and kept.
pub fn stream_stderr(expression: duct::Expression, what: &str) -> Result<Finished> {
    stream_stderr_prefixed(expression, what, "    ")
}

/// [`stream_stderr`] with each shown line after `prefix`, so that children
/// running at the same time can be told apart.
pub fn stream_stderr_prefixed(
    expression: duct::Expression,
    what: &str,
    prefix: &str,
) -> Result<Finished> {
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let expression = expression.stdout_capture().stderr_file(writer).unchecked();
    let handle = expression
        .start()
        .with_context(|| format!("cannot run {what}"))?;
    // The expression keeps a copy of the pipe's write end: drop it, so
    // that the reader sees the end of the stream when the child exits.
    drop(expression);
    let prefix = prefix.to_owned();
    let copier = std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            eprintln!("{prefix}{line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    });
    let output = handle
        .into_output()
        .with_context(|| format!("cannot wait for {what}"))?;
    let stderr = copier.join().unwrap_or_default();
    Ok(Finished {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    })
}

/// The child's own explanation of a failure: its `Error:` line, else its
/// last line.
pub fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find_map(|l| l.strip_prefix("Error: "))
        .or(lines.last().copied())
        .unwrap_or("no output")
        .trim_end_matches([':', ' '])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_stdout_and_stderr_apart() {
        let finished = stream_stderr(
            duct::cmd!(
                "sh",
                "-c",
                "echo out; echo err >&2; echo 'Error: why' >&2; exit 3"
            ),
            "sh",
        )
        .unwrap();
        assert!(!finished.success);
        assert_eq!(finished.stdout, "out\n");
        assert_eq!(finished.stderr, "err\nError: why\n");
        assert_eq!(error_line(&finished.stderr), "why");
    }
}
