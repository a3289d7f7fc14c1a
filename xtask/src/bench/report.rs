//! The benchmark's figures: wrk's output parsed, and the reports rendered
//! against their budgets and targets.

use super::cold::Single;
use super::pipeline::PipelineReport;
use super::{Load, Report, Settings};

pub(super) fn parse_wrk(output: &str) -> Option<Load> {
    let mut load = Load {
        threads: 0,
        connections: 0,
        duration_s: 0,
        requests: 0,
        requests_per_sec: 0.0,
        latency_p50_ms: 0.0,
        latency_p99_ms: 0.0,
        non_2xx: 0,
        socket_errors: 0,
        rss_peak_kib: 0,
        rss_after_kib: 0,
    };
    let mut seen_rate = false;
    for line in output.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            load.requests_per_sec = rate.trim().parse().ok()?;
            seen_rate = true;
        } else if let Some(value) = line.strip_prefix("50%") {
            load.latency_p50_ms = wrk_duration_ms(value.trim())?;
        } else if let Some(value) = line.strip_prefix("99%") {
            load.latency_p99_ms = wrk_duration_ms(value.trim())?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.non_2xx = count.trim().parse().ok()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 1, write 0, timeout 0"
            load.socket_errors = errors
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some((requests, _)) = line.split_once(" requests in ") {
            load.requests = requests.trim().parse().ok()?;
        }
    }
    seen_rate.then_some(load)
}

/// wrk prints durations as `812.00us`, `1.31ms` or `1.02s`.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// Median, min and max; sorts `values`.
pub(super) fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}

