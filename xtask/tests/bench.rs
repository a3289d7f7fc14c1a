//! `cargo xtask bench`: that it runs and reports every figure. The figures
//! themselves are not asserted: a benchmark is not a test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use support::{head_sha, run, xtask};

#[test]
fn bench_quick_json_reports_every_figure_with_its_target() {
    let output = run(xtask().args(["bench", "--quick", "--json"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("bench --json prints one JSON object");

    let keys = |value: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = value
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {value}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&report),
        [
            "commands",
            "git_sha",
            "healthcheck",
            "idle_rss",
            "load",
            "quick",
            "server",
            "size",
            "start_to_healthy",
            "with_database"
        ]
    );
    assert_eq!(
        keys(&report["size"]),
        [
            "bytes",
            "from_dist",
            "ok",
            "path",
            "static",
            "stripped",
            "target_bytes"
        ]
    );
    assert_eq!(keys(&report["idle_rss"]), ["kib", "ok", "target_kib"]);
    assert_eq!(
        keys(&report["start_to_healthy"]),
        ["max_ms", "median_ms", "min_ms", "ok", "runs", "target_ms"]
    );
    assert_eq!(
        keys(&report["healthcheck"]),
        [
            "max_ms",
            "mean_ms",
            "median_ms",
            "min_ms",
            "ok",
            "runs",
            "target_ms"
        ]
    );
    assert_eq!(
        keys(&report["load"]),
        [
            "connections",
            "duration_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "non_2xx",
            "requests",
            "requests_per_sec",
            "rss_after_kib",
            "rss_peak_kib",
            "socket_errors",
            "threads"
        ]
    );

    assert_eq!(report["quick"], true);
    // Relative to the workspace, unless CARGO_TARGET_DIR is elsewhere.
    let server = report["server"].as_str().unwrap();
    assert!(server.ends_with("release/server"), "{server}");
    assert_eq!(report["git_sha"], head_sha());
    assert_eq!(report["size"]["target_bytes"], 4 * 1024 * 1024);
    assert_eq!(report["idle_rss"]["target_kib"], 6 * 1024);
    assert_eq!(report["start_to_healthy"]["target_ms"], 50.0);
    assert_eq!(report["healthcheck"]["target_ms"], 10.0);
    assert_eq!(report["start_to_healthy"]["runs"], 3);
    assert_eq!(report["healthcheck"]["runs"], 10);
    let load = &report["load"];
    assert_eq!(
        (&load["threads"], &load["connections"], &load["duration_s"]),
        (&2.into(), &50.into(), &1.into())
    );
    // Under load every answer must still be a 200: that is correctness.
    assert_eq!(
        (&load["non_2xx"], &load["socket_errors"]),
        (&0.into(), &0.into())
    );
    assert!(load["requests"].as_u64().is_some_and(|n| n > 0), "{load}");

    // With a database: every run applied every migration of the source,
    // and every GET of the item was a 200.
    let db = &report["with_database"];
    assert_eq!(keys(db), ["boot_and_migrate", "idle_rss_kib", "item_load"]);
    assert_eq!(
        keys(&db["boot_and_migrate"]),
        ["max_ms", "median_ms", "migrations", "min_ms", "runs"]
    );
    let migrations = std::fs::read_dir(support::workspace_root().join("server/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(db["boot_and_migrate"]["migrations"], migrations);
    assert_eq!(db["boot_and_migrate"]["runs"], 3);
    let items = &db["item_load"];
    assert_eq!(
        (&items["non_2xx"], &items["socket_errors"]),
        (&0.into(), &0.into())
    );
    assert!(items["requests"].as_u64().is_some_and(|n| n > 0), "{items}");
    assert!(db["idle_rss_kib"].as_u64().is_some_and(|n| n > 0));
    assert!(report["size"]["bytes"].as_u64().is_some_and(|n| n > 0));
    assert!(report["idle_rss"]["kib"].as_u64().is_some_and(|n| n > 0));

    let commands: Vec<&str> = report["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(commands[0], "cargo build --release --package server");
    assert!(
        commands.iter().any(|c| c.starts_with("hyperfine -N ")),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("wrk -t2 -c50 -d1s --latency http://127.0.0.1:")),
        "{commands:?}"
    );
    assert!(
        commands.iter().any(
            |c| c.starts_with("wrk -t2 -c50 -d1s --latency http://127.0.0.1:")
                && c.ends_with("/v1/items/bench")
        ),
        "{commands:?}"
    );
    for step in 1..=8 {
        assert!(stderr.contains(&format!("[{step}/8] ")), "{stderr}");
    }
}

#[test]
fn bench_without_wrk_says_to_run_setup() {
    let empty = tempfile::tempdir().unwrap();
    let output = run(xtask()
        .args(["bench", "--quick"])
        .env("PATH", empty.path())
        .env("HOME", empty.path())
        .env_remove("GOBIN"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout, b"");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: wrk not found: run `cargo xtask setup` (apt-get install wrk)\n"
    );
}

/// At least one round: a ratio of no rounds would be no figure at all.
#[test]
fn bench_pipeline_refuses_zero_cold_rounds() {
    let output = run(xtask().args(["bench", "--pipeline", "--cold-rounds", "0"]));
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(output.stdout, b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.lines().next(),
        Some("error: invalid value '0' for '--cold-rounds <COLD_ROUNDS>': 0 is not in 1..=255"),
        "{stderr}"
    );
}

/// The shape of `bench --pipeline --json`, on one run of each: the
/// timings are not asserted, only that each is a measured duration. The
/// cold figures take minutes, so `--quick` reports them as skipped.
#[test]
fn bench_pipeline_quick_json_reports_every_figure_and_the_machine() {
    support::dist();
    let output = run(xtask().args(["bench", "--pipeline", "--quick", "--json"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --pipeline failed:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("bench --json prints one JSON object");
    let mut keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "buildah",
            "cargo_noop",
            "cold_image_push",
            "commands",
            "floor",
            "git_sha",
            "image_after_change",
            "machine",
            "native_image",
            "native_image_direct",
            "quick",
            "ratios",
            "warm_image_push",
            "warm_image_push_peak_rss_kib"
        ]
    );
    for figure in ["floor", "cold_image_push", "image_after_change"] {
        let mut keys: Vec<&String> = report[figure].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["parts_s", "runs_s", "seconds", "skipped"],
            "{figure}"
        );
        assert_eq!(report[figure]["skipped"], true, "{figure}");
        assert!(report[figure]["seconds"].is_null(), "{figure}");
        assert_eq!(report[figure]["runs_s"], serde_json::json!([]), "{figure}");
        assert_eq!(report[figure]["parts_s"], serde_json::json!({}), "{figure}");
    }
    let mut ratios: Vec<&String> = report["ratios"].as_object().unwrap().keys().collect();
    ratios.sort();
    assert_eq!(
        ratios,
        [
            "buildah_over_native",
            "buildah_over_native_direct",
            "buildah_over_native_ok",
            "buildah_over_native_target",
            "cold_over_floor",
            "cold_over_floor_ok",
            "cold_over_floor_rounds",
            "cold_over_floor_target",
            "warm_image_push_beyond_cargo_ok",
            "warm_image_push_beyond_cargo_s",
            "warm_image_push_beyond_cargo_target_s",
            "warm_image_push_ok",
            "warm_image_push_target_s"
        ]
    );
    assert_eq!(report["ratios"]["cold_over_floor_target"], 1.15);
    assert!(report["ratios"]["cold_over_floor"].is_null());
    assert!(report["ratios"]["cold_over_floor_ok"].is_null());
    assert_eq!(
        report["ratios"]["cold_over_floor_rounds"],
        serde_json::json!([])
    );
    let load = report["machine"]["load_average"].as_str().unwrap();
    assert_eq!(load.split(' ').count(), 3, "{load}");
    assert_eq!(report["git_sha"], head_sha());
    assert_eq!(report["quick"], true);
    for figure in [
        "warm_image_push",
        "native_image",
        "native_image_direct",
        "cargo_noop",
        "buildah",
    ] {
        let runs = report[figure]["runs_s"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{figure}: {runs:?}");
        assert!(runs[0].as_f64().unwrap() > 0.0, "{figure}: {runs:?}");
        assert_eq!(report[figure]["median_s"], runs[0]);
    }
    let peak_kib = report["warm_image_push_peak_rss_kib"].as_u64().unwrap();
    eprintln!("warm image --push peak RSS: {peak_kib} KiB");
    assert!(
        (1024..100 * 1024).contains(&peak_kib),
        "warm image --push peaked at {peak_kib} KiB"
    );
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["cpu_model"].as_str().unwrap().is_empty());
    assert_eq!(report["ratios"]["warm_image_push_target_s"], 1.0);
    assert_eq!(report["ratios"]["buildah_over_native_target"], 3.0);
    assert_eq!(
        report["ratios"]["warm_image_push_beyond_cargo_target_s"],
        0.5
    );
    let beyond = report["ratios"]["warm_image_push_beyond_cargo_s"]
        .as_f64()
        .unwrap();
    let expected = (report["warm_image_push"]["median_s"].as_f64().unwrap()
        - report["cargo_noop"]["median_s"].as_f64().unwrap())
    .max(0.0);
    assert!((beyond - expected).abs() < 0.0015, "{beyond} != {expected}");
    let commands = report["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 5, "{commands:?}");
    let direct = commands[2].as_str().unwrap();
    assert!(
        direct.contains("/xtask image --base scratch --out "),
        "{commands:?}"
    );
    assert_eq!(commands[3], "cargo xtask --help", "{commands:?}");
    assert!(
        commands[0]
            .as_str()
            .unwrap()
            .starts_with("cargo xtask image --push"),
        "{commands:?}"
    );
}
