//! The container engine the tests run images, the compose stack and the
//! chart's pods under: Debian's podman with runc, driven by the docker CLI
//! through `podman system service`. Its configuration is one drop-in file
//! of ours, so that whatever the machine's or the user's containers.conf
//! says stays as it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Our drop-in, read after /etc/containers/containers.conf and before the
/// user's own files, which therefore still win where they speak.
pub const DROP_IN: &str = "/etc/containers/containers.conf.d/50-xtask-engine.conf";

/// The drop-in's text for the given hard limits.
///
/// - `runtime = "runc"`: Debian's crun refuses a hybrid cgroup layout
///   (cgroup v1 controllers with a v2 mount), which some CI machines have.
/// - `default_ulimits`: podman's default raises `nofile` to 1048576, above
///   the hard limit of a container-in-a-container, and the OCI runtime then
///   fails to start anything; these are the hard limits themselves, with
///   `nproc` at most `kernel.pid_max`: on the test machines (hard limit
///   96367, pid_max 32768) runc refused every value above pid_max with
///   "error setting rlimit type 6: operation not permitted".
/// - `cgroup_manager = "cgroupfs"` and `events_logger = "file"`: nothing
///   here runs systemd.
pub fn drop_in_text(limits: &HardLimits) -> String {
    format!(
        "# Written by `cargo xtask setup`: podman for the engine tests.\n\
         [containers]\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         \n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n",
        nofile = limits.nofile,
        nproc = limits.nproc,
    )
}

/// The hard limits of this process, which containers inherit at most.
#[derive(Debug, PartialEq)]
pub struct HardLimits {
    pub nofile: String,
    pub nproc: String,
}

/// Reads "Max open files" and "Max processes" from /proc/self/limits;
/// `pid_max` (kernel.pid_max) caps the processes.
pub fn parse_limits(text: &str, pid_max: u64) -> Result<HardLimits> {
    let hard = |name: &str| -> Result<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no `{name}` line in /proc/self/limits"))?;
        let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
        let value = fields
            .get(1)
            .with_context(|| format!("no hard limit on the `{name}` line: {line}"))?;
        Ok(if *value == "unlimited" {
            "-1".to_owned()
        } else {
            (*value).to_owned()
        })
    };
    let nproc = match hard("Max processes")?.parse::<u64>() {
        Ok(n) => n.min(pid_max),
        Err(_) => pid_max,
    };
    Ok(HardLimits {
        nofile: hard("Max open files")?,
        nproc: nproc.to_string(),
    })
}

/// The drop-in's text for this machine.
pub fn wanted_text() -> Result<String> {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .context("cannot read /proc/sys/kernel/pid_max")?;
    let pid_max: u64 = pid_max
        .trim()
        .parse()
        .with_context(|| format!("kernel.pid_max is not a number: {pid_max}"))?;
    let limits = parse_limits(
        &std::fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?,
        pid_max,
    )?;
    Ok(drop_in_text(&limits))
}

/// Writes the drop-in when its text differs; returns whether it did.
pub fn configure(dry_run: bool) -> Result<bool> {
    let text = wanted_text()?;
    let path = PathBuf::from(DROP_IN);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    if dry_run {
        println!("would write {DROP_IN}:\n{text}");
        return Ok(true);
    }
    write_file(&path, &text)?;
    Ok(true)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; run `cargo xtask setup` as root or with sudo rights",
                dir.display()
            )
        })?;
    }
    std::fs::write(path, text).with_context(|| {
        format!(
            "cannot write {}; run `cargo xtask setup` as root",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max processes             96367                96367                processes \n\
Max open files            1024                 20000                files     \n";

    #[test]
    fn the_hard_limits_are_read() {
        assert_eq!(
            parse_limits(LIMITS, 4_194_304).unwrap(),
            HardLimits {
                nofile: "20000".to_owned(),
                nproc: "96367".to_owned()
            }
        );
    }

    #[test]
    fn processes_stop_at_pid_max_and_a_missing_line_is_an_error() {
        assert_eq!(parse_limits(LIMITS, 32768).unwrap().nproc, "32768");
        let text = LIMITS.replace(
            "96367                96367",
            "unlimited            unlimited",
        );
        assert_eq!(parse_limits(&text, 32768).unwrap().nproc, "32768");
        assert_eq!(parse_limits(&text, 32768).unwrap().nofile, "20000");
        let error = parse_limits("Max processes 1 2 processes\n", 32768).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no `Max open files` line in /proc/self/limits"
        );
    }

    #[test]
    fn the_drop_in_sets_runc_and_the_limits() {
        let text = drop_in_text(&parse_limits(LIMITS, 32768).unwrap());
        assert!(text.contains("runtime = \"runc\"\n"), "{text}");
        assert!(
            text.contains("default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n"),
            "{text}"
        );
    }
}