/// The throughput and latency rows of one wrk run against `target`.
fn wrk_rows(
    target: &str,
    load: &Load,
    settings: &Settings,
) -> [(String, String, String, &'static str); 2] {
    [
        (
            format!(
                "{target} throughput (wrk -t{} -c{} -d{}s)",
                settings.wrk_threads, settings.wrk_connections, settings.wrk_seconds
            ),
            format!("{:.0} req/s", load.requests_per_sec),
            String::new(),
            "",
        ),
        (
            "  latency p50 / p99; non-2xx; socket errors".to_owned(),
            format!(
                "{:.2} / {:.2} ms; {}; {}",
                load.latency_p50_ms, load.latency_p99_ms, load.non_2xx, load.socket_errors
            ),
            String::new(),
            "",
        ),
    ]
}

pub(super) fn render(report: &Report, settings: &Settings) -> String {
    let short = report.git_sha.get(..7).unwrap_or(&report.git_sha);
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    let size = &report.size;
    rows.push((
        format!(
            "binary size ({}, {}, {})",
            size.path,
            if size.is_static {
                "static"
            } else {
                "NOT static"
            },
            if size.stripped {
                "stripped"
            } else {
                "NOT stripped"
            }
        ),
        format!("{} ({} bytes)", mib(size.bytes as f64), size.bytes),
        format!("<= {}", mib(size.target_bytes as f64)),
        verdict(size.ok),
    ));
    rows.push((
        "idle RSS".to_owned(),
        mib(report.idle_rss.kib as f64 * 1024.0),
        format!("<= {}", mib(report.idle_rss.target_kib as f64 * 1024.0)),
        verdict(report.idle_rss.ok),
    ));
    let start = &report.start_to_healthy;
    rows.push((
        format!("start -> first 200 on /healthz (median of {})", start.runs),
        format!(
            "{:.1} ms (min {:.1}, max {:.1})",
            start.median_ms, start.min_ms, start.max_ms
        ),
        format!("<= {:.0} ms", start.target_ms),
        verdict(start.ok),
    ));
    let hc = &report.healthcheck;
    rows.push((
        format!("server healthcheck wall time (median of {})", hc.runs),
        format!(
            "{:.2} ms (min {:.2}, max {:.2})",
            hc.median_ms, hc.min_ms, hc.max_ms
        ),
        format!("<= {:.0} ms", hc.target_ms),
        verdict(hc.ok),
    ));
    let load = &report.load;
    rows.extend(wrk_rows("/healthz", load, settings));
    rows.push((
        "RSS under load (peak / after)".to_owned(),
        format!(
            "{} / {}",
            mib(load.rss_peak_kib as f64 * 1024.0),
            mib(load.rss_after_kib as f64 * 1024.0)
        ),
        String::new(),
        "",
    ));
    let db = &report.with_database;
    rows.push((
        "with a database: idle RSS, connected".to_owned(),
        mib(db.idle_rss_kib as f64 * 1024.0),
        String::new(),
        "",
    ));
    let boot = &db.boot_and_migrate;
    rows.push((
        format!(
            "  start -> first 200 on /readyz, {} migrations applied (median of {})",
            boot.migrations, boot.runs
        ),
        format!(
            "{:.1} ms (min {:.1}, max {:.1})",
            boot.median_ms, boot.min_ms, boot.max_ms
        ),
        String::new(),
        "",
    ));
    rows.extend(wrk_rows("  GET /v1/items/{key}", &db.item_load, settings));

    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let figure_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = format!(
        "server benchmark: {} at {short}{}\n",
        report.server,
        if report.quick {
            " (--quick: smoke run, figures not comparable)"
        } else {
            ""
        }
    );
    for (name, figure, target, verdict) in &rows {
        let line = format!("  {name:width$}  {figure:figure_width$}  {target:10} {verdict}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("commands:\n");
    for command in &report.commands {
        out.push_str(&format!("  {command}\n"));
    }
    out
}

/// `bench --pipeline`'s report as text: each figure, its target and the
/// commands behind it.
pub(super) fn render_pipeline(report: &PipelineReport) -> String {
    let r = &report.ratios;
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    let single = |s: &Single| match s.seconds {
        Some(seconds) => format!("{seconds:>7.3} s"),
        None => "skipped (--quick)".to_owned(),
    };
    let cold_ratio = match (r.cold_over_floor, r.cold_over_floor_ok) {
        (Some(ratio), Some(ok)) => format!(
            "{ratio:>7.3}×   (target ≤ {:.2}×: {}; median of the rounds {})",
            r.cold_over_floor_target,
            mark(ok),
            r.cold_over_floor_rounds
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "skipped (--quick)".to_owned(),
    };
    format!(
        "machine: {} × {}, load average {}\ncommit: {}\n\
         cargo xtask --help     {:>7.3} s  (cargo's no-op check)\n\
         warm image --push      {:>7.3} s  (target ≤ {:.1} s: {})\n\
         \x20\x20beyond cargo         {:>7.3} s  (target ≤ {:.1} s: {})\n\
         \x20\x20peak memory          {:>7.1} MiB (the xtask's VmHWM)\n\
         native image           {:>7.3} s\n\
         \x20\x20the xtask itself     {:>7.3} s\n\
         buildah, both arches   {:>7.3} s\n\
         buildah / native       {:>7.2}×   (target ≥ {:.0}×: {})\n\
         \x20\x20without cargo        {:>7.2}×\n\
         floor, cargo build     {}\n\
         cold image --push      {}\n\
         cold / floor           {}\n\
         image after a change   {}\n\ncommands:\n  {}\n",
        report.machine.nproc,
        report.machine.cpu_model,
        report.machine.load_average,
        report.git_sha,
        report.cargo_noop.median_s,
        report.warm_image_push.median_s,
        r.warm_image_push_target_s,
        mark(r.warm_image_push_ok),
        r.warm_image_push_beyond_cargo_s,
        r.warm_image_push_beyond_cargo_target_s,
        mark(r.warm_image_push_beyond_cargo_ok),
        report.warm_image_push_peak_rss_kib as f64 / 1024.0,
        report.native_image.median_s,
        report.native_image_direct.median_s,
        report.buildah.median_s,
        r.buildah_over_native,
        r.buildah_over_native_target,
        mark(r.buildah_over_native_ok),
        r.buildah_over_native_direct,
        single(&report.floor),
        single(&report.cold_image_push),
        cold_ratio,
        single(&report.image_after_change),
        report.commands.join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::cold::Single;
    use super::super::pipeline::{Machine, PipelineReport, Ratios, Timing};
    use super::render_pipeline;

    fn timing(median_s: f64) -> Timing {
        Timing {
            runs_s: vec![median_s],
            median_s,
        }
    }

    fn single(runs_s: Vec<f64>, seconds: f64) -> Single {
        Single {
            skipped: false,
            seconds: Some(seconds),
            runs_s,
            parts_s: BTreeMap::new(),
        }
    }

    #[test]
    fn the_pipeline_report_shows_each_round_of_the_cold_ratio() {
        let report = PipelineReport {
            machine: Machine {
                nproc: 2,
                cpu_model: "AMD EPYC".into(),
                load_average: "1.17 1.46 1.44".into(),
            },
            git_sha: "653cc9e".into(),
            quick: false,
            warm_image_push: timing(0.236),
            warm_image_push_peak_rss_kib: 41_062,
            native_image: timing(0.184),
            native_image_direct: timing(0.08),
            cargo_noop: timing(0.12),
            buildah: timing(0.4),
            floor: single(vec![139.226, 145.202, 145.392], 145.202),
            cold_image_push: single(vec![165.646, 158.065, 151.049], 158.065),
            image_after_change: single(vec![100.074], 100.074),
            ratios: Ratios {
                buildah_over_native: 2.174,
                buildah_over_native_target: 3.0,
                warm_image_push_target_s: 1.0,
                warm_image_push_ok: true,
                warm_image_push_beyond_cargo_s: 0.116,
                warm_image_push_beyond_cargo_target_s: 0.5,
                warm_image_push_beyond_cargo_ok: true,
                buildah_over_native_direct: 5.0,
                buildah_over_native_ok: false,
                cold_over_floor: Some(1.089),
                cold_over_floor_rounds: vec![1.19, 1.089, 1.039],
                cold_over_floor_target: 1.15,
                cold_over_floor_ok: Some(true),
            },
            commands: vec!["cargo xtask image".into()],
        };
        assert_eq!(
            render_pipeline(&report),
            "machine: 2 × AMD EPYC, load average 1.17 1.46 1.44\n\
             commit: 653cc9e\n\
             cargo xtask --help       0.120 s  (cargo's no-op check)\n\
             warm image --push        0.236 s  (target ≤ 1.0 s: ok)\n\
             \x20\x20beyond cargo           0.116 s  (target ≤ 0.5 s: ok)\n\
             \x20\x20peak memory             40.1 MiB (the xtask's VmHWM)\n\
             native image             0.184 s\n\
             \x20\x20the xtask itself       0.080 s\n\
             buildah, both arches     0.400 s\n\
             buildah / native          2.17×   (target ≥ 3×: MISSED)\n\
             \x20\x20without cargo           5.00×\n\
             floor, cargo build     145.202 s\n\
             cold image --push      158.065 s\n\
             cold / floor             1.089×   (target ≤ 1.15×: ok; median of the rounds 1.190, 1.089, 1.039)\n\
             image after a change   100.074 s\n\
             \ncommands:\n  cargo xtask image\n"
        );
    }
}
