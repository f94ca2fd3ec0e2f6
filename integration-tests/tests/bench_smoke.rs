//! Smoke run of the benchmark harness: `bench all --quick` runs every scenario once, briefly,
//! against kennel (and the mydog peer when node/npm are available and KENNEL_SKIP_MYDOG is
//! unset), as a real process. Asserts only that it completes, that every scenario produced its
//! figures for every system, and that every run accounted for every reply (the harness exits
//! 1 otherwise). No thresholds: timings on a loaded 2-core machine are noise.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::mydog::{SKIP_ENV, node_and_npm};
use serde_json::Value;

#[test]
fn every_scenario_completes_and_counts_every_reply() {
    let with_mydog = match node_and_npm() {
        Ok(()) => std::env::var(SKIP_ENV).as_deref() != Ok("1"),
        Err(why) => {
            assert_eq!(
                std::env::var(SKIP_ENV).as_deref(),
                Ok("1"),
                "mydog needs node and npm ({why}); set {SKIP_ENV}=1 to skip it"
            );
            false
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.args(["all", "--quick", "--json"]).arg(&json);
    if !with_mydog {
        cmd.arg("--no-mydog");
    }
    let started = Instant::now();
    let out = cmd.output().expect("run the bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "the quick run took {:?}",
        started.elapsed()
    );

    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results["problems"], serde_json::json!([]), "{stderr}");
    let rows = results["rows"].as_array().unwrap();
    let value = |scenario: &str, metric: &str, system: &str| -> Option<f64> {
        rows.iter()
            .find(|r| r["scenario"] == scenario && r["metric"] == metric)?["runs"][system]
            .as_array()?
            .first()?
            .as_f64()
    };
    let mut systems = vec!["kennel"];
    if with_mydog {
        systems.push("mydog");
    }
    for system in &systems {
        for (scenario, metric) in [
            ("frontend echo 1x1", "ReqPerSec"),
            ("frontend echo 100x16", "ReqPerSec"),
            ("backend echo 1x1", "ReqPerSec"),
            ("backend echo 100x16", "ReqPerSec"),
            ("rpc 100x16", "ReqPerSec"),
            ("broadcast rooms of 10", "MsgPerSec"),
            ("broadcast rooms of 100", "MsgPerSec"),
        ] {
            let v = value(scenario, metric, system)
                .unwrap_or_else(|| panic!("no {metric} for {scenario} / {system}:\n{stdout}"));
            assert!(v > 0.0, "{scenario} / {system}: {v}");
            let cpu = value(scenario, "CpuPerOpUs", system).unwrap();
            assert!(
                cpu.is_finite() && cpu >= 0.0,
                "{scenario} / {system}: {cpu}"
            );
        }
        let meshed = value("boot 1+2", "MeshedMs", system).unwrap();
        let registered = value("boot 1+2", "RegisteredMs", system).unwrap();
        assert!(meshed >= registered && registered > 0.0, "{system}");
        assert!(value("boot 1+2", "TotalRssMib", system).unwrap() > 1.0);
        assert!(value("idle connections 200", "RssPerConnBytes", system).is_some());
    }
    for scenario in ["frontend echo 1x1", "frontend echo 100x16"] {
        assert!(value(scenario, "ReqPerSec", "raw").unwrap() > 0.0);
    }
    // The printed table names every scenario.
    for scenario in [
        "frontend echo 100x16",
        "rpc 100x16",
        "boot 1+2",
        "idle connections 200",
    ] {
        assert!(stdout.contains(scenario), "{stdout}");
    }
}
